//! `weft demo` (through the library, as the binary calls it): every step's outcome is
//! checked by the demo itself (an overlay ping by name, the DNS answer, tshark seeing
//! the ping in the overlay capture, the service answered by both hosts through its VIP
//! and through the published port, the metrics), so it completes only if all hold; it
//! and an interruption part-way through remove everything they made.
//! Both tests use the demo's fixed `wd-*` names, so they run one after the other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_image::build::Profile;
use weft_image::demo::{self, DemoOptions};
use weft_image::netns::{netns_exists, TopologyNames};
use weft_image::qemu::Accel;

static SERIAL: Mutex<()> = Mutex::new(());

fn assert_clean() {
    for prefix in demo::PREFIXES {
        let names = TopologyNames::new(prefix).unwrap();
        for ns in names.namespaces() {
            assert!(!netns_exists(ns), "namespace {ns} left behind");
        }
        let resolv = demo::resolv_dir(&names.ctr_ns);
        assert!(!resolv.exists(), "{} left behind", resolv.display());
    }
    let left = std::process::Command::new("pgrep")
        .args(["-f", "TCP-LISTEN:8080,fork,reuseaddr"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "demo servers left running");
    assert!(
        !demo::work_dir().exists(),
        "{} left behind",
        demo::work_dir().display()
    );
}

#[test]
fn demo_completes_and_cleans_up() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    weft_qemu_tests::preflight();
    let opts = DemoOptions {
        profile: Profile::Debug,
        accel: Accel::Tcg,
        interrupted: Arc::new(AtomicBool::new(false)),
    };
    demo::run(&opts).unwrap_or_else(|e| panic!("demo failed: {e:#}"));
    assert_clean();
}

#[test]
fn demo_interrupted_after_the_topology_cleans_up() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    weft_qemu_tests::preflight();
    let flag = Arc::new(AtomicBool::new(false));
    let opts = DemoOptions {
        profile: Profile::Debug,
        accel: Accel::Tcg,
        interrupted: flag.clone(),
    };
    // Ctrl-C as soon as the container namespace exists.
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let ctr = TopologyNames::new(demo::PREFIX).unwrap().ctr_ns;
        while !netns_exists(&ctr) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        flag.store(true, Ordering::SeqCst);
    });
    let r = demo::run(&opts);
    watcher.join().unwrap();
    let e = r.expect_err("the demo finished although it was interrupted");
    assert!(format!("{e:#}").contains("interrupted"), "{e:#}");
    assert_clean();
}
