//! Tests of the VTEP decision with real frames built by smoltcp's wire types.

use super::*;
use crate::base::ports::VXLAN_PORT;
use crate::base::test_rng::Rng;
use crate::table::fdb::Location;
use crate::wire::icmp_error::frag_needed;
use crate::wire::vxlan::{DfPolicy, Outer};
use alloc::string::ToString;
use alloc::vec;
use config::{NetworkConfig, PeerConfig};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, ETHERNET_HEADER_LEN,
};
use smoltcp::wire::{
    Icmpv4Message, Icmpv4Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
    IPV4_HEADER_LEN,
};

const US: Underlay = Underlay {
    mac: EthernetAddress([0x02, 0, 0, 0, 0, 0x01]),
    ip: Ipv4Address::new(192, 0, 2, 1),
};
const P2: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
const P3: Ipv4Address = Ipv4Address::new(192, 0, 2, 3);
const P2_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
const P3_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x03]);
const APPLIANCE_MAC: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0, 0x01]);

fn vni(n: u32) -> Vni {
    Vni::new(n).unwrap()
}

const A: u32 = 100;
const B: u32 = 200;

fn mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, n])
}

fn ip(n: u8) -> Ipv4Address {
    Ipv4Address::new(10, 81, 128, n)
}

fn t(secs: i64) -> Instant {
    Instant::from_secs(secs)
}

fn config() -> OverlayConfig {
    serde_json::from_str(
        r#"{
            "grid": {"node": 1},
            "networks": [{"name": "a", "vni": 100}, {"name": "b", "vni": 200, "vlan": 200}],
            "peers": [
                {"node": 2, "address": "192.0.2.2", "networks": ["a", "b"]},
                {"node": 3, "address": "192.0.2.3", "networks": ["a"]}
            ]
        }"#,
    )
    .unwrap()
}

fn overlay() -> Overlay {
    let mut o = Overlay::from_config(&config(), US, Limits::default(), 0x5eed).unwrap();
    o.set_neighbor(P2, Some(P2_MAC)).unwrap();
    o.set_neighbor(P3, Some(P3_MAC)).unwrap();
    o
}

fn ethernet(
    dst: EthernetAddress,
    src: EthernetAddress,
    ethertype: EthernetProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
    };
    let mut buf = vec![0u8; ETHERNET_HEADER_LEN + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    repr.emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    buf
}

/// An Ethernet/IPv4/UDP frame with `len` bytes of UDP payload.
fn udp_frame(dst: EthernetAddress, src: EthernetAddress, len: usize, df: bool) -> Vec<u8> {
    let (sip, dip) = (ip(1), ip(2));
    let ip_repr = Ipv4Repr {
        src_addr: sip,
        dst_addr: dip,
        next_header: IpProtocol::Udp,
        payload_len: 8 + len,
        hop_limit: 64,
    };
    let mut l3 = vec![0u8; IPV4_HEADER_LEN + 8 + len];
    let mut p = Ipv4Packet::new_unchecked(&mut l3[..]);
    ip_repr.emit(&mut p, &ChecksumCapabilities::default());
    p.set_dont_frag(df);
    p.fill_checksum();
    let mut u = UdpPacket::new_unchecked(p.payload_mut());
    UdpRepr {
        src_port: 40000,
        dst_port: 7777,
    }
    .emit(
        &mut u,
        &IpAddress::Ipv4(sip),
        &IpAddress::Ipv4(dip),
        len,
        |b| b.fill(0x5a),
        &ChecksumCapabilities::default(),
    );
    ethernet(dst, src, EthernetProtocol::Ipv4, &l3)
}

fn arp_request(src: EthernetAddress, sip: Ipv4Address, target: Ipv4Address) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: src,
        source_protocol_addr: sip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut arp = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut arp[..]));
    ethernet(EthernetAddress::BROADCAST, src, EthernetProtocol::Arp, &arp)
}

/// A VXLAN frame from `peer` to us carrying `inner` in `vni`.
fn from_peer(peer: Ipv4Address, vni: Vni, inner: &[u8]) -> Vec<u8> {
    let outer = Outer {
        src_mac: P2_MAC,
        dst_mac: US.mac,
        src_ip: peer,
        dst_ip: US.ip,
        src_port: 50000,
        dst_port: VXLAN_PORT,
        vni,
        ident: 1,
        ttl: 64,
        df: DfPolicy::Unset,
        udp_checksum: true,
    };
    let mut buf = Vec::new();
    vxlan::encapsulate(&outer, inner, &mut buf).unwrap();
    buf
}

fn forward(v: OverlayVerdict) -> Vec<Output> {
    match v {
        OverlayVerdict::Forward(out) => out,
        other => panic!("expected Forward, got {other:?}"),
    }
}

/// Decapsulate an uplink output: (peer, vni, outer dst MAC, inner frame).
fn opened(frame: &[u8]) -> (Ipv4Address, Vni, EthernetAddress, Vec<u8>) {
    let d = vxlan::decapsulate(frame, VXLAN_PORT).unwrap();
    assert_eq!(d.src_ip, US.ip);
    assert_eq!(d.outer_src_mac, US.mac);
    let outer_dst = EthernetFrame::new_checked(frame).unwrap().dst_addr();
    (d.dst_ip, d.vni, outer_dst, d.inner.to_vec())
}

#[test]
fn known_remote_unicast_goes_to_that_peer_only() {
    let mut o = overlay();
    o.add_static(vni(A), mac(9), Location::Remote(P3), Some(ip(9)), t(0))
        .unwrap();
    let frame = udp_frame(mac(9), mac(1), 100, false);
    let out = forward(o.rx_link(t(0), vni(A), &frame));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, Egress::Uplink);
    let (peer, v, outer_dst, inner) = opened(&out[0].1);
    assert_eq!((peer, v, outer_dst), (P3, vni(A), P3_MAC));
    assert_eq!(inner, frame);
    let c = o.peer_counters(P3).unwrap();
    assert_eq!((c.tx_packets, c.tx_bytes), (1, out[0].1.len() as u64));
    assert_eq!(o.network_counters(vni(A)).unwrap().uplink_tx, 1);
}

#[test]
fn source_port_spreads_flows_and_ident_advances() {
    let mut o = overlay();
    o.add_static(vni(A), mac(9), Location::Remote(P2), None, t(0))
        .unwrap();
    let mut ports = BTreeSet::new();
    let mut idents = BTreeSet::new();
    for sport in 0..64u16 {
        let mut frame = udp_frame(mac(9), mac(1), 20, false);
        frame[34..36].copy_from_slice(&(1000 + sport).to_be_bytes());
        let out = forward(o.rx_link(t(0), vni(A), &frame));
        let d = vxlan::decapsulate(&out[0].1, VXLAN_PORT).unwrap();
        assert!((32768..61000).contains(&d.src_port));
        ports.insert(d.src_port);
        idents.insert(Ipv4Packet::new_checked(&out[0].1[14..]).unwrap().ident());
    }
    assert!(ports.len() > 40, "{} ports", ports.len());
    assert_eq!(idents.len(), 64);
}

#[test]
fn broadcast_and_unknown_unicast_replicate_to_every_peer_of_the_network() {
    let mut o = overlay();
    for frame in [
        udp_frame(EthernetAddress::BROADCAST, mac(1), 10, false),
        udp_frame(
            EthernetAddress([0x01, 0, 0x5e, 0, 0, 0xfb]),
            mac(1),
            10,
            false,
        ),
        udp_frame(mac(77), mac(1), 10, false), // unknown unicast
    ] {
        // Network A: peers 2 and 3.
        let out = forward(o.rx_link(t(0), vni(A), &frame));
        assert!(
            out.iter().all(|(e, _)| *e == Egress::Uplink),
            "never back to the link"
        );
        let mut peers: Vec<Ipv4Address> = out.iter().map(|(_, f)| opened(f).0).collect();
        peers.sort();
        assert_eq!(peers, [P2, P3]);
        assert!(out
            .iter()
            .all(|(_, f)| opened(f).1 == vni(A) && opened(f).3 == frame));
        // Network B: only peer 2 carries it.
        let out = forward(o.rx_link(t(0), vni(B), &frame));
        assert_eq!(out.len(), 1);
        assert_eq!(opened(&out[0].1).0, P2);
        assert_eq!(opened(&out[0].1).1, vni(B));
    }
    assert_eq!(o.network_counters(vni(A)).unwrap().flooded, 3);
}

#[test]
fn local_destination_stays_local() {
    let mut o = overlay();
    // mac(2) speaks first and is learned on the link.
    forward(o.rx_link(
        t(0),
        vni(A),
        &udp_frame(EthernetAddress::BROADCAST, mac(2), 1, false),
    ));
    assert_eq!(o.lookup(vni(A), &mac(2), t(0)), Some(Location::Local));
    let out = forward(o.rx_link(t(1), vni(A), &udp_frame(mac(2), mac(1), 10, false)));
    assert!(out.is_empty());
    assert_eq!(o.network_counters(vni(A)).unwrap().filtered, 1);
    // After ageing it is unknown again and floods.
    let later = t(1) + fdb::DEFAULT_AGEING;
    let out = forward(o.rx_link(later, vni(A), &udp_frame(mac(2), mac(1), 10, false)));
    assert_eq!(out.len(), 2);
}

#[test]
fn learning_never_moves_static_entries() {
    let mut o = overlay();
    o.add_static(vni(A), mac(9), Location::Remote(P2), None, t(0))
        .unwrap();
    // A container on the link claims mac(9): control's entry stays.
    forward(o.rx_link(
        t(0),
        vni(A),
        &udp_frame(EthernetAddress::BROADCAST, mac(9), 1, false),
    ));
    assert_eq!(o.lookup(vni(A), &mac(9), t(0)), Some(Location::Remote(P2)));
}

#[test]
fn arp_suppression_answers_known_addresses() {
    let mut o = overlay();
    o.add_static(vni(A), mac(9), Location::Remote(P2), Some(ip(9)), t(0))
        .unwrap();
    let out = forward(o.rx_link(t(0), vni(A), &arp_request(mac(1), ip(1), ip(9))));
    assert_eq!(out.len(), 1, "answered, not flooded");
    assert_eq!(out[0].0, Egress::Link);
    let frame = EthernetFrame::new_checked(&out[0].1[..]).unwrap();
    assert_eq!(frame.dst_addr(), mac(1));
    assert_eq!(frame.src_addr(), mac(9));
    assert_eq!(frame.ethertype(), EthernetProtocol::Arp);
    let reply = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
    assert_eq!(
        reply,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: mac(9),
            source_protocol_addr: ip(9),
            target_hardware_addr: mac(1),
            target_protocol_addr: ip(1),
        }
    );
    assert_eq!(o.network_counters(vni(A)).unwrap().arp_suppressed, 1);

    // The binding is per network: the same request in B is flooded to B's peer.
    let out = forward(o.rx_link(t(0), vni(B), &arp_request(mac(1), ip(1), ip(9))));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, Egress::Uplink);
    // Unknown address and gratuitous ARP flood.
    let out = forward(o.rx_link(t(0), vni(A), &arp_request(mac(1), ip(1), ip(50))));
    assert_eq!(out.len(), 2);
    let out = forward(o.rx_link(t(0), vni(A), &arp_request(mac(9), ip(9), ip(9))));
    assert_eq!(out.len(), 2);
    // Removing the static entry removes the binding.
    assert_eq!(o.remove_static(vni(A), mac(9)), Ok(true));
    let out = forward(o.rx_link(t(0), vni(A), &arp_request(mac(1), ip(1), ip(9))));
    assert!(out.iter().all(|(e, _)| *e == Egress::Uplink));
}

#[test]
fn uplink_delivers_to_the_link_and_learns_nothing() {
    let mut o = overlay();
    let inner = udp_frame(mac(1), mac(50), 30, false);
    let out = forward(o.rx_uplink(t(0), &from_peer(P2, vni(A), &inner)));
    assert_eq!(out, [(Egress::Link, inner.clone())]);
    assert_eq!(
        o.lookup(vni(A), &mac(50), t(0)),
        None,
        "nothing learned from remote"
    );
    let c = o.peer_counters(P2).unwrap();
    assert_eq!(c.rx_packets, 1);
    assert_eq!(o.network_counters(vni(A)).unwrap().uplink_rx, 1);
}

#[test]
fn uplink_refusals_are_counted() {
    let mut o = overlay();
    let inner = udp_frame(mac(1), mac(50), 30, false);

    assert_eq!(
        o.rx_uplink(t(0), &from_peer(P2, vni(999), &inner)),
        OverlayVerdict::Drop(OverlayDrop::UnknownVni)
    );
    // 192.0.2.9 is no peer; peer 3 does not carry network B.
    assert_eq!(
        o.rx_uplink(
            t(0),
            &from_peer(Ipv4Address::new(192, 0, 2, 9), vni(A), &inner)
        ),
        OverlayVerdict::Drop(OverlayDrop::UnknownPeer)
    );
    assert_eq!(
        o.rx_uplink(t(0), &from_peer(P3, vni(B), &inner)),
        OverlayVerdict::Drop(OverlayDrop::UnknownPeer)
    );
    // Not VXLAN: a plain UDP frame on the uplink, and VXLAN to another address.
    assert_eq!(
        o.rx_uplink(t(0), &inner),
        OverlayVerdict::Drop(OverlayDrop::NotVxlan)
    );
    let mut other = from_peer(P2, vni(A), &inner);
    let mut ipp = Ipv4Packet::new_unchecked(&mut other[14..]);
    ipp.set_dst_addr(Ipv4Address::new(192, 0, 2, 77));
    ipp.fill_checksum();
    let mut udp = UdpPacket::new_unchecked(ipp.payload_mut());
    udp.set_checksum(0);
    assert_eq!(
        o.rx_uplink(t(0), &other),
        OverlayVerdict::Drop(OverlayDrop::NotVxlan)
    );
    // I flag cleared (UDP checksum zeroed so the VXLAN header itself is what is judged).
    let mut bad = from_peer(P2, vni(A), &inner);
    bad[40..42].fill(0);
    bad[42] = 0;
    assert_eq!(
        o.rx_uplink(t(0), &bad),
        OverlayVerdict::Drop(OverlayDrop::BadVxlanHeader)
    );
    // A runt inner frame.
    assert_eq!(
        o.rx_uplink(t(0), &from_peer(P2, vni(A), &inner[..10])),
        OverlayVerdict::Drop(OverlayDrop::Runt)
    );
    // A multicast inner source.
    let spoofed = udp_frame(mac(1), EthernetAddress::BROADCAST, 1, false);
    assert_eq!(
        o.rx_uplink(t(0), &from_peer(P2, vni(A), &spoofed)),
        OverlayVerdict::Drop(OverlayDrop::BadSourceMac)
    );
    // For a MAC control placed on peer 3: not ours to deliver.
    o.add_static(vni(A), mac(9), Location::Remote(P3), None, t(0))
        .unwrap();
    let to_p3 = udp_frame(mac(9), mac(50), 1, false);
    assert_eq!(
        o.rx_uplink(t(0), &from_peer(P2, vni(A), &to_p3)),
        OverlayVerdict::Drop(OverlayDrop::NotLocal)
    );

    let d = o.drops();
    assert_eq!(
        (
            d.unknown_vni,
            d.unknown_peer,
            d.not_vxlan,
            d.bad_vxlan_header,
            d.runt
        ),
        (1, 2, 2, 1, 1)
    );
    assert_eq!((d.bad_source_mac, d.not_local), (1, 1));
    assert_eq!(d.total(), 7, "not_vxlan is not a loss");
    assert_eq!(d.get(OverlayDrop::UnknownPeer), 2);
    assert_eq!(o.network_counters(vni(A)).unwrap().drops.unknown_peer, 1);
    assert_eq!(o.network_counters(vni(B)).unwrap().drops.unknown_peer, 1);
    assert_eq!(o.peer_counters(P2).unwrap().rx_packets, 0);
}

#[test]
fn linux_vxlan_frame_is_accepted() {
    // The ping that Linux's vxlan device (192.0.2.1, VNI 42) sent to 192.0.2.2 in
    // vxlan.rs's tests, received by an appliance at 192.0.2.2.
    let linux: [u8; 108] = [
        0x5e, 0xd6, 0x23, 0x91, 0x1a, 0x86, 0xf6, 0x32, 0x40, 0x39, 0x48, 0x11, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x5e, 0x7c, 0x40, 0x00, 0x00, 0x40, 0x11, 0x7a, 0x4b, 0xc0, 0x00, 0x02, 0x01,
        0xc0, 0x00, 0x02, 0x02, 0x82, 0x7b, 0x12, 0xb5, 0x00, 0x4a, 0x00, 0x00, 0x08, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x2a, 0x00, 0x02, 0x42, 0x0a, 0x51, 0x01, 0x02, 0x02, 0x42, 0x0a, 0x51,
        0x01, 0x01, 0x08, 0x00, 0x45, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x01, 0x24,
        0x2d, 0x0a, 0x51, 0x01, 0x01, 0x0a, 0x51, 0x01, 0x02, 0x08, 0x00, 0x0c, 0x47, 0x2f, 0xfa,
        0x00, 0x01, 0x3b, 0x2c, 0x07, 0x6b, 0x00, 0x00, 0x00, 0x00, 0x70, 0x26, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00,
    ];
    let mut grid = GridConfig::new(NodeId::new(2).unwrap());
    grid.udp_checksum = false;
    let underlay = Underlay {
        mac: EthernetAddress([0x5e, 0xd6, 0x23, 0x91, 0x1a, 0x86]),
        ip: P2,
    };
    let mut o = Overlay::new(grid, underlay, Limits::default(), 1).unwrap();
    o.add_network(&NetworkConfig {
        name: "grid".to_string(),
        vni: vni(42),
        vlan: None,
        mode: Default::default(),
    })
    .unwrap();
    o.add_peer(&PeerConfig {
        node: NodeId::new(1).unwrap(),
        name: Some("linux".to_string()),
        address: Some(US.ip),
        region: None,
        private_address: None,
        public_address: None,
        networks: vec!["grid".to_string()],
    })
    .unwrap();
    let out = forward(o.rx_uplink(t(0), &linux));
    assert_eq!(out, [(Egress::Link, linux[50..].to_vec())]);
}

#[test]
fn too_big_with_df_gets_fragmentation_needed() {
    let mut o = overlay();
    o.add_static(vni(A), mac(9), Location::Remote(P2), None, t(0))
        .unwrap();
    // Exactly the MTU (1450 bytes of IP) passes.
    let fits = udp_frame(mac(9), mac(1), 1450 - 28, true);
    let out = forward(o.rx_link(t(0), vni(A), &fits));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.len(), 1500 + ETHERNET_HEADER_LEN);

    // One byte more with DF: refused, ICMP back to the sender on the link.
    let big = udp_frame(mac(9), mac(1), 1450 - 28 + 1, true);
    let OverlayVerdict::Refuse { reason, reply } = o.rx_link(t(0), vni(A), &big) else {
        panic!("expected Refuse");
    };
    assert_eq!(reason, OverlayDrop::TooBig);
    assert_eq!(reply.0, Egress::Link);
    let eth = EthernetFrame::new_checked(&reply.1[..]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (mac(9), mac(1)));
    let ipp = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ipp.verify_checksum());
    assert_eq!((ipp.src_addr(), ipp.dst_addr()), (ip(2), ip(1)));
    assert!(ipp.total_len() as usize <= 576);
    let icmp = Icmpv4Packet::new_checked(ipp.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(icmp.msg_type(), Icmpv4Message::DstUnreachable);
    assert_eq!(icmp.msg_code(), 4);
    assert_eq!(&ipp.payload()[6..8], &1450u16.to_be_bytes(), "next-hop MTU");
    // The quote starts with the original IP header, byte for byte.
    assert_eq!(&icmp.data()[..20], &big[14..34]);
    // smoltcp's Icmpv4Repr refuses a truncated quote, so check the quoted header by hand.
    let quoted = Ipv4Packet::new_unchecked(icmp.data());
    assert_eq!((quoted.src_addr(), quoted.dst_addr()), (ip(1), ip(2)));
    assert_eq!(icmp.data().len(), 576 - 28);
    // Without DF: dropped silently, counted.
    let big_no_df = udp_frame(mac(9), mac(1), 1450 - 28 + 1, false);
    assert_eq!(
        o.rx_link(t(0), vni(A), &big_no_df),
        OverlayVerdict::Drop(OverlayDrop::TooBig)
    );
    let c = o.network_counters(vni(A)).unwrap();
    assert_eq!((c.drops.too_big, c.icmp_frag_needed), (2, 1));
    assert_eq!(o.drops().too_big, 2);
    // A too-big broadcast: nothing goes to the peers, no ICMP.
    let big_bcast = udp_frame(EthernetAddress::BROADCAST, mac(1), 1500, true);
    assert_eq!(forward(o.rx_link(t(0), vni(A), &big_bcast)), []);
    // Too big for an unknown destination (flooded): no copy to the peers, but the
    // sender hears the MTU all the same.
    let big_unknown = udp_frame(mac(77), mac(1), 1450 - 28 + 1, true);
    let out = forward(o.rx_link(t(0), vni(A), &big_unknown));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, Egress::Link);
    let eth = EthernetFrame::new_checked(&out[0].1[..]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (mac(77), mac(1)));
    let ipp = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(ipp.payload()).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (Icmpv4Message::DstUnreachable, 4)
    );
    let c = o.network_counters(vni(A)).unwrap();
    assert_eq!((c.drops.too_big, c.icmp_frag_needed), (4, 2));
}

#[test]
fn no_icmp_about_icmp_errors() {
    // An ICMP "port unreachable" too big for the MTU must not cause another error.
    let mut inner_ip = vec![0u8; 1500];
    let repr = Ipv4Repr {
        src_addr: ip(1),
        dst_addr: ip(2),
        next_header: IpProtocol::Icmp,
        payload_len: 1480,
        hop_limit: 64,
    };
    let mut p = Ipv4Packet::new_unchecked(&mut inner_ip[..]);
    repr.emit(&mut p, &ChecksumCapabilities::default());
    p.payload_mut()[0] = 3;
    p.payload_mut()[1] = 3;
    let frame = ethernet(mac(9), mac(1), EthernetProtocol::Ipv4, &inner_ip);
    assert_eq!(frag_needed(&frame, 1450), None);
    // An echo request of the same size does get one.
    let mut p = Ipv4Packet::new_unchecked(&mut inner_ip[..]);
    p.payload_mut()[0] = 8;
    p.payload_mut()[1] = 0;
    let frame = ethernet(mac(9), mac(1), EthernetProtocol::Ipv4, &inner_ip);
    assert!(frag_needed(&frame, 1450).is_some());
}

#[test]
fn unresolved_neighbor_is_counted() {
    let mut o = Overlay::from_config(&config(), US, Limits::default(), 7).unwrap();
    assert_eq!(o.peers_without_neighbor().collect::<Vec<_>>(), [P2, P3]);
    o.add_static(vni(A), mac(9), Location::Remote(P2), None, t(0))
        .unwrap();
    let frame = udp_frame(mac(9), mac(1), 10, false);
    assert_eq!(
        o.rx_link(t(0), vni(A), &frame),
        OverlayVerdict::Drop(OverlayDrop::NoNeighbor)
    );
    o.set_neighbor(P2, Some(P2_MAC)).unwrap();
    assert_eq!(o.peers_without_neighbor().collect::<Vec<_>>(), [P3]);
    assert_eq!(forward(o.rx_link(t(0), vni(A), &frame)).len(), 1);
    // A flood reaches the resolved peer; the other copy is counted.
    let out = forward(o.rx_link(
        t(0),
        vni(A),
        &udp_frame(EthernetAddress::BROADCAST, mac(1), 1, false),
    ));
    assert_eq!(out.len(), 1);
    assert_eq!(o.peer_counters(P3).unwrap().no_neighbor, 1);
    assert_eq!(o.drops().no_neighbor, 2);
}

#[test]
fn appliance_port() {
    let mut o = overlay();
    o.attach_appliance(vni(A), Some(APPLIANCE_MAC)).unwrap();
    o.add_static(vni(A), mac(9), Location::Remote(P2), None, t(0))
        .unwrap();
    // Link -> appliance MAC: to the appliance only.
    let f = udp_frame(APPLIANCE_MAC, mac(1), 10, false);
    assert_eq!(
        forward(o.rx_link(t(0), vni(A), &f)),
        [(Egress::Appliance, f.clone())]
    );
    // Remote -> appliance MAC.
    assert_eq!(
        forward(o.rx_uplink(t(0), &from_peer(P2, vni(A), &f))),
        [(Egress::Appliance, f.clone())]
    );
    // Broadcast from the link: peers and the appliance, not the link.
    let b = udp_frame(EthernetAddress::BROADCAST, mac(1), 10, false);
    let out = forward(o.rx_link(t(0), vni(A), &b));
    assert_eq!(
        out.iter().filter(|(e, _)| *e == Egress::Appliance).count(),
        1
    );
    assert_eq!(out.iter().filter(|(e, _)| *e == Egress::Uplink).count(), 2);
    assert!(!out.iter().any(|(e, _)| *e == Egress::Link));
    // Broadcast from a peer: link and appliance.
    let out = forward(o.rx_uplink(t(0), &from_peer(P3, vni(A), &b)));
    assert_eq!(
        out,
        [(Egress::Link, b.clone()), (Egress::Appliance, b.clone())]
    );
    // The appliance replies to a remote container and to a local one.
    let r = udp_frame(mac(9), APPLIANCE_MAC, 10, false);
    let out = forward(o.rx_appliance(t(0), vni(A), &r));
    assert_eq!(out.len(), 1);
    assert_eq!(opened(&out[0].1).0, P2);
    let l = udp_frame(mac(1), APPLIANCE_MAC, 10, false);
    assert_eq!(
        forward(o.rx_appliance(t(0), vni(A), &l)),
        [(Egress::Link, l.clone())]
    );
    // The appliance's MAC is not learned as a link address.
    assert_eq!(o.lookup(vni(A), &APPLIANCE_MAC, t(0)), None);
    // Network B has no appliance attached: broadcasts do not go to it.
    let out = forward(o.rx_uplink(t(0), &from_peer(P2, vni(B), &b)));
    assert_eq!(out, [(Egress::Link, b)]);
}

#[test]
fn control_operations() {
    let mut o = overlay();
    // Static entries must name a peer that carries the network.
    assert_eq!(
        o.add_static(vni(B), mac(9), Location::Remote(P3), None, t(0)),
        Err(OverlayError::PeerNotInNetwork {
            peer: P3,
            vni: vni(B)
        })
    );
    assert_eq!(
        o.add_static(
            vni(A),
            mac(9),
            Location::Remote(Ipv4Address::new(192, 0, 2, 99)),
            None,
            t(0)
        ),
        Err(OverlayError::UnknownPeer(Ipv4Address::new(192, 0, 2, 99)))
    );
    assert!(matches!(
        o.add_static(vni(999), mac(9), Location::Local, None, t(0)),
        Err(OverlayError::UnknownNetwork(_))
    ));
    assert_eq!(
        o.add_static(
            vni(A),
            EthernetAddress::BROADCAST,
            Location::Local,
            Some(ip(3)),
            t(0)
        ),
        Err(OverlayError::Table(TableError::NotUnicastMac))
    );

    // Peer 2 leaves network A: its entries there go, its B entries stay.
    o.add_static(vni(A), mac(9), Location::Remote(P2), Some(ip(9)), t(0))
        .unwrap();
    o.add_static(vni(B), mac(9), Location::Remote(P2), Some(ip(9)), t(0))
        .unwrap();
    o.add_peer(&PeerConfig {
        node: NodeId::new(2).unwrap(),
        name: None,
        address: Some(P2),
        region: None,
        private_address: None,
        public_address: None,
        networks: vec!["b".to_string()],
    })
    .unwrap();
    assert_eq!(o.lookup(vni(A), &mac(9), t(0)), None);
    assert_eq!(o.lookup(vni(B), &mac(9), t(0)), Some(Location::Remote(P2)));
    // Its neighbor MAC was kept across the update.
    assert_eq!(o.peers_without_neighbor().count(), 0);
    // Removing it removes the rest; its packets are then from an unknown peer.
    assert!(o.remove_peer(P2));
    assert_eq!(o.lookup(vni(B), &mac(9), t(0)), None);
    let inner = udp_frame(mac(1), mac(50), 1, false);
    assert_eq!(
        o.rx_uplink(t(0), &from_peer(P2, vni(B), &inner)),
        OverlayVerdict::Drop(OverlayDrop::UnknownPeer)
    );
    // Peers that collide with us or another peer are refused.
    assert_eq!(
        o.add_peer(&PeerConfig {
            node: NodeId::new(3).unwrap(),
            name: None,
            address: Some(Ipv4Address::new(192, 0, 2, 50)),
            region: None,
            private_address: None,
            public_address: None,
            networks: vec![],
        }),
        Err(OverlayError::Config(ConfigError::DuplicatePeerNode(
            NodeId::new(3).unwrap()
        )))
    );
    assert_eq!(
        o.add_peer(&PeerConfig {
            node: NodeId::new(9).unwrap(),
            name: None,
            address: Some(US.ip),
            region: None,
            private_address: None,
            public_address: None,
            networks: vec![],
        }),
        Err(OverlayError::PeerIsSelf(US.ip))
    );
    // Removing a network removes it from peers: frames for it are unknown.
    assert!(o.remove_network(vni(A)));
    assert_eq!(
        o.rx_link(t(0), vni(A), &inner),
        OverlayVerdict::Drop(OverlayDrop::UnknownVni)
    );
    let status = o.status(t(0));
    assert!(status.peers.iter().all(|p| p.networks.is_empty()));
}

#[test]
fn status_serializes() {
    let mut o = overlay();
    o.add_static(vni(A), mac(9), Location::Remote(P2), Some(ip(9)), t(0))
        .unwrap();
    forward(o.rx_link(t(10), vni(A), &udp_frame(mac(9), mac(1), 1, false)));
    let status = o.status(t(15));
    let json = serde_json::to_string(&status).unwrap();
    assert!(json.contains(r#""node_address":"10.81.0.1""#), "{json}");
    assert!(
        json.contains(r#"{"mac":"02:42:0a:51:80:01","location":null,"static":false,"age_secs":5}"#),
        "{json}"
    );
    assert!(
        json.contains(
            r#"{"mac":"02:42:0a:51:80:09","location":"192.0.2.2","static":true,"age_secs":null}"#
        ),
        "{json}"
    );
    assert!(
        json.contains(r#""arp":[{"ip":"10.81.128.9","mac":"02:42:0a:51:80:09"}]"#),
        "{json}"
    );
    assert!(json.contains(r#""tx_packets":1"#), "{json}");
}

/// Random traffic on random networks: no frame ever leaves in another network's VNI,
/// towards a peer outside the network, or back out of the port it came from.
#[test]
fn networks_never_leak() {
    let mut o = overlay();
    o.attach_appliance(vni(A), Some(APPLIANCE_MAC)).unwrap();
    // The same MACs exist in both networks, at different places.
    for n in 0..4 {
        o.add_static(
            vni(A),
            mac(20 + n),
            Location::Remote(P3),
            Some(ip(20 + n)),
            t(0),
        )
        .unwrap();
        o.add_static(
            vni(B),
            mac(20 + n),
            Location::Remote(P2),
            Some(ip(20 + n)),
            t(0),
        )
        .unwrap();
    }
    let members = |v: Vni| -> Vec<Ipv4Address> {
        if v == vni(A) {
            vec![P2, P3]
        } else {
            vec![P2]
        }
    };
    let mut rng = Rng::new(0x2545_f491);
    let mut next = move |n: u64| rng.below(n);
    let dsts = [
        EthernetAddress::BROADCAST,
        APPLIANCE_MAC,
        mac(1),
        mac(2),
        mac(20),
        mac(21),
        mac(99),
    ];
    for step in 0..3000 {
        let v = if next(2) == 0 { vni(A) } else { vni(B) };
        let dst = dsts[next(dsts.len() as u64) as usize];
        let src = mac(1 + next(3) as u8);
        let frame = if next(4) == 0 {
            arp_request(src, ip(1), ip(20 + next(6) as u8))
        } else {
            udp_frame(dst, src, next(1500) as usize, next(2) == 0)
        };
        let (verdict, ingress) = match next(3) {
            0 => (o.rx_link(t(step), v, &frame), Egress::Link),
            1 => (o.rx_appliance(t(step), v, &frame), Egress::Appliance),
            _ => {
                let peer = if next(2) == 0 { P2 } else { P3 };
                (
                    o.rx_uplink(t(step), &from_peer(peer, v, &frame)),
                    Egress::Uplink,
                )
            }
        };
        let outs = match verdict {
            OverlayVerdict::Forward(out) => out,
            OverlayVerdict::Refuse { reply, .. } => vec![reply],
            OverlayVerdict::Drop(_) => vec![],
        };
        for (egress, f) in outs {
            if egress == Egress::Uplink {
                assert_ne!(
                    ingress,
                    Egress::Uplink,
                    "step {step}: uplink back to uplink"
                );
                let (peer, got, _, inner) = opened(&f);
                assert_eq!(got, v, "step {step}: VNI changed");
                assert!(members(v).contains(&peer), "step {step}: {peer} not in {v}");
                assert_eq!(inner, frame);
            } else {
                let is_reply =
                    EthernetFrame::new_checked(&f[..]).unwrap().dst_addr() == src && f != frame;
                if !is_reply {
                    assert_ne!(egress, ingress, "step {step}: back out of its port");
                }
            }
            if egress == Egress::Appliance {
                assert_eq!(v, vni(A), "step {step}: appliance is only attached to A");
            }
        }
    }
}

#[test]
fn garbage_never_panics() {
    let mut o = overlay();
    o.attach_appliance(vni(A), Some(APPLIANCE_MAC)).unwrap();
    let good = from_peer(P2, vni(A), &udp_frame(mac(1), mac(50), 40, true));
    let mut state = 0x1234_5678_9abc_def0u64;
    for i in 0..20000u64 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut f = good.clone();
        // Flip a few bytes, then cut somewhere.
        for k in 0..(state % 4) {
            let at = ((state >> (8 * k)) as usize) % f.len();
            f[at] ^= (state >> 40) as u8 | 1;
        }
        f.truncate(((state >> 20) as usize) % (f.len() + 1));
        let _ = o.rx_uplink(t(i as i64), &f);
        let _ = o.rx_link(t(i as i64), vni(A), &f);
        let _ = o.rx_appliance(t(i as i64), vni(A), &f);
    }
}

mod sleeve;
