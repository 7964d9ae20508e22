//! Arbitrary frames through a `Netstack` running the overlay (network a untagged, b on
//! VLAN 200, two peers) and the NAT router with the routing mesh configured: ports
//! published to a local container, to a container behind a peer and to a service VIP
//! whose backends live on both. Frames go in raw on either NIC, wrapped in VXLAN from a
//! peer, tagged on the link, or shaped as a client's segment to a published port (so
//! the fuzzer starts deep in the routed path). It never panics, counts every frame,
//! sends only from its own MACs, and every VXLAN packet it sends carries a configured
//! VNI to a peer of that network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_netstack::base::{Transport, VlanId};
use weft_netstack::smoltcp::time::{Duration, Instant};
use weft_netstack::smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use weft_netstack::stage::lb::{BackendConfig, ServiceConfig, ServiceMode};
use weft_netstack::stage::nat::{Nat, NatConfig, PublishRule};
use weft_netstack::stage::route::Router;
use weft_netstack::wire::probe;
use weft_netstack::wire::vlan;
use weft_netstack::{MemPort, Netstack};

#[path = "common/overlay_grid.rs"]
mod overlay_grid;

use overlay_grid::*;

const GW_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x99]);
const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);
const PORTS: [u16; 3] = [8080, 8081, 8082];

/// The overlay grid's stack with the router on: a local and a remote container
/// published, and a service VIP over both.
fn stack(now: Instant) -> Netstack {
    let mut s = overlay_stack(now);
    let grid = Ipv4Cidr::new(NODE, 16);
    let mut nat_config = NatConfig::new(UPLINK_IP, NODE, grid);
    nat_config.conntrack.capacity = 64;
    let mut nat = Nat::new(nat_config, 9);
    let local = Ipv4Address::new(10, 81, 128, 5);
    let remote = Ipv4Address::new(10, 81, 128, 12);
    let web = ServiceConfig {
        name: "web".into(),
        vip: Some(VIP),
        proto: Transport::Tcp,
        port: 80,
        mode: ServiceMode::Vip,
        backends: [local, remote]
            .iter()
            .map(|&address| BackendConfig {
                address,
                port: 8080,
                weight: 1,
            })
            .collect(),
        health: None,
    };
    nat.lb_mut().add_service(web, now).expect("service");
    for (host_port, (to, port)) in PORTS.iter().zip([(local, 8080), (remote, 8080), (VIP, 80)]) {
        nat.add_publish(PublishRule {
            proto: Transport::Tcp,
            host_port: *host_port,
            container_address: to,
            container_port: port,
        })
        .expect("publish");
    }
    s.set_router(Some(Router::new(nat)));
    s
}

/// A client's TCP segment to published port `port` through the gateway, with the
/// fuzzer's bytes as source port, flags and payload (checksums need not hold).
fn to_published(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[0..6].copy_from_slice(&UPLINK_MAC.0);
    f[6..12].copy_from_slice(&GW_MAC.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[8] = bytes.first().copied().unwrap_or(64);
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[203, 0, 113, bytes.get(1).copied().unwrap_or(9)]);
    ip[16..20].copy_from_slice(&UPLINK_IP.octets());
    let tcp = &mut ip[20..];
    tcp[0..2].copy_from_slice(&[bytes.get(2).copied().unwrap_or(0x9c), 0x40]);
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = bytes.get(3).copied().unwrap_or(0x02);
    f.extend_from_slice(bytes.get(4..).unwrap_or(&[]));
    let total = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::from_millis(1);
    let mut s = stack(now);
    let mut uplink = MemPort::new(UPLINK_MAC);
    let mut link = MemPort::new(LINK_MAC);
    // The peers and the gateway answer ARP, so traffic can flow to them.
    for (ip, mac) in PEERS.into_iter().chain([(GATEWAY, GW_MAC)]) {
        let mut reply = probe::arp_request(mac, ip, UPLINK_IP);
        reply[..6].copy_from_slice(&UPLINK_MAC.0);
        reply[14 + 7] = 2;
        uplink.inject(&reply);
    }
    let mut injected = [PEERS.len() as u64 + 1, 0];
    let mut rest = data;
    // Each frame: a header byte (bits 0-2: how, bit 3: poll after it, bits 4..: VNI /
    // VLAN / port choice), a length byte, then that many bytes.
    while let [head, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (frame, after) = tail.split_at(len);
        rest = after;
        let pick = u32::from(head >> 4);
        match head & 7 {
            0 => {
                uplink.inject(frame);
                injected[0] += 1;
            }
            1 | 5 => {
                let vni = [100, 200, pick][pick as usize % 3];
                let mut inner = frame.to_vec();
                if head & 7 == 5 && inner.len() >= 14 {
                    // Addressed to the appliance: the router's side of the network.
                    inner[..6].copy_from_slice(&LINK_MAC.0);
                }
                uplink.inject(&from_peer(pick as usize, vni, &inner));
                injected[0] += 1;
            }
            2 | 6 => {
                link.inject(frame);
                injected[1] += 1;
            }
            3 => {
                let vid = [200u16, 1, 4094][pick as usize % 3];
                link.inject(&vlan::tag(frame.to_vec(), VlanId::new(vid)));
                injected[1] += 1;
            }
            _ => {
                uplink.inject(&to_published(PORTS[pick as usize % 3], frame));
                injected[0] += 1;
            }
        }
        if head & 8 != 0 {
            now += Duration::from_millis(u64::from(pick) * 300);
            s.poll(now, &mut uplink, &mut link);
        }
    }
    drain_and_check(&mut s, &mut uplink, &mut link, now, injected);
});
