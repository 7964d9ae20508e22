//! The NAT on real frames: published ports, masquerade, hairpin, ICMP errors, services,
//! a full table, fragments and garbage, with every rewritten checksum compared with a
//! full recompute.

use super::*;
use crate::base::test_rng::Rng;
use crate::wire::l4::{parse, Kind, Parse, TcpFlags};
use alloc::vec;
use smoltcp::wire::{
    Icmpv4Packet, Ipv4Address, Ipv4Cidr, Ipv4Packet, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN,
};

const ETH_LEN: usize = ETHERNET_HEADER_LEN;

fn read16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}
use crate::stage::lb::{BackendConfig, HealthSpec, ServiceConfig, ServiceMode};
use crate::table::conntrack::{FlowState, TcpState};
use crate::table::health::Health;
use smoltcp::time::Duration;
use smoltcp::wire::IpAddress;

const UPLINK: Ipv4Address = Ipv4Address::new(192, 0, 2, 10);
const NODE: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
const C1: Ipv4Address = Ipv4Address::new(10, 81, 1, 5);
const C2: Ipv4Address = Ipv4Address::new(10, 81, 1, 6);
const CLIENT: Ipv4Address = Ipv4Address::new(198, 51, 100, 7);
const SERVER: Ipv4Address = Ipv4Address::new(203, 0, 113, 9);
const ROUTER: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);
const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);

#[derive(Clone, Copy)]
enum L4<'a> {
    Tcp(u16, u16, TcpFlags, &'a [u8]),
    Udp(u16, u16, &'a [u8]),
    EchoRequest(u16),
    EchoReply(u16),
    /// ICMP type, code and the quoted packet (an IPv4 packet, no Ethernet).
    Error(u8, u8, &'a [u8]),
}

const SYN: TcpFlags = TcpFlags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
const SYNACK: TcpFlags = TcpFlags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
const ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};

/// An IPv4 packet with every checksum filled in by smoltcp.
fn ip_packet(src: Ipv4Address, dst: Ipv4Address, l4: L4) -> Vec<u8> {
    let (proto, body): (u8, Vec<u8>) = match l4 {
        L4::Tcp(sp, dp, f, payload) => {
            let mut b = vec![0u8; 20 + payload.len()];
            b[0..2].copy_from_slice(&sp.to_be_bytes());
            b[2..4].copy_from_slice(&dp.to_be_bytes());
            b[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
            b[12] = 5 << 4;
            b[13] = (f.fin as u8) | (f.syn as u8) << 1 | (f.rst as u8) << 2 | (f.ack as u8) << 4;
            b[14..16].copy_from_slice(&64240u16.to_be_bytes());
            b[20..].copy_from_slice(payload);
            TcpPacket::new_unchecked(&mut b[..]).fill_checksum(&src.into(), &dst.into());
            (6, b)
        }
        L4::Udp(sp, dp, payload) => {
            let mut b = vec![0u8; 8 + payload.len()];
            b[0..2].copy_from_slice(&sp.to_be_bytes());
            b[2..4].copy_from_slice(&dp.to_be_bytes());
            let len = b.len() as u16;
            b[4..6].copy_from_slice(&len.to_be_bytes());
            b[8..].copy_from_slice(payload);
            UdpPacket::new_unchecked(&mut b[..]).fill_checksum(&src.into(), &dst.into());
            (17, b)
        }
        L4::EchoRequest(id) | L4::EchoReply(id) => {
            let mut b = vec![0u8; 8 + 13];
            b[0] = if matches!(l4, L4::EchoRequest(_)) {
                8
            } else {
                0
            };
            b[4..6].copy_from_slice(&id.to_be_bytes());
            b[6..8].copy_from_slice(&7u16.to_be_bytes());
            b[8..].copy_from_slice(b"weft ping 123");
            Icmpv4Packet::new_unchecked(&mut b[..]).fill_checksum();
            (1, b)
        }
        L4::Error(ty, code, quoted) => {
            let mut b = vec![0u8; 8 + quoted.len()];
            b[0] = ty;
            b[1] = code;
            if ty == 3 && code == 4 {
                b[6..8].copy_from_slice(&1400u16.to_be_bytes());
            }
            b[8..].copy_from_slice(quoted);
            Icmpv4Packet::new_unchecked(&mut b[..]).fill_checksum();
            (1, b)
        }
    };
    let mut p = vec![0u8; 20 + body.len()];
    p[0] = 0x45;
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..].copy_from_slice(&body);
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    p
}

fn frame(src: Ipv4Address, dst: Ipv4Address, l4: L4) -> Vec<u8> {
    let mut f = vec![0u8; ETH_LEN];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip_packet(src, dst, l4));
    f
}

/// Recomputes every checksum of an IPv4 frame from scratch (including a
/// quoted packet inside an ICMP error).
fn recomputed(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    recompute_ip(&mut f[ETH_LEN..]);
    f
}

fn recompute_ip(p: &mut [u8]) {
    let ihl = ((p[0] & 0x0f) * 4) as usize;
    let total = read16(p, 2) as usize;
    let src: IpAddress = Ipv4Address::from(<[u8; 4]>::try_from(&p[12..16]).unwrap()).into();
    let dst: IpAddress = Ipv4Address::from(<[u8; 4]>::try_from(&p[16..20]).unwrap()).into();
    let proto = p[9];
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    let l4 = &mut p[ihl..total];
    match proto {
        6 => TcpPacket::new_unchecked(l4).fill_checksum(&src, &dst),
        17 if read16(l4, 6) != 0 => UdpPacket::new_unchecked(l4).fill_checksum(&src, &dst),
        1 => {
            if matches!(l4[0], 3 | 11 | 12) {
                let quoted = &mut l4[8..];
                // Only a whole quoted packet can be recomputed.
                if quoted.len() >= read16(quoted, 2) as usize {
                    recompute_ip(quoted);
                }
            }
            Icmpv4Packet::new_unchecked(l4).fill_checksum()
        }
        _ => {}
    }
}

fn assert_checksums_as_recomputed(f: &[u8]) {
    assert_eq!(
        f,
        &recomputed(f)[..],
        "incremental checksums differ from a full recompute"
    );
}

struct Seen {
    src: Endpoint,
    dst: Endpoint,
}

fn seen(f: &[u8]) -> Seen {
    let Parse::Ok(p) = parse(f) else {
        panic!("not a parseable frame")
    };
    Seen {
        src: p.tuple.src,
        dst: p.tuple.dst,
    }
}

fn ep(a: Ipv4Address, p: u16) -> Endpoint {
    Endpoint::new(a, p)
}

fn t(s: u64) -> Instant {
    Instant::from_secs(s as i64)
}

fn config() -> NatConfig {
    NatConfig::new(
        UPLINK,
        NODE,
        Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 16),
    )
}

fn nat() -> Nat {
    let mut nat = Nat::new(config(), 42);
    nat.add_publish(PublishRule {
        proto: Transport::Tcp,
        host_port: 8080,
        container_address: C1,
        container_port: 80,
    })
    .unwrap();
    nat.add_publish(PublishRule {
        proto: Transport::Udp,
        host_port: 5353,
        container_address: C1,
        container_port: 53,
    })
    .unwrap();
    nat
}

fn run(nat: &mut Nat, f: &mut [u8], from: NicId, now: Instant) -> NatVerdict {
    let v = nat.process(f, from, now);
    if matches!(v, NatVerdict::Forward { .. }) {
        assert_checksums_as_recomputed(f);
    }
    v
}

const TO_CONTAINER: NatVerdict = NatVerdict::Forward { to: NicId::Link };
const TO_UPLINK: NatVerdict = NatVerdict::Forward { to: NicId::Uplink };

#[test]
fn published_port_reaches_the_container_with_the_clients_address() {
    let mut nat = nat();
    let mut syn = frame(CLIENT, UPLINK, L4::Tcp(40000, 8080, SYN, b""));
    assert_eq!(run(&mut nat, &mut syn, NicId::Uplink, t(0)), TO_CONTAINER);
    let s = seen(&syn);
    assert_eq!((s.src, s.dst), (ep(CLIENT, 40000), ep(C1, 80)));

    let mut synack = frame(C1, CLIENT, L4::Tcp(80, 40000, SYNACK, b""));
    assert_eq!(run(&mut nat, &mut synack, NicId::Link, t(0)), TO_UPLINK);
    let s = seen(&synack);
    assert_eq!((s.src, s.dst), (ep(UPLINK, 8080), ep(CLIENT, 40000)));

    let mut ack = frame(
        CLIENT,
        UPLINK,
        L4::Tcp(40000, 8080, ACK, b"GET / HTTP/1.0\r\n\r\n"),
    );
    assert_eq!(run(&mut nat, &mut ack, NicId::Uplink, t(1)), TO_CONTAINER);
    let flows = nat.flows(&FlowFilter::default(), 10, t(1));
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].state, FlowState::Tcp(TcpState::Established));
    assert_eq!(nat.stats().dnat_flows, 1);

    // UDP publish works both ways too.
    let mut q = frame(CLIENT, UPLINK, L4::Udp(5000, 5353, b"query"));
    assert_eq!(run(&mut nat, &mut q, NicId::Uplink, t(2)), TO_CONTAINER);
    assert_eq!(seen(&q).dst, ep(C1, 53));
    let mut a = frame(C1, CLIENT, L4::Udp(53, 5000, b"answer!"));
    assert_eq!(run(&mut nat, &mut a, NicId::Link, t(2)), TO_UPLINK);
    assert_eq!(seen(&a).src, ep(UPLINK, 5353));
}

#[test]
fn unpublished_and_non_ip_traffic_passes_untouched() {
    let mut nat = nat();
    let mut other = frame(CLIENT, UPLINK, L4::Tcp(40000, 9999, SYN, b""));
    let before = other.clone();
    assert_eq!(
        nat.process(&mut other, NicId::Uplink, t(0)),
        NatVerdict::Pass
    );
    assert_eq!(other, before);
    let mut arp = frame(CLIENT, UPLINK, L4::Udp(1, 2, b""));
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(nat.process(&mut arp, NicId::Uplink, t(0)), NatVerdict::Pass);
    // Intra-grid traffic is the bridge's business.
    let mut east_west = frame(C1, C2, L4::Udp(1000, 2000, b"x"));
    assert_eq!(
        nat.process(&mut east_west, NicId::Link, t(0)),
        NatVerdict::Pass
    );
    // A TCP segment that cannot open a flow to a published port.
    let mut ack = frame(CLIENT, UPLINK, L4::Tcp(40001, 8080, ACK, b""));
    assert_eq!(
        nat.process(&mut ack, NicId::Uplink, t(0)),
        NatVerdict::Drop(NatDrop::NoFlow)
    );
    let mut bad = frame(
        CLIENT,
        UPLINK,
        L4::Tcp(
            40001,
            8080,
            TcpFlags {
                syn: true,
                fin: true,
                ..SYN
            },
            b"",
        ),
    );
    assert_eq!(
        nat.process(&mut bad, NicId::Uplink, t(0)),
        NatVerdict::Drop(NatDrop::TcpInvalid)
    );
    let s = nat.stats();
    assert_eq!((s.drops.no_flow, s.drops.tcp_invalid, s.passed), (1, 1, 3));
}

#[test]
fn publish_rules_refuse_reserved_and_duplicate_ports_and_leave_state_unchanged() {
    let mut cfg = config();
    cfg.reserved_ports = vec![7000, 7001];
    let mut nat = Nat::new(cfg, 1);
    let rule = |proto, host_port| PublishRule {
        proto,
        host_port,
        container_address: C1,
        container_port: 80,
    };
    for port in [53, 4789, 6783, 6784, 7000, 7001] {
        for proto in [Transport::Tcp, Transport::Udp] {
            assert_eq!(
                nat.add_publish(rule(proto, port)),
                Err(PublishError::Reserved { proto, port })
            );
        }
    }
    nat.add_publish(rule(Transport::Tcp, 80)).unwrap();
    assert_eq!(
        nat.add_publish(PublishRule {
            container_port: 81,
            ..rule(Transport::Tcp, 80)
        }),
        Err(PublishError::Duplicate {
            proto: Transport::Tcp,
            host_port: 80
        })
    );
    // The same port for the other protocol is another rule.
    nat.add_publish(rule(Transport::Udp, 80)).unwrap();
    assert_eq!(nat.publish_rules().count(), 2);
    assert_eq!(nat.publish_rules().next().unwrap().container_port, 80);
    assert_eq!(
        nat.add_publish(rule(Transport::Tcp, 0)),
        Err(PublishError::HostPortZero)
    );
    assert_eq!(
        nat.add_publish(PublishRule {
            container_address: Ipv4Address::UNSPECIFIED,
            ..rule(Transport::Tcp, 81)
        }),
        Err(PublishError::ContainerAddress(Ipv4Address::UNSPECIFIED))
    );
    assert!(nat.remove_publish(Transport::Udp, 80).is_some());
    assert_eq!(nat.publish_rules().count(), 1);

    let list = [
        rule(Transport::Tcp, 8080),
        rule(Transport::Udp, 8080),
        rule(Transport::Tcp, 8080),
    ];
    let e = validate_publish_list(&list, &[]).unwrap_err();
    assert_eq!(e.field, "publish[2].host_port");
    assert_eq!(
        alloc::format!("{e}"),
        "publish[2].host_port: tcp port 8080 is already published"
    );
    let e = validate_publish_list(&[rule(Transport::Udp, 53)], &[]).unwrap_err();
    assert_eq!(
        alloc::format!("{e}"),
        "publish[0].host_port: udp port 53 is reserved for the appliance"
    );
}

#[test]
fn publish_config_parses_with_unknown_fields_refused() {
    let ok: PublishRule = serde_json::from_str(
        r#"{"proto":"udp","host_port":5353,"container_address":"10.81.1.5","container_port":53}"#,
    )
    .unwrap();
    assert_eq!(ok.target(), ep(C1, 53));
    assert!(serde_json::from_str::<PublishRule>(
        r#"{"proto":"udp","host_port":5353,"container_address":"10.81.1.5","container_port":53,"x":1}"#
    )
    .is_err());
    assert!(serde_json::from_str::<PublishRule>(
        r#"{"proto":"sctp","host_port":5353,"container_address":"10.81.1.5","container_port":53}"#
    )
    .is_err());
}

fn masquerade(
    nat: &mut Nat,
    inside: Endpoint,
    server: Endpoint,
    now: Instant,
) -> Result<Endpoint, NatVerdict> {
    let mut f = frame(
        inside.addr,
        server.addr,
        L4::Tcp(inside.port, server.port, SYN, b""),
    );
    match run(nat, &mut f, NicId::Link, now) {
        TO_UPLINK => {}
        v => return Err(v),
    }
    let s = seen(&f);
    assert_eq!(s.dst, server);
    Ok(s.src)
}

#[test]
fn masquerade_is_endpoint_independent_and_replies_come_back() {
    let mut nat = nat();
    let out = masquerade(&mut nat, ep(C1, 5000), ep(SERVER, 443), t(0)).unwrap();
    assert_eq!(out.addr, UPLINK);
    assert!((32768..=60999).contains(&out.port));
    // Same inside endpoint, other destinations: the same external port (REQ-1).
    let out2 = masquerade(&mut nat, ep(C1, 5000), ep(SERVER, 80), t(0)).unwrap();
    assert_eq!(out2, out);
    // Another inside endpoint gets another port.
    let other = masquerade(&mut nat, ep(C2, 5000), ep(SERVER, 443), t(0)).unwrap();
    assert_ne!(other.port, out.port);

    let mut reply = frame(SERVER, UPLINK, L4::Tcp(443, out.port, SYNACK, b""));
    assert_eq!(run(&mut nat, &mut reply, NicId::Uplink, t(1)), TO_CONTAINER);
    let s = seen(&reply);
    assert_eq!((s.src, s.dst), (ep(SERVER, 443), ep(C1, 5000)));
    // Inside ports in the range are kept when free.
    let kept = masquerade(&mut nat, ep(C2, 40000), ep(SERVER, 443), t(1)).unwrap();
    assert_eq!(kept, ep(UPLINK, 40000));
    // Filtering is address-and-port dependent: a stranger's packet to the
    // mapped port is not translated.
    let mut stranger = frame(CLIENT, UPLINK, L4::Tcp(443, out.port, SYN, b""));
    assert_eq!(
        nat.process(&mut stranger, NicId::Uplink, t(1)),
        NatVerdict::Pass
    );
    assert_eq!(nat.stats().snat_mappings, 3);
}

#[test]
fn many_parallel_connections_get_distinct_ports() {
    let mut nat = nat();
    let mut ports = BTreeMap::new();
    for i in 0..2000u16 {
        let inside = ep(
            Ipv4Address::new(10, 81, 2 + (i / 250) as u8, (i % 250) as u8 + 1),
            50000,
        );
        let out = masquerade(&mut nat, inside, ep(SERVER, 443), t(0)).unwrap();
        assert!((32768..=60999).contains(&out.port));
        assert!(
            ports.insert(out.port, inside).is_none(),
            "port {} reused",
            out.port
        );
    }
}

#[test]
fn port_exhaustion_is_counted_and_live_mappings_are_never_reused() {
    let mut cfg = config();
    cfg.snat_ports = (40000, 40003);
    let mut nat = Nat::new(cfg, 5);
    let mut held = vec![];
    for i in 0..4u8 {
        let inside = ep(Ipv4Address::new(10, 81, 3, i + 1), 1000);
        held.push((
            inside,
            masquerade(&mut nat, inside, ep(SERVER, 443), t(0)).unwrap(),
        ));
    }
    let late = ep(Ipv4Address::new(10, 81, 3, 99), 1000);
    assert_eq!(
        masquerade(&mut nat, late, ep(SERVER, 443), t(1)),
        Err(NatVerdict::Drop(NatDrop::PortsExhausted))
    );
    assert_eq!(nat.stats().drops.ports_exhausted, 1);
    // Keep flow 0 alive, let the others (SYN_SENT, 4 min) expire.
    let mut syn = frame(held[0].0.addr, SERVER, L4::Tcp(1000, 443, SYN, b""));
    assert_eq!(run(&mut nat, &mut syn, NicId::Link, t(200)), TO_UPLINK);
    nat.poll(t(241), usize::MAX);
    assert_eq!(nat.stats().snat_mappings, 1);
    let got = masquerade(&mut nat, late, ep(SERVER, 443), t(241)).unwrap();
    assert_ne!(got, held[0].1, "a live mapping's port was handed out again");
    // The survivor keeps its port for new flows.
    assert_eq!(
        masquerade(&mut nat, held[0].0, ep(SERVER, 80), t(242)).unwrap(),
        held[0].1
    );
}

#[test]
fn hairpin_reaches_the_published_container_through_the_node_address() {
    let mut nat = nat();
    let mut syn = frame(C2, UPLINK, L4::Tcp(33000, 8080, SYN, b""));
    assert_eq!(run(&mut nat, &mut syn, NicId::Link, t(0)), TO_CONTAINER);
    let s = seen(&syn);
    assert_eq!(s.dst, ep(C1, 80));
    assert_eq!(s.src.addr, NODE);
    let mut synack = frame(C1, NODE, L4::Tcp(80, s.src.port, SYNACK, b""));
    assert_eq!(run(&mut nat, &mut synack, NicId::Link, t(0)), TO_CONTAINER);
    let r = seen(&synack);
    assert_eq!((r.src, r.dst), (ep(UPLINK, 8080), ep(C2, 33000)));
    assert_eq!(nat.stats().hairpin_flows, 1);
}

#[test]
fn icmp_echo_is_masqueraded_by_identifier() {
    let mut nat = nat();
    let mut req = frame(C1, SERVER, L4::EchoRequest(77));
    assert_eq!(run(&mut nat, &mut req, NicId::Link, t(0)), TO_UPLINK);
    let Parse::Ok(p) = parse(&req) else { panic!() };
    assert_eq!(p.tuple.src.addr, UPLINK);
    let id = p.tuple.src.port;
    assert!((32768..=60999).contains(&id));
    let mut rep = frame(SERVER, UPLINK, L4::EchoReply(id));
    assert_eq!(run(&mut nat, &mut rep, NicId::Uplink, t(1)), TO_CONTAINER);
    let Parse::Ok(p) = parse(&rep) else { panic!() };
    assert_eq!((p.tuple.dst, p.kind), (ep(C1, 77), Kind::EchoReply));
    // The server pinging the host with that identifier is not a reply.
    let mut ping = frame(SERVER, UPLINK, L4::EchoRequest(id));
    assert_eq!(
        nat.process(&mut ping, NicId::Uplink, t(1)),
        NatVerdict::Pass
    );
}

#[test]
fn icmp_errors_are_translated_back_to_the_inside_flow() {
    let mut nat = nat();
    // A masqueraded UDP flow; a router on the way reports TTL exceeded.
    let mut out = frame(C1, SERVER, L4::Udp(6000, 53, b"question"));
    assert_eq!(run(&mut nat, &mut out, NicId::Link, t(0)), TO_UPLINK);
    let sent = out[ETH_LEN..].to_vec();
    let mut err = frame(ROUTER, UPLINK, L4::Error(11, 0, &sent));
    assert_eq!(run(&mut nat, &mut err, NicId::Uplink, t(1)), TO_CONTAINER);
    let outer = Ipv4Packet::new_checked(&err[ETH_LEN..]).unwrap();
    assert_eq!((outer.src_addr(), outer.dst_addr()), (ROUTER, C1));
    let quoted = &err[ETH_LEN + 28..];
    assert_eq!(
        quoted,
        &ip_packet(C1, SERVER, L4::Udp(6000, 53, b"question"))[..]
    );
    assert_eq!(nat.stats().icmp_errors_translated, 1);

    // The published container answers port unreachable to an outside client.
    let mut q = frame(CLIENT, UPLINK, L4::Udp(7000, 5353, b"q"));
    assert_eq!(run(&mut nat, &mut q, NicId::Uplink, t(2)), TO_CONTAINER);
    let delivered = q[ETH_LEN..].to_vec();
    let mut unreach = frame(C1, CLIENT, L4::Error(3, 3, &delivered));
    assert_eq!(run(&mut nat, &mut unreach, NicId::Link, t(2)), TO_UPLINK);
    let outer = Ipv4Packet::new_checked(&unreach[ETH_LEN..]).unwrap();
    assert_eq!((outer.src_addr(), outer.dst_addr()), (UPLINK, CLIENT));
    assert_eq!(
        &unreach[ETH_LEN + 28..],
        &ip_packet(CLIENT, UPLINK, L4::Udp(7000, 5353, b"q"))[..]
    );

    // Fragmentation needed for a TCP flow, quoting only 8 bytes of TCP.
    let ext = masquerade(&mut nat, ep(C2, 6001), ep(SERVER, 443), t(3)).unwrap();
    let full = ip_packet(UPLINK, SERVER, L4::Tcp(ext.port, 443, ACK, b"data"));
    let mut short = full[..28].to_vec();
    short[2..4].copy_from_slice(&(full.len() as u16).to_be_bytes());
    let mut fneed = frame(SERVER, UPLINK, L4::Error(3, 4, &short));
    assert_eq!(nat.process(&mut fneed, NicId::Uplink, t(3)), TO_CONTAINER);
    let icmp = Icmpv4Packet::new_checked(&fneed[ETH_LEN + 20..]).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(read16(&fneed, ETH_LEN + 26), 1400, "MTU untouched");
    let q = &fneed[ETH_LEN + 28..];
    assert_eq!(&q[12..16], &C2.octets());
    assert_eq!(read16(q, 20), 6001);
    assert!(Ipv4Packet::new_unchecked(&q[..20]).verify_checksum());
    let outer = Ipv4Packet::new_checked(&fneed[ETH_LEN..]).unwrap();
    assert_eq!((outer.src_addr(), outer.dst_addr()), (SERVER, C2));

    // A whole quoted TCP segment: its checksum is translated too (`run`
    // compares the frame with a full recompute, quoted packet included).
    let whole = ip_packet(UPLINK, SERVER, L4::Tcp(ext.port, 443, ACK, b"data"));
    let mut ttl = frame(ROUTER, UPLINK, L4::Error(11, 0, &whole));
    assert_eq!(run(&mut nat, &mut ttl, NicId::Uplink, t(3)), TO_CONTAINER);
    assert_eq!(
        &ttl[ETH_LEN + 28..],
        &ip_packet(C2, SERVER, L4::Tcp(6001, 443, ACK, b"data"))[..]
    );

    // An error about nothing we translated is not ours.
    let stray = ip_packet(UPLINK, SERVER, L4::Udp(1, 2, b""));
    let mut e = frame(ROUTER, UPLINK, L4::Error(11, 0, &stray));
    assert_eq!(nat.process(&mut e, NicId::Uplink, t(3)), NatVerdict::Pass);
}

#[test]
fn incremental_checksums_equal_a_full_recompute_on_random_packets() {
    let mut rng = Rng::new(0x5eed_cafe_f00d_d00d);
    let mut nat = Nat::new(config(), 9);
    for i in 0..3000u32 {
        let inside = Ipv4Address::from(0x0a51_0000 | (rng.next_u64() as u32 & 0xffff));
        let outside = Ipv4Address::from(0xcb00_7100 | (rng.next_u64() as u32 & 0xff));
        let (sp, dp) = (rng.next_u64() as u16 | 1, rng.next_u64() as u16 | 1);
        let len = (rng.next_u64() % 300) as usize;
        let payload = rng.bytes(len);
        let l4 = match i % 3 {
            0 => L4::Tcp(sp, dp, SYN, &payload),
            1 => L4::Udp(sp, dp, &payload),
            _ => L4::EchoRequest(sp),
        };
        let mut f = frame(inside, outside, l4);
        // `run` compares every forwarded frame with a full recompute.
        let v = run(&mut nat, &mut f, NicId::Link, t(0));
        assert!(
            v == TO_UPLINK || v == NatVerdict::Drop(NatDrop::TupleClash),
            "{v:?}"
        );
    }
    assert!(nat.stats().snat_flows > 2900);
}

#[test]
fn a_full_table_refuses_new_connections_and_keeps_established_ones() {
    let mut cfg = config();
    cfg.conntrack.capacity = 3;
    let mut nat = Nat::new(cfg, 3);
    let mut ext = vec![];
    for i in 0..3u16 {
        let inside = ep(C1, 1000 + i);
        let out = masquerade(&mut nat, inside, ep(SERVER, 443), t(0)).unwrap();
        let mut sa = frame(SERVER, UPLINK, L4::Tcp(443, out.port, SYNACK, b""));
        assert_eq!(run(&mut nat, &mut sa, NicId::Uplink, t(0)), TO_CONTAINER);
        let mut a = frame(C1, SERVER, L4::Tcp(1000 + i, 443, ACK, b""));
        assert_eq!(run(&mut nat, &mut a, NicId::Link, t(0)), TO_UPLINK);
        ext.push(out);
    }
    assert_eq!(
        masquerade(&mut nat, ep(C2, 1), ep(SERVER, 443), t(1)),
        Err(NatVerdict::Drop(NatDrop::TableFull))
    );
    assert_eq!(nat.stats().drops.table_full, 1);
    for (i, out) in ext.iter().enumerate() {
        let mut data = frame(SERVER, UPLINK, L4::Tcp(443, out.port, ACK, b"payload"));
        assert_eq!(run(&mut nat, &mut data, NicId::Uplink, t(2)), TO_CONTAINER);
        assert_eq!(seen(&data).dst, ep(C1, 1000 + i as u16));
    }
    // The refused endpoint holds no mapping.
    assert_eq!(nat.stats().snat_mappings, 3);
}

#[test]
fn would_forward_predicts_process_and_changes_nothing() {
    let mut nat = nat();
    let quoted = ip_packet(UPLINK, SERVER, L4::Udp(40000, 53, b"q"));
    let cases: Vec<(NicId, Vec<u8>, bool)> = vec![
        // New flows: published, masquerade, hairpin, echo.
        (
            NicId::Uplink,
            frame(CLIENT, UPLINK, L4::Tcp(1, 8080, SYN, b"")),
            true,
        ),
        (
            NicId::Link,
            frame(C1, SERVER, L4::Udp(6000, 53, b"q")),
            true,
        ),
        (
            NicId::Link,
            frame(C2, UPLINK, L4::Tcp(2, 8080, SYN, b"")),
            true,
        ),
        (NicId::Link, frame(C1, SERVER, L4::EchoRequest(9)), true),
        // The replies of the flows just opened.
        (
            NicId::Link,
            frame(C1, CLIENT, L4::Tcp(80, 1, SYNACK, b"")),
            true,
        ),
        // Not NAT business, cannot open, or an error (never answered).
        (
            NicId::Uplink,
            frame(CLIENT, UPLINK, L4::Tcp(1, 9999, SYN, b"")),
            false,
        ),
        (
            NicId::Uplink,
            frame(CLIENT, UPLINK, L4::Tcp(3, 8080, ACK, b"")),
            false,
        ),
        (NicId::Link, frame(C1, C2, L4::Udp(1, 2, b"x")), false),
        (
            NicId::Uplink,
            frame(SERVER, UPLINK, L4::EchoReply(77)),
            false,
        ),
        (
            NicId::Uplink,
            frame(ROUTER, UPLINK, L4::Error(11, 0, &quoted)),
            false,
        ),
    ];
    for (side, mut f, want) in cases {
        let before = (nat.stats(), nat.flows(&FlowFilter::default(), 100, t(0)));
        assert_eq!(nat.would_forward(&f, side, t(0)), want, "{f:?}");
        assert_eq!(
            (nat.stats(), nat.flows(&FlowFilter::default(), 100, t(0))),
            before
        );
        let v = nat.process(&mut f, side, t(0));
        assert_eq!(matches!(v, NatVerdict::Forward { .. }), want, "{v:?}");
    }
}

#[test]
fn fragments_and_garbage_that_need_translation_are_dropped() {
    let mut nat = nat();
    let mut frag = frame(C1, SERVER, L4::Udp(1, 2, b"0123456789"));
    frag[ETH_LEN + 6] = 0x20; // MF
    Ipv4Packet::new_unchecked(&mut frag[ETH_LEN..]).fill_checksum();
    assert_eq!(
        nat.process(&mut frag, NicId::Link, t(0)),
        NatVerdict::Drop(NatDrop::Fragment)
    );
    let mut local_frag = frame(C1, C2, L4::Udp(1, 2, b"0123456789"));
    local_frag[ETH_LEN + 6] = 0x20;
    assert_eq!(
        nat.process(&mut local_frag, NicId::Link, t(0)),
        NatVerdict::Pass
    );
    let mut gre = frame(C1, SERVER, L4::Udp(1, 2, b""));
    gre[ETH_LEN + 9] = 47;
    assert_eq!(
        nat.process(&mut gre, NicId::Link, t(0)),
        NatVerdict::Drop(NatDrop::Unsupported)
    );
    let mut short = frame(C1, SERVER, L4::Tcp(1, 2, SYN, b""));
    short.truncate(ETH_LEN + 30);
    assert_eq!(
        nat.process(&mut short, NicId::Link, t(0)),
        NatVerdict::Drop(NatDrop::Malformed)
    );
    // Sources that cannot be on the side they came from are not translated.
    let mut spoof = frame(SERVER, CLIENT, L4::Udp(1, 2, b""));
    assert_eq!(
        nat.process(&mut spoof, NicId::Link, t(0)),
        NatVerdict::Drop(NatDrop::Spoofed)
    );
    let mut spoof = frame(NODE, UPLINK, L4::Udp(1, 5353, b""));
    assert_eq!(
        nat.process(&mut spoof, NicId::Link, t(0)),
        NatVerdict::Drop(NatDrop::Spoofed)
    );
    let mut spoof = frame(C2, UPLINK, L4::Tcp(1, 8080, SYN, b""));
    assert_eq!(
        nat.process(&mut spoof, NicId::Uplink, t(0)),
        NatVerdict::Drop(NatDrop::Spoofed)
    );
    let s = nat.stats().drops;
    assert_eq!(
        (s.fragment, s.unsupported, s.malformed, s.spoofed),
        (1, 1, 1, 3)
    );
}

fn web(backends: &[(Ipv4Address, u32)]) -> ServiceConfig {
    ServiceConfig {
        name: "web".into(),
        vip: Some(VIP),
        proto: Transport::Tcp,
        port: 80,
        mode: ServiceMode::Vip,
        backends: backends
            .iter()
            .map(|&(address, weight)| BackendConfig {
                address,
                port: 8000,
                weight,
            })
            .collect(),
        health: Some(HealthSpec::default()),
    }
}

fn connect_vip(nat: &mut Nat, client: Endpoint, now: Instant) -> Result<Endpoint, NatVerdict> {
    let mut f = frame(client.addr, VIP, L4::Tcp(client.port, 80, SYN, b""));
    match run(nat, &mut f, NicId::Link, now) {
        TO_CONTAINER => {}
        v => return Err(v),
    }
    let s = seen(&f);
    assert_eq!(
        s.src.addr, NODE,
        "service traffic comes from the node address"
    );
    Ok(s.dst)
}

#[test]
fn a_syn_reusing_a_finished_service_flow_is_a_new_choice() {
    let b = [
        Ipv4Address::new(10, 81, 1, 10),
        Ipv4Address::new(10, 81, 2, 10),
    ];
    let mut nat = nat();
    nat.lb_mut()
        .add_service(web(&[(b[0], 1), (b[1], 1)]), t(0))
        .unwrap();
    // Clients whose first connection reached backend 0, then reset.
    let mut on_first = vec![];
    for i in 0..40u16 {
        let client = ep(C2, 30000 + i);
        if connect_vip(&mut nat, client, t(0)).unwrap().addr == b[0] {
            on_first.push(client);
        }
        let rst = TcpFlags { rst: true, ..ACK };
        let mut r = frame(client.addr, VIP, L4::Tcp(client.port, 80, rst, b""));
        assert_eq!(run(&mut nat, &mut r, NicId::Link, t(1)), TO_CONTAINER);
    }
    assert!(on_first.len() >= 10, "{}", on_first.len());
    nat.lb_mut()
        .set_backend(
            "web",
            BackendConfig {
                address: b[0],
                port: 8000,
                weight: 0,
            },
            t(2),
        )
        .unwrap();
    // The same tuples again: new connections, so none to the drained backend.
    for client in on_first {
        assert_eq!(connect_vip(&mut nat, client, t(3)).unwrap().addr, b[1]);
    }
}

#[test]
fn service_flows_spread_by_weight_and_stay_pinned() {
    let b = [
        Ipv4Address::new(10, 81, 1, 10),
        Ipv4Address::new(10, 81, 2, 10),
        Ipv4Address::new(10, 81, 3, 10),
    ];
    let mut nat = nat();
    nat.lb_mut()
        .add_service(web(&[(b[0], 2), (b[1], 1), (b[2], 1)]), t(0))
        .unwrap();
    let mut count = [0usize; 3];
    let mut pinned = vec![];
    // Hashing spreads like chance: with 4000 flows a 10% error is > 3.5 sigma.
    for i in 0..4000u16 {
        let client = ep(Ipv4Address::new(10, 81, 4, 1 + (i % 200) as u8), 20000 + i);
        let backend = connect_vip(&mut nat, client, t(0)).unwrap();
        let k = b.iter().position(|&a| a == backend.addr).unwrap();
        count[k] += 1;
        pinned.push((client, backend));
    }
    let want = [2000.0, 1000.0, 1000.0];
    for k in 0..3 {
        let off = (count[k] as f64 - want[k]).abs() / want[k];
        assert!(
            off < 0.10,
            "backend {k}: {} flows, want {}",
            count[k],
            want[k]
        );
    }
    // Drain backend 0 and add a fourth: open flows do not move.
    nat.lb_mut()
        .set_backend(
            "web",
            BackendConfig {
                address: b[0],
                port: 8000,
                weight: 0,
            },
            t(1),
        )
        .unwrap();
    nat.lb_mut()
        .set_backend(
            "web",
            BackendConfig {
                address: Ipv4Address::new(10, 81, 5, 10),
                port: 8000,
                weight: 1,
            },
            t(1),
        )
        .unwrap();
    for (client, backend) in &pinned {
        let mut a = frame(client.addr, VIP, L4::Tcp(client.port, 80, ACK, b"x"));
        assert_eq!(run(&mut nat, &mut a, NicId::Link, t(2)), TO_CONTAINER);
        assert_eq!(seen(&a).dst, *backend);
    }
    // New flows avoid the drained backend.
    for i in 0..100u16 {
        let backend = connect_vip(&mut nat, ep(C2, 30000 + i), t(3)).unwrap();
        assert_ne!(backend.addr, b[0]);
    }
    // Removing a backend cuts its flows, and only those.
    let gone = ep(b[1], 8000);
    let to_gone = nat
        .conntrack()
        .iter()
        .filter(|(_, f)| f.reply().src == gone)
        .count();
    assert!(to_gone >= pinned.iter().filter(|(_, be)| *be == gone).count());
    assert_eq!(nat.remove_backend("web", gone).unwrap(), to_gone);
    assert_eq!(
        nat.conntrack()
            .iter()
            .filter(|(_, f)| f.reply().src == gone)
            .count(),
        0
    );
    for (client, backend) in &pinned {
        let mut a = frame(client.addr, VIP, L4::Tcp(client.port, 80, ACK, b"x"));
        let v = nat.process(&mut a, NicId::Link, t(4));
        if backend.addr == b[1] {
            assert_eq!(v, NatVerdict::Drop(NatDrop::NoFlow));
        } else {
            assert_eq!(v, TO_CONTAINER);
            assert_eq!(seen(&a).dst, *backend);
        }
    }
}

#[test]
fn unhealthy_backends_leave_the_table_and_return() {
    let b = [
        Ipv4Address::new(10, 81, 1, 10),
        Ipv4Address::new(10, 81, 2, 10),
    ];
    let mut nat = nat();
    nat.lb_mut()
        .add_service(web(&[(b[0], 1), (b[1], 1)]), t(0))
        .unwrap();
    // Backend 0 fails every check; 1 passes. Default fall = 3.
    let mut now = t(0);
    for _ in 0..3 {
        for c in nat.lb_mut().due(now) {
            let ok = c.target.addr == b[1];
            assert_eq!(c.proto, Transport::Tcp);
            nat.lb_mut()
                .report(c.id, ok, now + Duration::from_millis(5));
        }
        now += Duration::from_secs(2);
    }
    let st = nat.lb().status();
    assert_eq!(st[0].backends[0].health, Health::Down);
    assert_eq!(st[0].backends[0].slots, 0);
    for i in 0..50u16 {
        assert_eq!(
            connect_vip(&mut nat, ep(C1, 100 + i), now).unwrap().addr,
            b[1]
        );
    }
    // Two good checks (rise = 2) bring it back.
    for _ in 0..2 {
        for c in nat.lb_mut().due(now) {
            nat.lb_mut()
                .report(c.id, true, now + Duration::from_millis(5));
        }
        now += Duration::from_secs(2);
    }
    assert_eq!(nat.lb().status()[0].backends[0].health, Health::Up);
    let hits = (0..100u16)
        .filter(|i| connect_vip(&mut nat, ep(C2, 1000 + i), now).unwrap().addr == b[0])
        .count();
    assert!(hits > 20, "{hits}");
    // No backend at all: new flows are refused and counted.
    nat.lb_mut()
        .set_backend(
            "web",
            BackendConfig {
                address: b[0],
                port: 8000,
                weight: 0,
            },
            now,
        )
        .unwrap();
    nat.lb_mut()
        .set_backend(
            "web",
            BackendConfig {
                address: b[1],
                port: 8000,
                weight: 0,
            },
            now,
        )
        .unwrap();
    assert_eq!(
        connect_vip(&mut nat, ep(C2, 9), now),
        Err(NatVerdict::Drop(NatDrop::NoBackend))
    );
}

#[test]
fn published_port_to_a_service_vip_is_the_routing_mesh() {
    let backend = Ipv4Address::new(10, 81, 7, 10); // on another host
    let mut nat = nat();
    nat.lb_mut()
        .add_service(web(&[(backend, 1)]), t(0))
        .unwrap();
    nat.add_publish(PublishRule {
        proto: Transport::Tcp,
        host_port: 9000,
        container_address: VIP,
        container_port: 80,
    })
    .unwrap();
    let mut syn = frame(CLIENT, UPLINK, L4::Tcp(41000, 9000, SYN, b""));
    assert_eq!(run(&mut nat, &mut syn, NicId::Uplink, t(0)), TO_CONTAINER);
    let s = seen(&syn);
    assert_eq!(s.dst, ep(backend, 8000));
    assert_eq!(s.src.addr, NODE, "the backend answers to this node");
    let mut sa = frame(backend, NODE, L4::Tcp(8000, s.src.port, SYNACK, b""));
    assert_eq!(run(&mut nat, &mut sa, NicId::Link, t(0)), TO_UPLINK);
    let r = seen(&sa);
    assert_eq!((r.src, r.dst), (ep(UPLINK, 9000), ep(CLIENT, 41000)));
}

#[test]
fn mutated_frames_never_panic_and_respect_the_capacity() {
    let mut cfg = config();
    cfg.conntrack.capacity = 16;
    cfg.snat_ports = (40000, 40007);
    let mut nat = Nat::new(cfg, 11);
    nat.add_publish(PublishRule {
        proto: Transport::Tcp,
        host_port: 8080,
        container_address: C1,
        container_port: 80,
    })
    .unwrap();
    nat.add_publish(PublishRule {
        proto: Transport::Tcp,
        host_port: 9000,
        container_address: VIP,
        container_port: 80,
    })
    .unwrap();
    nat.lb_mut()
        .add_service(
            web(&[
                (Ipv4Address::new(10, 81, 1, 10), 1),
                (Ipv4Address::new(10, 81, 2, 10), 2),
            ]),
            t(0),
        )
        .unwrap();
    let quoted = ip_packet(UPLINK, SERVER, L4::Udp(40000, 53, b"q"));
    let seeds: Vec<(NicId, Vec<u8>)> = vec![
        (
            NicId::Uplink,
            frame(CLIENT, UPLINK, L4::Tcp(40000, 8080, SYN, b"")),
        ),
        (
            NicId::Uplink,
            frame(CLIENT, UPLINK, L4::Tcp(40000, 9000, SYN, b"x")),
        ),
        (
            NicId::Link,
            frame(C1, CLIENT, L4::Tcp(80, 40000, SYNACK, b"")),
        ),
        (
            NicId::Link,
            frame(C1, SERVER, L4::Udp(6000, 53, b"question")),
        ),
        (NicId::Link, frame(C2, VIP, L4::Tcp(3000, 80, SYN, b""))),
        (
            NicId::Link,
            frame(C2, UPLINK, L4::Tcp(3000, 8080, SYN, b"")),
        ),
        (NicId::Link, frame(C1, SERVER, L4::EchoRequest(9))),
        (NicId::Uplink, frame(SERVER, UPLINK, L4::EchoReply(40000))),
        (
            NicId::Uplink,
            frame(ROUTER, UPLINK, L4::Error(11, 0, &quoted)),
        ),
        (
            NicId::Uplink,
            frame(SERVER, UPLINK, L4::Udp(53, 40000, b"answer")),
        ),
    ];
    let mut rng = Rng::new(0xfeed_beef_1234_5678);
    let mut now = t(0);
    for _ in 0..100_000 {
        let (side, base) = &seeds[(rng.next_u64() % seeds.len() as u64) as usize];
        let mut f = base.clone();
        // Mostly a few flipped bytes in the headers; sometimes a cut.
        for _ in 0..(rng.next_u64() % 4) {
            let at = (rng.next_u64() % f.len() as u64) as usize;
            f[at] ^= 1 << (rng.next_u64() % 8);
        }
        if rng.next_u64().is_multiple_of(8) {
            f.truncate((rng.next_u64() % f.len() as u64) as usize);
        }
        let side = if rng.next_u64().is_multiple_of(5) {
            match side {
                NicId::Uplink => NicId::Link,
                NicId::Link => NicId::Uplink,
            }
        } else {
            *side
        };
        let len = f.len();
        nat.process(&mut f, side, now);
        assert_eq!(f.len(), len);
        let st = nat.stats();
        assert!(st.table_size <= 16);
        assert!(st.snat_mappings <= 2 * 8 * 3);
        now += Duration::from_millis(rng.next_u64() % 3000);
        if rng.next_u64().is_multiple_of(64) {
            nat.poll(now, 4);
        }
    }
    // The mutations reach the translating paths, not only the parser.
    let st = nat.stats();
    assert!(st.translated > 10_000, "{st:?}");
    assert!(
        st.service_flows > 0 && st.hairpin_flows > 0 && st.snat_flows > 0,
        "{st:?}"
    );
    assert!(
        st.icmp_errors_translated > 0 && st.conntrack.evicted > 0,
        "{st:?}"
    );
    assert!(
        st.drops.malformed > 0 && st.drops.ports_exhausted > 0,
        "{st:?}"
    );
}
