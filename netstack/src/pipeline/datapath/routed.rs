//! Routed delivery between the router and the overlay's segments: what reaches the
//! appliance on a segment of the link (the plain link, or an overlay network from its
//! VLAN or from a peer) is offered to the router before the link interface sees it, and
//! the router's container-side output goes into the segment its next hop lives on,
//! through that network's bridge (a local container on the network's VLAN, or a remote
//! one through VXLAN/sleeve), exactly as the appliance's own frames do.
//!
//! It owns no state: placement lives in the router, forwarding in the overlay. It never
//! lets a routed frame into a network other than the one named with it, and never
//! reads a clock.

use core::cell::RefCell;

use smoltcp::time::Instant;
use smoltcp::wire::EthernetFrame;

use super::outbox::flush;
use super::OverlayPath;
use crate::base::Vni;
use crate::pipeline::nic::Nic;
use crate::pipeline::port::{BufPool, PacketBuf, Port};
use crate::stage::overlay::Overlay;
use crate::stage::route::{Interfaces, Origin, Router, Segment};
use crate::table::fdb::Location;

/// Rounds of routed output per poll: an ARP answer the overlay gives at once (ARP
/// suppression) releases frames that waited for it, which go in the next round.
const ROUNDS: usize = 4;

/// The router as the datapath reaches it during one `Netstack::poll`.
pub(crate) struct RouterHook<'a, 'r> {
    pub router: &'a RefCell<&'r mut Router>,
    pub ifs: &'a Interfaces,
    pub now: Instant,
}

/// Offers the frame in `buf`, which reached the appliance on `segment`, to the router;
/// true when the router took it (`buf` is left empty: the link interface must not see
/// it).
pub(super) fn offer(
    hook: Option<&RouterHook>,
    segment: Segment,
    origin: Origin,
    buf: &mut PacketBuf,
    pool: &mut BufPool,
) -> bool {
    let Some(h) = hook else {
        return false;
    };
    // The hook is reached only from the datapath's own receive paths, never while the
    // router is borrowed; a borrowed router (a bug) leaves the frame to the interface.
    let Ok(mut router) = h.router.try_borrow_mut() else {
        return false;
    };
    router.receive_on(segment, origin, buf, h.ifs, h.now, pool)
}

/// Where the sender of `frame` lives, as network `vni`'s FDB says (an ARP answer the
/// overlay gives for a remote host comes from the appliance's own side); `path` (how
/// the frame reached this node) when the FDB does not know.
pub(super) fn origin(
    overlay: &Overlay,
    vni: Vni,
    frame: &[u8],
    path: Origin,
    hook: Option<&RouterHook>,
) -> Origin {
    let src = EthernetFrame::new_checked(frame).map(|e| e.src_addr());
    let (Some(h), Ok(src)) = (hook, src) else {
        return path;
    };
    match overlay.lookup(vni, &src, h.now) {
        Some(Location::Remote(_)) => Origin::Remote,
        Some(Location::Local) => Origin::Local,
        None => path,
    }
}

impl OverlayPath {
    /// Sends what the router queued for the container side into its segments, and
    /// transmits the result. Returns whether anything was sent.
    // The send path's whole context; a struct for it would only rename the list.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_routed(
        &mut self,
        now: Instant,
        pool: &mut BufPool,
        hook: &RouterHook,
        uplink: &mut Nic,
        link: &mut Nic,
        uplink_port: &mut dyn Port,
        link_port: &mut dyn Port,
    ) -> bool {
        let mut out = core::mem::take(&mut self.outbox);
        let mut frames = core::mem::take(&mut out.routed);
        let mut any = false;
        for _ in 0..ROUNDS {
            if let Ok(mut r) = hook.router.try_borrow_mut() {
                r.take_routed(&mut frames);
            }
            if frames.is_empty() {
                break;
            }
            any = true;
            for (segment, buf) in frames.drain(..) {
                match segment {
                    Some(Segment::Network(vni)) if self.vlan_of.contains_key(&vni) => self
                        .appliance_into(now, vni, buf, &mut link.iface, &mut out, Some(hook), pool),
                    // A network removed since the neighbour was placed: ask everywhere.
                    Some(Segment::Network(_)) | None => {
                        let frame = buf.frame().to_vec();
                        pool.put(buf);
                        self.rx_appliance(now, frame, &mut link.iface, &mut out, Some(hook), pool)
                    }
                    Some(Segment::Plain) => out.link.push(buf),
                }
            }
        }
        out.routed = frames;
        let sent_u = flush(&mut out.uplink, uplink_port, pool, &mut uplink.counters);
        let sent_l = flush(&mut out.link, link_port, pool, &mut link.counters);
        self.outbox = out;
        any || sent_u || sent_l
    }
}
