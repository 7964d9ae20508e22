//! Signals to the processes the host tool and the tests start: one child, or the
//! process group it leads (a child started with `process_group(0)` and everything it
//! forks). Safe wrappers only; a process that is already gone is not an error.

use nix::sys::signal::{kill, killpg};
use nix::unistd::Pid;

pub use nix::sys::signal::Signal;

fn pid(id: u32) -> Option<Pid> {
    i32::try_from(id).ok().filter(|p| *p > 0).map(Pid::from_raw)
}

/// Sends `sig` to the process `id` (a child of ours not yet reaped, so its pid is
/// still its own).
pub fn signal(id: u32, sig: Signal) {
    if let Some(p) = pid(id) {
        let _ = kill(p, sig);
    }
}

/// Sends `sig` to every process of the group that `leader` leads.
pub fn signal_group(leader: u32, sig: Signal) {
    if let Some(p) = pid(leader) {
        let _ = killpg(p, sig);
    }
}
