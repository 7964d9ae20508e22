//! The container's link, made with iproute2 (`ip`, `bridge`) and util-linux's
//! `nsenter`, never with netlink by hand: a veth pair whose container end is
//! `CNI_IFNAME` in the container's namespace (address, MTU, MAC, routes) and whose host
//! end sits on the bridge that carries the appliance's link (as an access port of the
//! network's VLAN when it has one), and what CHECK reads back. It only creates,
//! changes and deletes interfaces under names the plugin derived for this attachment;
//! it never talks to the agent.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::result::{Cidr, Route};

/// Host ends of weft's veths start with this (and only they do).
pub const HOST_PREFIX: &str = "wf";

/// Why an interface operation failed: the command and what it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkError(pub String);

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tool by name: from `PATH`, else from the usual system directories (a runtime
/// may run plugins with an empty environment).
fn tool(name: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a command; its stdout, or its stderr as the error.
fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String, LinkError> {
    let shown = format!("{cmd:?}").replace('"', "");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| LinkError(format!("{shown}: cannot run it: {e}")))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|e| LinkError(format!("{shown}: writing its input: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LinkError(format!("{shown}: {e}")))?;
    if !out.status.success() {
        return Err(LinkError(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, LinkError> {
    run(Command::new(tool("ip")).args(args), None)
}

/// `ip ARGS` inside the namespace at `netns`.
fn ip_in(netns: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, LinkError> {
    let mut c = Command::new(tool("nsenter"));
    c.arg(format!("--net={}", netns.display()))
        .arg(tool("ip"))
        .args(args);
    run(&mut c, stdin)
}

fn bridge_cmd(args: &[&str]) -> Result<String, LinkError> {
    run(Command::new(tool("bridge")).args(args), None)
}

/// The host end's name for an attachment: `wf` and 11 hex digits of a hash of the
/// container id and interface name (the attachment is known by those on DEL too).
pub fn host_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_PREFIX}{:011x}", h >> 20)
}

/// The container's MAC: locally administered, derived from its address as Docker
/// does (`02:42:` and the four address bytes), so a reused address keeps one MAC.
pub fn mac_for(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// One `ip -j ... show` object list.
fn json_list(text: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// The link `name` in this namespace (`ip -d -j link show`), if there is one.
fn show(name: &str) -> Option<Value> {
    ip(&["-d", "-j", "link", "show", "dev", name])
        .ok()
        .and_then(|t| json_list(&t).into_iter().next())
}

/// Whether the link `name` exists in this namespace.
pub fn exists(name: &str) -> bool {
    show(name).is_some()
}

/// Checks that `bridge` is a bridge in this namespace.
pub fn check_bridge(bridge: &str) -> Result<(), LinkError> {
    let Some(link) = show(bridge) else {
        return Err(LinkError(format!(
            "bridge {bridge:?} does not exist here: it is the bridge that holds the appliance's link tap (set \"bridge\" in the network config)"
        )));
    };
    let kind = link
        .pointer("/linkinfo/info_kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind != "bridge" {
        return Err(LinkError(format!(
            "{bridge:?} is not a bridge (it is a {} link)",
            if kind.is_empty() { "plain" } else { kind }
        )));
    }
    Ok(())
}

/// What the container end gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox<'a> {
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub mac: &'a str,
    pub mtu: u32,
    pub address: Cidr,
    pub routes: &'a [Route],
}

/// Creates the veth pair: the host end `host` on `bridge` (an access port of `vlan`
/// when given), the container end configured as `sb` says. Returns the host end's
/// MAC. On failure the pair is gone again.
pub fn create(
    host: &str,
    bridge: &str,
    vlan: Option<u16>,
    sb: &Sandbox,
) -> Result<String, LinkError> {
    let mtu = sb.mtu.to_string();
    let netns = sb.netns.to_string_lossy();
    let add = [
        "link", "add", host, "mtu", &mtu, "master", bridge, "type", "veth", "peer", "name",
        sb.ifname, "mtu", &mtu, "address", sb.mac, "netns", &netns,
    ];
    if let Err(e) = ip(&add) {
        // A host end left by an earlier ADD of this attachment that never finished
        // (the runtime must not ADD one attachment twice): it is ours; replace it.
        if !exists(host) {
            return Err(e);
        }
        delete(host)?;
        ip(&add)?;
    }
    let configured = (|| {
        if let Some(vid) = vlan {
            access_port(bridge, host, vid)?;
        }
        ip(&["link", "set", host, "up"])?;
        let mut batch = format!(
            "link set lo up\naddr add {} dev {}\nlink set {} up\n",
            sb.address, sb.ifname, sb.ifname
        );
        for r in sb.routes {
            match r.gw {
                Some(gw) => {
                    batch.push_str(&format!("route add {} via {gw} dev {}\n", r.dst, sb.ifname))
                }
                None => batch.push_str(&format!("route add {} dev {}\n", r.dst, sb.ifname)),
            }
        }
        ip_in(sb.netns, &["-batch", "-"], Some(&batch))?;
        show(host)
            .and_then(|l| l.get("address").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| LinkError(format!("{host} vanished while it was being set up")))
    })();
    if configured.is_err() {
        let _ = delete(host);
    }
    configured
}

/// Makes `port` an untagged access port of VLAN `vid` on `bridge`, and every other
/// port of the bridge that is not a weft veth (the appliance's link tap) a tagged
/// member of it: the standard bridge plugin's `vlan`, with the kernel's VLAN filtering.
fn access_port(bridge: &str, port: &str, vid: u16) -> Result<(), LinkError> {
    let filtering = show(bridge)
        .and_then(|l| {
            l.pointer("/linkinfo/info_data/vlan_filtering")
                .and_then(Value::as_u64)
        })
        .unwrap_or(0);
    if filtering != 1 {
        ip(&["link", "set", bridge, "type", "bridge", "vlan_filtering", "1"]).map_err(|e| {
            LinkError(format!(
                "the network is VLAN {vid} on the link, and bridge {bridge:?} cannot filter VLANs (a kernel without CONFIG_BRIDGE_VLAN_FILTERING?): {e}"
            ))
        })?;
    }
    let vid = vid.to_string();
    bridge_cmd(&["vlan", "add", "dev", port, "vid", &vid, "pvid", "untagged"])?;
    bridge_cmd(&["vlan", "del", "dev", port, "vid", "1"])?;
    let ports = json_list(&ip(&["-j", "link", "show", "master", bridge])?);
    for p in ports {
        let Some(name) = p.get("ifname").and_then(Value::as_str) else {
            continue;
        };
        if !name.starts_with(HOST_PREFIX) {
            bridge_cmd(&["vlan", "add", "dev", name, "vid", &vid])?;
        }
    }
    Ok(())
}

/// Deletes the link `name` (its veth peer goes with it). A link that is not there is
/// no error: `Ok(false)`.
pub fn delete(name: &str) -> Result<bool, LinkError> {
    match ip(&["link", "del", "dev", name]) {
        Ok(_) => Ok(true),
        Err(_) if !exists(name) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `ifname` inside `netns`, if both are there.
pub fn delete_in(netns: &Path, ifname: &str) -> Result<bool, LinkError> {
    if !netns.exists() {
        return Ok(false);
    }
    match ip_in(netns, &["link", "del", "dev", ifname], None) {
        Ok(_) => Ok(true),
        Err(e) if e.0.contains("Cannot find device") || e.0.contains("does not exist") => Ok(false),
        Err(e) => Err(e),
    }
}

/// What CHECK finds of the container end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub mac: String,
    pub mtu: u64,
    pub up: bool,
    pub addresses: Vec<Cidr>,
    pub routes: Vec<Route>,
}

/// Reads `ifname` in `netns`: its MAC, MTU, state, IPv4 addresses and routes.
pub fn observe(netns: &Path, ifname: &str) -> Result<Observed, LinkError> {
    // Without `-4`: iproute2 leaves the link's MAC out of a family-filtered listing.
    let addrs = json_list(&ip_in(netns, &["-j", "addr", "show", "dev", ifname], None)?);
    let Some(link) = addrs.first() else {
        return Err(LinkError(format!("{ifname} is not in {}", netns.display())));
    };
    let mut o = Observed {
        mac: link
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        mtu: link.get("mtu").and_then(Value::as_u64).unwrap_or(0),
        up: link
            .get("flags")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        ..Observed::default()
    };
    let inet = link
        .get("addr_info")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("family").and_then(Value::as_str) == Some("inet"));
    for a in inet {
        let local = a
            .get("local")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        let len = a
            .get("prefixlen")
            .and_then(Value::as_u64)
            .and_then(|l| u8::try_from(l).ok());
        if let (Some(address), Some(prefix_len)) = (local, len) {
            o.addresses.push(Cidr {
                address,
                prefix_len,
            });
        }
    }
    let routes = json_list(&ip_in(
        netns,
        &["-j", "-4", "route", "show", "dev", ifname],
        None,
    )?);
    for r in routes {
        let dst = match r.get("dst").and_then(Value::as_str) {
            Some("default") => Cidr::parse("0.0.0.0/0"),
            Some(d) if d.contains('/') => Cidr::parse(d),
            Some(d) => Cidr::parse(&format!("{d}/32")),
            None => None,
        };
        if let Some(dst) = dst {
            o.routes.push(Route {
                dst,
                gw: r
                    .get("gateway")
                    .and_then(Value::as_str)
                    .and_then(|g| g.parse().ok()),
            });
        }
    }
    Ok(o)
}

/// The bridge the host end `host` is a port of, if it exists.
pub fn master_of(host: &str) -> Option<Option<String>> {
    show(host).map(|l| l.get("master").and_then(Value::as_str).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_distinct_and_fit_ifnamsiz() {
        let a = host_name("0123456789abcdef", "eth0");
        assert_eq!(a, host_name("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with(HOST_PREFIX));
        assert_ne!(a, host_name("0123456789abcdef", "eth1"));
        assert_ne!(a, host_name("0123456789abcdee", "eth0"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(host_name("ab", "c"), host_name("a", "bc"));
    }

    #[test]
    fn macs_follow_the_address() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 81, 1, 2)), "02:42:0a:51:01:02");
    }
}
