//! The overlay datapath: what `Netstack::poll` does with frames once an overlay is
//! configured. Uplink frames go to the VTEP first; what is not VXLAN for us goes on to
//! the uplink's smoltcp interface as before. Link frames are split into networks by
//! their 802.1Q tag and bridged by the overlay; untagged frames with no untagged network
//! go to the link's interface as before. The appliance's own frames on the link (ARP,
//! ICMP, DNS for the node address) are bridged like a container's, into the network of
//! the host they answer. Underlay neighbours of the peers are resolved here.
//!
//! It never reads a clock, never blocks, and never lets a frame cross from one network
//! to another: every frame is handed to the overlay with the one VNI it arrived on.
//!
//! The receive and send paths are `rx.rs`, the router's segments `routed.rs`, underlay
//! neighbours `underlay.rs`, where the interface's answers go `replies.rs`; here the
//! `OverlayPath` and its control.

mod outbox;
mod replies;
mod routed;
mod rx;
mod status;
mod underlay;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};

use crate::base::{VlanId, Vni};
use crate::pipeline::capture::InnerTap;
use crate::stage::overlay::config::{NetworkConfig, OverlayConfig, PeerConfig};
use crate::stage::overlay::{Overlay, OverlayError};
use crate::table::fdb::Location;
use outbox::Outbox;
use replies::ReplyRoutes;
pub use replies::REPLY_ROUTES;
pub(crate) use routed::RouterHook;
pub use status::{DatapathCounters, DatapathStatus, NeighborStatus};
pub use underlay::{UnderlayNeighbors, UplinkAddress, CAPACITY, FIRST_RETRY, MAX_RETRY};

/// Learned FDB entries are swept this often.
pub const AGE_INTERVAL: Duration = Duration::from_secs(1);

/// The overlay as the netstack runs it: the VTEP and bridge, the link's VLAN map, the
/// underlay neighbours, and where the appliance's answers go.
#[derive(Debug, Clone)]
pub struct OverlayPath {
    overlay: Overlay,
    link_mac: EthernetAddress,
    by_tag: BTreeMap<Option<VlanId>, Vni>,
    vlan_of: BTreeMap<Vni, Option<VlanId>>,
    neighbors: UnderlayNeighbors,
    replies: ReplyRoutes,
    next_age: Option<Instant>,
    counters: DatapathCounters,
    /// Inner frames of the networks a capture watches, staged for it during a poll.
    inner_tap: InnerTap,
    /// What a poll sends, kept for the next poll's frames.
    outbox: Outbox,
}

impl OverlayPath {
    /// Run `overlay` with the appliance's link interface (MAC `link_mac`) attached to
    /// every network, as the node address.
    /// Frames for a sleeve peer are sealed together once per poll (batching).
    pub fn new(
        mut overlay: Overlay,
        link_mac: EthernetAddress,
    ) -> Result<OverlayPath, OverlayError> {
        overlay.batch_sleeve(true);
        let mut path = OverlayPath {
            overlay,
            link_mac,
            by_tag: BTreeMap::new(),
            vlan_of: BTreeMap::new(),
            neighbors: UnderlayNeighbors::new(),
            replies: ReplyRoutes::default(),
            next_age: None,
            counters: DatapathCounters::default(),
            inner_tap: InnerTap::default(),
            outbox: Outbox::default(),
        };
        let vnis: Vec<Vni> = path.overlay.networks().map(|(v, _, _)| v).collect();
        for vni in vnis {
            path.overlay.attach_appliance(vni, Some(link_mac))?;
        }
        path.reindex();
        Ok(path)
    }

    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// Seal to `node` under `session` from now on (see [`Overlay::sleeve_restart_tx`]).
    pub fn sleeve_restart_tx(
        &mut self,
        node: crate::base::NodeId,
        session: crate::stage::sleeve::SessionId,
    ) -> bool {
        self.overlay.sleeve_restart_tx(node, session)
    }

    pub fn counters(&self) -> DatapathCounters {
        self.counters
    }

    pub(crate) fn inner_tap_mut(&mut self) -> &mut InnerTap {
        &mut self.inner_tap
    }

    pub fn neighbors(&self) -> &UnderlayNeighbors {
        &self.neighbors
    }

    /// The node address with the grid's prefix, as the link interface carries it.
    pub fn node_cidr(&self) -> Ipv4Cidr {
        Ipv4Cidr::new(
            self.overlay.node_address(),
            self.overlay.grid().subnet.0.prefix_len(),
        )
    }

    /// The network on the link's untagged frames, or on VLAN `vlan`.
    pub fn vni_on_link(&self, vlan: Option<VlanId>) -> Option<Vni> {
        self.by_tag.get(&vlan).copied()
    }

    fn reindex(&mut self) {
        self.by_tag = self.overlay.networks().map(|(v, _, t)| (t, v)).collect();
        self.vlan_of = self.overlay.networks().map(|(v, _, t)| (v, t)).collect();
    }

    /// Add a network (or rename / re-VLAN the one with its VNI), with the appliance on it.
    pub fn add_network(&mut self, net: &NetworkConfig) -> Result<(), OverlayError> {
        self.overlay.add_network(net)?;
        self.overlay
            .attach_appliance(net.vni, Some(self.link_mac))?;
        self.reindex();
        Ok(())
    }

    pub fn remove_network(&mut self, vni: Vni) -> bool {
        let removed = self.overlay.remove_network(vni);
        self.replies.forget(vni);
        self.reindex();
        removed
    }

    /// Brings the overlay in line with `config` in place ([`Overlay::reconcile`]: a
    /// refusal changes nothing), with the appliance on every network.
    pub fn reconcile(&mut self, config: &OverlayConfig) -> Result<(), OverlayError> {
        let done = self.overlay.reconcile(config)?;
        for vni in done.removed_networks {
            self.replies.forget(vni);
        }
        for net in &config.networks {
            self.overlay
                .attach_appliance(net.vni, Some(self.link_mac))?;
        }
        self.reindex();
        Ok(())
    }

    pub fn add_peer(&mut self, peer: &PeerConfig) -> Result<(), OverlayError> {
        self.overlay.add_peer(peer)
    }

    pub fn remove_peer(&mut self, address: Ipv4Address) -> bool {
        self.overlay.remove_peer(address)
    }

    pub fn add_static(
        &mut self,
        vni: Vni,
        mac: EthernetAddress,
        location: Location,
        ip: Option<Ipv4Address>,
        now: Instant,
    ) -> Result<(), OverlayError> {
        self.overlay.add_static(vni, mac, location, ip, now)
    }

    pub fn remove_static(&mut self, vni: Vni, mac: EthernetAddress) -> Result<bool, OverlayError> {
        self.overlay.remove_static(vni, mac)
    }

    /// When the datapath wants to be polled again (an ARP retry or the ageing sweep).
    pub fn poll_at(&self) -> Option<Instant> {
        match (self.neighbors.next_try(), self.next_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
