//! Arbitrary frames through a `Netstack` running the overlay (two networks, one
//! untagged and one on VLAN 200, peers resolved): on the link (raw, or tagged with a
//! chosen VLAN) and on the uplink (raw, or wrapped in valid VXLAN from a peer on a
//! chosen VNI, so the fuzzer starts deep). It never panics, counts every frame, sends
//! only from its own MACs on the uplink, and every VXLAN packet it sends carries a
//! configured VNI to a peer of that network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_netstack::datapath::OverlayPath;
use weft_netstack::overlay::config::OverlayConfig;
use weft_netstack::overlay::{Limits, Overlay, Underlay};
use weft_netstack::smoltcp::time::{Duration, Instant};
use weft_netstack::smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use weft_netstack::vlan::{self, VlanId};
use weft_netstack::vxlan::{self, DfPolicy, Outer, Vni, VXLAN_PORT};
use weft_netstack::{probe, MemPort, Netstack, NicAddress, NicId, MAX_FRAME_LEN};

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);
const UPLINK_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 11);
const PEERS: [(Ipv4Address, EthernetAddress); 2] = [
    (Ipv4Address::new(192, 0, 2, 12), EthernetAddress([0x52, 0x54, 0, 0, 0, 0x12])),
    (Ipv4Address::new(192, 0, 2, 13), EthernetAddress([0x52, 0x54, 0, 0, 0, 0x13])),
];
const CONFIG: &str = r#"{
    "grid": {"node": 1},
    "networks": [{"name": "a", "vni": 100}, {"name": "b", "vni": 200, "vlan": 200}],
    "peers": [
        {"node": 2, "address": "192.0.2.12", "networks": ["a", "b"]},
        {"node": 3, "address": "192.0.2.13", "networks": ["a"]}
    ]
}"#;

fn stack(now: Instant) -> Netstack {
    let mut s = Netstack::new(UPLINK_MAC, LINK_MAC, 1, now);
    s.configure(
        NicId::Uplink,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(UPLINK_IP, 24),
            gateway: Some(Ipv4Address::new(192, 0, 2, 1)),
        }),
    );
    s.configure(
        NicId::Link,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 1), 16),
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

fn from_peer(peer: usize, vni: u32, inner: &[u8]) -> Vec<u8> {
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

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::from_millis(1);
    let mut s = stack(now);
    let mut uplink = MemPort::new(UPLINK_MAC);
    let mut link = MemPort::new(LINK_MAC);
    // The peers answer ARP, so traffic can flow to them.
    for (ip, mac) in PEERS {
        let mut reply = probe::arp_request(mac, ip, UPLINK_IP);
        reply[..6].copy_from_slice(&UPLINK_MAC.0);
        reply[14 + 7] = 2;
        uplink.inject(&reply);
    }
    let mut injected = [PEERS.len() as u64, 0];
    let mut rest = data;
    // Each frame: a header byte (bits 0-1: how, bit 2: poll after it, bits 3..: VNI /
    // VLAN choice), a length byte, then that many bytes.
    while let [head, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (frame, after) = tail.split_at(len);
        rest = after;
        let pick = u32::from(head >> 3);
        match head & 3 {
            0 => {
                uplink.inject(frame);
                injected[0] += 1;
            }
            1 => {
                let vni = [100, 200, pick][pick as usize % 3];
                uplink.inject(&from_peer(pick as usize, vni, frame));
                injected[0] += 1;
            }
            2 => {
                link.inject(frame);
                injected[1] += 1;
            }
            _ => {
                let vid = [200u16, 1, 4094][pick as usize % 3];
                link.inject(&vlan::tag(frame.to_vec(), VlanId::new(vid)));
                injected[1] += 1;
            }
        }
        if head & 4 != 0 {
            now += Duration::from_millis(u64::from(pick) * 40);
            s.poll(now, &mut uplink, &mut link);
        }
    }
    for _ in 0..64 {
        now += Duration::from_millis(1);
        if s.poll(now, &mut uplink, &mut link).next_poll != Some(Duration::ZERO) {
            break;
        }
    }
    assert_eq!(uplink.pending_rx() + link.pending_rx(), 0);
    assert_eq!(s.nic(NicId::Uplink).counters.rx_packets, injected[0]);
    assert_eq!(s.nic(NicId::Link).counters.rx_packets, injected[1]);
    for frame in uplink.take_transmitted() {
        assert_eq!(&frame[6..12], UPLINK_MAC.as_bytes(), "uplink frames are ours");
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
});
