//! Host figures of big grids (issue 22): applying a whole grid document through the
//! control protocol (in parts), the heap it leaves and per record, one `container-add`
//! or one peer into it, where apply time goes, and ARP/broadcast head-end replication to
//! many peers.
//!
//! Run: `cargo run --release -p weft-appliance --example grid_bench [peers containers services]`
//! (default 999 100000 1000: a grid of 1 000 nodes; at most 1015 peers, node ids stop at
//! 1016). Figures only: nothing here
//! asserts a time. Heap figures come from a counting allocator around the system one
//! (`peak_alloc`), so they are the appliance's own allocations, as the kernel's heap
//! counts them.

use std::hint::black_box;
use std::time::{Duration as Wall, Instant as Clock};

use peak_alloc::PeakAlloc;
use serde_json::{json, Value};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, Ipv4Address};
use weft_appliance::protocol::MAX_LINE_LEN;
use weft_appliance::weft_netstack::wire::probe;
use weft_appliance::weft_netstack::MemPort;
use weft_appliance::{config_text, Appliance, BootInfo, Config};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Heap bytes in use now.
fn live() -> usize {
    ALLOC.current_usage()
}

/// Resets the high-water mark to the bytes in use now.
fn reset_peak() {
    ALLOC.reset_peak_usage();
}

fn peak() -> usize {
    ALLOC.peak_usage()
}

const UPLINK_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const LINK_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
const UPLINK_IP: Ipv4Address = Ipv4Address::new(172, 16, 0, 2);

fn boot() -> Appliance {
    let mut app = Appliance::new(
        BootInfo {
            uplink_mac: UPLINK_MAC,
            link_mac: LINK_MAC,
            seed: 1,
            cmdline: String::new(),
        },
        Instant::ZERO,
    );
    let mut out = Vec::new();
    app.control_connected(Instant::ZERO, &mut out);
    app
}

fn peer_ip(n: usize) -> Ipv4Address {
    Ipv4Address::new(172, 16, 1 + (n / 250) as u8, 1 + (n % 250) as u8)
}

fn peer_mac(n: usize) -> EthernetAddress {
    EthernetAddress([0x52, 0x54, 1, 0, (n >> 8) as u8, n as u8])
}

fn container_ip(i: usize) -> String {
    let a = 0x0a41_0000 + i as u32 + 1; // 10.65.0.1 on
    std::net::Ipv4Addr::from(a).to_string()
}

/// A grid document: node 1 of `peers + 1` nodes on one network, `containers` containers
/// in `services / 10 + 1` DNS services, `services` L4 services of 10 backends each.
fn grid(peers: usize, containers: usize, services: usize) -> Value {
    let mut doc = json!({
        "uplink": {"address": "172.16.0.2/16", "gateway": "172.16.0.1"},
        "link": {"address": "10.64.0.1/10"},
        "grid": {"node": 1, "subnet": "10.64.0.0/10"},
        "networks": [{"name": "default", "vni": 100}],
        "dns": {"grid": "big", "upstreams": ["172.16.0.53"]},
    });
    doc["peers"] = (0..peers)
        .map(|n| json!({"node": n + 2, "address": peer_ip(n).to_string(), "networks": ["default"]}))
        .collect();
    let groups = services / 10 + 1;
    doc["containers"] = (0..containers)
        .map(|i| {
            json!({"name": format!("app{}-web-{i}", i % groups),
                   "service": format!("app{}-web", i % groups),
                   "address": container_ip(i)})
        })
        .collect();
    doc["services"] = (0..services)
        .map(|s| {
            let vip = std::net::Ipv4Addr::from(0x0a64_0000 + s as u32 + 1); // 10.100.0.1 on
            let backends: Vec<Value> = (0..10)
                .map(|b| json!({"address": container_ip((s * 10 + b) % containers.max(1)), "port": 8080}))
                .collect();
            json!({"name": format!("lb-{s}"), "vip": vip.to_string(), "proto": "tcp",
                   "port": 80, "backends": backends})
        })
        .collect();
    doc
}

/// The request lines that apply `text` in parts (as `weft_control::client` sends them).
fn part_lines(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |v: Value| {
        out.extend_from_slice(v.to_string().as_bytes());
        out.push(b'\n');
    };
    push(json!({"id": 0, "cmd": "apply-begin", "args": {"bytes": text.len()}}));
    let part = MAX_LINE_LEN / 2;
    let (mut offset, mut id) = (0, 1);
    while offset < text.len() {
        let mut end = (offset + part).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        push(
            json!({"id": id, "cmd": "apply-part", "args": {"offset": offset, "text": &text[offset..end]}}),
        );
        offset = end;
        id += 1;
    }
    out
}

fn ms(d: Wall) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// One whole apply in parts on a fresh appliance; prints its figures.
fn apply_figures(label: &str, doc: &Value, records: usize) -> Appliance {
    let text = doc.to_string();
    let mut app = boot();
    let base = live();
    let lines = part_lines(&text);
    let mut out = Vec::new();
    let t = Clock::now();
    app.control_input(Instant::ZERO, &lines, &mut out);
    let sent = t.elapsed();
    drop(lines);
    let held = live() - base;
    reset_peak();
    let t = Clock::now();
    app.control_input(
        Instant::ZERO,
        b"{\"id\":\"commit\",\"cmd\":\"apply-commit\"}\n",
        &mut out,
    );
    let commit = t.elapsed();
    let reply = String::from_utf8_lossy(&out);
    let last = reply.lines().last().unwrap_or("");
    assert!(last.contains("\"changed\":true"), "{label}: {last}");
    let after = live() - base;
    let peak_commit = peak() - base;
    println!("{label}:");
    println!(
        "  document {} bytes ({:.1} MiB), {} records",
        text.len(),
        mib(text.len()),
        records
    );
    println!(
        "  apply in parts {:.1} ms (parts {:.1} ms, commit: parse+validate+apply {:.1} ms)",
        ms(sent + commit),
        ms(sent),
        ms(commit)
    );
    println!(
        "  heap after {:.1} MiB, {:.0} bytes/record; while receiving {:.1} MiB; peak at commit {:.1} MiB ({:.2} x the text)",
        mib(after),
        after as f64 / records.max(1) as f64,
        mib(held),
        mib(peak_commit),
        peak_commit as f64 / text.len() as f64
    );
    app
}

/// What a breakdown step keeps of the document.
type Keep = fn(&mut Config);

/// Where the commit's time goes: the same steps one by one on a fresh appliance.
fn breakdown(doc: &Value) {
    let base = live();
    let text = doc.to_string();
    let text_len = text.len();
    reset_peak();
    let t = Clock::now();
    let config = config_text::parse(&text).unwrap();
    let parse = t.elapsed();
    let parsed_peak = peak() - base;
    let t = Clock::now();
    config.validate().unwrap();
    let validate = t.elapsed();
    drop(text);
    let config_bytes = live() - base;
    let mut app = boot();
    let t = Clock::now();
    app.apply(config.clone()).unwrap();
    let apply = t.elapsed();
    println!(
        "  commit steps: parse {:.1} ms (peak with the text {:.2} x the text; parsed document {:.0} bytes/record), validate {:.1} ms, apply {:.1} ms (validates again)",
        ms(parse),
        parsed_peak as f64 / text_len as f64,
        config_bytes as f64
            / (config.containers.len() + config.peers.len() + config.services.len()).max(1)
                as f64,
        ms(validate),
        ms(apply)
    );
    // Each section alone on a fresh appliance: which part of apply costs what.
    let sections: [(&str, Keep); 3] = [
        ("peers only", |c: &mut Config| {
            c.containers.clear();
            c.services.clear();
        }),
        ("containers only", |c: &mut Config| {
            c.peers.clear();
            c.services.clear();
        }),
        ("services only", |c: &mut Config| {
            c.peers.clear();
            c.containers.clear();
        }),
    ];
    // The heap an appliance keeps for `c` (its config built inside the measurement).
    let kept = |c: &Config| {
        let b = live();
        let mut app = boot();
        let t = Clock::now();
        app.apply(c.clone()).unwrap();
        let took = t.elapsed();
        let bytes = live() - b;
        black_box(app);
        (bytes, took)
    };
    let mut empty = config.clone();
    empty.peers.clear();
    empty.containers.clear();
    empty.services.clear();
    let (empty_bytes, _) = kept(&empty);
    println!(
        "  an empty grid keeps {:.1} MiB (the 65536-flow table is {:.1} MiB of it)",
        mib(empty_bytes),
        mib(weft_appliance::weft_netstack::table::conntrack::Conntrack::table_bytes(65_536))
    );
    for (name, keep) in sections {
        let mut c = config.clone();
        keep(&mut c);
        let n = c.peers.len() + c.containers.len() + c.services.len();
        let (bytes, took) = kept(&c);
        let bytes = bytes.saturating_sub(empty_bytes);
        println!(
            "  {name}: apply {:.1} ms, heap {:.1} MiB beside an empty grid, {:.0} bytes each",
            ms(took),
            mib(bytes),
            bytes as f64 / n.max(1) as f64
        );
    }
}

/// `container-add` / `container-remove` round trips through the control protocol.
fn container_latency(label: &str, app: &mut Appliance) {
    let mut out = Vec::new();
    let mut times = Vec::new();
    for i in 0..2_000 {
        let line = if i % 2 == 0 {
            format!(
                "{{\"id\":{i},\"cmd\":\"container-add\",\"args\":{{\"name\":\"probe-{i}\",\"service\":\"app0-web\",\"address\":\"10.99.0.{}\"}}}}\n",
                1 + i % 250
            )
        } else {
            format!(
                "{{\"id\":{i},\"cmd\":\"container-remove\",\"args\":{{\"name\":\"probe-{}\"}}}}\n",
                i - 1
            )
        };
        out.clear();
        let t = Clock::now();
        app.control_input(Instant::ZERO, line.as_bytes(), &mut out);
        times.push(t.elapsed());
        assert!(out.starts_with(b"{\"id\"") && !out.windows(7).any(|w| w == b"\"error\""));
    }
    times.sort();
    println!(
        "  {label}: container-add/remove median {:.1} us, p99 {:.1} us (2000 commands)",
        times[times.len() / 2].as_secs_f64() * 1e6,
        times[times.len() * 99 / 100].as_secs_f64() * 1e6
    );
}

/// `peer-remove` / `peer-add` round trips of one peer (the `peers`-th of the grid, node
/// `peers + 1`) through the control protocol: the overlay is changed in place.
fn peer_latency(label: &str, app: &mut Appliance, peers: usize) {
    let n = peers - 1;
    let address = peer_ip(n);
    let mut out = Vec::new();
    let mut times = Vec::new();
    for i in 0..400 {
        let line = if i % 2 == 0 {
            format!(
                "{{\"id\":{i},\"cmd\":\"peer-remove\",\"args\":{{\"address\":\"{address}\"}}}}\n"
            )
        } else {
            format!(
                "{{\"id\":{i},\"cmd\":\"peer-add\",\"args\":{{\"node\":{},\"address\":\"{address}\",\"networks\":[\"default\"]}}}}\n",
                n + 2
            )
        };
        out.clear();
        let t = Clock::now();
        app.control_input(Instant::ZERO, line.as_bytes(), &mut out);
        times.push(t.elapsed());
        assert!(
            out.starts_with(b"{\"id\"") && !out.windows(7).any(|w| w == b"\"error\""),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    times.sort();
    println!(
        "  {label}: peer-remove/add median {:.1} us, p99 {:.1} us (400 commands)",
        times[times.len() / 2].as_secs_f64() * 1e6,
        times[times.len() * 99 / 100].as_secs_f64() * 1e6
    );
}

/// Broadcasts from a container on the link: each reaches every peer of its network as
/// one VXLAN copy (head-end replication); an ARP request for an address bound with
/// `fdb-add ... ip` is answered on the spot and reaches no peer.
fn replication(peers: usize) {
    let mut app = boot();
    let doc = grid(peers, 0, 0);
    app.apply(Config::from_json_value(&doc).unwrap()).unwrap();
    let mut uplink = MemPort::with_tx_capacity(EthernetAddress(UPLINK_MAC), 1 << 16);
    let mut link = MemPort::with_tx_capacity(EthernetAddress(LINK_MAC), 1 << 16);
    // Every peer answers ARP, so copies to it can leave.
    for n in 0..peers {
        let mut reply = probe::arp_request(peer_mac(n), peer_ip(n), UPLINK_IP);
        reply[..6].copy_from_slice(&UPLINK_MAC);
        reply[14 + 7] = 2;
        uplink.inject(&reply);
    }
    let mut now = Instant::from_millis(1);
    for _ in 0..8 {
        app.poll(now, &mut uplink, &mut link);
        now += smoltcp::time::Duration::from_millis(1);
    }
    uplink.take_transmitted();
    let mut out = Vec::new();
    let bound = Ipv4Address::new(10, 65, 200, 1);
    app.control_input(
        now,
        format!("{{\"id\":1,\"cmd\":\"fdb-add\",\"args\":{{\"vni\":100,\"mac\":\"02:42:0a:41:c8:01\",\"peer\":\"{}\",\"ip\":\"{bound}\"}}}}\n", peer_ip(0)).as_bytes(),
        &mut out,
    );
    assert!(
        !out.windows(7).any(|w| w == b"\"error\""),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let me = EthernetAddress([0x02, 0x42, 0x0a, 0x41, 0, 2]);
    let my_ip = Ipv4Address::new(10, 65, 0, 2);
    let cases = [
        (
            "ARP request, unknown address",
            probe::arp_request(me, my_ip, Ipv4Address::new(10, 65, 250, 9)),
        ),
        (
            "ARP request, address bound by fdb-add (suppressed)",
            probe::arp_request(me, my_ip, bound),
        ),
    ];
    let rounds = 200;
    for (name, frame) in cases {
        let mut copies = 0;
        let mut answered = 0;
        let t = Clock::now();
        for _ in 0..rounds {
            link.inject(&frame);
            app.poll(now, &mut uplink, &mut link);
            copies += uplink.take_transmitted().len();
            answered += link.take_transmitted().len();
        }
        let each = t.elapsed() / rounds;
        let per_copy = if copies > 0 {
            format!(
                ", {:.0} ns per copy",
                each.as_nanos() as f64 / (copies / rounds as usize) as f64
            )
        } else {
            String::new()
        };
        println!(
            "  {name}: {} copies to peers, {} frames back on the link, {:.1} us per broadcast{per_copy}",
            copies / rounds as usize,
            answered / rounds as usize,
            each.as_secs_f64() * 1e6
        );
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let peers = args.first().copied().unwrap_or(999).clamp(2, 1015);
    let containers = args.get(1).copied().unwrap_or(100_000);
    let services = args.get(2).copied().unwrap_or(1_000);
    println!("grid_bench: host path, release build, one core");

    for (c, sv) in [(10_000, 0), (10_000, 100)] {
        let doc = grid(peers, c, sv);
        let app = apply_figures(
            &format!("grid of {peers} peers, {c} containers, {sv} services x 10 backends"),
            &doc,
            peers + c + sv,
        );
        drop(app);
    }

    let doc = grid(peers, containers, services);
    let mut app = apply_figures(
        &format!(
            "grid of {peers} peers, {containers} containers, {services} services x 10 backends"
        ),
        &doc,
        peers + containers + services,
    );
    container_latency("into that grid", &mut app);
    peer_latency("into that grid", &mut app, peers);
    drop(app);
    breakdown(&doc);
    drop(doc);

    let mut tiny = boot();
    let doc = grid(2, 10, 1);
    tiny.apply(Config::from_json_value(&doc).unwrap()).unwrap();
    container_latency("into a grid of 10 containers", &mut tiny);
    peer_latency("into a grid of 2 peers and 10 containers", &mut tiny, 2);

    println!("head-end replication, one network of {} nodes:", peers + 1);
    replication(peers);
}
