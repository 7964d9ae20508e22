//! The agent on one host, in process, against the real appliance logic behind a unix
//! socket (`SimAppliance`) and the file store: registrations reach the appliance, the
//! API serves many clients and passes appliance commands through, a new appliance gets
//! the whole state again, a restarted agent finds the same state in its file, and a
//! bad entry in the store is skipped and counted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_agent::store::file::FileStore;
use weft_agent::store::{Txn, Write};
use weft_agent::{AgentOptions, AgentThread};
use weft_control::client::Client;
use weft_control::sim::SimAppliance;

const T: Duration = Duration::from_secs(10);

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(tag: &str) -> Tmp {
    let d = std::env::temp_dir().join(format!("weft-agent-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

const NODE: &str = r#"
[uplink]
address = "192.0.2.11/24"
gateway = "192.0.2.1"

[link]
address = "10.81.0.1/16"

[grid]

[[networks]]
name = "grid"
vni = 100

[dns]
grid = "testgrid"
"#;

/// A running agent (in its own thread and runtime); stopped on drop.
struct Agent {
    run: AgentThread,
    api: PathBuf,
}

impl Agent {
    fn start(dir: &Path, control: &Path) -> Agent {
        Agent::start_with(dir, control, NODE)
    }

    /// An agent whose node document is `node` (TOML).
    fn start_with(dir: &Path, control: &Path, node: &str) -> Agent {
        let config = dir.join("node.toml");
        std::fs::write(&config, node).unwrap();
        let api = dir.join("api.sock");
        let mut opts = AgentOptions::local(
            config,
            control.to_path_buf(),
            api.clone(),
            dir.join("grid.json"),
            "host-1",
        );
        opts.ttl = Duration::from_secs(10);
        Agent {
            run: AgentThread::spawn(opts),
            api,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.api, T).unwrap_or_else(|e| panic!("agent API: {e}"))
    }

    fn call(&self, cmd: &str, args: Value) -> Result<Value, String> {
        let args = (!args.is_null()).then_some(args);
        let r = self.client().call(cmd, args).map_err(|e| e.to_string())?;
        r.outcome.map_err(|e| weft_control::client::remote_line(&e))
    }

    /// Polls `agent-status` until `done` holds; the last status otherwise.
    fn status_when(&self, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self
                .call("agent-status", Value::Null)
                .unwrap_or(Value::Null);
            if done(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn synced(&self) -> Value {
        self.status_when(|s| s["appliance"]["in_sync"] == true && s["node"].is_number())
    }

    fn stop(self) {
        self.run.stop().unwrap();
    }
}

fn containers(agent: &Agent) -> Vec<String> {
    let cfg = agent.call("config", Value::Null).unwrap();
    cfg["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn one_host_with_a_file_store_keeps_its_state_through_restarts() {
    let dir = tmp("single");
    let app_dir = dir.0.join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    let sim = SimAppliance::start(&app_dir).unwrap();
    let agent = Agent::start(&dir.0, sim.path());
    let st = agent.synced();
    assert_eq!(st["node"], 1, "{st}");
    assert_eq!(st["store"]["kind"], "file");

    // A registration through the API reaches the appliance by way of the store.
    let a = agent
        .call("address-allocate", json!({"container": "web-1"}))
        .unwrap();
    assert_eq!(a["address"], "10.81.1.1", "{a}");
    assert_eq!(a["gateway"], "10.81.0.1");
    assert_eq!(a["prefix_len"], 16);
    agent
        .call(
            "container-add",
            json!({"name": "web-1", "service": "web", "address": a["address"], "mac": "02:42:0a:51:01:01"}),
        )
        .unwrap();
    let st = agent.status_when(|s| s["appliance"]["state_counts"]["containers"] == 1);
    assert_eq!(st["appliance"]["state_counts"]["fdb"], 1, "{st}");
    assert_eq!(containers(&agent), ["web-1"]);
    // The appliance's own status, through the API: the local FDB entry is there.
    let status = agent.call("status", Value::Null).unwrap();
    let fdb = &status["overlay"]["networks"][0]["fdb"];
    assert_eq!(fdb[0]["mac"], "02:42:0a:51:01:01", "{fdb}");
    // A conflicting registration is refused at the API, naming what holds it.
    let e = agent
        .call(
            "container-add",
            json!({"name": "web-2", "address": "10.81.1.1"}),
        )
        .unwrap_err();
    assert!(
        e.contains("invalid_config [address]") && e.contains("web-1"),
        "{e}"
    );
    // An unknown network is refused too.
    let e = agent
        .call(
            "container-add",
            json!({"name": "x", "address": "10.81.1.9", "network": "nope"}),
        )
        .unwrap_err();
    assert!(e.contains("[network]"), "{e}");

    // Many clients at once; the appliance's commands pass through for each.
    let clients: Vec<Client> = (0..8).map(|_| agent.client()).collect();
    for mut c in clients {
        assert!(c.ping().unwrap().pong);
        assert!(c.status().unwrap().configured);
    }

    // The appliance restarts (a new, empty one): the agent applies the whole state.
    drop(sim);
    let sim = SimAppliance::start(&app_dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers(&agent).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(containers(&agent), ["web-1"]);
    let st = agent.synced();
    assert!(st["appliance"]["greetings"].as_u64().unwrap() >= 2, "{st}");

    // The agent restarts on the same file: same node, same state, in a fresh appliance.
    agent.stop();
    drop(sim);
    // A bad entry written into the store while the agent is away is skipped and counted.
    let fs = FileStore::open(&dir.0.join("grid.json")).unwrap();
    fs.txn(Txn {
        when: vec![],
        then: vec![Write::Put {
            key: "/weft/testgrid/containers/bad".into(),
            value: br#"{"name":"bad","address":"not an address","node":1}"#.to_vec(),
            lease: 0,
        }],
    })
    .unwrap();
    drop(fs);
    let sim = SimAppliance::start(&app_dir).unwrap();
    let agent = Agent::start(&dir.0, sim.path());
    let st = agent.synced();
    assert_eq!(st["node"], 1, "{st}");
    assert_eq!(st["grid_view"]["skipped"]["entries"], 1, "{st}");
    assert_eq!(
        st["grid_view"]["skipped"]["keys"][0]["key"],
        "/weft/testgrid/containers/bad"
    );
    assert_eq!(containers(&agent), ["web-1"]);

    // Removal through the API leaves the appliance too, and frees the address.
    agent
        .call("container-remove", json!({"name": "WEB-1"}))
        .unwrap();
    let st = agent.status_when(|s| s["appliance"]["state_counts"]["containers"] == 0);
    assert_eq!(st["appliance"]["state_counts"]["containers"], 0, "{st}");
    assert!(containers(&agent).is_empty());
    let again = agent.call("address-allocate", json!({})).unwrap();
    assert_eq!(again["address"], "10.81.1.1");
    agent
        .call("address-release", json!({"address": "10.81.1.1"}))
        .unwrap();
    drop(agent);
    drop(sim);
}

#[test]
fn a_node_past_254_in_a_14_hands_out_its_own_24_and_its_container_is_registered() {
    let dir = tmp("wide");
    let app_dir = dir.0.join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    let sim = SimAppliance::start(&app_dir).unwrap();
    // Node 1000's address in the appliance's node plan: 10.80.3.238 (the fourth /24).
    let node = NODE
        .replace(
            "[grid]\n",
            "[grid]\nnode = 1000\nsubnet = \"10.80.0.0/14\"\n",
        )
        .replace("10.81.0.1/16", "10.80.3.238/14");
    let agent = Agent::start_with(&dir.0, sim.path(), &node);
    let st = agent.synced();
    assert_eq!(st["node"], 1000, "{st}");
    let a = agent
        .call("address-allocate", json!({"container": "far-1"}))
        .unwrap();
    // The /24 number 1003 of 10.80.0.0/14, above the node addresses' /22.
    assert_eq!(a["address"], "10.83.235.1", "{a}");
    assert_eq!(a["gateway"], "10.80.3.238", "{a}");
    assert_eq!(a["prefix_len"], 14);
    agent
        .call(
            "container-add",
            json!({"name": "far-1", "address": a["address"], "mac": "02:42:0a:53:eb:01"}),
        )
        .unwrap();
    let st = agent.status_when(|s| s["appliance"]["state_counts"]["containers"] == 1);
    assert_eq!(st["appliance"]["state_counts"]["fdb"], 1, "{st}");
    assert_eq!(containers(&agent), ["far-1"]);
    agent.stop();
}
