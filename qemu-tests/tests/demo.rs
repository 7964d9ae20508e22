//! `weft demo` (through the library, as the binary calls it, with the `weft` binary
//! running the agents): every step's outcome is checked by the demo itself (the
//! agents in sync with etcd, an overlay ping by name, the DNS answer, tshark seeing
//! the ping in the overlay capture, the service answered by both hosts through its VIP
//! and through the published port, the agent's metrics), so it completes only if all
//! hold. The grid's keys it found in etcd are checked here: the containers, the service
//! and the published port were registered through the agents and live in etcd. It and
//! an interruption part-way through leave no namespace, file or process behind (every
//! process the demo starts carries its marker: etcd, the agents, their QEMUs).
//! Both tests use the demo's fixed `wd-*` names, so they run one after the other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_image::build::Profile;
use weft_image::demo::{self, DemoOptions};
use weft_image::netns::netns_exists;
use weft_image::process;
use weft_image::qemu::Accel;
use weft_qemu_tests::grid::weft_binary;

static SERIAL: Mutex<()> = Mutex::new(());

fn assert_clean() {
    for ns in demo::namespaces().unwrap() {
        assert!(!netns_exists(&ns), "namespace {ns} left behind");
        let resolv = demo::resolv_dir(&ns);
        assert!(!resolv.exists(), "{} left behind", resolv.display());
    }
    let left = process::marked(demo::MARK, &std::process::id().to_string());
    assert!(
        left.is_empty(),
        "processes of the demo left running: {left:?}"
    );
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
        weft: weft_binary(),
        interrupted: Arc::new(AtomicBool::new(false)),
    };
    let started = Instant::now();
    let outcome = demo::run(&opts).unwrap_or_else(|e| panic!("demo failed: {e:#}"));
    eprintln!("the demo took {} s", started.elapsed().as_secs());
    for key in [
        "/weft/demo/nodes/1",
        "/weft/demo/nodes/2",
        "/weft/demo/containers/web-1",
        "/weft/demo/containers/web-2",
        "/weft/demo/services/web",
        "/weft/demo/publish/tcp-8080/all",
    ] {
        assert!(
            outcome.etcd_keys.iter().any(|k| k == key),
            "{key} not in etcd: {:?}",
            outcome.etcd_keys
        );
    }
    assert_clean();
}

#[test]
fn demo_interrupted_while_the_agents_start_cleans_up() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    weft_qemu_tests::preflight();
    let flag = Arc::new(AtomicBool::new(false));
    let opts = DemoOptions {
        profile: Profile::Debug,
        accel: Accel::Tcg,
        weft: weft_binary(),
        interrupted: flag.clone(),
    };
    // Ctrl-C as soon as the agents run (their API sockets exist): etcd, both agents
    // and their appliances are all up or coming up.
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let api = demo::work_dir().join("api-2.sock");
        while !api.exists() && Instant::now() < deadline {
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
