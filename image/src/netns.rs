//! Network namespaces, bridges, taps and veths for the demo and the QEMU tests, each
//! behind a guard that deletes it on drop (also while a panic unwinds). It only ever
//! creates objects under names it is given and deletes only what it created.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::qemu::check_ifname;

/// Fails unless we run as root (namespaces and taps need CAP_NET_ADMIN).
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("this needs root (creates network namespaces and tap devices); run it with sudo");
    }
    Ok(())
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip ARGS...`, checked.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Whether a namespace of this name exists.
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// A network namespace, deleted on drop with every virtual device and every process
/// inside it (a server a test started and whatever it forked).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name]).with_context(|| format!("creating namespace {name}"))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`, checked.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds bridge `name` without STP or forwarding delay (a test segment is up at
    /// once; nothing here has loops) and sets it up.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.ip(&["link", "add", name, "type", "bridge"])?;
        self.ip(&[
            "link",
            "set",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        self.ip(&["link", "set", name, "up"])
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The processes that live in this namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        Netns::pids_of(&self.name)
    }

    /// The processes that live in the namespace `name` (none if it does not exist).
    pub fn pids_of(name: &str) -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills every process in the namespace and waits (up to 5 s) until none is left.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() >= deadline {
                return;
            }
            for pid in pids {
                crate::process::signal(pid, crate::process::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(self
            .command("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]))
        .map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The names of one appliance topology; `prefix` keeps them apart from anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyNames {
    /// Where QEMU runs: the taps and both bridges (the "hypervisor").
    pub hv_ns: String,
    /// The "host" namespace on the uplink segment.
    pub host_ns: String,
    /// The "container" namespace on the link segment.
    pub ctr_ns: String,
    pub uplink_tap: String,
    pub link_tap: String,
    pub uplink_bridge: String,
    pub link_bridge: String,
    /// veth end in the hypervisor namespace, enslaved to the uplink bridge.
    pub host_veth_hv: String,
    /// veth end inside the host namespace (carries the host address).
    pub host_veth: String,
    pub ctr_veth_hv: String,
    pub ctr_veth: String,
}

impl TopologyNames {
    /// Names from a short prefix (at most 11 bytes, so `PREFIX-xxx` fits IFNAMSIZ).
    pub fn new(prefix: &str) -> Result<TopologyNames> {
        if prefix.is_empty() || prefix.len() > 11 {
            bail!("topology prefix {prefix:?} must be 1..=11 bytes");
        }
        let n = |s: &str| format!("{prefix}-{s}");
        let names = TopologyNames {
            hv_ns: n("hv"),
            host_ns: n("host"),
            ctr_ns: n("ctr"),
            uplink_tap: n("tu"),
            link_tap: n("tl"),
            uplink_bridge: n("bu"),
            link_bridge: n("bl"),
            host_veth_hv: n("vuh"),
            host_veth: n("vu"),
            ctr_veth_hv: n("vlh"),
            ctr_veth: n("vl"),
        };
        for ifname in names.ifnames() {
            check_ifname(ifname).map_err(anyhow::Error::msg)?;
        }
        Ok(names)
    }

    pub fn ifnames(&self) -> [&str; 8] {
        [
            &self.uplink_tap,
            &self.link_tap,
            &self.uplink_bridge,
            &self.link_bridge,
            &self.host_veth_hv,
            &self.host_veth,
            &self.ctr_veth_hv,
            &self.ctr_veth,
        ]
    }

    pub fn namespaces(&self) -> [&str; 3] {
        [&self.hv_ns, &self.host_ns, &self.ctr_ns]
    }
}

/// Addresses of the peers around the appliance (the appliance's own come from its config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddresses {
    /// The host namespace's address on the uplink segment, CIDR (`192.0.2.1/24`).
    pub host: String,
    /// The container namespace's address on the link segment, CIDR (`10.81.128.2/16`).
    pub ctr: String,
    /// The container namespace's default gateway (the appliance's link address).
    pub ctr_gateway: String,
}

impl Default for PeerAddresses {
    /// The embedded demo topology (see `document::DEFAULT_CONFIG_TOML`).
    fn default() -> Self {
        PeerAddresses {
            host: "192.0.2.1/24".into(),
            ctr: "10.81.128.2/16".into(),
            ctr_gateway: "10.81.0.1".into(),
        }
    }
}

/// The topology around one appliance:
///
/// ```text
///  [host ns] vu --veth-- vuh ┐                    ┌ vlh --veth-- vl [ctr ns]
///                            bu ── tu ═ QEMU ═ tl ── bl
///                           (all of this in the hv ns)
/// ```
///
/// Dropping it deletes the three namespaces, which removes every device in them.
/// Drop the QEMU that uses the taps first.
#[derive(Debug)]
pub struct Topology {
    pub names: TopologyNames,
    pub peers: PeerAddresses,
    // Field order is drop order: the leaves before the hypervisor namespace.
    pub ctr: Netns,
    pub host: Netns,
    pub hv: Netns,
}

impl Topology {
    /// Builds it; `log` is told each step (the demo prints them). On error, whatever
    /// was made so far is removed by the guards.
    pub fn create(
        names: TopologyNames,
        peers: PeerAddresses,
        log: &mut dyn FnMut(&str),
    ) -> Result<Topology> {
        let n = &names;
        log(&format!(
            "namespaces {}, {}, {}",
            n.hv_ns, n.host_ns, n.ctr_ns
        ));
        let hv = Netns::create(&n.hv_ns)?;
        let host = Netns::create(&n.host_ns)?;
        let ctr = Netns::create(&n.ctr_ns)?;

        for (bridge, tap) in [
            (&n.uplink_bridge, &n.uplink_tap),
            (&n.link_bridge, &n.link_tap),
        ] {
            log(&format!("bridge {bridge} with tap {tap} (in {})", n.hv_ns));
            hv.add_bridge(bridge)?;
            hv.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
            hv.ip(&["link", "set", tap, "master", bridge])?;
            hv.ip(&["link", "set", tap, "up"])?;
        }
        // The hypervisor namespace only switches frames; it must not answer or route.
        hv.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        // Where br_netfilter is loaded (Docker hosts), bridged IPv4 is validated and
        // malformed packets never reach the tap. These sysctls are per namespace;
        // they are absent when the module is not loaded, which is what we want anyway.
        for key in ["iptables", "ip6tables", "arptables"] {
            let _ = hv.sysctl(&format!("net.bridge.bridge-nf-call-{key}"), "0");
        }

        for (peer, hv_end, peer_end, bridge, addr) in [
            (
                &host,
                &n.host_veth_hv,
                &n.host_veth,
                &n.uplink_bridge,
                &peers.host,
            ),
            (
                &ctr,
                &n.ctr_veth_hv,
                &n.ctr_veth,
                &n.link_bridge,
                &peers.ctr,
            ),
        ] {
            log(&format!(
                "veth {hv_end} (on {bridge}) <-> {peer_end} {addr} (in {})",
                peer.name()
            ));
            hv.ip(&[
                "link",
                "add",
                hv_end,
                "type",
                "veth",
                "peer",
                "name",
                peer_end,
                "netns",
                peer.name(),
            ])?;
            hv.ip(&["link", "set", hv_end, "master", bridge])?;
            hv.ip(&["link", "set", hv_end, "up"])?;
            // IPv6 off in the peers: no router solicitations or DAD noise on the segments.
            peer.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            peer.ip(&["addr", "add", addr, "dev", peer_end])?;
            peer.ip(&["link", "set", peer_end, "up"])?;
        }
        log(&format!(
            "default route in {} via {}",
            n.ctr_ns, peers.ctr_gateway
        ));
        ctr.ip(&["route", "add", "default", "via", &peers.ctr_gateway])?;
        Ok(Topology {
            names,
            peers,
            ctr,
            host,
            hv,
        })
    }

    /// `ping` from a namespace: `count` replies wanted within `deadline_s` seconds.
    /// A run that ends early on "host unreachable" (a failed ARP entry, e.g. from
    /// before the address was configured) is retried with the entry flushed.
    pub fn ping(ns: &Netns, addr: &str, count: u32, deadline_s: u32) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(u64::from(deadline_s));
        loop {
            let _ = ns.ip(&["neigh", "flush", "to", addr]);
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .max(1);
            let out = ns
                .command("ping")
                .args([
                    "-n",
                    "-c",
                    &count.to_string(),
                    "-i",
                    "0.2",
                    "-w",
                    &left.to_string(),
                    addr,
                ])
                .stdin(Stdio::null())
                .output()
                .context("running ping")?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                return Ok(text);
            }
            if Instant::now() + Duration::from_millis(300) >= deadline {
                bail!("ping {addr} from {} failed:\n{text}", ns.name());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs `f` on a thread inside the network namespace `ns`; the threads it starts (a
/// tokio runtime's workers) are inside it too. Unix sockets are files and reach
/// across namespaces, so an agent run this way still talks to an appliance anywhere.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // This thread only: setns(2) moves the calling thread.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {path}"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `GET path` from the HTTP/1.1 server at `addr` as seen inside `ns`: the status line
/// with the headers, and the body (the server closes the connection).
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> Result<(String, String)> {
    use std::io::{Read, Write};
    in_netns(ns, || -> Result<(String, String)> {
        let mut s = std::net::TcpStream::connect(addr)
            .with_context(|| format!("connecting to {addr} in {}", ns.name()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let Some((head, body)) = resp.split_once("\r\n\r\n") else {
            bail!("GET http://{addr}{path}: no HTTP head in {resp:?}");
        };
        Ok((head.to_string(), body.to_string()))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_are_distinct() {
        let n = TopologyNames::new("wq12345678a").unwrap();
        let mut all: Vec<&str> = n.ifnames().to_vec();
        all.extend(n.namespaces());
        for name in n.ifnames() {
            assert!(name.len() <= 15, "{name}");
        }
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
        assert!(all.iter().all(|s| s.starts_with("wq12345678a-")));
        assert!(TopologyNames::new("wq123456789a").is_err());
        assert!(TopologyNames::new("").is_err());
    }

    #[test]
    fn failing_command_reports_stderr() {
        let e = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert!(run(&mut Command::new("true")).is_ok());
    }
}
