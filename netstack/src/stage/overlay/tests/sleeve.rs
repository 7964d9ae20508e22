//! Sleeve as an overlay transport: two VTEPs exchanging real underlay frames, the
//! `auto` choice by trusted subnets, and every way a sleeve frame is refused.

use super::*;
use crate::base::test_rng::Rng;
use alloc::string::ToString;
use smoltcp::wire::{IpAddress, UdpPacket};

const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_SECRET: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const N1: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
const N2: Ipv4Address = Ipv4Address::new(198, 51, 100, 2);
const N3: Ipv4Address = Ipv4Address::new(203, 0, 113, 3);
const N1_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
const N2_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
const N3_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 3]);
const C1: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 1]);
const C2: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 2]);
const PATTERN: [u8; 6] = [0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe];

fn t(ms: i64) -> Instant {
    Instant::from_millis(ms)
}

fn doc(node: u8, mode: &str, secret: &str, trusted: &str) -> OverlayConfig {
    let peers = [(1u8, N1), (2, N2), (3, N3)]
        .iter()
        .filter(|(n, _)| *n != node)
        .map(|(n, a)| alloc::format!(r#"{{"node": {n}, "address": "{a}", "networks": ["a"]}}"#))
        .collect::<Vec<_>>()
        .join(",");
    serde_json::from_str(&alloc::format!(
        r#"{{"grid": {{"node": {node}, "secret": "{secret}", "trusted_subnets": [{trusted}]}},
            "networks": [{{"name": "a", "vni": 100, "mode": "{mode}"}}],
            "peers": [{peers}]}}"#
    ))
    .unwrap()
}

fn node(n: u8, mode: &str, secret: &str, trusted: &str) -> Overlay {
    let (ip, mac) = [(N1, N1_MAC), (N2, N2_MAC), (N3, N3_MAC)][usize::from(n - 1)];
    let mut o = Overlay::from_config(
        &doc(n, mode, secret, trusted),
        Underlay { mac, ip },
        Limits::default(),
        0x5eed + u64::from(n),
    )
    .unwrap();
    o.set_sleeve_first_session(crate::stage::sleeve::SessionId::first_of_boot(
        1_764_000_000,
        n.into(),
    ));
    for (a, m) in [(N1, N1_MAC), (N2, N2_MAC), (N3, N3_MAC)] {
        let _ = o.set_neighbor(a, Some(m));
    }
    o
}

fn vni() -> Vni {
    Vni::new(100).unwrap()
}

/// An Ethernet/IPv4/ICMP-like frame from C1 to `dst` whose payload repeats `PATTERN`.
fn inner(dst: EthernetAddress, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; ETHERNET_HEADER_LEN + len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&C1.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[ETHERNET_HEADER_LEN..].iter_mut().enumerate() {
        *b = PATTERN[i % PATTERN.len()];
    }
    f
}

fn uplink(v: OverlayVerdict) -> Vec<Vec<u8>> {
    let OverlayVerdict::Forward(out) = v else {
        panic!("not forwarded: {v:?}")
    };
    out.into_iter()
        .filter(|(e, _)| *e == Egress::Uplink)
        .map(|(_, f)| f)
        .collect()
}

fn udp_dst_port(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[36], frame[37]])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Node 1 sends one frame to C2 (static on node 2): the one underlay frame.
fn sealed_1_to_2(a: &mut Overlay, now: Instant) -> Vec<u8> {
    a.add_static(vni(), C2, Location::Remote(N2), None, now)
        .unwrap();
    let mut out = uplink(a.rx_link(now, vni(), &inner(C2, 100)));
    assert_eq!(out.len(), 1);
    out.remove(0)
}

/// Change byte `i` of the UDP payload and keep the outer checksums right, as an
/// attacker on the path would.
fn flip(frame: &[u8], i: usize) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[sleeve_link::OUTER_LEN + i] ^= 0x01;
    let mut udp = UdpPacket::new_unchecked(&mut f[34..]);
    udp.fill_checksum(&IpAddress::Ipv4(N1), &IpAddress::Ipv4(N2));
    f
}

#[test]
fn sleeve_round_trip_hides_the_inner_frame() {
    let mut a = node(1, "sleeve", SECRET, "");
    let mut b = node(2, "sleeve", SECRET, "");
    let now = t(1000);
    let frame = sealed_1_to_2(&mut a, now);
    assert_eq!(udp_dst_port(&frame), crate::base::ports::SLEEVE_PORT);
    assert_eq!(&frame[30..34], &N2.octets());
    assert!(!contains(&frame, &PATTERN), "inner payload in the clear");
    assert!(!contains(&frame, &C1.0), "inner MAC in the clear");
    let OverlayVerdict::Forward(out) = b.rx_uplink(now, &frame) else {
        panic!("sleeve frame not delivered")
    };
    assert_eq!(out, vec![(Egress::Link, inner(C2, 100))]);
    let st = b.status(now);
    let sl = st.sleeve.unwrap();
    assert_eq!((sl.opened_messages, sl.opened_frames), (1, 1));
    assert_eq!(st.networks[0].counters.uplink_rx, 1);
    assert_eq!(a.status(now).sleeve.unwrap().sealed_messages, 1);
}

/// Sleeve sends no outer UDP checksum (the tag covers what it would); a receiver opens
/// a datagram without one and one with a right one (as an older sender wrote it), and
/// refuses one whose checksum is wrong before it spends a decryption on it.
#[test]
fn the_outer_udp_checksum_is_left_to_the_tag_and_verified_when_sent() {
    let mut a = node(1, "sleeve", SECRET, "");
    let mut b = node(2, "sleeve", SECRET, "");
    let first = sealed_1_to_2(&mut a, t(0));
    let udp = UdpPacket::new_checked(&first[34..]).unwrap();
    assert_eq!(udp.checksum(), 0);
    assert!(Ipv4Packet::new_checked(&first[14..])
        .unwrap()
        .verify_checksum());
    assert!(matches!(
        b.rx_uplink(t(0), &first),
        OverlayVerdict::Forward(_)
    ));

    let mut second = uplink(a.rx_link(t(0), vni(), &inner(C2, 100))).remove(0);
    UdpPacket::new_unchecked(&mut second[34..])
        .fill_checksum(&IpAddress::Ipv4(N1), &IpAddress::Ipv4(N2));
    assert_ne!(UdpPacket::new_unchecked(&second[34..]).checksum(), 0);
    let mut wrong = second.clone();
    wrong[40] ^= 0x01;
    assert_eq!(
        b.rx_uplink(t(0), &wrong),
        OverlayVerdict::Drop(OverlayDrop::BadOuterHeader)
    );
    assert!(matches!(
        b.rx_uplink(t(0), &second),
        OverlayVerdict::Forward(_)
    ));
    let st = b.status(t(0));
    assert_eq!(st.drops.bad_outer_header, 1);
    let sl = st.sleeve.unwrap();
    assert_eq!((sl.opened_messages, sl.drops.auth_failed), (2, 0));
}

#[test]
fn replayed_frame_is_dropped_and_counted() {
    let mut a = node(1, "sleeve", SECRET, "");
    let mut b = node(2, "sleeve", SECRET, "");
    let frame = sealed_1_to_2(&mut a, t(0));
    assert!(matches!(
        b.rx_uplink(t(0), &frame),
        OverlayVerdict::Forward(_)
    ));
    for _ in 0..3 {
        assert_eq!(
            b.rx_uplink(t(1), &frame),
            OverlayVerdict::Drop(OverlayDrop::SleeveRefused)
        );
    }
    let st = b.status(t(1));
    assert_eq!(st.sleeve.unwrap().drops.replayed, 3);
    assert_eq!(st.drops.sleeve_refused, 3);
}

#[test]
fn every_flipped_byte_is_dropped_and_counted() {
    let mut a = node(1, "sleeve", SECRET, "");
    let mut b = node(2, "sleeve", SECRET, "");
    let frame = sealed_1_to_2(&mut a, t(0));
    let payload_len = frame.len() - sleeve_link::OUTER_LEN;
    for i in 0..payload_len {
        let bad = flip(&frame, i);
        assert_eq!(
            b.rx_uplink(t(0), &bad),
            OverlayVerdict::Drop(OverlayDrop::SleeveRefused),
            "byte {i}"
        );
    }
    let sl = b.status(t(0)).sleeve.unwrap();
    let total = sl.drops.truncated
        + sl.drops.bad_version
        + sl.drops.unknown_type
        + sl.drops.unknown_peer
        + sl.drops.stale_session
        + sl.drops.unknown_epoch
        + sl.drops.key_unavailable
        + sl.drops.auth_failed
        + sl.drops.malformed;
    assert_eq!(total, payload_len as u64);
    assert!(sl.drops.auth_failed > 0);
    // The genuine frame still opens: no flipped copy moved the window.
    assert!(matches!(
        b.rx_uplink(t(0), &frame),
        OverlayVerdict::Forward(_)
    ));
}

#[test]
fn wrong_secret_exchanges_nothing_and_says_auth_failed() {
    let mut a = node(1, "sleeve", SECRET, "");
    let mut b = node(2, "sleeve", OTHER_SECRET, "");
    let frame = sealed_1_to_2(&mut a, t(0));
    assert_eq!(
        b.rx_uplink(t(0), &frame),
        OverlayVerdict::Drop(OverlayDrop::SleeveRefused)
    );
    assert_eq!(b.status(t(0)).sleeve.unwrap().drops.auth_failed, 1);
}

#[test]
fn truncated_and_garbage_sleeve_frames_never_deliver() {
    let mut a = node(1, "sleeve", SECRET, "");
    let mut b = node(2, "sleeve", SECRET, "");
    let frame = sealed_1_to_2(&mut a, t(0));
    let mut rng = Rng::new(0x1234_5678);
    for cut in (0..frame.len()).rev() {
        let v = b.rx_uplink(t(0), &frame[..cut]);
        assert!(!matches!(v, OverlayVerdict::Forward(_)), "cut {cut}");
    }
    for _ in 0..500 {
        let mut g = frame.clone();
        let len = g.len() - sleeve_link::OUTER_LEN;
        g[sleeve_link::OUTER_LEN..].copy_from_slice(&rng.bytes(len));
        let mut udp = UdpPacket::new_unchecked(&mut g[34..]);
        udp.fill_checksum(&IpAddress::Ipv4(N1), &IpAddress::Ipv4(N2));
        assert!(!matches!(b.rx_uplink(t(0), &g), OverlayVerdict::Forward(_)));
    }
}

#[test]
fn plaintext_vxlan_is_refused_by_a_sleeve_network() {
    let mut a = node(1, "vxlan", SECRET, "");
    let mut b = node(2, "sleeve", SECRET, "");
    let frame = sealed_1_to_2(&mut a, t(0));
    assert_eq!(udp_dst_port(&frame), crate::base::ports::VXLAN_PORT);
    assert_eq!(
        b.rx_uplink(t(0), &frame),
        OverlayVerdict::Drop(OverlayDrop::Unsealed)
    );
    assert_eq!(b.drops().unsealed, 1);
}

#[test]
fn auto_uses_vxlan_inside_trusted_subnets_and_sleeve_outside() {
    // Node 2 (198.51.100.2) is trusted, node 3 (203.0.113.3) is not.
    let mut a = node(1, "auto", SECRET, r#""198.51.100.0/24""#);
    let mut b = node(2, "auto", SECRET, r#""192.0.2.0/24""#);
    let mut c = node(3, "auto", SECRET, r#""198.51.100.0/24""#);
    // Unknown unicast floods to both peers.
    let out = uplink(a.rx_link(t(0), vni(), &inner(C2, 64)));
    assert_eq!(out.len(), 2);
    let to = |ip: Ipv4Address| out.iter().find(|f| f[30..34] == ip.octets()).unwrap();
    assert_eq!(udp_dst_port(to(N2)), crate::base::ports::VXLAN_PORT);
    assert_eq!(udp_dst_port(to(N3)), crate::base::ports::SLEEVE_PORT);
    assert!(contains(to(N2), &PATTERN));
    assert!(!contains(to(N3), &PATTERN));
    assert!(matches!(
        b.rx_uplink(t(0), to(N2)),
        OverlayVerdict::Forward(_)
    ));
    assert!(matches!(
        c.rx_uplink(t(0), to(N3)),
        OverlayVerdict::Forward(_)
    ));
    // Node 3 takes no plaintext from node 1, which it does not trust.
    let mut plain = node(1, "vxlan", SECRET, "");
    let out = uplink(plain.rx_link(t(0), vni(), &inner(C2, 64)));
    let to_3 = out.iter().find(|f| f[30..34] == N3.octets()).unwrap();
    assert_eq!(udp_dst_port(to_3), crate::base::ports::VXLAN_PORT);
    assert_eq!(
        c.rx_uplink(t(0), to_3),
        OverlayVerdict::Drop(OverlayDrop::Unsealed)
    );
}

#[test]
fn sleeve_network_mtu_leaves_room_for_the_sleeve_overhead() {
    let mut a = node(1, "sleeve", SECRET, "");
    let mtu = a.mtu_of(vni()).unwrap();
    assert_eq!(mtu, 1450 - sleeve_link::EXTRA_OVERHEAD);
    a.add_static(vni(), C2, Location::Remote(N2), None, t(0))
        .unwrap();
    // The largest frame fits one underlay datagram of 1500 bytes of IP.
    let out = uplink(a.rx_link(t(0), vni(), &inner(C2, usize::from(mtu))));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 1500 + ETHERNET_HEADER_LEN);
    assert!(matches!(
        a.rx_link(t(0), vni(), &inner(C2, usize::from(mtu) + 1)),
        OverlayVerdict::Drop(OverlayDrop::TooBig)
    ));
}

#[test]
fn secret_is_never_echoed_and_set_is_not_a_secret() {
    let d = doc(1, "sleeve", SECRET, "");
    let text = serde_json::to_string(&d).unwrap();
    assert!(text.contains(r#""secret":"set""#), "{text}");
    assert!(!text.contains("0102030405"));
    assert!(serde_json::from_str::<OverlayConfig>(&text).is_err());
    assert!(!alloc::format!("{d:?}").contains("0102030405"));
    // Too short, not hex.
    for bad in ["00ff", "zz0102030405060708090a0b0c0d0e0f"] {
        let text = alloc::format!(r#"{{"grid": {{"node": 1, "secret": "{bad}"}}}}"#);
        assert!(
            serde_json::from_str::<OverlayConfig>(&text).is_err(),
            "{bad}"
        );
    }
    let no_secret: OverlayConfig = serde_json::from_str(
        r#"{"grid": {"node": 1}, "networks": [{"name": "a", "vni": 1, "mode": "auto"}]}"#,
    )
    .unwrap();
    assert_eq!(
        no_secret.validate(),
        Err(ConfigError::SleeveWithoutSecret("a".to_string()))
    );
}

#[test]
fn a_replacement_endpoint_continues_the_session_ids() {
    let mut a = node(1, "sleeve", SECRET, "");
    let next = a.sleeve_next_session().unwrap();
    let _ = sealed_1_to_2(&mut a, t(0));
    // Sealing fixed the ids: a later first session is ignored.
    a.set_sleeve_first_session(crate::stage::sleeve::SessionId(1));
    assert_eq!(a.sleeve_next_session(), Some(next));
}

#[test]
fn status_shows_the_address_in_use_per_peer() {
    let config: OverlayConfig = serde_json::from_str(
        r#"{"grid": {"node": 1, "region": "eu"},
            "networks": [{"name": "a", "vni": 100}],
            "peers": [
              {"node": 2, "region": "eu", "private_address": "198.51.100.2",
               "public_address": "203.0.113.2", "networks": ["a"]},
              {"node": 3, "region": "us", "private_address": "198.51.100.3",
               "public_address": "203.0.113.3", "networks": ["a"]},
              {"node": 4, "address": "192.0.2.4", "networks": ["a"]}
            ]}"#,
    )
    .unwrap();
    let mut o = Overlay::from_config(
        &config,
        Underlay {
            mac: N1_MAC,
            ip: N1,
        },
        Limits::default(),
        1,
    )
    .unwrap();
    let shown: Vec<(u16, Ipv4Address, config::AddressKind)> = o
        .status(t(0))
        .peers
        .iter()
        .map(|p| (p.node.get(), p.address, p.address_kind))
        .collect();
    use config::AddressKind::{Private, Public};
    assert_eq!(
        shown,
        vec![
            (4, Ipv4Address::new(192, 0, 2, 4), Public),
            (2, Ipv4Address::new(198, 51, 100, 2), Private),
            (3, Ipv4Address::new(203, 0, 113, 3), Public),
        ]
    );
    // Frames leave for the address in use.
    for (a, m) in [
        (Ipv4Address::new(198, 51, 100, 2), N2_MAC),
        (Ipv4Address::new(203, 0, 113, 3), N3_MAC),
        (Ipv4Address::new(192, 0, 2, 4), N2_MAC),
    ] {
        o.set_neighbor(a, Some(m)).unwrap();
    }
    let mut to: Vec<[u8; 4]> = uplink(o.rx_link(t(0), vni(), &inner(C2, 64)))
        .iter()
        .map(|f| f[30..34].try_into().unwrap())
        .collect();
    to.sort();
    assert_eq!(
        to,
        vec![[192, 0, 2, 4], [198, 51, 100, 2], [203, 0, 113, 3]]
    );
}
