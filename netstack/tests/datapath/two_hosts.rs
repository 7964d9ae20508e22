//! Two weft hosts on one underlay, each a whole `Netstack` with overlay and router, their
//! uplink ports wired together: the routing mesh from host A to a backend on host B, on
//! the untagged network and on a network on VLAN 300. The backend is played by hand on
//! B's link (it answers ARP and sees the frames with their tags). Real frames only.

use super::routed::{frame, seen, Seen};
use super::*;
use weft_netstack::base::Transport;
use weft_netstack::stage::lb::{BackendConfig, ServiceConfig, ServiceMode};
use weft_netstack::stage::nat::{Nat, NatConfig, PublishRule};
use weft_netstack::stage::route::Router;

const A_UPLINK: Ipv4Address = Ipv4Address::new(192, 0, 2, 11);
const A_MACS: (EthernetAddress, EthernetAddress) = (
    EthernetAddress([0x52, 0x54, 0, 0, 1, 0x01]),
    EthernetAddress([0x52, 0x54, 0, 0, 1, 0x02]),
);
const B_MACS: (EthernetAddress, EthernetAddress) = (
    EthernetAddress([0x52, 0x54, 0, 0, 2, 0x01]),
    EthernetAddress([0x52, 0x54, 0, 0, 2, 0x02]),
);
const A_NODE: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
const CLIENT: (Ipv4Address, u16) = (Ipv4Address::new(203, 0, 113, 9), 40_000);
const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 2);
const VLAN_N2: u16 = 300;

/// Networks "grid" (VNI 100, untagged) and "n2" (VNI 300 on VLAN 300), on both hosts.
fn doc(node: u8) -> String {
    let other = 3 - node;
    format!(
        r#"{{"grid": {{"node": {node}}},
            "networks": [{{"name": "grid", "vni": 100}}, {{"name": "n2", "vni": 300, "vlan": 300}}],
            "peers": [{{"node": {other}, "address": "192.0.2.1{other}", "networks": ["grid", "n2"]}}]}}"#
    )
}

struct Host {
    stack: Netstack,
    uplink: MemPort,
    link: MemPort,
}

impl Host {
    fn new(node: u8, now: Instant) -> Host {
        let (uplink_mac, link_mac) = if node == 1 { A_MACS } else { B_MACS };
        let uplink_ip = Ipv4Address::new(192, 0, 2, 10 + node);
        let node_ip = Ipv4Address::new(10, 81, 0, node);
        let mut stack = Netstack::new(uplink_mac, link_mac, u64::from(node), now);
        stack.configure(
            NicId::Uplink,
            Some(NicAddress {
                cidr: Ipv4Cidr::new(uplink_ip, 24),
                gateway: Some(GATEWAY),
            }),
        );
        stack.configure(
            NicId::Link,
            Some(NicAddress {
                cidr: Ipv4Cidr::new(node_ip, 16),
                gateway: None,
            }),
        );
        let underlay = Underlay {
            mac: uplink_mac,
            ip: uplink_ip,
        };
        let overlay =
            Overlay::from_config(&config(&doc(node)), underlay, Limits::default(), 3).unwrap();
        stack.set_overlay(Some(OverlayPath::new(overlay, link_mac).unwrap()));
        let mut nat = NatConfig::new(uplink_ip, node_ip, Ipv4Cidr::new(node_ip, 16));
        nat.grid
            .push(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 16));
        stack.set_router(Some(Router::new(Nat::new(nat, 11))));
        Host {
            stack,
            uplink: MemPort::new(uplink_mac),
            link: MemPort::new(link_mac),
        }
    }
}

/// A backend container on B's link, untagged or on a VLAN: answers ARP for its
/// address and keeps the IPv4 frames it receives.
struct Backend {
    mac: EthernetAddress,
    ip: Ipv4Address,
    vlan: Option<u16>,
    got: Vec<Vec<u8>>,
}

impl Backend {
    /// What the container sends, tagged as its access port would.
    fn wire(&self, f: &[u8]) -> Vec<u8> {
        match self.vlan {
            Some(v) => tagged(f, v),
            None => f.to_vec(),
        }
    }

    /// Takes B's link output; returns its answers.
    fn hear(&mut self, link: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut answers = Vec::new();
        for inner in on_vlan_or_untagged(&link, self.vlan) {
            match arp_of(&inner) {
                Some((ArpOperation::Request, who_mac, who, target)) if target == self.ip => {
                    answers.push(self.wire(&probe::arp_reply(self.mac, self.ip, who_mac, who)));
                }
                Some(_) => {}
                None if EthernetFrame::new_checked(&inner[..])
                    .is_ok_and(|e| e.dst_addr() == self.mac) =>
                {
                    self.got.push(inner)
                }
                None => {}
            }
        }
        answers
    }
}

fn on_vlan_or_untagged(link: &[Vec<u8>], vlan: Option<u16>) -> Vec<Vec<u8>> {
    super::routed::on_vlan(link, vlan)
}

struct Grid {
    a: Host,
    b: Host,
    backend: Backend,
    now: Instant,
    /// Frames A sent to the gateway (its uplink towards the client).
    to_client: Vec<Vec<u8>>,
}

impl Grid {
    fn new(vlan: Option<u16>) -> Grid {
        let now = Instant::from_millis(1_000);
        let mut grid = Grid {
            a: Host::new(1, now),
            b: Host::new(2, now),
            backend: Backend {
                mac: mac(23),
                ip: ip(23),
                vlan,
                got: Vec::new(),
            },
            now,
            to_client: Vec::new(),
        };
        // A knows its gateway (the client's way back).
        grid.a
            .uplink
            .inject(&probe::arp_reply(GW_MAC, GATEWAY, A_MACS.0, A_UPLINK));
        grid.run(10);
        grid.to_client.clear();
        grid.backend.got.clear();
        grid
    }

    /// Polls both hosts `rounds` times, carrying the underlay between them and B's
    /// link to and from the backend.
    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.now += Duration::from_millis(1);
            let now = self.now;
            self.a.stack.poll(now, &mut self.a.uplink, &mut self.a.link);
            self.b.stack.poll(now, &mut self.b.uplink, &mut self.b.link);
            for f in self.a.uplink.take_transmitted() {
                let dst = EthernetFrame::new_checked(&f[..]).unwrap().dst_addr();
                if dst == GW_MAC {
                    self.to_client.push(f);
                } else {
                    self.b.uplink.inject(&f);
                }
            }
            for f in self.b.uplink.take_transmitted() {
                self.a.uplink.inject(&f);
            }
            self.a.link.take_transmitted();
            let link = self.b.link.take_transmitted();
            for f in self.backend.hear(link) {
                self.b.link.inject(&f);
            }
        }
    }
}

fn mesh_to_a_backend_on_b(vlan: Option<u16>) {
    let mut grid = Grid::new(vlan);
    let mesh = ServiceConfig {
        name: "mesh".into(),
        vip: Some(VIP),
        proto: Transport::Tcp,
        port: 80,
        mode: ServiceMode::Vip,
        backends: vec![BackendConfig {
            address: grid.backend.ip,
            port: 8080,
            weight: 1,
        }],
        health: None,
    };
    let now = grid.now;
    let nat = grid.a.stack.router_mut().unwrap().nat_mut();
    nat.lb_mut().add_service(mesh, now).unwrap();
    nat.add_publish(PublishRule {
        proto: Transport::Tcp,
        host_port: 8080,
        container_address: VIP,
        container_port: 80,
    })
    .unwrap();

    let syn = frame((GW_MAC, A_MACS.0), CLIENT, (A_UPLINK, 8080), Some(0x02));
    grid.a.uplink.inject(&syn);
    grid.run(10);
    let got: Vec<Seen> = grid
        .backend
        .got
        .drain(..)
        .filter_map(|f| seen(&f))
        .collect();
    assert_eq!(
        got.len(),
        1,
        "the SYN reaches the backend on {vlan:?}: {got:?}"
    );
    let s = &got[0];
    assert_eq!(
        (s.dst_mac, s.dst),
        (grid.backend.mac, (grid.backend.ip, 8080))
    );
    assert_eq!(s.src.0, A_NODE, "the backend sees A's node address");

    // The backend answers its client, A's node address, through its own ARP.
    let who_has = probe::arp_request(grid.backend.mac, grid.backend.ip, A_NODE);
    grid.b.link.inject(&grid.backend.wire(&who_has));
    let mut a_mac = None;
    for _ in 0..10 {
        grid.now += Duration::from_millis(1);
        let now = grid.now;
        grid.a.stack.poll(now, &mut grid.a.uplink, &mut grid.a.link);
        grid.b.stack.poll(now, &mut grid.b.uplink, &mut grid.b.link);
        for f in grid.a.uplink.take_transmitted() {
            grid.b.uplink.inject(&f);
        }
        for f in grid.b.uplink.take_transmitted() {
            grid.a.uplink.inject(&f);
        }
        let link = grid.b.link.take_transmitted();
        for inner in on_vlan_or_untagged(&link, vlan) {
            if let Some((ArpOperation::Reply, m, who, _)) = arp_of(&inner) {
                if who == A_NODE {
                    a_mac = Some(m);
                }
            }
        }
    }
    assert_eq!(
        a_mac,
        Some(A_MACS.1),
        "A's node address resolved on {vlan:?}"
    );

    let synack = frame(
        (grid.backend.mac, A_MACS.1),
        (grid.backend.ip, 8080),
        s.src,
        Some(0x12),
    );
    grid.b.link.inject(&grid.backend.wire(&synack));
    grid.run(10);
    let got: Vec<Seen> = grid.to_client.iter().filter_map(|f| seen(f)).collect();
    assert_eq!(
        got,
        vec![Seen {
            dst_mac: GW_MAC,
            src_mac: A_MACS.0,
            src: (A_UPLINK, 8080),
            dst: CLIENT,
            ttl: 63,
        }],
        "the SYN-ACK leaves A as the published port ({vlan:?})"
    );
}

#[test]
fn the_mesh_reaches_an_untagged_backend_on_another_host_and_back() {
    mesh_to_a_backend_on_b(None);
}

#[test]
fn the_mesh_reaches_a_vlan_backend_on_another_host_and_back() {
    mesh_to_a_backend_on_b(Some(VLAN_N2));
}
