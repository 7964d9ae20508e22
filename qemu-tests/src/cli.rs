//! The `weft` binary driven as a user drives it: `weft boot` as a child process in a
//! namespace (QEMU creates its taps there), in a process group of its own that is
//! stopped on drop (Ctrl-C first, then SIGKILL), QEMU included.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_image::netns::Netns;
use weft_image::process::{self, Signal};

use crate::grid::{weft_binary, weft_ctl};

/// A running `weft boot --uplink tap:<p>0 --link tap:<p>1 --control SOCK [--config F]`.
pub struct WeftBoot {
    pub child: Child,
    pub socket: PathBuf,
    pub serial: PathBuf,
}

impl WeftBoot {
    /// Starts `weft boot` inside `ns` with taps `<taps>0` and `<taps>1`, its control
    /// socket and serial log in `dir`.
    pub fn start(ns: &Netns, taps: &str, dir: &Path, image: &Path, config: Option<&Path>) -> Self {
        let socket = dir.join("control.sock");
        let serial = dir.join("serial.log");
        let mut cmd = ns.command(weft_binary().to_str().expect("a UTF-8 path"));
        cmd.args(["boot", "--uplink", &format!("tap:{taps}0")])
            .args(["--link", &format!("tap:{taps}1")])
            .arg("--control")
            .arg(&socket)
            .arg("--serial")
            .arg(&serial)
            .arg("--image")
            .arg(image);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning weft boot");
        WeftBoot {
            child,
            socket,
            serial,
        }
    }

    /// Waits until `weft ctl status` succeeds with `needle` in its output (boot has
    /// then applied its config and let other clients in).
    pub fn wait_status(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, out, err) = weft_ctl(&self.socket, &["--timeout", "5", "status"]);
            if code == 0 && out.contains(needle) {
                return out;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "weft boot exited ({st}): {}\n{}",
                    self.stderr(),
                    std::fs::read_to_string(&self.serial).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no status with {needle:?}: {out} {err}\n{}",
                std::fs::read_to_string(&self.serial).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// What `weft boot` wrote to stderr so far (once it exited).
    pub fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// A command of the `weft` binary (same build as the tests).
    pub fn weft() -> Command {
        Command::new(weft_binary())
    }
}

impl Drop for WeftBoot {
    fn drop(&mut self) {
        let group = self.child.id();
        process::signal_group(group, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever of the group is left goes.
        process::signal_group(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
