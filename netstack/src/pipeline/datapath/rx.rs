//! The overlay datapath's share of `Netstack::poll`: uplink frames go to the VTEP first
//! and what is not VXLAN or sleeve for us on to the uplink's interface; link frames are
//! split into networks by their 802.1Q tag and bridged, or go to the link's interface;
//! the interface's own frames are bridged into the network of the host they answer.
//! What the overlay sends out is tagged for its network and transmitted.
//!
//! Every frame is handed to the overlay with the one VNI it arrived on; nothing here
//! reads a clock or blocks.

use alloc::vec::Vec;

use smoltcp::time::Instant;

use super::outbox::{flush, Outbox};
use super::routed::{self, RouterHook};
use super::underlay::UplinkAddress;
use super::{OverlayPath, AGE_INTERVAL};
use crate::base::{Vni, MAX_FRAME_LEN};
use crate::pipeline::counters::NicDrop;
use crate::pipeline::nic::{Nic, RX_BATCH};
use crate::pipeline::port::Port;
use crate::stage::local::NicIface;
use crate::stage::overlay::{Egress, Output, OverlayDrop, OverlayVerdict};
use crate::stage::route::{Origin, Segment};
use crate::wire::vlan::{self, Tag};

impl OverlayPath {
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
    pub(super) fn rx_uplink(
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
            if let Some((ip, mac)) = self.neighbors.observe(frame, own, now) {
                self.rebind(ip, mac, own);
            }
        }
        match self.overlay.rx_uplink_vni(now, frame) {
            (OverlayVerdict::Drop(OverlayDrop::NotVxlan), _) => {
                match Nic::check_destination(&uplink.iface, frame) {
                    Ok(()) => uplink.iface.push_rx(frame),
                    Err(reason) => uplink.counters.dropped(reason),
                }
            }
            (OverlayVerdict::Forward(outs), Some(vni)) => {
                self.emit(vni, outs, link_iface, out, Origin::Remote, hook)
            }
            // Counted by the overlay.
            _ => {}
        }
    }

    pub(super) fn rx_link(
        &mut self,
        now: Instant,
        frame: &[u8],
        link: &mut Nic,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
    ) {
        link.counters.received(frame.len());
        let tagged = vlan::has_tag(frame);
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
                OverlayVerdict::Forward(outs) => {
                    self.emit(vni, outs, &mut link.iface, out, Origin::Local, hook)
                }
                OverlayVerdict::Refuse { reply, .. } => self.emit(
                    vni,
                    alloc::vec![reply],
                    &mut link.iface,
                    out,
                    Origin::Local,
                    hook,
                ),
                OverlayVerdict::Drop(_) => {}
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
    pub(super) fn rx_appliance(
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
    pub(super) fn appliance_into(
        &mut self,
        now: Instant,
        vni: Vni,
        frame: &[u8],
        link_iface: &mut NicIface,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
    ) {
        match self.overlay.rx_appliance(now, vni, frame) {
            OverlayVerdict::Forward(outs) => {
                self.emit(vni, outs, link_iface, out, Origin::Local, hook)
            }
            OverlayVerdict::Refuse { reply, .. } => self.emit(
                vni,
                alloc::vec![reply],
                link_iface,
                out,
                Origin::Local,
                hook,
            ),
            OverlayVerdict::Drop(_) => {}
        }
    }

    /// Send the overlay's output for network `vni` where it goes. What reaches the
    /// appliance is offered to the router first (`origin`: how it reached this node).
    pub(super) fn emit(
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
