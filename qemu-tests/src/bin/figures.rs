//! The issue-2 figures: image size, boot to greeting under TCG (median of 5, from QEMU
//! process start), the smallest `-m` that boots and serves, and the host CPU use of an
//! idle appliance over 10 s. Run as root:
//! `cargo run -p weft-qemu-tests --release --bin figures` (prints a Markdown table for
//! docs/PERFORMANCE.md). It builds the release image first.

use std::time::{Duration, Instant};

use weft_image::build::{self, Profile};
use weft_image::qemu::MemoryMib;
use weft_qemu_tests::{BootOptions, TestVm, LINK_ADDR};

fn opts(image: &std::path::Path, memory: MemoryMib) -> BootOptions {
    BootOptions {
        memory,
        image: Some(image.to_path_buf()),
        greeting_timeout: Duration::from_secs(20),
        ..BootOptions::default()
    }
}

/// Boots with `memory`, applies the default config and pings the link address.
fn serves(image: &std::path::Path, memory: MemoryMib) -> bool {
    match TestVm::try_boot_with("figures-memory", opts(image, memory)) {
        Ok(vm) => {
            let mut c = vm.client();
            let ok = c.apply(&weft_control::document::default_document()).is_ok();
            drop(c);
            ok && vm.ping(vm.ctr(), LINK_ADDR, 1).is_ok()
        }
        Err(_) => false,
    }
}

/// Sum of the PT_LOAD segments' file sizes: what the loader copies into RAM.
fn loadable_bytes(elf: &[u8]) -> Option<u64> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut total = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? == 1 {
            total += u64_at(ph + 0x20)?;
        }
    }
    Some(total)
}

fn main() {
    if let Err(e) = weft_image::netns::require_root() {
        eprintln!("figures: {e}");
        std::process::exit(1);
    }
    eprintln!("figures: building the release image");
    let img = match build::build_image_with(Profile::Release, true) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("figures: {e:#}");
            std::process::exit(1);
        }
    };
    let bytes = std::fs::read(&img.path).unwrap_or_default();
    let loadable = loadable_bytes(&bytes).unwrap_or(0);

    eprintln!("figures: boot to greeting, 5 boots");
    let mut boots = Vec::new();
    for i in 0..5 {
        match TestVm::try_boot_with("figures-boot", opts(&img.path, MemoryMib(128))) {
            Ok(vm) => {
                eprintln!("  boot {}: {} ms", i + 1, vm.greeted_after.as_millis());
                boots.push(vm.greeted_after);
            }
            Err(e) => {
                eprintln!("figures: boot failed: {e}");
                std::process::exit(1);
            }
        }
    }
    boots.sort();
    let median = boots[boots.len() / 2];

    eprintln!("figures: smallest -m that boots and serves (8M..128M)");
    let (mut lo, mut hi) = (8u32, 128u32);
    if !serves(&img.path, MemoryMib(hi)) {
        eprintln!("figures: does not serve even with 128M");
        std::process::exit(1);
    }
    if serves(&img.path, MemoryMib(lo)) {
        hi = lo;
    }
    // Invariant: hi serves, lo does not (unless lo == hi).
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let ok = serves(&img.path, MemoryMib(mid));
        eprintln!("  -m {mid}M: {}", if ok { "serves" } else { "does not" });
        if ok {
            hi = mid;
        } else {
            lo = mid;
        }
    }

    eprintln!("figures: idle host CPU over 10 s");
    let vm = TestVm::try_boot_with("figures-idle", opts(&img.path, MemoryMib(128)))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.apply_default();
    std::thread::sleep(Duration::from_secs(2));
    let pid = vm.qemu_pid().unwrap_or(0);
    let cpu0 = weft_image::qemu::process_cpu_time(pid).unwrap_or_default();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let cpu1 = weft_image::qemu::process_cpu_time(pid).unwrap_or_default();
    let wall = t0.elapsed();
    drop(vm);
    let idle_pct = (cpu1 - cpu0).as_secs_f64() * 100.0 / wall.as_secs_f64();

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| image size (`target/weft/weft.elf`, release, with debug info) | {} bytes ({:.1} MiB) |",
        img.size_bytes,
        img.size_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "| loadable size (PT_LOAD segments) | {loadable} bytes ({:.0} KiB) |",
        loadable as f64 / 1024.0
    );
    println!(
        "| boot to greeting, TCG, median of 5 (from QEMU start) | {} ms (all: {}) |",
        median.as_millis(),
        boots
            .iter()
            .map(|d| d.as_millis().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let floor = if hi == 8 {
        " (the floor of the 8M..128M search)"
    } else {
        ""
    };
    println!("| smallest `-m` that boots, applies config and answers ping | {hi}M{floor} |");
    println!(
        "| host CPU of an idle appliance (QEMU utime+stime over {:.1} s) | {idle_pct:.1} % of one core |",
        wall.as_secs_f64()
    );
    println!(
        "\nmachine: {cpu}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
}
