//! Issue 3 end to end: two weft appliances and a plain Linux host with a kernel
//! `vxlan` device on one underlay share one L2 overlay network; containers behind them
//! reach each other (ping, iperf3 both ways) and the node addresses; `tshark` decodes
//! the underlay as VXLAN with the right VNI and the inner frame intact; peers change at
//! runtime; networks on different VNIs (and VLANs on the link) stay apart.
//!
//! Each test boots its two VMs once (in parallel) and reuses them for every check. The
//! full checks run on q35; one shorter test carries the overlay between two microvm
//! appliances (virtio-mmio) and the Linux VTEP.

use serde_json::{json, Value};
use weft_control::client::Client;
use weft_image::netns::Netns;
use weft_image::qemu::Machine;
use weft_qemu_tests::grid::{
    iperf3, set_ctr_mtu, two_on_underlay, weft_ctl, Container, LinuxVtep, Underlay, VXLAN_MTU,
};
use weft_qemu_tests::TestVm;

const W1: &str = "192.0.2.11";
const W2: &str = "192.0.2.12";
const LX: &str = "192.0.2.13";

/// The document for node `n`: uplink `192.0.2.1<n>`, link = node address.
fn document(n: u8, networks: Value, peers: Value) -> Value {
    json!({
        "uplink": {"address": format!("192.0.2.1{n}/24"), "gateway": "192.0.2.1"},
        "link": {"address": format!("10.81.0.{n}/16")},
        "grid": {"node": n},
        "networks": networks,
        "peers": peers,
    })
}

fn call(vm: &TestVm, c: &mut Client, cmd: &str, args: Value) -> Value {
    match c.call(cmd, Some(args.clone())) {
        Ok(r) => match r.outcome {
            Ok(v) => v,
            Err(e) => panic!("{}: {cmd} {args}: {e}", vm.test),
        },
        Err(e) => panic!("{}: {cmd}: {e}", vm.test),
    }
}

fn overlay_status(vm: &TestVm) -> Value {
    let mut c = vm.client();
    let v = call(vm, &mut c, "status", Value::Null);
    v["overlay"].clone()
}

/// Pings until `count` replies come (20 s at most); panics with ping's output.
fn ping(ns: &Netns, addr: &str, count: u32, what: &str) -> String {
    match weft_image::netns::Topology::ping(ns, addr, count, 20) {
        Ok(out) => out,
        Err(e) => panic!("{what}: {e:#}"),
    }
}

/// Whether `addr` stays silent to 3 echo requests over 3 s.
fn silent(ns: &Netns, addr: &str) -> bool {
    weft_image::netns::Topology::ping(ns, addr, 3, 3).is_err()
}

/// `ping` with arguments, output and success (no retries).
fn ping_args(ns: &Netns, args: &[&str]) -> (bool, String) {
    let out = ns
        .command("ping")
        .args(args)
        .output()
        .expect("running ping");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    weft_qemu_tests::mac_of(ns, ifname).to_string()
}

/// Two wefts on `machine` and a Linux `vxlan` VTEP on one underlay, all three on the
/// overlay network `grid` (VNI 100), their containers at `.11`, `.12` and `.13` of
/// `subnet`/16 with Docker's overlay MTU (1500 minus the VXLAN overhead).
fn two_wefts_and_linux(
    test: &str,
    machine: Machine,
    subnet: &str,
) -> (TestVm, TestVm, Underlay, LinuxVtep) {
    let (w1, w2, mut ul) = two_on_underlay(
        test,
        machine,
        [&format!("{subnet}.11/16"), &format!("{subnet}.12/16")],
        None,
    );
    let lx = LinuxVtep::create(
        &mut ul,
        &format!("{LX}/24"),
        100,
        &[W1, W2],
        &format!("{subnet}.13/16"),
    )
    .expect("Linux VTEP");
    set_ctr_mtu(&[&w1, &w2], VXLAN_MTU);
    let networks = json!([{"name": "grid", "vni": 100}]);
    let peers = |other: u8| {
        json!([
            {"node": other, "address": format!("192.0.2.1{other}"), "networks": ["grid"]},
            {"node": 3, "name": "linux", "address": LX, "networks": ["grid"]}
        ])
    };
    w1.apply_json(&document(1, networks.clone(), peers(2)));
    w2.apply_json(&document(2, networks, peers(1)));
    (w1, w2, ul, lx)
}

#[test]
fn two_wefts_and_a_linux_vtep_share_one_overlay_network() {
    let test = "overlay_interop";
    let (w1, w2, ul, lx) = two_wefts_and_linux(test, Machine::Q35, "10.81.128");

    let cap_path = w1.dir.join("underlay.pcap");
    let mut cap = ul.capture(&cap_path).expect("tcpdump on the underlay");

    // Containers on three hosts, one L2 network: every pair, both ways.
    let (c1, c2, c3) = (w1.ctr(), w2.ctr(), &lx.ctr);
    let pattern = ["-p", "77656674"]; // "weft" in every echo payload
    for (from, to, what) in [
        (c1, "10.81.128.12", "weft 1 -> weft 2"),
        (c2, "10.81.128.11", "weft 2 -> weft 1"),
        (c1, "10.81.128.13", "weft 1 -> linux"),
        (c3, "10.81.128.11", "linux -> weft 1"),
        (c3, "10.81.128.12", "linux -> weft 2"),
        (c2, "10.81.128.13", "weft 2 -> linux"),
    ] {
        let _ = from.ip(&["neigh", "flush", "all"]);
        let (ok, out) = ping_args(
            from,
            &[
                &["-n", "-c", "3", "-i", "0.3", "-w", "20"],
                &pattern[..],
                &[to],
            ]
            .concat(),
        );
        assert!(ok, "{what}: {out}");
    }
    // The node addresses: own and remote, from weft's and Linux's containers.
    ping(c1, "10.81.0.1", 2, "container 1 -> node 1");
    ping(c1, "10.81.0.2", 2, "container 1 -> node 2 over the overlay");
    ping(c3, "10.81.0.1", 2, "linux container -> node 1");
    ping(c3, "10.81.0.2", 2, "linux container -> node 2");

    // Path MTU discovery: a 1500-byte container sending DF frames too big for the
    // overlay hears "fragmentation needed" with the overlay MTU.
    set_ctr_mtu(&[&w1], 1500);
    let (ok, out) = ping_args(
        c1,
        &[
            "-n",
            "-c",
            "2",
            "-M",
            "do",
            "-s",
            "1472",
            "-W",
            "2",
            "10.81.128.12",
        ],
    );
    assert!(
        !ok,
        "a 1500-byte DF packet crossed a {VXLAN_MTU} overlay: {out}"
    );
    assert!(
        out.contains(&format!("mtu = {VXLAN_MTU}")) || out.contains(&format!("mtu={VXLAN_MTU}")),
        "{out}"
    );
    set_ctr_mtu(&[&w1], VXLAN_MTU);
    let (ok, out) = ping_args(
        c1,
        &[
            "-n",
            "-c",
            "1",
            "-M",
            "do",
            "-s",
            &(VXLAN_MTU - 28).to_string(),
            "-W",
            "5",
            "10.81.128.12",
        ],
    );
    assert!(ok, "a full {VXLAN_MTU}-byte packet must fit: {out}");
    let st = overlay_status(&w1);
    let grid = &st["networks"][0]["counters"];
    assert!(grid["icmp_frag_needed"].as_u64() >= Some(1), "{st}");
    assert!(grid["drops"]["too_big"].as_u64() >= Some(1), "{st}");

    cap.stop();
    // The underlay carries VXLAN on VNI 100 from every VTEP, inner ICMP intact.
    let lines = cap
        .fields(
            4789,
            "vxlan && icmp",
            &[
                "vxlan.vni",
                "ip.src",
                "ip.dst",
                "icmp.type",
                "icmp.checksum.status",
                "data.data",
            ],
        )
        .expect("tshark");
    assert!(!lines.is_empty(), "no VXLAN ICMP on the underlay");
    let mut seen = std::collections::BTreeSet::new();
    for l in &lines {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f[0], "100", "VXLAN with another VNI: {l}");
        // Outer and inner addresses: "outer,inner".
        let src: Vec<&str> = f[1].split(',').collect();
        let dst: Vec<&str> = f[2].split(',').collect();
        assert_eq!(src.len(), 2, "{l}");
        assert!(
            src[1].starts_with("10.81.") && dst[1].starts_with("10.81."),
            "{l}"
        );
        assert_ne!(f[4], "0", "inner ICMP checksum bad: {l}");
        if src[1].starts_with("10.81.128.") && dst[1].starts_with("10.81.128.") && f[3] == "8" {
            assert!(f[5].contains("77656674"), "echo payload changed: {l}");
        }
        seen.insert((src[0].to_string(), dst[0].to_string()));
    }
    for (a, b) in [(W1, W2), (W2, W1), (W1, LX), (LX, W1), (W2, LX), (LX, W2)] {
        assert!(
            seen.contains(&(a.to_string(), b.to_string())),
            "no VXLAN ICMP from {a} to {b} on the underlay: {seen:?}"
        );
    }
    let malformed = cap
        .fields(
            4789,
            "_ws.malformed || _ws.expert.severity >= error",
            &["frame.number"],
        )
        .expect("tshark");
    assert!(
        malformed.is_empty(),
        "malformed packets on the underlay: {malformed:?}"
    );
    eprintln!(
        "{test}: {} VXLAN ICMP packets decoded on the underlay",
        lines.len()
    );

    // Static FDB entries (what a host agent pushes): known unicast goes to one peer,
    // and ARP for those containers is answered by the appliance itself.
    let (m2, m3) = (mac_of(c2, &w2.topo.names.ctr_veth), mac_of(c3, "eth0"));
    let m1 = mac_of(c1, &w1.topo.names.ctr_veth);
    {
        let mut c = w1.client();
        for (mac, peer, ip) in [(&m2, W2, "10.81.128.12"), (&m3, LX, "10.81.128.13")] {
            call(
                &w1,
                &mut c,
                "fdb-add",
                json!({"vni": 100, "mac": mac, "peer": peer, "ip": ip}),
            );
        }
    }
    // On node 2 through the host tool, as a person would.
    let args = json!({"vni": 100, "mac": m1, "peer": W1, "ip": "10.81.128.11"}).to_string();
    let (code, out, err) = weft_ctl(&w2.control, &["call", "fdb-add", &args]);
    assert_eq!((code, out.as_str()), (0, "applied\n"), "{err}");
    let (code, _, err) = weft_ctl(
        &w2.control,
        &[
            "call",
            "fdb-add",
            r#"{"vni":100,"mac":"02:00:00:00:00:01"}"#,
        ],
    );
    assert_eq!(code, 1, "an fdb-add without peer or local is refused");
    assert!(
        err.contains("invalid_config") && err.contains("field:   peer"),
        "{err}"
    );
    lx.pin(&m1, W1).unwrap();
    let before = overlay_status(&w1);
    let _ = c1.ip(&["neigh", "flush", "all"]);
    ping(
        c1,
        "10.81.128.12",
        3,
        "weft 1 -> weft 2 with static entries",
    );
    ping(c1, "10.81.128.13", 3, "weft 1 -> linux with static entries");
    let after = overlay_status(&w1);
    let counter = |s: &Value, k: &str| s["networks"][0]["counters"][k].as_u64().unwrap_or(0);
    assert!(
        counter(&after, "arp_suppressed") > counter(&before, "arp_suppressed"),
        "ARP for a pinned container was not answered locally: {after}"
    );
    let fdb = after["networks"][0]["fdb"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        fdb.iter().any(|e| e["mac"] == json!(m2)
            && e["location"] == json!(W2)
            && e["static"] == json!(true)),
        "{fdb:?}"
    );
    let peers = after["peers"].as_array().cloned().unwrap_or_default();
    for p in &peers {
        assert!(p["counters"]["tx_packets"].as_u64() > Some(0), "{p}");
        assert!(p["counters"]["rx_packets"].as_u64() > Some(0), "{p}");
        assert!(
            p["neighbor"].is_string(),
            "underlay neighbour unresolved: {p}"
        );
    }

    // iperf3 between containers on different hosts, both ways.
    for (srv, cli, addr, what) in [
        (c2, c1, "10.81.128.12", "weft 1 <-> weft 2"),
        (c3, c1, "10.81.128.13", "weft 1 <-> linux"),
    ] {
        for reverse in [false, true] {
            let r = iperf3(srv, cli, addr, 3, reverse).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert!(r.sent_bytes > 0 && r.received_bytes > 0, "{what}: {r:?}");
            eprintln!(
                "{test}: iperf3 {what}{}: {:.1} Mbit/s ({} bytes)",
                if reverse { " (reverse)" } else { "" },
                r.mbit_per_s,
                r.received_bytes
            );
        }
    }

    // Runtime: removing node 2 stops traffic to it; the Linux peer is unaffected;
    // adding it back restores it.
    {
        let mut c = w1.client();
        call(&w1, &mut c, "peer-remove", json!({"address": W2}));
    }
    assert!(
        silent(c1, "10.81.128.12"),
        "traffic to a removed peer still flows"
    );
    ping(
        c1,
        "10.81.128.13",
        2,
        "the other peer while node 2 is removed",
    );
    {
        let mut c = w1.client();
        call(
            &w1,
            &mut c,
            "peer-add",
            json!({"node": 2, "address": W2, "networks": ["grid"]}),
        );
        let cfg = call(&w1, &mut c, "config", Value::Null);
        assert_eq!(cfg["peers"].as_array().map(Vec::len), Some(2), "{cfg}");
    }
    ping(c1, "10.81.128.12", 2, "weft 1 -> weft 2 after peer-add");
    let (code, table, err) = weft_ctl(&w1.control, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("overlay: node 1 (10.81.0.1), underlay 192.0.2.11"),
        "{table}"
    );
    assert!(table.contains("linux"), "{table}");
    eprintln!("{test}: weft ctl status on node 1:\n{table}");
    let st = overlay_status(&w1);
    assert_eq!(st["drops"]["bad_outer_header"], json!(0), "{st}");
    assert_eq!(st["drops"]["unknown_peer"], json!(0), "{st}");
}

#[test]
fn networks_on_different_vnis_never_meet() {
    let test = "overlay_isolation";
    let (w1, w2, ul) = two_on_underlay(
        test,
        Machine::Q35,
        ["10.81.127.11/16", "10.81.127.12/16"],
        None,
    );
    let networks = json!([
        {"name": "a", "vni": 100, "vlan": 100},
        {"name": "b", "vni": 200, "vlan": 200}
    ]);
    let peer = |other: u8| json!([{"node": other, "address": format!("192.0.2.1{other}"), "networks": ["a", "b"]}]);
    w1.apply_json(&document(1, networks.clone(), peer(2)));
    w2.apply_json(&document(2, networks, peer(1)));

    // On each host a container on a (VLAN 100) and one on b (VLAN 200); a's live in
    // 10.81.128.0/24, b's in 10.81.129.0/24, all in the one grid subnet.
    let p = ul.prefix.clone();
    let ctr = |vm: &TestVm, name: &str, vlan: u16, cidr: &str| {
        Container::attach(vm, &format!("{p}-{name}"), Some(vlan), cidr, VXLAN_MTU)
            .unwrap_or_else(|e| panic!("{test}: container {name}: {e:#}"))
    };
    let a1 = ctr(&w1, "a1", 100, "10.81.128.21/16");
    let b1 = ctr(&w1, "b1", 200, "10.81.129.21/16");
    let a2 = ctr(&w2, "a2", 100, "10.81.128.22/16");
    let b2 = ctr(&w2, "b2", 200, "10.81.129.22/16");

    let cap_path = w1.dir.join("isolation.pcap");
    let mut cap = ul.capture(&cap_path).expect("tcpdump on the underlay");

    ping(&a1.ns, &a2.address, 2, "a on node 1 -> a on node 2");
    ping(&a2.ns, &a1.address, 2, "a on node 2 -> a on node 1");
    ping(&b1.ns, &b2.address, 2, "b on node 1 -> b on node 2");
    ping(&b2.ns, &b1.address, 2, "b on node 2 -> b on node 1");
    ping(&a1.ns, "10.81.0.1", 2, "a -> its node address");
    ping(&b1.ns, "10.81.0.1", 2, "b -> its node address");
    ping(
        &b2.ns,
        "10.81.0.1",
        2,
        "b on node 2 -> node 1's address over b",
    );
    for (from, to, what) in [
        (&a1, &b2, "a on node 1 -> b on node 2"),
        (
            &a1,
            &b1,
            "a on node 1 -> b on node 1 (same link, other VLAN)",
        ),
        (&b2, &a1, "b on node 2 -> a on node 1"),
        (&a2, &b2, "a on node 2 -> b on node 2"),
    ] {
        assert!(
            silent(&from.ns, &to.address),
            "{what}: answered across networks"
        );
    }
    cap.stop();

    // No frame of a inside b's VNI, and none of b inside a's: every inner frame on a
    // VNI was sent by that network's containers or by the appliance (its node address
    // is on both). Destinations may name anything (a's ARP asking for b's address is
    // a's own frame).
    let macs = |cs: [&Container; 2]| cs.map(|c| c.mac());
    let (macs_a, macs_b) = (macs([&a1, &a2]), macs([&b1, &b2]));
    let lines = cap
        .fields(
            4789,
            "vxlan",
            &["vxlan.vni", "eth.src", "arp.src.proto_ipv4", "ip.src"],
        )
        .expect("tshark");
    let mut per_vni = std::collections::BTreeMap::new();
    for l in &lines {
        let f: Vec<&str> = l.split('\t').collect();
        *per_vni.entry(f[0].to_string()).or_insert(0u32) += 1;
        let (own_macs, own_net) = match f[0] {
            "100" => (&macs_a, "10.81.128."),
            "200" => (&macs_b, "10.81.129."),
            v => panic!("VXLAN on VNI {v}: {l}"),
        };
        // "outer,inner" for the Ethernet and IPv4 fields.
        let inner = |x: &str| x.rsplit(',').next().unwrap_or("").to_string();
        let src_mac = inner(f[1]);
        let from_appliance = [w1.link_mac.to_string(), w2.link_mac.to_string()].contains(&src_mac);
        assert!(
            from_appliance || own_macs.contains(&src_mac),
            "VNI {} carries a frame from {src_mac}, not one of its network: {l}",
            f[0]
        );
        // ip.src lists the inner source only when the inner frame is IPv4.
        let inner_ip = f[3].split_once(',').map(|(_, i)| i.to_string());
        for sender in [f[2].to_string(), inner_ip.unwrap_or_default()] {
            assert!(
                sender.is_empty() || sender.starts_with(own_net) || sender.starts_with("10.81.0."),
                "VNI {} carries a packet from {sender}: {l}",
                f[0]
            );
        }
    }
    assert!(per_vni.get("100").copied().unwrap_or(0) > 0, "{per_vni:?}");
    assert!(per_vni.get("200").copied().unwrap_or(0) > 0, "{per_vni:?}");
    eprintln!("{test}: VXLAN packets per VNI on the underlay: {per_vni:?}");

    // Each network's counters: traffic on both, nothing unknown.
    let st = overlay_status(&w1);
    assert_eq!(st["datapath"]["unknown_vlan"], json!(0), "{st}");
    for net in st["networks"].as_array().cloned().unwrap_or_default() {
        assert!(net["counters"]["uplink_rx"].as_u64() > Some(0), "{net}");
        assert!(net["counters"]["uplink_tx"].as_u64() > Some(0), "{net}");
    }
}

#[test]
fn two_microvm_wefts_and_a_linux_vtep_share_one_overlay_network() {
    let test = "overlay_microvm";
    let (w1, w2, ul, lx) = two_wefts_and_linux(test, Machine::Microvm, "10.81.126");

    let cap_path = w1.dir.join("underlay.pcap");
    let mut cap = ul.capture(&cap_path).expect("tcpdump on the underlay");
    let (c1, c2, c3) = (w1.ctr(), w2.ctr(), &lx.ctr);
    ping(c1, "10.81.126.12", 3, "weft 1 -> weft 2 (microvm)");
    ping(c2, "10.81.126.11", 3, "weft 2 -> weft 1 (microvm)");
    ping(c1, "10.81.126.13", 3, "weft 1 -> linux (microvm)");
    ping(c3, "10.81.126.12", 3, "linux -> weft 2 (microvm)");
    ping(c3, "10.81.0.1", 2, "linux container -> node 1 (microvm)");
    cap.stop();
    let lines = cap
        .fields(4789, "vxlan && icmp", &["vxlan.vni", "ip.src", "ip.dst"])
        .expect("tshark");
    let from = |outer: &str| {
        lines
            .iter()
            .filter(|l| {
                l.starts_with("100\t") && l.split('\t').nth(1).is_some_and(|s| s.starts_with(outer))
            })
            .count()
    };
    for vtep in [W1, W2, LX] {
        assert!(from(vtep) > 0, "no VXLAN on VNI 100 from {vtep}: {lines:?}");
    }
}
