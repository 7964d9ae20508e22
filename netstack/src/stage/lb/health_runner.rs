//! The health checks' I/O: performs what `LoadBalancer::due` asks for with smoltcp
//! sockets on the interface that faces each backend (the link for container backends,
//! with the link address as source), and hands each outcome to `LoadBalancer::report`.
//!
//! - TCP: a connect. Healthy when the handshake completes (the socket reaches
//!   ESTABLISHED, or CLOSE-WAIT when the server closed at once); the connection is then
//!   aborted (one RST, as HAProxy's plain TCP check does: no TIME-WAIT on either side).
//!   A RST or no answer by the timeout is a failure.
//! - UDP: an empty datagram. Healthy when any datagram comes back, or when the probe
//!   left (the backend's MAC resolved) and no ICMP destination-unreachable about it
//!   arrived by the timeout; an ICMP unreachable, or a probe that never left, is a
//!   failure. (A UDP server need not answer; a closed port or a gone host does tell.)
//!
//! Owns the sockets it creates, one or two per check, always removed when the check
//! ends (at the latest at its deadline, plus one poll for a TCP RST); it never touches
//! another socket and never reads a clock. Its source ports come from `CHECK_PORTS`,
//! below the masquerade range and outside the DNS forwarder's, so that no reply to a
//! check matches a translated flow or another socket.

use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    Icmpv4Message, Icmpv4Packet, IpAddress, IpEndpoint, IpListenEndpoint, Ipv4Address,
};

use crate::base::ports::CHECK_PORTS;
use crate::base::{Endpoint, NicId, Transport};
use crate::stage::lb::{HealthCheck, HealthCheckId, LoadBalancer};
use crate::stage::local::NicIface;

/// Socket buffers: a check carries no data (what a server sends is dropped).
const TCP_BUFFER: usize = 256;
const UDP_BUFFER: usize = 256;
/// An aborted TCP check socket is removed once its RST left, or after this long.
const RST_LINGER: Duration = Duration::from_secs(1);

/// What the runner did, beside each backend's own check counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRunnerCounters {
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failed at once: no interface faces the backend (no address, no route).
    pub no_route: u64,
    /// Failed at once: every port of `CHECK_PORTS` was in use.
    pub no_port: u64,
}

enum Probe {
    Tcp(SocketHandle),
    Udp {
        socket: SocketHandle,
        /// Bound to the ICMP errors about datagrams from the probe's port.
        icmp: SocketHandle,
    },
}

struct InFlight {
    id: HealthCheckId,
    nic: NicId,
    port: u16,
    probe: Probe,
    deadline: Instant,
}

/// Runs the load balancer's health checks.
pub struct HealthRunner {
    in_flight: Vec<InFlight>,
    /// Aborted TCP check sockets that still owe their RST, with when they were aborted.
    closing: Vec<(NicId, SocketHandle, u16, Instant)>,
    next_port: u16,
    counters: HealthRunnerCounters,
}

impl Default for HealthRunner {
    fn default() -> Self {
        Self::new()
    }
}

fn nic<'a>(id: NicId, uplink: &'a mut NicIface, link: &'a mut NicIface) -> &'a mut NicIface {
    match id {
        NicId::Uplink => uplink,
        NicId::Link => link,
    }
}

/// The interface a check of `dst` leaves from: the link when `dst` is on one of its
/// subnets (container backends, the overlay), else the uplink when it is on its subnet
/// or the uplink has a gateway.
pub fn facing(uplink: &NicIface, link: &NicIface, dst: Ipv4Address) -> Option<NicId> {
    let on_link = link.address().is_some_and(|a| {
        a.cidr.contains_addr(&dst) || link.extra_address().is_some_and(|e| e.contains_addr(&dst))
    });
    if on_link {
        return Some(NicId::Link);
    }
    let up = uplink.address()?;
    (up.cidr.contains_addr(&dst) || up.gateway.is_some()).then_some(NicId::Uplink)
}

impl HealthRunner {
    pub fn new() -> HealthRunner {
        HealthRunner {
            in_flight: Vec::new(),
            closing: Vec::new(),
            next_port: *CHECK_PORTS.start(),
            counters: HealthRunnerCounters::default(),
        }
    }

    pub fn counters(&self) -> HealthRunnerCounters {
        self.counters
    }

    /// Checks in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Sockets the runner holds now (checks in flight, aborted ones owing a RST).
    pub fn sockets(&self) -> usize {
        self.in_flight
            .iter()
            .map(|c| match c.probe {
                Probe::Tcp(_) => 1,
                Probe::Udp { .. } => 2,
            })
            .sum::<usize>()
            + self.closing.len()
    }

    /// Removes every socket of the runner (the load balancer it served is gone: its
    /// check ids mean nothing to the next one).
    pub fn reset(&mut self, uplink: &mut NicIface, link: &mut NicIface) {
        for c in self.in_flight.drain(..) {
            let set = nic(c.nic, uplink, link).sockets_mut();
            match c.probe {
                Probe::Tcp(h) => {
                    set.remove(h);
                }
                Probe::Udp { socket, icmp } => {
                    set.remove(socket);
                    set.remove(icmp);
                }
            }
        }
        for (id, h, _, _) in self.closing.drain(..) {
            nic(id, uplink, link).sockets_mut().remove(h);
        }
    }

    /// When the runner needs a poll without input: a socket to reap, a check's
    /// deadline (the load balancer's own `next_deadline` covers when checks start).
    pub fn poll_at(&self) -> Option<Instant> {
        let closing = self.closing.iter().map(|c| c.3 + RST_LINGER);
        let deadlines = self.in_flight.iter().map(|c| c.deadline);
        closing.chain(deadlines).min()
    }

    /// One round, after the interfaces were polled: reaps finished sockets, reports
    /// the outcomes known by `now`, and opens the sockets of the checks now due.
    /// Returns true when it queued something the interfaces must send (poll again).
    pub fn run(
        &mut self,
        now: Instant,
        lb: &mut LoadBalancer,
        uplink: &mut NicIface,
        link: &mut NicIface,
    ) -> bool {
        let mut send = false;
        self.reap(now, uplink, link);
        let mut i = 0;
        while i < self.in_flight.len() {
            match self.outcome(i, now, uplink, link) {
                None => i += 1,
                Some((ok, at, abort)) => {
                    let c = self.in_flight.swap_remove(i);
                    let set = nic(c.nic, uplink, link).sockets_mut();
                    match c.probe {
                        Probe::Tcp(h) if abort => {
                            set.get_mut::<tcp::Socket>(h).abort();
                            self.closing.push((c.nic, h, c.port, now));
                            send = true;
                        }
                        Probe::Tcp(h) => {
                            set.remove(h);
                        }
                        Probe::Udp { socket, icmp } => {
                            set.remove(socket);
                            set.remove(icmp);
                        }
                    }
                    self.count(ok);
                    lb.report(c.id, ok, at);
                }
            }
        }
        for check in lb.due(now) {
            match self.start(&check, uplink, link) {
                Ok(()) => send = true,
                Err(()) => {
                    self.count(false);
                    lb.report(check.id, false, now);
                }
            }
        }
        send
    }

    fn count(&mut self, ok: bool) {
        if ok {
            self.counters.succeeded += 1;
        } else {
            self.counters.failed += 1;
        }
    }

    /// Removes aborted sockets whose RST left (smoltcp forgets the peer then).
    fn reap(&mut self, now: Instant, uplink: &mut NicIface, link: &mut NicIface) {
        self.closing.retain(|&(id, h, _, since)| {
            let set = nic(id, uplink, link).sockets_mut();
            let done = set.get::<tcp::Socket>(h).remote_endpoint().is_none();
            if done || now >= since + RST_LINGER {
                set.remove(h);
                false
            } else {
                true
            }
        });
    }

    /// The outcome of check `i` if it is known by `now`: (ok, when it was known,
    /// whether its TCP connection must be aborted).
    fn outcome(
        &mut self,
        i: usize,
        now: Instant,
        uplink: &mut NicIface,
        link: &mut NicIface,
    ) -> Option<(bool, Instant, bool)> {
        let c = &self.in_flight[i];
        let set = nic(c.nic, uplink, link).sockets_mut();
        match c.probe {
            Probe::Tcp(h) => {
                let s = set.get::<tcp::Socket>(h);
                match s.state() {
                    tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Listen => {
                        (now >= c.deadline).then_some((false, now, false))
                    }
                    // Refused (RST) or gone.
                    tcp::State::Closed => Some((false, now, false)),
                    // The handshake completed (the server may have closed since).
                    _ => Some((true, now, true)),
                }
            }
            Probe::Udp { socket, icmp } => {
                if set.get::<udp::Socket>(socket).can_recv() {
                    return Some((true, now, false));
                }
                let errors = set.get_mut::<icmp::Socket>(icmp);
                while let Ok((bytes, _)) = errors.recv() {
                    let unreachable = Icmpv4Packet::new_checked(bytes)
                        .is_ok_and(|p| p.msg_type() == Icmpv4Message::DstUnreachable);
                    if unreachable {
                        return Some((false, now, false));
                    }
                }
                if now < c.deadline {
                    return None;
                }
                // Silence until the deadline: healthy, if the probe ever left (its
                // one send slot is free again; an empty datagram has no bytes to count).
                let left = set.get::<udp::Socket>(socket).can_send();
                Some((left, c.deadline, false))
            }
        }
    }

    fn port(&mut self) -> Option<u16> {
        let span = CHECK_PORTS.end() - CHECK_PORTS.start() + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p >= *CHECK_PORTS.end() {
                *CHECK_PORTS.start()
            } else {
                p + 1
            };
            let used =
                self.in_flight.iter().any(|c| c.port == p) || self.closing.iter().any(|c| c.2 == p);
            if !used {
                return Some(p);
            }
        }
        None
    }

    fn start(
        &mut self,
        check: &HealthCheck,
        uplink: &mut NicIface,
        link: &mut NicIface,
    ) -> Result<(), ()> {
        let Some(id) = facing(uplink, link, check.target.addr) else {
            self.counters.no_route += 1;
            return Err(());
        };
        let Some(port) = self.port() else {
            self.counters.no_port += 1;
            return Err(());
        };
        let iface = nic(id, uplink, link);
        let remote = endpoint(check.target);
        let probe = match check.proto {
            Transport::Tcp => {
                let mut s = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
                    tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
                );
                let (cx, sockets) = iface.context_and_sockets();
                s.connect(cx, remote, port).map_err(|_| ())?;
                Probe::Tcp(sockets.add(s))
            }
            Transport::Udp => {
                let mut s = udp::Socket::new(
                    udp::PacketBuffer::new(
                        vec![udp::PacketMetadata::EMPTY; 1],
                        vec![0; UDP_BUFFER],
                    ),
                    udp::PacketBuffer::new(
                        vec![udp::PacketMetadata::EMPTY; 1],
                        vec![0; UDP_BUFFER],
                    ),
                );
                s.bind(port).map_err(|_| ())?;
                s.send_slice(&[], remote).map_err(|_| ())?;
                let mut e = icmp::Socket::new(
                    icmp::PacketBuffer::new(
                        vec![icmp::PacketMetadata::EMPTY; 2],
                        vec![0; UDP_BUFFER],
                    ),
                    icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 1], vec![0; 1]),
                );
                e.bind(icmp::Endpoint::Udp(IpListenEndpoint { addr: None, port }))
                    .map_err(|_| ())?;
                let sockets = iface.sockets_mut();
                Probe::Udp {
                    socket: sockets.add(s),
                    icmp: sockets.add(e),
                }
            }
        };
        self.counters.started += 1;
        self.in_flight.push(InFlight {
            id: check.id,
            nic: id,
            port,
            probe,
            deadline: check.deadline,
        });
        Ok(())
    }
}

fn endpoint(e: Endpoint) -> IpEndpoint {
    IpEndpoint::new(IpAddress::Ipv4(e.addr), e.port)
}
