//! The router's way out: learning neighbours from what it receives, sending a
//! translated frame out of a NIC (TTL, source MAC, the next hop's MAC), waiting for that
//! MAC when it is not known yet, and asking for it by ARP from the NIC's own address.

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, EthernetFrame, Ipv4Address, Ipv4Packet, ETHERNET_HEADER_LEN};

use super::{Interfaces, Origin, Pending, Placement, Router, Segment, PENDING_CAPACITY};
use crate::base::NicId;
use crate::table::neighbor::Learned;
use crate::wire::buffer::PacketBuf;
use crate::wire::{probe, rewrite};

impl Router {
    /// `ip` is at `mac` on `side` (and, on the container side of an overlay, lives at
    /// `at`); frames that waited for it go now, in order.
    pub(super) fn learn(
        &mut self,
        side: NicId,
        ip: Ipv4Address,
        mac: EthernetAddress,
        at: Option<Placement>,
        ifs: &Interfaces,
        now: Instant,
    ) {
        if !mac.is_unicast() || ip.is_unspecified() {
            return;
        }
        let key = (side, ip);
        if !self.neighbors.has_room_for(&key) {
            return;
        }
        if let Some(at) = at.filter(|_| side == NicId::Link) {
            self.placement.insert(ip, at);
            self.nat.set_remote(ip, at.origin == Origin::Remote);
        }
        if self.neighbors.learn(key, mac, now) != Learned::New {
            return;
        }
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if p.side == side && p.hop == ip {
                if let Some(p) = self.pending.remove(i) {
                    self.emit(p.side, p.hop, mac, p.frame, ifs);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Queues `frame` (source MAC and TTL already set) for `hop` at `dst` out of `side`.
    pub(super) fn emit(
        &mut self,
        side: NicId,
        hop: Ipv4Address,
        dst: EthernetAddress,
        mut frame: PacketBuf,
        ifs: &Interfaces,
    ) {
        EthernetFrame::new_unchecked(frame.frame_mut()).set_dst_addr(dst);
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

    /// Sends a translated frame out of `to`: TTL, MACs, next hop.
    pub(super) fn route(
        &mut self,
        to: NicId,
        mut frame: PacketBuf,
        ifs: &Interfaces,
        now: Instant,
    ) {
        let Some(ip) = frame.frame_mut().get_mut(ETHERNET_HEADER_LEN..) else {
            return;
        };
        // The NAT may have rewritten the destination: route on what it is now.
        let dst = Ipv4Packet::new_unchecked(&*ip).dst_addr();
        if !rewrite::decrement_ttl(ip) {
            self.counters.ttl_expired += 1;
            return;
        }
        let (Some(hop), Some(own)) = (ifs.next_hop(to, dst), ifs.arp_source(to)) else {
            self.counters.no_route += 1;
            return;
        };
        EthernetFrame::new_unchecked(frame.frame_mut()).set_src_addr(ifs.mac(to));
        if let Some((mac, stale)) = self.neighbors.resolve(&(to, hop), now) {
            self.emit(to, hop, mac, frame, ifs);
            // Not heard from for a while: ask again (the answer may bring a new MAC).
            if stale {
                self.solicit(to, hop, own, ifs, now);
            }
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

    /// Asks who has `hop` out of `side`, from `own`, unless it was asked within
    /// `ARP_RETRY`.
    pub(super) fn solicit(
        &mut self,
        side: NicId,
        hop: Ipv4Address,
        own: Ipv4Address,
        ifs: &Interfaces,
        now: Instant,
    ) {
        if !self.neighbors.ask((side, hop), now) {
            return;
        }
        self.counters.arp_requests += 1;
        let request = PacketBuf::from_vec(probe::arp_request(ifs.mac(side), own, hop));
        match side {
            NicId::Uplink => self.out_uplink.push(request),
            NicId::Link if ifs.overlay => {
                let segment = self.placement.get(&hop).map(|p| p.segment);
                self.out_routed.push((segment, request));
            }
            NicId::Link => self.out_link.push(request),
        }
    }
}
