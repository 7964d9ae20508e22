//! Booting and supervising the appliance when the agent is the host's one service:
//! `weft boot` of the same binary runs as a child in its own process group (so a
//! signal to the agent's terminal or unit does not reach QEMU behind the agent's
//! back) and is started again whenever it exits, with a growing pause while it keeps
//! failing. The agent re-applies the state when the new appliance greets. It never
//! boots a second appliance while one already answers on the control socket, and it
//! stops the whole group when the agent stops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::link::Link;

/// How to boot the appliance (`weft boot`'s own options).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSpec {
    /// The `weft` binary (the agent's own executable).
    pub exe: PathBuf,
    pub image: PathBuf,
    /// `tap:NAME`
    pub uplink: String,
    pub link: String,
    /// `128M`
    pub memory: Option<String>,
    /// The serial console to this file.
    pub serial: Option<PathBuf>,
    /// `weft boot --accel`
    pub accel: Option<String>,
}

impl BootSpec {
    pub fn command(&self, control: &std::path::Path) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("boot")
            .arg("--uplink")
            .arg(&self.uplink)
            .arg("--link")
            .arg(&self.link)
            .arg("--control")
            .arg(control)
            .arg("--image")
            .arg(&self.image);
        if let Some(m) = &self.memory {
            c.arg("--memory").arg(m);
        }
        if let Some(s) = &self.serial {
            c.arg("--serial").arg(s);
        }
        if let Some(a) = &self.accel {
            c.arg("--accel").arg(a);
        }
        c
    }
}

/// The running supervisor; [`Supervisor::stop`] ends the appliance with it.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    child: Arc<Mutex<Option<u32>>>,
    pub boots: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// Signals the process group the child leads (it was started with
/// `process_group(0)`, so its pid names the group); a group already gone is fine.
fn killpg(leader: u32, signal: Signal) {
    if let Ok(p) = i32::try_from(leader) {
        if p > 0 {
            let _ = nix::sys::signal::killpg(Pid::from_raw(p), signal);
        }
    }
}

impl Supervisor {
    pub fn start(spec: BootSpec, control: PathBuf, link: Link, log: fn(&str)) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let child = Arc::new(Mutex::new(None));
        let boots = Arc::new(AtomicU64::new(0));
        let (s, c, b) = (stop.clone(), child.clone(), boots.clone());
        let thread = std::thread::Builder::new()
            .name("weft-agent-boot".into())
            .spawn(move || supervise(spec, control, link, s, c, b, log))
            .unwrap_or_else(|e| panic!("cannot start a thread: {e}"));
        Supervisor {
            stop,
            child,
            boots,
            thread: Some(thread),
        }
    }

    /// Whether an appliance is running under this supervisor now.
    pub fn running(&self) -> bool {
        self.child.lock().map(|c| c.is_some()).unwrap_or(false)
    }

    /// Stops the appliance (SIGTERM to its group, SIGKILL after 10 s) and the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn supervise(
    spec: BootSpec,
    control: PathBuf,
    link: Link,
    stop: Arc<AtomicBool>,
    child_pid: Arc<Mutex<Option<u32>>>,
    boots: Arc<AtomicU64>,
    log: fn(&str),
) {
    let mut pause = Duration::from_secs(1);
    let sleep_unless_stopped = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // An appliance that already serves the socket (booted before this agent) is left
    // alone: give the link a moment to find it.
    if control.exists() {
        sleep_unless_stopped(Duration::from_secs(5));
    }
    while !stop.load(Ordering::SeqCst) {
        if link.is_connected() {
            sleep_unless_stopped(Duration::from_secs(1));
            continue;
        }
        let mut cmd = spec.command(&control);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null());
        let started = Instant::now();
        let mut child: Child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                log(&format!("cannot start {}: {e}", spec.exe.display()));
                sleep_unless_stopped(pause);
                pause = (pause * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        boots.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = child_pid.lock() {
            *c = Some(child.id());
        }
        log(&format!(
            "booting the appliance (weft boot, pid {}, image {})",
            child.id(),
            spec.image.display()
        ));
        let status = loop {
            if stop.load(Ordering::SeqCst) {
                killpg(child.id(), Signal::SIGTERM);
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                killpg(child.id(), Signal::SIGKILL);
                break child.wait().ok();
            }
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(_) => break None,
            }
        };
        // Whatever the group left (QEMU after its parent died) goes with it.
        killpg(child.id(), Signal::SIGKILL);
        if let Ok(mut c) = child_pid.lock() {
            *c = None;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            pause = Duration::from_secs(1);
        }
        log(&format!(
            "the appliance exited ({}); booting it again in {} s",
            status.map_or_else(|| "unknown status".into(), |s| s.to_string()),
            pause.as_secs()
        ));
        sleep_unless_stopped(pause);
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_command_is_weft_boot_with_the_agents_options() {
        let spec = BootSpec {
            exe: "/usr/bin/weft".into(),
            image: "/var/lib/weft/weft.elf".into(),
            uplink: "tap:weft0".into(),
            link: "tap:weft1".into(),
            memory: Some("256M".into()),
            serial: None,
            accel: None,
        };
        let c = spec.command(std::path::Path::new("/run/weft/control.sock"));
        assert_eq!(c.get_program(), "/usr/bin/weft");
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "boot --uplink tap:weft0 --link tap:weft1 --control /run/weft/control.sock \
             --image /var/lib/weft/weft.elf --memory 256M"
        );
    }
}
