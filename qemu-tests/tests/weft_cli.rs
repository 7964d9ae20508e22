//! The `weft` binary as the README uses it: `weft boot --uplink tap:.. --link tap:..
//! --control .. --config FILE` in a namespace, `weft ctl` against it, and Ctrl-C
//! (SIGINT) stopping the appliance and QEMU with it. Every example file, and
//! `examples/reference.toml` which sets every key, reaches the appliance as written:
//! `weft ctl config` reads back each field of the file (a secret as "set").

use std::time::{Duration, Instant};

use weft_control::document;
use weft_image::netns::Netns;
use weft_image::process::{self, Signal};
use weft_qemu_tests::cli::WeftBoot;
use weft_qemu_tests::grid::weft_ctl;

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-qt-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `weft ctl --json config` read against the file that was applied.
fn assert_reads_back(socket: &std::path::Path, file: &std::path::Path) {
    let (code, out, err) = weft_ctl(socket, &["--json", "config"]);
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // As the host sends it: `[grid.tls]` files read in as PEM text.
    let written = document::file_to_json(file).unwrap();
    let echo = document::echo(&written, &reply["result"]);
    assert_eq!(echo.mismatched, Vec::<String>::new(), "{}", file.display());
    if file.ends_with("reference.toml") {
        assert_eq!(
            echo.unwritten,
            Vec::<String>::new(),
            "keys the reference leaves out"
        );
    }
    if let Some(secret) = written["grid"]["secret"].as_str() {
        assert!(!out.contains(secret), "the secret is echoed: {out}");
    }
    assert!(!out.contains("PRIVATE KEY"), "the TLS key is echoed: {out}");
}

#[test]
fn boot_with_config_then_ctl_then_ctrl_c() {
    let image = weft_qemu_tests::preflight();
    let ns_name = format!("wqcli{:05x}", std::process::id() & 0xf_ffff);
    let ns = Netns::create(&ns_name).unwrap();
    let dir = scratch(&ns_name);
    let cfg = dir.join("weft.toml");
    std::fs::write(&cfg, document::DEFAULT_CONFIG_TOML).unwrap();

    // Taps absent: QEMU creates them inside the namespace.
    let mut boot = WeftBoot::start(&ns, "cli", &dir, &image, Some(&cfg));
    let status = boot.wait_status("192.0.2.2/24", Duration::from_secs(60));
    assert!(status.contains("configured"), "{status}");
    assert_reads_back(&boot.socket, &cfg);

    // Ctrl-C: weft stops QEMU and exits successfully.
    process::signal(boot.child.id(), Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = boot.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "weft boot did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = boot.stderr();
    assert!(exit.success(), "weft boot exited with {exit}: {err}");
    assert!(err.contains("greeted after"), "{err}");
    assert!(err.contains("applied"), "{err}");
    // QEMU is gone: its taps (created by QEMU, not persistent) went with it.
    assert!(
        ns.ip(&["link", "show", "cli0"]).is_err(),
        "tap cli0 still exists after weft boot stopped"
    );
    drop(boot);
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_example_reaches_the_appliance_as_written() {
    let image = weft_qemu_tests::preflight();
    let ns_name = format!("wqexm{:05x}", std::process::id() & 0xf_ffff);
    let ns = Netns::create(&ns_name).unwrap();
    let dir = scratch(&ns_name);
    let examples = weft_image::paths::repo_root().join("examples");
    let reference = examples.join("reference.toml");

    // The document with every key (a sleeve secret among them) as `weft boot --config`.
    let mut boot = WeftBoot::start(&ns, "exm", &dir, &image, Some(&reference));
    boot.wait_status("192.0.2.11/24", Duration::from_secs(60));
    assert_reads_back(&boot.socket, &reference);

    // Then every example file through `weft ctl apply`.
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for file in &files {
        let (code, out, err) = weft_ctl(&boot.socket, &["apply", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {out}{err}", file.display());
        assert_reads_back(&boot.socket, file);
    }
    drop(boot);
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
}
