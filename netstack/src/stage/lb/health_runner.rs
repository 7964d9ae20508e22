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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::NicAddress;
    use crate::base::{FlowTuple, Proto};
    use crate::pipeline::netstack::Netstack;
    use crate::pipeline::port::MemPort;
    use crate::stage::lb::{BackendConfig, HealthSpec, Mode, Pick, ServiceConfig};
    use crate::stage::nat::{Nat, NatConfig};
    use crate::stage::route::Router;
    use crate::table::health::Health;
    use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

    const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x01]);
    const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x02]);
    const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x10]);
    const LINK_IP: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
    const PEER_IP: Ipv4Address = Ipv4Address::new(10, 81, 1, 10);
    const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);
    const PORT: u16 = 8080;

    /// The appliance on MemPorts with a smoltcp peer (the backend) on its link.
    struct Rig {
        stack: Netstack,
        uplink: MemPort,
        link: MemPort,
        peer: NicIface,
        /// The peer's server socket, when it serves.
        server: Option<SocketHandle>,
        /// Frames to the peer are lost (a host that is gone).
        silent: bool,
        now: Instant,
    }

    fn spec(proto: Transport) -> HealthSpec {
        HealthSpec {
            proto: Some(proto),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 2,
        }
    }

    fn service(proto: Transport, backends: Vec<BackendConfig>) -> ServiceConfig {
        ServiceConfig {
            name: "web".into(),
            vip: Some(VIP),
            proto,
            port: 80,
            mode: Mode::Vip,
            backends,
            health: Some(spec(proto)),
        }
    }

    fn backend(addr: Ipv4Address) -> BackendConfig {
        BackendConfig {
            address: addr,
            port: PORT,
            weight: 1,
        }
    }

    impl Rig {
        fn new(s: ServiceConfig) -> Rig {
            let now = Instant::from_secs(10);
            let mut stack = Netstack::new(UPLINK_MAC, LINK_MAC, 7, now);
            stack.configure(
                NicId::Uplink,
                Some(NicAddress {
                    cidr: Ipv4Cidr::new(Ipv4Address::new(192, 0, 2, 2), 24),
                    gateway: None,
                }),
            );
            let link = Ipv4Cidr::new(LINK_IP, 16);
            stack.configure(
                NicId::Link,
                Some(NicAddress {
                    cidr: link,
                    gateway: None,
                }),
            );
            let mut nat = Nat::new(
                NatConfig::new(Ipv4Address::new(192, 0, 2, 2), LINK_IP, link),
                3,
            );
            nat.lb_mut().add_service(s, now).unwrap();
            stack.set_router(Some(Router::new(nat)));
            let mut peer = NicIface::new(PEER_MAC, 99, now);
            peer.set_address(Some(NicAddress {
                cidr: Ipv4Cidr::new(PEER_IP, 16),
                gateway: None,
            }));
            Rig {
                stack,
                uplink: MemPort::new(UPLINK_MAC),
                link: MemPort::new(LINK_MAC),
                peer,
                server: None,
                silent: false,
                now,
            }
        }

        fn serve_tcp(&mut self) {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 512]),
                tcp::SocketBuffer::new(vec![0; 512]),
            );
            s.listen(PORT).unwrap();
            self.server = Some(self.peer.sockets_mut().add(s));
        }

        fn serve_udp(&mut self) {
            let mut s = udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 512]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 512]),
            );
            s.bind(PORT).unwrap();
            self.server = Some(self.peer.sockets_mut().add(s));
        }

        fn stop_serving(&mut self) {
            if let Some(h) = self.server.take() {
                self.peer.sockets_mut().remove(h);
            }
        }

        /// Runs `ms` milliseconds in 10 ms steps; checks the socket bound each step.
        fn run(&mut self, ms: u64, max_sockets: usize) {
            for _ in 0..ms / 10 {
                self.now += Duration::from_millis(10);
                let r = self.stack.poll(self.now, &mut self.uplink, &mut self.link);
                if !self.lb().status().is_empty() {
                    assert!(r.next_poll.is_some(), "checks are scheduled");
                }
                let held = self.stack.health_runner().sockets();
                assert!(held <= max_sockets, "{held} sockets held");
                let set = self.stack.nic(NicId::Link).iface.sockets().iter().count();
                assert_eq!(set, held, "the link's sockets are the runner's");
                for f in self.link.take_transmitted() {
                    if !self.silent {
                        self.peer.push_rx(&f);
                    }
                }
                self.peer.poll(self.now);
                while let Some(f) = self.peer.pop_tx() {
                    self.link.inject(&f);
                }
                // A TCP server listens again after each check's connection.
                if let Some(h) = self.server {
                    if let smoltcp::socket::Socket::Tcp(s) = self
                        .peer
                        .sockets_mut()
                        .get_mut::<smoltcp::socket::Socket>(h)
                    {
                        if !s.is_open() {
                            s.listen(PORT).unwrap();
                        }
                    }
                    if let smoltcp::socket::Socket::Udp(s) = self
                        .peer
                        .sockets_mut()
                        .get_mut::<smoltcp::socket::Socket>(h)
                    {
                        while let Ok((_, meta)) = s.recv() {
                            let _ = meta;
                        }
                    }
                }
            }
        }

        fn lb(&self) -> &LoadBalancer {
            self.stack.router().unwrap().nat().lb()
        }

        fn backend_status(&self) -> crate::stage::lb::BackendStatus {
            self.lb().status()[0].backends[0]
        }
    }

    fn pick(lb: &LoadBalancer) -> Pick {
        let t = FlowTuple::new(
            Proto::Tcp,
            Endpoint::new(Ipv4Address::new(10, 81, 128, 2), 40000),
            Endpoint::new(VIP, 80),
        );
        lb.pick(t.proto, t.dst, &t)
    }

    #[test]
    fn tcp_checks_follow_a_listening_backend() {
        let mut rig = Rig::new(service(Transport::Tcp, vec![backend(PEER_IP)]));
        rig.serve_tcp();
        rig.run(5_000, 1);
        let b = rig.backend_status();
        assert_eq!(b.health, Health::Up);
        assert!(b.checks_ok >= 4, "{b:?}");
        assert_eq!(b.checks_failed, 0, "{b:?}");
        assert!(matches!(pick(rig.lb()), Pick::Backend { .. }));

        // The server stops: its port answers RST; after `fall` checks it leaves.
        rig.stop_serving();
        rig.run(3_000, 1);
        let b = rig.backend_status();
        assert_eq!(b.health, Health::Down, "{b:?}");
        assert!(b.checks_failed >= 2, "{b:?}");
        assert_eq!(b.slots, 0);
        assert_eq!(pick(rig.lb()), Pick::NoBackend);

        // Back after `rise` successes.
        rig.serve_tcp();
        rig.run(3_000, 1);
        let b = rig.backend_status();
        assert_eq!(b.health, Health::Up, "{b:?}");
        assert!(b.slots > 0);
        let c = rig.stack.health_runner().counters();
        assert_eq!(
            c.started,
            c.succeeded + c.failed + rig.stack.health_runner().in_flight() as u64
        );
        assert_eq!((c.no_route, c.no_port), (0, 0));
    }

    #[test]
    fn udp_checks_fail_on_port_unreachable_and_pass_on_silence_or_answers() {
        let mut rig = Rig::new(service(Transport::Udp, vec![backend(PEER_IP)]));
        // Bound but silent: the probe leaves and no ICMP error comes back.
        rig.serve_udp();
        rig.run(5_000, 2);
        let b = rig.backend_status();
        assert_eq!((b.health, b.checks_failed), (Health::Up, 0), "{b:?}");
        assert!(b.checks_ok >= 4, "{b:?}");
        // Unbound: smoltcp answers ICMP port unreachable.
        rig.stop_serving();
        rig.run(3_000, 2);
        let b = rig.backend_status();
        assert_eq!(b.health, Health::Down, "{b:?}");
        assert!(b.checks_failed >= 2, "{b:?}");
        rig.serve_udp();
        rig.run(3_000, 2);
        assert_eq!(rig.backend_status().health, Health::Up);
    }

    #[test]
    fn a_silent_backend_fails_by_timeout() {
        for proto in [Transport::Tcp, Transport::Udp] {
            let mut rig = Rig::new(service(proto, vec![backend(PEER_IP)]));
            rig.serve_tcp();
            rig.silent = true;
            rig.run(4_000, 2);
            let b = rig.backend_status();
            assert_eq!(b.health, Health::Down, "{proto}: {b:?}");
            assert_eq!(b.checks_ok, 0, "{proto}: {b:?}");
            assert!(b.checks_failed >= 2, "{proto}: {b:?}");
        }
    }

    #[test]
    fn many_checks_keep_the_socket_set_bounded_and_leave_nothing_behind() {
        // 200 backends on the peer, one of them served; the others refuse. (Not 200
        // addresses: smoltcp resolves one unknown neighbour per second per interface.)
        let mut backends: Vec<BackendConfig> = (0..199u16)
            .map(|i| BackendConfig {
                port: 9000 + i,
                ..backend(PEER_IP)
            })
            .collect();
        backends.push(backend(PEER_IP));
        let n = backends.len();
        let mut rig = Rig::new(service(Transport::Tcp, backends));
        rig.serve_tcp();
        rig.run(10_000, n);
        let st = rig.lb().status();
        let up: Vec<_> = st[0]
            .backends
            .iter()
            .filter(|b| b.health == Health::Up)
            .collect();
        assert_eq!(up.len(), 1, "only the served backend stays up");
        assert_eq!(up[0].port, PORT);
        let c = rig.stack.health_runner().counters();
        assert!(c.started >= 10 * n as u64, "{c:?}");
        // Without the service, every socket goes within a timeout and a poll.
        rig.stack
            .router_mut()
            .unwrap()
            .nat_mut()
            .remove_service("web")
            .unwrap();
        rig.run(1_500, n);
        assert_eq!(rig.stack.health_runner().sockets(), 0);
        assert_eq!(rig.stack.nic(NicId::Link).iface.sockets().iter().count(), 0);
    }

    #[test]
    fn the_next_poll_comes_by_the_next_check() {
        let mut rig = Rig::new(service(Transport::Tcp, vec![backend(PEER_IP)]));
        rig.serve_tcp();
        rig.run(2_000, 1);
        // Idle between checks: the stack asks to be polled by the next one.
        rig.now += Duration::from_millis(10);
        let r = rig.stack.poll(rig.now, &mut rig.uplink, &mut rig.link);
        let next = rig.lb().next_deadline().unwrap();
        assert!(next > rig.now);
        assert!(r.next_poll.unwrap() <= next - rig.now, "{r:?}");
    }

    #[test]
    fn check_ports_cannot_be_published() {
        let rule = |host_port| crate::stage::nat::PublishRule {
            proto: Transport::Tcp,
            host_port,
            container_address: PEER_IP,
            container_port: 80,
        };
        for p in [*CHECK_PORTS.start(), 32000, *CHECK_PORTS.end()] {
            assert!(matches!(
                crate::stage::nat::validate_publish(&rule(p), [], &[]),
                Err(crate::stage::nat::PublishError::Reserved { .. })
            ));
        }
        let below = *CHECK_PORTS.start() - 1;
        crate::stage::nat::validate_publish(&rule(below), [], &[]).unwrap();
        crate::stage::nat::validate_publish(&rule(*CHECK_PORTS.end() + 1), [], &[]).unwrap();
    }

    #[test]
    fn a_backend_no_interface_faces_fails_at_once() {
        let mut rig = Rig::new(service(
            Transport::Tcp,
            vec![backend(Ipv4Address::new(198, 51, 100, 7))],
        ));
        rig.run(100, 0);
        let c = rig.stack.health_runner().counters();
        assert!(c.no_route >= 1, "{c:?}");
        assert_eq!(rig.backend_status().checks_failed, c.no_route);
    }
}
