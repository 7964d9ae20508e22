//! Decapsulation from the peers: a frame from the uplink that is VXLAN or sleeve to this
//! appliance is checked (outer headers, VNI, sender, the network's encapsulation) and
//! its inner frame delivered to the local ports of its network. Anything else comes
//! back as `NotVxlan` for the rest of the stack. Nothing is learned from the uplink.

use alloc::vec::Vec;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, Ipv4Address};

use super::encap::{encap, Encap};
use super::sleeve_link::{self, OuterError, Received};
use super::{Egress, Overlay, OverlayDrop, OverlayVerdict};
use crate::base::Vni;
use crate::table::fdb::Location;
use crate::wire::vlan;
use crate::wire::vxlan::{self, DecapError};

impl Overlay {
    /// A frame received on the uplink. Anything that is not VXLAN for us comes back as
    /// `Drop(NotVxlan)` for the rest of the stack to look at.
    pub fn rx_uplink(&mut self, now: Instant, frame: &[u8]) -> OverlayVerdict {
        self.rx_uplink_vni(now, frame).0
    }

    /// [`Overlay::rx_uplink`], also saying which network the frame belonged to (the
    /// datapath needs it to put the link's VLAN tag on what goes there).
    pub fn rx_uplink_vni(&mut self, now: Instant, frame: &[u8]) -> (OverlayVerdict, Option<Vni>) {
        let mut vni = None;
        let verdict = self.decap(now, frame, &mut vni);
        match verdict {
            OverlayVerdict::Forward(_) => (verdict, vni),
            _ => (verdict, None),
        }
    }

    fn decap(&mut self, now: Instant, frame: &[u8], vni_out: &mut Option<Vni>) -> OverlayVerdict {
        if self.sleeve.is_some() {
            match sleeve_link::parse_outer(frame) {
                Ok(rx) => return self.decap_sleeve(now, rx, vni_out),
                Err(OuterError::NotSleeve) => {}
                Err(OuterError::BadOuterHeader) => {
                    return self.drop(None, OverlayDrop::BadOuterHeader)
                }
                Err(OuterError::OuterFragment) => {
                    return self.drop(None, OverlayDrop::OuterFragment)
                }
            }
        }
        let d = match vxlan::decapsulate(frame, self.grid.vxlan_port) {
            Ok(d) => d,
            Err(e) => {
                let reason = match e {
                    DecapError::NotVxlan => OverlayDrop::NotVxlan,
                    DecapError::BadOuterHeader => OverlayDrop::BadOuterHeader,
                    DecapError::OuterFragment => OverlayDrop::OuterFragment,
                    DecapError::Vxlan(_) => OverlayDrop::BadVxlanHeader,
                };
                return self.drop(None, reason);
            }
        };
        if d.dst_ip != self.underlay.ip {
            return self.drop(None, OverlayDrop::NotVxlan);
        }
        let vni = d.vni;
        *vni_out = Some(vni);
        // A network that seals for this peer takes nothing from it in plaintext: VXLAN
        // carries no authentication, anyone on the path could inject it.
        if let Some(net) = self.networks.get(&vni) {
            if encap(net.mode, &self.grid.trusted_subnets, d.src_ip) == Encap::Sleeve {
                return self.drop(Some(vni), OverlayDrop::Unsealed);
            }
        }
        self.deliver(now, d.src_ip, vni, d.inner, frame.len())
    }

    /// A sleeve message to our port: open it, deliver each frame as VXLAN decap does.
    fn decap_sleeve(
        &mut self,
        now: Instant,
        rx: Received<'_>,
        vni_out: &mut Option<Vni>,
    ) -> OverlayVerdict {
        if rx.dst_ip != self.underlay.ip {
            return self.drop(None, OverlayDrop::NotVxlan);
        }
        let Some(link) = self.sleeve.as_mut() else {
            return self.drop(None, OverlayDrop::NotVxlan);
        };
        let Ok((sender, frames)) = link.open(rx.payload, now) else {
            return self.drop(None, OverlayDrop::SleeveRefused);
        };
        // The sender is authenticated; its underlay address is the configured one (the
        // outer source may be rewritten by NAT on the way).
        let Some(src_ip) = self
            .peers
            .iter()
            .find(|(_, p)| p.node == sender)
            .map(|(a, _)| *a)
        else {
            return self.drop(None, OverlayDrop::UnknownPeer);
        };
        let share = rx.payload.len() / frames.len().max(1);
        let mut out = Vec::new();
        let mut last = OverlayVerdict::Forward(Vec::new());
        for (vni, inner) in frames {
            // One verdict carries one network (the datapath tags the link by it).
            if vni_out.is_some_and(|v| v != vni) {
                last = self.drop(Some(vni), OverlayDrop::MixedVni);
                continue;
            }
            match self.deliver(now, src_ip, vni, &inner, share) {
                OverlayVerdict::Forward(o) => {
                    *vni_out = Some(vni);
                    out.extend(o);
                }
                other => last = other,
            }
        }
        if vni_out.is_some() {
            OverlayVerdict::Forward(out)
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
    ) -> OverlayVerdict {
        if !self.networks.contains_key(&vni) {
            return self.drop(None, OverlayDrop::UnknownVni);
        }
        let known = self
            .peers
            .get(&src_ip)
            .is_some_and(|p| p.networks.contains(&vni));
        if !known {
            return self.drop(Some(vni), OverlayDrop::UnknownPeer);
        }
        let Ok(inner) = EthernetFrame::new_checked(inner_bytes) else {
            return self.drop(Some(vni), OverlayDrop::Runt);
        };
        if !inner.src_addr().is_unicast() {
            return self.drop(Some(vni), OverlayDrop::BadSourceMac);
        }
        if vlan::is_tag(inner.ethertype()) {
            return self.drop(Some(vni), OverlayDrop::Tagged);
        }
        let dst = inner.dst_addr();
        let Some(net) = self.networks.get(&vni) else {
            return self.drop(None, OverlayDrop::UnknownVni);
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
                Some(Location::Remote(_)) => return self.drop(Some(vni), OverlayDrop::NotLocal),
                // Local, or unknown: the link is one segment, deliver it there.
                Some(Location::Local) | None => &[Egress::Link],
            }
        };
        if let Some(peer) = self.peers.get_mut(&src_ip) {
            peer.counters.rx_packets += 1;
            peer.counters.rx_bytes += wire_len as u64;
        }
        let Some(net) = self.networks.get_mut(&vni) else {
            return self.drop(None, OverlayDrop::UnknownVni);
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
        OverlayVerdict::Forward(out)
    }
}
