//! Host benchmark of the NAT/LB packet path (issues 6 and 7).
//!
//! `cargo run --release -p weft-netstack --example nat_bench [-- FLOWS]`
//!
//! Prints: new-flow setup rate, lookup + rewrite ns/packet on established flows
//! (published-port DNAT with FLOWS tracked flows, default 1 000 000), bytes of
//! memory per flow (resident set growth while the flows are set up), LB + NAT ns/packet on
//! established service flows, Maglev lookup ns, and table rebuild time for 10,
//! 100 and 1000 backends. Figures only: nothing here asserts a time.

use std::hint::black_box;
use std::time::Instant as Clock;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use weft_netstack::base::{Endpoint, FlowTuple, NicId, Proto, Transport};
use weft_netstack::stage::lb::{
    flow_hash, BackendConfig, LoadBalancer, ServiceConfig, ServiceMode,
};
use weft_netstack::stage::nat::{Nat, NatConfig, NatVerdict, PublishRule};
use weft_netstack::table::conntrack;
use weft_netstack::table::maglev::{Maglev, Weighted, DEFAULT_TABLE_SIZE};

mod support;
use support::{client, cpu_ns, shuffled, FRAME};

/// CPU time this thread has used.
fn cpu_time() -> std::time::Duration {
    std::time::Duration::from_nanos(cpu_ns())
}

/// `support::tcp_frame` with no link-layer addresses (the NAT reads from IPv4 on).
fn tcp_frame(src: Endpoint, dst: Endpoint, syn: bool, ack: bool) -> [u8; FRAME] {
    let none = EthernetAddress([0; 6]);
    let flags = (syn as u8) << 1 | (ack as u8) << 4;
    support::tcp_frame((none, none), src, dst, flags)
}

/// Resident set size of this process, from procfs (Linux), in bytes.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

const UPLINK: Ipv4Address = Ipv4Address::new(192, 0, 2, 10);
const NODE: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
const C1: Ipv4Address = Ipv4Address::new(10, 81, 1, 5);
const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);

fn expect_forward(v: NatVerdict) {
    assert!(matches!(v, NatVerdict::Forward { .. }), "{v:?}");
}

fn nat_for(flows: usize) -> Nat {
    let mut config = NatConfig::new(
        UPLINK,
        NODE,
        Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 16),
    );
    config.conntrack = conntrack::ConntrackConfig {
        capacity: flows + 1024,
        ..conntrack::ConntrackConfig::default()
    };
    let mut nat = Nat::new(config, 7);
    nat.add_publish(PublishRule {
        proto: Transport::Tcp,
        host_port: 8080,
        container_address: C1,
        container_port: 80,
    })
    .unwrap();
    nat
}

fn bench_dnat(flows: usize) {
    let host = Endpoint::new(UPLINK, 8080);
    let inside = Endpoint::new(C1, 80);
    let now = Instant::from_secs(1);
    let establish = |nat: &mut Nat, i: u32| {
        expect_forward(nat.process(
            &mut tcp_frame(inside, client(i), true, true),
            NicId::Link,
            now,
        ));
        expect_forward(nat.process(
            &mut tcp_frame(client(i), host, false, true),
            NicId::Uplink,
            now,
        ));
    };

    // Memory: resident growth while building the table and its flows, with
    // frames made one at a time so that they do not count.
    let before = rss();
    let mut nat = nat_for(flows);
    for i in 0..flows as u32 {
        expect_forward(nat.process(
            &mut tcp_frame(client(i), host, true, false),
            NicId::Uplink,
            now,
        ));
        establish(&mut nat, i);
    }
    let table_bytes = rss().saturating_sub(before);
    drop(nat);

    // Setup rate: SYNs of new flows, frames made beforehand.
    let mut nat = nat_for(flows);
    let mut work: Vec<[u8; FRAME]> = (0..flows as u32)
        .map(|i| tcp_frame(client(i), host, true, false))
        .collect();
    let t = Clock::now();
    for f in work.iter_mut() {
        expect_forward(nat.process(f, NicId::Uplink, now));
    }
    let setup = t.elapsed();
    drop(work);
    for i in 0..flows as u32 {
        establish(&mut nat, i);
    }

    let order = shuffled(flows);
    let templates: Vec<[u8; FRAME]> = order
        .iter()
        .map(|&i| tcp_frame(client(i), host, false, true))
        .collect();
    let rounds = (8_000_000 / flows).max(1);
    let mut total = std::time::Duration::ZERO;
    let mut cpu = std::time::Duration::ZERO;
    for _ in 0..rounds {
        let mut work = templates.clone();
        let (t, c) = (Clock::now(), cpu_time());
        for f in work.iter_mut() {
            black_box(nat.process(black_box(f), NicId::Uplink, now));
        }
        total += t.elapsed();
        cpu += cpu_time() - c;
    }
    let packets = (rounds * flows) as f64;
    let ns = total.as_nanos() as f64 / packets;
    let cpu_ns = cpu.as_nanos() as f64 / packets;
    println!("nat: {flows} established flows (published-port DNAT)");
    println!(
        "  new-flow setup          {:>8.0} flows/s ({:.0} ns/flow)",
        flows as f64 / setup.as_secs_f64(),
        setup.as_nanos() as f64 / flows as f64
    );
    println!(
        "  lookup + rewrite        {ns:>8.1} ns/packet ({:.2} Mpps/core)",
        1e3 / ns
    );
    println!(
        "  lookup + rewrite, CPU   {cpu_ns:>8.1} ns/packet ({:.2} Mpps/core; thread CPU time)",
        1e3 / cpu_ns
    );
    println!(
        "  memory                  {:>8.1} bytes/flow (RSS growth; table sized for {} flows: {} bytes/flow; Flow struct {} bytes)",
        table_bytes as f64 / flows as f64,
        nat.conntrack().capacity(),
        nat.conntrack().bytes_per_flow(),
        std::mem::size_of::<conntrack::Flow>()
    );
}

fn service(backends: usize) -> ServiceConfig {
    ServiceConfig {
        name: "web".into(),
        vip: Some(VIP),
        proto: Transport::Tcp,
        port: 80,
        mode: ServiceMode::Vip,
        backends: (0..backends as u32)
            .map(|i| BackendConfig {
                address: Ipv4Address::from(0x0a51_0100 + i),
                port: 8000,
                weight: 1 + i % 3,
            })
            .collect(),
        health: None,
    }
}

fn bench_lb_nat(flows: usize) {
    let mut nat = nat_for(flows);
    nat.lb_mut()
        .add_service(service(100), Instant::ZERO)
        .unwrap();
    let now = Instant::from_secs(1);
    let vip = Endpoint::new(VIP, 80);
    let inside = |i: u32| {
        Endpoint::new(
            Ipv4Address::from(0x0a51_4000 + (i >> 8)),
            1024 + (i & 0xff) as u16,
        )
    };
    for i in 0..flows as u32 {
        expect_forward(nat.process(
            &mut tcp_frame(inside(i), vip, true, false),
            NicId::Link,
            now,
        ));
    }
    let templates: Vec<[u8; FRAME]> = shuffled(flows)
        .iter()
        .map(|&i| tcp_frame(inside(i), vip, false, true))
        .collect();
    let rounds = (2_000_000 / flows).max(1);
    let mut total = std::time::Duration::ZERO;
    for _ in 0..rounds {
        let mut work = templates.clone();
        let t = Clock::now();
        for f in work.iter_mut() {
            black_box(nat.process(black_box(f), NicId::Link, now));
        }
        total += t.elapsed();
    }
    let ns = total.as_nanos() as f64 / (rounds * flows) as f64;
    println!("lb + nat: {flows} established service flows, 100 backends");
    println!(
        "  lookup + rewrite        {ns:>8.1} ns/packet ({:.2} Mpps/core)",
        1e3 / ns
    );
}

fn bench_maglev() {
    let mut lb = LoadBalancer::new();
    lb.add_service(service(100), Instant::ZERO).unwrap();
    let tuples: Vec<FlowTuple> = (0..1_000_000u32)
        .map(|i| FlowTuple::new(Proto::Tcp, client(i), Endpoint::new(VIP, 80)))
        .collect();
    let t = Clock::now();
    for tu in &tuples {
        black_box(lb.pick(Proto::Tcp, Endpoint::new(VIP, 80), black_box(tu)));
    }
    let pick = t.elapsed().as_nanos() as f64 / tuples.len() as f64;
    let backends: Vec<Weighted> = (0..100).map(|i| Weighted { id: i, weight: 1 }).collect();
    let table = Maglev::new(&backends, DEFAULT_TABLE_SIZE).unwrap();
    let hashes: Vec<u64> = tuples.iter().map(flow_hash).collect();
    let t = Clock::now();
    for &h in &hashes {
        black_box(table.lookup(black_box(h)));
    }
    let lookup = t.elapsed().as_nanos() as f64 / hashes.len() as f64;
    println!("maglev: table of {DEFAULT_TABLE_SIZE} slots, 100 backends");
    println!("  table lookup            {lookup:>8.1} ns");
    println!("  service pick (hash+lookup) {pick:>5.1} ns");
    for n in [10u64, 100, 1000] {
        let backends: Vec<Weighted> = (0..n)
            .map(|i| Weighted {
                id: 0x0a51_0000_1f40 + (i << 16),
                weight: 1 + (i % 3) as u32,
            })
            .collect();
        let reps = 5;
        let t = Clock::now();
        for _ in 0..reps {
            black_box(Maglev::new(black_box(&backends), DEFAULT_TABLE_SIZE).unwrap());
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("  rebuild, {n:>4} backends   {ms:>8.2} ms");
    }
}

fn main() {
    let flows = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000usize);
    // In cache, then the table size asked for (1M: three dependent cache
    // misses per packet — index control bytes, index slot, flow — dominate).
    bench_dnat(10_000.min(flows));
    bench_dnat(flows);
    // Service flows take a SNAT port on the node address each: at most 28 232.
    bench_lb_nat(flows.min(20_000));
    bench_maglev();
}
