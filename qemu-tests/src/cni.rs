//! CNI fixtures for the QEMU tests: the `weft-cni` plugin installed by
//! `weft install-cni` into a plugin directory of the test run, the libcni driver
//! (`cni/tests/libcni/main.go`, built offline with Debian's `golang-go` and
//! `golang-github-appc-cni-dev`), and containers attached through it: a network
//! namespace, the driver's ADD/CHECK/DEL, and the `/etc/netns/<name>/resolv.conf` a
//! runtime writes from the result's DNS (so `ip netns exec` resolves as the container
//! would). Every namespace and file it makes is removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use weft_image::netns::Netns;

use crate::grid::weft_binary;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| weft_image::paths::repo_root().join("target"))
}

/// A plugin directory holding `weft` (installed by `weft install-cni`), built once per
/// test binary.
pub fn plugin_dir() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = DIR.get_or_init(|| {
        let weft = weft_binary();
        let release = !cfg!(debug_assertions);
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(weft_image::paths::repo_root())
            .args(["build", "--quiet", "-p", "weft-cni", "--bin", "weft-cni"]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
        if !st.success() {
            return Err("building weft-cni failed".into());
        }
        let dir = target_dir().join("cni-test-bin");
        let out = Command::new(&weft)
            .args(["install-cni", "--dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running weft install-cni: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "weft install-cni failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir)
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The libcni driver, built once per test binary from the repository's Go source.
pub fn libcni_driver() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = BIN.get_or_init(|| {
        let src = weft_image::paths::repo_root().join("cni/tests/libcni/main.go");
        let gopath = Path::new("/usr/share/gocode");
        if !gopath.join("src/github.com/containernetworking/cni/libcni").is_dir() {
            return Err("libcni's source is missing (apt-get install golang-github-appc-cni-dev golang-go, or .ci/install)".into());
        }
        let out_bin = target_dir().join("weft-libcni-driver");
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&out_bin)
            .arg(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", gopath)
            .env("GOCACHE", target_dir().join("go-cache"))
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running go (apt-get install golang-go, or .ci/install): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building the libcni driver failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out_bin)
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A network as a runtime knows it: its conflist and libcni's cache directory.
pub struct Network {
    pub conflist: PathBuf,
    pub cache: PathBuf,
    pub dir: PathBuf,
    /// Where the driver runs: the namespace that holds the link bridge.
    pub host: String,
}

impl Network {
    /// The conflist `name` for the agent at `api` and the link bridge `bridge`, with
    /// the `portMappings` capability, in `dir`; the driver runs in namespace `host`.
    pub fn create(
        dir: &Path,
        name: &str,
        api: &Path,
        bridge: &str,
        host: &Netns,
    ) -> Result<Network> {
        std::fs::create_dir_all(dir)?;
        let conflist = dir.join(format!("{name}.conflist"));
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "weft",
                "agent": api,
                "bridge": bridge,
                "capabilities": {"portMappings": true},
            }],
        });
        std::fs::write(&conflist, serde_json::to_vec_pretty(&conf)?)?;
        Ok(Network {
            conflist,
            cache: dir.join("cache"),
            dir: dir.to_path_buf(),
            host: host.name().to_string(),
        })
    }

    /// The driver run for `cmd` on container `id` in namespace `netns`.
    pub fn driver(&self, cmd: &str, id: &str, netns: &str, args: &str, ports: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host])
            .arg(libcni_driver())
            .args(["-cmd", cmd, "-conflist"])
            .arg(&self.conflist)
            .arg("-path")
            .arg(format!("{}:/usr/lib/cni", plugin_dir().display()))
            .arg("-cache")
            .arg(&self.cache)
            .args(["-id", id, "-netns", &format!("/run/netns/{netns}")])
            .args(["-args", args, "-ports", ports])
            .stdin(Stdio::null());
        c
    }
}

/// Output of a driver run, as a result or the error it printed.
pub fn outcome(out: &Output) -> Result<Value> {
    if !out.status.success() {
        bail!(
            "libcni: {} {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("libcni printed {text}"))
}

/// A container attached through libcni: its namespace and the result of its ADD.
/// Dropping it deletes the namespace and its resolv.conf, not the attachment (DEL is
/// what the tests check).
pub struct Attached {
    pub id: String,
    pub name: String,
    pub result: Value,
    resolv: PathBuf,
    pub ns: Netns,
}

impl Attached {
    /// The address the result gives the container.
    pub fn address(&self) -> String {
        self.result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .unwrap_or_default()
            .to_string()
    }

    /// The host end's name.
    pub fn host_end(&self) -> String {
        self.result["interfaces"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.resolv);
    }
}

/// The spec's "try again later" error code.
const TRY_AGAIN: u64 = 11;
/// How often [`attach`] tries an ADD that is to be tried again later.
const ADD_TRIES: u64 = 5;

/// Creates namespace `ns_name` and ADDs it as container `name` (`K8S_POD_NAME`) with
/// `ports`; writes its resolv.conf from the result, as a runtime does.
pub fn attach(net: &Network, ns_name: &str, id: &str, name: &str, ports: &str) -> Result<Attached> {
    let ns = Netns::create(ns_name)?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    let resolv = PathBuf::from("/etc/netns").join(ns_name);
    // As runtimes do, an ADD refused with the spec's "try again later" (11: the agent
    // or etcd did not answer in time, on a loaded machine) is tried again; a failed ADD
    // leaves nothing behind, so trying again is safe.
    let mut tries = 0;
    let out = loop {
        let out = net
            .driver(
                "add",
                id,
                ns_name,
                &format!("IgnoreUnknown=1;K8S_POD_NAME={name}"),
                ports,
            )
            .output()?;
        let code = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["code"].as_u64());
        tries += 1;
        if out.status.success() || code != Some(TRY_AGAIN) || tries == ADD_TRIES {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500 * tries));
    };
    let result = outcome(&out).with_context(|| format!("ADD {name}"))?;
    let mut text = String::new();
    for s in result["dns"]["nameservers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        text.push_str(&format!("nameserver {}\n", s.as_str().unwrap_or_default()));
    }
    let search: Vec<&str> = result["dns"]["search"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text.push_str("options timeout:2 attempts:3\n");
    std::fs::create_dir_all(&resolv)?;
    std::fs::write(resolv.join("resolv.conf"), text)?;
    Ok(Attached {
        id: id.to_string(),
        name: name.to_string(),
        result,
        resolv,
        ns,
    })
}
