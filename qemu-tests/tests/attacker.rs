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
    let uplink = |v: &Value, k: &str| counter(v, &["interfaces", "uplink", "counters", k]);
    let withheld = |v: &Value| {
        counter(
            v,
            &[
                "interfaces",
                "uplink",
                "counters",
                "drops",
                "icmp_rate_limited",
            ],
        )
    };
    let rx_before = uplink(&before, "rx_packets");
    let started = Instant::now();
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
    let seconds = started.elapsed().as_secs_f64();
    let received = uplink(&after, "rx_packets") - rx_before;
    let sent = uplink(&after, "tx_packets") - uplink(&before, "tx_packets");
    let limited = withheld(&after) - withheld(&before);
    eprintln!(
        "attacker_dns: {forged} forged answers sent off the path in {seconds:.1} s, {received} \
         frames received on the uplink, {examined} forgeries examined and dropped, 0 accepted; \
         {sent} frames sent on the uplink, {limited} port unreachables withheld by the rate limit"
    );
    // What met no socket is not reflected at the rate it came: at most a burst plus the
    // limit's 100 a second of ICMP errors, beside the 20 queries and their ARP.
    let allowed = 50 + (100.0 * seconds) as u64 + 100;
    assert!(
        sent <= allowed,
        "{sent} frames sent on the uplink in {seconds:.1} s (at most {allowed})"
    );
    assert!(
        limited + sent + examined >= received * 9 / 10,
        "{limited} withheld + {sent} sent for {received} received"
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

/// argv: iface, destination MAC, source MAC, destination address, port, count, pps.
/// TCP SYNs from random sources in 198.18.0.0/15 (RFC 2544's benchmark range), with
/// valid checksums, paced to `pps`.
const SYN_FLOOD: &str = r#"
import random, socket, struct, sys, time
iface, dmac, smac, dst, dport, n, pps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff)
    t += t >> 16
    return ~t & 0xffff
d = socket.inet_aton(dst)
eth = bytes.fromhex(dmac.replace(":", "")) + bytes.fromhex(smac.replace(":", "")) + b"\x08\x00"
start = time.time()
for i in range(n):
    src = struct.pack("!I", 0xc6120000 | random.getrandbits(17))
    tcp = struct.pack("!HHIIBBHHH", random.randint(1024, 65535), dport, random.getrandbits(32), 0, 0x50, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(src + d + struct.pack("!BBH", 0, 6, 20) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xffff, 0, 64, 6, 0, src, d)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.send(eth + ip + tcp)
    ahead = (i + 1) / pps - (time.time() - start)
    if ahead > 0.002:
        time.sleep(ahead)
print("sent", n, "in", round(time.time() - start, 2), flush=True)
"#;

#[test]
fn a_syn_flood_at_a_published_port_neither_evicts_established_flows_nor_locks_out_clients() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use weft_image::bench::load::enter_netns;

    const CAPACITY: u64 = 8192;
    const FLOOD: u32 = 40_000;
    let vm = TestVm::boot("attacker_syn");
    let mut doc = serde_json::to_value(document::default_config()).unwrap();
    doc["publish"] = json!([{"proto": "tcp", "host_port": 8080,
                             "container_address": "10.81.128.2", "container_port": 8080}]);
    doc["nat"] = json!({"capacity": CAPACITY});
    vm.apply_json(&doc);
    vm.assert_pings();
    let _echo = weft_qemu_tests::socat::Socat::start(
        vm.ctr(),
        &["TCP-LISTEN:8080,fork,reuseaddr,backlog=1024", "EXEC:cat"],
    );
    let to: SocketAddr = "192.0.2.2:8080".parse().unwrap();
    let host_ns = vm.host().name().to_string();

    // The client side: one established connection echoing every 200 ms, and a new
    // connection attempted every 100 ms, from the real client's address.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (stop, ns) = (stop.clone(), host_ns.clone());
        std::thread::spawn(move || -> (u32, u32, u32, u32) {
            enter_netns(&ns).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut est = loop {
                match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    Err(e) => panic!("no first connection: {e}"),
                }
            };
            est.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let (mut echoed, mut lost, mut opened, mut refused) = (0, 0, 0, 0);
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                if i.is_multiple_of(2) {
                    let msg = format!("ping {i}\n");
                    let mut buf = vec![0u8; msg.len()];
                    let ok = est.write_all(msg.as_bytes()).is_ok()
                        && est.read_exact(&mut buf).is_ok()
                        && buf == msg.as_bytes();
                    if ok {
                        echoed += 1
                    } else {
                        lost += 1
                    }
                }
                match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                    Ok(_) => opened += 1,
                    Err(_) => refused += 1,
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (echoed, lost, opened, refused)
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let names = &vm.topo.names;
    let host_mac = mac_of(vm.host(), &names.host_veth).to_string();
    let out = vm
        .host()
        .command("python3")
        .args([
            "-c",
            SYN_FLOOD,
            &names.host_veth,
            &vm.uplink_mac.to_string(),
            &host_mac,
        ])
        .args(["192.0.2.2", "8080", &FLOOD.to_string(), "4000"])
        .output()
        .expect("python3 flood");
    assert!(out.status.success(), "flood: {out:?}");
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (echoed, lost, opened, refused) = client.join().expect("client thread");
    let st = status(&vm);
    let nat = &st["nat"];
    eprintln!(
        "attacker_syn: {} ; table {} of {CAPACITY}, inserts {}, evicted {}, refused full {}; \
         established echoes {echoed} ok / {lost} lost; new connections {opened} opened / {refused} failed",
        String::from_utf8_lossy(&out.stdout).trim(),
        nat["table_size"],
        nat["conntrack"]["inserts"],
        nat["conntrack"]["evicted"],
        nat["conntrack"]["refused_full"],
    );
    // The flood filled the table many times over...
    assert!(counter(nat, &["conntrack", "evicted"]) > 0, "{nat}");
    // ...yet the established connection never missed an echo, and the real client
    // could open connections throughout: half-open flood flows are what make room.
    assert_eq!(lost, 0, "established connection lost echoes: {nat}");
    assert!(echoed > 0);
    assert!(
        refused * 10 <= opened,
        "new connections: {opened} opened, {refused} failed: {nat}"
    );
}

/// argv: iface, count, pps. ARP requests with random sender MACs and addresses in
/// 10.81.0.0/16 asking for random addresses there, paced to `pps`.
const ARP_FLOOD: &str = r#"
import random, socket, struct, sys, time
iface, n, pps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
start = time.time()
for i in range(n):
    mac = bytes([0x02]) + random.getrandbits(40).to_bytes(5, "big")
    sip = struct.pack("!I", 0x0a510000 | random.getrandbits(16))
    tip = struct.pack("!I", 0x0a510000 | random.getrandbits(16))
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + sip + b"\0" * 6 + tip
    s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp + b"\0" * 18)
    ahead = (i + 1) / pps - (time.time() - start)
    if ahead > 0.002:
        time.sleep(ahead)
print("sent", n, "in", round(time.time() - start, 2), flush=True)
"#;

#[test]
fn an_arp_flood_on_the_link_costs_bounded_memory_and_cpu() {
    const FLOOD: u32 = 50_000;
    let vm = TestVm::boot("attacker_arp");
    vm.apply_default();
    vm.assert_pings();
    let pid = vm.qemu_pid().expect("qemu pid");
    let heap = |v: &Value| counter(v, &["heap", "used_bytes"]);
    let before = status(&vm);
    let cpu_before = weft_image::qemu::process_cpu_time(pid).unwrap();
    let t = Instant::now();
    let out = vm
        .ctr()
        .command("python3")
        .args(["-c", ARP_FLOOD, &vm.topo.names.ctr_veth])
        .args([&FLOOD.to_string(), "5000"])
        .output()
        .expect("python3 flood");
    assert!(out.status.success(), "flood: {out:?}");
    let wall = t.elapsed();
    let cpu = weft_image::qemu::process_cpu_time(pid).unwrap() - cpu_before;
    // Still serving, right after.
    vm.assert_pings();
    let after = status(&vm);
    let grown = heap(&after).saturating_sub(heap(&before));
    let received = counter(&after, &["interfaces", "link", "counters", "rx_packets"])
        - counter(&before, &["interfaces", "link", "counters", "rx_packets"]);
    eprintln!(
        "attacker_arp: {} ; {received} frames received, heap +{} KiB, QEMU CPU {:.1} s over {:.1} s ({:.1} us/frame under TCG)",
        String::from_utf8_lossy(&out.stdout).trim(),
        grown / 1024,
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / received.max(1) as f64,
    );
    assert!(received >= u64::from(FLOOD) * 9 / 10, "{received} received");
    // 50 000 senders, but the neighbour tables hold at most their capacity (4096 on the
    // router): what the flood leaves behind is bounded by that, not by the flood.
    assert!(grown < 4 << 20, "heap grew {grown} bytes: {after}");
}
