//! The router's way in: a frame received on a NIC (or, with an overlay, on a segment of
//! the container side) is looked at before the interface sees it. ARP teaches
//! neighbours and VIPs are proxy-answered; IPv4 to the appliance's MAC goes through the
//! NAT, or is answered with time exceeded when it has no TTL left, or waits while the
//! container it is published to is not placed yet. What the router does not take goes
//! on untouched.

use alloc::collections::VecDeque;

use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket,
    UdpPacket, IPV4_HEADER_LEN,
};

use super::{Held, Interfaces, Origin, Placement, Router, Segment, PENDING_CAPACITY};
use crate::base::{NicId, Transport, MAX_FRAME_LEN};
use crate::stage::nat::NatVerdict;
use crate::wire::{icmp_error, probe};

impl Router {
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
            EthernetProtocol::Arp => self.receive_arp(side, at, frame, ifs, now),
            EthernetProtocol::Ipv4 => self.receive_ipv4(side, at, &eth, ifs, now),
            _ => false,
        }
    }

    /// ARP teaches the sender; a request for a service VIP from a local container is
    /// answered here (a VIP has no host behind it: proxy ARP).
    fn receive_arp(
        &mut self,
        side: NicId,
        at: Option<Placement>,
        frame: &[u8],
        ifs: &Interfaces,
        now: Instant,
    ) -> bool {
        let Some(arp) = probe::parse_arp(frame) else {
            return false;
        };
        self.learn(side, arp.sender_ip, arp.sender_mac, at, ifs, now);
        self.release_held(ifs, now);
        let proxied = side == NicId::Link
            && at.is_none_or(|a| a.origin == Origin::Local)
            && arp.operation == ArpOperation::Request
            && self.nat.lb().is_vip(arp.target_ip)
            && arp.sender_mac.is_unicast();
        if !proxied {
            return false;
        }
        let reply = probe::arp_reply(ifs.link_mac, arp.target_ip, arp.sender_mac, arp.sender_ip);
        match at {
            Some(at) => self.out_routed.push((Some(at.segment), reply)),
            None => self.out_link.push(reply),
        }
        true
    }

    /// IPv4 to the appliance's MAC: through the NAT and out of the NIC it says.
    fn receive_ipv4(
        &mut self,
        side: NicId,
        at: Option<Placement>,
        eth: &EthernetFrame<&[u8]>,
        ifs: &Interfaces,
        now: Instant,
    ) -> bool {
        let frame: &[u8] = eth.as_ref();
        if eth.dst_addr() != ifs.mac(side) || ifs.address(side).is_none() {
            return false;
        }
        // Only the fixed header is read here; the NAT checks the whole packet.
        if eth.payload().len() < IPV4_HEADER_LEN {
            return false;
        }
        let ip = Ipv4Packet::new_unchecked(eth.payload());
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if side == NicId::Link {
            if ifs.next_hop(NicId::Link, src) == Some(src) {
                self.learn(side, src, eth.src_addr(), at, ifs, now);
                self.release_held(ifs, now);
            }
            if ifs.link_local(dst) && !self.nat.lb().is_vip(dst) {
                return false;
            }
        }
        // A packet that would be forwarded with no TTL left opens no flow:
        // it is answered from here (RFC 1812 §5.3.1), as traceroute expects.
        if ip.hop_limit() <= 1 && self.nat.would_forward(frame, side, now) {
            self.counters.ttl_expired += 1;
            self.time_exceeded(side, at, frame, ifs, now);
            return true;
        }
        if side == NicId::Uplink && ifs.overlay {
            if let Some(target) = self.unplaced_target(&ip, ifs) {
                self.hold(target, frame, ifs, now);
                return true;
            }
        }
        let mut frame = frame.to_vec();
        match self.nat.process(&mut frame, side, now) {
            NatVerdict::Pass => false,
            // Counted by the NAT under its reason.
            NatVerdict::Drop(_) => true,
            NatVerdict::Forward { to } => {
                self.route(to, frame, ifs, now);
                true
            }
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

    /// The target of a published port that `ip` (an IPv4 packet from the uplink, its
    /// fixed header present) is for, when that target is an inside address not placed
    /// on a segment yet. VIPs are not: service flows from the uplink always take the
    /// node address.
    fn unplaced_target(&self, ip: &Ipv4Packet<&[u8]>, ifs: &Interfaces) -> Option<Ipv4Address> {
        let ihl = usize::from(ip.header_len());
        if ihl < IPV4_HEADER_LEN || ip.frag_offset() != 0 {
            return None;
        }
        let proto = match ip.next_header() {
            IpProtocol::Tcp => Transport::Tcp,
            IpProtocol::Udp => Transport::Udp,
            _ => return None,
        };
        let dst = ip.dst_addr();
        if !self.nat.config().uplink.contains(&dst) {
            return None;
        }
        // The destination port is all that is read of the L4 header.
        let l4 = ip.as_ref().get(ihl..).filter(|l4| l4.len() >= 4)?;
        let port = match proto {
            Transport::Tcp => TcpPacket::new_unchecked(l4).dst_port(),
            Transport::Udp => UdpPacket::new_unchecked(l4).dst_port(),
        };
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
    pub(super) fn release_held(&mut self, ifs: &Interfaces, now: Instant) {
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
}
