//! A host-process stand-in for the appliance's control socket: the real
//! `weft_appliance::Appliance` behind a unix socket, one client at a time like QEMU's
//! socket chardev. For testing the client and `weft ctl` without booting a VM; it has
//! no NICs that reach anything (in-memory ports) and is never the product.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weft_appliance::weft_netstack::smoltcp::time::Instant as NetInstant;
use weft_appliance::{Appliance, BootInfo, MemPort};

/// A running simulated appliance; stops (and removes its socket) on drop.
pub struct SimAppliance {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SimAppliance {
    /// Listens on `dir/control.sock`.
    pub fn start(dir: &Path) -> Result<SimAppliance> {
        let path = dir.join("control.sock");
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || serve(listener, &stop2));
        Ok(SimAppliance {
            path,
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SimAppliance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, stop: &AtomicBool) {
    let t0 = Instant::now();
    let now = || NetInstant::from_millis(t0.elapsed().as_millis() as i64);
    let uplink_mac = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
    let link_mac = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
    let mut app = Appliance::new(
        BootInfo {
            uplink_mac,
            link_mac,
            seed: 1,
            cmdline: String::from("sim"),
        },
        now(),
    );
    // As the kernel does: the wall clock (certificate validity) and a 256-bit key seed
    // (here the host's random source), so documents with `auth = "tls"` apply.
    if let Ok(unix) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        app.set_wall_clock(unix.as_secs());
    }
    let mut seed = [0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .is_ok()
    {
        app.set_key_seed(weft_appliance::weft_peer::rng::Seed::new(seed));
    }
    let mut up =
        MemPort::new(weft_appliance::weft_netstack::smoltcp::wire::EthernetAddress(uplink_mac));
    let mut link =
        MemPort::new(weft_appliance::weft_netstack::smoltcp::wire::EthernetAddress(link_mac));
    while !stop.load(Ordering::SeqCst) {
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
        let mut out = Vec::new();
        app.control_connected(now(), &mut out);
        let mut buf = [0u8; 4096];
        loop {
            if !out.is_empty() {
                if stream.write_all(&out).is_err() {
                    break;
                }
                out.clear();
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
            app.poll(now(), &mut up, &mut link);
            app.control_output(now(), &mut out);
            if !out.is_empty() {
                if stream.write_all(&out).is_err() {
                    break;
                }
                out.clear();
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => app.control_input(now(), &buf[..n], &mut out),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        app.control_disconnected();
    }
}
