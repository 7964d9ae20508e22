//! Grid fixtures for the agent tests: an etcd cluster whose members live in their own
//! namespaces on the underlay (Debian's `etcd`, started here and always stopped, data
//! in a scratch directory), and hosts whose appliance is booted and supervised by
//! `weft agent` running in the host's hypervisor namespace. Every process they start
//! runs inside a namespace they own; on drop every process left in those namespaces
//! is killed and the namespaces deleted, also while a panic unwinds (then the logs are
//! printed).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use weft_control::client::Client;
use weft_image::netns::{Netns, PeerAddresses, Topology, TopologyNames};
use weft_image::process::{self, Signal};

use crate::grid::{stop_child, unique_prefix, weft_binary, Underlay};

/// The command name of a process.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// One etcd member in its own namespace on the underlay.
pub struct EtcdMember {
    pub name: String,
    pub address: String,
    cluster: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub ns: Netns,
}

impl EtcdMember {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts (or restarts, on the same data) the member.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let state = if self.data.join("member").exists() {
            "existing"
        } else {
            "new"
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let a = &self.address;
        let child = self
            .ns
            .command("etcd")
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &format!("http://{a}:2379"),
                "--advertise-client-urls",
                &format!("http://{a}:2379"),
                "--listen-peer-urls",
                &format!("http://{a}:2380"),
                "--initial-advertise-peer-urls",
                &format!("http://{a}:2380"),
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "weft-test",
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (apt-get install etcd-server, or .ci/install)")?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the member (SIGTERM, then SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Signal::SIGTERM, Duration::from_secs(5));
        }
    }
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
            etcd.members.push(EtcdMember {
                name: format!("m{i}"),
                address: addr(i),
                cluster: cluster.clone(),
                data: dir.join(format!("m{i}")),
                log: dir.join(format!("m{i}.log")),
                child: None,
                ns,
            });
        }
        for m in &mut etcd.members {
            m.start()?;
        }
        etcd.wait_healthy(Duration::from_secs(60))?;
        Ok(etcd)
    }

    /// `etcd:http://A:2379,...` for `weft agent --store`.
    pub fn store_arg(&self) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("http://{}:2379", m.address))
            .collect();
        format!("etcd:{}", urls.join(","))
    }

    /// Waits until a write through the cluster succeeds.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let Some(m) = self.members.iter().find(|m| m.running()) else {
            bail!("no etcd member runs");
        };
        let endpoints = self
            .members
            .iter()
            .filter(|m| m.running())
            .map(|m| format!("http://{}:2379", m.address))
            .collect::<Vec<_>>()
            .join(",");
        loop {
            let out =
                m.ns.command("etcdctl")
                    .args(["--endpoints", &endpoints, "--command-timeout=2s"])
                    .args(["put", "/weft-test/health", "ok"])
                    .env("ETCDCTL_API", "3")
                    .stdin(Stdio::null())
                    .output()?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
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
        let mut cmd = self
            .topo
            .hv
            .command(weft_binary().to_str().unwrap_or("weft"));
        cmd.arg("agent")
            .arg("--config")
            .arg(&self.config)
            .arg("--control")
            .arg(&self.control)
            .arg("--api")
            .arg(&self.api)
            .args(["--store", store, "--name", &format!("host-{}", self.n)])
            .arg("--image")
            .arg(&self.image)
            .args([
                "--uplink",
                &format!("tap:{}", self.topo.names.uplink_tap),
                "--link",
                &format!("tap:{}", self.topo.names.link_tap),
                "--memory",
                "128M",
            ])
            .arg("--serial")
            .arg(&self.serial)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
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

/// Runs `f` on a thread inside the network namespace `ns`; the threads it starts (a
/// tokio runtime's workers) are inside it too. Unix sockets are files and reach
/// across namespaces, so an agent run this way still talks to an appliance anywhere.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // This thread only: setns(2) moves the calling thread.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
