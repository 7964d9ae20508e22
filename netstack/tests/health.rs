//! The load balancer's health checks performed through the whole netstack: TCP
//! connects and UDP probes from the facing interface, outcomes taking backends out of
//! and back into service, sockets always released, and check ports never publishable.

use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use weft_netstack::base::ports::CHECK_PORTS;
use weft_netstack::base::{Endpoint, FlowTuple, NicAddress, NicId, Proto, Transport};
use weft_netstack::stage::lb::{
    BackendConfig, HealthSpec, LoadBalancer, Pick, ServiceConfig, ServiceMode,
};
use weft_netstack::stage::nat::{Nat, NatConfig};
use weft_netstack::stage::route::Router;
use weft_netstack::table::health::Health;
use weft_netstack::{MemPort, Netstack, NicIface};

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
        mode: ServiceMode::Vip,
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

    fn backend_status(&self) -> weft_netstack::stage::lb::BackendStatus {
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
    let rule = |host_port| weft_netstack::stage::nat::PublishRule {
        proto: Transport::Tcp,
        host_port,
        container_address: PEER_IP,
        container_port: 80,
    };
    for p in [*CHECK_PORTS.start(), 32000, *CHECK_PORTS.end()] {
        assert!(matches!(
            weft_netstack::stage::nat::validate_publish(&rule(p), [], &[]),
            Err(weft_netstack::stage::nat::PublishError::Reserved { .. })
        ));
    }
    let below = *CHECK_PORTS.start() - 1;
    weft_netstack::stage::nat::validate_publish(&rule(below), [], &[]).unwrap();
    weft_netstack::stage::nat::validate_publish(&rule(*CHECK_PORTS.end() + 1), [], &[]).unwrap();
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
