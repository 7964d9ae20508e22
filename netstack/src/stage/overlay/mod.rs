//! The overlay VTEP: the L2 bridge decision for every overlay network (VXLAN VNI)
//! between the container link, the appliance's own interface and the peers on the
//! uplink, and the VXLAN encapsulation that carries frames to those peers.
//!
//! Sans-I/O, boringtun style: [`Overlay::rx_link`], [`Overlay::rx_appliance`] and
//! [`Overlay::rx_uplink`] take one received frame and return a [`Verdict`]: the frames
//! to send and where, or a counted [`DropReason`]. Frames never cross from one network
//! to another; nothing is learned from the uplink (remote entries are static, pushed by
//! control, as Docker's overlay does). Time is an argument; no clock, no I/O, no panics
//! on input.

pub mod config;
pub mod encap;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Ipv4Address, ETHERNET_HEADER_LEN,
};

use crate::base::{Mac, NodeId, VlanId, Vni};
use crate::stage::sleeve;
use crate::table::fdb::{self, ArpTable, Fdb, Learn, Location, Origin, TableError};
use crate::wire::icmp_error::frag_needed;
use crate::wire::vxlan::{self, DecapError, Outer, SrcPortRange};
use config::{ConfigError, GridConfig, Mode, NetworkConfig, OverlayConfig, PeerConfig};
use encap::{Encap, SleeveLink, SleeveStatus};

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
pub enum Verdict {
    /// Send these frames. Empty when the frame stays on the segment it came from.
    Forward(Vec<Output>),
    /// Refused and counted.
    Drop(DropReason),
    /// Refused and counted, with a reply for the sender: ICMP "fragmentation needed"
    /// for an IPv4 packet with DF set that is larger than the overlay MTU.
    Refuse { reason: DropReason, reply: Output },
}

/// Why a frame was dropped. Each reason has a counter in [`DropCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// An uplink frame that is not VXLAN to our address and port: the rest of the stack
    /// may want it.
    NotVxlan,
    /// Outer IPv4/UDP header truncated, inconsistent or with a bad checksum.
    BadOuterHeader,
    /// An outer IPv4 fragment (VTEPs do not reassemble).
    OuterFragment,
    /// A VXLAN header without the I flag, or truncated.
    BadVxlanHeader,
    /// A VNI (from the wire or the caller) with no configured network.
    UnknownVni,
    /// VXLAN from an address that is not a peer of that network.
    UnknownPeer,
    /// A frame shorter than an Ethernet header.
    Runt,
    /// A broadcast or multicast source MAC address.
    BadSourceMac,
    /// A frame from a peer for a MAC that control says lives on another peer.
    NotLocal,
    /// Larger than the overlay MTU.
    TooBig,
    /// The underlay MAC address of the peer (or its next hop) is not known yet.
    NoNeighbor,
    /// A frame from the appliance on a network it is not attached to.
    NotAttached,
    /// A frame with an 802.1Q/802.1ad tag of its own. Networks are told apart by their
    /// VNI (and on the link by one tag the datapath takes off): a tag inside could
    /// land the frame on another network's VLAN (double tagging).
    Tagged,
    /// A sleeve message refused (`status.overlay.sleeve.drops` says why).
    SleeveRefused,
    /// Plaintext VXLAN from a peer that this network only accepts sealed.
    Unsealed,
    /// A frame for a sleeve peer that could not be sealed (never sent in clear).
    SealRefused,
    /// A record of a sleeve message of another network than the message's first one.
    MixedVni,
}

/// Frames dropped, by reason. Serialized as-is into `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounters {
    pub not_vxlan: u64,
    pub bad_outer_header: u64,
    pub outer_fragment: u64,
    pub bad_vxlan_header: u64,
    pub unknown_vni: u64,
    pub unknown_peer: u64,
    pub runt: u64,
    pub bad_source_mac: u64,
    pub not_local: u64,
    pub too_big: u64,
    pub no_neighbor: u64,
    pub not_attached: u64,
    pub tagged: u64,
    #[serde(default)]
    pub sleeve_refused: u64,
    #[serde(default)]
    pub unsealed: u64,
    #[serde(default)]
    pub seal_refused: u64,
    #[serde(default)]
    pub mixed_vni: u64,
}

impl DropCounters {
    fn count(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::NotVxlan => &mut self.not_vxlan,
            DropReason::BadOuterHeader => &mut self.bad_outer_header,
            DropReason::OuterFragment => &mut self.outer_fragment,
            DropReason::BadVxlanHeader => &mut self.bad_vxlan_header,
            DropReason::UnknownVni => &mut self.unknown_vni,
            DropReason::UnknownPeer => &mut self.unknown_peer,
            DropReason::Runt => &mut self.runt,
            DropReason::BadSourceMac => &mut self.bad_source_mac,
            DropReason::NotLocal => &mut self.not_local,
            DropReason::TooBig => &mut self.too_big,
            DropReason::NoNeighbor => &mut self.no_neighbor,
            DropReason::NotAttached => &mut self.not_attached,
            DropReason::Tagged => &mut self.tagged,
            DropReason::SleeveRefused => &mut self.sleeve_refused,
            DropReason::Unsealed => &mut self.unsealed,
            DropReason::SealRefused => &mut self.seal_refused,
            DropReason::MixedVni => &mut self.mixed_vni,
        };
        *c = c.wrapping_add(1);
    }

    /// The counter for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::NotVxlan => self.not_vxlan,
            DropReason::BadOuterHeader => self.bad_outer_header,
            DropReason::OuterFragment => self.outer_fragment,
            DropReason::BadVxlanHeader => self.bad_vxlan_header,
            DropReason::UnknownVni => self.unknown_vni,
            DropReason::UnknownPeer => self.unknown_peer,
            DropReason::Runt => self.runt,
            DropReason::BadSourceMac => self.bad_source_mac,
            DropReason::NotLocal => self.not_local,
            DropReason::TooBig => self.too_big,
            DropReason::NoNeighbor => self.no_neighbor,
            DropReason::NotAttached => self.not_attached,
            DropReason::Tagged => self.tagged,
            DropReason::SleeveRefused => self.sleeve_refused,
            DropReason::Unsealed => self.unsealed,
            DropReason::SealRefused => self.seal_refused,
            DropReason::MixedVni => self.mixed_vni,
        }
    }

    /// Every frame the overlay refused, whatever the reason, except `not_vxlan`: those
    /// were handed back to the rest of the stack, not lost.
    pub fn total(&self) -> u64 {
        [
            self.bad_outer_header,
            self.outer_fragment,
            self.bad_vxlan_header,
            self.unknown_vni,
            self.unknown_peer,
            self.runt,
            self.bad_source_mac,
            self.not_local,
            self.too_big,
            self.no_neighbor,
            self.not_attached,
            self.tagged,
            self.sleeve_refused,
            self.unsealed,
            self.seal_refused,
            self.mixed_vni,
        ]
        .iter()
        .fold(0u64, |a, b| a.wrapping_add(*b))
    }
}

/// Traffic of one overlay network.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCounters {
    /// Frames taken from the container link / the appliance / peers (decapsulated).
    pub link_rx: u64,
    pub appliance_rx: u64,
    pub uplink_rx: u64,
    /// Frames handed to the container link / the appliance / peers (encapsulated).
    pub link_tx: u64,
    pub appliance_tx: u64,
    pub uplink_tx: u64,
    /// Frames replicated to every peer (broadcast, multicast, unknown unicast).
    pub flooded: u64,
    /// Frames that stayed on the segment they came from.
    pub filtered: u64,
    /// ARP requests answered from the ARP table.
    pub arp_suppressed: u64,
    /// ICMP "fragmentation needed" sent back to senders.
    pub icmp_frag_needed: u64,
    /// Source addresses not learned because the FDB was full.
    pub learn_refused: u64,
    /// Drops attributed to this network (also counted in the overlay's totals).
    pub drops: DropCounters,
}

/// Traffic exchanged with one peer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets for this peer dropped because its underlay MAC was unknown.
    pub no_neighbor: u64,
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

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            fdb_capacity: 4096,
            arp_capacity: 4096,
            ageing: fdb::DEFAULT_AGEING,
        }
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
    mode: Mode,
    counters: NetworkCounters,
}

#[derive(Debug, Clone)]
struct Peer {
    node: NodeId,
    name: Option<String>,
    region: Option<String>,
    /// Whether the address it is keyed by is its private or its public one.
    kind: encap::AddressKind,
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
/// use weft_netstack::stage::overlay::{Egress, Limits, Overlay, Underlay, Verdict};
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
/// let Verdict::Forward(out) = overlay.rx_link(now, vni, &frame) else { panic!() };
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
    peers: BTreeMap<Ipv4Address, Peer>,
    drops: DropCounters,
    /// The sleeve endpoint, when `[grid]` has a secret.
    sleeve: Option<SleeveLink>,
    /// Seal frames for sleeve peers when [`Overlay::flush_sleeve`] is called, not at
    /// once (docs/sleeve.md "Batching").
    batch_sleeve: bool,
    /// Frames waiting to be sealed, one entry per (peer, network), in arrival order.
    pending: Vec<PendingSeal>,
    pending_frames: usize,
}

/// The frames of one network for one sleeve peer that will share messages.
#[derive(Debug, Clone)]
struct PendingSeal {
    peer: Ipv4Address,
    node: NodeId,
    vni: Vni,
    /// The outer headers, from the first frame (its flow's source port).
    outer: encap::OuterAddrs,
    frames: Vec<Vec<u8>>,
}

/// With batching on, frames waiting to be sealed are sealed at once when this many
/// pile up, even before [`Overlay::flush_sleeve`] (a bound on memory, not a timer).
pub const MAX_PENDING_FRAMES: usize = 256;

/// The port a frame came in on, for the split-horizon rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ingress {
    Link,
    Appliance,
}

impl Ingress {
    fn egress(self) -> Egress {
        match self {
            Ingress::Link => Egress::Link,
            Ingress::Appliance => Egress::Appliance,
        }
    }
}

/// Linux's default TTL for tunnel packets (`ip4_dst_hoplimit`, sysctl default 64).
const DEFAULT_TTL: u8 = 64;
const VLAN_TAG_LEN: usize = 4;

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
        let sleeve = grid.secret.as_ref().and_then(|secret| {
            SleeveLink::new(
                grid.node,
                secret,
                underlay_mtu(grid.mtu),
                sleeve::SessionId::first_of_boot(0, seed as u32),
            )
        });
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
            peers: BTreeMap::new(),
            drops: DropCounters::default(),
            batch_sleeve: false,
            pending: Vec::new(),
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

    /// Add a network, or rename (and re-VLAN) the one with the same VNI; its tables
    /// are kept. Each network has its own VLAN on the link, at most one none.
    pub fn add_network(&mut self, net: &NetworkConfig) -> Result<(), OverlayError> {
        net.validate()?;
        if self
            .networks
            .iter()
            .any(|(vni, n)| n.name == net.name && *vni != net.vni)
        {
            return Err(ConfigError::DuplicateNetworkName(net.name.clone()).into());
        }
        if self
            .networks
            .iter()
            .any(|(vni, n)| n.vlan == net.vlan && *vni != net.vni)
        {
            return Err(match net.vlan {
                Some(v) => ConfigError::DuplicateVlan(v),
                None => ConfigError::TwoUntagged(net.name.clone()),
            }
            .into());
        }
        if let Some(existing) = self.networks.get_mut(&net.vni) {
            existing.name = net.name.clone();
            existing.vlan = net.vlan;
            existing.mode = net.mode;
            return Ok(());
        }
        if self.networks.len() >= config::MAX_NETWORKS {
            return Err(ConfigError::TooManyNetworks.into());
        }
        self.networks.insert(
            net.vni,
            Network {
                name: net.name.clone(),
                vlan: net.vlan,
                fdb: Fdb::new(self.limits.fdb_capacity, self.limits.ageing),
                arp: ArpTable::new(self.limits.arp_capacity),
                appliance_mac: None,
                mode: net.mode,
                counters: NetworkCounters::default(),
            },
        );
        Ok(())
    }

    /// Remove a network, its tables, and its membership in every peer.
    pub fn remove_network(&mut self, vni: Vni) -> bool {
        for peer in self.peers.values_mut() {
            peer.networks.remove(&vni);
        }
        self.networks.remove(&vni).is_some()
    }

    /// The VNI of the network called `name`.
    pub fn vni_of(&self, name: &str) -> Option<Vni> {
        self.networks
            .iter()
            .find(|(_, n)| n.name == name)
            .map(|(vni, _)| *vni)
    }

    /// Add a peer, or replace the one at the same underlay address in use (its counters
    /// and neighbor MAC are kept; static entries of networks it left are removed). The
    /// address in use is its private one if it is in this node's region, else its
    /// public one ([`encap::route`]).
    pub fn add_peer(&mut self, peer: &PeerConfig) -> Result<(), OverlayError> {
        if peer.node == self.grid.node {
            return Err(ConfigError::PeerIsSelf(peer.node).into());
        }
        // Which of its addresses (by region) is the one place this is decided.
        let route = peer.validate(&self.grid)?;
        let address = route.address;
        if address == self.underlay.ip {
            return Err(OverlayError::PeerIsSelf(address));
        }
        if self
            .peers
            .iter()
            .any(|(addr, p)| *addr != address && p.node == peer.node)
        {
            return Err(ConfigError::DuplicatePeerNode(peer.node).into());
        }
        let mut networks = BTreeSet::new();
        for name in &peer.networks {
            let vni = self
                .vni_of(name)
                .ok_or_else(|| OverlayError::UnknownNetwork(name.clone()))?;
            networks.insert(vni);
        }
        if !self.peers.contains_key(&address) && self.peers.len() >= config::MAX_PEERS {
            return Err(ConfigError::TooManyPeers.into());
        }
        let entry = self.peers.entry(address).or_insert_with(|| Peer {
            node: peer.node,
            name: None,
            region: None,
            kind: route.kind,
            networks: BTreeSet::new(),
            neighbor: None,
            counters: PeerCounters::default(),
        });
        if let Some(sleeve) = &mut self.sleeve {
            if entry.node != peer.node {
                sleeve.remove_peer(entry.node);
            }
            sleeve.add_peer(peer.node);
        }
        let left: Vec<Vni> = entry.networks.difference(&networks).copied().collect();
        entry.node = peer.node;
        entry.name = peer.name.clone();
        entry.region = peer.region.clone();
        entry.kind = route.kind;
        entry.networks = networks;
        for vni in left {
            if let Some(net) = self.networks.get_mut(&vni) {
                forget_remote(net, address);
            }
        }
        Ok(())
    }

    /// Remove a peer and every static entry that points at it.
    pub fn remove_peer(&mut self, address: Ipv4Address) -> bool {
        let Some(gone) = self.peers.remove(&address) else {
            return false;
        };
        if let Some(sleeve) = &mut self.sleeve {
            sleeve.remove_peer(gone.node);
        }
        for net in self.networks.values_mut() {
            forget_remote(net, address);
        }
        true
    }

    /// Record the underlay MAC to send a peer's packets to (the peer's own, or its
    /// router's), as the uplink's ARP resolved it; `None` forgets it.
    pub fn set_neighbor(
        &mut self,
        peer: Ipv4Address,
        mac: Option<EthernetAddress>,
    ) -> Result<(), OverlayError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(OverlayError::UnknownPeer(peer))?;
        p.neighbor = mac;
        Ok(())
    }

    /// Every network: its VNI, name and VLAN on the link.
    pub fn networks(&self) -> impl Iterator<Item = (Vni, &str, Option<VlanId>)> + '_ {
        self.networks
            .iter()
            .map(|(vni, n)| (*vni, n.name.as_str(), n.vlan))
    }

    /// Every peer: its underlay address and the underlay MAC its packets go to.
    pub fn peers(&self) -> impl Iterator<Item = (Ipv4Address, Option<EthernetAddress>)> + '_ {
        self.peers.iter().map(|(a, p)| (*a, p.neighbor))
    }

    /// Peers whose underlay MAC is still unknown: the uplink should ARP for them.
    pub fn peers_without_neighbor(&self) -> impl Iterator<Item = Ipv4Address> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.neighbor.is_none())
            .map(|(a, _)| *a)
    }

    /// Attach the appliance's own interface to a network with this MAC (so frames to it
    /// reach [`Egress::Appliance`] and broadcasts are copied to it), or detach it.
    pub fn attach_appliance(
        &mut self,
        vni: Vni,
        mac: Option<EthernetAddress>,
    ) -> Result<(), OverlayError> {
        if mac.is_some_and(|m| !m.is_unicast()) {
            return Err(TableError::NotUnicastMac.into());
        }
        self.network_mut(vni)?.appliance_mac = mac;
        Ok(())
    }

    /// Pin `mac` in network `vni` at `location` (control's static entry) and, with `ip`,
    /// bind that overlay address to it for ARP suppression.
    pub fn add_static(
        &mut self,
        vni: Vni,
        mac: EthernetAddress,
        location: Location,
        ip: Option<Ipv4Address>,
        now: Instant,
    ) -> Result<(), OverlayError> {
        if let Location::Remote(peer) = location {
            let p = self
                .peers
                .get(&peer)
                .ok_or(OverlayError::UnknownPeer(peer))?;
            if !p.networks.contains(&vni) {
                return Err(OverlayError::PeerNotInNetwork { peer, vni });
            }
        }
        let net = self.network_mut(vni)?;
        if let Some(ip) = ip {
            // Check the ARP binding first so that a refusal leaves both tables untouched.
            if !mac.is_unicast() {
                return Err(TableError::NotUnicastMac.into());
            }
            if net.arp.lookup(&ip).is_none() && net.arp.len() >= net.arp.capacity() {
                return Err(TableError::Full.into());
            }
        }
        net.fdb.insert_static(mac, location, now)?;
        if let Some(ip) = ip {
            net.arp.insert(ip, mac)?;
        }
        Ok(())
    }

    /// Remove the static entry for `mac` in `vni` and the ARP bindings to it.
    pub fn remove_static(&mut self, vni: Vni, mac: EthernetAddress) -> Result<bool, OverlayError> {
        let net = self.network_mut(vni)?;
        let removed = net.fdb.remove_static(&mac);
        net.arp.remove_mac(&mac);
        Ok(removed)
    }

    /// Sweep expired learned entries of every network.
    pub fn age(&mut self, now: Instant) -> usize {
        self.networks.values_mut().map(|n| n.fdb.age(now)).sum()
    }

    /// Overlay-wide drop counters (every drop, all networks).
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    pub fn network_counters(&self, vni: Vni) -> Option<&NetworkCounters> {
        self.networks.get(&vni).map(|n| &n.counters)
    }

    pub fn peer_counters(&self, peer: Ipv4Address) -> Option<&PeerCounters> {
        self.peers.get(&peer).map(|p| &p.counters)
    }

    /// Where `mac` lives in network `vni` at `now`.
    pub fn lookup(&self, vni: Vni, mac: &EthernetAddress, now: Instant) -> Option<Location> {
        self.networks.get(&vni)?.fdb.lookup(mac, now)
    }

    fn network_mut(&mut self, vni: Vni) -> Result<&mut Network, OverlayError> {
        self.networks
            .get_mut(&vni)
            .ok_or_else(|| OverlayError::UnknownNetwork(alloc::format!("VNI {vni}")))
    }

    fn drop(&mut self, vni: Option<Vni>, reason: DropReason) -> Verdict {
        self.drops.count(reason);
        if let Some(net) = vni.and_then(|v| self.networks.get_mut(&v)) {
            net.counters.drops.count(reason);
        }
        Verdict::Drop(reason)
    }

    /// A frame received on the container link for network `vni`.
    pub fn rx_link(&mut self, now: Instant, vni: Vni, frame: &[u8]) -> Verdict {
        self.rx_local(now, vni, frame, Ingress::Link)
    }

    /// A frame the appliance's own interface sends on network `vni`.
    pub fn rx_appliance(&mut self, now: Instant, vni: Vni, frame: &[u8]) -> Verdict {
        self.rx_local(now, vni, frame, Ingress::Appliance)
    }

    fn rx_local(&mut self, now: Instant, vni: Vni, frame: &[u8], ingress: Ingress) -> Verdict {
        let Some(net) = self.networks.get_mut(&vni) else {
            return self.drop(None, DropReason::UnknownVni);
        };
        match ingress {
            Ingress::Link => net.counters.link_rx += 1,
            Ingress::Appliance => net.counters.appliance_rx += 1,
        }
        if ingress == Ingress::Appliance && net.appliance_mac.is_none() {
            return self.drop(Some(vni), DropReason::NotAttached);
        }
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return self.drop(Some(vni), DropReason::Runt);
        };
        let (src, dst) = (eth.src_addr(), eth.dst_addr());
        if !src.is_unicast() {
            return self.drop(Some(vni), DropReason::BadSourceMac);
        }
        if is_tagged(&eth) {
            return self.drop(Some(vni), DropReason::Tagged);
        }
        if ingress == Ingress::Link
            && Some(src) != net.appliance_mac
            && net.fdb.learn(src, now) == Learn::Full
        {
            net.counters.learn_refused += 1;
        }

        if let Some(reply) = arp_suppress(net, &eth) {
            net.counters.arp_suppressed += 1;
            return Verdict::Forward(vec![(ingress.egress(), reply)]);
        }

        // Where the frame goes: local ports, and the peers (one or all).
        let mut out = Vec::new();
        let local_port = |e: Egress| e != ingress.egress();
        let to_peer: Option<Ipv4Address>;
        let flood: bool;
        if !dst.is_unicast() {
            flood = true;
            to_peer = None;
        } else if Some(dst) == net.appliance_mac {
            flood = false;
            to_peer = None;
            if local_port(Egress::Appliance) {
                out.push((Egress::Appliance, frame.to_vec()));
            }
        } else {
            match net.fdb.lookup(&dst, now) {
                Some(Location::Local) => {
                    flood = false;
                    to_peer = None;
                    if local_port(Egress::Link) {
                        out.push((Egress::Link, frame.to_vec()));
                    }
                }
                Some(Location::Remote(peer)) => {
                    flood = false;
                    to_peer = Some(peer);
                }
                None => {
                    flood = true;
                    to_peer = None;
                }
            }
        }
        if flood {
            net.counters.flooded += 1;
            if local_port(Egress::Link) {
                out.push((Egress::Link, frame.to_vec()));
            }
            if net.appliance_mac.is_some() && local_port(Egress::Appliance) {
                out.push((Egress::Appliance, frame.to_vec()));
            }
        }
        for (e, _) in &out {
            match e {
                Egress::Link => net.counters.link_tx += 1,
                Egress::Appliance => net.counters.appliance_tx += 1,
                Egress::Uplink => {}
            }
        }
        if !flood && to_peer.is_none() {
            if out.is_empty() {
                net.counters.filtered += 1;
            }
            return Verdict::Forward(out);
        }

        // Everything below goes to the uplink: the overlay MTU applies (smaller for a
        // network that may seal, by what sleeve adds over VXLAN).
        let mode = net.mode;
        let mtu = network_mtu(&self.grid, mode);
        if l3_len(&eth, frame.len()) > usize::from(mtu) {
            self.drops.count(DropReason::TooBig);
            let net = match self.networks.get_mut(&vni) {
                Some(net) => net,
                None => return Verdict::Forward(out),
            };
            net.counters.drops.count(DropReason::TooBig);
            if flood {
                // Local copies are still delivered; only the remote ones are refused.
                // A unicast sender (unknown destination) still learns the path MTU, as
                // Linux's vxlan tells it for every remote of a flood.
                let mut out = out;
                if let Some(reply) = frag_needed(frame, mtu) {
                    net.counters.icmp_frag_needed += 1;
                    match ingress {
                        Ingress::Link => net.counters.link_tx += 1,
                        Ingress::Appliance => net.counters.appliance_tx += 1,
                    }
                    out.push((ingress.egress(), reply));
                }
                return Verdict::Forward(out);
            }
            return match frag_needed(frame, mtu) {
                Some(reply) => {
                    net.counters.icmp_frag_needed += 1;
                    match ingress {
                        Ingress::Link => net.counters.link_tx += 1,
                        Ingress::Appliance => net.counters.appliance_tx += 1,
                    }
                    Verdict::Refuse {
                        reason: DropReason::TooBig,
                        reply: (ingress.egress(), reply),
                    }
                }
                None => Verdict::Drop(DropReason::TooBig),
            };
        }

        let src_port = vxlan::flow_src_port(frame, self.hash_seed, self.src_ports);
        let mut sent = 0u64;
        let mut missing_neighbor = 0u64;
        let mut queued = 0u64;
        // Known unicast needs no list of targets (and no allocation for one).
        let flood_targets: Vec<Ipv4Address>;
        let targets: &[Ipv4Address] = match &to_peer {
            Some(peer) => core::slice::from_ref(peer),
            None => {
                flood_targets = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.networks.contains(&vni))
                    .map(|(a, _)| *a)
                    .collect();
                &flood_targets
            }
        };
        for &addr in targets {
            let Some(peer) = self.peers.get_mut(&addr) else {
                continue;
            };
            let Some(neighbor) = peer.neighbor else {
                peer.counters.no_neighbor += 1;
                missing_neighbor += 1;
                continue;
            };
            if encap::encap(mode, &self.grid.trusted_subnets, addr) == Encap::Sleeve {
                // Sealed with the other frames for this peer and network (at once
                // unless batching, see `flush_sleeve`).
                match self
                    .pending
                    .iter_mut()
                    .find(|p| p.peer == addr && p.vni == vni)
                {
                    Some(p) => p.frames.push(frame.to_vec()),
                    None => self.pending.push(PendingSeal {
                        peer: addr,
                        node: peer.node,
                        vni,
                        outer: encap::OuterAddrs {
                            src_mac: self.underlay.mac,
                            dst_mac: neighbor,
                            src_ip: self.underlay.ip,
                            dst_ip: addr,
                            src_port,
                            ttl: self.ttl,
                        },
                        frames: vec![frame.to_vec()],
                    }),
                }
                self.pending_frames += 1;
                queued += 1;
                continue;
            }
            let outer = Outer {
                src_mac: self.underlay.mac,
                dst_mac: neighbor,
                src_ip: self.underlay.ip,
                dst_ip: addr,
                src_port,
                dst_port: self.grid.vxlan_port,
                vni,
                ident: self.next_ident,
                ttl: self.ttl,
                df: self.grid.df,
                udp_checksum: self.grid.udp_checksum,
            };
            let mut buf = Vec::with_capacity(vxlan::ENCAP_OVERHEAD + frame.len());
            // The MTU check above keeps the frame far below the IPv4 limit.
            if vxlan::encapsulate(&outer, frame, &mut buf).is_err() {
                continue;
            }
            self.next_ident = self.next_ident.wrapping_add(1);
            peer.counters.tx_packets += 1;
            peer.counters.tx_bytes += buf.len() as u64;
            out.push((Egress::Uplink, buf));
            sent += 1;
        }
        // Unbatched, the frames just queued are the only ones pending. Sealed frames
        // count `uplink_tx` when they are sealed, refused ones `seal_refused`.
        let mut seal_refused = 0u64;
        let mut accepted = queued;
        if !self.batch_sleeve || self.pending_frames >= MAX_PENDING_FRAMES {
            let (sealed, refused) = self.seal_pending(now);
            out.extend(sealed.into_iter().map(|m| (Egress::Uplink, m)));
            if !self.batch_sleeve {
                seal_refused = refused;
                accepted = queued.saturating_sub(refused);
            }
        }
        let unicast_unresolved = to_peer.is_some() && sent + accepted == 0 && missing_neighbor > 0;
        let unicast_unsealed = to_peer.is_some() && sent + accepted == 0 && seal_refused > 0;
        for _ in 0..missing_neighbor {
            self.drops.count(DropReason::NoNeighbor);
        }
        if let Some(net) = self.networks.get_mut(&vni) {
            net.counters.uplink_tx += sent;
            for _ in 0..missing_neighbor {
                net.counters.drops.count(DropReason::NoNeighbor);
            }
        }
        if unicast_unsealed {
            return Verdict::Drop(DropReason::SealRefused);
        }
        if unicast_unresolved {
            return Verdict::Drop(DropReason::NoNeighbor);
        }
        Verdict::Forward(out)
    }

    /// Batch frames for sleeve peers (docs/sleeve.md "Batching"): `rx_link` and
    /// `rx_appliance` queue them and [`Overlay::flush_sleeve`] seals each peer's frames
    /// of one network together, as few messages as fit the underlay MTU. The datapath
    /// turns it on and flushes once per poll. Off (the default), every call seals its
    /// own frames and returns them in its verdict. Turning it off flushes nothing:
    /// call `flush_sleeve` first.
    pub fn batch_sleeve(&mut self, on: bool) {
        self.batch_sleeve = on;
    }

    /// Seal every queued sleeve frame: the complete underlay frames to send, in the
    /// order the (peer, network) pairs first had a frame. Refusals are counted
    /// (`drops.seal_refused`); their frames are never sent in clear.
    pub fn flush_sleeve(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.seal_pending(now).0
    }

    /// Frames queued for sealing (batching on), not yet flushed.
    pub fn pending_sleeve_frames(&self) -> usize {
        self.pending_frames
    }

    /// Seal and count the queued frames: (underlay frames, frames refused).
    fn seal_pending(&mut self, now: Instant) -> (Vec<Vec<u8>>, u64) {
        let pending = core::mem::take(&mut self.pending);
        self.pending_frames = 0;
        let mut out = Vec::new();
        let mut refused = 0u64;
        for p in pending {
            let frames: Vec<&[u8]> = p.frames.iter().map(|f| f.as_slice()).collect();
            let n = frames.len() as u64;
            let sealed = match (self.sleeve.as_mut(), self.peers.get_mut(&p.peer)) {
                (Some(link), Some(peer)) if peer.node == p.node => link
                    .seal(p.node, &p.outer, p.vni, &frames, now)
                    .ok()
                    .map(|messages| (peer, messages)),
                _ => None,
            };
            match sealed {
                Some((peer, messages)) => {
                    for m in messages {
                        peer.counters.tx_packets += 1;
                        peer.counters.tx_bytes += m.len() as u64;
                        out.push(m);
                    }
                    if let Some(net) = self.networks.get_mut(&p.vni) {
                        net.counters.uplink_tx += n;
                    }
                }
                None => {
                    refused += n;
                    for _ in 0..n {
                        self.drops.count(DropReason::SealRefused);
                    }
                    if let Some(net) = self.networks.get_mut(&p.vni) {
                        for _ in 0..n {
                            net.counters.drops.count(DropReason::SealRefused);
                        }
                    }
                }
            }
        }
        (out, refused)
    }

    /// A frame received on the uplink. Anything that is not VXLAN for us comes back as
    /// `Drop(NotVxlan)` for the rest of the stack to look at.
    pub fn rx_uplink(&mut self, now: Instant, frame: &[u8]) -> Verdict {
        self.rx_uplink_vni(now, frame).0
    }

    /// [`Overlay::rx_uplink`], also saying which network the frame belonged to (the
    /// datapath needs it to put the link's VLAN tag on what goes there).
    pub fn rx_uplink_vni(&mut self, now: Instant, frame: &[u8]) -> (Verdict, Option<Vni>) {
        let mut vni = None;
        let verdict = self.decap(now, frame, &mut vni);
        match verdict {
            Verdict::Forward(_) => (verdict, vni),
            _ => (verdict, None),
        }
    }

    fn decap(&mut self, now: Instant, frame: &[u8], vni_out: &mut Option<Vni>) -> Verdict {
        if self.sleeve.is_some() {
            match encap::parse_outer(frame) {
                Ok(rx) => return self.decap_sleeve(now, rx, vni_out),
                Err(encap::OuterError::NotSleeve) => {}
                Err(encap::OuterError::BadOuterHeader) => {
                    return self.drop(None, DropReason::BadOuterHeader)
                }
                Err(encap::OuterError::OuterFragment) => {
                    return self.drop(None, DropReason::OuterFragment)
                }
            }
        }
        let d = match vxlan::decapsulate(frame, self.grid.vxlan_port) {
            Ok(d) => d,
            Err(e) => {
                let reason = match e {
                    DecapError::NotVxlan => DropReason::NotVxlan,
                    DecapError::BadOuterHeader => DropReason::BadOuterHeader,
                    DecapError::OuterFragment => DropReason::OuterFragment,
                    DecapError::Vxlan(_) => DropReason::BadVxlanHeader,
                };
                return self.drop(None, reason);
            }
        };
        if d.dst_ip != self.underlay.ip {
            return self.drop(None, DropReason::NotVxlan);
        }
        let vni = d.vni;
        *vni_out = Some(vni);
        // A network that seals for this peer takes nothing from it in plaintext: VXLAN
        // carries no authentication, anyone on the path could inject it.
        if let Some(net) = self.networks.get(&vni) {
            if encap::encap(net.mode, &self.grid.trusted_subnets, d.src_ip) == Encap::Sleeve {
                return self.drop(Some(vni), DropReason::Unsealed);
            }
        }
        self.deliver(now, d.src_ip, vni, d.inner, frame.len())
    }

    /// A sleeve message to our port: open it, deliver each frame as VXLAN decap does.
    fn decap_sleeve(
        &mut self,
        now: Instant,
        rx: encap::Received<'_>,
        vni_out: &mut Option<Vni>,
    ) -> Verdict {
        if rx.dst_ip != self.underlay.ip {
            return self.drop(None, DropReason::NotVxlan);
        }
        let Some(link) = self.sleeve.as_mut() else {
            return self.drop(None, DropReason::NotVxlan);
        };
        let Ok((sender, frames)) = link.open(rx.payload, now) else {
            return self.drop(None, DropReason::SleeveRefused);
        };
        // The sender is authenticated; its underlay address is the configured one (the
        // outer source may be rewritten by NAT on the way).
        let Some(src_ip) = self
            .peers
            .iter()
            .find(|(_, p)| p.node == sender)
            .map(|(a, _)| *a)
        else {
            return self.drop(None, DropReason::UnknownPeer);
        };
        let share = rx.payload.len() / frames.len().max(1);
        let mut out = Vec::new();
        let mut last = Verdict::Forward(Vec::new());
        for (vni, inner) in frames {
            // One verdict carries one network (the datapath tags the link by it).
            if vni_out.is_some_and(|v| v != vni) {
                last = self.drop(Some(vni), DropReason::MixedVni);
                continue;
            }
            match self.deliver(now, src_ip, vni, &inner, share) {
                Verdict::Forward(o) => {
                    *vni_out = Some(vni);
                    out.extend(o);
                }
                other => last = other,
            }
        }
        if vni_out.is_some() {
            Verdict::Forward(out)
        } else {
            last
        }
    }

    /// A decapsulated frame of network `vni` from the peer at `src_ip`, `wire_len` bytes
    /// on the underlay: the per-network rules, then the local ports.
    fn deliver(
        &mut self,
        now: Instant,
        src_ip: Ipv4Address,
        vni: Vni,
        inner_bytes: &[u8],
        wire_len: usize,
    ) -> Verdict {
        if !self.networks.contains_key(&vni) {
            return self.drop(None, DropReason::UnknownVni);
        }
        let known = self
            .peers
            .get(&src_ip)
            .is_some_and(|p| p.networks.contains(&vni));
        if !known {
            return self.drop(Some(vni), DropReason::UnknownPeer);
        }
        let Ok(inner) = EthernetFrame::new_checked(inner_bytes) else {
            return self.drop(Some(vni), DropReason::Runt);
        };
        if !inner.src_addr().is_unicast() {
            return self.drop(Some(vni), DropReason::BadSourceMac);
        }
        if is_tagged(&inner) {
            return self.drop(Some(vni), DropReason::Tagged);
        }
        let dst = inner.dst_addr();
        let Some(net) = self.networks.get(&vni) else {
            return self.drop(None, DropReason::UnknownVni);
        };
        // At most two local ports: the link and the appliance.
        let egress: &[Egress] = if !dst.is_unicast() {
            if net.appliance_mac.is_some() {
                &[Egress::Link, Egress::Appliance]
            } else {
                &[Egress::Link]
            }
        } else if Some(dst) == net.appliance_mac {
            &[Egress::Appliance]
        } else {
            match net.fdb.lookup(&dst, now) {
                Some(Location::Remote(_)) => return self.drop(Some(vni), DropReason::NotLocal),
                // Local, or unknown: the link is one segment, deliver it there.
                Some(Location::Local) | None => &[Egress::Link],
            }
        };
        if let Some(peer) = self.peers.get_mut(&src_ip) {
            peer.counters.rx_packets += 1;
            peer.counters.rx_bytes += wire_len as u64;
        }
        let Some(net) = self.networks.get_mut(&vni) else {
            return self.drop(None, DropReason::UnknownVni);
        };
        net.counters.uplink_rx += 1;
        let out = egress
            .iter()
            .map(|&e| {
                match e {
                    Egress::Link => net.counters.link_tx += 1,
                    Egress::Appliance => net.counters.appliance_tx += 1,
                    Egress::Uplink => {}
                }
                (e, inner_bytes.to_vec())
            })
            .collect();
        Verdict::Forward(out)
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
        let Some(secret) = &self.grid.secret else {
            return;
        };
        if let Some(mut fresh) =
            SleeveLink::new(self.grid.node, secret, underlay_mtu(self.grid.mtu), first)
        {
            for p in self.peers.values() {
                fresh.add_peer(p.node);
            }
            self.sleeve = Some(fresh);
        }
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

    /// Everything `status` shows about the overlay, ready to serialize.
    pub fn status(&self, now: Instant) -> OverlayStatus {
        OverlayStatus {
            node: self.grid.node,
            node_address: self.node_address(),
            underlay_address: self.underlay.ip,
            vxlan_port: self.grid.vxlan_port,
            mtu: self.grid.mtu,
            drops: self.drops,
            sleeve: self
                .sleeve
                .as_ref()
                .map(|l| SleeveStatus::from(l.metrics())),
            networks: self
                .networks
                .iter()
                .map(|(vni, n)| NetworkStatus {
                    name: n.name.clone(),
                    vni: *vni,
                    vlan: n.vlan,
                    appliance_mac: n.appliance_mac.map(Mac),
                    counters: n.counters,
                    fdb: n
                        .fdb
                        .iter()
                        .filter(|(mac, _)| n.fdb.lookup(mac, now).is_some())
                        .map(|(mac, e)| FdbEntryStatus {
                            mac: Mac(*mac),
                            location: match e.location {
                                Location::Local => None,
                                Location::Remote(a) => Some(a),
                            },
                            is_static: e.origin == Origin::Static,
                            age_secs: match e.origin {
                                Origin::Static => None,
                                Origin::Learned { last_seen } => {
                                    Some((now - last_seen).total_millis() / 1000)
                                }
                            },
                        })
                        .collect(),
                    arp: n
                        .arp
                        .iter()
                        .map(|(ip, mac)| ArpEntryStatus {
                            ip: *ip,
                            mac: Mac(*mac),
                        })
                        .collect(),
                })
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|(addr, p)| PeerStatus {
                    node: p.node,
                    name: p.name.clone(),
                    address: *addr,
                    address_kind: p.kind,
                    region: p.region.clone(),
                    networks: p.networks.iter().copied().collect(),
                    neighbor: p.neighbor.map(Mac),
                    counters: p.counters,
                })
                .collect(),
        }
    }
}

/// The underlay MTU the grid's overlay MTU was sized for (VXLAN's overhead above it).
fn underlay_mtu(overlay_mtu: u16) -> u16 {
    overlay_mtu.saturating_add(vxlan::ENCAP_OVERHEAD as u16)
}

/// The overlay MTU of a network in `mode`.
fn network_mtu(grid: &GridConfig, mode: Mode) -> u16 {
    match mode {
        Mode::Vxlan => grid.mtu,
        Mode::Sleeve | Mode::Auto => grid.mtu.saturating_sub(encap::EXTRA_OVERHEAD),
    }
}

fn forget_remote(net: &mut Network, peer: Ipv4Address) {
    let macs: Vec<EthernetAddress> = net
        .fdb
        .iter()
        .filter(|(_, e)| e.location == Location::Remote(peer))
        .map(|(m, _)| *m)
        .collect();
    net.fdb.remove_remote(peer);
    for mac in macs {
        net.arp.remove_mac(&mac);
    }
}

/// Whether the frame carries an 802.1Q (0x8100), 802.1ad (0x88a8) or pre-standard
/// QinQ (0x9100) tag.
fn is_tagged<T: AsRef<[u8]>>(eth: &EthernetFrame<T>) -> bool {
    matches!(
        eth.ethertype(),
        EthernetProtocol::Unknown(0x8100 | 0x88a8 | 0x9100)
    )
}

/// The length of the frame's L3 packet (after the Ethernet header and one VLAN tag).
fn l3_len<T: AsRef<[u8]>>(eth: &EthernetFrame<T>, frame_len: usize) -> usize {
    let header = if eth.ethertype() == EthernetProtocol::Unknown(0x8100) {
        ETHERNET_HEADER_LEN + VLAN_TAG_LEN
    } else {
        ETHERNET_HEADER_LEN
    };
    frame_len.saturating_sub(header)
}

/// ARP suppression: the reply to an ARP request for an address in the network's ARP
/// table, built with smoltcp's `ArpRepr`. Gratuitous ARP (sender = target) is not
/// answered.
fn arp_suppress<T: AsRef<[u8]>>(net: &Network, eth: &EthernetFrame<T>) -> Option<Vec<u8>> {
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let packet = ArpPacket::new_checked(&eth.as_ref()[ETHERNET_HEADER_LEN..]).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&packet).ok()?
    else {
        return None;
    };
    if source_protocol_addr == target_protocol_addr {
        return None;
    }
    let target_mac = net.arp.lookup(&target_protocol_addr)?;
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: target_mac,
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let eth_repr = EthernetRepr {
        src_addr: target_mac,
        dst_addr: eth.src_addr(),
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth_repr.buffer_len() + reply.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth_repr.emit(&mut frame);
    reply.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    Some(buf)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub node: NodeId,
    pub node_address: Ipv4Address,
    pub underlay_address: Ipv4Address,
    pub vxlan_port: u16,
    pub mtu: u16,
    pub drops: DropCounters,
    /// The sleeve endpoint's counters, when `[grid]` has a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleeve: Option<SleeveStatus>,
    pub networks: Vec<NetworkStatus>,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub vni: Vni,
    pub vlan: Option<VlanId>,
    pub appliance_mac: Option<Mac>,
    pub counters: NetworkCounters,
    pub fdb: Vec<FdbEntryStatus>,
    pub arp: Vec<ArpEntryStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntryStatus {
    pub mac: Mac,
    /// The peer's underlay address; `None` for the local container link.
    pub location: Option<Ipv4Address>,
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Seconds since a learned entry was last seen.
    pub age_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArpEntryStatus {
    pub ip: Ipv4Address,
    pub mac: Mac,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: NodeId,
    pub name: Option<String>,
    /// The underlay address in use (private in the same region, else public).
    pub address: Ipv4Address,
    /// Which of the peer's addresses `address` is.
    pub address_kind: encap::AddressKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub networks: Vec<Vni>,
    pub neighbor: Option<Mac>,
    pub counters: PeerCounters,
}

#[cfg(test)]
mod tests;
