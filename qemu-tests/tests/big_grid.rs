//! Issue 22 on a booted appliance: a grid document above 1 MiB (far beyond the 64 KiB
//! request line) applied with `weft ctl apply` goes in parts and reads back field by
//! field with `weft ctl --json config`; a client that vanishes in the middle of a
//! document leaves the running configuration as it was; `weft ctl` reports a
//! `line_too_long` (an error without an id) at once. A 1 000-node grid document applies
//! and a container behind node 999 (a Linux `vxlan` device posing as that node) is
//! reachable, as is node 999's address beyond `10.81.0.254` in the /22 node plan.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_control::client::Client;
use weft_control::document;
use weft_qemu_tests::grid::{boot_node, set_ctr_mtu, weft_ctl, LinuxVtep, Underlay, VXLAN_MTU};
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

/// `weft ctl apply FILE` as a user runs it: it must say "applied". Returns how long
/// it took.
fn ctl_apply(vm: &TestVm, file: &std::path::Path) -> Duration {
    let t = Instant::now();
    let (code, out, err) = weft_ctl(
        &vm.control,
        &["--timeout", "120", "apply", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "applied\n");
    t.elapsed()
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

    let took = ctl_apply(&vm, &file);
    eprintln!("weft ctl apply of {size} bytes: {took:?}");
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

/// Node 1's uplink address; the Linux VTEP that poses as node 999.
const W1: &str = "192.0.2.11";
const LX: &str = "192.0.2.13";

/// Node 1 of a grid of 1 000 nodes on one network, as TOML: every other node is a peer,
/// node 999 at the Linux VTEP and the rest at addresses behind the uplink gateway that
/// nobody answers for (their copies of a broadcast go nowhere, as to a dead host).
fn thousand_nodes_toml() -> String {
    let mut t = String::from(concat!(
        "[uplink]\naddress = \"192.0.2.11/24\"\ngateway = \"192.0.2.1\"\n\n",
        "[link]\naddress = \"10.81.0.1/16\"\n\n[grid]\nnode = 1\n\n",
        "[[networks]]\nname = \"grid\"\nvni = 100\n",
    ));
    for node in 2..=1000u32 {
        let address = if node == 999 {
            LX.to_string()
        } else {
            format!("198.18.{}.{}", node / 250, 1 + node % 250)
        };
        t.push_str(&format!(
            "\n[[peers]]\nnode = {node}\nname = \"node-{node}\"\naddress = \"{address}\"\nnetworks = [\"grid\"]\n"
        ));
    }
    t
}

#[test]
fn a_thousand_node_grid_applies_and_a_container_behind_node_999_is_reachable() {
    let test = "grid_1000";
    let vm = boot_node(test, 1, "10.81.128.11/16");
    let mut ul = Underlay::create().expect("underlay");
    ul.join(&vm).expect("join node 1");
    let lx = LinuxVtep::create(&mut ul, &format!("{LX}/24"), 100, &[W1], "10.81.128.13/16")
        .expect("Linux VTEP");
    // Node 999's overlay address in the plan: the /24 above 10.81.2.0, host 237.
    lx.ctr
        .ip(&["addr", "add", "10.81.3.237/16", "dev", "eth0"])
        .expect("node 999's address on the Linux side");
    set_ctr_mtu(&[&vm], VXLAN_MTU);

    let file = vm.dir.join("grid1000.toml");
    std::fs::write(&file, thousand_nodes_toml()).unwrap();
    let took = ctl_apply(&vm, &file);
    eprintln!("{test}: weft ctl apply of 999 peers: {took:?}");

    let shown = config_json(&vm.control);
    let peers = shown["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 999);
    let n999 = peers.iter().find(|p| p["node"] == 999).expect("node 999");
    assert_eq!(n999["address"], LX, "{n999}");
    let mut c = vm.client();
    let st = c
        .call("status", None)
        .expect("status")
        .outcome
        .expect("status");
    assert_eq!(
        st["overlay"]["peers"].as_array().map(Vec::len),
        Some(999),
        "{}",
        st["overlay"]
    );

    let ping = |ns: &weft_image::netns::Netns, addr: &str, what: &str| {
        if let Err(e) = weft_image::netns::Topology::ping(ns, addr, 2, 30) {
            panic!("{test}: {what}: {e:#}");
        }
    };
    ping(
        vm.ctr(),
        "10.81.128.13",
        "container behind node 1 -> container behind node 999",
    );
    ping(
        &lx.ctr,
        "10.81.128.11",
        "container behind node 999 -> container behind node 1",
    );
    ping(&lx.ctr, "10.81.0.1", "node 999's side -> node 1's address");
    ping(
        vm.ctr(),
        "10.81.3.237",
        "container behind node 1 -> node 999's address",
    );

    // One peer command into the 1 000-node grid: node 999 leaves and its container is
    // out of reach; the same host comes back as a new node, 1016, and is reached again.
    let call = |c: &mut Client, cmd: &str, args: Value| {
        let reply = c.call(cmd, Some(args.clone())).expect(cmd);
        assert!(reply.outcome.is_ok(), "{cmd} {args}: {:?}", reply.outcome);
    };
    let t = Instant::now();
    call(&mut c, "peer-remove", json!({"address": LX}));
    eprintln!("{test}: peer-remove round trip: {:?}", t.elapsed());
    assert!(
        weft_image::netns::Topology::ping(vm.ctr(), "10.81.128.13", 2, 4).is_err(),
        "{test}: the container behind a removed peer still answers"
    );
    let t = Instant::now();
    call(
        &mut c,
        "peer-add",
        json!({"node": 1016, "name": "node-1016", "address": LX, "networks": ["grid"]}),
    );
    eprintln!("{test}: peer-add round trip: {:?}", t.elapsed());
    ping(
        vm.ctr(),
        "10.81.128.13",
        "container behind node 1 -> container behind the new node 1016",
    );
    // The appliance serves one control client at a time: `weft ctl` gets its turn now.
    drop(c);
    let shown = config_json(&vm.control);
    let peers = shown["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 999);
    assert!(peers.iter().all(|p| p["node"] != 999));
    assert_eq!(peers[998]["node"], 1016, "{}", peers[998]);
}
