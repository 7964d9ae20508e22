//! The processes of a grid that the host tool starts around its appliances, for the
//! demo and the QEMU tests alike: an etcd member (Debian's `etcd`, from the
//! etcd-server package) in a network namespace with its data in a directory of the
//! caller's, and `weft agent` booting and supervising one host's appliance. Each is a
//! child in its own process group, so a Ctrl-C at the terminal reaches the caller
//! only and the caller stops them in order.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::process::{self, Signal};

/// Stops a child: `signal`, up to `grace` to exit, then SIGKILL; always reaped.
pub fn stop_child(mut c: Child, signal: Signal, grace: Duration) {
    process::signal(c.id(), signal);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// One etcd member in its own namespace, listening on `address` (clients on 2379,
/// peers on 2380).
pub struct EtcdMember {
    pub name: String,
    pub address: String,
    /// `--initial-cluster`: `name=http://addr:2380,...`
    cluster: String,
    data: PathBuf,
    pub log: PathBuf,
    /// Extra environment of the etcd process.
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub ns: Netns,
}

impl EtcdMember {
    /// A member whose data and log go under `dir` (`<name>/`, `<name>.log`); not started.
    pub fn new(ns: Netns, name: &str, address: &str, cluster: &str, dir: &Path) -> EtcdMember {
        EtcdMember {
            name: name.to_string(),
            address: address.to_string(),
            cluster: cluster.to_string(),
            data: dir.join(name),
            log: dir.join(format!("{name}.log")),
            env: Vec::new(),
            child: None,
            ns,
        }
    }

    /// Sets `key=value` in the environment of the process (from the next start).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// `http://address:2379`
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.address)
    }

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
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let a = &self.address;
        let mut cmd = self.ns.command("etcd");
        cmd.arg("--name")
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .context("starting etcd (apt-get install etcd-server)")?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the member (SIGTERM, then SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Signal::SIGTERM, Duration::from_secs(5));
        }
    }

    /// `etcdctl --endpoints ENDPOINTS ARGS...` (API v3) from the member's namespace.
    pub fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Result<Output> {
        self.ns
            .command("etcdctl")
            .args(["--endpoints", endpoints, "--command-timeout=2s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .context("running etcdctl (apt-get install etcd-client)")
    }

    /// Waits until a write through `endpoints` succeeds.
    pub fn wait_writable(&self, endpoints: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.etcdctl(endpoints, &["put", "/weft-health", "ok"])?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `weft agent` for one host, booting and supervising its appliance from `image`
/// on the taps `uplink_tap` and `link_tap`.
pub struct AgentSpec<'a> {
    /// The `weft` binary.
    pub weft: &'a Path,
    pub config: &'a Path,
    pub control: &'a Path,
    pub api: &'a Path,
    /// `--store`: `etcd:http://A:2379,...` or `file:PATH`.
    pub store: &'a str,
    pub name: &'a str,
    pub image: &'a Path,
    pub uplink_tap: &'a str,
    pub link_tap: &'a str,
    pub serial: &'a Path,
}

impl AgentSpec<'_> {
    /// The command, run in `ns` (the hypervisor namespace, where the taps are), in a
    /// process group of its own; `extra` are further agent options.
    pub fn command(&self, ns: &Netns, extra: &[&str]) -> Command {
        let mut cmd = ns.command(self.weft.to_str().unwrap_or("weft"));
        cmd.arg("agent")
            .arg("--config")
            .arg(self.config)
            .arg("--control")
            .arg(self.control)
            .arg("--api")
            .arg(self.api)
            .args(["--store", self.store, "--name", self.name])
            .arg("--image")
            .arg(self.image)
            .args([
                "--uplink",
                &format!("tap:{}", self.uplink_tap),
                "--link",
                &format!("tap:{}", self.link_tap),
                "--memory",
                "128M",
            ])
            .arg("--serial")
            .arg(self.serial)
            .args(extra)
            .stdin(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }
}
