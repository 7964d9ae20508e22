//! Decapsulation from the peers: a frame from the uplink that is VXLAN or sleeve to this
//! appliance is checked (outer headers, VNI, sender, the network's encapsulation) and
//! its inner frame delivered to the local ports of its network. Anything else comes
//! back as `NotVxlan` for the rest of the stack. Nothing is learned from the uplink.

use alloc::vec::Vec;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, Ipv4Address};

use super::encap::{encap, Encap};
use super::{Egress, Overlay, OverlayDrop, OverlayVerdict, Step};
use crate::base::ports::SLEEVE_PORT;
use crate::base::Vni;
use crate::table::fdb::Location;
use crate::wire::buffer::PacketBuf;
use crate::wire::outer::{self, OuterError};
use crate::wire::sleeve::{Records, HEADER_LEN, TAG_LEN};
use crate::wire::vlan;
use crate::wire::vxlan::{self, DecapError};

/// Where a decapsulated frame of one network goes on this node.
enum Delivery {
    /// To this one local port.
    One(Egress),
    /// A broadcast: to the link and to the appliance.
    Both,
}

/// What the overlay counts for outer headers it refused. A frame on neither tunnel port
/// is `NotVxlan`: the rest of the stack takes it.
fn outer_drop(e: OuterError) -> OverlayDrop {
    match e {
        OuterError::NotForPort => OverlayDrop::NotVxlan,
        OuterError::BadHeader => OverlayDrop::BadOuterHeader,
        OuterError::Fragment => OverlayDrop::OuterFragment,
    }
}

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

    /// [`Overlay::rx_uplink_vni`] for a frame in its buffer: a VXLAN or sleeve frame
    /// for one local port is decapsulated (opened, decrypted) where it lies and its
    /// outer headers become headroom; a broadcast to both local ports is copied.
    pub fn rx_uplink_buf(&mut self, now: Instant, buf: &mut PacketBuf) -> (Step, Option<Vni>) {
        let mut vni = None;
        let step = self.decap_buf(now, buf, &mut vni);
        match step {
            Step::Send(_) | Step::Verdict(OverlayVerdict::Forward(_)) => (step, vni),
            _ => (step, None),
        }
    }

    fn decap(&mut self, now: Instant, frame: &[u8], vni_out: &mut Option<Vni>) -> OverlayVerdict {
        let mut copy = PacketBuf::from_frame(frame);
        match self.decap_buf(now, &mut copy, vni_out) {
            Step::Send(egress) => {
                OverlayVerdict::Forward(alloc::vec![(egress, copy.frame().to_vec())])
            }
            Step::Verdict(verdict) => verdict,
            Step::Kept => OverlayVerdict::Forward(Vec::new()),
        }
    }

    fn decap_buf(&mut self, now: Instant, buf: &mut PacketBuf, vni_out: &mut Option<Vni>) -> Step {
        if self.sleeve.is_some() {
            match outer::udp_to_port(buf.frame(), SLEEVE_PORT) {
                Ok(rx) => {
                    let (src, dst, at, len) =
                        (rx.src_ip, rx.dst_ip, rx.payload_at, rx.payload.len());
                    return self.decap_sleeve(now, buf, (src, dst), at..at + len, vni_out);
                }
                // Not sleeve's: VXLAN's to judge below.
                Err(OuterError::NotForPort) => {}
                Err(e) => return Step::Verdict(self.drop(None, outer_drop(e))),
            }
        }
        let d = match vxlan::decapsulate(buf.frame(), self.grid.vxlan_port) {
            Ok(d) => d,
            Err(e) => {
                let reason = match e {
                    DecapError::Outer(e) => outer_drop(e),
                    DecapError::Vxlan(_) => OverlayDrop::BadVxlanHeader,
                };
                return Step::Verdict(self.drop(None, reason));
            }
        };
        if d.dst_ip != self.underlay.ip {
            return Step::Verdict(self.drop(None, OverlayDrop::NotVxlan));
        }
        let vni = d.vni;
        *vni_out = Some(vni);
        // A network that seals for this peer takes nothing from it in plaintext: VXLAN
        // carries no authentication, anyone on the path could inject it.
        if let Some(net) = self.networks.get(&vni) {
            if encap(net.mode, &self.grid.trusted_subnets, d.src_ip) == Encap::Sleeve {
                return Step::Verdict(self.drop(Some(vni), OverlayDrop::Unsealed));
            }
        }
        let (src_ip, inner) = (d.src_ip, d.inner_at..d.inner_at + d.inner.len());
        let wire_len = buf.len();
        self.deliver_in(now, src_ip, vni, buf, inner, wire_len)
    }

    /// A sleeve message to our port (`payload` of the frame in `buf`, from `addrs.0` to
    /// `addrs.1`): opened where it lies; one frame is delivered there, several as
    /// copies, each as VXLAN decap delivers.
    fn decap_sleeve(
        &mut self,
        now: Instant,
        buf: &mut PacketBuf,
        addrs: (Ipv4Address, Ipv4Address),
        payload: core::ops::Range<usize>,
        vni_out: &mut Option<Vni>,
    ) -> Step {
        if addrs.1 != self.underlay.ip {
            return Step::Verdict(self.drop(None, OverlayDrop::NotVxlan));
        }
        let Some(link) = self.sleeve.as_mut() else {
            return Step::Verdict(self.drop(None, OverlayDrop::NotVxlan));
        };
        let wire_len = payload.len();
        let Some(bytes) = buf.frame_mut().get_mut(payload.clone()) else {
            return Step::Verdict(self.drop(None, OverlayDrop::SleeveRefused));
        };
        let Ok((sender, records)) = link.open_in_place(bytes, now) else {
            return Step::Verdict(self.drop(None, OverlayDrop::SleeveRefused));
        };
        let single = records.single();
        // The sender is authenticated; its underlay address is the configured one (the
        // outer source may be rewritten by NAT on the way).
        let Some(src_ip) = self.peer_nodes.get(&sender).copied() else {
            return Step::Verdict(self.drop(None, OverlayDrop::UnknownPeer));
        };
        // The decrypted records: after the clear header, before the tag.
        let body = payload.start + HEADER_LEN..payload.end - TAG_LEN;
        if let Some((vni, at)) = single {
            let inner = body.start + at.start..body.start + at.end;
            let step = self.deliver_in(now, src_ip, vni, buf, inner, wire_len);
            if matches!(
                step,
                Step::Send(_) | Step::Verdict(OverlayVerdict::Forward(_))
            ) {
                *vni_out = Some(vni);
            }
            return step;
        }
        let Ok(records) = Records::new_checked(&buf.frame()[body]) else {
            return Step::Verdict(self.drop(None, OverlayDrop::SleeveRefused));
        };
        let share = wire_len / records.len().max(1);
        let mut out = Vec::new();
        let mut last = OverlayVerdict::Forward(Vec::new());
        for f in records.iter() {
            // One verdict carries one network (the datapath tags the link by it).
            if vni_out.is_some_and(|v| v != f.vni) {
                last = self.drop(Some(f.vni), OverlayDrop::MixedVni);
                continue;
            }
            match self.deliver(now, src_ip, f.vni, f.bytes, share) {
                OverlayVerdict::Forward(o) => {
                    *vni_out = Some(f.vni);
                    out.extend(o);
                }
                other => last = other,
            }
        }
        Step::Verdict(if vni_out.is_some() {
            OverlayVerdict::Forward(out)
        } else {
            last
        })
    }

    /// The decapsulated frame at `inner` of `buf`, network `vni`, from the peer at
    /// `src_ip`: delivered where it lies when it goes to one local port.
    fn deliver_in(
        &mut self,
        now: Instant,
        src_ip: Ipv4Address,
        vni: Vni,
        buf: &mut PacketBuf,
        inner: core::ops::Range<usize>,
        wire_len: usize,
    ) -> Step {
        let Some(bytes) = buf.frame().get(inner.clone()) else {
            return Step::Verdict(self.drop(Some(vni), OverlayDrop::Runt));
        };
        match self.delivery(now, src_ip, vni, bytes, wire_len) {
            Err(verdict) => Step::Verdict(verdict),
            Ok(Delivery::One(egress)) => {
                buf.pull_front(inner.start);
                buf.truncate(inner.len());
                Step::Send(egress)
            }
            Ok(Delivery::Both) => Step::Verdict(OverlayVerdict::Forward(alloc::vec![
                (Egress::Link, bytes.to_vec()),
                (Egress::Appliance, bytes.to_vec()),
            ])),
        }
    }

    /// A decapsulated frame of network `vni` from the peer at `src_ip`, `wire_len` bytes
    /// on the underlay: the per-network rules, then the local ports (copies).
    fn deliver(
        &mut self,
        now: Instant,
        src_ip: Ipv4Address,
        vni: Vni,
        inner_bytes: &[u8],
        wire_len: usize,
    ) -> OverlayVerdict {
        match self.delivery(now, src_ip, vni, inner_bytes, wire_len) {
            Err(verdict) => verdict,
            Ok(Delivery::One(egress)) => {
                OverlayVerdict::Forward(alloc::vec![(egress, inner_bytes.to_vec())])
            }
            Ok(Delivery::Both) => OverlayVerdict::Forward(alloc::vec![
                (Egress::Link, inner_bytes.to_vec()),
                (Egress::Appliance, inner_bytes.to_vec()),
            ]),
        }
    }

    /// Where a decapsulated frame goes, with the per-network rules and the counters;
    /// `Err` is the refusal, counted.
    fn delivery(
        &mut self,
        now: Instant,
        src_ip: Ipv4Address,
        vni: Vni,
        inner_bytes: &[u8],
        wire_len: usize,
    ) -> Result<Delivery, OverlayVerdict> {
        // The network and the peer are looked up once: the decision and the counters
        // both go through these references.
        let Some(net) = self.networks.get_mut(&vni) else {
            return Err(self.drop(None, OverlayDrop::UnknownVni));
        };
        let Some(peer) = self
            .peers
            .get_mut(&src_ip)
            .filter(|p| p.networks.contains(&vni))
        else {
            return Err(self.drop(Some(vni), OverlayDrop::UnknownPeer));
        };
        let Ok(inner) = EthernetFrame::new_checked(inner_bytes) else {
            return Err(self.drop(Some(vni), OverlayDrop::Runt));
        };
        if !inner.src_addr().is_unicast() {
            return Err(self.drop(Some(vni), OverlayDrop::BadSourceMac));
        }
        if vlan::is_tag(inner.ethertype()) {
            return Err(self.drop(Some(vni), OverlayDrop::Tagged));
        }
        let dst = inner.dst_addr();
        // At most two local ports: the link and the appliance.
        let delivery = if !dst.is_unicast() {
            if net.appliance_mac.is_some() {
                Delivery::Both
            } else {
                Delivery::One(Egress::Link)
            }
        } else if Some(dst) == net.appliance_mac {
            Delivery::One(Egress::Appliance)
        } else {
            match net.fdb.lookup(&dst, now) {
                Some(Location::Remote(_)) => {
                    return Err(self.drop(Some(vni), OverlayDrop::NotLocal))
                }
                // Local, or unknown: the link is one segment, deliver it there.
                Some(Location::Local) | None => Delivery::One(Egress::Link),
            }
        };
        peer.counters.rx_packets += 1;
        peer.counters.rx_bytes += wire_len as u64;
        net.counters.uplink_rx += 1;
        match delivery {
            Delivery::One(Egress::Link) => net.counters.link_tx += 1,
            Delivery::One(_) => net.counters.appliance_tx += 1,
            Delivery::Both => {
                net.counters.link_tx += 1;
                net.counters.appliance_tx += 1;
            }
        }
        Ok(delivery)
    }
}
