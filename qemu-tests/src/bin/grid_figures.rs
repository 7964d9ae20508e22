//! The issue-22 figures in the VM: a whole grid document applied through the control
//! socket in parts (time from `apply-begin` to `apply-commit`'s reply, and the commit
//! alone), the heap it leaves (`status.heap`) and per record, and the round trip of one
//! `container-add` into that grid. Release image, `-accel tcg`, 256 MiB unless given.
//! Run as root: `cargo run -p weft-qemu-tests --release --bin grid_figures [MiB]`
//! (prints a Markdown table for docs/PERFORMANCE.md; host figures come from
//! `cargo run --release -p weft-appliance --example grid_bench`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_control::client::{Client, ControlError, Reply, PART_BYTES};
use weft_image::build::{self, Profile};
use weft_image::qemu::MemoryMib;
use weft_qemu_tests::{BootOptions, TestVm};

/// A grid for the default test topology's uplink: node 1 of `peers + 1` (peers behind
/// the gateway), `containers` containers, `services` services of 10 backends each.
fn grid(peers: usize, containers: usize, services: usize) -> Value {
    let ip = |base: u32, i: usize| std::net::Ipv4Addr::from(base + i as u32).to_string();
    let groups = services / 10 + 1;
    json!({
        "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
        "link": {"address": "10.64.0.1/10"},
        "grid": {"node": 1, "subnet": "10.64.0.0/10"},
        "networks": [{"name": "default", "vni": 100}],
        "dns": {"grid": "big", "upstreams": ["192.0.2.53"]},
        "peers": (0..peers).map(|n| json!({"node": n + 2, "address": ip(0xac10_0101, n),
                                           "networks": ["default"]})).collect::<Vec<_>>(),
        "containers": (0..containers).map(|i| json!({
            "name": format!("app{}-web-{i}", i % groups),
            "service": format!("app{}-web", i % groups),
            "address": ip(0x0a41_0001, i)})).collect::<Vec<_>>(),
        "services": (0..services).map(|s| json!({
            "name": format!("lb-{s}"), "vip": ip(0x0a64_0001, s), "proto": "tcp", "port": 80,
            "backends": (0..10).map(|b| json!({"address": ip(0x0a41_0001, (s * 10 + b) % containers.max(1)),
                                               "port": 8080})).collect::<Vec<_>>()
        })).collect::<Vec<_>>(),
    })
}

struct Applied {
    bytes: usize,
    parts: Duration,
    commit: Duration,
    outcome: Result<Value, String>,
}

/// Sends `doc` in parts as the client does, timing the parts and the commit apart.
fn apply_timed(c: &mut Client, doc: &Value) -> Result<Applied, ControlError> {
    let text = doc.to_string();
    let t = Instant::now();
    let begin = c.call("apply-begin", Some(json!({"bytes": text.len()})))?;
    if let Err(e) = begin.outcome {
        return Ok(Applied {
            bytes: text.len(),
            parts: t.elapsed(),
            commit: Duration::ZERO,
            outcome: Err(weft_control::client::remote_line(&e)),
        });
    }
    let mut offset = 0;
    while offset < text.len() {
        let mut end = (offset + PART_BYTES * 3 / 4).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let r = c.call(
            "apply-part",
            Some(json!({"offset": offset, "text": &text[offset..end]})),
        )?;
        if let Err(e) = r.outcome {
            return Ok(Applied {
                bytes: text.len(),
                parts: t.elapsed(),
                commit: Duration::ZERO,
                outcome: Err(weft_control::client::remote_line(&e)),
            });
        }
        offset = end;
    }
    let parts = t.elapsed();
    let t = Instant::now();
    let r: Reply = c.call("apply-commit", None)?;
    Ok(Applied {
        bytes: text.len(),
        parts,
        commit: t.elapsed(),
        outcome: r.outcome.map_err(|e| weft_control::client::remote_line(&e)),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if let Err(e) = weft_image::netns::require_root() {
        eprintln!("grid_figures: {e}");
        std::process::exit(1);
    }
    let memory: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    eprintln!("grid_figures: building the release image");
    let img = build::build_image_with(Profile::Release, true).unwrap_or_else(|e| {
        eprintln!("grid_figures: {e:#}");
        std::process::exit(1)
    });
    let opts = BootOptions {
        memory: MemoryMib(memory),
        image: Some(img.path.clone()),
        time_limit: Duration::from_secs(1800),
        ..BootOptions::default()
    };
    println!("| grid (VM, -m {memory}M, TCG) | document | parts sent | commit (parse, validate, apply) | heap after | per record | container-add round trip (median, p99 of 200) |");
    println!("|---|---|---|---|---|---|---|");
    for (peers, containers, services) in [
        (253, 10_000, 0),
        (253, 10_000, 100),
        (253, 100_000, 0),
        (253, 100_000, 1_000),
    ] {
        let vm = TestVm::try_boot_with("grid-figures", opts.clone()).unwrap_or_else(|e| {
            eprintln!("grid_figures: {e}");
            std::process::exit(1)
        });
        let mut c = Client::connect(&vm.control, Duration::from_secs(1200)).unwrap();
        let before = c
            .status()
            .ok()
            .and_then(|s| s.heap)
            .map_or(0, |h| h.used_bytes);
        let doc = grid(peers, containers, services);
        let label = format!("{peers} peers, {containers} containers, {services} services x 10");
        eprintln!("grid_figures: {label}");
        let applied = match apply_timed(&mut c, &doc) {
            Ok(a) => a,
            Err(e) => {
                println!("| {label} | | | failed: {e} | | | |");
                continue;
            }
        };
        drop(doc);
        let heap = c.status().ok().and_then(|s| s.heap);
        let after = heap.map_or(0, |h| h.used_bytes).saturating_sub(before);
        let records = (peers + containers + services) as u64;
        let (commit, heap_after, per_record, latency) = match &applied.outcome {
            Ok(_) => {
                let mut times = Vec::new();
                for i in 0..200 {
                    let t = Instant::now();
                    let args = if i % 2 == 0 {
                        json!({"name": format!("probe-{i}"), "service": "app0-web", "address": "10.99.0.1"})
                    } else {
                        json!({"name": format!("probe-{}", i - 1)})
                    };
                    let cmd = if i % 2 == 0 {
                        "container-add"
                    } else {
                        "container-remove"
                    };
                    let r = c.call(cmd, Some(args)).unwrap();
                    times.push(t.elapsed());
                    assert!(r.outcome.is_ok(), "{}", r.raw);
                }
                times.sort();
                (
                    ms(applied.commit),
                    format!("{:.1} MiB", after as f64 / (1 << 20) as f64),
                    format!("{} bytes", after / records),
                    format!(
                        "{:.1} ms, {:.1} ms",
                        times[100].as_secs_f64() * 1e3,
                        times[197].as_secs_f64() * 1e3
                    ),
                )
            }
            Err(e) => (
                format!("refused: {e}"),
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        println!(
            "| {label} | {:.1} MiB | {} | {commit} | {heap_after} | {per_record} | {latency} |",
            applied.bytes as f64 / (1 << 20) as f64,
            ms(applied.parts),
        );
        if let Some(h) = heap {
            eprintln!(
                "  heap {} KiB used, peak {} KiB, of {} KiB",
                h.used_bytes / 1024,
                h.peak_bytes / 1024,
                h.size_bytes / 1024
            );
        }
    }
}
