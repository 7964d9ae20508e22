//! `weft bench`: weft against a reference Linux VM doing the same job, under the same
//! QEMU on the same machine (issue 8). It builds the reference VM ([`refvm`]), runs each
//! scenario for both kinds, alternating which goes first, for several rounds, and
//! prints and writes (JSON) a table of medians, min–max and the ratio weft/Linux.
//! `weft bench micro` runs the host micro-benchmarks of the packet path into the same
//! table. Everything runs in namespaces it creates and removes; a scenario whose weft
//! feature is not wired yet is listed as `missing` with the reason, never skipped.

pub mod features;
pub mod load;
pub mod micro;
pub mod refvm;
pub mod report;
pub mod scenarios;
pub mod soak;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::{self, Profile};
use crate::qemu::{Accel, MemoryMib};
use report::{Better, Report, Row, Side};
use scenarios::{Ctx, RunError, Values};
use vm::{Images, Kind};

/// `weft bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub cmd: Option<BenchCmd>,
    /// Rounds per scenario (each round runs weft and Linux once, alternating order).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// One round with short measurements (a smoke run, not figures).
    #[arg(long)]
    pub quick: bool,
    /// Where to write the table as JSON (default target/weft/bench.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run only these scenarios (comma-separated): boot, vxlan, sleeve, dns, publish,
    /// vip, memory (a row id such as idle_cpu selects its scenario).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Guest RAM of both kinds in the measured runs.
    #[arg(long, default_value = "256M")]
    pub memory: MemoryMib,
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: Accel,
    /// weft image to boot (default: build the release image).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// weft's kernel command line, e.g. `weft.offload=off` to measure without the
    /// virtio-net offloads.
    #[arg(long, default_value = "")]
    pub append: String,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCmd {
    /// Build the reference Linux VM into target/weft/refvm/ and print its paths.
    BuildRef,
    /// Host micro-benchmarks of the packet path (release builds of the bench examples).
    Micro {
        /// Where to write the table as JSON (default target/weft/bench-micro.json).
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// A scenario: its `--only` name, the rows it fills, and one run of one kind.
pub struct Scenario {
    pub name: &'static str,
    pub rows: &'static [&'static str],
    pub run: fn(&Ctx, Kind) -> Result<Values, RunError>,
    /// Linux's side is not the same job: said in the table note.
    pub note: Option<&'static str>,
}

/// Every per-round scenario, in the order they run.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "boot",
            rows: &["boot", "idle_cpu", "heap_ready"],
            run: scenarios::boot_and_idle,
            note: Some("weft: q35 without ACPI tables, AHCI, SMBus and HPET (it uses none); Linux: the whole q35"),
        },
        Scenario {
            name: "boot_microvm",
            rows: &["boot_microvm"],
            run: scenarios::boot_microvm,
            note: Some("weft: microvm,acpi=off (devices on the command line); Linux: microvm with ACPI (Debian's kernel finds virtio-mmio devices only there)"),
        },
        Scenario {
            name: "vxlan",
            rows: &["vxlan_tcp"],
            run: |c, k| scenarios::overlay_tcp(c, k, false),
            note: None,
        },
        Scenario {
            name: "sleeve",
            rows: &["sleeve_tcp"],
            run: |c, k| scenarios::overlay_tcp(c, k, true),
            note: Some("Linux: VXLAN over WireGuard (ChaCha20-Poly1305, as sleeve); container MTU 1408 (weft) / 1370 (Linux)"),
        },
        Scenario {
            name: "dns",
            rows: &["dns_qps"],
            run: scenarios::dns_qps,
            note: None,
        },
        Scenario {
            name: "publish",
            rows: &["publish_cps"],
            run: scenarios::publish_cps,
            note: None,
        },
        Scenario {
            name: "vip",
            rows: &["vip_cps"],
            run: scenarios::vip_cps,
            note: None,
        },
    ]
}

/// The rows of a full run, in table order.
pub fn empty_rows() -> Vec<Row> {
    let mut rows = vec![
        Row::new("boot", "boot to ready (q35)", "ms", Better::Lower, 0),
        Row::new(
            "boot_microvm",
            "boot to ready (microvm)",
            "ms",
            Better::Lower,
            0,
        ),
        Row::new("idle_cpu", "idle host CPU", "% of a core", Better::Lower, 2),
        Row::new(
            "vxlan_tcp",
            "iperf3 TCP over VXLAN",
            "Mbit/s",
            Better::Higher,
            1,
        ),
        Row::new(
            "sleeve_tcp",
            "iperf3 TCP over sleeve",
            "Mbit/s",
            Better::Higher,
            1,
        ),
        Row::new(
            "dns_qps",
            "DNS queries/s (dnsperf)",
            "queries/s",
            Better::Higher,
            0,
        ),
        Row::new(
            "publish_cps",
            "conn/s via published port",
            "conn/s",
            Better::Higher,
            0,
        ),
        Row::new(
            "vip_cps",
            "conn/s via service VIP",
            "conn/s",
            Better::Higher,
            0,
        ),
        Row::new("min_ram", "smallest guest RAM", "MiB", Better::Lower, 0),
        Row::new(
            "heap_ready",
            "weft heap peak at ready",
            "KiB",
            Better::Lower,
            0,
        ),
        Row::new(
            "heap_peak",
            "weft heap peak after load",
            "KiB",
            Better::Lower,
            0,
        ),
    ];
    // The single-VM load scenarios keep the VM on a CPU of its own (`Host::pin_vm`).
    let placed = |what: &str| match vm::vm_cpu() {
        Some(cpu) => format!("{what}; both VMs on CPU {cpu}, the load on the others"),
        None => what.to_string(),
    };
    for r in &mut rows {
        match r.id.as_str() {
            "heap_ready" | "heap_peak" => r.linux = Side::NotApplicable,
            "dns_qps" => r.note = Some(placed("Linux: dnsmasq, same names, no upstream")),
            "publish_cps" => r.note = Some(placed("Linux: nftables DNAT + masquerade")),
            "vip_cps" => r.note = Some(placed("Linux: IPVS, mh scheduler, NAT mode, 2 backends")),
            "vxlan_tcp" => r.note = Some("Linux: kernel vxlan + bridge".into()),
            _ => {}
        }
    }
    rows
}

fn log(s: &str) {
    eprintln!("weft bench: {s}");
}

/// Whether `--only` selects scenario `s` (by its name or one of its rows).
fn selected(only: &[String], s_name: &str, rows: &[&str]) -> bool {
    only.is_empty()
        || only
            .iter()
            .any(|o| o == s_name || rows.contains(&o.as_str()))
}

/// Options of one benchmark run (the library entry point; the CLI maps onto it).
pub struct RunOptions {
    pub rounds: u32,
    pub quick: bool,
    pub only: Vec<String>,
    pub memory: MemoryMib,
    pub images: Images,
    pub interrupted: Arc<AtomicBool>,
}

/// Runs the selected scenarios and returns the table (rows not selected are left out).
pub fn run(opts: &RunOptions) -> Result<Report> {
    let ctx = Ctx {
        images: opts.images.clone(),
        features: Default::default(),
        memory: opts.memory,
        quick: opts.quick,
        interrupted: opts.interrupted.clone(),
        log,
    };
    let scen = scenarios();
    let known: Vec<&str> = scen
        .iter()
        .flat_map(|s| std::iter::once(s.name).chain(s.rows.iter().copied()))
        .chain(["memory", "min_ram", "heap_peak"])
        .collect();
    for o in &opts.only {
        if !known.contains(&o.as_str()) {
            bail!("--only {o}: no such scenario (known: {})", known.join(", "));
        }
    }
    let mut report = Report {
        rows: empty_rows(),
        meta: vec![],
        notes: vec![],
    };
    let started = Instant::now();
    let rounds = opts.rounds.max(1);
    'rounds: for round in 0..rounds {
        for s in &scen {
            if !selected(&opts.only, s.name, s.rows) {
                continue;
            }
            // Alternate which kind goes first, so neither always runs on a warmer machine.
            let order = if round % 2 == 0 {
                [Kind::Weft, Kind::Linux]
            } else {
                [Kind::Linux, Kind::Weft]
            };
            for kind in order {
                if opts.interrupted.load(Ordering::SeqCst) {
                    log("interrupted: the table holds what was measured so far");
                    break 'rounds;
                }
                // A missing feature stays missing for the same image: say it once.
                let main_row = s.rows[0];
                if let Some(r) = report.row_mut(main_row) {
                    let side = if kind == Kind::Weft {
                        &r.weft
                    } else {
                        &r.linux
                    };
                    if matches!(side, Side::Missing(_)) {
                        continue;
                    }
                }
                log(&format!(
                    "round {}/{rounds}: {} on {}",
                    round + 1,
                    s.name,
                    kind.name()
                ));
                let t0 = Instant::now();
                let result = (s.run)(&ctx, kind);
                record(&mut report, s, kind, result, t0.elapsed());
            }
        }
    }
    if selected(&opts.only, "memory", &["min_ram", "heap_peak"])
        && !opts.interrupted.load(Ordering::SeqCst)
    {
        memory_rows(&ctx, &mut report);
    }
    // heap_peak comes from `status` after the load scenarios, when the kernel reports it.
    if let Some(r) = report.row_mut("heap_peak") {
        if r.weft.values().is_empty() {
            r.weft =
                Side::Missing("no load scenario ran, or weft's status had no heap member".into());
        }
    }
    // Keep the rows that were selected (or that a selected scenario filled).
    let wanted: Vec<&str> = scen
        .iter()
        .filter(|s| selected(&opts.only, s.name, s.rows))
        .flat_map(|s| s.rows.iter().copied())
        .chain(
            selected(&opts.only, "memory", &["min_ram", "heap_peak"])
                .then_some(["min_ram", "heap_peak"])
                .into_iter()
                .flatten(),
        )
        .collect();
    report.rows.retain(|r| wanted.contains(&r.id.as_str()));
    for s in &scen {
        if let (Some(n), Some(r)) = (s.note, report.row_mut(s.rows[0])) {
            r.note = Some(n.to_string());
        }
    }
    report.meta = vec![
        ("rounds".into(), json!(rounds)),
        ("quick".into(), json!(opts.quick)),
        (
            "accel".into(),
            json!(format!("{:?}", opts.images.accel).to_lowercase()),
        ),
        ("memory_mib".into(), json!(opts.memory.0)),
        (
            "weft_image".into(),
            json!(opts.images.weft.display().to_string()),
        ),
        (
            "linux_kernel".into(),
            json!(opts.images.linux.as_ref().map(|l| &l.kernel_version)),
        ),
        (
            "linux_initramfs_bytes".into(),
            json!(opts.images.linux.as_ref().map(|l| l.initramfs_bytes)),
        ),
        (
            "host_cpus".into(),
            json!(std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)),
        ),
        ("seconds".into(), json!(started.elapsed().as_secs())),
        ("git_commit".into(), json!(git_head())),
    ];
    let features = ctx.features.lock().map(|f| f.clone()).unwrap_or_default();
    if !features.is_empty() {
        let by_vm: serde_json::Map<String, serde_json::Value> = features
            .iter()
            .map(|(vm, devs)| {
                let devs: Vec<_> = devs.iter().map(features::DeviceFeatures::to_json).collect();
                (vm.clone(), json!(devs))
            })
            .collect();
        report
            .meta
            .push(("virtio_features".into(), serde_json::Value::Object(by_vm)));
        report.notes = features
            .iter()
            .flat_map(|(vm, devs)| {
                devs.iter()
                    .map(move |d| format!("virtio features, {vm}: {}", d.line()))
            })
            .collect();
    }
    Ok(report)
}

/// The checked-out commit (for the record in the JSON), if git can tell.
fn git_head() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(crate::paths::repo_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Puts one run's outcome into the table.
fn record(
    report: &mut Report,
    s: &Scenario,
    kind: Kind,
    result: Result<Values, RunError>,
    took: Duration,
) {
    match result {
        Ok(values) => {
            let shown: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v:.2}")).collect();
            log(&format!(
                "  {}: {} ({:.1} s)",
                kind.name(),
                shown.join(" "),
                took.as_secs_f64()
            ));
            for (id, v) in values {
                if let Some(r) = report.row_mut(id) {
                    let target = if kind == Kind::Weft {
                        &mut r.weft
                    } else {
                        &mut r.linux
                    };
                    target.push(v);
                }
            }
        }
        Err(e) => {
            let (missing, why) = match e {
                RunError::Missing(w) => (true, w),
                RunError::Failed(e) => (false, format!("{e:#}")),
            };
            log(&format!(
                "  {}: {}: {why}",
                kind.name(),
                if missing { "missing" } else { "failed" }
            ));
            for id in s.rows {
                if let Some(r) = report.row_mut(id) {
                    let target = if kind == Kind::Weft {
                        &mut r.weft
                    } else {
                        &mut r.linux
                    };
                    if matches!(target, Side::NotApplicable) {
                        continue;
                    }
                    if missing {
                        *target = Side::Missing(why.clone());
                    } else {
                        target.fail(why.clone());
                    }
                }
            }
        }
    }
}

/// Smallest guest RAM of each kind (binary search).
fn memory_rows(ctx: &Ctx, report: &mut Report) {
    // (kind, lo, hi, step) in MiB; --quick searches coarser.
    let plan = [
        (Kind::Weft, 1, 128, if ctx.quick { 8 } else { 1 }),
        (Kind::Linux, 32, 512, if ctx.quick { 32 } else { 4 }),
    ];
    for (kind, lo, hi, step) in plan {
        log(&format!(
            "smallest guest RAM for {} ({lo}M..{hi}M, step {step}M)",
            kind.name()
        ));
        let r = scenarios::min_memory(ctx, kind, lo, hi, step);
        let Some(row) = report.row_mut("min_ram") else {
            return;
        };
        let target = if kind == Kind::Weft {
            &mut row.weft
        } else {
            &mut row.linux
        };
        match r {
            Ok(m) => target.push(f64::from(m)),
            Err(RunError::Missing(w)) => *target = Side::Missing(w),
            Err(RunError::Failed(e)) => target.fail(format!("{e:#}")),
        }
        let steps: Vec<String> = plan
            .iter()
            .map(|(k, lo, hi, step)| format!("{} {lo}M..{hi}M step {step}M", k.name()))
            .collect();
        row.note = Some(format!(
            "two VMs with that RAM boot, take the overlay config and pass the overlay ping test (binary search: {})",
            steps.join(", ")
        ));
    }
}

/// Writes the report as JSON (pretty, one document).
pub fn write_json(report: &Report, path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let text = serde_json::to_string_pretty(&report.to_json())?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The default JSON path, `target/weft/<name>`.
pub fn default_json(name: &str) -> PathBuf {
    crate::paths::repo_root()
        .join("target")
        .join("weft")
        .join(name)
}

/// Ctrl-C sets a flag; the run stops between measurements and still prints the table.
pub(crate) fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    if let Err(e) = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst)) {
        log(&format!("cannot install the Ctrl-C handler: {e}"));
    }
    flag
}

/// `weft bench ...` from the command line.
pub fn main(args: BenchArgs) -> ExitCode {
    let res = match &args.cmd {
        Some(BenchCmd::BuildRef) => cmd_build_ref(),
        Some(BenchCmd::Micro { json }) => cmd_micro(json.clone()),
        None => cmd_bench(&args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_build_ref() -> Result<()> {
    let r = refvm::build(&mut |s| log(s))?;
    println!(
        "kernel     {} (Linux {})",
        r.kernel.display(),
        r.kernel_version
    );
    println!(
        "initramfs  {} ({} bytes)",
        r.initramfs.display(),
        r.initramfs_bytes
    );
    println!("qemu       {}", r.qemu_wrapper.display());
    Ok(())
}

fn cmd_micro(json: Option<PathBuf>) -> Result<()> {
    let rows = micro::run(&mut |s| log(s))?;
    let report = Report {
        rows,
        meta: vec![("kind".into(), json!("micro"))],
        notes: vec![],
    };
    print!("{}", micro::render(&report.rows));
    let path = json.unwrap_or_else(|| default_json("bench-micro.json"));
    write_json(&report, &path)?;
    println!("JSON: {}", path.display());
    Ok(())
}

fn cmd_bench(args: &BenchArgs) -> Result<()> {
    crate::netns::require_root()?;
    if !crate::qemu::qemu_available() {
        bail!("{} not found (run .ci/install)", crate::qemu::QEMU_BINARY);
    }
    let linux = refvm::build(&mut |s| log(s))?;
    let weft = match &args.image {
        Some(p) => p.clone(),
        None => {
            log("building the release image");
            build::build_image_with(Profile::Release, true)?.path
        }
    };
    let opts = RunOptions {
        rounds: if args.quick { 1 } else { args.rounds },
        quick: args.quick,
        only: args.only.clone(),
        memory: args.memory,
        images: Images {
            weft,
            linux: Some(linux),
            weft_append: args.append.clone(),
            accel: args.accel,
            ready_timeout: Duration::from_secs(120),
        },
        interrupted: interrupt_flag(),
    };
    let report = run(&opts)?;
    print!("{}", report.render());
    let path = args
        .json
        .clone()
        .unwrap_or_else(|| default_json("bench.json"));
    write_json(&report, &path)?;
    println!("JSON: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_row_is_in_the_table() {
        let rows = empty_rows();
        for s in scenarios() {
            for id in s.rows {
                assert!(rows.iter().any(|r| r.id == *id), "{id}");
            }
        }
        assert!(selected(&[], "boot", &["boot"]));
        assert!(selected(
            &["idle_cpu".into()],
            "boot",
            &["boot", "idle_cpu"]
        ));
        assert!(!selected(&["dns".into()], "boot", &["boot", "idle_cpu"]));
    }

    #[test]
    fn a_missing_weft_feature_is_recorded_with_its_reason() {
        let mut report = Report {
            rows: empty_rows(),
            meta: vec![],
            notes: vec![],
        };
        let s = scenarios().into_iter().find(|s| s.name == "dns").unwrap();
        record(
            &mut report,
            &s,
            Kind::Weft,
            Err(RunError::Missing("unknown field `dns`".into())),
            Duration::ZERO,
        );
        record(
            &mut report,
            &s,
            Kind::Linux,
            Ok(vec![("dns_qps", 1234.0)]),
            Duration::ZERO,
        );
        let r = report.row_mut("dns_qps").unwrap();
        assert_eq!(r.weft, Side::Missing("unknown field `dns`".into()));
        assert_eq!(r.linux.values(), &[1234.0]);
        // A heap row that has no meaning for Linux stays n/a through a failure.
        let b = scenarios().into_iter().find(|s| s.name == "boot").unwrap();
        record(
            &mut report,
            &b,
            Kind::Linux,
            Err(RunError::Failed(anyhow::anyhow!("boom"))),
            Duration::ZERO,
        );
        assert_eq!(
            report.row_mut("heap_ready").unwrap().linux,
            Side::NotApplicable
        );
        assert_eq!(
            report.row_mut("boot").unwrap().linux,
            Side::Failed("boom".into())
        );
    }
}
