//! `weft-cni`: the CNI plugin (spec 1.0.0; 0.4.0 configs accepted) through which
//! container runtimes (containerd, CRI-O, podman, kubelet, nomad) attach containers to
//! a weft grid. Installed as `weft` in the runtime's plugin directory, it is run once
//! per command with the `CNI_*` environment and the network config on stdin; it makes
//! a veth pair whose host end joins the bridge of the appliance's link, and asks
//! `weft agent` (over its API socket, never the appliance directly) for the network's
//! details, an address, the container's registration and its published ports.
//!
//! Layout: `spec` (versions, environment, errors), `config` (the network config),
//! `result` (the result object), `link` (interfaces through iproute2), `ipam`
//! (delegation to an IPAM plugin), `agent` (the agent's API), `plugin` (the commands).

pub mod agent;
pub mod config;
pub mod ipam;
pub mod link;
pub mod plugin;
pub mod result;
pub mod spec;

use serde_json::Value;

use spec::{code, CniError, Command, Env, LATEST};

/// What one run prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The result, the VERSION answer or the error object (empty for DEL, CHECK).
    pub stdout: String,
    pub success: bool,
}

/// One run of the plugin: the environment through `var`, the config on `stdin`.
pub fn run(var: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let env = match Env::read(var) {
        Ok(e) => e,
        Err(e) => return failure(&e, version_of(stdin).as_deref().unwrap_or(LATEST)),
    };
    if env.command == Command::Version {
        let asked = version_of(stdin);
        return Outcome {
            stdout: spec::version_info(asked.as_deref()).to_string(),
            success: true,
        };
    }
    let conf = match config::parse(stdin) {
        Ok(c) => c,
        Err(e) => {
            let v = version_of(stdin).filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()));
            return failure(&e, v.as_deref().unwrap_or(LATEST));
        }
    };
    let done = match env.command {
        Command::Add => plugin::add(&conf, &env, stdin).map(|v| v.to_string()),
        Command::Del => plugin::del(&conf, &env, stdin).map(|()| String::new()),
        Command::Check => plugin::check(&conf, &env, stdin).map(|()| String::new()),
        Command::Status => plugin::status(&conf).map(|()| String::new()),
        Command::Version => Ok(String::new()),
    };
    match done {
        Ok(stdout) => Outcome {
            stdout,
            success: true,
        },
        Err(e) => failure(&e, &conf.cni_version),
    }
}

/// The `cniVersion` of the input, if it has one.
fn version_of(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin)
        .ok()?
        .get("cniVersion")?
        .as_str()
        .map(str::to_string)
}

fn failure(e: &CniError, version: &str) -> Outcome {
    Outcome {
        stdout: e.json(version).to_string(),
        success: false,
    }
}

/// Reads stdin for a command that takes a config (VERSION may come with none).
pub fn read_stdin(input: &mut dyn std::io::Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    input.read_to_end(&mut buf).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("reading the network configuration from stdin: {e}"),
        )
    })?;
    Ok(buf)
}
