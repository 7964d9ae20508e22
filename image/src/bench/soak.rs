//! `weft soak`: one grid under everything at once for a set time, sampled every few
//! seconds, so that a leak, a table that only grows or a class of traffic that slowly
//! stops shows up as a trend rather than a failed test.
//!
//! The grid: two wefts (nodes 1 and 2) on one underlay with a Linux kernel `vxlan`
//! device as a third VTEP (node 100, in the first host's namespace), one network in
//! `auto` mode whose only trusted subnet is the Linux VTEP's address: weft to weft is
//! sleeve (encrypted), weft to Linux is plaintext VXLAN. The load, all concurrent:
//! iperf3 container to container over sleeve and container to the Linux VTEP over
//! VXLAN, dnsperf at the gateway, connection churn through a published port and a
//! service VIP (backends on both nodes), and control churn on node 1
//! (`container-add`/`container-remove` and `backend-set` several times a second, the
//! whole document applied every few seconds). Each sample reads both wefts' `status`:
//! heap in use, conntrack size and every drop counter. The report fits a line to the
//! heap after warm-up (its slope in KiB/min is the leak figure) and sums every failure.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use super::load::{self, ByteServer};
use super::refvm::RefJob;
use super::vm::{Host, Images, Kind};
use crate::build::{self, Profile};
use crate::netns::{Netns, PeerAddresses};
use crate::qemu::{Accel, MemoryMib};

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// How long the load runs (fractions allowed: 0.5 is 30 s).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Guest RAM of each weft.
    #[arg(long, default_value = "256M")]
    pub memory: MemoryMib,
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: Accel,
    /// weft image to boot (default: build the release image).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Where to write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

const VNI: u32 = 4242;
const GRID: &str = "soak";
const DOMAIN: &str = "weft.test";
const SECRET: &str = "5eed5eed5eed5eed5eed5eed5eed5eed0011223344556677";
/// The Linux VTEP: in node 1's host namespace, on the underlay.
const LINUX_UNDERLAY: &str = "192.0.2.1";
const LINUX_OVERLAY: &str = "10.81.128.100";
const CTR: [&str; 2] = ["10.81.128.11", "10.81.128.12"];
const SERVER_PORT: u16 = 7000;
const PUBLISHED_PORT: u16 = 8080;
const VIP: &str = "10.81.255.1";
const VIP_PORT: u16 = 80;
/// One iperf3, dnsperf or connection run; the loops repeat them until the end.
const RUN_SECS: u32 = 10;
/// Control churn: one change every this long; the whole document every `APPLY_EVERY`.
const CHURN_EVERY: Duration = Duration::from_millis(250);
const APPLY_EVERY: Duration = Duration::from_secs(5);

/// Node `n`'s document (1 or 2): the overlay, DNS names of both containers and the
/// Linux one, node 1's published port and both nodes' VIP with a backend on each.
fn document(n: u8) -> Value {
    let other = 3 - n;
    let containers: Vec<Value> = [(CTR[0], 1), (CTR[1], 2)]
        .iter()
        .map(|(a, i)| json!({"name": format!("app-{i}"), "service": "app", "address": a}))
        .chain(std::iter::once(
            json!({"name": "linux", "address": LINUX_OVERLAY}),
        ))
        .collect();
    let mut doc = json!({
        "uplink": {"address": format!("192.0.2.1{n}/24"), "gateway": LINUX_UNDERLAY},
        "link": {"address": format!("10.81.0.{n}/16")},
        "grid": {"node": n, "secret": SECRET, "trusted_subnets": [format!("{LINUX_UNDERLAY}/32")]},
        "networks": [{"name": "grid", "vni": VNI, "mode": "auto"}],
        "peers": [
            {"node": other, "address": format!("192.0.2.1{other}"), "networks": ["grid"]},
            {"node": 100, "address": LINUX_UNDERLAY, "networks": ["grid"]},
        ],
        "dns": {"grid": GRID, "domain": DOMAIN},
        "containers": containers,
        "services": [{"name": "web", "vip": VIP, "proto": "tcp", "port": VIP_PORT,
                      "backends": [{"address": CTR[0], "port": SERVER_PORT},
                                   {"address": CTR[1], "port": SERVER_PORT}]}],
    });
    if n == 1 {
        doc["publish"] = json!([{"proto": "tcp", "host_port": PUBLISHED_PORT,
                                 "container_address": CTR[0], "container_port": SERVER_PORT}]);
    }
    doc
}

/// What one class of load did over the whole run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally {
    pub runs: u64,
    pub failed_runs: u64,
    /// Completed operations (connections, queries, control commands).
    pub ok: u64,
    /// Failed operations (refused or timed-out connections, lost queries, errors).
    pub failed: u64,
    /// Mbit/s (iperf3) or queries/s (dnsperf) per run.
    pub rates: Vec<f64>,
    /// The first few failures, for the report.
    pub errors: Vec<String>,
}

/// Failures kept for the report, per class of load.
const ERRORS_KEPT: usize = 5;

impl Tally {
    fn run_failed(&mut self, e: impl std::fmt::Display) {
        self.runs += 1;
        self.failed_runs += 1;
        self.keep_error(e.to_string());
    }

    fn keep_error(&mut self, e: String) {
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(e);
        }
    }

    /// Folds one run's operations into the whole run's (the run itself is counted by
    /// the caller, which knows how it ended).
    fn absorb(&mut self, run: Tally) {
        self.ok += run.ok;
        self.failed += run.failed;
        self.rates.extend(run.rates);
        for e in run.errors {
            self.keep_error(e);
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub secs: f64,
    /// Per node: heap bytes in use, conntrack entries.
    pub heap_used: [u64; 2],
    pub conntrack: [u64; 2],
    /// Every drop counter of both nodes, by path (`n1.nat.drops.table_full`).
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub minutes: f64,
    pub samples: Vec<Sample>,
    /// Least-squares slope of heap in use after warm-up, KiB per minute, per node.
    pub heap_slope_kib_per_min: [f64; 2],
    pub tallies: BTreeMap<&'static str, Tally>,
    /// Drop counters that moved during the run (last sample minus first).
    pub drops_during: BTreeMap<String, u64>,
    pub alive: [bool; 2],
}

/// Every numeric leaf under a key named `drops`, by its path.
fn drop_counters(prefix: &str, v: &Value, in_drops: bool, out: &mut BTreeMap<String, u64>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let path = format!("{prefix}.{k}");
                drop_counters(&path, v, in_drops || k == "drops", out);
            }
        }
        Value::Number(n) if in_drops => {
            out.insert(prefix.to_string(), n.as_u64().unwrap_or(0));
        }
        _ => {}
    }
}

/// Least-squares slope of `ys` over `xs` (per unit of x).
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        num += (x - mx) * (y - my);
        den += (x - mx) * (x - mx);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// The Linux VTEP in `ns`: `vx0` (VNI, UDP 4789, flooding to both wefts) carrying the
/// overlay address itself.
fn linux_vtep(ns: &Netns) -> Result<()> {
    ns.ip(&[
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        &VNI.to_string(),
        "dstport",
        "4789",
        "local",
        LINUX_UNDERLAY,
        "nolearning",
    ])?;
    for peer in ["192.0.2.11", "192.0.2.12"] {
        crate::netns::run(ns.command("bridge").args([
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx0",
            "dst",
            peer,
        ]))?;
    }
    ns.ip(&["addr", "add", &format!("{LINUX_OVERLAY}/16"), "dev", "vx0"])?;
    ns.ip(&["link", "set", "vx0", "mtu", "1450", "up"])?;
    Ok(())
}

/// One dnsperf run: (queries completed, lost, queries/s, SERVFAIL answers).
fn dnsperf_run(ns: &Netns, queries: &std::path::Path) -> Result<(u64, u64, f64, u64)> {
    let out = ns
        .command("dnsperf")
        .args([
            "-s",
            "10.81.0.1",
            "-l",
            &RUN_SECS.to_string(),
            "-q",
            "32",
            "-t",
            "2",
        ])
        .args(["-Q", "300", "-d"])
        .arg(queries)
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name| load::dnsperf_field(&text, name);
    let servfail = text
        .lines()
        .find(|l| l.contains("Response codes"))
        .and_then(|l| l.split("SERVFAIL ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    match (
        field("Queries completed"),
        field("Queries lost"),
        field("Queries per second"),
    ) {
        (Some(c), Some(l), Some(q)) => Ok((c as u64, l as u64, q, servfail)),
        _ => bail!("dnsperf printed no statistics: {}", text.trim()),
    }
}

/// Runs `f` again and again until `stop`, each run's outcome folded into `tally`.
fn repeat(stop: &AtomicBool, tally: &Mutex<Tally>, mut f: impl FnMut(&mut Tally) -> Result<()>) {
    while !stop.load(Ordering::Relaxed) {
        let mut t = Tally::default();
        let r = f(&mut t);
        let mut all = tally.lock().unwrap_or_else(|p| p.into_inner());
        all.absorb(t);
        match r {
            Ok(()) => all.runs += 1,
            Err(e) => {
                all.run_failed(format!("{e:#}"));
                drop(all);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Control churn on node 1 until `stop`: a container added and the previous one
/// removed, a backend's weight changed, and the whole document every few seconds. The
/// appliance serves one control client at a time, so each round connects and lets go
/// (the sampler's `status` gets its turn between rounds).
fn control_churn(h: &Host, stop: &AtomicBool, tally: &Mutex<Tally>) {
    let mut i: u32 = 0;
    let mut last_apply = Instant::now();
    let doc = document(1);
    let name = |k: u32| format!("churn-{}", k % 200);
    let address = |k: u32| format!("10.81.200.{}", 1 + k % 200);
    while !stop.load(Ordering::Relaxed) {
        let mut t = Tally::default();
        match h.vm().and_then(|vm| vm.client()) {
            Err(e) => {
                t.failed += 1;
                t.errors.push(format!("connect: {e:#}"));
            }
            Ok(mut client) => {
                i = i.wrapping_add(1);
                let mut calls = vec![
                    (
                        "container-add",
                        json!({"name": name(i), "service": "churn", "address": address(i)}),
                    ),
                    (
                        "backend-set",
                        json!({"service": "web", "address": CTR[1], "port": SERVER_PORT,
                               "weight": 1 + i % 3}),
                    ),
                ];
                if i > 1 {
                    calls.push(("container-remove", json!({"name": name(i - 1)})));
                }
                for (cmd, args) in calls {
                    match client.call(cmd, Some(args)) {
                        Ok(r) if r.outcome.is_ok() => t.ok += 1,
                        // The whole document just applied took the previous churned
                        // container away: nothing to remove is no failure.
                        Ok(r) if cmd == "container-remove" && r.raw.contains("not_found") => {}
                        Ok(r) => {
                            t.failed += 1;
                            t.errors.push(format!("{cmd}: {}", r.raw));
                        }
                        Err(e) => {
                            t.failed += 1;
                            t.errors.push(format!("{cmd}: {e}"));
                        }
                    }
                }
                if last_apply.elapsed() >= APPLY_EVERY {
                    last_apply = Instant::now();
                    // The whole document again: the churned containers go, the rest stays.
                    match client.apply_value(&doc) {
                        Ok(_) => t.ok += 1,
                        Err(e) => {
                            t.failed += 1;
                            t.errors.push(format!("apply: {e}"));
                        }
                    }
                }
            }
        }
        {
            let mut all = tally.lock().unwrap_or_else(|p| p.into_inner());
            all.runs += 1;
            all.absorb(t);
        }
        std::thread::sleep(CHURN_EVERY);
    }
}

fn sample(hosts: &[Host; 2], start: Instant) -> Result<Sample> {
    let mut s = Sample {
        secs: start.elapsed().as_secs_f64(),
        heap_used: [0; 2],
        conntrack: [0; 2],
        drops: BTreeMap::new(),
    };
    for (i, h) in hosts.iter().enumerate() {
        let st = h.vm()?.status()?;
        s.heap_used[i] = st["heap"]["used_bytes"].as_u64().unwrap_or(0);
        s.conntrack[i] = st["nat"]["table_size"].as_u64().unwrap_or(0);
        drop_counters(&format!("n{}", i + 1), &st, false, &mut s.drops);
    }
    Ok(s)
}

fn log(s: &str) {
    eprintln!("weft soak: {s}");
}

/// Builds the grid, runs the load for `args.minutes` and reports.
pub fn run(args: &SoakArgs, interrupted: Arc<AtomicBool>) -> Result<SoakReport> {
    crate::netns::require_root()?;
    let weft = match &args.image {
        Some(p) => p.clone(),
        None => {
            log("building the release image");
            build::build_image_with(Profile::Release, true)?.path
        }
    };
    let images = Images {
        weft,
        linux: None,
        weft_append: String::new(),
        accel: args.accel,
        ready_timeout: Duration::from_secs(120),
    };
    let peers = |n: u8| PeerAddresses {
        host: format!("192.0.2.{n}/24"),
        ctr: format!("{}/16", CTR[usize::from(n - 1)]),
        ctr_gateway: format!("10.81.0.{n}"),
    };
    let mut h1 = Host::create(peers(1))?;
    let mut h2 = Host::create(peers(2))?;
    h1.join_uplinks(&h2)?;
    log("booting two wefts");
    let job = RefJob::default();
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| h1.boot(Kind::Weft, &images, args.memory, &job).map(|_| ()));
        let b = s.spawn(|| h2.boot(Kind::Weft, &images, args.memory, &job).map(|_| ()));
        (
            a.join().unwrap_or_else(|_| bail!("boot thread panicked")),
            b.join().unwrap_or_else(|_| bail!("boot thread panicked")),
        )
    });
    r1?;
    r2?;
    for (n, h) in [(1u8, &h1), (2, &h2)] {
        h.vm()?
            .apply(&document(n))
            .with_context(|| format!("node {n} refused the soak document"))?;
    }
    linux_vtep(&h1.topo.host).context("the Linux VTEP")?;
    for (h, mtu) in [(&h1, "1408"), (&h2, "1408")] {
        // The sleeve overlay's MTU (docs/sleeve.md); the Linux VTEP's 1450 is larger,
        // and VXLAN towards it carries the 1408 frames with room to spare.
        h.topo
            .ctr
            .ip(&["link", "set", &h.topo.names.ctr_veth, "mtu", mtu])?;
    }
    let hosts = [h1, h2];
    let (c1, c2) = (&hosts[0].topo.ctr, &hosts[1].topo.ctr);
    let lx = &hosts[0].topo.host;
    crate::netns::Topology::ping(c1, CTR[1], 2, 60).context("node 1 -> node 2 over sleeve")?;
    crate::netns::Topology::ping(c2, LINUX_OVERLAY, 2, 60)
        .context("node 2 -> the Linux VTEP over VXLAN")?;
    let _servers = [
        ByteServer::start(c1.name(), SERVER_PORT)?,
        ByteServer::start(c2.name(), SERVER_PORT)?,
    ];
    let published = SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(192, 0, 2, 11),
        PUBLISHED_PORT,
    ));
    let vip = SocketAddr::V4(SocketAddrV4::new(VIP.parse()?, VIP_PORT));
    let dir = hosts[0].dir.clone();
    let queries = dir.join("queries.txt");
    std::fs::write(
        &queries,
        format!(
            "app-1 A\napp-2.{GRID}.{DOMAIN} A\napp.{GRID}.{DOMAIN} A\nlinux.{DOMAIN} A\nnope.{GRID}.{DOMAIN} A\n"
        ),
    )?;

    let names = [
        "iperf_sleeve",
        "iperf_vxlan",
        "dns",
        "publish_conns",
        "vip_conns",
        "control",
    ];
    let tallies: Vec<Mutex<Tally>> = names.iter().map(|_| Mutex::new(Tally::default())).collect();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let mut samples = Vec::new();
    log(&format!(
        "load for {:.1} min, a sample every {} s",
        args.minutes, args.sample_secs
    ));
    std::thread::scope(|s| {
        let stop = &stop;
        let t = &tallies;
        s.spawn(move || {
            repeat(stop, &t[0], |t| {
                let mbit = load::iperf3(c1, c2, CTR[0], RUN_SECS)?;
                t.rates.push(mbit);
                Ok(())
            })
        });
        s.spawn(move || {
            repeat(stop, &t[1], |t| {
                let mbit = load::iperf3(lx, c2, LINUX_OVERLAY, RUN_SECS)?;
                t.rates.push(mbit);
                Ok(())
            })
        });
        let queries = &queries;
        s.spawn(move || {
            repeat(stop, &t[2], |t| {
                let (ok, lost, qps, servfail) = dnsperf_run(c1, queries)?;
                t.ok += ok - servfail.min(ok);
                t.failed += lost + servfail;
                t.rates.push(qps);
                Ok(())
            })
        });
        for (i, (ns, to)) in [(lx.name(), published), (c1.name(), vip)]
            .into_iter()
            .enumerate()
        {
            s.spawn(move || {
                repeat(stop, &t[3 + i], |t| {
                    match load::connections_per_second(
                        ns,
                        to,
                        4,
                        Duration::from_secs(RUN_SECS.into()),
                    ) {
                        Ok(r) => {
                            t.ok += r.ok;
                            t.failed += r.failed;
                            t.rates.push(r.per_second);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                })
            });
        }
        let h = &hosts[0];
        s.spawn(move || control_churn(h, stop, &t[5]));

        let mut next = start;
        while start.elapsed() < duration && !interrupted.load(Ordering::SeqCst) {
            next += Duration::from_secs(args.sample_secs);
            match sample(&hosts, start) {
                Ok(smp) => {
                    log(&format!(
                        "t={:>5.0}s heap {} / {} KiB, conntrack {} / {}",
                        smp.secs,
                        smp.heap_used[0] / 1024,
                        smp.heap_used[1] / 1024,
                        smp.conntrack[0],
                        smp.conntrack[1]
                    ));
                    samples.push(smp);
                }
                Err(e) => log(&format!("sample failed: {e:#}")),
            }
            let now = Instant::now();
            if next > now {
                std::thread::sleep((next - now).min(duration.saturating_sub(start.elapsed())));
            }
        }
        stop.store(true, Ordering::SeqCst);
        log("stopping the load (each generator finishes its current run)");
    });
    if interrupted.load(Ordering::SeqCst) {
        // Ctrl-C reached the VMs too: no last sample to take; the hosts go on drop.
        bail!("interrupted");
    }
    if let Ok(last) = sample(&hosts, start) {
        samples.push(last);
    }
    let mut alive = [false; 2];
    for (i, h) in hosts.iter().enumerate() {
        alive[i] = h.vm().and_then(|vm| vm.status()).is_ok();
    }
    // Warm-up: the first fifth of the run (at least one sample) is left out of the fit.
    let warm = (samples.len() / 5)
        .max(1)
        .min(samples.len().saturating_sub(2));
    let xs: Vec<f64> = samples[warm..].iter().map(|s| s.secs / 60.0).collect();
    let mut heap_slope_kib_per_min = [0.0; 2];
    for (i, slot) in heap_slope_kib_per_min.iter_mut().enumerate() {
        let ys: Vec<f64> = samples[warm..]
            .iter()
            .map(|s| s.heap_used[i] as f64 / 1024.0)
            .collect();
        *slot = slope(&xs, &ys);
    }
    let mut drops_during = BTreeMap::new();
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        for (k, v) in &last.drops {
            let d = v.saturating_sub(first.drops.get(k).copied().unwrap_or(0));
            if d > 0 {
                drops_during.insert(k.clone(), d);
            }
        }
    }
    Ok(SoakReport {
        minutes: start.elapsed().as_secs_f64() / 60.0,
        samples,
        heap_slope_kib_per_min,
        tallies: names
            .iter()
            .zip(tallies)
            .map(|(n, t)| (*n, t.into_inner().unwrap_or_else(|p| p.into_inner())))
            .collect(),
        drops_during,
        alive,
    })
}

impl SoakReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "weft soak: {:.1} min, {} samples\n",
            self.minutes,
            self.samples.len()
        );
        out.push_str("     t(s)  heap1 KiB  heap2 KiB  conntrack1  conntrack2\n");
        for s in &self.samples {
            out.push_str(&format!(
                "{:>9.0}  {:>9}  {:>9}  {:>10}  {:>10}\n",
                s.secs,
                s.heap_used[0] / 1024,
                s.heap_used[1] / 1024,
                s.conntrack[0],
                s.conntrack[1]
            ));
        }
        out.push_str(&format!(
            "heap slope after warm-up: node 1 {:+.1} KiB/min, node 2 {:+.1} KiB/min\n",
            self.heap_slope_kib_per_min[0], self.heap_slope_kib_per_min[1]
        ));
        out.push_str("load            runs  failed runs        ok    failed   mean rate\n");
        for (name, t) in &self.tallies {
            let mean = if t.rates.is_empty() {
                0.0
            } else {
                t.rates.iter().sum::<f64>() / t.rates.len() as f64
            };
            out.push_str(&format!(
                "{name:<14} {:>5}  {:>11}  {:>8}  {:>8}  {:>10.1}\n",
                t.runs, t.failed_runs, t.ok, t.failed, mean
            ));
            for e in &t.errors {
                out.push_str(&format!("    {e}\n"));
            }
        }
        if self.drops_during.is_empty() {
            out.push_str("drops during the run: none\n");
        } else {
            out.push_str("drops during the run:\n");
            for (k, v) in &self.drops_during {
                out.push_str(&format!("    {k} {v}\n"));
            }
        }
        out.push_str(&format!(
            "alive at the end: node 1 {}, node 2 {}\n",
            self.alive[0], self.alive[1]
        ));
        out
    }
}

/// `weft soak`: runs, prints the report, writes the JSON; fails when a weft died.
pub fn main(args: SoakArgs) -> std::process::ExitCode {
    let res = run(&args, super::interrupt_flag()).and_then(|r| {
        print!("{}", r.render());
        if let Some(p) = &args.json {
            std::fs::write(p, serde_json::to_vec_pretty(&r)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        if r.alive != [true, true] {
            bail!("a weft stopped answering during the soak");
        }
        Ok(())
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft soak: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise_around_a_level() {
        let xs = [0.0, 1.0, 2.0, 3.0];
        assert!((slope(&xs, &[1.0, 3.0, 5.0, 7.0]) - 2.0).abs() < 1e-9);
        assert!(slope(&xs, &[5.0, 4.0, 5.0, 4.0]).abs() < 0.5);
        assert_eq!(slope(&[1.0], &[1.0]), 0.0);
    }

    #[test]
    fn drop_counters_are_found_at_any_depth() {
        let st = json!({"nat": {"drops": {"table_full": 3, "spoofed": 0}, "table_size": 9},
                        "interfaces": {"link": {"counters": {"drops": {"runt": 1}}}}});
        let mut out = BTreeMap::new();
        drop_counters("n1", &st, false, &mut out);
        assert_eq!(out.get("n1.nat.drops.table_full"), Some(&3));
        assert_eq!(out.get("n1.interfaces.link.counters.drops.runt"), Some(&1));
        assert!(!out.contains_key("n1.nat.table_size"));
    }

    #[test]
    fn the_soak_documents_are_valid_weft_configs() {
        for n in [1, 2] {
            weft_control::document::Document::from_json(document(n))
                .unwrap_or_else(|e| panic!("node {n}: {e}"));
        }
    }
}
