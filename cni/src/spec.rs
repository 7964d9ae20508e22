//! The CNI specification's side of the plugin (spec 1.0.0, configs of 0.4.0 accepted):
//! the versions spoken, the `CNI_*` environment, and the error object with the spec's
//! codes. It owns no behaviour of its own; it never touches a network or the agent.

use std::path::PathBuf;

use serde_json::{json, Value};

/// The versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0"];

/// The version this plugin speaks best.
pub const LATEST: &str = "1.0.0";

/// The spec's error codes (1-99) and the plugin's own (100 and up).
pub mod code {
    /// The config's `cniVersion` is not one of [`super::SUPPORTED_VERSIONS`].
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A key of the network config this plugin does not know.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (its network namespace) does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` variable is missing or invalid.
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    /// The config on stdin is not JSON (or not an object).
    pub const DECODING_FAILURE: u32 = 6;
    /// A value of the network config is wrong.
    pub const INVALID_CONFIG: u32 = 7;
    /// Transient: the agent cannot be reached or is not ready; try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// The node has no free address left in its share of the grid subnet.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// The agent refused a registration (a taken name, address or port).
    pub const REFUSED: u32 = 101;
    /// Creating or configuring the interfaces failed.
    pub const LINK_FAILED: u32 = 102;
    /// CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 103;
    /// The delegated IPAM plugin failed without an error object of its own.
    pub const IPAM_FAILED: u32 = 104;
    /// STATUS (CNI 1.1): the plugin cannot ADD now (the agent is away or not ready).
    pub const NOT_AVAILABLE: u32 = 50;
}

/// An error as the spec reports it: `{"cniVersion", "code", "msg", "details"}` on
/// stdout, and a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object for a config of version `version`.
    pub fn json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    /// CNI 1.1's readiness question: could an ADD succeed now?
    Status,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
        }
    }
}

/// The `CNI_*` environment of one call, checked as far as the command needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS`: required for ADD and CHECK; DEL may come without one (the
    /// container is gone).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS` as `KEY=VALUE` pairs, in order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where delegated plugins (IPAM) are found.
    pub path: Vec<PathBuf>,
}

fn invalid_env(var: &str, why: &str) -> CniError {
    CniError::new(code::INVALID_ENV, format!("{var} {why}"))
}

/// The longest interface name Linux takes (IFNAMSIZ less the terminating NUL).
pub const MAX_IFNAME: usize = 15;

/// Whether `name` can be a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Env {
    /// Reads the environment through `var` (the process's, or a test's).
    pub fn read(var: &dyn Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some(other) => {
                return Err(invalid_env(
                    "CNI_COMMAND",
                    &format!("is {other:?}; expected ADD, DEL, CHECK, VERSION or STATUS"),
                ))
            }
            None => return Err(invalid_env("CNI_COMMAND", "is not set")),
        };
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: Vec::new(),
            path: var("CNI_PATH")
                .unwrap_or_default()
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        if matches!(command, Command::Version | Command::Status) {
            // Runtimes ask VERSION with placeholder values (podman); nothing else counts.
            // STATUS is about the plugin, not a container.
            return Ok(env);
        }
        let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
        env.container_id = non_empty("CNI_CONTAINERID")
            .ok_or_else(|| invalid_env("CNI_CONTAINERID", "is not set"))?;
        if !env
            .container_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid_env(
                "CNI_CONTAINERID",
                "must be letters, digits, '.', '_' and '-' only",
            ));
        }
        env.ifname =
            non_empty("CNI_IFNAME").ok_or_else(|| invalid_env("CNI_IFNAME", "is not set"))?;
        if !valid_ifname(&env.ifname) {
            return Err(invalid_env(
                "CNI_IFNAME",
                &format!(
                    "{:?} is not an interface name (1..=15 bytes, no '/', ':' or space)",
                    env.ifname
                ),
            ));
        }
        env.netns = non_empty("CNI_NETNS").map(PathBuf::from);
        if env.netns.is_none() && command != Command::Del {
            return Err(invalid_env("CNI_NETNS", "is not set"));
        }
        if let Some(args) = var("CNI_ARGS") {
            for pair in args.split(';').filter(|p| !p.is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(invalid_env(
                        "CNI_ARGS",
                        &format!("has {pair:?}; expected KEY=VALUE pairs separated by ';'"),
                    ));
                };
                env.args.push((k.to_string(), v.to_string()));
            }
        }
        Ok(env)
    }

    /// The value of `key` in `CNI_ARGS` (the last one given), unless empty.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// The VERSION answer to a request naming `asked` (the input's `cniVersion`).
pub fn version_info(asked: Option<&str>) -> Value {
    let version = asked
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or(LATEST);
    json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(&|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=web-1;K8S_POD_NAMESPACE=",
        ),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
    ];

    #[test]
    fn a_full_environment_reads_and_args_are_pairs() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.arg("K8S_POD_NAME"), Some("web-1"));
        assert_eq!(e.arg("K8S_POD_NAMESPACE"), None, "empty is absent");
        assert_eq!(
            e.path,
            [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn each_missing_or_bad_variable_is_named() {
        let without = |var: &str| -> Vec<(&str, &str)> {
            ADD.iter().copied().filter(|(k, _)| *k != var).collect()
        };
        for var in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
            let e = env(&without(var)).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV);
            assert!(e.msg.contains(var), "{e}");
        }
        let with = |var: &'static str, val: &'static str| -> Vec<(&str, &str)> {
            let mut v = without(var);
            v.push((var, val));
            v
        };
        for (var, val) in [
            ("CNI_COMMAND", "GET"),
            ("CNI_IFNAME", "much-too-long-name0"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_CONTAINERID", "id with space"),
            ("CNI_ARGS", "novalue"),
        ] {
            let e = env(&with(var, val)).unwrap_err();
            assert!(e.msg.contains(var), "{var}={val}: {e}");
        }
        // DEL may come without a netns, VERSION with nothing but the command.
        let mut del = without("CNI_NETNS");
        del.retain(|(k, _)| *k != "CNI_COMMAND");
        del.push(("CNI_COMMAND", "DEL"));
        assert_eq!(env(&del).unwrap().netns, None);
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy")])
                .unwrap()
                .command,
            Command::Version
        );
    }

    #[test]
    fn version_answers_with_the_asked_version_when_spoken() {
        assert_eq!(
            version_info(Some("0.4.0")),
            json!({"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0"]})
        );
        assert_eq!(version_info(Some("9.9.9"))["cniVersion"], "1.0.0");
        assert_eq!(version_info(None)["cniVersion"], "1.0.0");
    }

    #[test]
    fn errors_carry_details_only_when_there_are_some() {
        let e = CniError::new(code::TRY_AGAIN, "agent away");
        assert_eq!(
            e.json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "agent away"})
        );
        assert_eq!(e.with_details("x").json("0.4.0")["details"], "x");
    }
}
