//! The routed path through the whole netstack: published ports, masquerade and hairpin
//! through the NAT and out of the other NIC with next-hop MACs from ARP, TTL and ICMP
//! time exceeded, proxy ARP for service VIPs, and frames waiting for ARP.

mod common;

use common::frames::Seen;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, Ipv4Address, Ipv4Cidr,
    Ipv4Packet,
};
use weft_netstack::base::test_rng::Rng;
use weft_netstack::base::{NicAddress, NicId, Transport};
use weft_netstack::stage::nat::{Nat, NatConfig, PublishRule};
use weft_netstack::stage::route::Router;
use weft_netstack::wire::probe::{self, Echo};
use weft_netstack::{MemPort, Netstack};

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x01]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x02]);
const GW_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x99]);
const C_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x42]);
const UPLINK_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
const GW_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
const LINK_IP: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
const C_IP: Ipv4Address = Ipv4Address::new(10, 81, 3, 4);
const FAR: Ipv4Address = Ipv4Address::new(203, 0, 113, 9);

struct Rig {
    stack: Netstack,
    uplink: MemPort,
    link: MemPort,
    now: Instant,
}

impl Rig {
    fn new() -> Rig {
        let now = Instant::from_millis(1_000);
        let mut stack = Netstack::new(UPLINK_MAC, LINK_MAC, 7, now);
        stack.configure(
            NicId::Uplink,
            Some(NicAddress {
                cidr: Ipv4Cidr::new(UPLINK_IP, 24),
                gateway: Some(GW_IP),
            }),
        );
        stack.configure(
            NicId::Link,
            Some(NicAddress {
                cidr: Ipv4Cidr::new(LINK_IP, 16),
                gateway: None,
            }),
        );
        let config = NatConfig::new(UPLINK_IP, LINK_IP, Ipv4Cidr::new(LINK_IP, 16));
        let mut nat = Nat::new(config, 3);
        nat.add_publish(PublishRule {
            proto: Transport::Tcp,
            host_port: 8080,
            container_address: C_IP,
            container_port: 80,
        })
        .unwrap();
        stack.set_router(Some(Router::new(nat)));
        Rig {
            stack,
            uplink: MemPort::new(UPLINK_MAC),
            link: MemPort::new(LINK_MAC),
            now,
        }
    }

    fn send(&mut self, id: NicId, frame: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        match id {
            NicId::Uplink => self.uplink.inject(frame),
            NicId::Link => self.link.inject(frame),
        }
        self.now += Duration::from_millis(1);
        self.stack.poll(self.now, &mut self.uplink, &mut self.link);
        (self.uplink.take_transmitted(), self.link.take_transmitted())
    }
}

fn eth(src: EthernetAddress, dst: EthernetAddress, ip: &[u8]) -> Vec<u8> {
    common::frames::ethernet(src, dst, ip)
}

/// An IPv4 packet (TCP with `flags`, or UDP when `flags` is None), checksums filled.
fn ip(src: (Ipv4Address, u16), dst: (Ipv4Address, u16), flags: Option<u8>) -> Vec<u8> {
    common::frames::ipv4_l4(src, dst, flags, b"hello")
}

/// Parses a forwarded frame and checks every checksum against a full verify.
fn parse(f: &[u8]) -> Seen {
    common::frames::seen(f).expect("an IPv4 TCP/UDP frame")
}

fn arp_target(f: &[u8]) -> (EthernetAddress, Ipv4Address, Ipv4Address) {
    let e = EthernetFrame::new_checked(f).unwrap();
    let Ok(ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    }) = ArpRepr::parse(&ArpPacket::new_checked(e.payload()).unwrap())
    else {
        panic!("not an ARP request");
    };
    (
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
    )
}

#[test]
fn published_port_reaches_the_container_with_the_client_address_and_back() {
    let mut rig = Rig::new();
    let client = (GW_IP, 40000);
    let syn = eth(
        GW_MAC,
        UPLINK_MAC,
        &ip(client, (UPLINK_IP, 8080), Some(0x02)),
    );
    let (up, link) = rig.send(NicId::Uplink, &syn);
    assert!(up.is_empty());
    assert_eq!(link.len(), 1, "an ARP request for the container");
    assert_eq!(arp_target(&link[0]), (LINK_MAC, LINK_IP, C_IP));
    // The SYN waited for the answer.
    let (_, link) = rig.send(
        NicId::Link,
        &probe::arp_reply(C_MAC, C_IP, LINK_MAC, LINK_IP),
    );
    assert_eq!(link.len(), 1);
    let o = parse(&link[0]);
    assert_eq!((o.dst_mac, o.src_mac), (C_MAC, LINK_MAC));
    assert_eq!((o.src, o.dst, o.ttl), (client, (C_IP, 80), 63));

    // The reply leaves through the gateway (ARP first) from the published port.
    let synack = eth(C_MAC, LINK_MAC, &ip((C_IP, 80), client, Some(0x12)));
    let (up, link) = rig.send(NicId::Link, &synack);
    assert!(link.is_empty());
    assert_eq!(up.len(), 1);
    assert_eq!(arp_target(&up[0]), (UPLINK_MAC, UPLINK_IP, GW_IP));
    let (up, _) = rig.send(
        NicId::Uplink,
        &probe::arp_reply(GW_MAC, GW_IP, UPLINK_MAC, UPLINK_IP),
    );
    assert_eq!(up.len(), 1);
    let o = parse(&up[0]);
    assert_eq!((o.dst_mac, o.src_mac), (GW_MAC, UPLINK_MAC));
    assert_eq!((o.src, o.dst, o.ttl), ((UPLINK_IP, 8080), client, 63));
    // Now both neighbours are known: the next segment goes at once.
    let ack = eth(
        GW_MAC,
        UPLINK_MAC,
        &ip(client, (UPLINK_IP, 8080), Some(0x10)),
    );
    let (_, link) = rig.send(NicId::Uplink, &ack);
    assert_eq!(link.len(), 1);
    assert_eq!(parse(&link[0]).dst, (C_IP, 80));
    let r = rig.stack.router().unwrap();
    assert_eq!(r.counters().forwarded, 3);
    assert_eq!(r.nat().stats().dnat_flows, 1);
}

#[test]
fn masquerade_gives_distinct_ports_and_replies_come_back() {
    let mut rig = Rig::new();
    rig.send(
        NicId::Uplink,
        &probe::arp_reply(GW_MAC, GW_IP, UPLINK_MAC, UPLINK_IP),
    );
    let mut ports = Vec::new();
    for i in 0..50u16 {
        let inside = (C_IP, 10_000 + i);
        let f = eth(C_MAC, LINK_MAC, &ip(inside, (FAR, 53), None));
        let (up, _) = rig.send(NicId::Link, &f);
        assert_eq!(up.len(), 1);
        let o = parse(&up[0]);
        assert_eq!((o.dst_mac, o.src.0, o.dst), (GW_MAC, UPLINK_IP, (FAR, 53)));
        assert!((32768..=60999).contains(&o.src.1));
        ports.push(o.src.1);
        let back = eth(GW_MAC, UPLINK_MAC, &ip((FAR, 53), o.src, None));
        let (_, link) = rig.send(NicId::Link, &[]);
        assert!(link.is_empty());
        let (_, link) = rig.send(NicId::Uplink, &back);
        assert_eq!(link.len(), 1);
        let o = parse(&link[0]);
        // The container was learned from its own frames: no ARP needed.
        assert_eq!((o.dst_mac, o.dst, o.src), (C_MAC, inside, (FAR, 53)));
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 50);
}

#[test]
fn hairpin_reaches_the_published_container_from_the_node_address() {
    let mut rig = Rig::new();
    rig.send(
        NicId::Link,
        &probe::arp_reply(C_MAC, C_IP, LINK_MAC, LINK_IP),
    );
    let inside = (C_IP, 45_000);
    let syn = eth(C_MAC, LINK_MAC, &ip(inside, (UPLINK_IP, 8080), Some(0x02)));
    let (up, link) = rig.send(NicId::Link, &syn);
    assert!(up.is_empty());
    assert_eq!(link.len(), 1);
    let o = parse(&link[0]);
    assert_eq!((o.dst_mac, o.src_mac, o.dst), (C_MAC, LINK_MAC, (C_IP, 80)));
    assert_eq!(o.src.0, LINK_IP, "hairpin is sourced from the node address");
    // The reply goes to the node address, and must reach the NAT, not smoltcp.
    let synack = eth(C_MAC, LINK_MAC, &ip((C_IP, 80), o.src, Some(0x12)));
    let (up, link) = rig.send(NicId::Link, &synack);
    assert!(up.is_empty());
    assert_eq!(link.len(), 1, "the SYN-ACK comes back translated");
    let o = parse(&link[0]);
    assert_eq!((o.src, o.dst), ((UPLINK_IP, 8080), inside));
    let nat = rig.stack.router().unwrap().nat().stats();
    assert_eq!(nat.hairpin_flows, 1);
}

#[test]
fn a_service_vip_is_answered_on_the_link_and_spread_over_backends() {
    use weft_netstack::stage::lb::{BackendConfig, ServiceConfig, ServiceMode};
    let mut rig = Rig::new();
    let vip = Ipv4Address::new(10, 81, 255, 1);
    let backends = [
        Ipv4Address::new(10, 81, 1, 2),
        Ipv4Address::new(10, 81, 1, 3),
    ];
    let service = ServiceConfig {
        name: "web".into(),
        vip: Some(vip),
        proto: Transport::Tcp,
        port: 80,
        mode: ServiceMode::Vip,
        backends: backends
            .iter()
            .map(|&address| BackendConfig {
                address,
                port: 8080,
                weight: 1,
            })
            .collect(),
        health: None,
    };
    let nat = rig.stack.router_mut().unwrap().nat_mut();
    nat.lb_mut().add_service(service, rig.now).unwrap();
    // Proxy ARP for the VIP.
    let (_, link) = rig.send(NicId::Link, &probe::arp_request(C_MAC, C_IP, vip));
    assert_eq!(link.len(), 1);
    let reply = probe::parse_arp_reply(&link[0]).expect("an ARP reply");
    assert_eq!((reply.sender_mac, reply.sender_ip), (LINK_MAC, vip));
    for (i, b) in backends.iter().enumerate() {
        let bmac = EthernetAddress([2, 0, 0, 0, 1, i as u8]);
        rig.send(NicId::Link, &probe::arp_reply(bmac, *b, LINK_MAC, LINK_IP));
    }
    let mut per_backend = [0u32; 2];
    for port in 0..400u16 {
        let syn = eth(
            C_MAC,
            LINK_MAC,
            &ip((C_IP, 20_000 + port), (vip, 80), Some(0x02)),
        );
        let (_, link) = rig.send(NicId::Link, &syn);
        assert_eq!(link.len(), 1, "port {port}");
        let o = parse(&link[0]);
        assert_eq!(o.dst.1, 8080);
        let i = backends
            .iter()
            .position(|b| *b == o.dst.0)
            .expect("a backend");
        assert_eq!(o.dst_mac, EthernetAddress([2, 0, 0, 0, 1, i as u8]));
        per_backend[i] += 1;
    }
    // 400 flows over two equal backends: each gets a fair share (binomial sd 10).
    assert!(
        per_backend.iter().all(|&n| (140..=260).contains(&n)),
        "{per_backend:?}"
    );
}

#[test]
fn own_addresses_still_reach_the_interfaces() {
    let mut rig = Rig::new();
    for (id, mac, own, peer) in [
        (NicId::Uplink, UPLINK_MAC, UPLINK_IP, GW_IP),
        (NicId::Link, LINK_MAC, LINK_IP, C_IP),
    ] {
        let (up, link) = rig.send(id, &probe::arp_request(GW_MAC, peer, own));
        let out = if id == NicId::Uplink { up } else { link };
        assert_eq!(out.len(), 1);
        let ping = probe::icmp_echo_request(&Echo {
            src_mac: GW_MAC,
            dst_mac: mac,
            src_ip: peer,
            dst_ip: own,
            ident: 5,
            seq_no: 1,
            data: vec![1, 2, 3],
        });
        let (up, link) = rig.send(id, &ping);
        let out = if id == NicId::Uplink { up } else { link };
        assert_eq!(out.len(), 1, "{id:?}");
        assert!(probe::parse_icmp_echo_reply(&out[0]).is_some());
    }
    // An unpublished port on the uplink address is not routed anywhere.
    let f = eth(
        GW_MAC,
        UPLINK_MAC,
        &ip((GW_IP, 1), (UPLINK_IP, 9999), Some(0x02)),
    );
    let (_, link) = rig.send(NicId::Uplink, &f);
    assert!(link.is_empty());
}

fn with_ttl(mut p: Vec<u8>, ttl: u8) -> Vec<u8> {
    p[8] = ttl;
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    p
}

/// The sender, destination and quoted packet of an ICMP time exceeded frame.
fn time_exceeded_of(f: &[u8]) -> Option<(EthernetAddress, Ipv4Address, Ipv4Address, Vec<u8>)> {
    use smoltcp::wire::{Icmpv4Message, Icmpv4Packet};
    let e = EthernetFrame::new_checked(f).ok()?;
    let p = Ipv4Packet::new_checked(e.payload()).ok()?;
    assert!(p.verify_checksum());
    let icmp = Icmpv4Packet::new_checked(p.payload()).ok()?;
    if p.next_header() != smoltcp::wire::IpProtocol::Icmp
        || icmp.msg_type() != Icmpv4Message::TimeExceeded
    {
        return None;
    }
    assert!(icmp.verify_checksum());
    Some((
        e.dst_addr(),
        p.src_addr(),
        p.dst_addr(),
        icmp.data().to_vec(),
    ))
}

#[test]
fn ttl_one_is_answered_with_time_exceeded_and_opens_no_flow() {
    let mut rig = Rig::new();
    rig.send(
        NicId::Uplink,
        &probe::arp_reply(GW_MAC, GW_IP, UPLINK_MAC, UPLINK_IP),
    );
    // Masquerade: the container learns its gateway is the hop that ran out.
    let probe = with_ttl(ip((C_IP, 33434), (FAR, 33435), None), 1);
    let (up, link) = rig.send(NicId::Link, &eth(C_MAC, LINK_MAC, &probe));
    assert!(up.is_empty(), "nothing leaves");
    assert_eq!(link.len(), 1);
    let (mac, from, to, quoted) = time_exceeded_of(&link[0]).expect("time exceeded");
    assert_eq!((mac, from, to), (C_MAC, LINK_IP, C_IP));
    assert_eq!(quoted, probe, "the packet as the container sent it");
    // A published port: the client hears it from the uplink address.
    let syn = with_ttl(ip((GW_IP, 40000), (UPLINK_IP, 8080), Some(0x02)), 1);
    let (up, link) = rig.send(NicId::Uplink, &eth(GW_MAC, UPLINK_MAC, &syn));
    assert!(link.is_empty());
    assert_eq!(up.len(), 1);
    let (mac, from, to, quoted) = time_exceeded_of(&up[0]).expect("time exceeded");
    assert_eq!((mac, from, to, quoted), (GW_MAC, UPLINK_IP, GW_IP, syn));
    let r = rig.stack.router().unwrap();
    assert_eq!(
        r.nat().stats().table_size,
        0,
        "no flow for a packet never sent"
    );
    assert_eq!(
        (r.counters().ttl_expired, r.counters().time_exceeded_sent),
        (2, 2)
    );
    // TTL 2 leaves with TTL 1.
    let probe = with_ttl(ip((C_IP, 33434), (FAR, 33436), None), 2);
    let (up, _) = rig.send(NicId::Link, &eth(C_MAC, LINK_MAC, &probe));
    assert_eq!(up.len(), 1);
    assert_eq!(parse(&up[0]).ttl, 1);
    // TTL 1 for the appliance itself is no transit: ping is answered.
    rig.send(NicId::Link, &probe::arp_request(C_MAC, C_IP, LINK_IP));
    let mut ping = probe::icmp_echo_request(&Echo {
        src_mac: C_MAC,
        dst_mac: LINK_MAC,
        src_ip: C_IP,
        dst_ip: LINK_IP,
        ident: 5,
        seq_no: 1,
        data: vec![1, 2, 3],
    });
    ping[14 + 8] = 1;
    Ipv4Packet::new_unchecked(&mut ping[14..]).fill_checksum();
    let (_, link) = rig.send(NicId::Link, &ping);
    assert_eq!(link.len(), 1);
    assert!(probe::parse_icmp_echo_reply(&link[0]).is_some());
    // Nor are unpublished ports of the uplink address (the local stack's).
    let other = with_ttl(ip((GW_IP, 40001), (UPLINK_IP, 9999), Some(0x02)), 1);
    let (up, _) = rig.send(NicId::Uplink, &eth(GW_MAC, UPLINK_MAC, &other));
    assert!(up.iter().all(|f| time_exceeded_of(f).is_none()));
    assert_eq!(rig.stack.router().unwrap().counters().ttl_expired, 2);

    // A flood is answered within the rate limit and counted either way.
    for i in 0..300u16 {
        let p = with_ttl(ip((C_IP, 20_000 + i), (FAR, 33434), None), 1);
        rig.send(NicId::Link, &eth(C_MAC, LINK_MAC, &p));
    }
    let c = rig.stack.router().unwrap().counters();
    assert_eq!(c.ttl_expired, 302);
    assert_eq!(c.time_exceeded_sent + c.icmp_rate_limited, 302);
    // 300 packets 1 ms apart: the burst of 50 and ~100 a second after it.
    assert!(
        (70..=90).contains(&c.time_exceeded_sent),
        "{} sent",
        c.time_exceeded_sent
    );
    assert_eq!(rig.stack.router().unwrap().nat().stats().table_size, 1);
}

#[test]
fn random_frames_never_panic() {
    let mut rig = Rig::new();
    let mut rng = Rng::new(0x9e37_79b9);
    for i in 0..3_000usize {
        let mut f = rng.bytes(14 + i % 90);
        let (id, mac) = if i % 2 == 0 {
            (NicId::Uplink, UPLINK_MAC)
        } else {
            (NicId::Link, LINK_MAC)
        };
        f[..6].copy_from_slice(&mac.0);
        f[12..14].copy_from_slice(&[0x08, if i % 3 == 0 { 0x06 } else { 0x00 }]);
        if f.len() > 14 && i % 3 != 0 {
            f[14] = 0x45;
        }
        rig.send(id, &f);
    }
}
