//! Issue 14 end to end: three hosts, each with `weft agent` booting and supervising
//! its appliance, one grid in a three-member etcd cluster on the underlay. The VMs are
//! booted once and every check reuses them, in this order:
//! - containers registered through each agent; one on host 1 resolves by name and
//!   answers ping from a container on host 3; its removal is seen on host 3; the time
//!   from registration on host 1 to resolution on host 3, 20 times (a figure);
//! - two clients on one agent's API at once, and `weft ctl --socket <api> status`;
//! - etcd loses one member: the grid keeps converging; two: the appliances keep
//!   serving the last state; the members return: the agents resync;
//! - host 1's QEMU is killed: its agent boots it again and restores everything,
//!   including a container registered at runtime before the kill;
//! - host 2's agent and VM are killed: hosts 1 and 3 drop peer 2, its FDB entries and
//!   records within the lease time plus slack (the time is a figure); host 2 returns
//!   with node id 2 and the grid converges again.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_qemu_tests::agent::{fqdn, node_file, AgentHost, Etcd};
use weft_qemu_tests::dns::{dig, dig_until};
use weft_qemu_tests::grid::{weft_ctl, Container, Underlay, VXLAN_MTU};
use weft_qemu_tests::mac_of;

/// The lease time the agents run with (the default).
const TTL: Duration = Duration::from_secs(10);
/// How long anything is given to converge (TCG boots and a loaded machine).
const CONVERGE: Duration = Duration::from_secs(60);

/// The A records host `h` answers for `name`, asked from its container.
fn resolve(h: &AgentHost, name: &str) -> Vec<String> {
    dig(
        &h.topo.ctr,
        &format!("10.81.0.{}", h.n),
        &[&fqdn(name), "A"],
    )
    .map(|r| r.data("A"))
    .unwrap_or_default()
}

fn resolves_to(h: &AgentHost, name: &str, want: &str, timeout: Duration) -> bool {
    dig_until(
        &h.topo.ctr,
        &format!("10.81.0.{}", h.n),
        &[&fqdn(name), "A"],
        timeout,
        |r| r.data("A") == [want.to_string()],
    )
    .is_ok_and(|r| r.data("A") == [want.to_string()])
}

fn gone(h: &AgentHost, name: &str, timeout: Duration) -> bool {
    dig_until(
        &h.topo.ctr,
        &format!("10.81.0.{}", h.n),
        &[&fqdn(name), "A"],
        timeout,
        |r| r.status == "NXDOMAIN",
    )
    .is_ok_and(|r| r.status == "NXDOMAIN")
}

fn ok(h: &AgentHost, cmd: &str, args: Value) -> Value {
    h.call(cmd, Some(args))
        .unwrap_or_else(|e| panic!("{}: {cmd}: {e}", h.test))
}

fn register(h: &AgentHost, name: &str, address: &str, mac: Option<&str>) {
    let mut a = json!({"name": name, "address": address});
    if let Some(m) = mac {
        a["mac"] = json!(m);
    }
    ok(h, "container-add", a);
}

fn synced(h: &AgentHost) -> Value {
    let (st, _) = h.wait_for("agent-status", CONVERGE, |s| {
        s["appliance"]["in_sync"] == true && s["store"]["state"] == "up"
    });
    assert_eq!(st["appliance"]["in_sync"], true, "{}: {st}", h.test);
    st
}

/// The peers' node numbers in host `h`'s appliance.
fn peers(h: &AgentHost) -> Vec<u64> {
    let st = h.call("status", None).unwrap_or(Value::Null);
    st["overlay"]["peers"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["node"].as_u64()).collect())
        .unwrap_or_default()
}

fn fdb_macs(st: &Value) -> Vec<String> {
    st["overlay"]["networks"][0]["fdb"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["mac"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn ping(from: &weft_image::netns::Netns, to: &str) -> Result<String, String> {
    weft_image::netns::Topology::ping(from, to, 2, 30).map_err(|e| format!("{e:#}"))
}

fn median_max(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

#[test]
fn three_hosts_follow_one_grid_through_failures() {
    let test = "agent_grid";
    let mut ul = Underlay::create().expect("underlay");
    let mut etcd = Etcd::start(&mut ul, 3).expect("etcd cluster");
    let store = etcd.store_arg();
    let mut hosts: Vec<AgentHost> = (1..=3u8)
        .map(|n| AgentHost::create(test, n, &mut ul, &node_file(n)).expect("host"))
        .collect();
    // One after the other, so that node ids follow host numbers; the appliances boot
    // in parallel meanwhile.
    for h in &mut hosts {
        h.start_agent(&store, &[]).expect("agent");
        let (st, _) = h.wait_for("agent-status", CONVERGE, |s| s["node"].is_number());
        assert_eq!(st["node"], u64::from(h.n), "{}: {st}", h.test);
    }
    for h in &hosts {
        synced(h);
    }
    let macs: Vec<String> = hosts
        .iter()
        .map(|h| mac_of(&h.topo.ctr, &h.topo.names.ctr_veth).to_string())
        .collect();
    for (h, mac) in hosts.iter().zip(&macs) {
        register(
            h,
            &format!("web-{}", h.n),
            &format!("10.81.{}.2", h.n),
            Some(mac),
        );
    }
    let (h1, h2, h3) = (&hosts[0], &hosts[1], &hosts[2]);

    // Host 1's container, by name and by ping, from host 3.
    assert!(
        resolves_to(h3, "web-1", "10.81.1.2", CONVERGE),
        "host 3 never resolved web-1: {:?}\n{}",
        resolve(h3, "web-1"),
        h3.agent_log()
    );
    ping(&h3.topo.ctr, "10.81.1.2").unwrap_or_else(|e| panic!("host 3 -> web-1: {e}"));
    ping(&h1.topo.ctr, "10.81.2.2").unwrap_or_else(|e| panic!("host 1 -> web-2: {e}"));
    let st3 = h3.call("status", None).unwrap();
    assert_eq!(peers(h3), [1, 2], "{st3}");
    let fdb = fdb_macs(&st3);
    for m in &macs {
        assert!(fdb.contains(m), "host 3's FDB lacks {m}: {fdb:?}");
    }

    // Convergence: registered on host 1 -> resolves on host 3, 20 times; and removal.
    let mut took = Vec::new();
    for i in 0..20 {
        let name = format!("probe-{i}");
        let addr = format!("10.81.1.{}", 100 + i);
        let t = Instant::now();
        register(h1, &name, &addr, None);
        assert!(
            resolves_to(h3, &name, &addr, CONVERGE),
            "{name} never resolved on host 3"
        );
        took.push(t.elapsed());
        ok(h1, "container-remove", json!({ "name": name }));
        assert!(gone(h3, &name, CONVERGE), "{name} still resolves on host 3");
    }
    let (med, max) = median_max(&mut took);
    eprintln!(
        "{test}: FIGURE convergence host 1 registration -> host 3 resolves: median {} ms, max {} ms (n=20)",
        med.as_millis(),
        max.as_millis()
    );

    // Two clients on host 1's API at once, and weft ctl through it meanwhile.
    let mut a = weft_control::client::Client::connect(h1.api_path(), Duration::from_secs(10))
        .expect("first API client");
    let mut b = weft_control::client::Client::connect(h1.api_path(), Duration::from_secs(10))
        .expect("second API client");
    assert!(a.ping().unwrap().pong && b.ping().unwrap().pong);
    let (code, out, err) = weft_ctl(h1.api_path(), &["status"]);
    assert_eq!(code, 0, "weft ctl status through the agent: {out}{err}");
    assert!(out.contains("uplink"), "{out}");
    let (code, out, err) = weft_ctl(h1.api_path(), &["call", "agent-status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"node\": 1"), "{out}");
    assert!(a.status().unwrap().configured && b.status().unwrap().configured);
    drop((a, b));

    // etcd loses a member: the grid keeps converging.
    etcd.members[2].stop();
    register(h1, "during-1", "10.81.1.50", None);
    assert!(
        resolves_to(h3, "during-1", "10.81.1.50", CONVERGE),
        "no convergence with one etcd member down"
    );
    // Two members down (no quorum): the appliances keep serving the last state and
    // writes are refused with a clear error.
    etcd.members[1].stop();
    for h in [h1, h3] {
        let (st, _) = h.wait_for("agent-status", CONVERGE, |s| s["store"]["state"] == "down");
        assert_eq!(st["store"]["state"], "down", "{}: {st}", h.test);
    }
    assert!(resolves_to(
        h3,
        "web-1",
        "10.81.1.2",
        Duration::from_secs(5)
    ));
    assert!(resolves_to(
        h3,
        "during-1",
        "10.81.1.50",
        Duration::from_secs(5)
    ));
    ping(&h3.topo.ctr, "10.81.1.2").unwrap_or_else(|e| panic!("no quorum, host 3 -> web-1: {e}"));
    let e = h1
        .call(
            "container-add",
            Some(json!({"name": "nope", "address": "10.81.1.51"})),
        )
        .unwrap_err();
    assert!(e.contains("not_ready"), "{e}");
    // The members return: the agents resync, and a change flows again.
    etcd.members[1].start().expect("etcd member 1");
    etcd.members[2].start().expect("etcd member 2");
    etcd.wait_healthy(CONVERGE).expect("etcd healthy again");
    for h in &hosts {
        let (st, _) = h.wait_for("agent-status", CONVERGE, |s| s["store"]["state"] == "up");
        assert_eq!(st["store"]["state"], "up", "{}: {st}", h.test);
        assert!(st["store"]["losses"].as_u64().unwrap_or(0) >= 1, "{st}");
    }
    register(h2, "after-1", "10.81.2.50", None);
    assert!(resolves_to(h1, "after-1", "10.81.2.50", CONVERGE));
    assert!(resolves_to(h3, "after-1", "10.81.2.50", CONVERGE));

    // Host 1's appliance dies; its agent boots it again and restores everything,
    // including a container registered at runtime (with an allocated address).
    let alloc = ok(h1, "address-allocate", json!({"container": "late-1"}));
    let late_addr = alloc["address"].as_str().unwrap().to_string();
    let late = Container::attach_to(
        &h1.topo,
        &format!("{}-l", &h1.topo.names.hv_ns[..9]),
        None,
        &format!("{late_addr}/16"),
        VXLAN_MTU,
    )
    .expect("late container");
    late.ns
        .ip(&["route", "add", "default", "via", "10.81.0.1"])
        .expect("route");
    register(h1, "late-1", &late_addr, Some(&late.mac()));
    assert!(resolves_to(h3, "late-1", &late_addr, CONVERGE));
    let greetings = synced(h1)["appliance"]["greetings"].as_u64().unwrap();
    h1.kill_qemu().expect("killing host 1's QEMU");
    let (st, _) = h1.wait_for("agent-status", Duration::from_secs(180), |s| {
        s["appliance"]["greetings"].as_u64().unwrap_or(0) > greetings
            && s["appliance"]["in_sync"] == true
    });
    assert_eq!(
        st["appliance"]["in_sync"], true,
        "host 1 never resynced: {st}"
    );
    assert!(st["appliance"]["boots"].as_u64().unwrap() >= 2, "{st}");
    let cfg = h1.call("config", None).unwrap();
    let names: Vec<&str> = cfg["containers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    for want in ["web-1", "web-2", "web-3", "late-1", "during-1", "after-1"] {
        assert!(
            names.contains(&want),
            "{want} missing after the restart: {names:?}"
        );
    }
    assert_eq!(peers(h1), [2, 3]);
    assert!(resolves_to(h1, "web-3", "10.81.3.2", CONVERGE));
    ping(&h3.topo.ctr, &late_addr)
        .unwrap_or_else(|e| panic!("host 3 -> late-1 after the restart: {e}"));
    ping(&late.ns, "10.81.2.2")
        .unwrap_or_else(|e| panic!("late-1 -> web-2 after the restart: {e}"));

    // Host 2 dies (agent and VM at once): hosts 1 and 3 drop it within TTL + slack.
    let mac2 = macs[1].clone();
    let lost_at = Instant::now();
    hosts[1].kill();
    let (h1, h2, h3) = (&hosts[0], &hosts[1], &hosts[2]);
    let slack = Duration::from_secs(15);
    let mut removal = Vec::new();
    for h in [h1, h3] {
        let (st, _) = h.wait_for("status", TTL + slack, |st| {
            let no_peer = st["overlay"]["peers"]
                .as_array()
                .is_some_and(|a| a.iter().all(|p| p["node"] != 2));
            no_peer && !fdb_macs(st).contains(&mac2)
        });
        removal.push(lost_at.elapsed());
        assert!(
            st["overlay"]["peers"]
                .as_array()
                .is_some_and(|a| a.iter().all(|p| p["node"] != 2)),
            "{}: peer 2 still there after {:?}: {st}",
            h.test,
            TTL + slack
        );
        assert!(
            !fdb_macs(&st).contains(&mac2),
            "{}: FDB of host 2 left",
            h.test
        );
        assert!(
            gone(h, "web-2", Duration::from_secs(5)),
            "{}: web-2 resolves",
            h.test
        );
        assert!(gone(h, "after-1", Duration::from_secs(5)));
    }
    eprintln!(
        "{test}: FIGURE host loss (SIGKILL of agent and VM) -> peer, FDB and records gone: host 1 after {} ms, host 3 after {} ms (lease {} s)",
        removal[0].as_millis(),
        removal[1].as_millis(),
        TTL.as_secs()
    );
    let _ = h2;

    // Host 2 returns: node id 2 again, and the grid converges.
    hosts[1].start_agent(&store, &[]).expect("agent 2 again");
    let (h1, h2, h3) = (&hosts[0], &hosts[1], &hosts[2]);
    let (st, _) = h2.wait_for("agent-status", Duration::from_secs(180), |s| {
        s["node"].is_number() && s["appliance"]["in_sync"] == true
    });
    assert_eq!(st["node"], 2, "{st}");
    for h in [h1, h3] {
        assert!(resolves_to(h, "web-2", "10.81.2.2", CONVERGE), "{}", h.test);
    }
    assert!(resolves_to(h2, "late-1", &late_addr, CONVERGE));
    ping(&h1.topo.ctr, "10.81.2.2").unwrap_or_else(|e| panic!("host 1 -> web-2 after return: {e}"));
    ping(&h2.topo.ctr, "10.81.3.2").unwrap_or_else(|e| panic!("host 2 -> web-3 after return: {e}"));
    drop(late);
    drop(hosts);
    drop(etcd);
}
