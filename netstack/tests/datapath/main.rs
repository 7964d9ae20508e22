//! The overlay datapath through `Netstack::poll`, with real frames on in-memory ports:
//! underlay ARP, encapsulation to resolved peers, decapsulation onto the link with the
//! network's VLAN tag, the node address answering from the link and from peers, and
//! frames never crossing networks.

#[path = "../common/mod.rs"]
mod common;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, IpProtocol, Ipv4Address, Ipv4Cidr, Ipv4Packet,
};
use weft_netstack::base::ports::{SLEEVE_PORT, VXLAN_PORT};
use weft_netstack::base::test_rng::Rng;
use weft_netstack::base::{NicAddress, NicId, VlanId, Vni, MAX_FRAME_LEN};
use weft_netstack::pipeline::datapath::OverlayPath;
use weft_netstack::stage::overlay::config::{NetworkConfig, OverlayConfig, PeerConfig};
use weft_netstack::stage::overlay::{Egress, Limits, Overlay, OverlayVerdict, Underlay};
use weft_netstack::table::fdb::Location;
use weft_netstack::wire::probe::{self, Echo};
use weft_netstack::wire::vlan::{self, Tag};
use weft_netstack::wire::vxlan::{self, DfPolicy, Outer};
use weft_netstack::{MemPort, Netstack, PollResult};

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x01]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x02]);
const UPLINK_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 11);
const GATEWAY: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
const P2: Ipv4Address = Ipv4Address::new(192, 0, 2, 12);
const P3: Ipv4Address = Ipv4Address::new(192, 0, 2, 13);
const P4_FAR: Ipv4Address = Ipv4Address::new(198, 51, 100, 14);
const P2_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x12]);
const P3_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x13]);
const GW_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x99]);
const NODE: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);

const A: u32 = 100;
const B: u32 = 200;
const VLAN_B: u16 = 200;

fn vni(n: u32) -> Vni {
    Vni::new(n).unwrap()
}

/// A container MAC / overlay address.
fn mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, n])
}

fn ip(n: u8) -> Ipv4Address {
    Ipv4Address::new(10, 81, 128, n)
}

fn config(doc: &str) -> OverlayConfig {
    serde_json::from_str(doc).unwrap()
}

const TWO_NETWORKS: &str = r#"{
    "grid": {"node": 1},
    "networks": [{"name": "a", "vni": 100}, {"name": "b", "vni": 200, "vlan": 200}],
    "peers": [
        {"node": 2, "address": "192.0.2.12", "networks": ["a", "b"]},
        {"node": 3, "address": "192.0.2.13", "networks": ["a"]},
        {"node": 4, "address": "198.51.100.14", "networks": ["a"]}
    ]
}"#;

struct Rig {
    stack: Netstack,
    uplink: MemPort,
    link: MemPort,
    now: Instant,
}

impl Rig {
    fn new(doc: &str, link_cidr: Ipv4Cidr) -> Rig {
        let now = Instant::from_millis(1_000);
        let mut stack = Netstack::new(UPLINK_MAC, LINK_MAC, 7, now);
        stack.configure(
            NicId::Uplink,
            Some(NicAddress {
                cidr: Ipv4Cidr::new(UPLINK_IP, 24),
                gateway: Some(GATEWAY),
            }),
        );
        stack.configure(
            NicId::Link,
            Some(NicAddress {
                cidr: link_cidr,
                gateway: None,
            }),
        );
        let underlay = Underlay {
            mac: UPLINK_MAC,
            ip: UPLINK_IP,
        };
        let overlay = Overlay::from_config(&config(doc), underlay, Limits::default(), 3).unwrap();
        stack.set_overlay(Some(OverlayPath::new(overlay, LINK_MAC).unwrap()));
        Rig {
            stack,
            uplink: MemPort::new(UPLINK_MAC),
            link: MemPort::new(LINK_MAC),
            now,
        }
    }

    /// Two networks, peers resolved (their ARP replies seen), ports drained.
    fn resolved() -> Rig {
        let mut rig = Rig::new(TWO_NETWORKS, Ipv4Cidr::new(NODE, 16));
        rig.poll();
        for (mac, ip) in [(P2_MAC, P2), (P3_MAC, P3), (GW_MAC, GATEWAY)] {
            rig.uplink
                .inject(&probe::arp_reply(mac, ip, UPLINK_MAC, UPLINK_IP));
        }
        rig.poll();
        rig.poll();
        rig.uplink.take_transmitted();
        rig.link.take_transmitted();
        rig
    }

    fn path(&self) -> &OverlayPath {
        self.stack.overlay().unwrap()
    }

    fn path_mut(&mut self) -> &mut OverlayPath {
        self.stack.overlay_mut().unwrap()
    }

    /// A static FDB entry: `mac` in `vni` lives behind `peer`.
    fn pin(&mut self, vni: Vni, mac: EthernetAddress, peer: Ipv4Address, ip: Option<Ipv4Address>) {
        let now = self.now;
        self.path_mut()
            .add_static(vni, mac, Location::Remote(peer), ip, now)
            .unwrap();
    }

    fn poll(&mut self) -> PollResult {
        self.now += Duration::from_millis(1);
        self.stack.poll(self.now, &mut self.uplink, &mut self.link)
    }

    /// Inject on the link, poll twice (the appliance answers on the second), and
    /// return (uplink, link) output.
    fn inject_link(&mut self, frame: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        self.link.inject(frame);
        self.poll();
        self.poll();
        (self.uplink.take_transmitted(), self.link.take_transmitted())
    }

    fn inject_uplink(&mut self, frame: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        self.uplink.inject(frame);
        self.poll();
        self.poll();
        (self.uplink.take_transmitted(), self.link.take_transmitted())
    }
}

/// The ARP request or reply in `frame`: (operation, sender MAC, sender IP, target IP).
fn arp_of(frame: &[u8]) -> Option<(ArpOperation, EthernetAddress, Ipv4Address, Ipv4Address)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()? {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } => Some((
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
        )),
        _ => None,
    }
}

/// A VXLAN packet from peer `from` (MAC `from_mac`) to us carrying `inner` on `vni`.
fn vxlan_from(from: Ipv4Address, from_mac: EthernetAddress, vni: Vni, inner: &[u8]) -> Vec<u8> {
    let outer = Outer {
        src_mac: from_mac,
        dst_mac: UPLINK_MAC,
        src_ip: from,
        dst_ip: UPLINK_IP,
        src_port: 49_152,
        dst_port: VXLAN_PORT,
        vni,
        ident: 1,
        ttl: 64,
        df: DfPolicy::Unset,
        udp_checksum: true,
    };
    let mut out = Vec::new();
    vxlan::encapsulate(&outer, inner, &mut out).unwrap();
    out
}

/// (peer address, outer destination MAC, VNI, inner frame) of a VXLAN frame we sent.
fn decap(frame: &[u8]) -> (Ipv4Address, EthernetAddress, Vni, Vec<u8>) {
    let d = vxlan::decapsulate(frame, VXLAN_PORT).expect("a VXLAN frame");
    assert_eq!(d.src_ip, UPLINK_IP);
    assert_eq!(d.outer_src_mac, UPLINK_MAC);
    let dst_mac = EthernetFrame::new_checked(frame).unwrap().dst_addr();
    (d.dst_ip, dst_mac, d.vni, d.inner.to_vec())
}

fn echo(src: (EthernetAddress, Ipv4Address), dst: (EthernetAddress, Ipv4Address)) -> Echo {
    Echo {
        src_mac: src.0,
        dst_mac: dst.0,
        src_ip: src.1,
        dst_ip: dst.1,
        ident: 0x77,
        seq_no: 1,
        data: b"weft overlay".to_vec(),
    }
}

fn tagged(frame: &[u8], vlan: u16) -> Vec<u8> {
    vlan::tag(frame.to_vec(), VlanId::new(vlan))
}

#[test]
fn resolves_underlay_neighbours_then_encapsulates() {
    let mut rig = Rig::new(TWO_NETWORKS, Ipv4Cidr::new(NODE, 16));
    let r = rig.poll();
    // Who-has for both on-subnet peers and for the gateway (the off-subnet peer's hop).
    let asked: Vec<Ipv4Address> = rig
        .uplink
        .take_transmitted()
        .iter()
        .map(|f| {
            let (op, sender_mac, sender_ip, target) = arp_of(f).expect("ARP");
            assert_eq!(
                (op, sender_mac, sender_ip),
                (ArpOperation::Request, UPLINK_MAC, UPLINK_IP)
            );
            target
        })
        .collect();
    assert_eq!(asked, vec![P2, P3, GATEWAY]);
    // The retry is what the stack asks to be polled for.
    assert!(r
        .next_poll
        .is_some_and(|d| d <= weft_netstack::pipeline::datapath::FIRST_RETRY));

    // Before resolution a broadcast from a container cannot reach the peers.
    let request = probe::arp_request(mac(1), ip(1), ip(12));
    let (up, _) = rig.inject_link(&request);
    assert!(up.is_empty());
    assert_eq!(rig.path().overlay().drops().no_neighbor, 3);

    for (m, a) in [(P2_MAC, P2), (P3_MAC, P3), (GW_MAC, GATEWAY)] {
        rig.uplink
            .inject(&probe::arp_reply(m, a, UPLINK_MAC, UPLINK_IP));
    }
    rig.poll();
    let (up, link) = rig.inject_link(&request);
    assert!(link.is_empty(), "split horizon: nothing back to the link");
    let mut got: Vec<(Ipv4Address, EthernetAddress, Vni)> = up
        .iter()
        .map(|f| {
            let (to, dst_mac, v, inner) = decap(f);
            assert_eq!(inner, request, "the inner frame is intact");
            (to, dst_mac, v)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (P2, P2_MAC, vni(A)),
            (P3, P3_MAC, vni(A)),
            (P4_FAR, GW_MAC, vni(A))
        ]
    );
    let st = rig.path().status(rig.now);
    assert_eq!(st.underlay_neighbors.len(), 3);
    assert_eq!(st.underlay_arp.learned, 3);
    // Resolved: no more requests, and no retry timer.
    rig.poll();
    assert!(rig.uplink.take_transmitted().is_empty());
    assert_eq!(rig.path().neighbors().next_try(), None);
}

#[test]
fn a_peer_that_moves_is_followed() {
    let mut rig = Rig::resolved();
    let moved = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x22]);
    // P2 rebooted with another MAC and asks for us: we learn it from the request.
    let (up, _) = rig.inject_uplink(&probe::arp_request(moved, P2, UPLINK_IP));
    // smoltcp answers the request as before.
    assert!(up
        .iter()
        .any(|f| arp_of(f).is_some_and(|a| a.0 == ArpOperation::Reply)));
    rig.pin(vni(A), mac(12), P2, None);
    let ping = probe::icmp_echo_request(&echo((mac(1), ip(1)), (mac(12), ip(12))));
    let (up, _) = rig.inject_link(&ping);
    assert_eq!(up.len(), 1);
    let (to, dst_mac, _, _) = decap(&up[0]);
    assert_eq!((to, dst_mac), (P2, moved));
}

#[test]
fn decapsulated_frames_reach_the_link_with_their_networks_tag() {
    let mut rig = Rig::resolved();
    let inner = probe::icmp_echo_request(&echo((mac(12), ip(12)), (mac(1), ip(1))));
    let (_, link) = rig.inject_uplink(&vxlan_from(P2, P2_MAC, vni(A), &inner));
    assert_eq!(link, vec![inner.clone()], "network a is untagged");
    let (_, link) = rig.inject_uplink(&vxlan_from(P2, P2_MAC, vni(B), &inner));
    assert_eq!(link, vec![tagged(&inner, VLAN_B)], "network b is VLAN 200");
    // P3 does not carry b: refused and counted, nothing delivered.
    let (_, link) = rig.inject_uplink(&vxlan_from(P3, P3_MAC, vni(B), &inner));
    assert!(link.is_empty());
    assert_eq!(rig.path().overlay().drops().unknown_peer, 1);
    // An unknown VNI is dropped and counted.
    let (_, link) = rig.inject_uplink(&vxlan_from(P2, P2_MAC, vni(300), &inner));
    assert!(link.is_empty());
    assert_eq!(rig.path().overlay().drops().unknown_vni, 1);
    // The uplink NIC counted every frame; the overlay drops are not NIC drops.
    let c = rig.stack.nic(NicId::Uplink).counters;
    assert_eq!(c.drops.total(), 0);
}

#[test]
fn node_address_answers_containers_on_every_network() {
    let mut rig = Rig::resolved();
    for vlan in [None, Some(VLAN_B)] {
        let wrap = |f: Vec<u8>| match vlan {
            Some(v) => tagged(&f, v),
            None => f,
        };
        let (up, link) = rig.inject_link(&wrap(probe::arp_request(mac(1), ip(1), NODE)));
        // The request also floods to the peers of the network (they may answer too).
        assert!(up.iter().all(|f| vxlan::decapsulate(f, VXLAN_PORT).is_ok()));
        assert_eq!(link.len(), 1, "{vlan:?}: one ARP reply");
        let (tag, reply) = vlan::untag(&link[0]).unwrap();
        assert_eq!(
            tag,
            vlan.map_or(Tag::Untagged, |v| Tag::Vlan(VlanId::new(v).unwrap()))
        );
        let reply = probe::parse_arp_reply(reply.as_ref()).expect("an ARP reply");
        assert_eq!((reply.sender_mac, reply.sender_ip), (LINK_MAC, NODE));
        assert_eq!((reply.frame_dst, reply.target_ip), (mac(1), ip(1)));

        let request = echo((mac(1), ip(1)), (LINK_MAC, NODE));
        let (up, link) = rig.inject_link(&wrap(probe::icmp_echo_request(&request)));
        assert!(
            up.is_empty(),
            "{vlan:?}: unicast to the appliance stays local"
        );
        assert_eq!(link.len(), 1);
        let (_, reply) = vlan::untag(&link[0]).unwrap();
        let reply = probe::parse_icmp_echo_reply(reply.as_ref()).expect("an echo reply");
        assert_eq!(
            (reply.src_ip, reply.dst_ip, reply.data),
            (NODE, ip(1), request.data)
        );
    }
}

#[test]
fn node_address_answers_remote_containers_through_their_peer() {
    let mut rig = Rig::resolved();
    rig.pin(vni(B), mac(12), P2, Some(ip(12)));
    let (up, link) = rig.inject_uplink(&vxlan_from(
        P2,
        P2_MAC,
        vni(B),
        &probe::arp_request(mac(12), ip(12), NODE),
    ));
    // The request is also delivered to the local segment of b (VLAN 200).
    assert_eq!(link.len(), 1);
    assert_eq!(
        vlan::untag(&link[0]).unwrap().0,
        Tag::Vlan(VlanId::new(VLAN_B).unwrap())
    );
    assert_eq!(up.len(), 1, "known unicast: one copy, to P2 only");
    let (to, dst_mac, v, inner) = decap(&up[0]);
    assert_eq!((to, dst_mac, v), (P2, P2_MAC, vni(B)));
    let reply = probe::parse_arp_reply(&inner).expect("an ARP reply");
    assert_eq!(
        (reply.sender_mac, reply.sender_ip, reply.target_ip),
        (LINK_MAC, NODE, ip(12))
    );

    let request = echo((mac(12), ip(12)), (LINK_MAC, NODE));
    let (up, link) = rig.inject_uplink(&vxlan_from(
        P2,
        P2_MAC,
        vni(B),
        &probe::icmp_echo_request(&request),
    ));
    assert!(link.is_empty());
    assert_eq!(up.len(), 1);
    let (to, _, v, inner) = decap(&up[0]);
    assert_eq!((to, v), (P2, vni(B)));
    let reply = probe::parse_icmp_echo_reply(&inner).expect("an echo reply");
    assert_eq!((reply.src_ip, reply.dst_ip), (NODE, ip(12)));
}

#[test]
fn frames_never_cross_networks() {
    let mut rig = Rig::resolved();
    rig.pin(vni(A), mac(12), P2, None);
    let mut rng = Rng::new(0x2545_f491);
    for i in 0..400u32 {
        let r = rng.next_u64() as u32;
        let dst = match r % 4 {
            0 => EthernetAddress::BROADCAST,
            1 => mac(12),
            2 => LINK_MAC,
            _ => mac((r >> 8) as u8 | 1),
        };
        let src = mac(1 + (r >> 16) as u8 % 8);
        let mut frame = match r % 3 {
            0 => probe::arp_request(src, ip(1), Ipv4Address::new(10, 81, 0, (r >> 4) as u8 % 3)),
            _ => probe::icmp_echo_request(&echo((src, ip(1)), (dst, ip(12)))),
        };
        frame[..6].copy_from_slice(&dst.0);
        let (in_vni, wire) = if i % 2 == 0 {
            (vni(A), frame.clone())
        } else {
            (vni(B), tagged(&frame, VLAN_B))
        };
        // Half of them come from the link, half from P2 over VXLAN.
        let from_peer = i % 4 >= 2;
        let (up, link) = if from_peer {
            rig.inject_uplink(&vxlan_from(P2, P2_MAC, in_vni, &frame))
        } else {
            rig.inject_link(&wire)
        };
        for f in &up {
            let Ok(d) = vxlan::decapsulate(f, VXLAN_PORT) else {
                continue;
            };
            assert_eq!(d.vni, in_vni, "frame {i} left on another VNI");
            if in_vni == vni(B) {
                assert_eq!(d.dst_ip, P2, "only P2 carries b");
            }
        }
        for f in &link {
            let want = if in_vni == vni(B) {
                Tag::Vlan(VlanId::new(VLAN_B).unwrap())
            } else {
                Tag::Untagged
            };
            assert_eq!(
                vlan::untag(f).unwrap().0,
                want,
                "frame {i} on the wrong VLAN"
            );
        }
    }
}

#[test]
fn unknown_vlans_are_counted_and_dropped() {
    let mut rig = Rig::resolved();
    let frame = probe::arp_request(mac(1), ip(1), NODE);
    for vid in [300u16, 4095] {
        let mut f = tagged(&frame, 300);
        f[14..16].copy_from_slice(&vid.to_be_bytes());
        let (up, link) = rig.inject_link(&f);
        assert!(up.is_empty() && link.is_empty());
    }
    assert_eq!(rig.path().counters().unknown_vlan, 2);
    // A tagged frame may be four bytes longer than an untagged one; no longer.
    let big = tagged(&vec![0u8; MAX_FRAME_LEN], VLAN_B);
    rig.inject_link(&big[..MAX_FRAME_LEN + vlan::TAG_LEN]);
    rig.inject_link(&[&big[..], &[0]].concat());
    let c = rig.stack.nic(NicId::Link).counters;
    assert_eq!(c.drops.oversize, 1);
}

#[test]
fn untagged_frames_without_an_untagged_network_reach_the_link_address() {
    let doc = r#"{
        "grid": {"node": 1},
        "networks": [{"name": "b", "vni": 200, "vlan": 200}],
        "peers": [{"node": 2, "address": "192.0.2.12", "networks": ["b"]}]
    }"#;
    // The container gateway is outside the grid: the node address is a second one.
    let gateway = Ipv4Address::new(172, 17, 0, 1);
    let mut rig = Rig::new(doc, Ipv4Cidr::new(gateway, 16));
    let plain = (mac(1), Ipv4Address::new(172, 17, 0, 2));
    let (up, link) = rig.inject_link(&probe::arp_request(plain.0, plain.1, gateway));
    assert!(
        up.iter().all(|f| arp_of(f).is_some_and(|a| a.3 == P2)),
        "only underlay ARP"
    );
    assert_eq!(link.len(), 1);
    let reply = probe::parse_arp_reply(&link[0]).expect("untagged ARP reply");
    assert_eq!(reply.sender_ip, gateway);
    // The node address answers on network b only.
    let (_, link) = rig.inject_link(&tagged(&probe::arp_request(mac(2), ip(2), NODE), VLAN_B));
    assert_eq!(link.len(), 1);
    let (tag, reply) = vlan::untag(&link[0]).unwrap();
    assert_eq!(tag, Tag::Vlan(VlanId::new(VLAN_B).unwrap()));
    assert_eq!(
        probe::parse_arp_reply(reply.as_ref()).unwrap().sender_ip,
        NODE
    );
    // Untagged unicast to another MAC is still other_host there.
    let other = probe::icmp_echo_request(&echo(plain, (mac(9), Ipv4Address::new(172, 17, 0, 9))));
    rig.inject_link(&other);
    assert_eq!(rig.stack.nic(NicId::Link).counters.drops.other_host, 1);
}

#[test]
fn the_uplink_interface_still_answers_beside_vxlan() {
    let mut rig = Rig::resolved();
    let host = (
        EthernetAddress([0x52, 0x54, 0, 0, 0, 0x77]),
        Ipv4Address::new(192, 0, 2, 77),
    );
    let (up, _) = rig.inject_uplink(&probe::arp_request(host.0, host.1, UPLINK_IP));
    assert_eq!(up.len(), 1);
    assert_eq!(probe::parse_arp_reply(&up[0]).unwrap().sender_ip, UPLINK_IP);
    let request = echo(host, (UPLINK_MAC, UPLINK_IP));
    let (up, _) = rig.inject_uplink(&probe::icmp_echo_request(&request));
    assert_eq!(up.len(), 1);
    assert!(probe::parse_icmp_echo_reply(&up[0]).is_some());
    // UDP 4789 to another address is not ours: smoltcp's business (and it is unicast
    // to our MAC, so not other_host).
    let inner = probe::arp_request(mac(12), ip(12), NODE);
    let mut stray = vxlan_from(P2, P2_MAC, vni(A), &inner);
    let mut ipv4 = Ipv4Packet::new_unchecked(&mut stray[14..]);
    ipv4.set_dst_addr(Ipv4Address::new(192, 0, 2, 200));
    ipv4.fill_checksum();
    // No UDP checksum (zero), so the changed address does not make it a bad one.
    stray[14 + 20 + 6..14 + 20 + 8].fill(0);
    let before = rig.path().overlay().drops().not_vxlan;
    let (_, link) = rig.inject_uplink(&stray);
    assert!(link.is_empty());
    assert_eq!(rig.path().overlay().drops().not_vxlan, before + 1);
    assert_eq!(rig.path().overlay().drops().total(), 0);
}

#[test]
fn too_big_with_df_gets_frag_needed_on_its_vlan() {
    let mut rig = Rig::resolved();
    rig.pin(vni(B), mac(12), P2, None);
    let mut request = echo((mac(1), ip(1)), (mac(12), ip(12)));
    request.data = vec![0x5a; 1472];
    let mut frame = probe::icmp_echo_request(&request);
    let mut ipv4 = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ipv4.set_dont_frag(true);
    ipv4.fill_checksum();
    let (up, link) = rig.inject_link(&tagged(&frame, VLAN_B));
    assert!(up.is_empty(), "never truncated, never sent");
    assert_eq!(link.len(), 1);
    let (tag, reply) = vlan::untag(&link[0]).unwrap();
    assert_eq!(tag, Tag::Vlan(VlanId::new(VLAN_B).unwrap()));
    let eth = EthernetFrame::new_checked(reply.as_ref()).unwrap();
    let ipv4 = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(
        (ipv4.dst_addr(), ipv4.next_header()),
        (ip(1), IpProtocol::Icmp)
    );
    let icmp = Icmpv4Packet::new_checked(ipv4.payload()).unwrap();
    assert_eq!((icmp.msg_type().into(), icmp.msg_code()), (3u8, 4u8));
    assert_eq!(&ipv4.payload()[6..8], &1450u16.to_be_bytes());
    let counters = rig.path().overlay().network_counters(vni(B)).unwrap();
    assert_eq!((counters.icmp_frag_needed, counters.drops.too_big), (1, 1));
}

#[test]
fn runtime_changes_take_effect_without_touching_other_traffic() {
    let mut rig = Rig::resolved();
    let to_p2 = probe::icmp_echo_request(&echo((mac(1), ip(1)), (mac(12), ip(12))));
    let to_p3 = probe::icmp_echo_request(&echo((mac(1), ip(1)), (mac(13), ip(13))));
    rig.pin(vni(A), mac(12), P2, None);
    rig.pin(vni(A), mac(13), P3, None);
    let dest = |rig: &mut Rig, frame: &[u8]| -> Vec<Ipv4Address> {
        rig.inject_link(frame)
            .0
            .iter()
            .map(|f| decap(f).0)
            .collect()
    };
    assert_eq!(dest(&mut rig, &to_p2), vec![P2]);
    assert_eq!(dest(&mut rig, &to_p3), vec![P3]);
    assert!(rig.path_mut().remove_peer(P2));
    // Its static entry went with it: now unknown unicast, flooded to the others of a.
    assert_eq!(dest(&mut rig, &to_p2), vec![P3, P4_FAR]);
    assert_eq!(dest(&mut rig, &to_p3), vec![P3]);
    rig.path_mut()
        .add_peer(&PeerConfig {
            node: weft_netstack::base::NodeId::new(2).unwrap(),
            name: None,
            address: Some(P2),
            region: None,
            private_address: None,
            public_address: None,
            networks: vec!["a".into()],
        })
        .unwrap();
    rig.pin(vni(A), mac(12), P2, None);
    // Re-added: its neighbour MAC is known already, traffic flows at once.
    assert_eq!(dest(&mut rig, &to_p2), vec![P2]);

    // A network removed: its VLAN is unknown from then on; the other is untouched.
    assert!(rig.path_mut().remove_network(vni(B)));
    rig.inject_link(&tagged(&to_p2, VLAN_B));
    assert_eq!(rig.path().counters().unknown_vlan, 1);
    assert_eq!(dest(&mut rig, &to_p2), vec![P2]);
    rig.path_mut()
        .add_network(&NetworkConfig {
            name: "c".into(),
            vni: vni(300),
            vlan: VlanId::new(300),
            mode: Default::default(),
        })
        .unwrap();
    assert_eq!(rig.path().vni_on_link(VlanId::new(300)), Some(vni(300)));
    // The VLAN conflict is refused and changes nothing.
    let clash = NetworkConfig {
        name: "d".into(),
        vni: vni(400),
        vlan: None,
        mode: Default::default(),
    };
    assert!(rig.path_mut().add_network(&clash).is_err());
    assert_eq!(rig.path().vni_on_link(None), Some(vni(A)));
}

#[test]
fn a_tag_inside_never_reaches_another_vlan() {
    let mut rig = Rig::resolved();
    let inner = probe::arp_request(mac(12), ip(12), ip(1));
    // From a peer on a's VNI, a frame tagged for b's VLAN: delivering it as it is
    // would put it on VLAN 200 of the link, i.e. on network b.
    let (up, link) = rig.inject_uplink(&vxlan_from(P2, P2_MAC, vni(A), &tagged(&inner, VLAN_B)));
    assert!(up.is_empty() && link.is_empty(), "{link:?}");
    // From the link: double tagged (b outside, anything inside), and a tag inside
    // the untagged network.
    let (up, link) = rig.inject_link(&tagged(&tagged(&inner, 100), VLAN_B));
    assert!(up.is_empty() && link.is_empty());
    let (up, link) = rig.inject_link(&{
        let mut f = tagged(&inner, VLAN_B);
        // 802.1ad outer tag type: not ours to take off, so a's frame with a tag.
        f[12..14].copy_from_slice(&[0x88, 0xa8]);
        f
    });
    assert!(up.is_empty() && link.is_empty());
    let o = rig.path().overlay();
    assert_eq!(o.drops().tagged, 3);
    assert_eq!(o.network_counters(vni(A)).unwrap().drops.tagged, 2);
    assert_eq!(o.network_counters(vni(B)).unwrap().drops.tagged, 1);
}

const SLEEVE_SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// Node 1 (us) and node 2 at P2, network a (VNI 100) in sleeve mode.
fn sleeve_doc(node: u8, peer: u8, peer_address: Ipv4Address) -> String {
    format!(
        r#"{{"grid": {{"node": {node}, "secret": "{SLEEVE_SECRET}"}},
            "networks": [{{"name": "a", "vni": 100, "mode": "sleeve"}}],
            "peers": [{{"node": {peer}, "address": "{peer_address}", "networks": ["a"]}}]}}"#
    )
}

/// A sleeve rig whose peer P2 is resolved and holds `mac(12)`.
fn sleeve_rig() -> Rig {
    let mut rig = Rig::new(&sleeve_doc(1, 2, P2), Ipv4Cidr::new(NODE, 16));
    rig.poll();
    rig.uplink
        .inject(&probe::arp_reply(P2_MAC, P2, UPLINK_MAC, UPLINK_IP));
    rig.poll();
    rig.poll();
    rig.uplink.take_transmitted();
    rig.link.take_transmitted();
    rig.pin(vni(A), mac(12), P2, None);
    rig
}

/// Node 2's overlay, which opens what the rig sends to P2.
fn sleeve_peer() -> Overlay {
    let underlay = Underlay {
        mac: P2_MAC,
        ip: P2,
    };
    Overlay::from_config(
        &config(&sleeve_doc(2, 1, UPLINK_IP)),
        underlay,
        Limits::default(),
        9,
    )
    .unwrap()
}

/// A frame from container 1 to container 12 of `len` bytes whose payload counts `seq`.
fn numbered(seq: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&mac(12).0);
    f[6..12].copy_from_slice(&mac(1).0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = (seq as usize * 7 + i) as u8;
    }
    f
}

/// Sends `frames` from the link in one poll; returns the uplink datagrams and what the
/// peer delivers to its link from them, in order.
fn sleeve_burst(rig: &mut Rig, peer: &mut Overlay, frames: &[Vec<u8>]) -> (usize, Vec<Vec<u8>>) {
    for f in frames {
        rig.link.inject(f);
    }
    rig.poll();
    let up = rig.uplink.take_transmitted();
    assert_eq!(rig.link.pending_rx(), 0, "one poll took the burst");
    let mut delivered = Vec::new();
    for d in &up {
        let r =
            weft_netstack::wire::outer::udp_to_port(d, SLEEVE_PORT).expect("sleeve to port 6783");
        assert_eq!((r.src_ip, r.dst_ip), (UPLINK_IP, P2));
        // Nothing exceeds the underlay MTU: 1500 bytes of IP (1450 + VXLAN's 50).
        assert!(d.len() - 14 <= 1500, "{} bytes of IP", d.len() - 14);
        match peer.rx_uplink(rig.now, d) {
            OverlayVerdict::Forward(out) => delivered.extend(out.into_iter().map(|(e, f)| {
                assert_eq!(e, Egress::Link);
                f
            })),
            v => panic!("not opened: {v:?}"),
        }
    }
    (up.len(), delivered)
}

#[test]
fn small_frames_for_a_sleeve_peer_share_datagrams() {
    let mut rig = sleeve_rig();
    let mut peer = sleeve_peer();
    // 40 frames of 60 bytes: 66 bytes of record each, 21 per 1472-byte message.
    let frames: Vec<Vec<u8>> = (0..40).map(|i| numbered(i, 60)).collect();
    let (datagrams, delivered) = sleeve_burst(&mut rig, &mut peer, &frames);
    assert_eq!(datagrams, 2, "40 small frames in 2 datagrams");
    assert_eq!(delivered, frames, "every frame, in order");
    let st = rig.path().status(rig.now);
    let sl = st.overlay.sleeve.unwrap();
    assert_eq!((sl.sealed_messages, sl.sealed_frames), (2, 40));
    assert_eq!(sl.frames_batched, 38);
    assert_eq!(st.overlay.networks[0].counters.uplink_tx, 40);
    assert_eq!(st.overlay.peers[0].counters.tx_packets, 2);
    let opened = peer.status(rig.now).sleeve.unwrap();
    assert_eq!((opened.opened_messages, opened.opened_frames), (2, 40));
    // A single frame in a later poll goes alone, at once.
    let (datagrams, delivered) = sleeve_burst(&mut rig, &mut peer, &frames[..1]);
    assert_eq!((datagrams, delivered), (1, frames[..1].to_vec()));
}

#[test]
fn large_frames_stay_one_per_datagram_and_mixed_sizes_keep_their_order() {
    let mut rig = sleeve_rig();
    let mut peer = sleeve_peer();
    let mtu = usize::from(rig.path().overlay().mtu_of(vni(A)).unwrap());
    let large: Vec<Vec<u8>> = (0..5).map(|i| numbered(i, 14 + mtu)).collect();
    let (datagrams, delivered) = sleeve_burst(&mut rig, &mut peer, &large);
    assert_eq!(datagrams, 5);
    assert_eq!(delivered, large);
    // Property-style: random sizes, every frame delivered once, in order, in no more
    // datagrams than frames and within the MTU (checked in `sleeve_burst`).
    let mut rng = Rng::new(0x9e37_79b9);
    for round in 0..20u16 {
        let n = 1 + (round as usize * 3) % 50;
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let len = 60 + rng.below((14 + mtu - 60 + 1) as u64) as usize;
                numbered(round * 64 + i as u16, len)
            })
            .collect();
        let total: usize = frames.iter().map(|f| f.len() + 6).sum();
        let (datagrams, delivered) = sleeve_burst(&mut rig, &mut peer, &frames);
        assert_eq!(delivered, frames, "round {round}");
        assert!(datagrams <= frames.len(), "round {round}");
        // Greedy packing: two neighbouring datagrams hold more records than one fits
        // (1472 - 44 bytes), so at most one per half of that, plus one.
        assert!(
            datagrams <= 1 + 2 * total / 1428,
            "round {round}: {datagrams}"
        );
    }
    assert_eq!(rig.path().overlay().drops().total(), 0);
    assert_eq!(peer.drops().total(), 0);
}

mod routed;
mod two_hosts;
