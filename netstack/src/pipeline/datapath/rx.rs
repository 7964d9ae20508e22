//! The overlay datapath's share of `Netstack::poll`: uplink frames go to the VTEP first
//! and what is not VXLAN or sleeve for us on to the uplink's interface; link frames are
//! split into networks by their 802.1Q tag and bridged, or go to the link's interface;
//! the interface's own frames are bridged into the network of the host they answer.
//! What the overlay sends out is tagged for its network and transmitted.
//!
//! Frames travel in the buffer they were received in: untagged, bridged, encapsulated
//! or decapsulated and tagged again where they lie, and transmitted from there; only
//! what the overlay copies (floods, answers) or the interfaces build takes another
//! buffer. Every frame is handed to the overlay with the one VNI it arrived on; nothing
//! here reads a clock or blocks.

use alloc::vec::Vec;

use smoltcp::time::Instant;

use super::outbox::{flush, Outbox};
use super::routed::{self, RouterHook};
use super::underlay::UplinkAddress;
use super::{OverlayPath, AGE_INTERVAL};
use crate::base::{Vni, MAX_FRAME_LEN};
use crate::pipeline::counters::NicDrop;
use crate::pipeline::nic::{Nic, RX_BATCH};
use crate::pipeline::port::{BufPool, Burst, PacketBuf, Port};
use crate::stage::local::NicIface;
use crate::stage::overlay::{Egress, Output, OverlayDrop, OverlayVerdict, Step};
use crate::stage::route::{Origin, Segment};
use crate::wire::vlan::{self, Tag};

impl OverlayPath {
    /// `Netstack::poll` with an overlay; returns (work done, more input may be pending).
    // The poll's whole context; a struct for it would only rename the list.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn poll(
        &mut self,
        now: Instant,
        pool: &mut BufPool,
        uplink: &mut Nic,
        link: &mut Nic,
        uplink_port: &mut dyn Port,
        link_port: &mut dyn Port,
        hook: Option<&RouterHook>,
    ) -> (bool, bool) {
        let mut out = core::mem::take(&mut self.outbox);
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
        // peers never piles up a burst's worth of copies); only what goes back out of
        // the receiving port waits for the end of the burst. Frames for sleeve peers
        // wait too, to be sealed together (bounded by `overlay::MAX_PENDING_FRAMES`).
        let mut sent_early = false;
        let mut burst = Burst::new();
        let taken_u = uplink_port.receive(pool, &mut burst);
        for buf in burst.drain() {
            self.rx_uplink(
                now,
                buf,
                own.as_ref(),
                uplink,
                &mut link.iface,
                &mut out,
                hook,
                pool,
            );
            sent_early |= flush(&mut out.link, link_port, pool, &mut link.counters);
        }
        let taken_l = link_port.receive(pool, &mut burst);
        for buf in burst.drain() {
            self.rx_link(now, buf, link, &mut out, hook, pool);
            sent_early |= flush(&mut out.uplink, uplink_port, pool, &mut uplink.counters);
        }

        let changed_u = uplink.iface.poll(now);
        let withheld = uplink.iface.take_icmp_rate_limited();
        uplink
            .counters
            .dropped_n(NicDrop::IcmpRateLimited, withheld);
        while let Some(frame) = uplink.iface.pop_tx() {
            out.uplink.push(pool.copy_of(&frame));
        }
        let changed_l = link.iface.poll(now);
        let withheld = link.iface.take_icmp_rate_limited();
        link.counters.dropped_n(NicDrop::IcmpRateLimited, withheld);
        while let Some(frame) = link.iface.pop_tx() {
            self.rx_appliance(now, frame, &mut link.iface, &mut out, hook, pool);
        }

        if self.next_age.is_none_or(|t| t <= now) {
            self.overlay.age(now);
            self.next_age = Some(now + AGE_INTERVAL);
        }

        // The sleeve peers' frames of this poll, sealed together (docs/sleeve.md
        // "Batching"): small frames share datagrams, none waits for a later poll.
        self.overlay.flush_sleeve_into(now, pool, &mut out.uplink);
        let sent_u = flush(&mut out.uplink, uplink_port, pool, &mut uplink.counters);
        let sent_l = flush(&mut out.link, link_port, pool, &mut link.counters);
        self.outbox = out;
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
        mut buf: PacketBuf,
        own: Option<&UplinkAddress>,
        uplink: &mut Nic,
        link_iface: &mut NicIface,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
        pool: &mut BufPool,
    ) {
        uplink.counters.received(buf.len());
        if let Err(reason) = Nic::check_frame(&uplink.iface, buf.frame(), MAX_FRAME_LEN) {
            uplink.counters.dropped(reason);
            pool.put(buf);
            return;
        }
        if let Some(own) = own {
            // ARP teaches us peers' MACs; smoltcp sees the frame as well (below).
            if let Some((ip, mac)) = self.neighbors.observe(buf.frame(), own, now) {
                self.rebind(ip, mac, own);
            }
        }
        match self.overlay.rx_uplink_buf(now, &mut buf) {
            (Step::Verdict(OverlayVerdict::Drop(OverlayDrop::NotVxlan)), _) => {
                match Nic::check_destination(&uplink.iface, buf.frame()) {
                    Ok(()) => uplink.iface.push_rx(buf.frame()),
                    Err(reason) => uplink.counters.dropped(reason),
                }
                pool.put(buf);
            }
            (Step::Send(egress), Some(vni)) => {
                // Decapsulated in place: the buffer holds the inner frame.
                self.inner_tap.stage(vni, buf.frame());
                self.emit_buf(
                    vni,
                    egress,
                    buf,
                    link_iface,
                    out,
                    Origin::Remote,
                    hook,
                    pool,
                )
            }
            (Step::Verdict(OverlayVerdict::Forward(outs)), Some(vni)) => {
                pool.put(buf);
                self.stage_delivered(vni, &outs);
                self.emit(vni, outs, link_iface, out, Origin::Remote, hook, pool)
            }
            // Counted by the overlay.
            _ => pool.put(buf),
        }
    }

    pub(super) fn rx_link(
        &mut self,
        now: Instant,
        mut buf: PacketBuf,
        link: &mut Nic,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
        pool: &mut BufPool,
    ) {
        link.counters.received(buf.len());
        let tagged = vlan::has_tag(buf.frame());
        let max_len = MAX_FRAME_LEN + if tagged { vlan::TAG_LEN } else { 0 };
        if let Err(reason) = Nic::check_frame(&link.iface, buf.frame(), max_len) {
            link.counters.dropped(reason);
            pool.put(buf);
            return;
        }
        let Ok(tag) = vlan::untag_in_place(&mut buf) else {
            link.counters.dropped(NicDrop::Runt);
            pool.put(buf);
            return;
        };
        let vni = match tag {
            Tag::Untagged => self.by_tag.get(&None),
            Tag::Vlan(v) => self.by_tag.get(&Some(v)),
            Tag::Reserved => None,
        };
        if let Some(&vni) = vni {
            self.inner_tap.stage(vni, buf.frame());
        }
        match (vni.copied(), tag) {
            (Some(vni), _) => match self.overlay.rx_link_buf(now, vni, &mut buf) {
                Step::Send(egress) => self.emit_buf(
                    vni,
                    egress,
                    buf,
                    &mut link.iface,
                    out,
                    Origin::Local,
                    hook,
                    pool,
                ),
                Step::Kept => {}
                Step::Verdict(verdict) => {
                    pool.put(buf);
                    self.emit_verdict(vni, verdict, &mut link.iface, out, hook, pool)
                }
            },
            (None, Tag::Untagged) => match Nic::check_destination(&link.iface, buf.frame()) {
                Ok(()) => {
                    self.replies.record(buf.frame(), Segment::Plain);
                    if !routed::offer(hook, Segment::Plain, Origin::Local, &mut buf, pool) {
                        link.iface.push_rx(buf.frame());
                        pool.put(buf);
                    }
                }
                Err(reason) => {
                    link.counters.dropped(reason);
                    pool.put(buf);
                }
            },
            (None, _) => {
                self.counters.unknown_vlan += 1;
                pool.put(buf);
            }
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
        pool: &mut BufPool,
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
            let buf = pool.copy_of(&frame);
            match seg {
                Segment::Plain => out.link.push(buf),
                Segment::Network(vni) => {
                    self.appliance_into(now, vni, buf, link_iface, out, hook, pool)
                }
            }
        }
    }

    /// A frame of the appliance (its interface or its router) into network `vni`.
    // The send path's whole context; a struct for it would only rename the list.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn appliance_into(
        &mut self,
        now: Instant,
        vni: Vni,
        mut buf: PacketBuf,
        link_iface: &mut NicIface,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
        pool: &mut BufPool,
    ) {
        self.inner_tap.stage(vni, buf.frame());
        match self.overlay.rx_appliance_buf(now, vni, &mut buf) {
            Step::Send(egress) => {
                self.emit_buf(vni, egress, buf, link_iface, out, Origin::Local, hook, pool)
            }
            Step::Kept => {}
            Step::Verdict(verdict) => {
                pool.put(buf);
                self.emit_verdict(vni, verdict, link_iface, out, hook, pool)
            }
        }
    }

    /// Sends what a copying verdict of network `vni` says is to be sent.
    fn emit_verdict(
        &mut self,
        vni: Vni,
        verdict: OverlayVerdict,
        link_iface: &mut NicIface,
        out: &mut Outbox,
        hook: Option<&RouterHook>,
        pool: &mut BufPool,
    ) {
        match verdict {
            OverlayVerdict::Forward(outs) => {
                self.emit(vni, outs, link_iface, out, Origin::Local, hook, pool)
            }
            OverlayVerdict::Refuse { reply, .. } => self.emit(
                vni,
                alloc::vec![reply],
                link_iface,
                out,
                Origin::Local,
                hook,
                pool,
            ),
            OverlayVerdict::Drop(_) => {}
        }
    }

    /// Stages for the captures what a peer delivered into network `vni`: each inner
    /// frame once (the copies of a flood to the link and the appliance are one frame).
    fn stage_delivered(&mut self, vni: Vni, outs: &[Output]) {
        if !self.inner_tap.watches(vni) {
            return;
        }
        let mut last: Option<&[u8]> = None;
        for (_, frame) in outs {
            if last != Some(frame.as_slice()) {
                self.inner_tap.stage(vni, frame);
            }
            last = Some(frame);
        }
    }

    /// Send the overlay's output for network `vni` where it goes. What reaches the
    /// appliance is offered to the router first (`origin`: how it reached this node).
    // The send path's whole context; a struct for it would only rename the list.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit(
        &mut self,
        vni: Vni,
        outs: Vec<Output>,
        link_iface: &mut NicIface,
        out: &mut Outbox,
        origin: Origin,
        hook: Option<&RouterHook>,
        pool: &mut BufPool,
    ) {
        for (egress, frame) in outs {
            let buf = pool.copy_of(&frame);
            self.emit_buf(vni, egress, buf, link_iface, out, origin, hook, pool);
        }
    }

    /// Send one frame of network `vni`, in its buffer, out of `egress`: tagged for the
    /// network's VLAN to the link, as it is to the uplink, offered to the router and
    /// else to the link's interface for the appliance.
    // The send path's whole context; a struct for it would only rename the list.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_buf(
        &mut self,
        vni: Vni,
        egress: Egress,
        mut buf: PacketBuf,
        link_iface: &mut NicIface,
        out: &mut Outbox,
        origin: Origin,
        hook: Option<&RouterHook>,
        pool: &mut BufPool,
    ) {
        match egress {
            Egress::Link => {
                if let Some(vlan) = self.vlan_of.get(&vni).copied().flatten() {
                    if !vlan::tag_in_place(&mut buf, vlan) {
                        // No headroom (a frame the overlay built): a copy has it.
                        let mut copy = pool.copy_of(buf.frame());
                        pool.put(core::mem::take(&mut buf));
                        vlan::tag_in_place(&mut copy, vlan);
                        buf = copy;
                    }
                }
                out.link.push(buf)
            }
            Egress::Uplink => out.uplink.push(buf),
            Egress::Appliance => {
                self.replies.record(buf.frame(), Segment::Network(vni));
                let seg = Segment::Network(vni);
                let origin = routed::origin(&self.overlay, vni, buf.frame(), origin, hook);
                if !routed::offer(hook, seg, origin, &mut buf, pool) {
                    link_iface.push_rx(buf.frame());
                    pool.put(buf);
                }
            }
        }
    }
}
