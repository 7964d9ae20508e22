//! An attacker on the underlay (issue 20), from the uplink segment's host namespace.
//!
//! VXLAN: frames for the container, crafted with scapy, from an address that is no
//! peer and with a VNI the peer does not carry, never reach the container and are
//! counted; the same frame from the peer's address on its VNI does reach it (so the
//! refusals are the appliance's, not a broken injection).
//!
//! DNS (RFC 5452): the upstream resolver sits where the attacker does. On the path it
//! sees every forwarded query and answers each first with forgeries (wrong ID, right ID
//! from another port, right ID from another address, right ID for another question),
//! then genuinely; off the path it sprays answers with random IDs to random ports of
//! the forwarder's range before the genuine one. The client only ever gets the genuine
//! answer, and every forgery the appliance examined is dropped and counted by reason
//! (off the path, only those that hit the port in flight get that far: the rest meet
//! no socket).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_control::document;
use weft_image::netns::Netns;
use weft_qemu_tests::dns::dig;
use weft_qemu_tests::grid::boot_node;
use weft_qemu_tests::{mac_of, TestVm};

fn status(vm: &TestVm) -> Value {
    let mut c = vm.client();
    let r = c.call("status", None).expect("status");
    r.outcome.expect("status result")
}

fn counter(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {v}"))
}

/// A UDP listener in `ns` on `port` printing each datagram's payload, one per line.
fn udp_listener(ns: &Netns, port: u16) -> (Child, std::sync::mpsc::Receiver<String>) {
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                  s.bind(('0.0.0.0',int(sys.argv[1])))\n\
                  print('ready',flush=True)\n\
                  while True:\n\
                  \x20   d,a=s.recvfrom(2048)\n\
                  \x20   print(d.decode(errors='replace'),flush=True)\n";
    let mut child = ns
        .command("python3")
        .args(["-c", script, &port.to_string()])
        .process_group(0)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 listener");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("ready")
    );
    (child, rx)
}

/// Kills a helper process and its group.
fn stop(mut child: Child) {
    weft_image::process::signal_group(child.id(), weft_image::process::Signal::SIGKILL);
    let _ = child.wait();
}

const OVERLAY_NODE: &str = "192.0.2.11";
const PEER: &str = "192.0.2.12";
const CTR: &str = "10.81.128.11";

#[test]
fn vxlan_from_strangers_or_on_foreign_vnis_never_reaches_a_container() {
    let vm = boot_node("attacker_vxlan", 1, &format!("{CTR}/16"));
    vm.apply_json(&json!({
        "uplink": {"address": format!("{OVERLAY_NODE}/24"), "gateway": "192.0.2.1"},
        "link": {"address": "10.81.0.1/16"},
        "grid": {"node": 1},
        "networks": [{"name": "grid", "vni": 100}],
        "peers": [{"node": 2, "address": PEER, "networks": ["grid"]}],
    }));
    vm.ping(vm.host(), OVERLAY_NODE, 1)
        .expect("the uplink answers");
    let host = vm.host();
    let names = &vm.topo.names;
    // The attacker may use any address on the segment, the peer's too.
    host.ip(&[
        "addr",
        "add",
        &format!("{PEER}/24"),
        "dev",
        &names.host_veth,
    ])
    .unwrap();
    let ctr_mac = mac_of(vm.ctr(), &names.ctr_veth).to_string();
    let uplink_mac = vm.uplink_mac.to_string();
    let (listener, heard) = udp_listener(vm.ctr(), 9999);

    // scapy: VXLAN to the appliance's uplink with an inner UDP datagram for the
    // container; argv: iface, outer source, VNI, tag, count.
    let scapy = "import sys\n\
                 from scapy.all import Ether,IP,UDP,VXLAN,Raw,sendp,conf\n\
                 conf.verb=0\n\
                 iface,src,vni,tag,n,dmac,cmac=sys.argv[1],sys.argv[2],int(sys.argv[3]),sys.argv[4],int(sys.argv[5]),sys.argv[6],sys.argv[7]\n\
                 inner=Ether(dst=cmac,src='02:00:00:00:00:77')/IP(src='10.81.128.77',dst='10.81.128.11')/UDP(sport=4444,dport=9999)/Raw(tag.encode())\n\
                 f=Ether(dst=dmac)/IP(src=src,dst='192.0.2.11')/UDP(sport=40000,dport=4789)/VXLAN(vni=vni,flags=8)/inner\n\
                 sendp([f]*n,iface=iface)\n";
    let send = |src: &str, vni: u32, tag: &str, n: u32| {
        // Debian's python3-scapy is for the system interpreter.
        let out = host
            .command("/usr/bin/python3")
            .args(["-c", scapy, &names.host_veth, src, &vni.to_string(), tag])
            .args([&n.to_string(), &uplink_mac, &ctr_mac])
            .output()
            .expect("python3 scapy");
        assert!(out.status.success(), "scapy: {out:?}");
    };
    let before = status(&vm);
    send("192.0.2.1", 100, "stranger", 50);
    send(PEER, 999, "foreign-vni", 50);
    // The control: the peer's address on its VNI is delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while !got.iter().any(|l: &String| l == "peer") && Instant::now() < deadline {
        send(PEER, 100, "peer", 1);
        while let Ok(l) = heard.recv_timeout(Duration::from_millis(500)) {
            got.push(l);
        }
    }
    stop(listener);
    assert!(
        got.iter().any(|l| l == "peer"),
        "control frame lost: {got:?}"
    );
    assert!(
        got.iter().all(|l| l == "peer"),
        "a forged frame reached the container: {got:?}"
    );
    let after = status(&vm);
    let drops = |v: &Value, k: &str| counter(v, &["overlay", "drops", k]);
    assert_eq!(
        drops(&after, "unknown_peer") - drops(&before, "unknown_peer"),
        50,
        "{after}"
    );
    assert_eq!(
        drops(&after, "unknown_vni") - drops(&before, "unknown_vni"),
        50,
        "{after}"
    );
}

/// The upstream at 192.0.2.53 (and the attacker's second address 192.0.2.66), in the
/// uplink-side namespace. argv: mode (`onpath` | `flood`), queries to serve, forgeries
/// per query (flood), seconds before the genuine answer. Prints `forged N` at the end.
const UPSTREAM: &str = r#"
import random, socket, struct, sys, time
mode, nq, per_query, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def sock(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    s.bind((addr, port))
    return s
up, other_port, other_addr = sock("192.0.2.53", 53), sock("192.0.2.53", 5353), sock("192.0.2.66", 53)
print("ready", flush=True)
def question_of(q):
    i = 12
    while q[i] != 0:
        i += 1 + q[i]
    return q[12:i + 5]
def answer(qid, question, ip):
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    return struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + rr
evil = b"\x04evil\x07example\x00\x00\x01\x00\x01"
forged = 0
for k in range(nq):
    data, (src, sport) = up.recvfrom(4096)
    qid, question = struct.unpack(">H", data[:2])[0], question_of(data)
    if mode == "onpath":
        # One at a time: each must be examined (and refused), not lost to a full
        # socket buffer.
        for s, qi, q, ip in ((up, qid ^ 0x5a5a, question, "6.6.6.1"),
                             (other_port, qid, question, "6.6.6.2"),
                             (other_addr, qid, question, "6.6.6.3"),
                             (up, qid, evil, "6.6.6.4")):
            s.sendto(answer(qi, q, ip), (src, sport))
            forged += 1
            time.sleep(0.05)
    else:
        start = time.time()
        for i in range(per_query):
            fid, fport = random.getrandbits(16), random.randint(61000, 65535)
            if (fid, fport) == (qid, sport):
                continue  # not a forgery an off-path attacker could know to send
            up.sendto(answer(fid, question, "6.6.6.6"), (src, fport))
            forged += 1
            if i % 64 == 63:
                # Paced so that the appliance's receive ring sees them rather than the
                # tap dropping them: about the rate it takes under TCG.
                time.sleep(0.004)
    time.sleep(max(0.0, delay))
    up.sendto(answer(qid, question, "10.9.9.9"), (src, sport))
print("forged", forged, flush=True)
"#;

fn upstream(ns: &Netns, mode: &str, queries: u32, per_query: u32, delay: f64) -> Child {
    let mut child = ns
        .command("python3")
        .args(["-c", UPSTREAM, mode, &queries.to_string()])
        .args([&per_query.to_string(), &delay.to_string()])
        .process_group(0)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 upstream");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.as_mut().expect("stdout"));
    out.read_line(&mut line).expect("upstream starts");
    assert_eq!(line.trim(), "ready");
    child
}

fn forged_count(child: Child) -> u64 {
    let out = child.wait_with_output().expect("upstream ends");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("forged "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("upstream printed no count: {text}"))
}

#[test]
fn forged_dns_answers_are_never_accepted() {
    let vm = TestVm::boot("attacker_dns");
    let mut doc = serde_json::to_value(document::default_config()).unwrap();
    doc["dns"] = json!({"grid": "g", "upstreams": ["192.0.2.53"], "upstream_timeout_ms": 4000});
    vm.apply_json(&doc);
    vm.assert_pings();
    let host = vm.host();
    for a in ["192.0.2.53/24", "192.0.2.66/24"] {
        host.ip(&["addr", "add", a, "dev", &vm.topo.names.host_veth])
            .unwrap();
    }
    let drops = |v: &Value, k: &str| counter(v, &["dns", "counters", "drops", k]);

    // On the path: four forgeries before every genuine answer.
    const ONPATH: u32 = 5;
    let before = status(&vm);
    let up = upstream(host, "onpath", ONPATH, 0, 0.3);
    for i in 0..ONPATH {
        let r = dig(
            vm.ctr(),
            weft_qemu_tests::LINK_ADDR,
            &[&format!("onpath-{i}.example.")],
        )
        .expect("dig");
        let got: Vec<String> = r.answers.iter().map(|a| a.data.clone()).collect();
        assert_eq!(got, ["10.9.9.9"], "query {i}: {}", r.raw);
    }
    assert_eq!(forged_count(up), 4 * u64::from(ONPATH));
    let after = status(&vm);
    let delta = |k: &str| drops(&after, k) - drops(&before, k);
    let n = u64::from(ONPATH);
    assert_eq!(delta("reply_id_mismatch"), n, "{after}");
    assert_eq!(delta("reply_wrong_source"), 2 * n, "{after}");
    assert_eq!(delta("reply_question_mismatch"), n, "{after}");

    // Off the path: 100 000 answers with random IDs to random ports of the forwarder's
    // range, over 20 queries, each followed by the genuine answer.
    const FLOOD_QUERIES: u32 = 20;
    const PER_QUERY: u32 = 5_000;
    let before = status(&vm);
    let rx_before = counter(&before, &["interfaces", "uplink", "counters", "rx_packets"]);
    let up = upstream(host, "flood", FLOOD_QUERIES, PER_QUERY, 0.5);
    for i in 0..FLOOD_QUERIES {
        let r = dig(
            vm.ctr(),
            weft_qemu_tests::LINK_ADDR,
            &[&format!("flood-{i}.example.")],
        )
        .expect("dig");
        let got: Vec<String> = r.answers.iter().map(|a| a.data.clone()).collect();
        assert!(
            got.iter().all(|a| a == "10.9.9.9"),
            "query {i} took a forged answer: {}",
            r.raw
        );
    }
    let forged = forged_count(up);
    let after = status(&vm);
    let examined = [
        "reply_unknown_port",
        "reply_id_mismatch",
        "reply_wrong_source",
    ]
    .iter()
    .map(|k| drops(&after, k) - drops(&before, k))
    .sum::<u64>();
    let received = counter(&after, &["interfaces", "uplink", "counters", "rx_packets"]) - rx_before;
    eprintln!(
        "attacker_dns: {forged} forged answers sent off the path, {received} frames received on \
         the uplink, {examined} forgeries examined and dropped, 0 accepted"
    );
    assert!(forged >= 99_000, "{forged}");
    // The flood reached the appliance; the forgeries that hit the one source port in
    // flight (expected: one in 4536, about 22) were examined by the forwarder and
    // refused, the rest met no socket at all.
    assert!(
        received * 100 >= forged * 99,
        "{received} of {forged} received"
    );
    assert!(
        examined >= 5,
        "only {examined} forgeries hit the open port: {after}"
    );
}
