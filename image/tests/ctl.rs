//! `weft ctl` as a user runs it: the real binary against the real appliance logic
//! behind a unix socket (`weft_control::sim`), checking output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weft_control::sim::SimAppliance;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-ctl-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn weft(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn status_apply_config_round_trip() {
    let dir = tmp("rt");
    let sim = SimAppliance::start(&dir).unwrap();
    let cfg = dir.join("weft.toml");
    std::fs::write(&cfg, weft_control::document::DEFAULT_CONFIG_TOML).unwrap();

    let out = weft(sim.path(), &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("not configured"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("uplink") && l.contains("52:54:00:00:00:01")),
        "{s}"
    );

    let out = weft(sim.path(), &["config"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("no configuration"));

    let out = weft(sim.path(), &["apply", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "applied\n");

    let out = weft(sim.path(), &["config"]);
    let back = weft_control::document::from_toml(&text(&out.stdout)).unwrap();
    assert_eq!(back, weft_control::document::default_config());

    let out = weft(sim.path(), &["--json", "status"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(
        v["result"]["interfaces"]["uplink"]["addresses"][0],
        "192.0.2.2/24"
    );
    assert_eq!(v["result"]["configured"], true);

    let out = weft(sim.path(), &["ping"]);
    assert_eq!(text(&out.stdout), "pong\n");
    drop(sim);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_exit_non_zero_with_code_field_message() {
    let dir = tmp("err");
    let sim = SimAppliance::start(&dir).unwrap();
    // Refused locally, before anything is sent: unknown key.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[uplink]\naddress = \"192.0.2.2/24\"\ncolour = \"red\"\n[link]\naddress = \"10.81.0.1/16\"\n").unwrap();
    let out = weft(sim.path(), &["apply", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("invalid_config") && e.contains("field:   uplink.colour"),
        "{e}"
    );

    // Nothing was applied.
    let out = weft(sim.path(), &["--json", "config"]);
    assert!(
        text(&out.stdout).contains("\"result\":null"),
        "{}",
        text(&out.stdout)
    );

    // No socket at all: exit 2 and a clear message.
    let out = weft(&dir.join("nope.sock"), &["--timeout", "1", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
    drop(sim);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every example file, and `examples/reference.toml` which sets every key, applied with
/// `weft ctl apply FILE` reads back through `weft ctl --json config` field by field as
/// the file says (a secret as "set"). The sleeve examples carry a secret: it must reach
/// the appliance as written, or the apply is refused; the reference's `[grid.tls]` files
/// must reach it as PEM text, its key read back as "set".
#[test]
fn every_example_file_applies_and_reads_back_as_written() {
    let dir = tmp("examples");
    let sim = SimAppliance::start(&dir).unwrap();
    let examples = weft_image::paths::repo_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("sleeve.toml")),
        "{files:?}"
    );
    for file in &files {
        let out = weft(sim.path(), &["apply", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
        let out = weft(sim.path(), &["--json", "config"]);
        let reply: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        // As the host sends it: `[grid.tls]` files read in as PEM text.
        let written = weft_control::document::file_to_json(file).unwrap();
        let echo = weft_control::document::echo(&written, &reply["result"]);
        assert_eq!(echo.mismatched, Vec::<String>::new(), "{}", file.display());
        if file.ends_with("reference.toml") {
            assert_eq!(
                echo.unwritten,
                Vec::<String>::new(),
                "reference.toml leaves keys out"
            );
        }
        assert!(
            !text(&out.stdout).contains("5eed5eed")
                && !text(&out.stdout).contains("00112233")
                && !text(&out.stdout).contains("PRIVATE KEY"),
            "a secret echoed: {}",
            text(&out.stdout)
        );
    }
    drop(sim);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A grid document as TOML: `containers` entries after a `[dns]` section.
fn grid_toml(containers: usize) -> String {
    let mut t = String::from(
        "[uplink]\naddress = \"192.0.2.2/24\"\ngateway = \"192.0.2.1\"\n\n[link]\naddress = \"10.81.0.1/16\"\n\n[dns]\ngrid = \"big\"\n",
    );
    for i in 0..containers {
        t.push_str(&format!(
            "\n[[containers]]\nname = \"app-{i}\"\nservice = \"svc-{}\"\naddress = \"10.81.{}.{}\"\n",
            i % 100,
            1 + i / 250,
            1 + i % 250
        ));
    }
    t
}

/// A document far above the line limit goes in parts: `weft ctl apply` applies it and
/// `weft ctl --json config` reads every field of it back.
#[test]
fn a_document_above_a_mebibyte_applies_and_reads_back() {
    let dir = tmp("big");
    let sim = SimAppliance::start(&dir).unwrap();
    let file = dir.join("big.toml");
    std::fs::write(&file, grid_toml(20_000)).unwrap();
    let written =
        weft_control::document::toml_to_json(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(written.to_string().len() > 1 << 20);
    let out = weft(
        sim.path(),
        &["--timeout", "60", "apply", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "applied\n");
    let out = weft(sim.path(), &["--json", "config"]);
    let reply: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let echo = weft_control::document::echo(&written, &reply["result"]);
    assert_eq!(echo.mismatched, Vec::<String>::new());
    drop(sim);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Errors the appliance sends without an id are the answer to the line they are about:
/// `weft ctl` reports them at once (exit 1), it does not wait for a time-out.
#[test]
fn an_error_without_an_id_is_reported_at_once() {
    let dir = tmp("nullid");
    let sim = SimAppliance::start(&dir).unwrap();
    let args = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));
    let out = weft(sim.path(), &["--timeout", "600", "call", "ping", &args]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let e = text(&out.stderr);
    assert!(e.contains("line_too_long"), "{e}");
    assert!(!e.contains("timed out"), "{e}");
    // `--json` prints the reply line as it came, null id and all.
    let out = weft(sim.path(), &["--json", "call", "ping", &args]);
    assert_eq!(out.status.code(), Some(1));
    let reply: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(reply["id"], serde_json::Value::Null);
    assert_eq!(reply["error"]["code"], "line_too_long");
    drop(sim);
    std::fs::remove_dir_all(&dir).unwrap();
}
