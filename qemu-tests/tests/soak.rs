//! `weft soak` for two minutes (issue 20): one grid of two wefts and a Linux VTEP under
//! every kind of load at once. Both wefts answer at the end, every class of load got
//! through (overlay and sleeve throughput, DNS, published port and VIP connections,
//! control changes) with few failures, and the heap does not climb like a leak.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use weft_image::bench::soak::{self, SoakArgs};
use weft_image::qemu::{Accel, MemoryMib};

#[test]
fn two_minutes_of_everything_at_once() {
    let image = weft_qemu_tests::preflight();
    let args = SoakArgs {
        minutes: 2.0,
        sample_secs: 10,
        memory: MemoryMib(256),
        accel: Accel::Tcg,
        image: Some(image),
        json: None,
    };
    let report = soak::run(&args, Arc::new(AtomicBool::new(false)))
        .unwrap_or_else(|e| panic!("soak: {e:#}"));
    let text = report.render();
    eprintln!("{text}");
    assert_eq!(report.alive, [true, true], "{text}");
    assert!(report.samples.len() >= 10, "{text}");
    for (name, t) in &report.tallies {
        // Every generator completed runs, and most of what it tried went through.
        assert!(t.runs > t.failed_runs, "{name}: {text}");
        if name.starts_with("iperf") {
            assert!(t.rates.iter().all(|r| *r > 0.0), "{name}: {text}");
        } else {
            assert!(t.ok > 0, "{name}: {text}");
            assert!(t.failed * 50 < t.ok, "{name}: more than 2 % failed: {text}");
        }
    }
    // A leak of a few bytes per packet or per control change would climb by megabytes
    // a minute under this load; what the tables legitimately hold grows far slower.
    for (n, slope) in report.heap_slope_kib_per_min.iter().enumerate() {
        assert!(
            *slope < 1024.0,
            "node {}: heap climbs {slope:.0} KiB/min: {text}",
            n + 1
        );
    }
}
