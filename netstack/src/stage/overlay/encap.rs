//! Encapsulation towards the peers: which encapsulation a network uses for a peer
//! (VXLAN, or sleeve by mode and trusted subnets), the overlay MTU and the fragmentation
//! needed answer for what exceeds it, VXLAN frames built at once, and sleeve frames
//! queued per peer and network and sealed together.
//!
//! It never decides where a frame goes on L2 (the bridge does) and never lets a frame
//! of a network that must be sealed leave in plaintext.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, Ipv4Address};

use super::bridge::Ingress;
use super::config::{EncapMode, Subnet};
use super::sleeve_link::OuterAddrs;
use super::{
    network_mtu, Egress, Output, Overlay, OverlayDrop, OverlayVerdict, MAX_PENDING_FRAMES,
};
use crate::base::{NodeId, Vni};
use crate::wire::icmp_error::frag_needed;
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

/// The frames of one network for one sleeve peer that will share messages.
#[derive(Debug, Clone)]
pub(super) struct PendingSeal {
    pub(super) peer: Ipv4Address,
    pub(super) node: NodeId,
    pub(super) vni: Vni,
    /// The outer headers, from the first frame (its flow's source port).
    pub(super) outer: OuterAddrs,
    pub(super) frames: Vec<Vec<u8>>,
}

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
                        outer: OuterAddrs {
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
                        self.drops.count(OverlayDrop::SealRefused);
                    }
                    if let Some(net) = self.networks.get_mut(&p.vni) {
                        for _ in 0..n {
                            net.counters.drops.count(OverlayDrop::SealRefused);
                        }
                    }
                }
            }
        }
        (out, refused)
    }
}
