//! Issue 15 end to end: containers attached by a real CNI runtime library (libcni, as
//! containerd, CRI-O and podman's CNI backend use it) through `weft-cni`, installed by
//! `weft install-cni`, on two hosts (two agents booting their appliances, one etcd).
//! The VMs are booted once and every check reuses them, in this order:
//! - a container ADDed on each host; each pings the other by name across the overlay
//!   (the name resolved through the DNS the result handed out); CHECK passes;
//! - a port mapping from the runtime serves from outside (a host on the underlay);
//! - DEL removes everything: no veth, no record (the name no longer resolves on the
//!   other host), no published port;
//! - 50 containers ADDed at once on one host: 50 distinct addresses, all reachable
//!   from the other host; all DELeted at once, nothing left;
//! - figures: ADD latency (median and p99 of 100, the plugin run as a runtime runs
//!   it) and the time until a new container resolves by name on the other host.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_image::netns::{Netns, Topology};
use weft_qemu_tests::agent::{fqdn, node_file, AgentHost, Etcd};
use weft_qemu_tests::cni::{attach, outcome, plugin_dir, Attached, Network};
use weft_qemu_tests::dns::dig_until;
use weft_qemu_tests::grid::{unique_prefix, Underlay};
use weft_qemu_tests::socat::Socat;

const CONVERGE: Duration = Duration::from_secs(60);

/// Whether `name` resolves to `want` (or, with `None`, is NXDOMAIN) on host `h`.
fn resolves(h: &AgentHost, name: &str, want: Option<&str>, timeout: Duration) -> bool {
    let ok = |r: &weft_qemu_tests::dns::DigReply| match want {
        Some(a) => r.data("A") == [a.to_string()],
        None => r.status == "NXDOMAIN",
    };
    dig_until(
        &h.topo.ctr,
        &format!("10.81.0.{}", h.n),
        &[&fqdn(name), "A"],
        timeout,
        ok,
    )
    .is_ok_and(|r| ok(&r))
}

/// `ping` by name inside a container (its resolv.conf is the result's DNS).
fn ping_name(from: &Attached, name: &str) -> Result<String, String> {
    let out = from
        .ns
        .command("ping")
        .args(["-c", "2", "-i", "0.3", "-w", "30", name])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn ping(from: &Netns, to: &str) -> Result<String, String> {
    Topology::ping(from, to, 1, 30).map_err(|e| format!("{e:#}"))
}

/// The weft host ends in the host's hypervisor namespace.
fn host_ends(h: &AgentHost) -> Vec<String> {
    let out = h
        .topo
        .hv
        .command("ip")
        .args(["-j", "link", "show"])
        .output()
        .expect("ip link");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("wf"))
        .map(str::to_string)
        .collect()
}

/// The names of the containers in host `h`'s appliance.
fn appliance_containers(h: &AgentHost) -> Vec<String> {
    let cfg = h.call("config", None).unwrap_or(Value::Null);
    cfg["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

fn appliance_ports(h: &AgentHost) -> Vec<u64> {
    let cfg = h.call("config", None).unwrap_or(Value::Null);
    cfg["publish"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["host_port"].as_u64())
        .collect()
}

fn wait(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `socat` as a client in `ns`: what the server at `target` sends.
fn fetch(ns: &Netns, target: &str) -> String {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let out = ns
            .command("socat")
            // -t 5: after stdin's EOF socat waits only 0.5 s for the answer by
            // default, which an emulated (TCG) path under load can exceed.
            .args(["-t", "5", "-T", "5", "-", target])
            .stdin(Stdio::null())
            .output()
            .expect("socat");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !text.is_empty() || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// DEL through libcni.
fn del(net: &Network, c: &Attached) {
    let out = net
        .driver("del", &c.id, c.ns.name(), "", "")
        .output()
        .expect("driver");
    outcome(&out).unwrap_or_else(|e| panic!("DEL {}: {e:#}", c.name));
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// The plugin run exactly as a runtime runs it (ADD), timed.
fn timed_add(
    plugin: &std::path::Path,
    hv: &Netns,
    conf: &Value,
    id: &str,
    netns: &str,
    name: &str,
) -> (Duration, Value) {
    let t = Instant::now();
    let mut child = hv
        .command(plugin.to_str().unwrap_or("weft"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", format!("K8S_POD_NAME={name}"))
        .env("CNI_PATH", plugin_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("plugin");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(conf.to_string().as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("plugin");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "ADD {name}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (took, serde_json::from_slice(&out.stdout).expect("result"))
}

fn run_plugin(
    plugin: &std::path::Path,
    hv: &Netns,
    command: &str,
    conf: &Value,
    id: &str,
    netns: &str,
) {
    let mut child = hv
        .command(plugin.to_str().unwrap_or("weft"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("plugin");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(conf.to_string().as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("plugin");
    assert!(
        out.status.success(),
        "{command} {id}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_runtime_attaches_containers_on_two_hosts_through_libcni() {
    let test = "cni";
    let mut ul = Underlay::create().expect("underlay");
    let etcd = Etcd::start(&mut ul, 1).expect("etcd");
    let store = etcd.store_arg();
    let mut hosts: Vec<AgentHost> = (1..=2u8)
        .map(|n| AgentHost::create(test, n, &mut ul, &node_file(n)).expect("host"))
        .collect();
    for h in &mut hosts {
        h.start_agent(&store, &[]).expect("agent");
        let (st, _) = h.wait_for("agent-status", CONVERGE, |s| s["node"].is_number());
        assert_eq!(st["node"], u64::from(h.n), "{}: {st}", h.test);
    }
    for h in &hosts {
        let (st, _) = h.wait_for("agent-status", Duration::from_secs(180), |s| {
            s["appliance"]["in_sync"] == true && s["store"]["state"] == "up"
        });
        assert_eq!(st["appliance"]["in_sync"], true, "{}: {st}", h.test);
    }
    let (h1, h2) = (&hosts[0], &hosts[1]);
    // Each topology's own container namespace sits at 10.81.<n>.2 without a runtime:
    // registered by hand, so the agent never hands its address to a CNI container.
    for h in &hosts {
        let args =
            json!({"name": format!("hostctr-{}", h.n), "address": format!("10.81.{}.2", h.n)});
        h.call("container-add", Some(args))
            .unwrap_or_else(|e| panic!("{}: registering its container namespace: {e}", h.test));
    }
    let p = unique_prefix();
    let nets: Vec<Network> = hosts
        .iter()
        .map(|h| {
            Network::create(
                &h.dir.join("cni"),
                "weftgrid",
                &h.api,
                &h.topo.names.link_bridge,
                &h.topo.hv,
            )
            .expect("conflist")
        })
        .collect();

    // One container on each host; they ping each other by name across the overlay.
    let c1 = attach(
        &nets[0],
        &format!("{p}-c1"),
        &format!("{p}c1"),
        "cni-one",
        "",
    )
    .expect("ADD on host 1");
    let c2 = attach(
        &nets[1],
        &format!("{p}-c2"),
        &format!("{p}c2"),
        "cni-two",
        "",
    )
    .expect("ADD on host 2");
    assert_eq!(
        c1.result["dns"]["nameservers"],
        json!(["10.81.0.1"]),
        "{}",
        c1.result
    );
    assert_eq!(
        c2.result["dns"]["search"],
        json!(["testgrid.kontena.local"])
    );
    assert!(c1.result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["mac"].is_string()));
    assert!(
        resolves(h1, "cni-two", Some(&c2.address()), CONVERGE),
        "host 1 never resolved cni-two"
    );
    assert!(
        resolves(h2, "cni-one", Some(&c1.address()), CONVERGE),
        "host 2 never resolved cni-one"
    );
    ping(&c1.ns, &c2.address()).unwrap_or_else(|e| panic!("cni-one -> cni-two by IP: {e}"));
    ping_name(&c1, "cni-two").unwrap_or_else(|e| panic!("cni-one -> cni-two by name: {e}"));
    ping_name(&c2, "cni-one").unwrap_or_else(|e| panic!("cni-two -> cni-one by name: {e}"));
    let check = |c: &Attached| {
        let out = nets[0]
            .driver("check", &c.id, c.ns.name(), "", "")
            .output()
            .expect("driver");
        (
            outcome(&out),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (r, _) = check(&c1);
    r.unwrap_or_else(|e| panic!("CHECK cni-one: {e:#}"));
    // CHECK fails, with the spec's error object through libcni, when the container's
    // address is gone; and passes again once it is back.
    let cidr = c1.result["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    c1.ns
        .ip(&["addr", "del", &cidr, "dev", "eth0"])
        .expect("addr del");
    let (r, stdout) = check(&c1);
    assert!(r.is_err(), "CHECK passed without the address");
    let err: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    assert_eq!(err["code"], 103, "{stdout}");
    assert!(
        err["msg"]
            .as_str()
            .is_some_and(|m| m.contains(&c1.address())),
        "{stdout}"
    );
    c1.ns
        .ip(&["addr", "add", &cidr, "dev", "eth0"])
        .expect("addr add");
    c1.ns
        .ip(&["route", "add", "default", "via", "10.81.0.1"])
        .expect("route");
    check(&c1)
        .0
        .unwrap_or_else(|e| panic!("CHECK cni-one again: {e:#}"));

    // A bad config: the spec's error object through libcni, nothing made.
    let bad = Network::create(
        &h1.dir.join("cni-bad"),
        "weftbad",
        &h1.api,
        "no-such-br",
        &h1.topo.hv,
    )
    .expect("conflist");
    let bad_ns = Netns::create(&format!("{p}-bad")).expect("netns");
    let out = bad
        .driver("add", &format!("{p}bad"), bad_ns.name(), "", "")
        .output()
        .expect("driver");
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(err["code"], 102, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        err["msg"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-br")),
        "{err}"
    );
    assert_eq!(
        host_ends(h1).len(),
        1,
        "the failed ADD left a veth: {:?}",
        host_ends(h1)
    );
    drop(bad_ns);

    // A port mapping from the runtime serves from outside: a machine on host 1's uplink
    // segment (as in publish.rs) reaches host 1's uplink address.
    let c3 = attach(
        &nets[0],
        &format!("{p}-c3"),
        &format!("{p}c3"),
        "cni-web",
        "8080:80/tcp",
    )
    .expect("ADD with a port");
    let _server = Socat::start(
        &c3.ns,
        &[
            "TCP-LISTEN:80,fork,reuseaddr",
            "SYSTEM:echo hello-from-cni-web",
        ],
    );
    wait("host 1 publishes 8080", CONVERGE, || {
        appliance_ports(h1).contains(&8080)
    });
    let got = fetch(&h1.topo.host, "TCP:192.0.2.11:8080");
    if got.is_empty() {
        let sh = |ns: &Netns, cmd: &str| {
            let o = ns.command("sh").args(["-c", cmd]).output().expect("sh");
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        };
        eprintln!(
            "c3: {}\n{}",
            c3.result,
            sh(&c3.ns, "ip -s link; ip addr; ip route; ss -ltn; ip neigh")
        );
        eprintln!("host: {}", sh(&h1.topo.host, "ip addr; ip route; ip neigh"));
        eprintln!("status: {}", h1.call("status", None).unwrap_or(Value::Null));
        eprintln!(
            "config publish: {}",
            h1.call("config", None).unwrap_or(Value::Null)["publish"]
        );
    }
    assert_eq!(got, "hello-from-cni-web", "the published port from outside");

    // DEL removes everything: veths, records (gone from the other host too), ports.
    for (net, c) in [(&nets[0], &c1), (&nets[1], &c2), (&nets[0], &c3)] {
        del(net, c);
    }
    assert!(
        host_ends(h1).is_empty(),
        "host 1 veths left: {:?}",
        host_ends(h1)
    );
    assert!(
        host_ends(h2).is_empty(),
        "host 2 veths left: {:?}",
        host_ends(h2)
    );
    assert!(
        resolves(h2, "cni-one", None, CONVERGE),
        "cni-one still resolves on host 2"
    );
    assert!(
        resolves(h1, "cni-two", None, CONVERGE),
        "cni-two still resolves on host 1"
    );
    wait("host 1 unpublishes 8080", CONVERGE, || {
        !appliance_ports(h1).contains(&8080)
    });
    wait("host 1's appliance forgets them", CONVERGE, || {
        appliance_containers(h1)
            .iter()
            .all(|n| !n.starts_with("cni-"))
    });
    drop((c1, c2, c3));

    // 50 containers at once on host 1: 50 distinct addresses, all reachable from host 2.
    let many: Vec<Attached> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (net, p) = (&nets[0], &p);
                s.spawn(move || {
                    attach(
                        net,
                        &format!("{p}-m{i}"),
                        &format!("{p}m{i}"),
                        &format!("many-{i}"),
                        "",
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("concurrent ADD"))
            .collect()
    });
    let addrs: BTreeSet<String> = many.iter().map(Attached::address).collect();
    assert_eq!(addrs.len(), 50, "{addrs:?}");
    for c in &many {
        ping(&h2.topo.ctr, &c.address()).unwrap_or_else(|e| panic!("host 2 -> {}: {e}", c.name));
    }
    std::thread::scope(|s| {
        for c in &many {
            let net = &nets[0];
            s.spawn(move || del(net, c));
        }
    });
    assert!(host_ends(h1).is_empty());
    wait("host 1's appliance forgets the 50", CONVERGE, || {
        appliance_containers(h1)
            .iter()
            .all(|n| !n.starts_with("many-"))
    });
    drop(many);

    // Figures: ADD latency of the plugin as a runtime runs it (100), and the time from
    // ADD on host 1 until the name resolves on host 2 (20).
    let plugin = plugin_dir().join("weft");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "weftgrid", "type": "weft",
        "agent": h1.api, "bridge": h1.topo.names.link_bridge,
    });
    let mut took = Vec::new();
    for i in 0..100 {
        let ns = Netns::create(&format!("{p}-l{i}")).expect("netns");
        let id = format!("{p}l{i}");
        let (t, _) = timed_add(
            &plugin,
            &h1.topo.hv,
            &conf,
            &id,
            ns.name(),
            &format!("lat-{i}"),
        );
        took.push(t);
        run_plugin(&plugin, &h1.topo.hv, "DEL", &conf, &id, ns.name());
    }
    took.sort();
    let mut resolve = Vec::new();
    for i in 0..20 {
        let ns = Netns::create(&format!("{p}-r{i}")).expect("netns");
        let id = format!("{p}r{i}");
        let name = format!("res-{i}");
        let (t, r) = timed_add(&plugin, &h1.topo.hv, &conf, &id, ns.name(), &name);
        let addr = r["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let start = Instant::now() - t;
        assert!(
            resolves(h2, &name, Some(&addr), CONVERGE),
            "{name} never resolved on host 2"
        );
        resolve.push(start.elapsed());
        run_plugin(&plugin, &h1.topo.hv, "DEL", &conf, &id, ns.name());
    }
    resolve.sort();
    eprintln!(
        "{test}: FIGURE CNI ADD latency (plugin exec to result, agent + etcd + VM): median {} ms, p99 {} ms (n=100)",
        percentile(&took, 50).as_millis(),
        percentile(&took, 99).as_millis()
    );
    eprintln!(
        "{test}: FIGURE CNI ADD on host 1 -> name resolves on host 2: median {} ms, max {} ms (n=20)",
        percentile(&resolve, 50).as_millis(),
        resolve[resolve.len() - 1].as_millis()
    );
    assert!(host_ends(h1).is_empty());
    drop(nets);
    drop(hosts);
    drop(etcd);
}
