//! The processes the host tool and the tests start: signals to one child, or to the
//! process group it leads (a child started with `process_group(0)` and everything it
//! forks), and finding every process that carries a marker in its environment (what a
//! test run left behind). Safe wrappers only; a process already gone is not an error.

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

/// A process found by [`marked`]: its pid and command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    pub cmdline: String,
}

/// Every process (but this one) whose environment holds `key=value`: what a run that
/// set the variable started, however deep, unless a process cleared its environment.
pub fn marked(key: &str, value: &str) -> Vec<Found> {
    let needle = format!("{key}={value}");
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Found> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .map(|pid| Found {
            pid,
            cmdline: std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .split('\0')
                        .filter(|a| !a.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        })
        .collect();
    found.sort_by_key(|f| f.pid);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_marked_child_is_found_and_a_killed_one_is_not() {
        let value = format!("probe-{}", std::process::id());
        let mut child = Command::new("sleep")
            .arg("30")
            .env("WEFT_PROCESS_TEST", &value)
            .spawn()
            .unwrap();
        // Between fork and exec the child still shows our environment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let found = marked("WEFT_PROCESS_TEST", &value);
            if !found.is_empty() || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, child.id());
        assert_eq!(found[0].cmdline, "sleep 30");
        signal(child.id(), Signal::SIGKILL);
        child.wait().unwrap();
        assert_eq!(marked("WEFT_PROCESS_TEST", &value), vec![]);
    }
}
