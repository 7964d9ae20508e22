//! Host benchmark of the whole datapath: `Netstack::poll` with in-memory ports, one core,
//! CPU time of the thread (`/proc/thread-self/schedstat`, nanoseconds), so the figures
//! hold on a machine shared with other work. Every case is the appliance's own path from
//! a port's receive to a port's transmit: VXLAN encapsulation and decapsulation (64 and
//! 1400-byte inner frames), sleeve seal and open (1400 B, beside raw ChaCha20-Poly1305 on
//! the same size in the same run), and established flows through the router: published
//! port (DNAT), masquerade (SNAT) and a service VIP (LB), at 10 000 and 1 000 000 flows.
//!
//! `cargo run --release -p weft-netstack --example datapath_bench [-- PACKETS [FILTER [REPEAT]]]`
//!
//! PACKETS (default 2 000 000) per case; FILTER picks the cases whose name contains it;
//! REPEAT (default 1) runs the chosen cases that many times, one after the other in
//! turn, and ends with each case's best and median: on a shared machine a ratio of two
//! cases (sleeve beside raw AEAD) then compares runs spread over the same stretch of
//! time. Figures, never assertions about time.

use std::hint::black_box;
use std::sync::{Mutex, OnceLock};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr, Ipv4Packet, TcpPacket};
use weft_netstack::base::{Endpoint, NodeId, Transport, Vni};
use weft_netstack::pipeline::datapath::OverlayPath;
use weft_netstack::stage::lb::{BackendConfig, ServiceConfig, ServiceMode};
use weft_netstack::stage::nat::{Nat, NatConfig, NatVerdict, PublishRule};
use weft_netstack::stage::overlay::config::{
    EncapMode, GridConfig, NetworkConfig, PeerConfig, SecretText,
};
use weft_netstack::stage::overlay::{Egress, Limits, Overlay, OverlayVerdict, Underlay};
use weft_netstack::stage::route::Router;
use weft_netstack::table::conntrack::ConntrackConfig;
use weft_netstack::table::fdb::Location;
use weft_netstack::wire::probe;
use weft_netstack::{MemPort, Netstack, NicAddress, NicId, RX_BATCH};

mod support;
use support::{client, cpu_ns, inner_frame, shuffled, tcp_frame, ACK, FRAME, SYN, SYNACK};

/// The cases to run: those whose name contains it (`main` sets it from FILTER).
static FILTER: OnceLock<String> = OnceLock::new();

fn wanted(name: &str) -> bool {
    name.contains(FILTER.get().map_or("", String::as_str))
}

/// Called with a case's name as each timed stretch of forwarding begins (`true`) and
/// ends (`false`), outside the CPU-time reads: `tests/no_alloc.rs` includes this file
/// and watches the heap there, the bench leaves it unset.
pub static STEADY: OnceLock<fn(&str, bool)> = OnceLock::new();

fn steady(name: &str, begins: bool) {
    if let Some(hook) = STEADY.get() {
        hook(name, begins);
    }
}

/// Every case's ns/packet of each repetition, in the order the cases first ran.
static SAMPLES: Mutex<Vec<(String, Vec<f64>)>> = Mutex::new(Vec::new());

fn report(name: &str, packets: u64, cpu: u64) {
    let ns = cpu as f64 / packets as f64;
    println!("{name:<34} {ns:>8.1} ns/packet {:>7.2} Mpps", 1e3 / ns);
    let mut samples = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    match samples.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(ns),
        None => samples.push((name.to_string(), vec![ns])),
    }
}

/// Best and median of each case over the repetitions, and sleeve's share of raw AEAD
/// speed (raw ns / sleeve ns) by both.
fn summary() {
    let samples = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    let stats = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    println!("\ncase                               best ns  median ns  runs");
    for (name, v) in samples.iter() {
        let (best, median) = stats(v);
        println!("{name:<34} {best:>8.1} {median:>10.1} {:>5}", v.len());
    }
    let find = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| stats(v))
    };
    for op in ["seal", "open"] {
        let raw = find(&format!("raw aead {op} 1400B"));
        if let (Some(raw), Some(sleeve)) = (raw, find(&format!("sleeve {op} 1400B"))) {
            println!(
                "sleeve {op} 1400B at {:.1} % of raw AEAD (best against best), {:.1} % (median against median)",
                100.0 * raw.0 / sleeve.0,
                100.0 * raw.1 / sleeve.1
            );
        }
    }
}

/// The ports as the bench drives them: frames in on one side, out counted.
struct Ports {
    uplink: MemPort,
    link: MemPort,
}

impl Ports {
    fn new(uplink: EthernetAddress, link: EthernetAddress) -> Ports {
        Ports {
            uplink: MemPort::new(uplink),
            link: MemPort::new(link),
        }
    }

    fn inject(&mut self, on: NicId, frame: &[u8]) {
        match on {
            NicId::Uplink => self.uplink.inject(frame),
            NicId::Link => self.link.inject(frame),
        }
    }

    /// Frames injected on `on` that the stack has not received yet.
    fn pending(&self, on: NicId) -> usize {
        match on {
            NicId::Uplink => self.uplink.pending_rx(),
            NicId::Link => self.link.pending_rx(),
        }
    }

    fn poll(&mut self, stack: &mut Netstack, now: Instant) {
        stack.poll(now, &mut self.uplink, &mut self.link);
    }

    /// Frames sent since the last call (uplink, link), dropped.
    fn drain(&mut self) -> (usize, usize) {
        (
            self.uplink.drain_transmitted(|f| {
                black_box(f);
            }),
            self.link.drain_transmitted(|f| {
                black_box(f);
            }),
        )
    }

    /// Frames sent since the last call, kept.
    fn take(&mut self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        (self.uplink.take_transmitted(), self.link.take_transmitted())
    }
}

/// Runs `packets` frames through `stack` in polls of `RX_BATCH`, `frame(i)` the i-th
/// frame, received on `on`; warm-up first, then CPU time per packet. `out` says which
/// port must have sent each frame.
fn run(
    name: &str,
    packets: u64,
    stack: &mut Netstack,
    ports: &mut Ports,
    on: NicId,
    out: NicId,
    frames: &[impl AsRef<[u8]>],
) {
    let mut clock = 1_000_000i64;
    let mut round = |stack: &mut Netstack, ports: &mut Ports, first: u64| {
        for i in 0..RX_BATCH as u64 {
            let f = &frames[((first + i) % frames.len() as u64) as usize];
            ports.inject(on, f.as_ref());
        }
        clock += 1;
        ports.poll(stack, Instant::from_micros(clock));
        let (u, l) = ports.drain();
        match out {
            NicId::Uplink => u,
            NicId::Link => l,
        }
    };
    let batches = packets / RX_BATCH as u64;
    for b in 0..(batches / 10).max(1) {
        round(stack, ports, b * RX_BATCH as u64);
    }
    let start = cpu_ns();
    steady(name, true);
    let mut sent = 0usize;
    for b in 0..batches {
        sent += round(stack, ports, b * RX_BATCH as u64);
    }
    steady(name, false);
    let cpu = cpu_ns() - start;
    assert_eq!(
        sent as u64,
        batches * RX_BATCH as u64,
        "{name}: all forwarded"
    );
    report(name, batches * RX_BATCH as u64, cpu);
}

/// As [`run`], over prepared frames taken in order, with what is left of CPU time after
/// the untimed preparation of each chunk (`prepare(chunk)` builds the next frames) and
/// its untimed injection into the port (the device's part).
fn run_chunks(
    name: &str,
    packets: u64,
    stack: &mut Netstack,
    ports: &mut Ports,
    on: NicId,
    out: NicId,
    mut prepare: impl FnMut(usize) -> Vec<Vec<u8>>,
) {
    const CHUNK: usize = 4096;
    let mut clock = 1_000_000i64;
    let mut cpu = 0u64;
    let mut done = 0u64;
    let mut timed = 0u64;
    let mut sent = 0usize;
    let warm = packets / 10;
    while done < packets + warm {
        let frames = prepare(CHUNK);
        // The device's part, untimed: the chunk waits in receive buffers, as a virtio
        // device leaves frames in the ring (and as the raw AEAD case's buffers wait).
        for f in &frames {
            ports.inject(on, f);
        }
        let start = cpu_ns();
        if done >= warm {
            steady(name, true);
        }
        let mut n = 0usize;
        while ports.pending(on) > 0 {
            clock += 1;
            ports.poll(stack, Instant::from_micros(clock));
            let (u, l) = ports.drain();
            n += match out {
                NicId::Uplink => u,
                NicId::Link => l,
            };
        }
        if done >= warm {
            steady(name, false);
            cpu += cpu_ns() - start;
            sent += n;
            timed += frames.len() as u64;
        }
        done += frames.len() as u64;
    }
    assert_eq!(sent as u64, timed, "{name}: all forwarded");
    report(name, timed, cpu);
}

// --- the overlay -------------------------------------------------------------------

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x11]);
const LOCAL_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
const PEER: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
const CONTAINER: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 1]);
const REMOTE: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 2]);
const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// Node `node`'s overlay: one network (VNI 42, `mode`), the other node as its peer
/// (resolved), and the other node's container in the FDB.
fn overlay(node: u16, mode: EncapMode) -> (Overlay, Vni) {
    let vni = Vni::new(42).unwrap();
    let other = 3 - node;
    let mut grid = GridConfig::new(NodeId::new(node).unwrap());
    grid.secret = SecretText::from_hex(SECRET);
    let (me, peer, peer_mac, remote) = if node == 1 {
        (LOCAL_IP, PEER, PEER_MAC, REMOTE)
    } else {
        (PEER, LOCAL_IP, UPLINK_MAC, CONTAINER)
    };
    let underlay = Underlay {
        mac: if node == 1 { UPLINK_MAC } else { PEER_MAC },
        ip: me,
    };
    let mut o = Overlay::new(grid, underlay, Limits::default(), 0x5eed).unwrap();
    o.add_network(&NetworkConfig {
        name: "bench".into(),
        vni,
        vlan: None,
        mode,
    })
    .unwrap();
    o.add_peer(&PeerConfig {
        node: NodeId::new(other).unwrap(),
        name: None,
        address: Some(peer),
        region: None,
        private_address: None,
        public_address: None,
        networks: vec!["bench".into()],
    })
    .unwrap();
    o.set_neighbor(peer, Some(peer_mac)).unwrap();
    o.add_static(vni, remote, Location::Remote(peer), None, Instant::ZERO)
        .unwrap();
    (o, vni)
}

/// A `Netstack` of node 1 running `overlay`, its peer's MAC resolved.
fn overlay_stack(overlay: Overlay) -> (Netstack, Ports) {
    let now = Instant::ZERO;
    let mut s = Netstack::new(UPLINK_MAC, LINK_MAC, 1, now);
    s.configure(
        NicId::Uplink,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(LOCAL_IP, 24),
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
    let mut ports = Ports::new(UPLINK_MAC, LINK_MAC);
    ports.poll(&mut s, now);
    ports.inject(
        NicId::Uplink,
        &probe::arp_reply(PEER_MAC, PEER, UPLINK_MAC, LOCAL_IP),
    );
    ports.poll(&mut s, now);
    ports.drain();
    (s, ports)
}

/// What node 2 sends node 1 for `inner` (a frame to node 1's container).
fn from_peer(peer: &mut Overlay, vni: Vni, inner: &[u8], now: Instant) -> Vec<Vec<u8>> {
    match peer.rx_link(now, vni, inner) {
        OverlayVerdict::Forward(out) => out
            .into_iter()
            .filter(|(e, _)| *e == Egress::Uplink)
            .map(|(_, f)| f)
            .collect(),
        other => panic!("peer refused: {other:?}"),
    }
}

pub fn bench_vxlan(packets: u64) {
    for size in [64usize, 1400] {
        let name = format!("vxlan encap {size}B");
        if wanted(&name) {
            let (mut s, mut ports) = overlay_stack(overlay(1, EncapMode::Vxlan).0);
            let f = inner_frame(REMOTE, CONTAINER, size);
            run(
                &name,
                packets,
                &mut s,
                &mut ports,
                NicId::Link,
                NicId::Uplink,
                &[f],
            );
        }
        let name = format!("vxlan decap {size}B");
        if wanted(&name) {
            let (mut s, mut ports) = overlay_stack(overlay(1, EncapMode::Vxlan).0);
            let (mut peer, vni) = overlay(2, EncapMode::Vxlan);
            let inner = inner_frame(CONTAINER, REMOTE, size);
            let f = from_peer(&mut peer, vni, &inner, Instant::ZERO).remove(0);
            run(
                &name,
                packets,
                &mut s,
                &mut ports,
                NicId::Uplink,
                NicId::Link,
                &[f],
            );
        }
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(n)
}

pub fn bench_sleeve(packets: u64) {
    let size = 1400usize;
    let name = format!("raw aead seal {size}B");
    // Under `tests/no_alloc.rs` there is nothing of the appliance's here to watch.
    if wanted(&name) && STEADY.get().is_none() {
        let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
        let aad = [0u8; 28];
        let mut buf = vec![0x5au8; size];
        let start = cpu_ns();
        for i in 0..packets {
            let tag = cipher
                .encrypt_inout_detached(&nonce(i), &aad, buf.as_mut_slice().into())
                .unwrap();
            black_box(&tag);
        }
        report(&name, packets, cpu_ns() - start);
    }
    let name = format!("raw aead open {size}B");
    // Under `tests/no_alloc.rs` there is nothing of the appliance's here to watch.
    if wanted(&name) && STEADY.get().is_none() {
        let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
        let aad = [0u8; 28];
        let mut cpu = 0;
        let mut done = 0u64;
        while done < packets {
            let mut batch: Vec<(Vec<u8>, Tag)> = (0..4096)
                .map(|i| {
                    let mut buf = vec![0x5au8; size];
                    let tag = cipher
                        .encrypt_inout_detached(&nonce(done + i), &aad, buf.as_mut_slice().into())
                        .unwrap();
                    (buf, tag)
                })
                .collect();
            let start = cpu_ns();
            for (i, (buf, tag)) in batch.iter_mut().enumerate() {
                cipher
                    .decrypt_inout_detached(
                        &nonce(done + i as u64),
                        &aad,
                        buf.as_mut_slice().into(),
                        tag,
                    )
                    .unwrap();
            }
            cpu += cpu_ns() - start;
            done += 4096;
        }
        report(&name, done, cpu);
    }
    let name = format!("sleeve seal {size}B");
    if wanted(&name) {
        let (mut s, mut ports) = overlay_stack(overlay(1, EncapMode::Sleeve).0);
        let f = inner_frame(REMOTE, CONTAINER, size);
        run(
            &name,
            packets / 4,
            &mut s,
            &mut ports,
            NicId::Link,
            NicId::Uplink,
            &[f],
        );
    }
    let name = format!("sleeve open {size}B");
    if wanted(&name) {
        let (mut s, mut ports) = overlay_stack(overlay(1, EncapMode::Sleeve).0);
        let (mut peer, vni) = overlay(2, EncapMode::Sleeve);
        let inner = inner_frame(CONTAINER, REMOTE, size);
        run_chunks(
            &name,
            packets / 4,
            &mut s,
            &mut ports,
            NicId::Uplink,
            NicId::Link,
            |n| {
                (0..n)
                    .flat_map(|_| from_peer(&mut peer, vni, &inner, Instant::ZERO))
                    .collect()
            },
        );
    }
}

// --- the router ----------------------------------------------------------------------

const GW_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x99]);
const UPLINK_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
const GW_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
const NODE_IP: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
const C_IP: Ipv4Address = Ipv4Address::new(10, 81, 3, 4);
const C_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x42]);
const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);
/// The appliance with the router: uplink 192.0.2.2/24 (gateway .1), link 10.81.0.1/16,
/// TCP 8080 published to C_IP:80, a service VIP with 100 backends on the link, the
/// gateway, the container and the backends resolved.
fn router_stack(flows: usize) -> (Netstack, Ports) {
    let now = Instant::ZERO;
    let mut s = Netstack::new(UPLINK_MAC, LINK_MAC, 7, now);
    s.configure(
        NicId::Uplink,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(UPLINK_IP, 24),
            gateway: Some(GW_IP),
        }),
    );
    s.configure(
        NicId::Link,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(NODE_IP, 16),
            gateway: None,
        }),
    );
    let mut config = NatConfig::new(UPLINK_IP, NODE_IP, Ipv4Cidr::new(NODE_IP, 16));
    config.conntrack = ConntrackConfig {
        capacity: flows + 1024,
        ..ConntrackConfig::default()
    };
    let mut nat = Nat::new(config, 3);
    nat.add_publish(PublishRule {
        proto: Transport::Tcp,
        host_port: 8080,
        container_address: C_IP,
        container_port: 80,
    })
    .unwrap();
    nat.lb_mut()
        .add_service(
            ServiceConfig {
                name: "web".into(),
                vip: Some(VIP),
                proto: Transport::Tcp,
                port: 80,
                mode: ServiceMode::Vip,
                backends: (0..100u32)
                    .map(|i| BackendConfig {
                        address: backend(i),
                        port: 8000,
                        weight: 1 + i % 3,
                    })
                    .collect(),
                health: None,
            },
            now,
        )
        .unwrap();
    s.set_router(Some(Router::new(nat)));
    let mut ports = Ports::new(UPLINK_MAC, LINK_MAC);
    ports.inject(
        NicId::Uplink,
        &probe::arp_reply(GW_MAC, GW_IP, UPLINK_MAC, UPLINK_IP),
    );
    ports.inject(
        NicId::Link,
        &probe::arp_reply(C_MAC, C_IP, LINK_MAC, NODE_IP),
    );
    for i in 0..100 {
        ports.inject(
            NicId::Link,
            &probe::arp_reply(backend_mac(i), backend(i), LINK_MAC, NODE_IP),
        );
    }
    for _ in 0..4 {
        ports.poll(&mut s, now);
    }
    ports.take();
    (s, ports)
}

fn backend(i: u32) -> Ipv4Address {
    Ipv4Address::from(0x0a51_0100 + i)
}

fn backend_mac(i: u32) -> EthernetAddress {
    EthernetAddress([0x02, 0, 0, 0, 1, i as u8])
}

fn nat(s: &mut Netstack) -> &mut Nat {
    s.router_mut().unwrap().nat_mut()
}

fn forward(v: NatVerdict) {
    assert!(matches!(v, NatVerdict::Forward { .. }), "{v:?}");
}

/// A container of the link (10.81.64.0/18) opening flow `i`.
fn inside(i: u32) -> Endpoint {
    Endpoint::new(
        Ipv4Address::from(0x0a51_4000 + (i >> 8) % 0x3000),
        1024 + (i & 0xff) as u16,
    )
}

/// An outside server, one per 10 000 flows (masqueraded flows share their mappings).
fn server(i: u32) -> Endpoint {
    Endpoint::new(Ipv4Address::from(0xcb00_7100 + i / 10_000), 443)
}

pub fn bench_router(packets: u64, flows: usize, label: &str) {
    let now = Instant::ZERO;
    let order = shuffled(flows);
    let name = format!("dnat {label} flows");
    if wanted(&name) {
        let (mut s, mut ports) = router_stack(flows);
        let host = Endpoint::new(UPLINK_IP, 8080);
        let c = Endpoint::new(C_IP, 80);
        for i in 0..flows as u32 {
            let n = nat(&mut s);
            forward(n.process(
                &mut tcp_frame((GW_MAC, UPLINK_MAC), client(i), host, SYN),
                NicId::Uplink,
                now,
            ));
            forward(n.process(
                &mut tcp_frame((C_MAC, LINK_MAC), c, client(i), SYNACK),
                NicId::Link,
                now,
            ));
            forward(n.process(
                &mut tcp_frame((GW_MAC, UPLINK_MAC), client(i), host, ACK),
                NicId::Uplink,
                now,
            ));
        }
        let frames: Vec<[u8; FRAME]> = order
            .iter()
            .map(|&i| tcp_frame((GW_MAC, UPLINK_MAC), client(i), host, ACK))
            .collect();
        run(
            &name,
            packets,
            &mut s,
            &mut ports,
            NicId::Uplink,
            NicId::Link,
            &frames,
        );
    }
    let name = format!("snat {label} flows");
    if wanted(&name) {
        let (mut s, mut ports) = router_stack(flows);
        let mut masq = Vec::with_capacity(flows);
        for i in 0..flows as u32 {
            let n = nat(&mut s);
            let (from, to) = (inside(i % 10_000), server(i));
            let mut syn = tcp_frame((C_MAC, LINK_MAC), from, to, SYN);
            forward(n.process(&mut syn, NicId::Link, now));
            let ip = Ipv4Packet::new_unchecked(&syn[14..]);
            let port = TcpPacket::new_unchecked(&syn[34..]).src_port();
            let m = Endpoint::new(ip.src_addr(), port);
            masq.push(m);
            forward(n.process(
                &mut tcp_frame((GW_MAC, UPLINK_MAC), to, m, SYNACK),
                NicId::Uplink,
                now,
            ));
            forward(n.process(
                &mut tcp_frame((C_MAC, LINK_MAC), from, to, ACK),
                NicId::Link,
                now,
            ));
        }
        let frames: Vec<[u8; FRAME]> = order
            .iter()
            .map(|&i| tcp_frame((C_MAC, LINK_MAC), inside(i % 10_000), server(i), ACK))
            .collect();
        run(
            &name,
            packets,
            &mut s,
            &mut ports,
            NicId::Link,
            NicId::Uplink,
            &frames,
        );
    }
    // Service flows take a port of the node address each: at most 28 232 of them.
    let lb_flows = flows.min(20_000);
    let name = format!("lb {} flows", if lb_flows < flows { "20k" } else { label });
    if wanted(&name) && (flows == lb_flows || label == "1M") {
        let (mut s, mut ports) = router_stack(lb_flows);
        let vip = Endpoint::new(VIP, 80);
        for i in 0..lb_flows as u32 {
            let n = nat(&mut s);
            let mut syn = tcp_frame((C_MAC, LINK_MAC), inside(i), vip, SYN);
            forward(n.process(&mut syn, NicId::Link, now));
            let ip = Ipv4Packet::new_unchecked(&syn[14..]);
            let tcp = TcpPacket::new_unchecked(&syn[34..]);
            let (snat, backend) = (
                Endpoint::new(ip.src_addr(), tcp.src_port()),
                Endpoint::new(ip.dst_addr(), tcp.dst_port()),
            );
            forward(n.process(
                &mut tcp_frame((C_MAC, LINK_MAC), backend, snat, SYNACK),
                NicId::Link,
                now,
            ));
            forward(n.process(
                &mut tcp_frame((C_MAC, LINK_MAC), inside(i), vip, ACK),
                NicId::Link,
                now,
            ));
        }
        let order = shuffled(lb_flows);
        let frames: Vec<[u8; FRAME]> = order
            .iter()
            .map(|&i| tcp_frame((C_MAC, LINK_MAC), inside(i), vip, ACK))
            .collect();
        run(
            &name,
            packets,
            &mut s,
            &mut ports,
            NicId::Link,
            NicId::Link,
            &frames,
        );
    }
}

fn main() {
    let packets: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let _ = FILTER.set(std::env::args().nth(2).unwrap_or_default());
    let repeat: usize = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    println!("{packets} packets per case, one core, thread CPU time");
    for _ in 0..repeat {
        bench_vxlan(packets);
        bench_sleeve(packets);
        bench_router(packets, 10_000, "10k");
        bench_router(packets, 1_000_000, "1M");
    }
    if repeat > 1 {
        summary();
    }
}
