//! Arbitrary bytes through an overlay whose network is in `auto` mode (peer 2 trusted,
//! peer 3 not): as a sleeve payload in valid outer headers from a peer, as a raw
//! uplink frame, and as a frame on the link. It never panics; forged sleeve payloads
//! never deliver; nothing leaves for the untrusted peer except sleeve (UDP 6783).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_netstack::base::Vni;
use weft_netstack::smoltcp::phy::ChecksumCapabilities;
use weft_netstack::smoltcp::time::Instant;
use weft_netstack::smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};
use weft_netstack::stage::overlay::config::OverlayConfig;
use weft_netstack::stage::overlay::{Egress, Limits, Overlay, OverlayVerdict, Underlay};

const CONFIG: &str = r#"{
    "grid": {"node": 1, "secret": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
             "trusted_subnets": ["192.0.2.12/32"]},
    "networks": [{"name": "a", "vni": 100, "mode": "auto"}],
    "peers": [
        {"node": 2, "address": "192.0.2.12", "networks": ["a"]},
        {"node": 3, "address": "192.0.2.13", "networks": ["a"]}
    ]
}"#;
const US: Ipv4Address = Ipv4Address::new(192, 0, 2, 11);
const UNTRUSTED: Ipv4Address = Ipv4Address::new(192, 0, 2, 13);

fn overlay() -> Overlay {
    let config: OverlayConfig = serde_json::from_str(CONFIG).expect("config");
    let underlay = Underlay {
        mac: EthernetAddress([0x52, 0x54, 0, 0, 0, 1]),
        ip: US,
    };
    let mut o = Overlay::from_config(&config, underlay, Limits::default(), 7).expect("overlay");
    for last in [12, 13] {
        let _ = o.set_neighbor(
            Ipv4Address::new(192, 0, 2, last),
            Some(EthernetAddress([0x52, 0x54, 0, 0, 0, last])),
        );
    }
    o
}

/// `payload` as UDP to port 6783 from `src`, with correct outer checksums.
fn sleeve_frame(src: Ipv4Address, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: 6783,
        dst_port: 6783,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: US,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + 20 + 8 + payload.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress([0x52, 0x54, 0, 0, 0, 13]),
        dst_addr: EthernetAddress([0x52, 0x54, 0, 0, 0, 1]),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut p, &caps);
    let mut u = UdpPacket::new_unchecked(p.payload_mut());
    udp.emit(
        &mut u,
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(US),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut o = overlay();
    let now = Instant::from_secs(1);
    let vni = Vni::new(100).expect("vni");
    match selector % 3 {
        0 => {
            let src = if selector & 4 == 0 {
                Ipv4Address::new(192, 0, 2, 12)
            } else {
                UNTRUSTED
            };
            let v = o.rx_uplink(now, &sleeve_frame(src, rest));
            // Random bytes never authenticate under the grid secret.
            assert!(!matches!(v, OverlayVerdict::Forward(ref out) if !out.is_empty()));
        }
        1 => {
            let _ = o.rx_uplink(now, rest);
        }
        _ => {
            if let OverlayVerdict::Forward(out) = o.rx_link(now, vni, rest) {
                for (e, f) in out {
                    if e == Egress::Uplink && f.get(30..34) == Some(&UNTRUSTED.octets()[..]) {
                        assert_eq!(f.get(36..38), Some(&[0x1a, 0x7f][..]), "not sleeve");
                    }
                }
            }
        }
    }
});
