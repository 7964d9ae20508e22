//! Delegation to a standard IPAM plugin (`host-local`, `static`, ...) named by the
//! config's `ipam.type`, as the spec's conventions say: found on `CNI_PATH`, run with
//! this call's environment and config, its result or error read back. It never decides
//! an address itself and never touches an interface.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::result::CniResult;
use crate::spec::{self, code, CniError, Env};

/// The plugin binary `kind` on `CNI_PATH`.
fn find(kind: &str, env: &Env) -> Result<PathBuf, CniError> {
    env.path
        .iter()
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let dirs: Vec<String> = env.path.iter().map(|p| p.display().to_string()).collect();
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "the IPAM plugin {kind:?} is not on CNI_PATH ({})",
                    if dirs.is_empty() {
                        "unset".to_string()
                    } else {
                        dirs.join(":")
                    }
                ),
            )
        })
}

/// Runs the IPAM plugin `kind` for `command` with the config bytes `conf`; ADD's
/// result is parsed (the other commands print nothing).
pub fn delegate(
    kind: &str,
    command: spec::Command,
    env: &Env,
    conf: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let bin = find(kind, env)?;
    let mut cmd = Command::new(&bin);
    cmd.env("CNI_COMMAND", command.name())
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_IFNAME", &env.ifname)
        .env(
            "CNI_ARGS",
            env.args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
        )
        .env(
            "CNI_PATH",
            std::env::join_paths(&env.path).unwrap_or_default(),
        )
        .env(
            "CNI_NETNS",
            env.netns
                .as_deref()
                .map(|p| p.as_os_str())
                .unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("IPAM plugin {kind} ({})", bin.display());
    let mut child = cmd
        .spawn()
        .map_err(|e| CniError::new(code::IPAM_FAILED, format!("{shown}: cannot run it: {e}")))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading is judged by its exit status below.
        let _ = input.write_all(conf);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IPAM_FAILED, format!("{shown}: {e}")))?;
    let stdout: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let reported = stdout.as_ref().and_then(|v| {
            Some(CniError {
                code: u32::try_from(v.get("code")?.as_u64()?).ok()?,
                msg: format!("{shown}: {}", v.get("msg")?.as_str()?),
                details: v
                    .get("details")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            })
        });
        return Err(reported.unwrap_or_else(|| {
            CniError::new(
                code::IPAM_FAILED,
                format!(
                    "{shown} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )
        }));
    }
    if command != spec::Command::Add {
        return Ok(None);
    }
    let v = stdout.ok_or_else(|| {
        CniError::new(code::IPAM_FAILED, format!("{shown} printed no JSON result"))
    })?;
    let r = CniResult::from_json(&v)
        .map_err(|e| CniError::new(code::IPAM_FAILED, format!("{shown}'s result: {e}")))?;
    if r.ips.is_empty() {
        return Err(CniError::new(
            code::IPAM_FAILED,
            format!("{shown} gave no IPv4 address"),
        ));
    }
    Ok(Some(r))
}
