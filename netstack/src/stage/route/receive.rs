//! The router's way in: a frame received on a NIC (or, with an overlay, on a segment of
//! the container side) is looked at before the interface sees it. ARP teaches
//! neighbours and VIPs are proxy-answered; IPv4 to the appliance's MAC goes through the
//! NAT, or is answered with time exceeded when it has no TTL left, or waits while the
//! container it is published to is not placed yet. What the router does not take goes
//! on untouched, in its buffer.
//!
//! A frame is read once: [`RxMeta`] holds what the router learns of it (its kind, its
//! IPv4 addresses and TTL, its L4 facts), and the NAT and the routing after it use that
//! record instead of parsing again. A whole burst is read first, so that the NAT can
//! look up the flows of all of it together (their cache misses overlap) before the
//! first frame is translated; what each lookup found goes in the frame's record.

use alloc::collections::VecDeque;

use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address,
    Ipv4Packet, TcpPacket, UdpPacket, IPV4_HEADER_LEN,
};

use super::{Held, Interfaces, Origin, Placement, Router, Segment, PENDING_CAPACITY};
use crate::base::{Endpoint, FlowTuple, NicId, Proto, Transport, MAX_FRAME_LEN};
use crate::stage::nat::NatVerdict;
use crate::table::conntrack::{Probe, WARM_MAX};
use crate::wire::buffer::{BufPool, PacketBuf};
use crate::wire::l4::{self, Parse};
use crate::wire::{icmp_error, probe};

/// What the router reads of a received frame, once: the burst's per-packet metadata.
#[derive(Clone, Copy, Debug)]
pub enum RxMeta {
    /// Not the router's: passed on without a look.
    Other,
    Arp,
    /// IPv4 to the receiving NIC's MAC, its fixed header present.
    Ipv4 {
        eth_src: EthernetAddress,
        src: Ipv4Address,
        dst: Ipv4Address,
        ttl: u8,
        /// What flows are keyed on.
        l4: Parse,
        /// Its tuple's conntrack lookup, begun for the whole burst.
        probe: Probe,
    },
}

impl RxMeta {
    /// Reads what the router needs of `frame` received on `side`.
    pub fn read(side: NicId, frame: &[u8], ifs: &Interfaces) -> RxMeta {
        // Oversize frames are the interface's to count and drop.
        if frame.len() > MAX_FRAME_LEN {
            return RxMeta::Other;
        }
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return RxMeta::Other;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => RxMeta::Arp,
            EthernetProtocol::Ipv4 => {
                if eth.dst_addr() != ifs.mac(side) || ifs.address(side).is_none() {
                    return RxMeta::Other;
                }
                // Only the fixed header is read here; the NAT checks the whole packet.
                if eth.payload().len() < IPV4_HEADER_LEN {
                    return RxMeta::Other;
                }
                let ip = Ipv4Packet::new_unchecked(eth.payload());
                RxMeta::Ipv4 {
                    eth_src: eth.src_addr(),
                    src: ip.src_addr(),
                    dst: ip.dst_addr(),
                    ttl: ip.hop_limit(),
                    l4: l4::parse(frame),
                    probe: Probe::NONE,
                }
            }
            _ => RxMeta::Other,
        }
    }

    /// The flow tuple, when the frame has one.
    fn tuple(&self) -> Option<FlowTuple> {
        match self {
            RxMeta::Ipv4 {
                l4: Parse::Ok(p), ..
            } => Some(p.tuple),
            _ => None,
        }
    }

    /// Records what the burst's conntrack lookup found for the frame's tuple.
    fn set_probe(&mut self, found: Probe) {
        if let RxMeta::Ipv4 { probe, .. } = self {
            *probe = found;
        }
    }
}

impl Router {
    /// Looks at a frame received on `side`; returns true when the router took it (the
    /// interface and overlay must not see it: `buf` is left empty), false to hand it on
    /// unchanged. Frames the router drops go back to `pool`.
    pub fn receive(
        &mut self,
        side: NicId,
        buf: &mut PacketBuf,
        ifs: &Interfaces,
        now: Instant,
        pool: &mut BufPool,
    ) -> bool {
        let meta = RxMeta::read(side, buf.frame(), ifs);
        self.receive_at(side, None, buf, &meta, ifs, now, pool)
    }

    /// [`Router::receive`] for a burst: every frame is read first and the NAT looks up
    /// the flows of all of them together, then each is handled in order. The frames
    /// it took are left empty in `bufs`; returns how many.
    pub fn receive_burst(
        &mut self,
        side: NicId,
        bufs: &mut [PacketBuf],
        ifs: &Interfaces,
        now: Instant,
        pool: &mut BufPool,
    ) -> usize {
        let mut taken = 0;
        for chunk in bufs.chunks_mut(WARM_MAX) {
            let mut meta = [RxMeta::Other; WARM_MAX];
            let none = Endpoint::new(Ipv4Address::UNSPECIFIED, 0);
            let mut tuples = [FlowTuple::new(Proto::Tcp, none, none); WARM_MAX];
            // Which frame of the chunk each tuple is of.
            let mut of = [0u8; WARM_MAX];
            let mut n = 0;
            for (i, (m, buf)) in meta.iter_mut().zip(chunk.iter()).enumerate() {
                *m = RxMeta::read(side, buf.frame(), ifs);
                if let Some(t) = m.tuple() {
                    tuples[n] = t;
                    of[n] = i as u8;
                    n += 1;
                }
            }
            let mut probes = [Probe::NONE; WARM_MAX];
            self.nat.probe(&tuples[..n], &mut probes[..n]);
            for (&i, &probe) in of[..n].iter().zip(&probes[..n]) {
                meta[usize::from(i)].set_probe(probe);
            }
            for (m, buf) in meta.iter().zip(chunk.iter_mut()) {
                if self.receive_at(side, None, buf, m, ifs, now, pool) {
                    taken += 1;
                }
            }
        }
        taken
    }

    /// A frame that reached the appliance on a container-side `segment` of the overlay
    /// (sent to its MAC, or broadcast): as [`Router::receive`] from the container side,
    /// and the sender is placed on that segment. VIPs are proxy-answered only to local
    /// containers: a remote one asks its own node.
    pub fn receive_on(
        &mut self,
        segment: Segment,
        origin: Origin,
        buf: &mut PacketBuf,
        ifs: &Interfaces,
        now: Instant,
        pool: &mut BufPool,
    ) -> bool {
        let at = Placement { segment, origin };
        let meta = RxMeta::read(NicId::Link, buf.frame(), ifs);
        let taken = self.receive_at(NicId::Link, Some(at), buf, &meta, ifs, now, pool);
        if taken && origin == Origin::Remote {
            self.counters.from_remote += 1;
        }
        taken
    }

    // A received frame's whole context; a struct would only rename the list.
    #[allow(clippy::too_many_arguments)]
    fn receive_at(
        &mut self,
        side: NicId,
        at: Option<Placement>,
        buf: &mut PacketBuf,
        meta: &RxMeta,
        ifs: &Interfaces,
        now: Instant,
        pool: &mut BufPool,
    ) -> bool {
        let taken = match meta {
            RxMeta::Other => return false,
            RxMeta::Arp => self.receive_arp(side, at, buf.frame(), ifs, now),
            RxMeta::Ipv4 { .. } => self.receive_ipv4(side, at, buf, meta, ifs, now),
        };
        if taken && buf.capacity() != 0 {
            // Taken and not kept: answered, refused or counted.
            pool.put(core::mem::take(buf));
        }
        taken
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
        let reply = PacketBuf::from_vec(reply);
        match at {
            Some(at) => self.out_routed.push((Some(at.segment), reply)),
            None => self.out_link.push(reply),
        }
        true
    }

    /// IPv4 to the appliance's MAC: through the NAT and out of the NIC it says. A
    /// frame it keeps (forwarded, waiting for ARP or for its target's placement) is
    /// taken out of `buf`.
    fn receive_ipv4(
        &mut self,
        side: NicId,
        at: Option<Placement>,
        buf: &mut PacketBuf,
        meta: &RxMeta,
        ifs: &Interfaces,
        now: Instant,
    ) -> bool {
        let &RxMeta::Ipv4 {
            eth_src,
            src,
            dst,
            ttl,
            ref l4,
            probe,
        } = meta
        else {
            return false;
        };
        if side == NicId::Link {
            if ifs.next_hop(NicId::Link, src) == Some(src) {
                self.learn(side, src, eth_src, at, ifs, now);
                self.release_held(ifs, now);
            }
            if ifs.link_local(dst) && !self.nat.lb().is_vip(dst) {
                return false;
            }
        }
        // A packet that would be forwarded with no TTL left opens no flow:
        // it is answered from here (RFC 1812 §5.3.1), as traceroute expects.
        if ttl <= 1 && self.nat.would_forward_parsed(l4, side, now) {
            self.counters.ttl_expired += 1;
            self.time_exceeded(side, at, buf.frame(), ifs, now);
            return true;
        }
        if side == NicId::Uplink && ifs.overlay {
            if let Some(target) = self.unplaced_target(buf.frame(), ifs) {
                self.hold(target, core::mem::take(buf), ifs, now);
                return true;
            }
        }
        match self
            .nat
            .process_parsed(buf.frame_mut(), l4, probe, side, now)
        {
            NatVerdict::Pass => false,
            // Counted by the NAT under its reason.
            NatVerdict::Drop(_) => true,
            NatVerdict::Forward { to } => {
                self.route(to, core::mem::take(buf), ifs, now);
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
        let error = PacketBuf::from_vec(error);
        match side {
            NicId::Uplink => self.out_uplink.push(error),
            // On an overlay segment, back into the segment it came from.
            NicId::Link => match at {
                Some(at) => self.out_routed.push((Some(at.segment), error)),
                None => self.out_link.push(error),
            },
        }
    }

    /// The target of a published port that `frame` (IPv4 from the uplink, its fixed
    /// header present) is for, when that target is an inside address not placed on a
    /// segment yet. VIPs are not: service flows from the uplink always take the node
    /// address.
    fn unplaced_target(&self, frame: &[u8], ifs: &Interfaces) -> Option<Ipv4Address> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let ip = Ipv4Packet::new_unchecked(eth.payload());
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

    fn hold(&mut self, target: Ipv4Address, frame: PacketBuf, ifs: &Interfaces, now: Instant) {
        if self.pending.len() + self.held.len() >= PENDING_CAPACITY {
            self.counters.unresolved += 1;
            return;
        }
        self.held.push_back(Held {
            target,
            since: now,
            frame,
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
        // Frames the router drops on their second look are simply freed (rare).
        let mut spare = BufPool::new(0);
        for mut h in ready {
            let meta = RxMeta::read(NicId::Uplink, h.frame.frame(), ifs);
            self.receive_at(
                NicId::Uplink,
                None,
                &mut h.frame,
                &meta,
                ifs,
                now,
                &mut spare,
            );
        }
    }
}
