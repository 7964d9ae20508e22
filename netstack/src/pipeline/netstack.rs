//! The netstack as the kernel sees it: two NICs (uplink, container link), each a smoltcp
//! interface plus counters, and optionally the router (NAT) and the overlay. `poll`
//! moves frames port -> checks (`nic.rs`) -> smoltcp -> port; the router sees each
//! frame first when it runs (`Tap`), and with an overlay `datapath` puts the VTEP and
//! bridge in between. It owns the pool of free packet buffers and lends it to the
//! ports and stages on every poll (`port.rs` says how buffers circulate). This module
//! never blocks, never reads a clock and never panics on frame contents.

use core::cell::RefCell;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::EthernetAddress;

use super::capture::{CapturePort, CaptureTap};
use super::counters::NicCounters;
use super::datapath::{OverlayPath, RouterHook};
use super::nic::Nic;
use super::port::{BufPool, Burst, PacketBuf, Port, TxError};
use crate::base::{NicAddress, NicId};
use crate::stage::lb::health_runner::HealthRunner;
use crate::stage::route::{Interfaces, Router};

/// What one `Netstack::poll` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollResult {
    /// Frames were received or sent, or socket state changed.
    pub did_work: bool,
    /// Poll again after at most this long; `None`: only when a port has input.
    pub next_poll: Option<Duration>,
}

/// Both NICs of the appliance, and the overlay between them when one is configured.
pub struct Netstack {
    uplink: Nic,
    link: Nic,
    overlay: Option<OverlayPath>,
    /// NAT and routing between the NICs (port publishing, masquerade); `None`: off.
    router: Option<Router>,
    /// Performs the router's load-balancer health checks on the NICs' sockets.
    health: HealthRunner,
    /// The running captures (`capture.rs`); idle, it costs the poll one check.
    capture: CaptureTap,
    /// Free packet buffers, lent to the ports and stages on every poll.
    pool: BufPool,
}

impl Netstack {
    /// Both NICs start unconfigured: they drop everything (`not_configured`) until addressed.
    pub fn new(
        uplink_mac: EthernetAddress,
        link_mac: EthernetAddress,
        seed: u64,
        now: Instant,
    ) -> Self {
        Netstack {
            uplink: Nic::new(uplink_mac, seed, now),
            // Distinct seeds so the two interfaces do not pick the same ports/ISNs.
            link: Nic::new(link_mac, seed ^ 0x9e37_79b9_7f4a_7c15, now),
            overlay: None,
            router: None,
            health: HealthRunner::new(),
            capture: CaptureTap::default(),
            pool: BufPool::default(),
        }
    }

    /// Run the NAT router (or stop it with `None`); it sees every frame first.
    pub fn set_router(&mut self, router: Option<Router>) {
        // The checks in flight belong to the old router's load balancer.
        self.health
            .reset(&mut self.uplink.iface, &mut self.link.iface);
        self.router = router;
    }

    /// The runner of the load balancer's health checks.
    pub fn health_runner(&self) -> &HealthRunner {
        &self.health
    }

    pub fn router(&self) -> Option<&Router> {
        self.router.as_ref()
    }

    pub fn router_mut(&mut self) -> Option<&mut Router> {
        self.router.as_mut()
    }

    fn interfaces(&self) -> Interfaces {
        Interfaces {
            uplink_mac: self.uplink.iface.mac(),
            uplink: self.uplink.iface.address(),
            link_mac: self.link.iface.mac(),
            link: self.link.iface.address(),
            link_extra: self.link.iface.extra_address(),
            overlay: self.overlay.is_some(),
        }
    }

    /// Run the overlay (or stop it with `None`). The link interface carries the node
    /// address as well while an overlay runs.
    pub fn set_overlay(&mut self, overlay: Option<OverlayPath>) {
        let node = overlay.as_ref().map(|o| o.node_cidr());
        self.link.iface.set_extra_address(node);
        self.overlay = overlay;
    }

    pub fn overlay(&self) -> Option<&OverlayPath> {
        self.overlay.as_ref()
    }

    /// For runtime changes (peers, networks, FDB entries). Changing the grid itself
    /// (node number, subnet) takes a new `OverlayPath` through `set_overlay`.
    pub fn overlay_mut(&mut self) -> Option<&mut OverlayPath> {
        self.overlay.as_mut()
    }

    pub fn nic(&self, id: NicId) -> &Nic {
        match id {
            NicId::Uplink => &self.uplink,
            NicId::Link => &self.link,
        }
    }

    pub fn nic_mut(&mut self, id: NicId) -> &mut Nic {
        match id {
            NicId::Uplink => &mut self.uplink,
            NicId::Link => &mut self.link,
        }
    }

    /// Replace a NIC's addressing; takes effect on the next `poll`.
    pub fn configure(&mut self, id: NicId, address: Option<NicAddress>) {
        self.nic_mut(id).iface.set_address(address);
    }

    /// The running captures.
    pub fn capture(&self) -> &CaptureTap {
        &self.capture
    }

    pub fn capture_mut(&mut self) -> &mut CaptureTap {
        &mut self.capture
    }

    /// The free buffers (for `status` and the tests that count allocations).
    pub fn pool(&self) -> &BufPool {
        &self.pool
    }

    /// Drain each port (at most `RX_BATCH` frames), let smoltcp answer, transmit its output.
    /// While captures run, the ports of the NICs they watch copy their frames into them
    /// on the way, and the overlay stages the inner frames of the networks they watch.
    pub fn poll(&mut self, now: Instant, uplink: &mut dyn Port, link: &mut dyn Port) -> PollResult {
        if self.capture.is_idle() {
            if let Some(path) = self.overlay.as_mut() {
                path.inner_tap_mut().clear();
            }
            return self.poll_ports(now, uplink, link);
        }
        let tap = RefCell::new(core::mem::take(&mut self.capture));
        if let Some(path) = self.overlay.as_mut() {
            path.inner_tap_mut()
                .set_watch(tap.borrow().inner_watch(now));
        }
        let result = {
            let mut up = CapturePort {
                inner: uplink,
                nic: NicId::Uplink,
                tap: &tap,
                now,
            };
            let mut lk = CapturePort {
                inner: link,
                nic: NicId::Link,
                tap: &tap,
                now,
            };
            self.poll_ports(now, &mut up, &mut lk)
        };
        self.capture = tap.into_inner();
        if let Some(path) = self.overlay.as_mut() {
            self.capture.take_staged(now, path.inner_tap_mut());
        }
        result
    }

    fn poll_ports(
        &mut self,
        now: Instant,
        uplink: &mut dyn Port,
        link: &mut dyn Port,
    ) -> PollResult {
        let ifs = self.interfaces();
        let pool = &mut self.pool;
        let mut router_at = None;
        let mut checks_sent = false;
        let (did_work, more) = match self.router.as_mut() {
            None => Self::poll_nics(
                &mut self.overlay,
                &mut self.uplink,
                &mut self.link,
                now,
                pool,
                uplink,
                link,
                None,
            ),
            Some(router) => {
                // The router looks at each frame as the ports hand it over, before the
                // interfaces and the overlay; what it takes never reaches them.
                let cell = RefCell::new(router);
                let (work, more) = {
                    let mut up = Tap {
                        inner: &mut *uplink,
                        side: NicId::Uplink,
                        router: &cell,
                        ifs: &ifs,
                        now,
                        taken: NicCounters::default(),
                        active: true,
                    };
                    // With an overlay the datapath hands the router what reaches the
                    // appliance on each segment of the link instead (`routed`).
                    let mut lk = Tap {
                        inner: &mut *link,
                        side: NicId::Link,
                        router: &cell,
                        ifs: &ifs,
                        now,
                        taken: NicCounters::default(),
                        active: !ifs.overlay,
                    };
                    let hook = RouterHook {
                        router: &cell,
                        ifs: &ifs,
                        now,
                    };
                    let result = Self::poll_nics(
                        &mut self.overlay,
                        &mut self.uplink,
                        &mut self.link,
                        now,
                        pool,
                        &mut up,
                        &mut lk,
                        Some(&hook),
                    );
                    // Frames the router took were received by the NIC all the same.
                    for (nic, taken) in [(&mut self.uplink, &up.taken), (&mut self.link, &lk.taken)]
                    {
                        nic.counters.rx_packets =
                            nic.counters.rx_packets.wrapping_add(taken.rx_packets);
                        nic.counters.rx_bytes = nic.counters.rx_bytes.wrapping_add(taken.rx_bytes);
                    }
                    result
                };
                let hook = RouterHook {
                    router: &cell,
                    ifs: &ifs,
                    now,
                };
                router_at = cell.borrow_mut().poll(&ifs, now);
                let routed = match self.overlay.as_mut() {
                    Some(path) => path.send_routed(
                        now,
                        pool,
                        &hook,
                        &mut self.uplink,
                        &mut self.link,
                        uplink,
                        link,
                    ),
                    None => false,
                };
                let router = cell.into_inner();
                let sent = router.flush(&mut |nic, frame| {
                    let port: &mut dyn Port = match nic {
                        NicId::Uplink => &mut *uplink,
                        NicId::Link => &mut *link,
                    };
                    port.transmit(pool, frame).is_ok()
                });
                checks_sent = self.health.run(
                    now,
                    router.nat_mut().lb_mut(),
                    &mut self.uplink.iface,
                    &mut self.link.iface,
                );
                router_at = [
                    router_at,
                    router.nat().lb().next_deadline(),
                    self.health.poll_at(),
                ]
                .into_iter()
                .flatten()
                .min();
                (work || sent || routed, more)
            }
        };
        // A check socket just opened or aborted has a segment to send.
        let next_poll = if more || checks_sent {
            Some(Duration::ZERO)
        } else {
            let overlay = self.overlay.as_ref().and_then(|o| o.poll_at()).map(|t| {
                if t > now {
                    t - now
                } else {
                    Duration::ZERO
                }
            });
            [
                self.uplink.iface.poll_delay(now),
                self.link.iface.poll_delay(now),
                overlay,
                router_at.map(|t| if t > now { t - now } else { Duration::ZERO }),
            ]
            .into_iter()
            .flatten()
            .min()
        };
        PollResult {
            did_work,
            next_poll,
        }
    }
}

impl Netstack {
    // The poll's whole context; a struct for it would only rename the list.
    #[allow(clippy::too_many_arguments)]
    fn poll_nics(
        overlay: &mut Option<OverlayPath>,
        up_nic: &mut Nic,
        link_nic: &mut Nic,
        now: Instant,
        pool: &mut BufPool,
        uplink: &mut dyn Port,
        link: &mut dyn Port,
        hook: Option<&RouterHook>,
    ) -> (bool, bool) {
        match overlay.as_mut() {
            Some(path) => path.poll(now, pool, up_nic, link_nic, uplink, link, hook),
            None => {
                let (work_u, more_u) = up_nic.poll(now, pool, uplink);
                let (work_l, more_l) = link_nic.poll(now, pool, link);
                (work_u || work_l, more_u || more_l)
            }
        }
    }
}

/// A port as the interfaces see it while the router runs: each received burst passes
/// the router first, which takes out what it translates (in its buffers, to send from
/// them) and leaves the rest in order.
struct Tap<'a, 'r> {
    inner: &'a mut dyn Port,
    side: NicId,
    router: &'a RefCell<&'r mut Router>,
    ifs: &'a Interfaces,
    now: Instant,
    /// What the router took (counted as received on the NIC after the poll).
    taken: NicCounters,
    /// Whether the router sees this port's frames here at all.
    active: bool,
}

impl Port for Tap<'_, '_> {
    fn mac(&self) -> EthernetAddress {
        self.inner.mac()
    }

    fn receive(&mut self, pool: &mut BufPool, burst: &mut Burst) -> usize {
        let before = burst.len();
        let n = self.inner.receive(pool, burst);
        if !self.active || n == 0 {
            return n;
        }
        let lens: heapless::Vec<usize, { super::port::BURST }> =
            burst.bufs()[before..].iter().map(PacketBuf::len).collect();
        let new = &mut burst.bufs_mut()[before..];
        self.router
            .borrow_mut()
            .receive_burst(self.side, new, self.ifs, self.now, pool);
        for (buf, len) in new.iter().zip(lens) {
            if buf.capacity() == 0 {
                self.taken.received(len);
            }
        }
        burst.remove_taken();
        n
    }

    fn transmit(&mut self, pool: &mut BufPool, buf: PacketBuf) -> Result<(), TxError> {
        self.inner.transmit(pool, buf)
    }
}

#[cfg(test)]
mod tests;
