//! The plugin through the CNI spec exactly: the `weft-cni` binary run with
//! `CNI_COMMAND`/`CNI_CONTAINERID`/`CNI_NETNS`/`CNI_IFNAME`/`CNI_ARGS`/`CNI_PATH` and
//! the config on stdin, inside a "host" namespace that holds the link bridge, against
//! `weft agent` in process (file store) in front of the real appliance logic
//! (`SimAppliance`). Every command and error case of the issue, and that a failed ADD
//! and a DEL leave nothing behind. Needs root (namespaces) and iproute2.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_agent::{AgentOptions, AgentThread};
use weft_control::client::Client;
use weft_control::sim::SimAppliance;
use weft_image::netns::Netns;

const T: Duration = Duration::from_secs(10);
const BRIDGE: &str = "br-link";

/// A short unique prefix for this process's namespaces.
fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("wc{:x}{n}{tag}", std::process::id() & 0xffff)
}

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node_file(subnet_len: u8) -> String {
    format!(
        r#"
[uplink]
address = "192.0.2.11/24"
gateway = "192.0.2.1"

[link]
address = "10.81.0.1/{subnet_len}"

[grid]
subnet = "10.81.0.0/{subnet_len}"
secret = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

[[networks]]
name = "grid"
vni = 100

[[networks]]
name = "tagged"
vni = 200
vlan = 200
mode = "sleeve"

[dns]
grid = "testgrid"
"#
    )
}

/// The agent in process with its appliance, and a host namespace with the link bridge.
/// Field order is drop order: the agent before the appliance and the namespace.
struct Fixture {
    agent: AgentThread,
    api: PathBuf,
    _sim: SimAppliance,
    host: Netns,
    dir: Tmp,
}

impl Fixture {
    fn start(subnet_len: u8) -> Fixture {
        assert!(
            nix_is_root(),
            "the CNI spec tests need root (network namespaces)"
        );
        let dir = std::env::temp_dir().join(unique("cni"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("app")).unwrap();
        let dir = Tmp(dir);
        let sim = SimAppliance::start(&dir.0.join("app")).unwrap();
        let config = dir.0.join("node.toml");
        std::fs::write(&config, node_file(subnet_len)).unwrap();
        let api = dir.0.join("agent.sock");
        let mut opts = AgentOptions::local(
            config,
            sim.path().to_path_buf(),
            api.clone(),
            dir.0.join("grid.json"),
            "host-1",
        );
        opts.ttl = Duration::from_secs(10);
        let agent = AgentThread::spawn(opts);
        let host = Netns::create(&unique("h")).unwrap();
        host.ip(&["link", "add", BRIDGE, "type", "bridge"]).unwrap();
        host.ip(&["link", "set", BRIDGE, "up"]).unwrap();
        let f = Fixture {
            agent,
            api,
            _sim: sim,
            host,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = match f.call("network-info", json!({})) {
                Ok(_) => break,
                Err(e) => e,
            };
            if f.agent.is_finished() {
                panic!("the agent stopped: {:?}", f.agent.stop());
            }
            assert!(Instant::now() < deadline, "the agent never joined: {last}");
            std::thread::sleep(Duration::from_millis(50));
        }
        f
    }

    fn call(&self, cmd: &str, args: Value) -> Result<Value, String> {
        let mut c = Client::connect(&self.api, T).map_err(|e| e.to_string())?;
        let r = c.call(cmd, Some(args)).map_err(|e| e.to_string())?;
        r.outcome.map_err(|e| weft_control::client::remote_line(&e))
    }

    /// The network config of the tests: this fixture's agent and bridge.
    fn conf(&self, extra: Value) -> Value {
        let mut v = json!({
            "cniVersion": "1.0.0",
            "name": "weftnet",
            "type": "weft",
            "agent": self.api,
            "bridge": BRIDGE,
        });
        if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
            m.extend(e);
        }
        v
    }

    /// Whether the link `name` exists in the host namespace.
    fn host_has(&self, name: &str) -> bool {
        self.host.ip(&["link", "show", "dev", name]).is_ok()
    }

    /// Every weft host end on the bridge's namespace.
    fn host_ends(&self) -> Vec<String> {
        let out = self
            .host
            .command("ip")
            .args(["-j", "link", "show"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("wf"))
            .map(str::to_string)
            .collect()
    }

    /// The grid's records (the store, through the agent).
    fn held(&self, owner: &str) -> Value {
        self.call("owner-show", json!({ "owner": owner })).unwrap()
    }

    fn addresses_allocated(&self) -> usize {
        let grid = std::fs::read_to_string(self.dir.0.join("grid.json")).unwrap_or_default();
        let v: Value = serde_json::from_str(&grid).unwrap_or(Value::Null);
        v["entries"]
            .as_object()
            .map(|m| m.keys().filter(|k| k.contains("/addresses/")).count())
            .unwrap_or(0)
    }
}

fn nix_is_root() -> bool {
    weft_image::netns::require_root().is_ok()
}

/// One plugin call, as a runtime makes it.
struct Call<'a> {
    command: &'a str,
    conf: Value,
    id: &'a str,
    netns: Option<String>,
    ifname: &'a str,
    args: &'a str,
    path: String,
}

impl<'a> Call<'a> {
    fn new(command: &'a str, conf: Value, id: &'a str, netns: Option<&Netns>) -> Call<'a> {
        Call {
            command,
            conf,
            id,
            netns: netns.map(|n| format!("/run/netns/{}", n.name())),
            ifname: "eth0",
            args: "",
            path: "/usr/lib/cni:/opt/cni/bin".into(),
        }
    }

    fn args(mut self, args: &'a str) -> Self {
        self.args = args;
        self
    }

    /// Runs `weft-cni` in `host`: (success, stdout as JSON or Null).
    fn run(&self, host: &Netns) -> (bool, Value) {
        self.run_raw(host, self.conf.to_string().as_bytes())
    }

    fn run_raw(&self, host: &Netns, stdin: &[u8]) -> (bool, Value) {
        use std::io::Write;
        let mut c = host.command(env!("CARGO_BIN_EXE_weft-cni"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_ARGS", self.args)
            .env("CNI_PATH", &self.path);
        if let Some(n) = &self.netns {
            c.env("CNI_NETNS", n);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
        };
        (out.status.success(), v)
    }

    fn ok(&self, host: &Netns) -> Value {
        let (ok, v) = self.run(host);
        assert!(ok, "{} {}: {v}", self.command, self.id);
        v
    }

    /// Fails with the spec's error object; its code.
    fn fails(&self, host: &Netns) -> (u64, String) {
        let (ok, v) = self.run(host);
        assert!(!ok, "{} {} should fail: {v}", self.command, self.id);
        assert!(v["cniVersion"].as_str().is_some(), "{v}");
        (
            v["code"].as_u64().expect("code"),
            v["msg"].as_str().expect("msg").to_string(),
        )
    }
}

fn ns_ip(ns: &Netns, args: &[&str]) -> Value {
    let out = ns.command("ip").arg("-j").args(args).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(json!([]))
}

fn owner(id: &str) -> String {
    format!("cni:weftnet:{id}:eth0")
}

#[test]
fn add_check_del_through_the_spec_and_del_is_idempotent() {
    let f = Fixture::start(16);
    let ctr = Netns::create(&unique("c")).unwrap();
    let conf = f.conf(json!({}));
    let add = Call::new("ADD", conf.clone(), "c0ffee01", Some(&ctr))
        .args("IgnoreUnknown=1;K8S_POD_NAME=web-1");
    let r = add.ok(&f.host);

    // The result: both interfaces with a MAC, the IP on the sandbox one, the default
    // route and DNS through the node address.
    assert_eq!(r["cniVersion"], "1.0.0");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{r}");
    assert!(
        ifs.iter()
            .all(|i| i["mac"].as_str().is_some_and(|m| m.len() == 17)),
        "{r}"
    );
    assert_eq!(ifs[1]["name"], "eth0");
    assert_eq!(ifs[1]["sandbox"], format!("/run/netns/{}", ctr.name()));
    assert_eq!(r["ips"][0]["address"], "10.81.1.1/16", "{r}");
    assert_eq!(r["ips"][0]["gateway"], "10.81.0.1");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.81.0.1"}])
    );
    assert_eq!(
        r["dns"],
        json!({"nameservers": ["10.81.0.1"], "search": ["testgrid.kontena.local"]})
    );
    assert_eq!(ifs[1]["mac"], "02:42:0a:51:01:01");

    // The interfaces as the result says: address, MTU, MAC, route; host end on the bridge.
    let host_end = ifs[0]["name"].as_str().unwrap().to_string();
    let link = &ns_ip(&f.host, &["link", "show", "dev", &host_end])[0];
    assert_eq!(link["master"], BRIDGE, "{link}");
    assert_eq!(link["mtu"], 1450);
    let eth0 = &ns_ip(&ctr, &["addr", "show", "dev", "eth0"])[0];
    assert_eq!(eth0["mtu"], 1450);
    assert_eq!(eth0["address"], "02:42:0a:51:01:01");
    assert_eq!(eth0["addr_info"][0]["local"], "10.81.1.1", "{eth0}");
    let routes = ns_ip(&ctr, &["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "10.81.0.1", "{routes}");

    // Registered with the agent under the pod name, tagged as this attachment's.
    let held = f.held(&owner("c0ffee01"));
    assert_eq!(held["containers"], json!(["web-1"]), "{held}");
    assert_eq!(held["addresses"], json!(["10.81.1.1"]));

    // CHECK with the prevResult: fine; with the address gone: fails, saying so.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r.clone();
    Call::new("CHECK", with_prev.clone(), "c0ffee01", Some(&ctr)).ok(&f.host);
    let (code, _) = Call::new("CHECK", conf.clone(), "c0ffee01", Some(&ctr)).fails(&f.host);
    assert_eq!(code, 7, "CHECK without prevResult");
    ctr.ip(&["addr", "del", "10.81.1.1/16", "dev", "eth0"])
        .unwrap();
    let (code, msg) = Call::new("CHECK", with_prev.clone(), "c0ffee01", Some(&ctr)).fails(&f.host);
    assert_eq!(code, 103);
    assert!(msg.contains("10.81.1.1"), "{msg}");
    ctr.ip(&["addr", "add", "10.81.1.1/16", "dev", "eth0"])
        .unwrap();
    ctr.ip(&["route", "add", "default", "via", "10.81.0.1"])
        .unwrap();
    Call::new("CHECK", with_prev.clone(), "c0ffee01", Some(&ctr)).ok(&f.host);

    // DEL (as podman's cleanup runs it: the config with prevResult, no CNI_ARGS):
    // nothing left, and a second DEL, and one without a netns, succeed.
    let out = Call::new("DEL", with_prev.clone(), "c0ffee01", Some(&ctr)).ok(&f.host);
    assert_eq!(out, Value::Null, "DEL prints nothing");
    assert!(!f.host_has(&host_end));
    assert!(ns_ip(&ctr, &["link", "show", "dev", "eth0"])
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        f.held(&owner("c0ffee01")),
        json!({"containers": [], "addresses": [], "publish": []})
    );
    assert_eq!(f.addresses_allocated(), 0);
    Call::new("DEL", with_prev.clone(), "c0ffee01", Some(&ctr)).ok(&f.host);
    Call::new("DEL", conf.clone(), "c0ffee01", None).ok(&f.host);

    // A 0.4.0 config gets a 0.4.0 result; the name falls back to the container id.
    let old = f.conf(json!({"cniVersion": "0.4.0"}));
    let r = Call::new("ADD", old.clone(), "0123456789abcdef99", Some(&ctr)).ok(&f.host);
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4", "{r}");
    let held = f.held("cni:weftnet:0123456789abcdef99:eth0");
    assert_eq!(held["containers"], json!(["0123456789ab"]), "{held}");
    Call::new("DEL", old, "0123456789abcdef99", Some(&ctr)).ok(&f.host);
    assert!(f.host_ends().is_empty());
}

#[test]
fn port_mappings_are_published_and_a_failed_add_leaves_nothing() {
    let f = Fixture::start(16);
    let (a, b) = (
        Netns::create(&unique("a")).unwrap(),
        Netns::create(&unique("b")).unwrap(),
    );
    let conf = f.conf(json!({
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        ]},
    }));
    let r = Call::new("ADD", conf.clone(), "aaaa", Some(&a))
        .args("K8S_POD_NAME=pa")
        .ok(&f.host);
    let addr = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let held = f.held(&owner("aaaa"));
    assert_eq!(held["publish"], json!(["tcp-8080", "udp-5353"]), "{held}");
    // The appliance follows: its config publishes the ports to the container.
    let deadline = Instant::now() + T;
    loop {
        let cfg = f.call("config", json!(null)).unwrap_or(Value::Null);
        let ports: Vec<u64> = cfg["publish"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter(|i| i["container_address"] == addr.as_str())
                    .filter_map(|i| i["host_port"].as_u64())
                    .collect()
            })
            .unwrap_or_default();
        if ports.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the appliance never published them: {cfg}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The same host port for another container: refused, and nothing of it is left.
    let before = f.addresses_allocated();
    let (code, msg) = Call::new("ADD", conf.clone(), "bbbb", Some(&b))
        .args("K8S_POD_NAME=pb")
        .fails(&f.host);
    assert_eq!(code, 101, "{msg}");
    assert!(msg.contains("8080") || msg.contains("5353"), "{msg}");
    assert_eq!(
        f.held(&owner("bbbb")),
        json!({"containers": [], "addresses": [], "publish": []})
    );
    assert_eq!(f.addresses_allocated(), before);
    assert_eq!(f.host_ends().len(), 1);
    assert!(ns_ip(&b, &["link", "show", "dev", "eth0"])
        .as_array()
        .unwrap()
        .is_empty());
    // DEL after the failed ADD succeeds.
    Call::new("DEL", conf.clone(), "bbbb", Some(&b)).ok(&f.host);

    // DEL removes the ports with the rest.
    Call::new("DEL", conf.clone(), "aaaa", Some(&a)).ok(&f.host);
    assert_eq!(
        f.held(&owner("aaaa")),
        json!({"containers": [], "addresses": [], "publish": []})
    );
    assert!(f.host_ends().is_empty());
    // Now the port is free for b.
    Call::new("ADD", conf.clone(), "bbbb", Some(&b)).ok(&f.host);
    Call::new("DEL", conf, "bbbb", Some(&b)).ok(&f.host);
}

#[test]
fn every_error_is_the_specs_object_and_changes_nothing() {
    let f = Fixture::start(22);
    let ctr = Netns::create(&unique("e")).unwrap();
    let conf = f.conf(json!({}));

    // VERSION answers whatever the other variables hold (podman sends placeholders).
    let mut v = Call::new("VERSION", json!({"cniVersion": "0.4.0"}), "", None);
    v.netns = Some("dummy".into());
    v.ifname = "dummy";
    let (ok, out) = v.run(&f.host);
    assert!(ok);
    assert_eq!(
        out,
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0"]})
    );
    let (ok, out) = v.run_raw(&f.host, b"");
    assert!(ok && out["supportedVersions"].is_array(), "{out}");

    // STATUS (CNI 1.1): ready with the agent there, "not available" (50) without it
    // or without the bridge; it needs no container.
    let status = |conf: Value| Call::new("STATUS", conf, "", None);
    assert_eq!(
        status(conf.clone()).ok(&f.host),
        Value::Null,
        "STATUS prints nothing"
    );
    let away = f.conf(json!({"agent": "/run/weft-no-such-agent.sock"}));
    assert_eq!(status(away).fails(&f.host).0, 50);
    assert_eq!(
        status(f.conf(json!({"bridge": "no-bridge"})))
            .fails(&f.host)
            .0,
        50
    );

    let code_of = |c: Call| c.fails(&f.host).0;
    let add = |conf: Value| Call::new("ADD", conf, "e1", Some(&ctr));
    // Not JSON: 6. An unknown key: 2. An old version: 1. A bad value: 7.
    let (ok, out) = add(conf.clone()).run_raw(&f.host, b"{nope");
    assert!(!ok);
    assert_eq!(out["code"], 6);
    assert_eq!(code_of(add(f.conf(json!({"vlan": 5})))), 2);
    assert_eq!(code_of(add(f.conf(json!({"cniVersion": "0.3.1"})))), 1);
    assert_eq!(code_of(add(f.conf(json!({"bridge": 7})))), 7);
    // A missing variable: 4; a namespace that does not exist: 3.
    let mut c = add(conf.clone());
    c.id = "";
    assert_eq!(code_of(c), 4);
    let mut c = add(conf.clone());
    c.netns = Some("/run/netns/no-such-namespace".into());
    assert_eq!(code_of(c), 3);
    // The agent unreachable: 11, try again later (also for DEL).
    let away = f.conf(json!({"agent": "/run/weft-no-such-agent.sock"}));
    assert_eq!(code_of(add(away.clone())), 11);
    assert_eq!(code_of(Call::new("DEL", away, "e1", Some(&ctr))), 11);
    // A network the node does not have: 7.
    assert_eq!(code_of(add(f.conf(json!({"network": "nope"})))), 7);
    // No such bridge: 102, before anything is taken.
    assert_eq!(code_of(add(f.conf(json!({"bridge": "no-bridge"})))), 102);
    // An IPAM plugin that is not there: 7.
    assert_eq!(
        code_of(add(f.conf(json!({"ipam": {"type": "no-such-ipam"}})))),
        7
    );
    assert_eq!(f.addresses_allocated(), 0);
    assert!(f.host_ends().is_empty());

    // The VLAN network: the host end is an access port of VLAN 200 where the kernel
    // filters VLANs; where it cannot, ADD fails naming why, and leaves nothing.
    let tagged = f.conf(json!({"network": "tagged"}));
    let (ok, out) = add(tagged.clone()).run(&f.host);
    if ok {
        assert_eq!(out["interfaces"][1]["mac"].as_str().map(str::len), Some(17));
        let eth0 = &ns_ip(&ctr, &["link", "show", "dev", "eth0"])[0];
        assert_eq!(eth0["mtu"], 1408, "a sleeve network's MTU");
        Call::new("DEL", tagged, "e1", Some(&ctr)).ok(&f.host);
    } else {
        assert_eq!(out["code"], 102, "{out}");
        assert!(out["msg"].as_str().unwrap().contains("VLAN 200"), "{out}");
        eprintln!("(this kernel's bridge cannot filter VLANs: {})", out["msg"]);
    }
    assert_eq!(f.addresses_allocated(), 0);
    assert!(f.host_ends().is_empty());
    assert!(ns_ip(&ctr, &["link", "show", "dev", "eth0"])
        .as_array()
        .unwrap()
        .is_empty());

    // The pool: a /22 grid gives each node two addresses; the third ADD is refused: 100.
    let others: Vec<Netns> = (0..2)
        .map(|i| Netns::create(&unique(&format!("p{i}"))).unwrap())
        .collect();
    for (i, ns) in others.iter().enumerate() {
        Call::new("ADD", conf.clone(), &format!("pool{i}"), Some(ns)).ok(&f.host);
    }
    let (code, msg) = add(conf.clone()).fails(&f.host);
    assert_eq!(code, 100, "{msg}");
    assert_eq!(f.addresses_allocated(), 2);
    assert_eq!(f.host_ends().len(), 2);
    for (i, ns) in others.iter().enumerate() {
        Call::new("DEL", conf.clone(), &format!("pool{i}"), Some(ns)).ok(&f.host);
    }
    assert_eq!(f.addresses_allocated(), 0);
}

#[test]
fn ipam_is_delegated_to_host_local_when_configured() {
    let host_local = Path::new("/usr/lib/cni/host-local");
    assert!(
        host_local.is_file(),
        "{} is missing (apt-get install containernetworking-plugins, or .ci/install)",
        host_local.display()
    );
    let f = Fixture::start(16);
    let ctr = Netns::create(&unique("i")).unwrap();
    let data = f.dir.0.join("ipam");
    let conf = f.conf(json!({"ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.81.0.0/16", "rangeStart": "10.81.1.200", "rangeEnd": "10.81.1.210"}]],
        "dataDir": data,
    }}));
    let r = Call::new("ADD", conf.clone(), "ipam1", Some(&ctr)).ok(&f.host);
    assert_eq!(r["ips"][0]["address"], "10.81.1.200/16", "{r}");
    assert_eq!(
        r["ips"][0]["gateway"], "10.81.0.1",
        "the node address, whatever IPAM says"
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.81.0.1"}])
    );
    let held = f.held(&owner("ipam1"));
    assert_eq!(held["addresses"], json!(["10.81.1.200"]), "{held}");
    assert!(data.join("weftnet").join("10.81.1.200").is_file());
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r;
    Call::new("CHECK", with_prev.clone(), "ipam1", Some(&ctr)).ok(&f.host);
    Call::new("DEL", with_prev, "ipam1", Some(&ctr)).ok(&f.host);
    assert!(
        !data.join("weftnet").join("10.81.1.200").exists(),
        "host-local released it"
    );
    assert_eq!(f.addresses_allocated(), 0);
}

#[test]
fn fifty_concurrent_adds_get_fifty_distinct_addresses() {
    let f = Fixture::start(16);
    let namespaces: Vec<Netns> = (0..50)
        .map(|i| Netns::create(&unique(&format!("n{i}"))).unwrap())
        .collect();
    let conf = f.conf(json!({}));
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (conf, host) = (conf.clone(), &f.host);
                s.spawn(move || {
                    let id = format!("conc{i:02}");
                    let name = format!("K8S_POD_NAME=c{i}");
                    Call::new("ADD", conf, &id, Some(ns)).args(&name).ok(host)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addrs: BTreeSet<String> = results
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(addrs.len(), 50, "{addrs:?}");
    assert_eq!(f.addresses_allocated(), 50);
    assert_eq!(f.host_ends().len(), 50);
    for (i, ns) in namespaces.iter().enumerate() {
        Call::new("DEL", conf.clone(), &format!("conc{i:02}"), Some(ns)).ok(&f.host);
    }
    assert_eq!(f.addresses_allocated(), 0);
    assert!(f.host_ends().is_empty());
}
