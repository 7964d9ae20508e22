//! Host benchmark of the overlay packet path: VXLAN encap and decap of 64-byte and
//! 1400-byte inner frames, in ns/packet and packets/s on one core.
//!
//! Run with `cargo run --release -p weft-netstack --example overlay_bench`
//! (optionally followed by the number of packets per case and a substring that selects
//! the cases to run, e.g. `-- 5000000 "vtep encap 64B"`; under `perf stat -e cycles:u`
//! one case gives cycles/packet that do not depend on the machine's load). Two layers
//! are measured:
//! `wire` is `vxlan::encapsulate`/`decapsulate` into a reused buffer; `vtep` is the
//! whole decision (`Overlay::rx_link`/`rx_uplink`: FDB lookup, flow hash, MTU check,
//! counters, one allocation per output frame); `datapath` is `Netstack::poll` with the
//! overlay running, in batches of 64 frames through in-memory ports (VLAN handling,
//! the NIC checks and counters, and the ports' own copy of each frame included).
//! Figures, not assertions.

use std::hint::black_box;
use std::time::Instant as Clock;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, Ipv4Address};
use weft_netstack::base::ports::VXLAN_PORT;
use weft_netstack::base::{NodeId, Vni};
use weft_netstack::pipeline::datapath::OverlayPath;
use weft_netstack::smoltcp::wire::Ipv4Cidr;
use weft_netstack::stage::overlay::config::{GridConfig, NetworkConfig, PeerConfig};
use weft_netstack::stage::overlay::{Limits, Overlay, OverlayVerdict, Underlay};
use weft_netstack::table::fdb::Location;
use weft_netstack::wire::probe;
use weft_netstack::wire::vxlan::{self, DfPolicy, Outer};
use weft_netstack::{MemPort, Netstack, NicAddress, NicId, RX_BATCH};

mod support;
use support::inner_frame;

const LOCAL: Underlay = Underlay {
    mac: EthernetAddress([0x02, 0, 0, 0, 0, 1]),
    ip: Ipv4Address::new(192, 0, 2, 1),
};
const PEER: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
const CONTAINER: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 1]);
const REMOTE_CONTAINER: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 2]);

fn overlay(udp_checksum: bool) -> (Overlay, Vni) {
    let vni = Vni::new(42).unwrap();
    let mut grid = GridConfig::new(NodeId::new(1).unwrap());
    grid.udp_checksum = udp_checksum;
    let mut o = Overlay::new(grid, LOCAL, Limits::default(), 0x5eed).unwrap();
    o.add_network(&NetworkConfig {
        name: "bench".into(),
        vni,
        vlan: None,
        mode: Default::default(),
    })
    .unwrap();
    o.add_peer(&PeerConfig {
        node: NodeId::new(2).unwrap(),
        name: None,
        address: Some(PEER),
        region: None,
        private_address: None,
        public_address: None,
        networks: vec!["bench".into()],
    })
    .unwrap();
    o.set_neighbor(PEER, Some(PEER_MAC)).unwrap();
    o.add_static(
        vni,
        REMOTE_CONTAINER,
        Location::Remote(PEER),
        None,
        Instant::from_millis(0),
    )
    .unwrap();
    (o, vni)
}

fn outer(vni: Vni, udp_checksum: bool, src_ip: Ipv4Address, dst_ip: Ipv4Address) -> Outer {
    Outer {
        src_mac: LOCAL.mac,
        dst_mac: PEER_MAC,
        src_ip,
        dst_ip,
        src_port: 50000,
        dst_port: VXLAN_PORT,
        vni,
        ident: 0,
        ttl: 64,
        df: DfPolicy::Unset,
        udp_checksum,
    }
}

const LINK_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x11]);

/// A `Netstack` running `overlay` (peer resolved), and its two in-memory ports.
fn datapath(overlay: Overlay) -> (Netstack, MemPort, MemPort) {
    let now = Instant::from_millis(0);
    let mut s = Netstack::new(LOCAL.mac, LINK_MAC, 1, now);
    s.configure(
        NicId::Uplink,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(LOCAL.ip, 24),
            gateway: None,
        }),
    );
    s.configure(
        NicId::Link,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 1), 16),
            gateway: None,
        }),
    );
    s.set_overlay(Some(OverlayPath::new(overlay, LINK_MAC).unwrap()));
    let (mut up, mut link) = (MemPort::new(LOCAL.mac), MemPort::new(LINK_MAC));
    let mut reply = probe::arp_request(PEER_MAC, PEER, LOCAL.ip);
    reply[..6].copy_from_slice(&LOCAL.mac.0);
    reply[14 + 7] = 2;
    s.poll(now, &mut up, &mut link);
    up.inject(&reply);
    s.poll(now, &mut up, &mut link);
    up.take_transmitted();
    (s, up, link)
}

/// `batches` polls of `RX_BATCH` copies of `frame` injected on `from`; per packet.
fn run_datapath(name: &str, packets: u64, overlay: Overlay, frame: &[u8], from: NicId) {
    let filter = std::env::args().nth(2).unwrap_or_default();
    if !name.contains(&filter) {
        return;
    }
    let (mut s, mut up, mut link) = datapath(overlay);
    let batches = packets / RX_BATCH as u64;
    let mut sent = 0usize;
    let mut round = |i: u64, s: &mut Netstack, up: &mut MemPort, link: &mut MemPort| {
        let port = if from == NicId::Link {
            &mut *link
        } else {
            &mut *up
        };
        for _ in 0..RX_BATCH {
            port.inject(frame);
        }
        s.poll(Instant::from_micros(i as i64), up, link);
        sent = up.take_transmitted().len() + link.take_transmitted().len();
    };
    for i in 0..batches / 10 {
        round(i, &mut s, &mut up, &mut link);
    }
    let start = Clock::now();
    for i in 0..batches {
        round(i, &mut s, &mut up, &mut link);
    }
    let elapsed = start.elapsed();
    assert_eq!(sent, RX_BATCH, "{name}: every frame forwarded");
    report(name, batches * RX_BATCH as u64, elapsed);
}

fn report(name: &str, packets: u64, elapsed: std::time::Duration) {
    let ns = elapsed.as_nanos() as f64 / packets as f64;
    println!("{name:<44} {ns:>8.1} ns/packet {:>8.2} Mpps", 1e3 / ns);
}

fn run(name: &str, packets: u64, mut f: impl FnMut(u64)) {
    let filter = std::env::args().nth(2).unwrap_or_default();
    if !name.contains(&filter) {
        return;
    }
    for i in 0..packets / 10 {
        f(i); // warm up caches and the allocator
    }
    let start = Clock::now();
    for i in 0..packets {
        f(i);
    }
    report(name, packets, start.elapsed());
}

fn main() {
    let packets: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    println!("{packets} packets per case, one core");
    for size in [64usize, 1400] {
        for csum in [false, true] {
            let label = |what: &str| {
                format!(
                    "{what} {size}B inner, udp csum {}",
                    if csum { "on" } else { "off" }
                )
            };
            let (mut o, vni) = overlay(csum);
            let to_remote = inner_frame(REMOTE_CONTAINER, CONTAINER, size);
            let from_remote = inner_frame(CONTAINER, REMOTE_CONTAINER, size);

            if !csum {
                run(
                    &format!("flow hash (UDP src port) {size}B inner"),
                    packets,
                    |i| {
                        black_box(vxlan::flow_src_port(
                            black_box(&to_remote),
                            i as u32,
                            vxlan::DEFAULT_SRC_PORT_RANGE,
                        ));
                    },
                );
            }
            let o_out = outer(vni, csum, LOCAL.ip, PEER);
            let mut buf = Vec::with_capacity(2048);
            run(&label("wire encap"), packets, |_| {
                buf.clear();
                vxlan::encapsulate(&o_out, black_box(&to_remote), &mut buf).unwrap();
                black_box(&buf);
            });

            let mut received = Vec::new();
            vxlan::encapsulate(
                &outer(vni, csum, PEER, LOCAL.ip),
                &from_remote,
                &mut received,
            )
            .unwrap();
            run(&label("wire decap"), packets, |_| {
                let d = vxlan::decapsulate(black_box(&received), VXLAN_PORT).unwrap();
                black_box(d.inner);
            });

            run(&label("vtep encap (rx_link)"), packets, |i| {
                let now = Instant::from_micros(i as i64);
                match o.rx_link(now, vni, black_box(&to_remote)) {
                    OverlayVerdict::Forward(out) => {
                        black_box(out);
                    }
                    other => panic!("{other:?}"),
                }
            });
            run(&label("vtep decap (rx_uplink)"), packets, |i| {
                let now = Instant::from_micros(i as i64);
                match o.rx_uplink(now, black_box(&received)) {
                    OverlayVerdict::Forward(out) => {
                        black_box(out);
                    }
                    other => panic!("{other:?}"),
                }
            });
            run_datapath(
                &label("datapath link->uplink"),
                packets,
                overlay(csum).0,
                &to_remote,
                NicId::Link,
            );
            run_datapath(
                &label("datapath uplink->link"),
                packets,
                overlay(csum).0,
                &received,
                NicId::Uplink,
            );
        }
    }
}
