//! Routed delivery into overlay networks through `Netstack::poll` with the router on:
//! a published port reaching a container on a network's VLAN, the routing mesh to a
//! backend behind a peer (source-translated to the node address, out and back as
//! VXLAN), masquerade from an overlay container, and VIP proxy ARP only for local
//! containers. Real frames on in-memory ports, every checksum verified.

use super::*;
use weft_netstack::base::Transport;
use weft_netstack::stage::lb::{BackendConfig, ServiceConfig, ServiceMode};
use weft_netstack::stage::nat::{Nat, NatConfig, PublishRule};
use weft_netstack::stage::route::{Origin, Placement, Router, Segment};

const CLIENT: Ipv4Address = Ipv4Address::new(203, 0, 113, 9);
const FAR: Ipv4Address = Ipv4Address::new(198, 51, 100, 200);
const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);
const SYN: u8 = 0x02;
const SYNACK: u8 = 0x12;

/// A TCP (with `flags`) or UDP frame from `macs.0` to `macs.1`, checksums filled.
pub(super) fn frame(
    macs: (EthernetAddress, EthernetAddress),
    src: (Ipv4Address, u16),
    dst: (Ipv4Address, u16),
    flags: Option<u8>,
) -> Vec<u8> {
    crate::common::frames::ethernet(
        macs.0,
        macs.1,
        &crate::common::frames::ipv4_l4(src, dst, flags, b"weft"),
    )
}

pub(super) use crate::common::frames::{seen, Seen};

/// The frames on VLAN `vlan` (untagged with `None`) of the link output, tags removed.
pub(super) fn on_vlan(link: &[Vec<u8>], vlan: Option<u16>) -> Vec<Vec<u8>> {
    link.iter()
        .filter_map(|f| match vlan::untag(f).ok()? {
            (Tag::Untagged, inner) if vlan.is_none() => Some(inner.as_ref().to_vec()),
            (Tag::Vlan(v), inner) if Some(v) == vlan.and_then(VlanId::new) => {
                Some(inner.as_ref().to_vec())
            }
            _ => None,
        })
        .collect()
}

/// The two-network rig with the router on: the node address is the NAT's node, the
/// gateway's MAC is known to the router.
fn routed_rig(rules: &[PublishRule]) -> Rig {
    let mut rig = Rig::resolved();
    let mut config = NatConfig::new(UPLINK_IP, NODE, Ipv4Cidr::new(NODE, 16));
    config
        .grid
        .push(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 16));
    let mut nat = Nat::new(config, 11);
    for r in rules {
        nat.add_publish(*r).unwrap();
    }
    rig.stack.set_router(Some(Router::new(nat)));
    rig.inject_uplink(&probe::arp_reply(GW_MAC, GATEWAY, UPLINK_MAC, UPLINK_IP));
    rig
}

fn publish(host_port: u16, to: Ipv4Address, port: u16) -> PublishRule {
    PublishRule {
        proto: Transport::Tcp,
        host_port,
        container_address: to,
        container_port: port,
    }
}

fn router(rig: &Rig) -> &Router {
    rig.stack.router().unwrap()
}

#[test]
fn a_published_port_reaches_a_container_on_a_networks_vlan_and_back() {
    let mut rig = routed_rig(&[publish(8080, ip(5), 80)]);
    let client = (CLIENT, 40_000);
    let syn = frame((GW_MAC, UPLINK_MAC), client, (UPLINK_IP, 8080), Some(SYN));
    let (up, link) = rig.inject_uplink(&syn);
    // Not placed yet: asked for on every network, from the node address, as the
    // appliance itself would (the untagged network a, VLAN 200, and the peers).
    let asks = |frames: &[Vec<u8>]| {
        frames
            .iter()
            .filter(|f| arp_of(f) == Some((ArpOperation::Request, LINK_MAC, NODE, ip(5))))
            .count()
    };
    assert_eq!(asks(&on_vlan(&link, None)), 1, "network a on the link");
    assert_eq!(
        asks(&on_vlan(&link, Some(VLAN_B))),
        1,
        "network b on VLAN 200"
    );
    let remote: Vec<Vni> = up
        .iter()
        .map(|f| decap(f))
        .map(|(_, _, v, inner)| {
            assert_eq!(asks(&[inner]), 1);
            v
        })
        .collect();
    assert_eq!(remote.len(), 4, "P2, P3, P4 on a and P2 on b: {remote:?}");
    assert!(on_vlan(&link, Some(VLAN_B))
        .iter()
        .all(|f| seen(f).is_none()));

    // The container answers on VLAN 200: the SYN follows there, with the client's
    // own address (a local container needs no source translation).
    let answer = tagged(&probe::arp_reply(mac(5), ip(5), LINK_MAC, NODE), VLAN_B);
    let (up, link) = rig.inject_link(&answer);
    assert!(up.is_empty(), "nothing for the peers");
    let got: Vec<Seen> = on_vlan(&link, Some(VLAN_B))
        .iter()
        .filter_map(|f| seen(f))
        .collect();
    assert_eq!(
        got,
        vec![Seen {
            dst_mac: mac(5),
            src_mac: LINK_MAC,
            src: client,
            dst: (ip(5), 80),
            ttl: 63,
        }]
    );
    assert!(
        on_vlan(&link, None).iter().all(|f| seen(f).is_none()),
        "not on a"
    );
    assert_eq!(
        router(&rig).placement(ip(5)),
        Some(Placement {
            segment: Segment::Network(vni(B)),
            origin: Origin::Local
        })
    );

    // The reply on VLAN 200 leaves the uplink from the published port.
    let synack = tagged(
        &frame((mac(5), LINK_MAC), (ip(5), 80), client, Some(SYNACK)),
        VLAN_B,
    );
    let (up, link) = rig.inject_link(&synack);
    assert!(link.is_empty());
    let got: Vec<Seen> = up.iter().filter_map(|f| seen(f)).collect();
    assert_eq!(
        got,
        vec![Seen {
            dst_mac: GW_MAC,
            src_mac: UPLINK_MAC,
            src: (UPLINK_IP, 8080),
            dst: client,
            ttl: 63,
        }]
    );
    assert_eq!(router(&rig).counters().routed_into_overlay, 1);
}

#[test]
fn the_routing_mesh_reaches_a_backend_behind_a_peer_as_the_node_address() {
    let mut rig = routed_rig(&[publish(9000, VIP, 80)]);
    let web = ServiceConfig {
        name: "web".into(),
        vip: Some(VIP),
        proto: Transport::Tcp,
        port: 80,
        mode: ServiceMode::Vip,
        backends: vec![BackendConfig {
            address: ip(12),
            port: 8080,
            weight: 1,
        }],
        health: None,
    };
    let now = rig.now;
    let nat = rig.stack.router_mut().unwrap().nat_mut();
    nat.lb_mut().add_service(web, now).unwrap();
    // Control says where the backend's MAC lives (as Docker's overlay pushes it).
    rig.pin(vni(A), mac(12), P2, None);

    let client = (CLIENT, 41_000);
    let syn = frame((GW_MAC, UPLINK_MAC), client, (UPLINK_IP, 9000), Some(SYN));
    let (up, _) = rig.inject_uplink(&syn);
    let asked: Vec<(Ipv4Address, Vni)> = up
        .iter()
        .map(|f| decap(f))
        .filter(|(_, _, _, inner)| {
            arp_of(inner) == Some((ArpOperation::Request, LINK_MAC, NODE, ip(12)))
        })
        .map(|(to, _, v, _)| (to, v))
        .collect();
    assert!(asked.contains(&(P2, vni(A))), "{asked:?}");

    // The backend answers from behind P2: the SYN crosses the underlay as VXLAN to P2
    // on network a, from the node address.
    let answer = vxlan_from(
        P2,
        P2_MAC,
        vni(A),
        &probe::arp_reply(mac(12), ip(12), LINK_MAC, NODE),
    );
    let (up, link) = rig.inject_uplink(&answer);
    assert!(
        link.iter().all(|f| seen(f).is_none()),
        "nothing routed to the link"
    );
    assert_eq!(up.len(), 1, "one VXLAN packet");
    let (to, dst_mac, v, inner) = decap(&up[0]);
    assert_eq!((to, dst_mac, v), (P2, P2_MAC, vni(A)));
    let s = seen(&inner).expect("the SYN inside");
    assert_eq!((s.dst_mac, s.src_mac), (mac(12), LINK_MAC));
    assert_eq!(s.dst, (ip(12), 8080));
    assert_eq!(s.src.0, NODE, "the backend sees the node address");
    assert_eq!(
        router(&rig).placement(ip(12)),
        Some(Placement {
            segment: Segment::Network(vni(A)),
            origin: Origin::Remote
        })
    );

    // The backend's answer comes back the same way and leaves as the published port.
    let synack = frame((mac(12), LINK_MAC), (ip(12), 8080), s.src, Some(SYNACK));
    let (up, link) = rig.inject_uplink(&vxlan_from(P2, P2_MAC, vni(A), &synack));
    assert!(link.is_empty());
    let got: Vec<Seen> = up.iter().filter_map(|f| seen(f)).collect();
    assert_eq!(
        got,
        vec![Seen {
            dst_mac: GW_MAC,
            src_mac: UPLINK_MAC,
            src: (UPLINK_IP, 9000),
            dst: client,
            ttl: 63,
        }]
    );
    let c = router(&rig).counters();
    assert_eq!((c.routed_into_overlay, c.from_remote), (1, 1));
    // The SYN-ACK never reached the node's own TCP stack (it would answer RST).
    assert!(up.iter().all(|f| seen(f).is_some()));
}

#[test]
fn an_overlay_container_is_masqueraded_and_answered_on_its_vlan() {
    let mut rig = routed_rig(&[]);
    let inside = (ip(5), 5_000);
    let out = tagged(&frame((mac(5), LINK_MAC), inside, (FAR, 53), None), VLAN_B);
    let (up, link) = rig.inject_link(&out);
    assert!(link.is_empty());
    let got: Vec<Seen> = up.iter().filter_map(|f| seen(f)).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let s = &got[0];
    assert_eq!((s.dst_mac, s.src.0, s.dst), (GW_MAC, UPLINK_IP, (FAR, 53)));
    let back = frame((GW_MAC, UPLINK_MAC), (FAR, 53), s.src, None);
    let (up, link) = rig.inject_uplink(&back);
    assert!(up.is_empty());
    // Placed by its own frame: no ARP, straight back onto VLAN 200 only.
    assert!(on_vlan(&link, None).is_empty());
    let got: Vec<Seen> = on_vlan(&link, Some(VLAN_B))
        .iter()
        .filter_map(|f| seen(f))
        .collect();
    assert_eq!(
        got,
        vec![Seen {
            dst_mac: mac(5),
            src_mac: LINK_MAC,
            src: (FAR, 53),
            dst: inside,
            ttl: 63,
        }]
    );
}

#[test]
fn vips_are_proxy_answered_to_local_containers_only() {
    let mut rig = routed_rig(&[]);
    let web = ServiceConfig {
        name: "web".into(),
        vip: Some(VIP),
        proto: Transport::Tcp,
        port: 80,
        mode: ServiceMode::Vip,
        backends: vec![BackendConfig {
            address: ip(12),
            port: 8080,
            weight: 1,
        }],
        health: None,
    };
    let now = rig.now;
    let nat = rig.stack.router_mut().unwrap().nat_mut();
    nat.lb_mut().add_service(web, now).unwrap();
    let who_has = probe::arp_request(mac(5), ip(5), VIP);
    let (_, link) = rig.inject_link(&tagged(&who_has, VLAN_B));
    let replies: Vec<_> = on_vlan(&link, Some(VLAN_B))
        .iter()
        .filter_map(|f| arp_of(f))
        .filter(|a| a.0 == ArpOperation::Reply)
        .collect();
    assert_eq!(replies, vec![(ArpOperation::Reply, LINK_MAC, VIP, ip(5))]);
    assert!(
        on_vlan(&link, None).is_empty(),
        "nothing on another network"
    );

    // A container behind P2 asks its own node: nothing from here, on any path.
    let who_has = probe::arp_request(mac(12), ip(12), VIP);
    let (up, link) = rig.inject_uplink(&vxlan_from(P2, P2_MAC, vni(A), &who_has));
    assert!(up.is_empty(), "no answer over the underlay");
    assert!(link
        .iter()
        .filter_map(|f| arp_of(f))
        .all(|a| a.0 != ArpOperation::Reply));
}

#[test]
fn a_published_container_behind_a_peer_is_reached_as_the_node_address_in_one_poll() {
    let mut rig = routed_rig(&[publish(8081, ip(12), 8080)]);
    // A static entry with the address: the overlay answers ARP for it (suppression).
    rig.pin(vni(A), mac(12), P2, Some(ip(12)));
    let client = (CLIENT, 42_000);
    let syn = frame((GW_MAC, UPLINK_MAC), client, (UPLINK_IP, 8081), Some(SYN));
    let (up, link) = rig.inject_uplink(&syn);
    assert!(link.iter().all(|f| seen(f).is_none()));
    let inner: Vec<(Ipv4Address, Vni, Seen)> = up
        .iter()
        .filter_map(|f| vxlan::decapsulate(f, VXLAN_PORT).ok())
        .filter_map(|d| Some((d.dst_ip, d.vni, seen(d.inner)?)))
        .collect();
    assert_eq!(inner.len(), 1, "{inner:?}");
    let (to, v, s) = &inner[0];
    assert_eq!(
        (*to, *v, s.dst_mac, s.dst),
        (P2, vni(A), mac(12), (ip(12), 8080))
    );
    assert_eq!(
        router(&rig).placement(ip(12)).map(|p| p.origin),
        Some(Origin::Remote),
        "placed behind its peer, as the FDB says"
    );
    // Behind another host: the flow takes the node address, so the reply returns here.
    assert_eq!(s.src.0, NODE);
    let synack = frame((mac(12), LINK_MAC), (ip(12), 8080), s.src, Some(SYNACK));
    let (up, _) = rig.inject_uplink(&vxlan_from(P2, P2_MAC, vni(A), &synack));
    let got: Vec<Seen> = up.iter().filter_map(|f| seen(f)).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].src, got[0].dst), ((UPLINK_IP, 8081), client));
}
