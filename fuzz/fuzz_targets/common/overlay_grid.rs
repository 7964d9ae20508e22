//! The overlay grid the datapath fuzz targets share: node 1 at 192.0.2.11 with two
//! networks (`a` untagged on VNI 100, `b` on VLAN 200 / VNI 200) and peers 2 and 3, the
//! stack that runs it, VXLAN from a peer, and the checks every run ends with: all
//! input taken and counted, the uplink sends only from our MAC and only VXLAN of a
//! configured VNI to a peer of that network, the link only untagged or VLAN 200.
//! Included by path (`#[path = "common/overlay_grid.rs"] mod overlay_grid;`).

use weft_netstack::base::ports::VXLAN_PORT;
use weft_netstack::base::Vni;
use weft_netstack::pipeline::datapath::OverlayPath;
use weft_netstack::smoltcp::time::{Duration, Instant};
use weft_netstack::smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use weft_netstack::stage::overlay::config::OverlayConfig;
use weft_netstack::stage::overlay::{Limits, Overlay, Underlay};
use weft_netstack::wire::vlan;
use weft_netstack::wire::vxlan::{self, DfPolicy, Outer};
use weft_netstack::{MemPort, Netstack, NicAddress, NicId, MAX_FRAME_LEN};

pub const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
pub const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);
pub const UPLINK_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 11);
pub const GATEWAY: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
/// The node address, on the link (the grid subnet /16).
pub const NODE: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
pub const PEERS: [(Ipv4Address, EthernetAddress); 2] = [
    (
        Ipv4Address::new(192, 0, 2, 12),
        EthernetAddress([0x52, 0x54, 0, 0, 0, 0x12]),
    ),
    (
        Ipv4Address::new(192, 0, 2, 13),
        EthernetAddress([0x52, 0x54, 0, 0, 0, 0x13]),
    ),
];
const CONFIG: &str = r#"{
    "grid": {"node": 1},
    "networks": [{"name": "a", "vni": 100}, {"name": "b", "vni": 200, "vlan": 200}],
    "peers": [
        {"node": 2, "address": "192.0.2.12", "networks": ["a", "b"]},
        {"node": 3, "address": "192.0.2.13", "networks": ["a"]}
    ]
}"#;

/// The node's stack with both NICs addressed and the overlay running (no router).
pub fn overlay_stack(now: Instant) -> Netstack {
    let mut s = Netstack::new(UPLINK_MAC, LINK_MAC, 1, now);
    s.configure(
        NicId::Uplink,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(UPLINK_IP, 24),
            gateway: Some(GATEWAY),
        }),
    );
    s.configure(
        NicId::Link,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(NODE, 16),
            gateway: None,
        }),
    );
    let config: OverlayConfig = serde_json::from_str(CONFIG).expect("valid config");
    let underlay = Underlay {
        mac: UPLINK_MAC,
        ip: UPLINK_IP,
    };
    let overlay = Overlay::from_config(&config, underlay, Limits::default(), 5).expect("overlay");
    s.set_overlay(Some(OverlayPath::new(overlay, LINK_MAC).expect("path")));
    s
}

/// `inner` in valid VXLAN from peer `peer` on VNI `vni` (masked to 24 bits).
pub fn from_peer(peer: usize, vni: u32, inner: &[u8]) -> Vec<u8> {
    let (ip, mac) = PEERS[peer % PEERS.len()];
    let outer = Outer {
        src_mac: mac,
        dst_mac: UPLINK_MAC,
        src_ip: ip,
        dst_ip: UPLINK_IP,
        src_port: 50_000,
        dst_port: VXLAN_PORT,
        vni: Vni::new(vni & Vni::MAX).expect("masked"),
        ident: 0,
        ttl: 64,
        df: DfPolicy::Unset,
        udp_checksum: vni & 1 == 0,
    };
    let mut out = Vec::new();
    let _ = vxlan::encapsulate(&outer, inner, &mut out);
    out
}

/// Polls until the stack is idle, then checks what every run must hold; `injected` is
/// the frames given to the uplink and the link.
pub fn drain_and_check(
    s: &mut Netstack,
    uplink: &mut MemPort,
    link: &mut MemPort,
    mut now: Instant,
    injected: [u64; 2],
) {
    for _ in 0..64 {
        now += Duration::from_millis(1);
        if s.poll(now, uplink, link).next_poll != Some(Duration::ZERO) {
            break;
        }
    }
    assert_eq!(uplink.pending_rx() + link.pending_rx(), 0);
    assert_eq!(s.nic(NicId::Uplink).counters.rx_packets, injected[0]);
    assert_eq!(s.nic(NicId::Link).counters.rx_packets, injected[1]);
    for frame in uplink.take_transmitted() {
        assert_eq!(
            &frame[6..12],
            UPLINK_MAC.as_bytes(),
            "uplink frames are ours"
        );
        if let Ok(d) = vxlan::decapsulate(&frame, VXLAN_PORT) {
            assert_eq!(d.src_ip, UPLINK_IP);
            match d.vni.get() {
                100 => assert!(PEERS.iter().any(|(ip, _)| *ip == d.dst_ip)),
                200 => assert_eq!(d.dst_ip, PEERS[0].0, "only node 2 carries b"),
                v => panic!("VXLAN on unconfigured VNI {v}"),
            }
        }
    }
    for frame in link.take_transmitted() {
        assert!(frame.len() >= 14 && frame.len() <= MAX_FRAME_LEN + vlan::TAG_LEN);
        match vlan::untag(&frame) {
            Ok((vlan::Tag::Untagged, _)) => {}
            Ok((vlan::Tag::Vlan(v), _)) => assert_eq!(v.get(), 200, "only b is tagged"),
            other => panic!("link frame with {other:?}"),
        }
    }
}
