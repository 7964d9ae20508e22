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

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, Ipv4Address, Ipv4Cidr,
    Ipv4Packet,
};

use crate::base::{Mac, VlanId, Vni, MAX_FRAME_LEN};
use crate::pipeline::counters::{DropReason as NicDrop, NicCounters};
use crate::pipeline::netstack::{Nic, RX_BATCH};
use crate::pipeline::port::Port;
use crate::stage::local::NicIface;
use crate::stage::overlay::config::{NetworkConfig, PeerConfig};
use crate::stage::overlay::{
    DropReason, Egress, Output, Overlay, OverlayError, OverlayStatus, Verdict,
};
use crate::stage::route::{Origin, Segment};
use crate::table::fdb::Location;
use crate::table::neighbor::NeighborCounters;
use crate::wire::vlan::{self, Tag};

/// Learned FDB entries are swept this often.
pub const AGE_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many hosts are remembered per table of [`ReplyRoutes`].
pub const REPLY_ROUTES: usize = 1024;

mod routed;
mod underlay;
pub(crate) use routed::RouterHook;
pub use underlay::{UnderlayNeighbors, UplinkAddress, CAPACITY, FIRST_RETRY, MAX_RETRY};

/// Which segment each host that talked to the appliance's link interface was on, so
/// that the interface's answers go back there (smoltcp itself knows nothing of VLANs
/// or VNIs). Bounded: a full table starts over, and entries are learned again from the
/// next frame.
#[derive(Debug, Clone, Default)]
struct ReplyRoutes {
    by_mac: BTreeMap<EthernetAddress, Segment>,
    by_ip: BTreeMap<Ipv4Address, Segment>,
}

fn remember<K: Ord>(map: &mut BTreeMap<K, Segment>, key: K, seg: Segment) {
    if map.len() >= REPLY_ROUTES && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, seg);
}

impl ReplyRoutes {
    /// `frame` is about to reach the interface from `seg`.
    fn record(&mut self, frame: &[u8], seg: Segment) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        if eth.src_addr().is_unicast() {
            remember(&mut self.by_mac, eth.src_addr(), seg);
        }
        if let Some(ip) = sender_ip(&eth).filter(|ip| is_host(*ip)) {
            remember(&mut self.by_ip, ip, seg);
        }
    }

    /// Where the interface's `frame` goes; `None`: nothing says, every segment.
    fn route(&self, frame: &[u8]) -> Option<Segment> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let dst = eth.dst_addr();
        if dst.is_unicast() {
            return self.by_mac.get(&dst).copied();
        }
        // A broadcast ARP request: the segment of the host it asks for.
        let packet = ArpPacket::new_checked(eth.payload()).ok()?;
        match ArpRepr::parse(&packet).ok()? {
            ArpRepr::EthernetIpv4 {
                target_protocol_addr,
                ..
            } if eth.ethertype() == EthernetProtocol::Arp => {
                self.by_ip.get(&target_protocol_addr).copied()
            }
            _ => None,
        }
    }

    fn forget(&mut self, vni: Vni) {
        self.by_mac.retain(|_, s| *s != Segment::Network(vni));
        self.by_ip.retain(|_, s| *s != Segment::Network(vni));
    }
}

/// Whether `ip` can be one host's address.
fn is_host(ip: Ipv4Address) -> bool {
    !(ip.is_broadcast() || ip.is_multicast() || ip.is_unspecified())
}

/// The IPv4 sender of an ARP or IPv4 frame.
fn sender_ip(eth: &EthernetFrame<&[u8]>) -> Option<Ipv4Address> {
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let packet = ArpPacket::new_checked(eth.payload()).ok()?;
            match ArpRepr::parse(&packet).ok()? {
                ArpRepr::EthernetIpv4 {
                    source_protocol_addr,
                    ..
                } => Some(source_protocol_addr),
                _ => None,
            }
        }
        EthernetProtocol::Ipv4 => Ipv4Packet::new_checked(eth.payload())
            .ok()
            .map(|p| p.src_addr()),
        _ => None,
    }
}

/// Counters of the datapath itself (the overlay and the NICs count the rest).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathCounters {
    /// Link frames dropped: tagged with a VLAN no network uses (or the reserved 4095).
    pub unknown_vlan: u64,
    /// Frames of the appliance's interface sent to every segment, because no host
    /// it talked to said which one (e.g. its ARP requests for an unknown address).
    pub appliance_flooded: u64,
}

/// One resolved underlay neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborStatus {
    pub ip: Ipv4Address,
    pub mac: Mac,
}

/// What `status` shows about the overlay: the VTEP's own status, plus the link VLANs'
/// and the underlay neighbours' counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathStatus {
    #[serde(flatten)]
    pub overlay: OverlayStatus,
    pub datapath: DatapathCounters,
    pub underlay_arp: NeighborCounters,
    pub underlay_neighbors: Vec<NeighborStatus>,
}

/// Frames to send, collected while ports are busy receiving.
#[derive(Debug, Default)]
struct Outbox {
    uplink: Vec<Vec<u8>>,
    link: Vec<Vec<u8>>,
}

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

    pub fn counters(&self) -> DatapathCounters {
        self.counters
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

    pub fn status(&self, now: Instant) -> DatapathStatus {
        DatapathStatus {
            overlay: self.overlay.status(now),
            datapath: self.counters,
            underlay_arp: self.neighbors.counters(),
            underlay_neighbors: self
                .neighbors
                .iter()
                .map(|(ip, mac)| NeighborStatus {
                    ip: *ip,
                    mac: Mac(*mac),
                })
                .collect(),
        }
    }

    /// When the datapath wants to be polled again (an ARP retry or the ageing sweep).
    pub fn poll_at(&self) -> Option<Instant> {
        match (self.neighbors.next_try(), self.next_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `Netstack::poll` with an overlay; returns (work done, more input may be pending).
    pub(crate) fn poll(
        &mut self,
        now: Instant,
        uplink: &mut Nic,
        link: &mut Nic,
        uplink_port: &mut dyn Port,
        link_port: &mut dyn Port,
        hook: Option<&RouterHook>,
    ) -> (bool, bool) {
        let mut out = Outbox::default();
        let own = uplink.iface.address().map(|a| UplinkAddress {
            mac: uplink.iface.mac(),
            cidr: a.cidr,
            gateway: a.gateway,
        });
        // First, so that peers added since the last poll use a known MAC at once.
        if let Some(own) = own {
            self.resolve(now, &own, &mut out);
        }

        // What a frame sends out of the other port goes at once (so a flood to many
        // peers never piles up a batch's worth of copies); only what goes back out of
        // the receiving port waits for the end of the batch. Frames for sleeve peers
        // wait too, to be sealed together (bounded by `overlay::MAX_PENDING_FRAMES`).
        let mut sent_early = false;
        let taken_u = uplink_port.receive_batch(RX_BATCH, &mut |frame| {
            self.rx_uplink(
                now,
                frame,
                own.as_ref(),
                uplink,
                &mut link.iface,
                &mut out,
                hook,
            );
            sent_early |= flush(&mut out.link, link_port, &mut link.counters);
        });
        let taken_l = link_port.receive_batch(RX_BATCH, &mut |frame| {
            self.rx_link(now, frame, link, &mut out, hook);
            sent_early |= flush(&mut out.uplink, uplink_port, &mut uplink.counters);
        });

        let changed_u = uplink.iface.poll(now);
        while let Some(frame) = uplink.iface.pop_tx() {
            out.uplink.push(frame);
        }
        let changed_l = link.iface.poll(now);
        while let Some(frame) = link.iface.pop_tx() {
            self.rx_appliance(now, frame, &mut link.iface, &mut out, hook);
        }

        if self.next_age.is_none_or(|t| t <= now) {
            self.overlay.age(now);
            self.next_age = Some(now + AGE_INTERVAL);
        }

        // The sleeve peers' frames of this poll, sealed together (docs/sleeve.md
        // "Batching"): small frames share datagrams, none waits for a later poll.
        out.uplink.extend(self.overlay.flush_sleeve(now));
        let sent_u = flush(&mut out.uplink, uplink_port, &mut uplink.counters);
        let sent_l = flush(&mut out.link, link_port, &mut link.counters);
        let more = taken_u >= RX_BATCH
            || taken_l >= RX_BATCH
            || uplink.iface.pending_rx() > 0
            || link.iface.pending_rx() > 0;
        let work =
            taken_u > 0 || taken_l > 0 || changed_u || changed_l || sent_u || sent_l || sent_early;
        (work, more)
    }

    // The receive path's whole context; a struct for it would only rename the list.
    #[allow(clippy::too_many_arguments)]
    fn rx_uplink(
        &mut self,
        now: Instant,
        frame: &[u8],
        own: Option<&UplinkAddress>,
        uplink: &mut Nic,
        link_iface: &mut NicIface,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
    ) {
        uplink.counters.received(frame.len());
        if let Err(reason) = Nic::check_frame(&uplink.iface, frame, MAX_FRAME_LEN) {
            uplink.counters.dropped(reason);
            return;
        }
        if let Some(own) = own {
            // ARP teaches us peers' MACs; smoltcp sees the frame as well (below).
            if let Some((ip, mac)) = self.neighbors.observe(frame, own) {
                self.rebind(ip, mac, own);
            }
        }
        match self.overlay.rx_uplink_vni(now, frame) {
            (Verdict::Drop(DropReason::NotVxlan), _) => {
                match Nic::check_destination(&uplink.iface, frame) {
                    Ok(()) => uplink.iface.push_rx(frame),
                    Err(reason) => uplink.counters.dropped(reason),
                }
            }
            (Verdict::Forward(outs), Some(vni)) => {
                self.emit(vni, outs, link_iface, out, Origin::Remote, hook)
            }
            // Counted by the overlay.
            _ => {}
        }
    }

    fn rx_link(
        &mut self,
        now: Instant,
        frame: &[u8],
        link: &mut Nic,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
    ) {
        link.counters.received(frame.len());
        let tagged = frame.get(12..14) == Some(&vlan::TPID.to_be_bytes()[..]);
        let max_len = MAX_FRAME_LEN + if tagged { vlan::TAG_LEN } else { 0 };
        if let Err(reason) = Nic::check_frame(&link.iface, frame, max_len) {
            link.counters.dropped(reason);
            return;
        }
        let Ok((tag, inner)) = vlan::untag(frame) else {
            link.counters.dropped(NicDrop::Runt);
            return;
        };
        let vni = match tag {
            Tag::Untagged => self.by_tag.get(&None),
            Tag::Vlan(v) => self.by_tag.get(&Some(v)),
            Tag::Reserved => None,
        };
        match (vni.copied(), tag) {
            (Some(vni), _) => match self.overlay.rx_link(now, vni, inner.as_ref()) {
                Verdict::Forward(outs) => {
                    self.emit(vni, outs, &mut link.iface, out, Origin::Local, hook)
                }
                Verdict::Refuse { reply, .. } => self.emit(
                    vni,
                    alloc::vec![reply],
                    &mut link.iface,
                    out,
                    Origin::Local,
                    hook,
                ),
                Verdict::Drop(_) => {}
            },
            (None, Tag::Untagged) => match Nic::check_destination(&link.iface, frame) {
                Ok(()) => {
                    self.replies.record(frame, Segment::Plain);
                    if !routed::offer(hook, Segment::Plain, Origin::Local, frame) {
                        link.iface.push_rx(frame);
                    }
                }
                Err(reason) => link.counters.dropped(reason),
            },
            (None, _) => self.counters.unknown_vlan += 1,
        }
    }

    /// A frame the link interface sent: into the network of the host it answers.
    fn rx_appliance(
        &mut self,
        now: Instant,
        frame: Vec<u8>,
        link_iface: &mut NicIface,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
    ) {
        let targets: Vec<Segment> = match self.replies.route(&frame) {
            Some(Segment::Network(vni)) if self.vlan_of.contains_key(&vni) => {
                alloc::vec![Segment::Network(vni)]
            }
            Some(Segment::Plain) if !self.by_tag.contains_key(&None) => {
                alloc::vec![Segment::Plain]
            }
            _ => {
                self.counters.appliance_flooded += 1;
                let plain = (!self.by_tag.contains_key(&None)).then_some(Segment::Plain);
                plain
                    .into_iter()
                    .chain(self.vlan_of.keys().map(|v| Segment::Network(*v)))
                    .collect()
            }
        };
        for seg in targets {
            match seg {
                Segment::Plain => out.link.push(frame.clone()),
                Segment::Network(vni) => {
                    self.appliance_into(now, vni, &frame, link_iface, out, hook)
                }
            }
        }
    }

    /// A frame of the appliance (its interface or its router) into network `vni`.
    fn appliance_into(
        &mut self,
        now: Instant,
        vni: Vni,
        frame: &[u8],
        link_iface: &mut NicIface,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
    ) {
        match self.overlay.rx_appliance(now, vni, frame) {
            Verdict::Forward(outs) => self.emit(vni, outs, link_iface, out, Origin::Local, hook),
            Verdict::Refuse { reply, .. } => self.emit(
                vni,
                alloc::vec![reply],
                link_iface,
                out,
                Origin::Local,
                hook,
            ),
            Verdict::Drop(_) => {}
        }
    }

    /// Send the overlay's output for network `vni` where it goes. What reaches the
    /// appliance is offered to the router first (`origin`: how it reached this node).
    fn emit(
        &mut self,
        vni: Vni,
        outs: Vec<Output>,
        link_iface: &mut NicIface,
        out: &mut Outbox,
        origin: Origin,
        hook: Option<&RouterHook>,
    ) {
        let vlan = self.vlan_of.get(&vni).copied().flatten();
        for (egress, frame) in outs {
            match egress {
                Egress::Link => out.link.push(vlan::tag(frame, vlan)),
                Egress::Uplink => out.uplink.push(frame),
                Egress::Appliance => {
                    self.replies.record(&frame, Segment::Network(vni));
                    let seg = Segment::Network(vni);
                    let origin = routed::origin(&self.overlay, vni, &frame, origin, hook);
                    if !routed::offer(hook, seg, origin, &frame) {
                        link_iface.push_rx(&frame);
                    }
                }
            }
        }
    }
}

/// Transmit (and take) `frames` on `port`, counting; true if any was sent. The
/// vector keeps its buffer for the next frame.
fn flush(frames: &mut Vec<Vec<u8>>, port: &mut dyn Port, counters: &mut NicCounters) -> bool {
    let any = !frames.is_empty();
    for frame in frames.drain(..) {
        match port.transmit(&frame) {
            Ok(()) => counters.transmitted(frame.len()),
            Err(_) => counters.dropped(NicDrop::TxFull),
        }
    }
    any
}
