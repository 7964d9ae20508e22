//! Issue 4 end to end: two weft appliances whose overlay network is in sleeve mode, in
//! one region (so at their private addresses). Their containers reach each other (ping,
//! iperf3); a capture of the underlay holds
//! only UDP 6783 and no inner payload in the clear; a captured datagram replayed, and
//! one with a byte changed, are dropped and counted by reason; a burst of small frames
//! to one peer shares datagrams (batching).
//!
//! The test boots its two VMs once (in parallel) and reuses them for every check.

use std::time::Duration;

use serde_json::{json, Value};
use weft_image::netns::Netns;
use weft_image::qemu::Machine;
use weft_qemu_tests::grid::{
    iperf3, on_underlay, set_ctr_mtu, two_on_underlay, weft_ctl, Underlay, SLEEVE_MTU,
};
use weft_qemu_tests::TestVm;

const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const W2: [u8; 4] = [192, 0, 2, 12];
/// The echo payload pattern searched for in the capture.
const PATTERN: &str = "deadbeefcafe";

/// Node `n`'s config file, as a user writes it: both nodes in region "lab", so each
/// reaches the other at its private address (the underlay); the public ones are
/// TEST-NET-3 addresses nothing answers on. The secret reaches the appliance from the
/// file through `weft ctl apply`.
fn config_file(vm: &TestVm, n: u8, other: u8) -> std::path::PathBuf {
    let text = format!(
        r#"[uplink]
address = "192.0.2.1{n}/24"
gateway = "192.0.2.1"

[link]
address = "10.81.0.{n}/16"

[grid]
node = {n}
secret = "{SECRET}"
region = "lab"

[[networks]]
name = "grid"
vni = 100
mode = "sleeve"

[[peers]]
node = {other}
region = "lab"
private_address = "192.0.2.1{other}"
public_address = "203.0.113.1{other}"
networks = ["grid"]
"#
    );
    let path = vm.dir.join(format!("node-{n}.toml"));
    std::fs::write(&path, text).expect("writing the config file");
    path
}

fn apply_file(vm: &TestVm, file: &std::path::Path) {
    let (code, out, err) = weft_ctl(&vm.control, &["apply", file.to_str().unwrap()]);
    assert_eq!(
        code,
        0,
        "{}: weft ctl apply {}: {out}{err}",
        vm.test,
        file.display()
    );
}

fn result(vm: &TestVm, cmd: &str) -> Value {
    match vm.client().call(cmd, None) {
        Ok(r) => r
            .outcome
            .unwrap_or_else(|e| panic!("{}: {cmd}: {e}", vm.test)),
        Err(e) => panic!("{}: {cmd}: {e}", vm.test),
    }
}

fn sleeve_status(vm: &TestVm) -> Value {
    result(vm, "status")["overlay"]["sleeve"].clone()
}

fn ping_pattern(ns: &Netns, to: &str) -> (bool, String) {
    let out = ns
        .command("ping")
        .args(["-n", "-c", "3", "-i", "0.3", "-w", "20", "-p", PATTERN, to])
        .output()
        .expect("running ping");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The frames of a classic pcap file (little-endian, as tcpdump writes on x86).
fn pcap_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        if at + len > bytes.len() {
            break;
        }
        frames.push(bytes[at..at + len].to_vec());
        at += len;
    }
    frames
}

fn udp_dst_port(f: &[u8]) -> Option<u16> {
    (f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 17)
        .then(|| u16::from_be_bytes([f[36], f[37]]))
}

/// Sends one raw Ethernet frame into the underlay bridge (AF_PACKET, python3).
fn inject(ul: &Underlay, frame: &[u8]) {
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
                  s.bind((sys.argv[1],0))\n\
                  s.send(bytes.fromhex(sys.argv[2]))\n";
    let out = ul
        .ns
        .command("python3")
        .args(["-c", script, &ul.bridge, &hex])
        .output()
        .expect("python3");
    assert!(out.status.success(), "inject: {out:?}");
}

fn counter(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {v}"))
}

#[test]
fn two_wefts_in_sleeve_mode_carry_nothing_in_the_clear() {
    let test = "sleeve_pair";
    let (w1, w2, ul) = two_on_underlay(
        test,
        Machine::Q35,
        ["10.81.128.11/16", "10.81.128.12/16"],
        None,
    );
    set_ctr_mtu(&[&w1, &w2], SLEEVE_MTU);
    apply_file(&w1, &config_file(&w1, 1, 2));
    apply_file(&w2, &config_file(&w2, 2, 1));
    let config = result(&w1, "config");
    assert_eq!(config["grid"]["secret"], "set", "{config}");
    assert!(!config.to_string().contains(&SECRET[..16]), "{config}");
    let peer = &result(&w1, "status")["overlay"]["peers"][0];
    assert_eq!(peer["address"], "192.0.2.12", "{peer}");
    assert_eq!(peer["address_kind"], "private", "{peer}");

    let cap_path = w1.dir.join("sleeve.pcap");
    let mut cap = ul.capture(&cap_path).expect("tcpdump on the underlay");
    let (c1, c2) = (w1.ctr(), w2.ctr());
    let (ok, out) = ping_pattern(c1, "10.81.128.12");
    assert!(ok, "weft 1 -> weft 2 over sleeve: {out}");
    let (ok, out) = ping_pattern(c2, "10.81.128.11");
    assert!(ok, "weft 2 -> weft 1 over sleeve: {out}");
    let r = iperf3(c2, c1, "10.81.128.12", 3, false).unwrap_or_else(|e| panic!("iperf3: {e:#}"));
    assert!(r.sent_bytes > 0 && r.received_bytes > 0, "{r:?}");
    eprintln!("{test}: iperf3 over sleeve: {:.1} Mbit/s", r.mbit_per_s);
    cap.stop();

    let bytes = std::fs::read(&cap_path).expect("reading the capture");
    let pattern: Vec<u8> = (0..PATTERN.len() / 2)
        .map(|i| u8::from_str_radix(&PATTERN[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        !bytes.windows(pattern.len()).any(|w| w == pattern),
        "the echo payload pattern is in the clear on the underlay"
    );
    let frames = pcap_frames(&bytes);
    let sleeve: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| udp_dst_port(f) == Some(6783))
        .collect();
    assert!(sleeve.len() >= 6, "{} sleeve frames", sleeve.len());
    // The outer UDP checksum is left to the tag (0, docs/sleeve.md "Transport"); the
    // IPv4 header's is right.
    for f in &sleeve {
        assert_eq!(f[40..42], [0, 0], "a sleeve datagram with a UDP checksum");
        let ip = smoltcp::wire::Ipv4Packet::new_checked(&f[14..]).expect("an IPv4 header");
        assert!(ip.verify_checksum(), "a sleeve datagram's IPv4 checksum");
    }
    assert!(
        !frames.iter().any(|f| udp_dst_port(f) == Some(4789)),
        "VXLAN on a sleeve network"
    );
    assert!(
        !frames
            .iter()
            .any(|f| f.len() >= 34 && f[12..14] == [8, 0] && f[30..33] == [203, 0, 113]),
        "a public address used inside the region"
    );
    let before = sleeve_status(&w2);
    assert!(counter(&before, &["opened_frames"]) >= 6, "{before}");

    // The last datagram to node 2 replayed as captured (still inside its replay
    // window): refused as replayed.
    let to_w2 = sleeve
        .iter()
        .rfind(|f| f[30..34] == W2)
        .expect("a sleeve datagram to node 2");
    inject(&ul, to_w2);
    // The same with one byte of its counter changed (2^16 ahead: not a replay, so only
    // the AEAD tag can catch it; UDP checksum 0: not checked).
    let mut flipped = to_w2.to_vec();
    flipped[42 + 25] ^= 0x01;
    flipped[40] = 0;
    flipped[41] = 0;
    inject(&ul, &flipped);
    // Cut short after 10 bytes of sleeve header, with consistent IP and UDP lengths
    // (so only sleeve's own parsing can refuse it).
    let mut short = to_w2[..42 + 10].to_vec();
    let ip_len = (short.len() - 14) as u16;
    short[16..18].copy_from_slice(&ip_len.to_be_bytes());
    smoltcp::wire::Ipv4Packet::new_unchecked(&mut short[14..]).fill_checksum();
    short[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    short[40..42].copy_from_slice(&[0, 0]);
    inject(&ul, &short);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let s = sleeve_status(&w2);
        let done = counter(&s, &["drops", "replayed"]) > counter(&before, &["drops", "replayed"])
            && counter(&s, &["drops", "auth_failed"]) > counter(&before, &["drops", "auth_failed"])
            && counter(&s, &["drops", "truncated"]) > counter(&before, &["drops", "truncated"]);
        if done || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        counter(&after, &["drops", "replayed"]),
        counter(&before, &["drops", "replayed"]) + 1,
        "{after}"
    );
    assert_eq!(
        counter(&after, &["drops", "auth_failed"]),
        counter(&before, &["drops", "auth_failed"]) + 1,
        "{after}"
    );
    assert_eq!(
        counter(&after, &["drops", "truncated"]),
        counter(&before, &["drops", "truncated"]) + 1,
        "{after}"
    );

    // Batching: a burst of small frames from a container to one peer shares datagrams.
    let burst_path = w1.dir.join("burst.pcap");
    let mut cap = ul.capture(&burst_path).expect("tcpdump on the underlay");
    let (sent_before, opened_before) = (sleeve_status(&w1), sleeve_status(&w2));
    udp_burst(c1, "10.81.128.12", BURST);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (sent, opened) = loop {
        let (s1, s2) = (sleeve_status(&w1), sleeve_status(&w2));
        let grew = |v: &Value, b: &Value, k: &str| counter(v, &[k]) - counter(b, &[k]);
        let done = grew(&s2, &opened_before, "opened_frames") >= BURST as u64;
        if done || std::time::Instant::now() > deadline {
            break (s1, s2);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let grew = |v: &Value, b: &Value, k: &str| counter(v, &[k]) - counter(b, &[k]);
    let (frames, messages) = (
        grew(&opened, &opened_before, "opened_frames"),
        grew(&opened, &opened_before, "opened_messages"),
    );
    eprintln!("{test}: burst of {BURST}: {frames} frames opened in {messages} datagrams");
    assert!(frames >= BURST as u64, "{opened}");
    assert!(frames > messages, "no batching: {opened}");
    assert!(grew(&sent, &sent_before, "frames_batched") > 0, "{sent}");
    // The UDP payload sizes of the sleeve datagrams to node 2 in the capture, once
    // tcpdump has written as many as node 2 opened (it may lag behind the wire).
    let sizes = || -> Vec<usize> {
        pcap_frames(&std::fs::read(&burst_path).unwrap_or_default())
            .iter()
            .filter(|f| f[30..34] == W2 && udp_dst_port(f) == Some(6783))
            .map(|f| usize::from(u16::from_be_bytes([f[38], f[39]])).saturating_sub(8))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (sizes().len() as u64) < messages && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    cap.stop();
    let sizes = sizes();
    // One record of a 58/60-byte frame makes a 108/110-byte UDP payload; two at least
    // 44 + 2 * (6 + 58) = 172.
    assert!(
        sizes.iter().any(|payload| *payload >= 172),
        "no datagram to node 2 holds two frames: UDP payloads {sizes:?}"
    );
}

/// Small UDP datagrams sent back to back to a container across the grid.
const BURST: usize = 200;

/// `count` UDP datagrams of 16 bytes from `ns` to `to`, port 9, as fast as it goes.
fn udp_burst(ns: &Netns, to: &str, count: usize) {
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                  for _ in range(int(sys.argv[2])): s.sendto(b'0123456789abcdef',(sys.argv[1],9))\n";
    let out = ns
        .command("python3")
        .args(["-c", script, to, &count.to_string()])
        .output()
        .expect("python3");
    assert!(out.status.success(), "udp burst: {out:?}");
}

/// Node `n`'s document with a network in `mode`, its `secret`, its trusted subnets and
/// peers `others`. Nodes 1 and 2 are in region "east", node 3 in "west"; every peer has
/// its underlay address as public address and an unreachable TEST-NET-2 one as private
/// address, so only the region rule (public across regions) lets node 3 talk to node 1.
fn auto_document(n: u8, mode: &str, secret: &str, trusted: &[&str], others: &[u8]) -> Value {
    let region = |n: u8| if n == 3 { "west" } else { "east" };
    let peers: Vec<Value> = others
        .iter()
        .map(|&o| {
            if region(o) == region(n) {
                json!({"node": o, "address": format!("192.0.2.1{o}"), "networks": ["grid"]})
            } else {
                json!({
                    "node": o,
                    "region": region(o),
                    "private_address": format!("198.51.100.1{o}"),
                    "public_address": format!("192.0.2.1{o}"),
                    "networks": ["grid"],
                })
            }
        })
        .collect();
    json!({
        "uplink": {"address": format!("192.0.2.1{n}/24"), "gateway": "192.0.2.1"},
        "link": {"address": format!("10.81.0.{n}/16")},
        "grid": {"node": n, "secret": secret, "trusted_subnets": trusted, "region": region(n)},
        "networks": [{"name": "grid", "vni": 100, "mode": mode}],
        "peers": peers,
    })
}

/// Auto mode (by trusted subnets) and regions (node 3 across regions, at its public
/// address), then a wrong secret.
#[test]
fn auto_mode_trusts_its_subnets_and_a_wrong_secret_exchanges_nothing() {
    let test = "sleeve_auto";
    let ([w1, w2, w3], ul) = on_underlay(
        test,
        Machine::Q35,
        ["10.81.128.11/16", "10.81.128.12/16", "10.81.128.13/16"],
        None,
    );
    set_ctr_mtu(&[&w1, &w2, &w3], SLEEVE_MTU);
    // Node 1 trusts node 2 (VXLAN) and not node 3 (sleeve); each of them agrees.
    w1.apply_json(&auto_document(
        1,
        "auto",
        SECRET,
        &["192.0.2.12/32"],
        &[2, 3],
    ));
    w2.apply_json(&auto_document(2, "auto", SECRET, &["192.0.2.11/32"], &[1]));
    w3.apply_json(&auto_document(3, "sleeve", SECRET, &[], &[1]));

    let cap_path = w1.dir.join("auto.pcap");
    let mut cap = ul.capture(&cap_path).expect("tcpdump on the underlay");
    let (c1, c3) = (w1.ctr(), w3.ctr());
    let (ok, out) = ping_pattern(c1, "10.81.128.12");
    assert!(ok, "node 1 -> node 2 (trusted, VXLAN): {out}");
    let (ok, out) = ping_pattern(c1, "10.81.128.13");
    assert!(ok, "node 1 -> node 3 (untrusted, sleeve): {out}");
    cap.stop();
    let frames = pcap_frames(&std::fs::read(&cap_path).expect("reading the capture"));
    let to = |last: u8, port: u16| {
        frames
            .iter()
            .filter(|f| f[30..34] == [192, 0, 2, last] && udp_dst_port(f) == Some(port))
            .count()
    };
    assert!(to(12, 4789) >= 3, "VXLAN to node 2: {}", to(12, 4789));
    assert_eq!(to(12, 6783), 0, "sleeve to trusted node 2");
    assert!(to(13, 6783) >= 3, "sleeve to node 3: {}", to(13, 6783));
    assert_eq!(to(13, 4789), 0, "VXLAN to untrusted node 3");
    // Node 3 is in another region: reached at its public address, never its private.
    assert!(
        !frames
            .iter()
            .any(|f| f.len() >= 34 && f[12..14] == [8, 0] && f[30..33] == [198, 51, 100]),
        "a private address used across regions"
    );
    let peers = result(&w1, "status")["overlay"]["peers"].clone();
    let node3 = peers
        .as_array()
        .and_then(|a| a.iter().find(|p| p["node"] == 3))
        .unwrap_or_else(|| panic!("no peer 3 in {peers}"));
    assert_eq!(node3["address"], "192.0.2.13", "{node3}");
    assert_eq!(node3["address_kind"], "public", "{node3}");

    // Node 3 with another grid secret: nothing passes, and it says why.
    let wrong = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    w3.apply_json(&auto_document(3, "sleeve", wrong, &[], &[1]));
    let before = counter(&sleeve_status(&w3), &["drops", "auth_failed"]);
    let (ok, out) = ping_pattern(c3, "10.81.128.11");
    assert!(!ok, "node 3 with a wrong secret reached node 1: {out}");
    let (ok, out) = ping_pattern(c1, "10.81.128.13");
    assert!(!ok, "node 1 reached node 3 with a wrong secret: {out}");
    let after = sleeve_status(&w3);
    assert!(
        counter(&after, &["drops", "auth_failed"]) > before,
        "{after}"
    );
    let st1 = sleeve_status(&w1);
    assert!(counter(&st1, &["drops", "auth_failed"]) >= 1, "{st1}");
}
