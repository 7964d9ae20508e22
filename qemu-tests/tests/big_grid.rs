//! Issue 22 on a booted appliance: a grid document above 1 MiB (far beyond the 64 KiB
//! request line) applied with `weft ctl apply` goes in parts and reads back field by
//! field with `weft ctl --json config`; a client that vanishes in the middle of a
//! document leaves the running configuration as it was; `weft ctl` reports a
//! `line_too_long` (an error without an id) at once.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_control::client::Client;
use weft_control::document;
use weft_qemu_tests::grid::weft_ctl;
use weft_qemu_tests::{BootOptions, TestVm, REQUEST_TIMEOUT};

/// The default addresses with a `[dns]` section and `n` containers, as TOML.
fn grid_toml(n: usize) -> String {
    let mut t = String::from(concat!(
        "[uplink]\naddress = \"192.0.2.2/24\"\ngateway = \"192.0.2.1\"\n\n",
        "[link]\naddress = \"10.81.0.1/16\"\n\n[dns]\ngrid = \"big\"\n",
    ));
    for i in 0..n {
        t.push_str(&format!(
            "\n[[containers]]\nname = \"app{}-web-{i}\"\nservice = \"app{}-web\"\naddress = \"10.81.{}.{}\"\n",
            i % 100,
            i % 100,
            1 + i / 250,
            1 + i % 250
        ));
    }
    t
}

fn config_json(socket: &std::path::Path) -> Value {
    let (code, out, err) = weft_ctl(socket, &["--timeout", "120", "--json", "config"]);
    assert_eq!(code, 0, "{err}");
    let reply: Value = serde_json::from_str(out.trim()).unwrap();
    reply["result"].clone()
}

#[test]
fn a_document_above_a_mebibyte_applies_in_parts_and_a_vanished_client_changes_nothing() {
    // The debug image under TCG on a loaded machine takes its time over 1.4 MB.
    let vm = TestVm::boot_with(
        "big_document",
        BootOptions {
            time_limit: Duration::from_secs(900),
            ..BootOptions::default()
        },
    );
    let file = vm.dir.join("big.toml");
    std::fs::write(&file, grid_toml(20_000)).unwrap();
    let written = document::toml_to_json(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let size = written.to_string().len();
    assert!(size > 1 << 20, "{size} bytes");

    let t = Instant::now();
    let (code, out, err) = weft_ctl(
        &vm.control,
        &["--timeout", "120", "apply", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "applied\n");
    eprintln!("weft ctl apply of {size} bytes: {:?}", t.elapsed());
    let t = Instant::now();
    let shown = config_json(&vm.control);
    eprintln!("weft ctl config: {:?}", t.elapsed());
    let echo = document::echo(&written, &shown);
    assert_eq!(echo.mismatched, Vec::<String>::new());
    let st = vm.status();
    assert_eq!(st.dns.as_ref().map(|d| d.containers), Some(20_000));
    assert_eq!(st.control.transfers, 1);
    let heap = st.heap.expect("status.heap");
    eprintln!(
        "{size} bytes applied in parts; heap {} KiB used (peak {} KiB) of {} KiB",
        heap.used_bytes / 1024,
        heap.peak_bytes / 1024,
        heap.size_bytes / 1024
    );

    // Another document, half sent: then the client goes away.
    let mut other = written.clone();
    other["dns"]["grid"] = json!("other");
    let pad: Vec<Value> = (0..20_000)
        .map(|i| json!({"name": format!("pad-{i}"), "address": "10.81.201.1"}))
        .collect();
    other["containers"] = Value::Array(pad);
    let text = other.to_string();
    let mut c = Client::connect(&vm.control, REQUEST_TIMEOUT).unwrap();
    let begin = c
        .call("apply-begin", Some(json!({"bytes": text.len()})))
        .unwrap();
    assert_eq!(begin.outcome.unwrap(), json!({"bytes": text.len()}));
    let mut offset = 0;
    while offset < text.len() / 2 {
        let end = (offset + 30_000).min(text.len());
        let part = c
            .call(
                "apply-part",
                Some(json!({"offset": offset, "text": &text[offset..end]})),
            )
            .unwrap();
        assert_eq!(part.outcome.unwrap(), json!({"received": end}));
        offset = end;
    }
    drop(c);

    let shown = config_json(&vm.control);
    assert_eq!(
        document::echo(&written, &shown).mismatched,
        Vec::<String>::new()
    );
    let st = vm.status();
    assert_eq!(st.control.transfers, 2);
    assert_eq!(st.control.transfers_discarded, 1);
    assert_eq!(st.dns.as_ref().map(|d| d.containers), Some(20_000));

    // A line over the limit is answered at once with an error without an id, which
    // `weft ctl` reports instead of waiting for its time-out.
    let pad = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));
    let (code, _, err) = weft_ctl(&vm.control, &["--timeout", "600", "call", "ping", &pad]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line_too_long") && !err.contains("timed out"),
        "{err}"
    );
}
