//! `socat` servers in a namespace for the QEMU tests: started with their arguments in
//! a process group of their own, and stopped with every connection handler they forked
//! when the handle drops (also while a failed test unwinds).

use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};

use weft_image::netns::Netns;
use weft_image::process::{self, Signal};

/// A running `socat` in a namespace; dropping it stops it and its children.
pub struct Socat(Child);

impl Socat {
    /// `socat ARGS...` in `ns`, with its standard streams closed.
    pub fn start(ns: &Netns, args: &[&str]) -> Socat {
        let child = ns
            .command("socat")
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat starts");
        Socat(child)
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        process::signal_group(self.0.id(), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}
