//! The overlay as the appliance runs it: the rules that tie the `[grid]`, `[[networks]]`
//! and `[[peers]]` sections to the rest of the document (with the field path of each
//! refusal), building the netstack's `OverlayPath` for a document, and the runtime
//! commands (`peer-add`, `fdb-add`, ...) as typed arguments.
//!
//! A document for a new grid (or the first one) gets a new overlay, built aside and
//! swapped in whole; a document for the running grid is checked against the running
//! overlay and then brought in place, so learned and static entries survive and the
//! cost is the difference, not a copy of the tables.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use core::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use smoltcp::wire::{EthernetAddress, Ipv4Address};
use weft_netstack::base::{Mac, Vni};
use weft_netstack::pipeline::datapath::OverlayPath;
use weft_netstack::stage::overlay::config::route;
use weft_netstack::stage::overlay::config::{
    ConfigError as GridError, GridConfig, NetworkConfig, OverlayConfig, PeerConfig,
};
use weft_netstack::stage::overlay::{Limits, Overlay, OverlayError, Underlay};
use weft_netstack::stage::sleeve::SessionId;
use weft_netstack::Netstack;

use crate::config::{Config, ConfigError};

/// The three overlay sections of `config`, when it has a grid.
pub fn sections(config: &Config) -> Option<OverlayConfig> {
    config.grid.as_ref().map(|grid| OverlayConfig {
        grid: GridConfig::clone(grid),
        networks: config.networks.clone(),
        peers: config.peers.clone(),
    })
}

fn refuse(field: String, message: String) -> ConfigError {
    ConfigError { field, message }
}

/// Index of the `nth` (0-based) item matching `pred`.
fn nth<T>(items: &[T], nth: usize, pred: impl Fn(&T) -> bool) -> Option<usize> {
    items
        .iter()
        .enumerate()
        .filter(|(_, t)| pred(t))
        .nth(nth)
        .map(|(i, _)| i)
}

/// The underlay address this node reaches `peer` at (private in the same region, else
/// public), when the peer's addresses allow one.
pub fn in_use(grid: &GridConfig, peer: &PeerConfig) -> Option<Ipv4Address> {
    route(grid, peer).ok().map(|r| r.address)
}

/// Which of `peer`'s address fields holds `a`.
fn address_field(peer: &PeerConfig, a: Ipv4Address) -> &'static str {
    if peer.address == Some(a) {
        "address"
    } else if peer.private_address == Some(a) {
        "private_address"
    } else if peer.public_address == Some(a) {
        "public_address"
    } else {
        "address"
    }
}

/// The field an overlay validation error is about, in the document.
fn field_of(e: &GridError, c: &OverlayConfig) -> String {
    use GridError::*;
    let net = |i: Option<usize>, key: &str| match i {
        Some(i) => format!("networks[{i}].{key}"),
        None => "networks".to_string(),
    };
    let peer = |i: Option<usize>, key: &str| match i {
        Some(i) => format!("peers[{i}].{key}"),
        None => "peers".to_string(),
    };
    let n = &c.networks;
    let p = &c.peers;
    match e {
        BadSubnet(_) => "grid.subnet".into(),
        ZeroPort => "grid.vxlan_port".into(),
        MtuOutOfRange(_) => "grid.mtu".into(),
        BadName(name) => match nth(n, 0, |x| &x.name == name) {
            Some(i) => net(Some(i), "name"),
            None => peer(nth(p, 0, |x| x.name.as_ref() == Some(name)), "name"),
        },
        DuplicateNetworkName(name) => net(nth(n, 1, |x| &x.name == name), "name"),
        DuplicateVni(v) => net(nth(n, 1, |x| x.vni == *v), "vni"),
        DuplicateVlan(v) => net(nth(n, 1, |x| x.vlan == Some(*v)), "vlan"),
        TwoUntagged(name) => net(nth(n, 0, |x| &x.name == name), "vlan"),
        TooManyNetworks => "networks".into(),
        TooManyPeers => "peers".into(),
        PeerIsSelf(node) => peer(nth(p, 0, |x| x.node == *node), "node"),
        DuplicatePeerNode(node) => peer(nth(p, 1, |x| x.node == *node), "node"),
        DuplicatePeerName(name) => peer(nth(p, 1, |x| x.name.as_ref() == Some(name)), "name"),
        DuplicatePeerAddress(a) => {
            let i = nth(p, 1, |x| in_use(&c.grid, x) == Some(*a));
            peer(i, i.map_or("address", |i| address_field(&p[i], *a)))
        }
        BadPeerAddress(a) => {
            let i = nth(p, 0, |x| x.addresses().any(|y| y == *a));
            peer(i, i.map_or("address", |i| address_field(&p[i], *a)))
        }
        BadRegion(r) if c.grid.region.as_ref() == Some(r) => "grid.region".into(),
        BadRegion(r) => peer(nth(p, 0, |x| x.region.as_ref() == Some(r)), "region"),
        NoPeerAddress(node) | AmbiguousPeerAddress(node) => {
            peer(nth(p, 0, |x| x.node == *node), "address")
        }
        NoPublicAddress(node) => peer(nth(p, 0, |x| x.node == *node), "public_address"),
        UnknownNetwork {
            peer: node,
            network,
        }
        | DuplicatePeerNetwork {
            peer: node,
            network,
        } => {
            let which = usize::from(matches!(e, DuplicatePeerNetwork { .. }));
            match nth(p, 0, |x| x.node == *node) {
                Some(i) => match nth(&p[i].networks, which, |x| x == network) {
                    Some(j) => format!("peers[{i}].networks[{j}]"),
                    None => peer(Some(i), "networks"),
                },
                None => "peers".into(),
            }
        }
        SleeveWithoutSecret(_) => "grid.secret".into(),
        TlsWithoutCredentials => "grid.tls".into(),
        TlsUnused => "grid.tls".into(),
        TlsTimer(t) => format!("grid.tls.{}", t.field),
        NodeOutOfRange { node, .. } if *node == c.grid.node => "grid.node".into(),
        NodeOutOfRange { node, .. } => peer(nth(p, 0, |x| x.node == *node), "node"),
        LimitOutOfRange(limit, _) => format!("grid.limits.{}", limit.key()),
    }
}

/// Every overlay rule of the document; the first violation names its field.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let Some(sections) = sections(config) else {
        for (field, empty) in [
            ("networks", config.networks.is_empty()),
            ("peers", config.peers.is_empty()),
        ] {
            if !empty {
                return Err(refuse(
                    field.into(),
                    "needs a [grid] section (this node's number in the overlay)".into(),
                ));
            }
        }
        return Ok(());
    };
    sections
        .validate()
        .map_err(|e| refuse(field_of(&e, &sections), e.to_string()))?;
    let grid = &sections.grid;
    let subnet = grid.subnet.0;
    let up = &config.uplink.address;
    if subnet.contains_addr(&up.address()) || up.contains(subnet.network().address()) {
        return Err(refuse(
            "grid.subnet".into(),
            format!(
                "{subnet} overlaps the uplink subnet {}/{}",
                up.network(),
                up.prefix_len()
            ),
        ));
    }
    let node = grid.node_address(grid.node);
    let link = &config.link.address;
    if subnet.contains_addr(&link.address())
        && (link.address() != node || link.prefix_len() != subnet.prefix_len())
    {
        return Err(refuse(
            "link.address".into(),
            format!(
                "inside the grid subnet {subnet}, the link address must be this node's \
                 overlay address {node}/{}",
                subnet.prefix_len()
            ),
        ));
    }
    for (i, p) in sections.peers.iter().enumerate() {
        // Only the address in use must be reachable (a public address of a peer in
        // this region may well not be, from here).
        let Some(address) = in_use(grid, p) else {
            continue;
        };
        check_reachable(config, p, address)
            .map_err(|(key, message)| refuse(format!("peers[{i}].{key}"), message))?;
    }
    Ok(())
}

/// Whether this appliance's uplink can reach `peer` at `address` (its address in use):
/// not its own address, and in the uplink subnet or behind the gateway. A refusal
/// names the peer's field that holds the address.
pub fn check_reachable(
    config: &Config,
    peer: &PeerConfig,
    address: Ipv4Address,
) -> Result<(), (&'static str, String)> {
    let up = &config.uplink.address;
    let field = address_field(peer, address);
    if address == up.address() {
        return Err((
            field,
            format!("{address} is this appliance's uplink address"),
        ));
    }
    if !up.contains(address) && config.uplink.gateway.is_none() {
        return Err((
            field,
            format!(
                "{address} is outside the uplink subnet {}/{} and there is no uplink.gateway",
                up.network(),
                up.prefix_len()
            ),
        ));
    }
    Ok(())
}

/// The field, inside one peer's arguments (`peer-add`), that an overlay rule `e`
/// broken by that peer is about.
pub fn peer_field(e: &GridError, grid: &GridConfig, peer: &PeerConfig) -> String {
    // Another peer holds it: the field of this one's that collides.
    match e {
        GridError::DuplicatePeerNode(_) => return "node".into(),
        GridError::DuplicatePeerName(_) => return "name".into(),
        _ => {}
    }
    let alone = OverlayConfig {
        grid: grid.clone(),
        networks: alloc::vec::Vec::new(),
        peers: alloc::vec![peer.clone()],
    };
    relative_field(&field_of(e, &alone), "peers", 0)
}

/// What applying a document does to the overlay.
#[derive(Debug)]
pub enum OverlayPlan {
    /// No `[grid]`: no overlay.
    Off,
    /// A new overlay, built aside: none runs, or the grid or the uplink changed.
    New(Box<OverlayPath>),
    /// The running overlay, brought in line with these sections in place (its tables,
    /// counters and sessions stay); checked already, so applying it cannot fail.
    InPlace(OverlayConfig),
}

/// What the netstack's overlay should become for `config` (validated), given the one
/// running now; nothing is changed here (see [`OverlayPlan`]). `wall_clock`: Unix
/// seconds at boot, when known; a new sleeve endpoint's session ids start from it (and
/// never below the running one's), so that they grow across reboots and never repeat
/// under one key (docs/sleeve.md "Sessions").
pub fn plan(
    config: &Config,
    running: Option<&OverlayPath>,
    uplink_mac: EthernetAddress,
    link_mac: EthernetAddress,
    seed: u64,
    wall_clock: Option<u64>,
) -> Result<OverlayPlan, ConfigError> {
    let Some(sections) = sections(config) else {
        return Ok(OverlayPlan::Off);
    };
    let internal = |e: OverlayError| refuse(String::new(), format!("overlay: {e}"));
    let underlay = Underlay {
        mac: uplink_mac,
        ip: config.uplink.address.address(),
    };
    let reusable = running
        .filter(|r| r.overlay().same_grid(&sections.grid) && r.overlay().underlay() == underlay);
    if let Some(running) = reusable {
        running
            .overlay()
            .check_reconcile(&sections)
            .map_err(internal)?;
        return Ok(OverlayPlan::InPlace(sections));
    }
    let limits = Limits::of(&sections.grid.limits);
    let mut overlay = Overlay::from_config(&sections, underlay, limits, seed).map_err(internal)?;
    let secs = u32::try_from(wall_clock.unwrap_or(0)).unwrap_or(u32::MAX);
    let first = SessionId::first_of_boot(secs, seed as u32);
    let first = running
        .and_then(|r| r.overlay().sleeve_next_session())
        .map_or(first, |n| n.max(first));
    overlay.set_sleeve_first_session(first);
    OverlayPath::new(overlay, link_mac)
        .map(|p| OverlayPlan::New(Box::new(p)))
        .map_err(internal)
}

/// Carries out a plan on the netstack (after every check passed).
pub fn carry_out(netstack: &mut Netstack, plan: OverlayPlan) {
    match plan {
        OverlayPlan::Off => netstack.set_overlay(None),
        OverlayPlan::New(path) => netstack.set_overlay(Some(*path)),
        OverlayPlan::InPlace(sections) => {
            if let Some(path) = netstack.overlay_mut() {
                if let Err(e) = path.reconcile(&sections) {
                    // check_reconcile passed for this very overlay: a bug, not input.
                    log::error!("overlay: refused in place after its check: {e}");
                }
            }
        }
    }
}

/// The most heap bytes the overlay's tables may still take as they fill up to the
/// `[grid.limits]` of `config`, beyond what they hold now: what the heap must keep free
/// for them.
pub fn table_growth_bytes(netstack: &Netstack, config: &Config) -> u64 {
    let Some(grid) = &config.grid else {
        return 0;
    };
    let limits = Limits::of(&grid.limits);
    let full = limits.table_bytes(config.networks.len());
    let held = netstack.overlay().map_or(0, |p| {
        let (fdb, arp) = p.overlay().table_entries();
        (fdb as u64).saturating_mul(weft_netstack::table::fdb::FDB_ENTRY_BYTES)
            + (arp as u64).saturating_mul(weft_netstack::table::fdb::ARP_ENTRY_BYTES)
    });
    full.saturating_sub(held)
}

/// `fdb-add`'s arguments: pin `mac` in network `vni` behind `peer` (an underlay
/// address) or on the local link (`local: true`); with `ip`, ARP requests for that
/// overlay address are answered with `mac` (ARP suppression).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbEntry {
    pub vni: Vni,
    pub mac: Mac,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub local: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
}

/// `fdb-remove`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbKey {
    pub vni: Vni,
    pub mac: Mac,
}

/// `peer-remove`'s arguments: the peer's underlay address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerKey {
    pub address: Ipv4Addr,
}

/// `network-remove`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkKey {
    pub vni: Vni,
}

impl FdbEntry {
    /// The rules serde cannot express; the first violation names its field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match (self.peer, self.local) {
            (Some(_), true) => Err(("local", "give either peer or local: true, not both".into())),
            (None, false) => Err((
                "peer",
                "give the peer's underlay address, or local: true for the container link".into(),
            )),
            _ => Ok(()),
        }?;
        if !self.mac.0.is_unicast() {
            return Err(("mac", format!("{} is not a unicast MAC address", self.mac)));
        }
        if let Some(ip) = self.ip {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                return Err(("ip", format!("{ip} is not a unicast host address")));
            }
        }
        Ok(())
    }
}

/// `config` with `net` added, or replacing the network with its VNI; and its index.
pub fn with_network(config: &Config, net: &NetworkConfig) -> (Config, usize) {
    let mut c = config.clone();
    let i = match c.networks.iter().position(|n| n.vni == net.vni) {
        Some(i) => {
            let old = core::mem::replace(&mut c.networks[i], net.clone());
            // Peers name networks: a rename follows through.
            if old.name != net.name {
                for p in &mut c.peers {
                    for n in &mut p.networks {
                        if *n == old.name {
                            *n = net.name.clone();
                        }
                    }
                }
            }
            i
        }
        None => {
            c.networks.push(net.clone());
            c.networks.len() - 1
        }
    };
    (c, i)
}

/// `config` without the network `vni` (and without it in any peer's list).
pub fn without_network(config: &Config, vni: Vni) -> Option<Config> {
    let i = config.networks.iter().position(|n| n.vni == vni)?;
    let mut c = config.clone();
    let gone = c.networks.remove(i);
    for p in &mut c.peers {
        p.networks.retain(|n| *n != gone.name);
    }
    Some(c)
}

/// A document error about item `index` of `section` (`"peers"`), as a path inside
/// that item (what the runtime command's arguments call it); other paths unchanged.
pub fn relative_field(field: &str, section: &str, index: usize) -> String {
    let prefix = format!("{section}[{index}]");
    match field.strip_prefix(&prefix) {
        Some(rest) => rest.trim_start_matches('.').to_string(),
        None => field.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use serde_json::{json, Value};

    fn doc() -> Value {
        json!({
            "uplink": {"address": "192.0.2.11/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"},
            "grid": {"node": 1},
            "networks": [{"name": "a", "vni": 100}, {"name": "b", "vni": 200, "vlan": 200}],
            "peers": [
                {"node": 2, "address": "192.0.2.12", "networks": ["a", "b"]},
                {"node": 3, "name": "linux", "address": "192.0.2.13", "networks": ["a"]}
            ]
        })
    }

    fn set(mut v: Value, path: &[&str], new: Value) -> Value {
        let mut node = &mut v;
        for k in &path[..path.len() - 1] {
            node = match k.parse::<usize>() {
                Ok(i) => &mut node[i],
                Err(_) => &mut node[*k],
            };
        }
        let last = path[path.len() - 1];
        match last.parse::<usize>() {
            Ok(i) if node.as_array().is_some_and(|a| a.len() == i) => {
                node.as_array_mut().unwrap().push(new)
            }
            Ok(i) => node[i] = new,
            Err(_) => node[last] = new,
        }
        v
    }

    #[test]
    fn a_good_document_round_trips() {
        let c = Config::from_json_value(&doc()).unwrap();
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(Config::from_json_value(&back).unwrap(), c);
        // Defaults are spelled out; nothing else is added.
        assert_eq!(back["grid"]["mtu"], json!(1450));
        assert_eq!(back["grid"]["vxlan_port"], json!(4789));
        assert_eq!(back["peers"][0], doc()["peers"][0]);
        let s = sections(&c).unwrap();
        assert_eq!(s.networks.len(), 2);
        assert_eq!(s.peers[1].name.as_deref(), Some("linux"));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (set(doc(), &["grid", "node"], json!(0)), "grid.node"),
            (set(doc(), &["grid", "mtu"], json!(20)), "grid.mtu"),
            (set(doc(), &["grid", "colour"], json!(1)), "grid.colour"),
            (
                set(doc(), &["grid", "subnet"], json!("10.81.0.1/16")),
                "grid.subnet",
            ),
            (
                set(doc(), &["grid", "subnet"], json!("192.0.0.0/16")),
                "grid.subnet",
            ),
            (
                set(doc(), &["networks", "1", "vni"], json!(100)),
                "networks[1].vni",
            ),
            (
                set(doc(), &["networks", "1", "vni"], json!(1 << 24)),
                "networks[1].vni",
            ),
            (
                set(doc(), &["networks", "1", "name"], json!("a")),
                "networks[1].name",
            ),
            (
                set(doc(), &["networks", "0", "name"], json!("a b")),
                "networks[0].name",
            ),
            (
                set(doc(), &["networks", "1", "vlan"], json!(null)),
                "networks[1].vlan",
            ),
            (
                set(doc(), &["networks", "1", "vlan"], json!(4095)),
                "networks[1].vlan",
            ),
            (
                set(doc(), &["peers", "1", "node"], json!(2)),
                "peers[1].node",
            ),
            (
                set(doc(), &["peers", "0", "node"], json!(1)),
                "peers[0].node",
            ),
            (
                set(doc(), &["peers", "1", "address"], json!("192.0.2.12")),
                "peers[1].address",
            ),
            (
                set(doc(), &["peers", "1", "address"], json!("192.0.2.11")),
                "peers[1].address",
            ),
            (
                set(doc(), &["peers", "1", "address"], json!("224.0.0.1")),
                "peers[1].address",
            ),
            (
                set(doc(), &["peers", "1", "address"], json!("192.0.2")),
                "peers[1].address",
            ),
            (
                set(doc(), &["peers", "0", "networks", "1"], json!("c")),
                "peers[0].networks[1]",
            ),
            (
                set(doc(), &["peers", "0", "networks", "1"], json!("a")),
                "peers[0].networks[1]",
            ),
            (
                set(doc(), &["peers", "0", "name"], json!("linux")),
                "peers[1].name",
            ),
            (set(doc(), &["grid", "region"], json!("e u")), "grid.region"),
            (
                set(doc(), &["peers", "1", "region"], json!("")),
                "peers[1].region",
            ),
            (
                set(
                    doc(),
                    &["peers", "1", "private_address"],
                    json!("224.0.0.1"),
                ),
                "peers[1].private_address",
            ),
            (
                set(
                    set(
                        set(doc(), &["peers", "1", "region"], json!("us")),
                        &["peers", "1", "address"],
                        json!(null),
                    ),
                    &["peers", "1", "private_address"],
                    json!("10.0.0.3"),
                ),
                "peers[1].public_address",
            ),
            (
                set(
                    set(doc(), &["peers", "1", "private_address"], json!("10.0.0.3")),
                    &["peers", "1", "public_address"],
                    json!("203.0.113.3"),
                ),
                "peers[1].address",
            ),
            (
                set(
                    set(doc(), &["peers", "1", "address"], json!(null)),
                    &["peers", "1", "public_address"],
                    json!("192.0.2.12"),
                ),
                "peers[1].public_address",
            ),
            (
                set(
                    set(
                        set(doc(), &["uplink", "gateway"], json!(null)),
                        &["peers", "1", "address"],
                        json!(null),
                    ),
                    &["peers", "1", "private_address"],
                    json!("198.51.100.13"),
                ),
                "peers[1].private_address",
            ),
            (
                set(doc(), &["link", "address"], json!("10.81.0.2/16")),
                "link.address",
            ),
            (
                set(doc(), &["link", "address"], json!("10.81.0.1/24")),
                "link.address",
            ),
            (
                set(
                    set(doc(), &["uplink", "gateway"], json!(null)),
                    &["peers", "1", "address"],
                    json!("198.51.100.13"),
                ),
                "peers[1].address",
            ),
            (
                json!({
                    "uplink": {"address": "192.0.2.11/24"},
                    "link": {"address": "10.81.0.1/16"},
                    "peers": [{"node": 2, "address": "192.0.2.12"}]
                }),
                "peers",
            ),
        ];
        for (doc, field) in cases {
            let err = Config::from_json_value(&doc).expect_err(&doc.to_string());
            assert_eq!(err.field, field, "{doc}: {err}");
            assert!(!err.message.is_empty());
        }
        // A peer in this region needs only its private address reachable.
        let regional = set(
            set(
                set(
                    set(doc(), &["uplink", "gateway"], json!(null)),
                    &["peers", "1", "address"],
                    json!(null),
                ),
                &["peers", "1", "private_address"],
                json!("192.0.2.13"),
            ),
            &["peers", "1", "public_address"],
            json!("203.0.113.13"),
        );
        Config::from_json_value(&regional).expect("private address in use");
        // Outside the grid subnet, the link address is free (the node address is added).
        let c = Config::from_json_value(&set(doc(), &["link", "address"], json!("172.17.0.1/16")));
        assert!(c.is_ok(), "{c:?}");
    }

    const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
    const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);

    #[test]
    fn plan_keeps_tables_when_only_peers_and_networks_change() {
        let c = Config::from_json_value(&doc()).unwrap();
        let OverlayPlan::New(mut running) = plan(&c, None, UPLINK_MAC, LINK_MAC, 1, None).unwrap()
        else {
            panic!("no overlay runs: a new one");
        };
        let now = smoltcp::time::Instant::from_secs(1);
        let vni = |n| Vni::new(n).unwrap();
        let mac = EthernetAddress([0x02, 0x42, 0, 0, 0, 9]);
        let p3 = Ipv4Address::new(192, 0, 2, 13);
        running
            .add_static(
                vni(100),
                mac,
                weft_netstack::table::fdb::Location::Remote(p3),
                None,
                now,
            )
            .unwrap();
        // Peer 2 leaves network b, network c arrives, b moves to VLAN 300.
        let changed = set(
            set(
                set(doc(), &["peers", "0", "networks"], json!(["a"])),
                &["networks", "1", "vlan"],
                json!(300),
            ),
            &["networks", "2"],
            json!({"name": "c", "vni": 300, "vlan": 200}),
        );
        let c2 = Config::from_json_value(&changed).unwrap();
        let OverlayPlan::InPlace(sections) =
            plan(&c2, Some(&running), UPLINK_MAC, LINK_MAC, 1, None).unwrap()
        else {
            panic!("the same grid: brought in place");
        };
        running.reconcile(&sections).unwrap();
        let next = running;
        assert_eq!(
            next.overlay().lookup(vni(100), &mac, now),
            Some(weft_netstack::table::fdb::Location::Remote(p3)),
            "the static entry survived"
        );
        let nets: Vec<(u32, Option<u16>)> = next
            .overlay()
            .networks()
            .map(|(v, _, t)| (v.get(), t.map(|t| t.get())))
            .collect();
        assert_eq!(nets, vec![(100, None), (200, Some(300)), (300, Some(200))]);
        // A new node number: a new overlay, tables start empty.
        let renumbered = Config::from_json_value(&set(
            set(changed, &["grid", "node"], json!(9)),
            &["link", "address"],
            json!("10.81.0.9/16"),
        ))
        .unwrap();
        let OverlayPlan::New(fresh) =
            plan(&renumbered, Some(&next), UPLINK_MAC, LINK_MAC, 1, None).unwrap()
        else {
            panic!("a new node number: a new overlay");
        };
        assert_eq!(fresh.overlay().lookup(vni(100), &mac, now), None);
        // No grid, no overlay.
        let plain =
            json!({"uplink": {"address": "192.0.2.11/24"}, "link": {"address": "10.81.0.1/16"}});
        let c3 = Config::from_json_value(&plain).unwrap();
        assert!(matches!(
            plan(&c3, Some(&fresh), UPLINK_MAC, LINK_MAC, 1, None).unwrap(),
            OverlayPlan::Off
        ));
    }

    #[test]
    fn fdb_entry_rules() {
        let entry = |v: Value| -> Result<(), (&'static str, String)> {
            serde_json::from_value::<FdbEntry>(v).unwrap().check()
        };
        assert!(entry(json!({"vni": 1, "mac": "02:42:0a:51:80:02", "peer": "192.0.2.12"})).is_ok());
        assert!(entry(
            json!({"vni": 1, "mac": "02:42:0a:51:80:02", "local": true, "ip": "10.81.128.2"})
        )
        .is_ok());
        let field = |v: Value| entry(v).unwrap_err().0;
        assert_eq!(field(json!({"vni": 1, "mac": "02:42:0a:51:80:02"})), "peer");
        assert_eq!(
            field(
                json!({"vni": 1, "mac": "02:42:0a:51:80:02", "peer": "192.0.2.12", "local": true})
            ),
            "local"
        );
        assert_eq!(
            field(json!({"vni": 1, "mac": "ff:ff:ff:ff:ff:ff", "local": true})),
            "mac"
        );
        assert_eq!(
            field(json!({"vni": 1, "mac": "02:42:0a:51:80:02", "local": true, "ip": "0.0.0.0"})),
            "ip"
        );
        for bad in [
            json!("02:42:0a:51:80"),
            json!("02-42-0a-51-80-02"),
            json!("02:42:0a:51:80:zz"),
            json!(7),
        ] {
            assert!(
                serde_json::from_value::<FdbEntry>(json!({"vni": 1, "mac": bad, "local": true}))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn runtime_edits_of_the_document() {
        let mut c2 = Config::from_json_value(&doc()).unwrap();
        c2.peers.push(PeerConfig {
            networks: vec!["b".into()],
            ..PeerConfig::new(
                weft_netstack::base::NodeId::new(4).unwrap(),
                Ipv4Address::new(192, 0, 2, 14),
            )
        });
        let renamed = NetworkConfig {
            name: "bee".into(),
            vni: Vni::new(200).unwrap(),
            vlan: None,
            mode: Default::default(),
        };
        let (c4, i) = with_network(&c2, &renamed);
        assert_eq!(i, 1);
        assert_eq!(
            c4.peers[0].networks,
            vec!["a".to_string(), "bee".to_string()]
        );
        let c5 = without_network(&c2, Vni::new(200).unwrap()).unwrap();
        assert!(c5
            .peers
            .iter()
            .all(|p| !p.networks.contains(&"b".to_string())));
        assert!(without_network(&c2, Vni::new(7).unwrap()).is_none());
        assert_eq!(
            relative_field("peers[2].networks[0]", "peers", 2),
            "networks[0]"
        );
        assert_eq!(relative_field("peers[1].node", "peers", 2), "peers[1].node");
    }
}
