//! Issue 7 part B end to end: a service whose backends are containers on one overlay
//! network across two weft hosts. (a) A container on host A connects to the service VIP
//! 1200 times: the connections spread over the backends on both hosts by their weights,
//! the remote ones crossing the underlay as VXLAN. (b) The routing mesh: a client in A's
//! host namespace connects to a port A publishes for a service whose backends all run
//! on B; it is answered, and the backend sees A's node address (the source translation
//! that brings the reply back through A). (c) A port published to one container sees
//! the client's own address when the container is on A, and A's node address when it
//! is behind B. Backend b3 sits on a second network (VNI 300) on VLAN 300 of B's link.
//!
//! Both VMs boot once (in parallel) and serve every check.

use std::collections::BTreeMap;
use std::process::Stdio;

use serde_json::{json, Value};
use weft_image::netns::Netns;
use weft_image::qemu::Machine;
use weft_qemu_tests::grid::{set_ctr_mtu, two_on_underlay, Container, VXLAN_MTU};
use weft_qemu_tests::socat::Socat;
use weft_qemu_tests::TestVm;

const W1: &str = "192.0.2.11";
const W2: &str = "192.0.2.12";
/// A's node address: what every backend sees as the client of service traffic.
const NODE1: &str = "10.81.0.1";
/// A's host namespace on its uplink segment: the client of A's published ports.
const HOST1: &str = "192.0.2.1";
const VIP_WEB: &str = "10.81.255.1";
const VIP_MESH: &str = "10.81.255.2";
/// b3, the backend on B's VLAN 300 (network n2).
const B3: &str = "10.81.128.23";
/// Connections of the distribution check: with weights 2:1:1 the smallest share is
/// 300, and 10 % of it is about 2.5 binomial standard deviations.
const CONNECTIONS: u16 = 1200;

/// The document for node `n`, with `extra` members (services, publish) merged in.
fn document(n: u8, extra: Value) -> Value {
    let other = 3 - n;
    let mut doc = json!({
        "uplink": {"address": format!("192.0.2.1{n}/24"), "gateway": format!("192.0.2.{n}")},
        "link": {"address": format!("10.81.0.{n}/16")},
        "grid": {"node": n},
        "networks": [{"name": "grid", "vni": 100}, {"name": "n2", "vni": 300, "vlan": 300}],
        "peers": [{"node": other, "address": format!("192.0.2.1{other}"), "networks": ["grid", "n2"]}],
    });
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            doc.insert(k.clone(), v.clone());
        }
    }
    doc
}

/// A backend's server: answers its name and the client address it sees.
fn serve(ns: &Netns, name: &str) -> Socat {
    Socat::start(
        ns,
        &[
            "TCP-LISTEN:8080,fork,reuseaddr,backlog=256",
            &format!("SYSTEM:echo {name} $SOCAT_PEERADDR"),
        ],
    )
}

/// Connects from `first..first+count` (fixed source ports, 16 at a time) to
/// `addr:port` and prints `<source port> <answer>` per connection; a connection that
/// fails is retried with the same source port, and after 5 tries prints `ERR <why>`.
const CLIENT: &str = r#"
import socket, sys, time
from concurrent.futures import ThreadPoolExecutor
addr, port, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def one(sport):
    why = ''
    for attempt in range(5):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(20)
        try:
            s.bind(('', sport))
            s.connect((addr, port))
            data = b''
            while True:
                d = s.recv(256)
                if not d:
                    break
                data += d
            if data.strip():
                return data.decode().strip()
            why = 'empty answer'
        except Exception as e:
            why = repr(e)
        finally:
            s.close()
        time.sleep(0.5)
    return 'ERR ' + why
ports = range(first, first + count)
with ThreadPoolExecutor(16) as pool:
    for sport, answer in zip(ports, pool.map(one, ports)):
        print(sport, answer, flush=True)
"#;

/// Runs [`CLIENT`] in `ns`; the answers, one `(name, seen client address)` per port.
fn connect_many(
    ns: &Netns,
    addr: &str,
    port: u16,
    first: u16,
    count: u16,
) -> Vec<(String, String)> {
    let out = ns
        .command("python3")
        .args([
            "-c",
            CLIENT,
            addr,
            &port.to_string(),
            &first.to_string(),
            &count.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("python3 client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client to {addr}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace().skip(1);
            let name = f.next().unwrap_or_default().to_string();
            let seen = f.collect::<Vec<_>>().join(" ");
            (name, seen)
        })
        .collect();
    let failed: Vec<&str> = text.lines().filter(|l| l.contains(" ERR ")).collect();
    assert!(
        failed.is_empty(),
        "{} of {count} connections to {addr}:{port} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(answers.len(), usize::from(count), "{text}");
    answers
}

fn nat_router(vm: &TestVm) -> Value {
    let mut c = vm.client();
    let r = c.call("status", None).expect("status");
    let v = r.outcome.expect("status result");
    v["nat"]["router"].clone()
}

#[test]
fn the_routing_mesh_spreads_a_vip_over_both_hosts_and_publishes_it_on_a_host_without_backends() {
    let test = "mesh";
    let (w1, w2, ul) = two_on_underlay(
        test,
        Machine::Q35,
        ["10.81.128.11/16", "10.81.128.12/16"],
        None,
    );

    // Backends: b1 on A and b2 on B on the untagged network "grid"; b3 on B on network
    // n2, VLAN 300 on B's link.
    let p = &ul.prefix;
    let b1 =
        Container::attach(&w1, &format!("{p}b1"), None, "10.81.128.21/16", VXLAN_MTU).expect("b1");
    let b2 =
        Container::attach(&w2, &format!("{p}b2"), None, "10.81.128.22/16", VXLAN_MTU).expect("b2");
    let b3 = Container::attach(
        &w2,
        &format!("{p}b3"),
        Some(300),
        "10.81.128.23/16",
        VXLAN_MTU,
    )
    .expect("b3");
    // Each container's gateway is its own node's address.
    for (c, gw) in [(&b1, NODE1), (&b2, "10.81.0.2"), (&b3, "10.81.0.2")] {
        c.ns.ip(&["route", "add", "default", "via", gw]).unwrap();
    }
    set_ctr_mtu(&[&w1], VXLAN_MTU);
    let _servers = [
        serve(&b1.ns, "b1"),
        serve(&b2.ns, "b2"),
        serve(&b3.ns, "b3"),
    ];

    let backend =
        |addr: &str, weight: u32| json!({"address": addr, "port": 8080, "weight": weight});
    let services = json!([
        {"name": "web", "vip": VIP_WEB, "proto": "tcp", "port": 80,
         "backends": [backend("10.81.128.21", 2), backend("10.81.128.22", 1), backend("10.81.128.23", 1)]},
        {"name": "mesh", "vip": VIP_MESH, "proto": "tcp", "port": 80,
         "backends": [backend("10.81.128.22", 1), backend("10.81.128.23", 1)]},
    ]);
    w1.apply_json(&document(
        1,
        json!({
            "services": services,
            "publish": [
                {"proto": "tcp", "host_port": 8080, "container_address": VIP_MESH, "container_port": 80},
                {"proto": "tcp", "host_port": 8081, "container_address": "10.81.128.21", "container_port": 8080},
                {"proto": "tcp", "host_port": 8082, "container_address": "10.81.128.22", "container_port": 8080},
            ],
        }),
    ));
    w2.apply_json(&document(2, json!({})));

    let cap_path = w1.dir.join("underlay.pcap");
    let mut cap = ul.capture(&cap_path).expect("tcpdump on the underlay");

    // (a) 1200 connections from A's container to the VIP, weights 2:1:1.
    let answers = connect_many(w1.ctr(), VIP_WEB, 80, 20_000, CONNECTIONS);
    let mut per: BTreeMap<String, u32> = BTreeMap::new();
    for (name, seen) in &answers {
        *per.entry(name.clone()).or_default() += 1;
        assert_eq!(seen, NODE1, "{name} saw the client as {seen}");
    }
    let total = f64::from(CONNECTIONS);
    for (name, weight) in [("b1", 2.0), ("b2", 1.0), ("b3", 1.0)] {
        let want = total * weight / 4.0;
        let got = f64::from(per.get(name).copied().unwrap_or(0));
        assert!(
            (got - want).abs() <= want * 0.10,
            "{name}: {got} connections, want {want} within 10 %: {per:?}"
        );
    }
    eprintln!("mesh: VIP spread over b1 (A), b2, b3 (B) with weights 2:1:1: {per:?}");

    // (b) The routing mesh: A's host namespace to A's published port; every backend of
    // the service is on B (weights 1:1), each sees A's node address, and the spread is
    // as through the VIP: within 10 % of equal shares.
    let answers = connect_many(w1.host(), W1, 8080, 24_000, CONNECTIONS);
    let mut mesh: BTreeMap<String, u32> = BTreeMap::new();
    for (name, seen) in &answers {
        assert!(name == "b2" || name == "b3", "answered by {name}");
        assert_eq!(seen, NODE1, "{name} saw the client as {seen}");
        *mesh.entry(name.clone()).or_default() += 1;
    }
    eprintln!("mesh: published port on A answered from B by {mesh:?}");
    for name in ["b2", "b3"] {
        let want = total / 2.0;
        let got = f64::from(mesh.get(name).copied().unwrap_or(0));
        assert!(
            (got - want).abs() <= want * 0.10,
            "{name}: {got} connections through the mesh, want {want} within 10 %: {mesh:?}"
        );
    }

    // (c) A port published to one container: on A it sees the client's own address;
    // behind B it sees A's node address (its reply must come back through A).
    let answers = connect_many(w1.host(), W1, 8081, 31_000, 5);
    assert!(
        answers.iter().all(|(n, seen)| n == "b1" && seen == HOST1),
        "local container: {answers:?}"
    );
    let answers = connect_many(w1.host(), W1, 8082, 32_000, 5);
    assert!(
        answers.iter().all(|(n, seen)| n == "b2" && seen == NODE1),
        "container behind B: {answers:?}"
    );

    let router = nat_router(&w1);
    assert!(router["routed_into_overlay"].as_u64() > Some(0), "{router}");
    assert!(router["from_remote"].as_u64() > Some(0), "{router}");

    cap.stop();
    // The mesh traffic crossed the underlay as VXLAN on VNI 100 between A and B, with
    // A's node address and the backends' inside.
    let lines = cap
        .fields(
            4789,
            "vxlan && tcp.port == 8080",
            &["vxlan.vni", "ip.src", "ip.dst"],
        )
        .expect("tshark");
    let mut pairs = std::collections::BTreeSet::new();
    for l in &lines {
        let f: Vec<&str> = l.split('\t').collect();
        let src: Vec<&str> = f[1].split(',').collect();
        let dst: Vec<&str> = f[2].split(',').collect();
        assert_eq!((src.len(), dst.len()), (2, 2), "{l}");
        // b3 lives on network n2 (VNI 300), everything else on grid (VNI 100).
        let vni = if src[1] == B3 || dst[1] == B3 {
            "300"
        } else {
            "100"
        };
        assert_eq!(f[0], vni, "VXLAN with another VNI: {l}");
        pairs.insert((src[0], dst[0], src[1], dst[1]));
    }
    for backend in ["10.81.128.22", B3] {
        assert!(
            pairs.contains(&(W1, W2, NODE1, backend)),
            "no VXLAN from A to B carrying {NODE1} -> {backend}: {pairs:?}"
        );
        assert!(
            pairs.contains(&(W2, W1, backend, NODE1)),
            "no VXLAN from B to A carrying {backend} -> {NODE1}: {pairs:?}"
        );
    }
    // b1 is on A's link: its traffic never crosses the underlay.
    assert!(
        !pairs
            .iter()
            .any(|p| p.2 == "10.81.128.21" || p.3 == "10.81.128.21"),
        "{pairs:?}"
    );
    drop((b1, b2, b3));
}
