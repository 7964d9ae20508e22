//! Grid fixtures for the agent tests: an etcd cluster whose members live in their own
//! namespaces on the underlay (Debian's `etcd`, started here and always stopped, data
//! in a scratch directory), and hosts whose appliance is booted and supervised by
//! `weft agent` running in the host's hypervisor namespace. Every process they start
//! runs inside a namespace they own; on drop every process left in those namespaces
//! is killed and the namespaces deleted, also while a panic unwinds (then the logs are
//! printed).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use weft_control::client::Client;
use weft_image::netns::{Netns, PeerAddresses, Topology, TopologyNames};
use weft_image::process::{self, Signal};

use crate::grid::{unique_prefix, weft_binary, Underlay};
use weft_image::gridhost::{AgentSpec, EtcdMember};

/// The command name of a process.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// An etcd cluster of `n` members at `192.0.2.241..` on the underlay.
pub struct Etcd {
    pub dir: PathBuf,
    pub members: Vec<EtcdMember>,
}

impl Etcd {
    pub fn start(ul: &mut Underlay, n: usize) -> Result<Etcd> {
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join(format!("weft-etcd-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let addr = |i: usize| format!("192.0.2.{}", 241 + i);
        let cluster = (0..n)
            .map(|i| format!("m{i}=http://{}:2380", addr(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            dir: dir.clone(),
            members: Vec::new(),
        };
        for i in 0..n {
            let ns = Netns::create(&format!("{prefix}-e{i}"))?;
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ul.plug(&ns, "eth0")?;
            ns.ip(&["addr", "add", &format!("{}/24", addr(i)), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            etcd.members.push(EtcdMember::new(
                ns,
                &format!("m{i}"),
                &addr(i),
                &cluster,
                &dir,
            ));
        }
        for m in &mut etcd.members {
            m.start()?;
        }
        etcd.wait_healthy(Duration::from_secs(60))?;
        Ok(etcd)
    }

    /// `etcd:http://A:2379,...` for `weft agent --store`.
    pub fn store_arg(&self) -> String {
        let urls: Vec<String> = self.members.iter().map(EtcdMember::client_url).collect();
        format!("etcd:{}", urls.join(","))
    }

    /// Waits until a write through the cluster succeeds.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let Some(m) = self.members.iter().find(|m| m.running()) else {
            bail!("no etcd member runs");
        };
        let endpoints = self
            .members
            .iter()
            .filter(|m| m.running())
            .map(EtcdMember::client_url)
            .collect::<Vec<_>>()
            .join(",");
        m.wait_writable(&endpoints, timeout)
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.logs()))
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "---- etcd {} ----\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.stop();
            m.ns.kill_all();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One host of a grid: its topology (host, container and hypervisor namespaces) and
/// `weft agent` in the hypervisor namespace, booting and supervising the appliance.
/// The hypervisor's uplink bridge holds `192.0.2.10<n>` so the agent reaches etcd.
pub struct AgentHost {
    pub test: String,
    pub n: u8,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub api: PathBuf,
    pub control: PathBuf,
    pub serial: PathBuf,
    image: PathBuf,
    agent: Option<Child>,
    agent_log: PathBuf,
    /// Field order is drop order: the topology (and everything in it) goes last.
    pub topo: Topology,
}

impl AgentHost {
    /// Host `n`: its container namespace at `10.81.<n>.2/16` behind the link (gateway
    /// `10.81.0.<n>`), its uplink segment joined to `ul`, `config` as its node file.
    pub fn create(test: &str, n: u8, ul: &mut Underlay, config: &str) -> Result<AgentHost> {
        let image = crate::preflight();
        let prefix = unique_prefix();
        let names = TopologyNames::new(&prefix)?;
        let topo = Topology::create(
            names,
            PeerAddresses {
                host: format!("192.0.2.{n}/24"),
                ctr: format!("10.81.{n}.2/16"),
                ctr_gateway: format!("10.81.0.{n}"),
            },
            &mut |_| {},
        )?;
        ul.join_topology(&topo)?;
        topo.hv.ip(&[
            "addr",
            "add",
            &format!("192.0.2.{}/24", 100 + u32::from(n)),
            "dev",
            &topo.names.uplink_bridge,
        ])?;
        let dir = std::env::temp_dir().join(format!("weft-ah-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("node.toml");
        std::fs::write(&config_path, config)?;
        Ok(AgentHost {
            test: format!("{test}-h{n}"),
            n,
            api: dir.join("agent.sock"),
            control: dir.join("control.sock"),
            serial: dir.join("serial.log"),
            agent_log: dir.join("agent.log"),
            config: config_path,
            dir,
            image,
            agent: None,
            topo,
        })
    }

    /// Starts `weft agent` (which boots the appliance); `store` is `--store`'s value.
    pub fn start_agent(&mut self, store: &str, extra: &[&str]) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.agent_log)?;
        let weft = weft_binary();
        let name = format!("host-{}", self.n);
        let spec = AgentSpec {
            weft: &weft,
            config: &self.config,
            control: &self.control,
            api: &self.api,
            store,
            name: &name,
            image: &self.image,
            uplink_tap: &self.topo.names.uplink_tap,
            link_tap: &self.topo.names.link_tap,
            serial: &self.serial,
        };
        let mut cmd = spec.command(&self.topo.hv, extra);
        cmd.stdout(log.try_clone()?).stderr(log);
        self.agent = Some(cmd.spawn().context("starting weft agent")?);
        Ok(())
    }

    /// Kills the agent and the appliance at once (SIGKILL, no goodbye).
    pub fn kill(&mut self) {
        self.topo.hv.kill_all();
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the appliance's QEMU only (its agent boots it again).
    pub fn kill_qemu(&self) -> Result<()> {
        let qemu: Vec<u32> = self
            .topo
            .hv
            .pids()
            .into_iter()
            .filter(|p| comm(*p).starts_with("qemu"))
            .collect();
        if qemu.is_empty() {
            bail!("{}: no QEMU runs", self.test);
        }
        for pid in qemu {
            process::signal(pid, Signal::SIGKILL);
        }
        Ok(())
    }

    /// One request on the agent's API.
    pub fn call(&self, cmd: &str, args: Option<Value>) -> Result<Value, String> {
        let mut c = Client::connect(&self.api, Duration::from_secs(10))
            .map_err(|e| format!("{}: agent API: {e}", self.test))?;
        let r = c
            .call(cmd, args)
            .map_err(|e| format!("{}: {cmd}: {e}", self.test))?;
        r.outcome.map_err(|e| weft_control::client::remote_line(&e))
    }

    /// Polls `cmd` until `done` holds for its result (or `timeout` passes); the last one.
    pub fn wait_for(
        &self,
        cmd: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let v = self.call(cmd, None).unwrap_or(Value::Null);
            if done(&v) || start.elapsed() > timeout {
                return (v, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.agent_log).unwrap_or_default()
    }

    pub fn api_path(&self) -> &Path {
        &self.api
    }
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "\n==== {}: agent log ====\n{}\n---- serial console ----\n{}\n==== end of {} ====",
                self.test,
                self.agent_log(),
                std::fs::read_to_string(&self.serial).unwrap_or_default(),
                self.test
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The configuration file host `n` of the agent tests boots with: uplink
/// `192.0.2.1<n>/24`, link `10.81.0.<n>/16`, one VXLAN network `grid`, DNS for grid
/// `testgrid`; the agent adds peers, containers and services from etcd.
pub fn node_file(n: u8) -> String {
    format!(
        r#"[uplink]
address = "192.0.2.1{n}/24"

[link]
address = "10.81.0.{n}/16"

[grid]

[[networks]]
name = "grid"
vni = 100

[dns]
grid = "testgrid"
"#
    )
}

/// `name` in the grid `node_file` names, under the default domain.
pub fn fqdn(name: &str) -> String {
    format!("{name}.testgrid.kontena.local")
}

/// [`weft_image::netns::in_netns`], for tests: a namespace that cannot be entered
/// fails the test.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    weft_image::netns::in_netns(ns, f).unwrap_or_else(|e| panic!("{e:#}"))
}
