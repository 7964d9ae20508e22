//! The routed path between the uplink and the container link: every IPv4 frame sent to
//! one of the appliance's MACs goes through the NAT first; what it translates (published
//! ports, masquerade, hairpin) is sent out of the other NIC (or the same one, hairpin)
//! with the next hop's MAC, the NIC's MAC as source and the TTL decremented. Next hops
//! are resolved with ARP from the outgoing NIC's own address; a few frames wait for
//! the answer. Everything else (ARP, frames for the appliance's own addresses, the
//! container subnet, the overlay) continues to smoltcp and the overlay untouched.
//!
//! With an overlay, the container side is split into segments (the plain link and each
//! overlay network): the datapath hands the router what reaches the appliance on a
//! segment ([`Router::receive_on`]), and the router's container-side output leaves with
//! the segment its next hop was learned on ([`Router::take_routed`]), so a translated
//! frame reaches a container on an overlay network, local or behind a peer, through that
//! network's bridge (`datapath::routed`).
//!
//! Sans-I/O: `Netstack::poll` hands it frames and takes its output; it never reads a
//! clock, never sends by itself and never panics on frame contents.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Ipv4Address, Ipv4Cidr,
};

use crate::base::{NicAddress, NicId, Transport, Vni, MAX_FRAME_LEN};
use crate::pipeline::port::Port;
use crate::stage::nat::{Nat, Verdict};
use crate::table::rate_limit::RateLimit;
use crate::wire::checksum;
use crate::wire::icmp_error;
use crate::wire::probe;

const ETHERNET_HEADER_LEN: usize = 14;
/// Frames waiting for ARP, over all next hops; more are dropped (`unresolved`).
pub const PENDING_CAPACITY: usize = 64;
/// A frame waits at most this long for its next hop's MAC.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(3);
/// At most one ARP request per next hop this often.
pub const ARP_RETRY: Duration = Duration::from_secs(1);
/// Learned neighbours kept per router (both sides together).
pub const NEIGHBOR_CAPACITY: usize = 4096;
/// NAT expiry work per poll (flows swept).
const NAT_BUDGET: usize = 256;

/// The addressing of both NICs as the router needs it, read from the interfaces on
/// every poll so reconfiguration takes effect at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interfaces {
    pub uplink_mac: EthernetAddress,
    pub uplink: Option<NicAddress>,
    pub link_mac: EthernetAddress,
    pub link: Option<NicAddress>,
    /// The overlay node address on the link, when an overlay runs.
    pub link_extra: Option<Ipv4Cidr>,
    /// An overlay runs: the container side is reached through its segments.
    pub overlay: bool,
}

/// A part of the container side when an overlay runs: the untagged link outside every
/// network, or one overlay network (its VLAN on the link and its peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Segment {
    Plain,
    Network(Vni),
}

/// How a frame handed to [`Router::receive_on`] reached this node: from the link
/// (`Local`), or decapsulated from a peer (`Remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Local,
    Remote,
}

/// Where a container-side neighbour was last heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub segment: Segment,
    pub origin: Origin,
}

impl Interfaces {
    fn mac(&self, side: NicId) -> EthernetAddress {
        match side {
            NicId::Uplink => self.uplink_mac,
            NicId::Link => self.link_mac,
        }
    }

    fn address(&self, side: NicId) -> Option<Ipv4Address> {
        match side {
            NicId::Uplink => self.uplink.map(|a| a.cidr.address()),
            NicId::Link => self.link.map(|a| a.cidr.address()),
        }
    }

    /// The sender address of the router's ARP requests out of `side`: on the overlay's
    /// networks the node address (every network has it), else the NIC's own.
    fn arp_source(&self, side: NicId) -> Option<Ipv4Address> {
        match (side, self.link_extra) {
            (NicId::Link, Some(node)) if self.overlay => Some(node.address()),
            _ => self.address(side),
        }
    }

    /// Frames for these destinations arriving on the link are the bridge's business,
    /// never the NAT's: other addresses of the link subnets, broadcast, multicast. The
    /// appliance's own addresses do go through the NAT: hairpin replies come back to
    /// the node address (and what is not a tracked flow passes on to smoltcp).
    fn link_local(&self, dst: Ipv4Address) -> bool {
        let on = |c: Ipv4Cidr| c.address() != dst && c.contains_addr(&dst);
        self.link.is_some_and(|a| on(a.cidr))
            || self.link_extra.is_some_and(on)
            || dst.is_broadcast()
            || dst.is_multicast()
    }

    /// The neighbour a frame for `dst` goes to when sent out of `side`.
    fn next_hop(&self, side: NicId, dst: Ipv4Address) -> Option<Ipv4Address> {
        match side {
            NicId::Uplink => self.uplink?.next_hop(dst),
            NicId::Link => {
                let on = |c: Ipv4Cidr| c.contains_addr(&dst);
                (self.link.is_some_and(|a| on(a.cidr)) || self.link_extra.is_some_and(on))
                    .then_some(dst)
            }
        }
    }
}

/// What the router did, beside the NAT's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterCounters {
    /// Translated frames sent out of a NIC.
    pub forwarded: u64,
    /// Dropped: the TTL would reach zero.
    pub ttl_expired: u64,
    /// ICMP time exceeded sent back for such a packet (RFC 1812 §5.3.1).
    pub time_exceeded_sent: u64,
    /// ICMP errors not sent: over the rate limit (RFC 1812 §4.3.2.8).
    pub icmp_rate_limited: u64,
    /// Dropped: no next hop (no uplink gateway, destination not on the link).
    pub no_route: u64,
    /// Dropped: the next hop did not answer ARP in time, or too many frames waited.
    pub unresolved: u64,
    pub arp_requests: u64,
    /// Dropped: the NIC's transmit queue was full.
    pub tx_full: u64,
    /// Translated frames sent into an overlay network (local or remote container).
    #[serde(default)]
    pub routed_into_overlay: u64,
    /// Frames taken from an overlay network that arrived from a peer.
    #[serde(default)]
    pub from_remote: u64,
}

struct Pending {
    side: NicId,
    hop: Ipv4Address,
    since: Instant,
    frame: Vec<u8>,
}

/// An untranslated uplink frame for a published port whose target is not placed yet:
/// whether the flow needs the node address as source depends on where it lives.
struct Held {
    target: Ipv4Address,
    since: Instant,
    frame: Vec<u8>,
}

/// The NAT plus what routing around it takes: neighbour tables and output queues.
pub struct Router {
    nat: Nat,
    neighbors: BTreeMap<(NicId, Ipv4Address), EthernetAddress>,
    asked: BTreeMap<(NicId, Ipv4Address), Instant>,
    pending: VecDeque<Pending>,
    out_uplink: Vec<Vec<u8>>,
    out_link: Vec<Vec<u8>>,
    /// Container-side output while an overlay runs, with the segment it goes to
    /// (`None`: every segment, for ARP requests to a host not yet placed).
    out_routed: Vec<(Option<Segment>, Vec<u8>)>,
    /// Container-side neighbours' segments (same capacity as `neighbors`).
    placement: BTreeMap<Ipv4Address, Placement>,
    /// Frames for published ports waiting for their target's placement (counted in
    /// `PENDING_CAPACITY` with `pending`).
    held: VecDeque<Held>,
    counters: RouterCounters,
    icmp_limit: RateLimit,
}

impl Router {
    pub fn new(nat: Nat) -> Router {
        Router {
            nat,
            neighbors: BTreeMap::new(),
            asked: BTreeMap::new(),
            pending: VecDeque::new(),
            out_uplink: Vec::new(),
            out_link: Vec::new(),
            out_routed: Vec::new(),
            placement: BTreeMap::new(),
            held: VecDeque::new(),
            counters: RouterCounters::default(),
            icmp_limit: RateLimit::default(),
        }
    }

    pub fn nat(&self) -> &Nat {
        &self.nat
    }

    pub fn nat_mut(&mut self) -> &mut Nat {
        &mut self.nat
    }

    pub fn counters(&self) -> RouterCounters {
        self.counters
    }

    /// A neighbour learned on `side`.
    pub fn neighbor(&self, side: NicId, ip: Ipv4Address) -> Option<EthernetAddress> {
        self.neighbors.get(&(side, ip)).copied()
    }

    /// Where a container-side neighbour was last heard from (with an overlay).
    pub fn placement(&self, ip: Ipv4Address) -> Option<Placement> {
        self.placement.get(&ip).copied()
    }

    fn learn(
        &mut self,
        side: NicId,
        ip: Ipv4Address,
        mac: EthernetAddress,
        at: Option<Placement>,
        ifs: &Interfaces,
    ) {
        if !mac.is_unicast() || ip.is_unspecified() {
            return;
        }
        let key = (side, ip);
        if self.neighbors.len() >= NEIGHBOR_CAPACITY && !self.neighbors.contains_key(&key) {
            return;
        }
        if let Some(at) = at.filter(|_| side == NicId::Link) {
            self.placement.insert(ip, at);
            self.nat.set_remote(ip, at.origin == Origin::Remote);
        }
        if self.neighbors.get(&key) == Some(&mac) {
            return;
        }
        self.neighbors.insert(key, mac);
        self.asked.remove(&key);
        // Frames that waited for this neighbour go now, in order.
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if p.side == key.0 && p.hop == ip {
                if let Some(p) = self.pending.remove(i) {
                    self.emit(p.side, p.hop, mac, p.frame, ifs);
                }
            } else {
                i += 1;
            }
        }
    }

    fn emit(
        &mut self,
        side: NicId,
        hop: Ipv4Address,
        dst: EthernetAddress,
        mut frame: Vec<u8>,
        ifs: &Interfaces,
    ) {
        frame[..6].copy_from_slice(&dst.0);
        self.counters.forwarded += 1;
        match side {
            NicId::Uplink => self.out_uplink.push(frame),
            NicId::Link if ifs.overlay => {
                let segment = self.placement.get(&hop).map(|p| p.segment);
                if matches!(segment, Some(Segment::Network(_))) {
                    self.counters.routed_into_overlay += 1;
                }
                self.out_routed.push((segment, frame));
            }
            NicId::Link => self.out_link.push(frame),
        }
    }

    /// The container-side frames queued for the overlay's segments; the datapath
    /// sends each into its segment (`None`: every segment).
    pub fn take_routed(&mut self) -> Vec<(Option<Segment>, Vec<u8>)> {
        core::mem::take(&mut self.out_routed)
    }

    /// Looks at a frame received on `side`; returns true when the router took it (the
    /// interface and overlay must not see it), false to hand it on unchanged.
    pub fn receive(&mut self, side: NicId, frame: &[u8], ifs: &Interfaces, now: Instant) -> bool {
        self.receive_at(side, None, frame, ifs, now)
    }

    /// A frame that reached the appliance on a container-side `segment` of the overlay
    /// (sent to its MAC, or broadcast): as [`Router::receive`] from the container side,
    /// and the sender is placed on that segment. VIPs are proxy-answered only to local
    /// containers: a remote one asks its own node.
    pub fn receive_on(
        &mut self,
        segment: Segment,
        origin: Origin,
        frame: &[u8],
        ifs: &Interfaces,
        now: Instant,
    ) -> bool {
        let at = Placement { segment, origin };
        let taken = self.receive_at(NicId::Link, Some(at), frame, ifs, now);
        if taken && origin == Origin::Remote {
            self.counters.from_remote += 1;
        }
        taken
    }

    fn receive_at(
        &mut self,
        side: NicId,
        at: Option<Placement>,
        frame: &[u8],
        ifs: &Interfaces,
        now: Instant,
    ) -> bool {
        // Oversize frames are the interface's to count and drop.
        if frame.len() > MAX_FRAME_LEN {
            return false;
        }
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return false;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let Ok(ArpRepr::EthernetIpv4 {
                    operation,
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                }) = ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p))
                else {
                    return false;
                };
                self.learn(side, source_protocol_addr, source_hardware_addr, at, ifs);
                self.release_held(ifs, now);
                // Service VIPs sit in the container subnet with no host behind them:
                // the appliance answers for them on the link (proxy ARP).
                if side == NicId::Link
                    && at.is_none_or(|a| a.origin == Origin::Local)
                    && operation == ArpOperation::Request
                    && self.nat.lb().is_vip(target_protocol_addr)
                    && source_hardware_addr.is_unicast()
                {
                    let reply = ArpRepr::EthernetIpv4 {
                        operation: ArpOperation::Reply,
                        source_hardware_addr: ifs.link_mac,
                        source_protocol_addr: target_protocol_addr,
                        target_hardware_addr: source_hardware_addr,
                        target_protocol_addr: source_protocol_addr,
                    };
                    let mut f = alloc::vec![0u8; ETHERNET_HEADER_LEN + reply.buffer_len()];
                    f[0..6].copy_from_slice(&source_hardware_addr.0);
                    f[6..12].copy_from_slice(&ifs.link_mac.0);
                    f[12..14].copy_from_slice(&[0x08, 0x06]);
                    reply.emit(&mut ArpPacket::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]));
                    match at {
                        Some(at) => self.out_routed.push((Some(at.segment), f)),
                        None => self.out_link.push(f),
                    }
                    return true;
                }
                false
            }
            EthernetProtocol::Ipv4 => {
                if eth.dst_addr() != ifs.mac(side) || ifs.address(side).is_none() {
                    return false;
                }
                let payload = eth.payload();
                if payload.len() < 20 {
                    return false;
                }
                let src = Ipv4Address::new(payload[12], payload[13], payload[14], payload[15]);
                let dst = Ipv4Address::new(payload[16], payload[17], payload[18], payload[19]);
                if side == NicId::Link {
                    if ifs.next_hop(NicId::Link, src) == Some(src) {
                        self.learn(side, src, eth.src_addr(), at, ifs);
                        self.release_held(ifs, now);
                    }
                    if ifs.link_local(dst) && !self.nat.lb().is_vip(dst) {
                        return false;
                    }
                }
                // A packet that would be forwarded with no TTL left opens no flow:
                // it is answered from here (RFC 1812 §5.3.1), as traceroute expects.
                if payload[8] <= 1 && self.nat.would_forward(frame, side, now) {
                    self.counters.ttl_expired += 1;
                    self.time_exceeded(side, at, frame, ifs, now);
                    return true;
                }
                if side == NicId::Uplink && ifs.overlay {
                    if let Some(target) = self.unplaced_target(payload, ifs) {
                        self.hold(target, frame, ifs, now);
                        return true;
                    }
                }
                let mut frame = frame.to_vec();
                match self.nat.process(&mut frame, side, now) {
                    Verdict::Pass => false,
                    // Counted by the NAT under its reason.
                    Verdict::Drop(_) => true,
                    Verdict::Forward { to } => {
                        self.route(to, frame, ifs, now);
                        true
                    }
                }
            }
            _ => false,
        }
    }

    /// ICMP time exceeded for `frame`, back out of the NIC it came in on, from that
    /// NIC's address (the sender's gateway), within the rate limit.
    fn time_exceeded(
        &mut self,
        side: NicId,
        at: Option<Placement>,
        frame: &[u8],
        ifs: &Interfaces,
        now: Instant,
    ) {
        let Some(own) = ifs.address(side) else {
            return;
        };
        let Some(error) = icmp_error::time_exceeded(frame, ifs.mac(side), own) else {
            return;
        };
        if !self.icmp_limit.allow(now) {
            self.counters.icmp_rate_limited += 1;
            return;
        }
        self.counters.time_exceeded_sent += 1;
        match side {
            NicId::Uplink => self.out_uplink.push(error),
            // On an overlay segment, back into the segment it came from.
            NicId::Link => match at {
                Some(at) => self.out_routed.push((Some(at.segment), error)),
                None => self.out_link.push(error),
            },
        }
    }

    /// The target of a published port that `ip` (an IPv4 packet from the uplink) is
    /// for, when that target is an inside address not placed on a segment yet. VIPs
    /// are not: service flows from the uplink always take the node address.
    fn unplaced_target(&self, ip: &[u8], ifs: &Interfaces) -> Option<Ipv4Address> {
        let ihl = usize::from(ip.first()? & 0x0f) * 4;
        let fragment_offset = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
        if ihl < 20 || fragment_offset != 0 {
            return None;
        }
        let proto = match ip.get(9)? {
            6 => Transport::Tcp,
            17 => Transport::Udp,
            _ => return None,
        };
        let dst = Ipv4Address::new(*ip.get(16)?, *ip.get(17)?, *ip.get(18)?, *ip.get(19)?);
        if !self.nat.config().uplink.contains(&dst) {
            return None;
        }
        let port = u16::from_be_bytes([*ip.get(ihl + 2)?, *ip.get(ihl + 3)?]);
        let target = self.nat.published(proto, port)?.addr;
        let unplaced = !self.nat.lb().is_vip(target)
            && ifs.next_hop(NicId::Link, target) == Some(target)
            && !self.placement.contains_key(&target);
        unplaced.then_some(target)
    }

    fn hold(&mut self, target: Ipv4Address, frame: &[u8], ifs: &Interfaces, now: Instant) {
        if self.pending.len() + self.held.len() >= PENDING_CAPACITY {
            self.counters.unresolved += 1;
            return;
        }
        self.held.push_back(Held {
            target,
            since: now,
            frame: frame.to_vec(),
        });
        if let Some(own) = ifs.arp_source(NicId::Link) {
            self.solicit(NicId::Link, target, own, ifs, now);
        }
    }

    /// Runs the held frames whose target is placed now, in order.
    fn release_held(&mut self, ifs: &Interfaces, now: Instant) {
        if self.held.is_empty() {
            return;
        }
        let (ready, waiting): (VecDeque<Held>, VecDeque<Held>) = core::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| self.placement.contains_key(&h.target));
        self.held = waiting;
        for h in ready {
            self.receive_at(NicId::Uplink, None, &h.frame, ifs, now);
        }
    }

    /// Sends a translated frame out of `to`: TTL, MACs, next hop.
    fn route(&mut self, to: NicId, mut frame: Vec<u8>, ifs: &Interfaces, now: Instant) {
        let ip = &mut frame[ETHERNET_HEADER_LEN..];
        // The NAT may have rewritten the destination: route on what it is now.
        let dst = Ipv4Address::new(ip[16], ip[17], ip[18], ip[19]);
        let ttl = ip[8];
        if ttl <= 1 {
            self.counters.ttl_expired += 1;
            return;
        }
        // RFC 1624: the TTL shares a 16-bit word with the protocol.
        let old = [ip[8], ip[9]];
        let new = [ttl - 1, ip[9]];
        let check = u16::from_be_bytes([ip[10], ip[11]]);
        let check = checksum::adjust(check, &old, &new);
        ip[8] = ttl - 1;
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        let (Some(hop), Some(own)) = (ifs.next_hop(to, dst), ifs.arp_source(to)) else {
            self.counters.no_route += 1;
            return;
        };
        frame[6..12].copy_from_slice(&ifs.mac(to).0);
        if let Some(mac) = self.neighbor(to, hop) {
            self.emit(to, hop, mac, frame, ifs);
            return;
        }
        if self.pending.len() >= PENDING_CAPACITY {
            self.counters.unresolved += 1;
            return;
        }
        self.pending.push_back(Pending {
            side: to,
            hop,
            since: now,
            frame,
        });
        self.solicit(to, hop, own, ifs, now);
    }

    fn solicit(
        &mut self,
        side: NicId,
        hop: Ipv4Address,
        own: Ipv4Address,
        ifs: &Interfaces,
        now: Instant,
    ) {
        let key = (side, hop);
        if self.asked.get(&key).is_some_and(|t| now < *t + ARP_RETRY) {
            return;
        }
        self.asked.insert(key, now);
        self.counters.arp_requests += 1;
        let request = probe::arp_request(ifs.mac(side), own, hop);
        match side {
            NicId::Uplink => self.out_uplink.push(request),
            NicId::Link if ifs.overlay => {
                let segment = self.placement.get(&hop).map(|p| p.segment);
                self.out_routed.push((segment, request));
            }
            NicId::Link => self.out_link.push(request),
        }
    }

    /// Timers: NAT expiry, ARP retries, frames that waited too long. Returns when to be
    /// called again.
    pub fn poll(&mut self, ifs: &Interfaces, now: Instant) -> Option<Instant> {
        let nat_at = self.nat.poll(now, NAT_BUDGET);
        while self
            .pending
            .front()
            .is_some_and(|p| now >= p.since + PENDING_TIMEOUT)
        {
            self.pending.pop_front();
            self.counters.unresolved += 1;
        }
        while self
            .held
            .front()
            .is_some_and(|h| now >= h.since + PENDING_TIMEOUT)
        {
            self.held.pop_front();
            self.counters.unresolved += 1;
        }
        let waiting: Vec<(NicId, Ipv4Address)> = self
            .pending
            .iter()
            .map(|p| (p.side, p.hop))
            .chain(self.held.iter().map(|h| (NicId::Link, h.target)))
            .collect();
        for (side, hop) in waiting {
            if let Some(own) = ifs.arp_source(side) {
                self.solicit(side, hop, own, ifs, now);
            }
        }
        self.asked.retain(|_, t| now < *t + PENDING_TIMEOUT);
        let retry = (!self.pending.is_empty() || !self.held.is_empty()).then(|| now + ARP_RETRY);
        [nat_at, retry].into_iter().flatten().min()
    }

    /// Hands what the router queued to the ports.
    pub fn flush(&mut self, uplink: &mut dyn Port, link: &mut dyn Port) -> bool {
        let mut sent = false;
        for frame in self.out_uplink.drain(..) {
            sent = true;
            if uplink.transmit(&frame).is_err() {
                self.counters.tx_full += 1;
            }
        }
        for frame in self.out_link.drain(..) {
            sent = true;
            if link.transmit(&frame).is_err() {
                self.counters.tx_full += 1;
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::netstack::Netstack;
    use crate::pipeline::port::MemPort;
    use crate::stage::nat::{NatConfig, PublishRule};
    use crate::testing::Seen;
    use crate::wire::probe::Echo;
    use alloc::vec;
    use smoltcp::wire::{ArpOperation, Ipv4Packet};

    const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x01]);
    const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x02]);
    const GW_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x99]);
    const C_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x42]);
    const UPLINK_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
    const GW_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
    const LINK_IP: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
    const C_IP: Ipv4Address = Ipv4Address::new(10, 81, 3, 4);
    const FAR: Ipv4Address = Ipv4Address::new(203, 0, 113, 9);

    struct Rig {
        stack: Netstack,
        uplink: MemPort,
        link: MemPort,
        now: Instant,
    }

    impl Rig {
        fn new() -> Rig {
            let now = Instant::from_millis(1_000);
            let mut stack = Netstack::new(UPLINK_MAC, LINK_MAC, 7, now);
            stack.configure(
                NicId::Uplink,
                Some(NicAddress {
                    cidr: Ipv4Cidr::new(UPLINK_IP, 24),
                    gateway: Some(GW_IP),
                }),
            );
            stack.configure(
                NicId::Link,
                Some(NicAddress {
                    cidr: Ipv4Cidr::new(LINK_IP, 16),
                    gateway: None,
                }),
            );
            let config = NatConfig::new(UPLINK_IP, LINK_IP, Ipv4Cidr::new(LINK_IP, 16));
            let mut nat = Nat::new(config, 3);
            nat.add_publish(PublishRule {
                proto: Transport::Tcp,
                host_port: 8080,
                container_address: C_IP,
                container_port: 80,
            })
            .unwrap();
            stack.set_router(Some(Router::new(nat)));
            Rig {
                stack,
                uplink: MemPort::new(UPLINK_MAC),
                link: MemPort::new(LINK_MAC),
                now,
            }
        }

        fn send(&mut self, id: NicId, frame: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
            match id {
                NicId::Uplink => self.uplink.inject(frame),
                NicId::Link => self.link.inject(frame),
            }
            self.now += Duration::from_millis(1);
            self.stack.poll(self.now, &mut self.uplink, &mut self.link);
            (self.uplink.take_transmitted(), self.link.take_transmitted())
        }
    }

    fn eth(src: EthernetAddress, dst: EthernetAddress, ip: &[u8]) -> Vec<u8> {
        crate::testing::ethernet(src, dst, ip)
    }

    /// An IPv4 packet (TCP with `flags`, or UDP when `flags` is None), checksums filled.
    fn ip(src: (Ipv4Address, u16), dst: (Ipv4Address, u16), flags: Option<u8>) -> Vec<u8> {
        crate::testing::ipv4_l4(src, dst, flags, b"hello")
    }

    /// Parses a forwarded frame and checks every checksum against a full verify.
    fn parse(f: &[u8]) -> Seen {
        crate::testing::seen(f).expect("an IPv4 TCP/UDP frame")
    }

    fn arp_target(f: &[u8]) -> (EthernetAddress, Ipv4Address, Ipv4Address) {
        let e = EthernetFrame::new_checked(f).unwrap();
        let Ok(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&ArpPacket::new_checked(e.payload()).unwrap())
        else {
            panic!("not an ARP request");
        };
        (
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
        )
    }

    fn arp_reply(
        mac: EthernetAddress,
        ip: Ipv4Address,
        to_mac: EthernetAddress,
        to_ip: Ipv4Address,
    ) -> Vec<u8> {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: mac,
            source_protocol_addr: ip,
            target_hardware_addr: to_mac,
            target_protocol_addr: to_ip,
        };
        let mut f = vec![0u8; 14 + repr.buffer_len()];
        f[0..6].copy_from_slice(&to_mac.0);
        f[6..12].copy_from_slice(&mac.0);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
        f
    }

    #[test]
    fn published_port_reaches_the_container_with_the_client_address_and_back() {
        let mut rig = Rig::new();
        let client = (GW_IP, 40000);
        let syn = eth(
            GW_MAC,
            UPLINK_MAC,
            &ip(client, (UPLINK_IP, 8080), Some(0x02)),
        );
        let (up, link) = rig.send(NicId::Uplink, &syn);
        assert!(up.is_empty());
        assert_eq!(link.len(), 1, "an ARP request for the container");
        assert_eq!(arp_target(&link[0]), (LINK_MAC, LINK_IP, C_IP));
        // The SYN waited for the answer.
        let (_, link) = rig.send(NicId::Link, &arp_reply(C_MAC, C_IP, LINK_MAC, LINK_IP));
        assert_eq!(link.len(), 1);
        let o = parse(&link[0]);
        assert_eq!((o.dst_mac, o.src_mac), (C_MAC, LINK_MAC));
        assert_eq!((o.src, o.dst, o.ttl), (client, (C_IP, 80), 63));

        // The reply leaves through the gateway (ARP first) from the published port.
        let synack = eth(C_MAC, LINK_MAC, &ip((C_IP, 80), client, Some(0x12)));
        let (up, link) = rig.send(NicId::Link, &synack);
        assert!(link.is_empty());
        assert_eq!(up.len(), 1);
        assert_eq!(arp_target(&up[0]), (UPLINK_MAC, UPLINK_IP, GW_IP));
        let (up, _) = rig.send(
            NicId::Uplink,
            &arp_reply(GW_MAC, GW_IP, UPLINK_MAC, UPLINK_IP),
        );
        assert_eq!(up.len(), 1);
        let o = parse(&up[0]);
        assert_eq!((o.dst_mac, o.src_mac), (GW_MAC, UPLINK_MAC));
        assert_eq!((o.src, o.dst, o.ttl), ((UPLINK_IP, 8080), client, 63));
        // Now both neighbours are known: the next segment goes at once.
        let ack = eth(
            GW_MAC,
            UPLINK_MAC,
            &ip(client, (UPLINK_IP, 8080), Some(0x10)),
        );
        let (_, link) = rig.send(NicId::Uplink, &ack);
        assert_eq!(link.len(), 1);
        assert_eq!(parse(&link[0]).dst, (C_IP, 80));
        let r = rig.stack.router().unwrap();
        assert_eq!(r.counters().forwarded, 3);
        assert_eq!(r.nat().stats().dnat_flows, 1);
    }

    #[test]
    fn masquerade_gives_distinct_ports_and_replies_come_back() {
        let mut rig = Rig::new();
        rig.send(
            NicId::Uplink,
            &arp_reply(GW_MAC, GW_IP, UPLINK_MAC, UPLINK_IP),
        );
        let mut ports = Vec::new();
        for i in 0..50u16 {
            let inside = (C_IP, 10_000 + i);
            let f = eth(C_MAC, LINK_MAC, &ip(inside, (FAR, 53), None));
            let (up, _) = rig.send(NicId::Link, &f);
            assert_eq!(up.len(), 1);
            let o = parse(&up[0]);
            assert_eq!((o.dst_mac, o.src.0, o.dst), (GW_MAC, UPLINK_IP, (FAR, 53)));
            assert!((32768..=60999).contains(&o.src.1));
            ports.push(o.src.1);
            let back = eth(GW_MAC, UPLINK_MAC, &ip((FAR, 53), o.src, None));
            let (_, link) = rig.send(NicId::Link, &[]);
            assert!(link.is_empty());
            let (_, link) = rig.send(NicId::Uplink, &back);
            assert_eq!(link.len(), 1);
            let o = parse(&link[0]);
            // The container was learned from its own frames: no ARP needed.
            assert_eq!((o.dst_mac, o.dst, o.src), (C_MAC, inside, (FAR, 53)));
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn hairpin_reaches_the_published_container_from_the_node_address() {
        let mut rig = Rig::new();
        rig.send(NicId::Link, &arp_reply(C_MAC, C_IP, LINK_MAC, LINK_IP));
        let inside = (C_IP, 45_000);
        let syn = eth(C_MAC, LINK_MAC, &ip(inside, (UPLINK_IP, 8080), Some(0x02)));
        let (up, link) = rig.send(NicId::Link, &syn);
        assert!(up.is_empty());
        assert_eq!(link.len(), 1);
        let o = parse(&link[0]);
        assert_eq!((o.dst_mac, o.src_mac, o.dst), (C_MAC, LINK_MAC, (C_IP, 80)));
        assert_eq!(o.src.0, LINK_IP, "hairpin is sourced from the node address");
        // The reply goes to the node address, and must reach the NAT, not smoltcp.
        let synack = eth(C_MAC, LINK_MAC, &ip((C_IP, 80), o.src, Some(0x12)));
        let (up, link) = rig.send(NicId::Link, &synack);
        assert!(up.is_empty());
        assert_eq!(link.len(), 1, "the SYN-ACK comes back translated");
        let o = parse(&link[0]);
        assert_eq!((o.src, o.dst), ((UPLINK_IP, 8080), inside));
        let nat = rig.stack.router().unwrap().nat().stats();
        assert_eq!(nat.hairpin_flows, 1);
    }

    #[test]
    fn a_service_vip_is_answered_on_the_link_and_spread_over_backends() {
        use crate::stage::lb::{BackendConfig, Mode, ServiceConfig};
        let mut rig = Rig::new();
        let vip = Ipv4Address::new(10, 81, 255, 1);
        let backends = [
            Ipv4Address::new(10, 81, 1, 2),
            Ipv4Address::new(10, 81, 1, 3),
        ];
        let service = ServiceConfig {
            name: "web".into(),
            vip: Some(vip),
            proto: Transport::Tcp,
            port: 80,
            mode: Mode::Vip,
            backends: backends
                .iter()
                .map(|&address| BackendConfig {
                    address,
                    port: 8080,
                    weight: 1,
                })
                .collect(),
            health: None,
        };
        let nat = rig.stack.router_mut().unwrap().nat_mut();
        nat.lb_mut().add_service(service, rig.now).unwrap();
        // Proxy ARP for the VIP.
        let (_, link) = rig.send(NicId::Link, &probe::arp_request(C_MAC, C_IP, vip));
        assert_eq!(link.len(), 1);
        let reply = probe::parse_arp_reply(&link[0]).expect("an ARP reply");
        assert_eq!((reply.sender_mac, reply.sender_ip), (LINK_MAC, vip));
        for (i, b) in backends.iter().enumerate() {
            let bmac = EthernetAddress([2, 0, 0, 0, 1, i as u8]);
            rig.send(NicId::Link, &arp_reply(bmac, *b, LINK_MAC, LINK_IP));
        }
        let mut per_backend = [0u32; 2];
        for port in 0..400u16 {
            let syn = eth(
                C_MAC,
                LINK_MAC,
                &ip((C_IP, 20_000 + port), (vip, 80), Some(0x02)),
            );
            let (_, link) = rig.send(NicId::Link, &syn);
            assert_eq!(link.len(), 1, "port {port}");
            let o = parse(&link[0]);
            assert_eq!(o.dst.1, 8080);
            let i = backends
                .iter()
                .position(|b| *b == o.dst.0)
                .expect("a backend");
            assert_eq!(o.dst_mac, EthernetAddress([2, 0, 0, 0, 1, i as u8]));
            per_backend[i] += 1;
        }
        // 400 flows over two equal backends: each gets a fair share (binomial sd 10).
        assert!(
            per_backend.iter().all(|&n| (140..=260).contains(&n)),
            "{per_backend:?}"
        );
    }

    #[test]
    fn own_addresses_still_reach_the_interfaces() {
        let mut rig = Rig::new();
        for (id, mac, own, peer) in [
            (NicId::Uplink, UPLINK_MAC, UPLINK_IP, GW_IP),
            (NicId::Link, LINK_MAC, LINK_IP, C_IP),
        ] {
            let (up, link) = rig.send(id, &probe::arp_request(GW_MAC, peer, own));
            let out = if id == NicId::Uplink { up } else { link };
            assert_eq!(out.len(), 1);
            let ping = probe::icmp_echo_request(&Echo {
                src_mac: GW_MAC,
                dst_mac: mac,
                src_ip: peer,
                dst_ip: own,
                ident: 5,
                seq_no: 1,
                data: vec![1, 2, 3],
            });
            let (up, link) = rig.send(id, &ping);
            let out = if id == NicId::Uplink { up } else { link };
            assert_eq!(out.len(), 1, "{id:?}");
            assert!(probe::parse_icmp_echo_reply(&out[0]).is_some());
        }
        // An unpublished port on the uplink address is not routed anywhere.
        let f = eth(
            GW_MAC,
            UPLINK_MAC,
            &ip((GW_IP, 1), (UPLINK_IP, 9999), Some(0x02)),
        );
        let (_, link) = rig.send(NicId::Uplink, &f);
        assert!(link.is_empty());
    }

    fn with_ttl(mut p: Vec<u8>, ttl: u8) -> Vec<u8> {
        p[8] = ttl;
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        p
    }

    /// The sender, destination and quoted packet of an ICMP time exceeded frame.
    fn time_exceeded_of(f: &[u8]) -> Option<(EthernetAddress, Ipv4Address, Ipv4Address, Vec<u8>)> {
        use smoltcp::wire::{Icmpv4Message, Icmpv4Packet};
        let e = EthernetFrame::new_checked(f).ok()?;
        let p = Ipv4Packet::new_checked(e.payload()).ok()?;
        assert!(p.verify_checksum());
        let icmp = Icmpv4Packet::new_checked(p.payload()).ok()?;
        if p.next_header() != smoltcp::wire::IpProtocol::Icmp
            || icmp.msg_type() != Icmpv4Message::TimeExceeded
        {
            return None;
        }
        assert!(icmp.verify_checksum());
        Some((
            e.dst_addr(),
            p.src_addr(),
            p.dst_addr(),
            icmp.data().to_vec(),
        ))
    }

    #[test]
    fn ttl_one_is_answered_with_time_exceeded_and_opens_no_flow() {
        let mut rig = Rig::new();
        rig.send(
            NicId::Uplink,
            &arp_reply(GW_MAC, GW_IP, UPLINK_MAC, UPLINK_IP),
        );
        // Masquerade: the container learns its gateway is the hop that ran out.
        let probe = with_ttl(ip((C_IP, 33434), (FAR, 33435), None), 1);
        let (up, link) = rig.send(NicId::Link, &eth(C_MAC, LINK_MAC, &probe));
        assert!(up.is_empty(), "nothing leaves");
        assert_eq!(link.len(), 1);
        let (mac, from, to, quoted) = time_exceeded_of(&link[0]).expect("time exceeded");
        assert_eq!((mac, from, to), (C_MAC, LINK_IP, C_IP));
        assert_eq!(quoted, probe, "the packet as the container sent it");
        // A published port: the client hears it from the uplink address.
        let syn = with_ttl(ip((GW_IP, 40000), (UPLINK_IP, 8080), Some(0x02)), 1);
        let (up, link) = rig.send(NicId::Uplink, &eth(GW_MAC, UPLINK_MAC, &syn));
        assert!(link.is_empty());
        assert_eq!(up.len(), 1);
        let (mac, from, to, quoted) = time_exceeded_of(&up[0]).expect("time exceeded");
        assert_eq!((mac, from, to, quoted), (GW_MAC, UPLINK_IP, GW_IP, syn));
        let r = rig.stack.router().unwrap();
        assert_eq!(
            r.nat().stats().table_size,
            0,
            "no flow for a packet never sent"
        );
        assert_eq!(
            (r.counters().ttl_expired, r.counters().time_exceeded_sent),
            (2, 2)
        );
        // TTL 2 leaves with TTL 1.
        let probe = with_ttl(ip((C_IP, 33434), (FAR, 33436), None), 2);
        let (up, _) = rig.send(NicId::Link, &eth(C_MAC, LINK_MAC, &probe));
        assert_eq!(up.len(), 1);
        assert_eq!(parse(&up[0]).ttl, 1);
        // TTL 1 for the appliance itself is no transit: ping is answered.
        rig.send(NicId::Link, &probe::arp_request(C_MAC, C_IP, LINK_IP));
        let mut ping = probe::icmp_echo_request(&Echo {
            src_mac: C_MAC,
            dst_mac: LINK_MAC,
            src_ip: C_IP,
            dst_ip: LINK_IP,
            ident: 5,
            seq_no: 1,
            data: vec![1, 2, 3],
        });
        ping[14 + 8] = 1;
        Ipv4Packet::new_unchecked(&mut ping[14..]).fill_checksum();
        let (_, link) = rig.send(NicId::Link, &ping);
        assert_eq!(link.len(), 1);
        assert!(probe::parse_icmp_echo_reply(&link[0]).is_some());
        // Nor are unpublished ports of the uplink address (the local stack's).
        let other = with_ttl(ip((GW_IP, 40001), (UPLINK_IP, 9999), Some(0x02)), 1);
        let (up, _) = rig.send(NicId::Uplink, &eth(GW_MAC, UPLINK_MAC, &other));
        assert!(up.iter().all(|f| time_exceeded_of(f).is_none()));
        assert_eq!(rig.stack.router().unwrap().counters().ttl_expired, 2);

        // A flood is answered within the rate limit and counted either way.
        for i in 0..300u16 {
            let p = with_ttl(ip((C_IP, 20_000 + i), (FAR, 33434), None), 1);
            rig.send(NicId::Link, &eth(C_MAC, LINK_MAC, &p));
        }
        let c = rig.stack.router().unwrap().counters();
        assert_eq!(c.ttl_expired, 302);
        assert_eq!(c.time_exceeded_sent + c.icmp_rate_limited, 302);
        // 300 packets 1 ms apart: the burst of 50 and ~100 a second after it.
        assert!(
            (70..=90).contains(&c.time_exceeded_sent),
            "{} sent",
            c.time_exceeded_sent
        );
        assert_eq!(rig.stack.router().unwrap().nat().stats().table_size, 1);
    }

    #[test]
    fn random_frames_never_panic() {
        let mut rig = Rig::new();
        let mut x: u32 = 0x9e37_79b9;
        for i in 0..3_000usize {
            let mut f: Vec<u8> = (0..(14 + i % 90))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let (id, mac) = if i % 2 == 0 {
                (NicId::Uplink, UPLINK_MAC)
            } else {
                (NicId::Link, LINK_MAC)
            };
            f[..6].copy_from_slice(&mac.0);
            f[12..14].copy_from_slice(&[0x08, if i % 3 == 0 { 0x06 } else { 0x00 }]);
            if f.len() > 14 && i % 3 != 0 {
                f[14] = 0x45;
            }
            rig.send(id, &f);
        }
    }
}
