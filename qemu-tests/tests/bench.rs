//! Issue 8: the benchmark harness on a tiny scenario. Both VMs (weft and the reference
//! Linux VM built from the machine's Debian packages) boot under the same QEMU, each is
//! measured once (boot to ready, idle CPU over 2 s), and the table and its JSON come
//! out well-formed with the expected rows. Full runs (`weft bench`) are not part of CI.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weft_image::bench::{self, refvm, vm::Images, RunOptions};
use weft_image::qemu::{Accel, MemoryMib};

#[test]
fn both_vms_boot_and_the_table_has_the_expected_rows() {
    let image = weft_qemu_tests::preflight();
    let linux = refvm::build(&mut |s| eprintln!("{s}"))
        .unwrap_or_else(|e| panic!("building the reference VM: {e:#}"));
    assert!(linux.initramfs_bytes > 1 << 20, "initramfs too small");

    let opts = RunOptions {
        rounds: 1,
        quick: true,
        only: vec!["boot".into()],
        memory: MemoryMib(256),
        images: Images {
            weft: image,
            linux: Some(linux),
            weft_append: String::new(),
            accel: Accel::Tcg,
            ready_timeout: Duration::from_secs(60),
        },
        interrupted: Arc::new(AtomicBool::new(false)),
    };
    let report = bench::run(&opts).unwrap_or_else(|e| panic!("bench run: {e:#}"));
    let table = report.render();
    eprintln!("{table}");

    let ids: Vec<&str> = report.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["boot", "idle_cpu", "heap_ready"], "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("scenario") && lines[0].contains("weft/linux"));
    assert!(lines[2].starts_with("boot to ready"), "{table}");

    let dir = std::env::temp_dir().join(format!("weft-bench-test-{}", std::process::id()));
    let path = dir.join("bench.json");
    bench::write_json(&report, &path).expect("writing the JSON");
    let text = std::fs::read_to_string(&path).expect("reading the JSON back");
    let _ = std::fs::remove_dir_all(&dir);
    let json: Value = serde_json::from_str(&text).expect("the JSON parses");
    let rows = json["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("row {id} in {text}"))
    };
    for id in ["boot", "idle_cpu"] {
        for side in ["weft", "linux"] {
            let s = &row(id)[side];
            assert_eq!(s["status"], "ok", "{id} {side}: {s}\n{table}");
            assert_eq!(s["values"].as_array().map(Vec::len), Some(1), "{s}");
            assert_eq!(s["median"], s["values"][0], "{s}");
        }
        assert!(row(id)["ratio_weft_over_linux"].is_number() || id == "idle_cpu");
    }
    for side in ["weft", "linux"] {
        let ms = row("boot")[side]["median"].as_f64().unwrap_or(0.0);
        assert!(ms > 0.0, "{side} boot {ms} ms");
    }
    // weft's heap figure comes from its console's ready line; Linux has none.
    assert_eq!(row("heap_ready")["weft"]["status"], "ok", "{text}");
    assert_eq!(row("heap_ready")["linux"]["status"], "n/a");
    assert_eq!(json["meta"]["rounds"], 1);
    assert_eq!(json["meta"]["memory_mib"], 256);
}
