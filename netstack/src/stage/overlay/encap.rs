//! Encapsulation towards the peers: which encapsulation a network uses for a peer
//! (VXLAN, or sleeve by mode and trusted subnets), the overlay MTU and the fragmentation
//! needed answer for what exceeds it, VXLAN frames built at once, and sleeve frames
//! queued per peer and network and sealed together.
//!
//! It never decides where a frame goes on L2 (the bridge does) and never lets a frame
//! of a network that must be sealed leave in plaintext.

use alloc::vec::Vec;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, Ipv4Address};

use super::bridge::Ingress;
use super::config::{EncapMode, Subnet};
use super::sleeve_link::{OuterAddrs, SleeveLink, OUTER_LEN};
use super::{
    network_mtu, Egress, Output, Overlay, OverlayDrop, OverlayVerdict, Step, MAX_PENDING_FRAMES,
};
use crate::base::{NodeId, Vni};
use crate::stage::sleeve;
use crate::wire::buffer::{BufPool, PacketBuf};
use crate::wire::icmp_error::frag_needed;
use crate::wire::sleeve::{record_header, HEADER_LEN, RECORD_HEADER_LEN, TAG_LEN};
use crate::wire::vlan;
use crate::wire::vxlan::{self, Outer};

/// How frames of one network are encapsulated for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    Vxlan,
    Sleeve,
}

/// The encapsulation of a network in `mode` towards a peer at underlay address `peer`:
/// `auto` trusts the peers inside `trusted` with VXLAN, as Kontena's trusted subnets.
pub fn encap(mode: EncapMode, trusted: &[Subnet], peer: Ipv4Address) -> Encap {
    match mode {
        EncapMode::Vxlan => Encap::Vxlan,
        EncapMode::Sleeve => Encap::Sleeve,
        EncapMode::Auto if trusted.iter().any(|s| s.0.contains_addr(&peer)) => Encap::Vxlan,
        EncapMode::Auto => Encap::Sleeve,
    }
}

/// The frames of one network for one sleeve peer that will share messages. Entries
/// outlive their frames: once sealed, an entry keeps its vector for the next pair that
/// queues a frame, so queueing allocates nothing in steady state.
#[derive(Debug, Clone)]
pub(super) struct PendingSeal {
    pub(super) peer: Ipv4Address,
    pub(super) node: NodeId,
    pub(super) vni: Vni,
    /// The outer headers, from the first frame (its flow's source port).
    pub(super) outer: OuterAddrs,
    pub(super) frames: Vec<PacketBuf>,
}

/// Bytes a sealed message needs in front of its first frame: the outer headers, the
/// sleeve header and the frame's record header.
const SEAL_FRONT: usize = OUTER_LEN + HEADER_LEN + RECORD_HEADER_LEN;

/// Empty entries of `Overlay::pending` kept for reuse beyond those in use.
const SPARE_PENDING: usize = 16;

impl Overlay {
    /// The peers' share of a frame the bridge took from the link or the appliance:
    /// `to_peer` one peer, `None` every peer of network `vni` (a flood); `out` holds the
    /// local copies already decided. The overlay MTU applies here (smaller for a
    /// network that may seal, by what sleeve adds over VXLAN).
    pub(super) fn forward_to_peers(
        &mut self,
        now: Instant,
        vni: Vni,
        frame: &[u8],
        ingress: Ingress,
        to_peer: Option<Ipv4Address>,
        mut out: Vec<Output>,
    ) -> OverlayVerdict {
        // Everything below goes to the uplink: the overlay MTU applies (smaller for a
        // network that may seal, by what sleeve adds over VXLAN).
        let flood = to_peer.is_none();
        let Some(mode) = self.networks.get(&vni).map(|n| n.mode) else {
            return OverlayVerdict::Forward(out);
        };
        let mtu = network_mtu(&self.grid, mode);
        let ethertype = EthernetFrame::new_unchecked(frame).ethertype();
        if vlan::l3_len(ethertype, frame.len()) > usize::from(mtu) {
            self.drops.count(OverlayDrop::TooBig);
            let net = match self.networks.get_mut(&vni) {
                Some(net) => net,
                None => return OverlayVerdict::Forward(out),
            };
            net.counters.drops.count(OverlayDrop::TooBig);
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
                return OverlayVerdict::Forward(out);
            }
            return match frag_needed(frame, mtu) {
                Some(reply) => {
                    net.counters.icmp_frag_needed += 1;
                    match ingress {
                        Ingress::Link => net.counters.link_tx += 1,
                        Ingress::Appliance => net.counters.appliance_tx += 1,
                    }
                    OverlayVerdict::Refuse {
                        reason: OverlayDrop::TooBig,
                        reply: (ingress.egress(), reply),
                    }
                }
                None => OverlayVerdict::Drop(OverlayDrop::TooBig),
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
            if encap(mode, &self.grid.trusted_subnets, addr) == Encap::Sleeve {
                // Sealed with the other frames for this peer and network (at once
                // unless batching, see `flush_sleeve`).
                let outer = OuterAddrs {
                    src_mac: self.underlay.mac,
                    dst_mac: neighbor,
                    src_ip: self.underlay.ip,
                    dst_ip: addr,
                    src_port,
                    ttl: self.ttl,
                };
                let node = peer.node;
                self.queue_for_seal(addr, node, vni, outer, PacketBuf::from_frame(frame));
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
            let mut sealed = Vec::new();
            let refused = self.seal_pending(now, &mut BufPool::new(0), &mut sealed);
            out.extend(
                sealed
                    .into_iter()
                    .map(|m| (Egress::Uplink, m.frame().to_vec())),
            );
            if !self.batch_sleeve {
                seal_refused = refused;
                accepted = queued.saturating_sub(refused);
            }
        }
        let unicast_unresolved = to_peer.is_some() && sent + accepted == 0 && missing_neighbor > 0;
        let unicast_unsealed = to_peer.is_some() && sent + accepted == 0 && seal_refused > 0;
        for _ in 0..missing_neighbor {
            self.drops.count(OverlayDrop::NoNeighbor);
        }
        if let Some(net) = self.networks.get_mut(&vni) {
            net.counters.uplink_tx += sent;
            for _ in 0..missing_neighbor {
                net.counters.drops.count(OverlayDrop::NoNeighbor);
            }
        }
        if unicast_unsealed {
            return OverlayVerdict::Drop(OverlayDrop::SealRefused);
        }
        if unicast_unresolved {
            return OverlayVerdict::Drop(OverlayDrop::NoNeighbor);
        }
        OverlayVerdict::Forward(out)
    }

    /// A frame for the one peer at `to`, in its buffer: for a VXLAN peer it is
    /// encapsulated where it lies (the outer headers go into the headroom), for a sleeve
    /// peer it is kept for sealing (batching on). Anything else (too big for the overlay
    /// MTU, no neighbour yet, no headroom, sealing at once) takes the copying path, with
    /// the same counters and answers.
    pub(super) fn encap_for_peer(
        &mut self,
        now: Instant,
        vni: Vni,
        buf: &mut PacketBuf,
        ingress: Ingress,
        to: Ipv4Address,
    ) -> Step {
        let copying = |overlay: &mut Overlay, buf: &PacketBuf| {
            Step::Verdict(overlay.forward_to_peers(
                now,
                vni,
                buf.frame(),
                ingress,
                Some(to),
                Vec::new(),
            ))
        };
        // The network and the peer are looked up once: their counters are bumped
        // through the same references at the end.
        let Some(net) = self.networks.get_mut(&vni) else {
            return Step::Verdict(OverlayVerdict::Forward(Vec::new()));
        };
        let mode = net.mode;
        let mtu = network_mtu(&self.grid, mode);
        let frame = buf.frame();
        let ethertype = EthernetFrame::new_unchecked(frame).ethertype();
        if vlan::l3_len(ethertype, frame.len()) > usize::from(mtu) {
            return copying(self, buf);
        }
        let Some(peer) = self.peers.get_mut(&to) else {
            return copying(self, buf);
        };
        let Some(neighbor) = peer.neighbor else {
            return copying(self, buf);
        };
        let src_port = vxlan::flow_src_port(frame, self.hash_seed, self.src_ports);
        if encap(mode, &self.grid.trusted_subnets, to) == Encap::Sleeve {
            if !self.batch_sleeve || self.pending_frames + 1 >= MAX_PENDING_FRAMES {
                return copying(self, buf);
            }
            let node = peer.node;
            let outer = OuterAddrs {
                src_mac: self.underlay.mac,
                dst_mac: neighbor,
                src_ip: self.underlay.ip,
                dst_ip: to,
                src_port,
                ttl: self.ttl,
            };
            self.queue_for_seal(to, node, vni, outer, core::mem::take(buf));
            return Step::Kept;
        }
        let outer = Outer {
            src_mac: self.underlay.mac,
            dst_mac: neighbor,
            src_ip: self.underlay.ip,
            dst_ip: to,
            src_port,
            dst_port: self.grid.vxlan_port,
            vni,
            ident: self.next_ident,
            ttl: self.ttl,
            df: self.grid.df,
            udp_checksum: self.grid.udp_checksum,
        };
        if vxlan::encapsulate_in_place(&outer, buf).is_err() {
            return copying(self, buf);
        }
        self.next_ident = self.next_ident.wrapping_add(1);
        peer.counters.tx_packets += 1;
        peer.counters.tx_bytes += buf.len() as u64;
        net.counters.uplink_tx += 1;
        Step::Send(Egress::Uplink)
    }

    /// Queues `frame` for sealing to `peer` (node `node`) on network `vni`, behind the
    /// frames of that pair already queued; `outer` are the pair's outer headers if it
    /// is its first frame of the round.
    fn queue_for_seal(
        &mut self,
        peer: Ipv4Address,
        node: NodeId,
        vni: Vni,
        outer: OuterAddrs,
        frame: PacketBuf,
    ) {
        self.pending_frames += 1;
        let active = self.pending_active;
        if let Some(p) = self.pending[..active]
            .iter_mut()
            .find(|p| p.peer == peer && p.vni == vni)
        {
            p.frames.push(frame);
            return;
        }
        // A new pair of this round: the next spare entry (or a new one) becomes it,
        // after the pairs queued before it.
        if active == self.pending.len() {
            self.pending.push(PendingSeal {
                peer,
                node,
                vni,
                outer,
                frames: Vec::new(),
            });
        }
        let p = &mut self.pending[active];
        p.peer = peer;
        p.node = node;
        p.vni = vni;
        p.outer = outer;
        p.frames.clear();
        p.frames.push(frame);
        self.pending_active += 1;
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
        let mut sealed = Vec::new();
        self.seal_pending(now, &mut BufPool::new(0), &mut sealed);
        sealed.into_iter().map(|m| m.frame().to_vec()).collect()
    }

    /// [`Overlay::flush_sleeve`] into buffers: each message is sealed in the buffer of
    /// its first frame (the frames after it copied in behind it) and appended to `out`;
    /// the other frames' buffers go back to `pool`.
    pub fn flush_sleeve_into(
        &mut self,
        now: Instant,
        pool: &mut BufPool,
        out: &mut Vec<PacketBuf>,
    ) {
        self.seal_pending(now, pool, out);
    }

    /// Frames queued for sealing (batching on), not yet flushed.
    pub fn pending_sleeve_frames(&self) -> usize {
        self.pending_frames
    }

    /// Seal and count the queued frames into `out`; returns the frames refused.
    fn seal_pending(&mut self, now: Instant, pool: &mut BufPool, out: &mut Vec<PacketBuf>) -> u64 {
        let mut pending = core::mem::take(&mut self.pending);
        let active = core::mem::take(&mut self.pending_active);
        self.pending_frames = 0;
        let mut refused = 0u64;
        for p in &mut pending[..active] {
            let n = p.frames.len() as u64;
            let link = match (self.sleeve.as_mut(), self.peers.get(&p.peer)) {
                (Some(link), Some(peer)) if peer.node == p.node => Some(link),
                _ => None,
            };
            let sealed = match link {
                Some(link) => seal_pair(link, p, now, pool, out),
                None => Sealed::default(),
            };
            for f in p.frames.drain(..) {
                pool.put(f);
            }
            if let Some(peer) = self.peers.get_mut(&p.peer) {
                peer.counters.tx_packets += sealed.messages;
                peer.counters.tx_bytes += sealed.bytes;
            }
            let lost = n - sealed.frames;
            refused += lost;
            for _ in 0..lost {
                self.drops.count(OverlayDrop::SealRefused);
            }
            if let Some(net) = self.networks.get_mut(&p.vni) {
                net.counters.uplink_tx += sealed.frames;
                for _ in 0..lost {
                    net.counters.drops.count(OverlayDrop::SealRefused);
                }
            }
        }
        pending.truncate(active.max(SPARE_PENDING));
        self.pending = pending;
        refused
    }
}

/// What sealing one (peer, network)'s frames gave.
#[derive(Debug, Default, Clone, Copy)]
struct Sealed {
    messages: u64,
    bytes: u64,
    /// Frames that went into a sealed message.
    frames: u64,
}

/// Seals the frames queued for one (peer, network) pair into as few messages as fit,
/// each in the buffer of its first frame: its record header and the sleeve header go
/// into the headroom, the following frames' records and the tag behind it, and the
/// outer headers in front. A frame without the room is first moved to a buffer with
/// it. A refusal ends the pair: the frames not yet sealed stay queued for the caller
/// to count and release.
fn seal_pair(
    link: &mut SleeveLink,
    p: &mut PendingSeal,
    now: Instant,
    pool: &mut BufPool,
    out: &mut Vec<PacketBuf>,
) -> Sealed {
    let mut done = Sealed::default();
    if link
        .check_frames(p.node, p.frames.iter().map(|f| f.len()))
        .is_err()
    {
        return done;
    }
    let max = link.max_message();
    let mut i = 0;
    while i < p.frames.len() {
        let take = sleeve::pack(p.frames[i..].iter().map(|f| f.len()), max);
        let rest = i + 1..i + take;
        let tail = TAG_LEN
            + p.frames[rest.clone()]
                .iter()
                .map(|f| RECORD_HEADER_LEN + f.len())
                .sum::<usize>();
        let mut msg = core::mem::take(&mut p.frames[i]);
        if msg.headroom() < SEAL_FRONT || msg.tailroom() < tail {
            msg = with_room(msg, tail, pool);
        }
        let first = msg.len();
        let Some(front) = msg.push_front(RECORD_HEADER_LEN) else {
            // `with_room` made the room; a buffer without it is refused, never sent.
            p.frames[i] = msg;
            return done;
        };
        front[..RECORD_HEADER_LEN].copy_from_slice(&record_header(p.vni, first));
        for f in &mut p.frames[rest] {
            let at = msg.len();
            if let Some(m) = msg.push_back(RECORD_HEADER_LEN + f.len()) {
                m[at..at + RECORD_HEADER_LEN].copy_from_slice(&record_header(p.vni, f.len()));
                m[at + RECORD_HEADER_LEN..].copy_from_slice(f.frame());
            }
            pool.put(core::mem::take(f));
        }
        msg.push_back(TAG_LEN);
        msg.push_front(HEADER_LEN);
        if link
            .seal_message(p.node, msg.frame_mut(), take, now)
            .is_err()
        {
            pool.put(msg);
            // The frames of this message are spent; those after it stay queued.
            p.frames.drain(..i + take);
            return done;
        }
        msg.push_front(OUTER_LEN);
        link.write_outer(&p.outer, msg.frame_mut());
        done.messages += 1;
        done.bytes += msg.len() as u64;
        done.frames += take as u64;
        out.push(msg);
        i += take;
    }
    p.frames.clear();
    done
}

/// `frame` moved to a buffer with [`SEAL_FRONT`] bytes in front of it and `tail` behind:
/// one of the pool's when that is enough, else one of its own.
fn with_room(frame: PacketBuf, tail: usize, pool: &mut BufPool) -> PacketBuf {
    let mut buf = pool.get();
    if buf.headroom() < SEAL_FRONT || buf.capacity() < buf.headroom() + frame.len() + tail {
        buf = PacketBuf::with_capacity(SEAL_FRONT + frame.len() + tail);
        buf.set_range(SEAL_FRONT, 0);
    }
    let at = buf.headroom();
    buf.set_range(at, frame.len());
    buf.frame_mut().copy_from_slice(frame.frame());
    pool.put(frame);
    buf
}
