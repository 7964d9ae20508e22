//! `socat` servers in a namespace for the QEMU tests: started with their arguments,
//! killed and reaped when the handle drops (also while a failed test unwinds).

use std::process::{Child, Stdio};

use weft_image::netns::Netns;

/// A running `socat` in a namespace; dropping it stops it.
pub struct Socat(Child);

impl Socat {
    /// `socat ARGS...` in `ns`, with its standard streams closed.
    pub fn start(ns: &Netns, args: &[&str]) -> Socat {
        let child = ns
            .command("socat")
            .args(args)
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
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
