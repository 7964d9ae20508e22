//! The overlay VTEP: the L2 bridge decision for every overlay network (VXLAN VNI)
//! between the container link, the appliance's own interface and the peers on the
//! uplink, and the VXLAN encapsulation that carries frames to those peers.
//!
//! Sans-I/O, boringtun style: [`Overlay::rx_link`], [`Overlay::rx_appliance`] and
//! [`Overlay::rx_uplink`] take one received frame and return a [`OverlayVerdict`]: the frames
//! to send and where, or a counted [`OverlayDrop`]. Frames never cross from one network
//! to another; nothing is learned from the uplink (remote entries are static, pushed by
//! control, as Docker's overlay does). Time is an argument; no clock, no I/O, no panics
//! on input.
//!
//! Each entry point has a buffer form (`rx_link_buf`, `rx_appliance_buf`,
//! `rx_uplink_buf`) for the datapath: a unicast frame is encapsulated, decapsulated or
//! opened where it lies in its `PacketBuf` and comes back as a [`Step`]; only
//! floods, answers and refusals are copies.
//!
//! The local side of the bridge is `bridge.rs`, the way to the peers `encap.rs` (sleeve
//! through `sleeve_link.rs`), the way back `decap.rs`; networks, peers and static
//! entries change through `control.rs`, a whole document in place through `reconcile.rs`;
//! `counters.rs` and `status.rs` say what happened.

pub mod config;
pub mod encap;
pub mod sleeve_link;

mod bridge;
mod control;
mod counters;
mod decap;
mod reconcile;
mod status;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use smoltcp::time::Duration;
use smoltcp::wire::{EthernetAddress, Ipv4Address};

use crate::base::{NodeId, VlanId, Vni};
use crate::stage::sleeve;
use crate::table::fdb::{self, ArpTable, Fdb, TableError};
use crate::wire::vxlan::{self, SrcPortRange};
use config::{AddressKind, ConfigError, EncapMode, GridConfig, GridLimits, OverlayConfig};
pub use counters::{NetworkCounters, OverlayDrop, OverlayDrops, PeerCounters};
use encap::PendingSeal;
pub use reconcile::Reconciled;
use sleeve_link::SleeveLink;
pub use status::{
    ArpEntryStatus, FdbEntryStatus, NetworkStatus, OverlayStatus, PeerSleeveRefused,
    PeerSleeveStatus, PeerStatus,
};

/// Where a frame leaves the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// The container link (the local segment of the network).
    Link,
    /// The appliance's own interface on this network (its overlay address).
    Appliance,
    /// The uplink, already encapsulated for one peer.
    Uplink,
}

/// One frame to transmit: where, and the complete Ethernet frame (no FCS).
pub type Output = (Egress, Vec<u8>);

/// What became of one received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayVerdict {
    /// Send these frames. Empty when the frame stays on the segment it came from.
    Forward(Vec<Output>),
    /// Refused and counted.
    Drop(OverlayDrop),
    /// Refused and counted, with a reply for the sender: ICMP "fragmentation needed"
    /// for an IPv4 packet with DF set that is larger than the overlay MTU.
    Refuse { reason: OverlayDrop, reply: Output },
}

/// What the overlay did with a frame handed over in its buffer (the `_buf` entry
/// points): the fast path leaves the frame where it lies.
#[derive(Debug)]
pub enum Step {
    /// The frame now in the buffer leaves by `egress` (to the uplink: encapsulated; to
    /// a local port: decapsulated, untagged).
    Send(Egress),
    /// The overlay kept the frame (queued for sealing): the buffer is empty now.
    Kept,
    /// Everything else, as the copying entry points say it: the frames to send are the
    /// verdict's; the buffer's own frame goes nowhere.
    Verdict(OverlayVerdict),
}

/// This appliance's own address on the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    pub mac: EthernetAddress,
    pub ip: Ipv4Address,
}

/// Table sizes and timers of each network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub fdb_capacity: usize,
    pub arp_capacity: usize,
    pub ageing: Duration,
}

impl Limits {
    /// The table sizes `[grid.limits]` sets, with the default ageing.
    pub fn of(limits: &GridLimits) -> Limits {
        Limits {
            fdb_capacity: limits.fdb_entries as usize,
            arp_capacity: limits.arp_entries as usize,
            ageing: fdb::DEFAULT_AGEING,
        }
    }

    /// The most heap bytes the tables of `networks` networks hold when full.
    pub fn table_bytes(&self, networks: usize) -> u64 {
        let per_network = (self.fdb_capacity as u64).saturating_mul(fdb::FDB_ENTRY_BYTES)
            + (self.arp_capacity as u64).saturating_mul(fdb::ARP_ENTRY_BYTES);
        per_network.saturating_mul(networks as u64)
    }
}

impl Default for Limits {
    /// `[grid.limits]`'s defaults.
    fn default() -> Limits {
        Limits::of(&GridLimits::default())
    }
}

/// Why a control operation on the overlay was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayError {
    Config(ConfigError),
    Table(TableError),
    /// No network with this name or VNI.
    UnknownNetwork(String),
    /// No peer with this underlay address.
    UnknownPeer(Ipv4Address),
    /// A static entry that points at a peer which does not carry the network.
    PeerNotInNetwork {
        peer: Ipv4Address,
        vni: Vni,
    },
    /// An underlay address equal to this appliance's own.
    PeerIsSelf(Ipv4Address),
    /// A document for another grid (node number, subnet, ...) cannot be brought in place.
    GridChanged,
}

impl fmt::Display for OverlayError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            OverlayError::Config(e) => write!(f, "{e}"),
            OverlayError::Table(e) => write!(f, "{e}"),
            OverlayError::UnknownNetwork(n) => write!(f, "no network {n}"),
            OverlayError::UnknownPeer(a) => write!(f, "no peer at {a}"),
            OverlayError::PeerNotInNetwork { peer, vni } => {
                write!(f, "peer {peer} does not carry VNI {vni}")
            }
            OverlayError::PeerIsSelf(a) => write!(f, "{a} is this appliance's own address"),
            OverlayError::GridChanged => {
                write!(
                    f,
                    "the [grid] section changed: the overlay must be built anew"
                )
            }
        }
    }
}

impl From<ConfigError> for OverlayError {
    fn from(e: ConfigError) -> OverlayError {
        OverlayError::Config(e)
    }
}

impl From<TableError> for OverlayError {
    fn from(e: TableError) -> OverlayError {
        OverlayError::Table(e)
    }
}

#[derive(Debug, Clone)]
struct Network {
    name: String,
    vlan: Option<VlanId>,
    fdb: Fdb,
    arp: ArpTable,
    appliance_mac: Option<EthernetAddress>,
    mode: EncapMode,
    counters: NetworkCounters,
}

#[derive(Debug, Clone)]
struct Peer {
    node: NodeId,
    name: Option<String>,
    region: Option<String>,
    /// Whether the address it is keyed by is its private or its public one.
    kind: AddressKind,
    networks: BTreeSet<Vni>,
    neighbor: Option<EthernetAddress>,
    counters: PeerCounters,
}

/// The VTEP and bridge for every overlay network of this appliance.
///
/// ```
/// use smoltcp::time::Instant;
/// use smoltcp::wire::{EthernetAddress, Ipv4Address};
/// use weft_netstack::table::fdb::Location;
/// use weft_netstack::stage::overlay::{Egress, Limits, Overlay, Underlay, OverlayVerdict};
/// use weft_netstack::stage::overlay::config::OverlayConfig;
///
/// let config: OverlayConfig = serde_json::from_str(r#"{
///     "grid": {"node": 1},
///     "networks": [{"name": "default", "vni": 1}],
///     "peers": [{"node": 2, "address": "192.0.2.2", "networks": ["default"]}]
/// }"#).unwrap();
/// let uplink = Underlay {
///     mac: EthernetAddress([0x02, 0, 0, 0, 0, 1]),
///     ip: Ipv4Address::new(192, 0, 2, 1),
/// };
/// let mut overlay = Overlay::from_config(&config, uplink, Limits::default(), 0x5eed).unwrap();
/// let now = Instant::from_secs(0);
/// let peer = Ipv4Address::new(192, 0, 2, 2);
/// // The uplink's ARP resolved the peer; control says where a remote container lives.
/// overlay.set_neighbor(peer, Some(EthernetAddress([0x02, 0, 0, 0, 0, 2]))).unwrap();
/// let vni = overlay.vni_of("default").unwrap();
/// let remote = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 2]);
/// overlay
///     .add_static(vni, remote, Location::Remote(peer), Some(Ipv4Address::new(10, 81, 128, 2)), now)
///     .unwrap();
///
/// // A frame from a local container to the remote one leaves encapsulated.
/// let mut frame = vec![0u8; 60];
/// frame[..6].copy_from_slice(&remote.0);
/// frame[6..12].copy_from_slice(&[0x02, 0x42, 0x0a, 0x51, 0x80, 1]);
/// frame[12..14].copy_from_slice(&[0x08, 0x00]);
/// let OverlayVerdict::Forward(out) = overlay.rx_link(now, vni, &frame) else { panic!() };
/// assert_eq!(out.len(), 1);
/// assert_eq!(out[0].0, Egress::Uplink);
/// assert_eq!(out[0].1.len(), 50 + 60);
/// ```
#[derive(Debug, Clone)]
pub struct Overlay {
    grid: GridConfig,
    underlay: Underlay,
    limits: Limits,
    ttl: u8,
    src_ports: SrcPortRange,
    hash_seed: u32,
    next_ident: u16,
    networks: BTreeMap<Vni, Network>,
    /// Each network's VNI by its name.
    network_names: BTreeMap<String, Vni>,
    peers: BTreeMap<Ipv4Address, Peer>,
    /// Each peer's node number and its underlay address (the key of `peers`).
    peer_nodes: BTreeMap<NodeId, Ipv4Address>,
    drops: OverlayDrops,
    /// The sleeve endpoint, when `[grid]` has keys (a secret, or `auth = "tls"`).
    sleeve: Option<SleeveLink>,
    /// Seal frames for sleeve peers when [`Overlay::flush_sleeve`] is called, not at
    /// once (docs/sleeve.md "Batching").
    batch_sleeve: bool,
    /// Frames waiting to be sealed, one entry per (peer, network), in arrival order:
    /// the first `pending_active` entries; the rest are spares for reuse.
    pending: Vec<PendingSeal>,
    pending_active: usize,
    pending_frames: usize,
}

/// With batching on, frames waiting to be sealed are sealed at once when this many
/// pile up, even before [`Overlay::flush_sleeve`] (a bound on memory, not a timer).
pub const MAX_PENDING_FRAMES: usize = 256;

/// Linux's default TTL for tunnel packets (`ip4_dst_hoplimit`, sysctl default 64).
const DEFAULT_TTL: u8 = 64;

impl Overlay {
    /// An overlay with no networks or peers. `seed` keys the flow hash of the UDP source
    /// ports and starts the outer IPv4 identification; pass a random value.
    pub fn new(
        grid: GridConfig,
        underlay: Underlay,
        limits: Limits,
        seed: u64,
    ) -> Result<Overlay, OverlayError> {
        grid.validate()?;
        // Until the appliance gives a wall-clock based first session
        // (`set_sleeve_first_session`), the session ids come from the seed alone.
        let sleeve = SleeveLink::new(
            &grid,
            underlay_mtu(grid.mtu),
            sleeve::SessionId::first_of_boot(0, seed as u32),
        );
        Ok(Overlay {
            sleeve,
            grid,
            underlay,
            limits,
            ttl: DEFAULT_TTL,
            src_ports: vxlan::DEFAULT_SRC_PORT_RANGE,
            hash_seed: (seed ^ (seed >> 32)) as u32,
            next_ident: (seed >> 16) as u16,
            networks: BTreeMap::new(),
            network_names: BTreeMap::new(),
            peers: BTreeMap::new(),
            peer_nodes: BTreeMap::new(),
            drops: OverlayDrops::default(),
            batch_sleeve: false,
            pending: Vec::new(),
            pending_active: 0,
            pending_frames: 0,
        })
    }

    /// An overlay set up from the config document's three sections, validated first.
    pub fn from_config(
        config: &OverlayConfig,
        underlay: Underlay,
        limits: Limits,
        seed: u64,
    ) -> Result<Overlay, OverlayError> {
        config.validate()?;
        let mut overlay = Overlay::new(config.grid.clone(), underlay, limits, seed)?;
        for net in &config.networks {
            overlay.add_network(net)?;
        }
        for peer in &config.peers {
            overlay.add_peer(peer)?;
        }
        Ok(overlay)
    }

    pub fn grid(&self) -> &GridConfig {
        &self.grid
    }

    pub fn underlay(&self) -> Underlay {
        self.underlay
    }

    /// This node's overlay address (`10.81.0.<n>`).
    pub fn node_address(&self) -> Ipv4Address {
        self.grid.node_address(self.grid.node)
    }

    fn drop(&mut self, vni: Option<Vni>, reason: OverlayDrop) -> OverlayVerdict {
        self.drops.count(reason);
        if let Some(net) = vni.and_then(|v| self.networks.get_mut(&v)) {
            net.counters.drops.count(reason);
        }
        OverlayVerdict::Drop(reason)
    }

    /// Start the sleeve endpoint's session ids at `first` (wall clock at boot and the
    /// seeded random source, `SessionId::first_of_boot`) unless it sealed already: then
    /// its ids are in use and are kept.
    pub fn set_sleeve_first_session(&mut self, first: sleeve::SessionId) {
        let Some(link) = &self.sleeve else {
            return;
        };
        if link.metrics().sealed_messages != 0 {
            return;
        }
        let keys = link.keys().clone();
        let mut fresh = SleeveLink::with_keys(&self.grid, keys, underlay_mtu(self.grid.mtu), first);
        for p in self.peers.values() {
            fresh.add_peer(p.node);
        }
        self.sleeve = Some(fresh);
    }

    /// The peer channel's key store, with `auth = "tls"` (shared with the channel).
    pub fn tls_keys(&self) -> Option<&weft_peer::keys::SharedKeys> {
        self.sleeve
            .as_ref()
            .and_then(|l| l.tls_keys())
            .map(|k| k.shared())
    }

    /// The peers some network seals for (sleeve, or `auto` outside the trusted
    /// subnets): node and underlay address. These need keys.
    pub fn sleeve_peers(&self) -> Vec<(NodeId, Ipv4Address)> {
        self.peers
            .iter()
            .filter(|(addr, p)| {
                p.networks.iter().any(|vni| {
                    self.networks.get(vni).is_some_and(|n| {
                        encap::encap(n.mode, &self.grid.trusted_subnets, **addr)
                            == encap::Encap::Sleeve
                    })
                })
            })
            .map(|(addr, p)| (p.node, *addr))
            .collect()
    }

    /// Seal to `node` under `session` from now on (the peer channel installed its keys).
    pub fn sleeve_restart_tx(&mut self, node: NodeId, session: sleeve::SessionId) -> bool {
        self.sleeve
            .as_mut()
            .is_some_and(|l| l.restart_tx(node, session))
    }

    /// `node`'s sleeve state (sessions, epochs), when the endpoint runs.
    pub fn sleeve_session(&self, node: NodeId) -> Option<&sleeve::Session> {
        self.sleeve.as_ref().and_then(|l| l.session(node))
    }

    /// The session id a replacement sleeve endpoint must start at, if one runs.
    pub fn sleeve_next_session(&self) -> Option<sleeve::SessionId> {
        self.sleeve.as_ref().and_then(|l| l.next_session())
    }

    /// The overlay MTU of network `vni` (the grid's, less sleeve's overhead when it
    /// may seal).
    pub fn mtu_of(&self, vni: Vni) -> Option<u16> {
        self.networks
            .get(&vni)
            .map(|n| network_mtu(&self.grid, n.mode))
    }
}

/// The underlay MTU the grid's overlay MTU was sized for (VXLAN's overhead above it).
fn underlay_mtu(overlay_mtu: u16) -> u16 {
    overlay_mtu.saturating_add(vxlan::ENCAP_OVERHEAD as u16)
}

/// The overlay MTU of a network in `mode`.
fn network_mtu(grid: &GridConfig, mode: EncapMode) -> u16 {
    match mode {
        EncapMode::Vxlan => grid.mtu,
        EncapMode::Sleeve | EncapMode::Auto => grid.mtu.saturating_sub(sleeve_link::EXTRA_OVERHEAD),
    }
}

#[cfg(test)]
mod tests;
