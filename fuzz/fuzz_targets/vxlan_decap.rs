//! Arbitrary bytes on the uplink: the VXLAN header parser, the outer-frame decap and
//! the VTEP's uplink path must refuse or deliver, never panic. Frames that decap are
//! checked to deliver exactly the inner bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, Ipv4Address};
use weft_netstack::base::ports::VXLAN_PORT;
use weft_netstack::base::{NodeId, Vni};
use weft_netstack::stage::overlay::config::{GridConfig, NetworkConfig, PeerConfig};
use weft_netstack::stage::overlay::{Limits, Overlay, OverlayVerdict, Underlay};
use weft_netstack::wire::vxlan;

fn overlay() -> Overlay {
    let underlay = Underlay {
        mac: EthernetAddress([0x02, 0, 0, 0, 0, 1]),
        ip: Ipv4Address::new(192, 0, 2, 1),
    };
    let node = NodeId::new(1).expect("1 is a node number");
    let mut o = Overlay::new(GridConfig::new(node), underlay, Limits::default(), 1)
        .expect("default grid is valid");
    // At most one network may be untagged on the link; "b" rides VLAN 42. Built from the
    // document form, so fields added later with defaults need no change here.
    for network in [
        serde_json::json!({"name": "a", "vni": 1}),
        serde_json::json!({"name": "b", "vni": 42, "vlan": 42}),
    ] {
        let network: NetworkConfig = serde_json::from_value(network).expect("network document");
        o.add_network(&network).expect("network");
    }
    o.add_peer(&PeerConfig {
        node: NodeId::new(2).expect("2 is a node number"),
        name: None,
        address: Some(Ipv4Address::new(192, 0, 2, 2)),
        region: None,
        private_address: None,
        public_address: None,
        networks: vec!["a".into(), "b".into()],
    })
    .expect("peer");
    o.attach_appliance(
        Vni::new(42).expect("small VNI"),
        Some(EthernetAddress([0x02, 0x42, 0, 0, 0, 1])),
    )
    .expect("attach");
    o
}

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = vxlan::Packet::new_checked(data) {
        let _ = vxlan::Repr::parse(&packet);
    }
    let decap = vxlan::decapsulate(data, VXLAN_PORT);
    let mut o = overlay();
    match o.rx_uplink(Instant::from_millis(0), data) {
        OverlayVerdict::Forward(out) => {
            let inner = decap.expect("forwarded frames decapsulate").inner;
            for (_, frame) in out {
                assert_eq!(frame, inner);
            }
        }
        OverlayVerdict::Drop(_) => {}
        OverlayVerdict::Refuse { .. } => panic!("the uplink never refuses with a reply"),
    }
});
