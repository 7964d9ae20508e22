//! ADD, DEL, CHECK, STATUS and VERSION: the order of the steps and what undoes them. ADD asks
//! the agent what the network is like, gets an address (the agent's, or a delegated
//! IPAM plugin's), makes the link, registers the container and publishes its ports,
//! every record tagged with the attachment's owner; if any step fails, what the earlier
//! ones made is undone before the error is reported, so a failed ADD leaves nothing.
//! DEL undoes an ADD from what the config and the attachment's identity say (never
//! from the caller's environment beyond the spec's variables) and succeeds when there
//! is nothing left to undo. It never configures the appliance itself.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::Value;

use crate::agent::{Agent, Registration};
use crate::config::{self, NetConf, SERVICE_ARG};
use crate::ipam;
use crate::link::{self, Sandbox};
use crate::result::{Cidr, CniResult, Interface, IpConfig, Route};
use crate::spec::{self, code, CniError, Env};

/// The longest container name (one DNS label).
const MAX_NAME: usize = 63;

/// The tag of everything one attachment holds in the grid: the spec's identity of an
/// attachment, (network name, container id, interface name).
pub fn owner(conf: &NetConf, env: &Env) -> String {
    format!("cni:{}:{}:{}", conf.name, env.container_id, env.ifname)
}

/// One DNS label of letters, digits, `-` and `_`: other characters become `-`.
fn label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(MAX_NAME);
    out.trim_matches('-').to_string()
}

/// The container's name in the grid: the pod's (`K8S_POD_NAME`, with its namespace
/// as `pod_namespace` unless that is `default`), else the first 12 characters of the
/// container id.
pub fn container_name(env: &Env) -> String {
    let pod = env.arg("K8S_POD_NAME");
    let ns = env
        .arg("K8S_POD_NAMESPACE")
        .filter(|n| *n != "default" && Some(*n) != pod);
    let name = match (pod, ns) {
        (Some(p), Some(n)) => label(&format!("{p}_{n}")),
        (Some(p), None) => label(p),
        (None, _) => String::new(),
    };
    if name.is_empty() {
        label(&env.container_id.chars().take(12).collect::<String>())
    } else {
        name
    }
}

/// The container's service: `WEFT_SERVICE` in `CNI_ARGS`, else the config's label.
fn service(conf: &NetConf, env: &Env) -> Result<Option<String>, CniError> {
    let Some(s) = env.arg(SERVICE_ARG).or(conf.service_label.as_deref()) else {
        return Ok(None);
    };
    if label(s) != s || s.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("service {s:?} is not a name (letters, digits, '-' and '_')"),
        ));
    }
    Ok(Some(s.to_string()))
}

fn link_failed(e: link::LinkError) -> CniError {
    CniError::new(code::LINK_FAILED, e.0)
}

/// What an ADD has made so far, for the undo.
struct Made<'a> {
    conf: &'a NetConf,
    env: &'a Env,
    bytes: &'a [u8],
    owner: String,
    host: String,
    ipam: bool,
    link: bool,
}

impl Made<'_> {
    /// Undoes everything, best effort: the error being reported is the first one.
    fn undo(&self, agent: &mut Agent) {
        let _ = agent.release(&self.owner);
        if self.link {
            let _ = link::delete(&self.host);
        }
        if let (true, Some(kind)) = (self.ipam, &self.conf.ipam) {
            let _ = ipam::delegate(kind, spec::Command::Del, self.env, self.bytes);
        }
    }
}

/// `CNI_NETNS`, which ADD and CHECK need to exist.
fn existing_netns(env: &Env) -> Result<&Path, CniError> {
    let netns = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("the network namespace {} does not exist", netns.display()),
        ));
    }
    Ok(netns)
}

/// ADD: the result object.
pub fn add(conf: &NetConf, env: &Env, bytes: &[u8]) -> Result<Value, CniError> {
    let netns = existing_netns(env)?;
    let name = container_name(env);
    let service = service(conf, env)?;
    let mut agent = Agent::connect(&conf.agent)?;
    let info = agent.network_info(conf.network.as_deref())?;
    link::check_bridge(&conf.bridge).map_err(link_failed)?;
    let mut made = Made {
        conf,
        env,
        bytes,
        owner: owner(conf, env),
        host: link::host_name(&env.container_id, &env.ifname),
        ipam: false,
        link: false,
    };
    let done = add_steps(&mut made, &mut agent, &info, netns, name, service);
    if done.is_err() {
        made.undo(&mut agent);
    }
    done
}

fn add_steps(
    made: &mut Made,
    agent: &mut Agent,
    info: &crate::agent::NetworkInfo,
    netns: &Path,
    name: String,
    service: Option<String>,
) -> Result<Value, CniError> {
    let (conf, env) = (made.conf, made.env);
    let gateway = info.gateway;
    // The address: delegated, or the agent's (unique in the grid).
    let (address, routes, ipam_dns) = match &conf.ipam {
        Some(kind) => {
            made.ipam = true;
            let r = ipam::delegate(kind, spec::Command::Add, env, made.bytes)?.unwrap_or_default();
            let (a, len) = config::first_ipv4(&r).ok_or_else(|| {
                CniError::new(
                    code::IPAM_FAILED,
                    format!("IPAM plugin {kind} gave no IPv4 address"),
                )
            })?;
            let routes: Vec<Route> = r
                .routes
                .iter()
                .map(|rt| Route {
                    dst: rt.dst,
                    gw: rt.gw.or(Some(gateway)),
                })
                .collect();
            (
                Cidr {
                    address: a,
                    prefix_len: len,
                },
                routes,
                r.dns,
            )
        }
        None => {
            let a = agent.allocate(&name, &made.owner)?;
            (
                Cidr {
                    address: a,
                    prefix_len: info.prefix_len,
                },
                Vec::new(),
                Default::default(),
            )
        }
    };
    let routes = if routes.is_empty() {
        vec![Route::default_via(gateway)]
    } else {
        routes
    };
    let mac = link::mac_for(address.address);
    let sandbox = Sandbox {
        netns,
        ifname: &env.ifname,
        mac: &mac,
        mtu: info.mtu,
        address,
        routes: &routes,
    };
    made.link = true;
    let host_mac =
        link::create(&made.host, &conf.bridge, info.vlan, &sandbox).map_err(link_failed)?;
    agent.register(&Registration {
        name,
        address: address.address,
        mac: mac.clone(),
        network: info.network.clone(),
        service,
        owner: made.owner.clone(),
    })?;
    for pm in &conf.port_mappings {
        agent.publish(pm, address.address, &made.owner)?;
    }
    let dns = if info.dns.is_empty() {
        ipam_dns
    } else {
        info.dns.clone()
    };
    let result = CniResult {
        interfaces: vec![
            Interface {
                name: made.host.clone(),
                mac: host_mac,
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac,
                sandbox: Some(netns.display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            address,
            gateway: Some(gateway),
            interface: Some(1),
        }],
        routes,
        dns,
    };
    Ok(result.to_json(&conf.cni_version))
}

/// DEL: removes what ADD made; nothing there is success.
pub fn del(conf: &NetConf, env: &Env, bytes: &[u8]) -> Result<(), CniError> {
    let mut agent = Agent::connect(&conf.agent)?;
    agent.release(&owner(conf, env))?;
    let host = link::host_name(&env.container_id, &env.ifname);
    link::delete(&host).map_err(link_failed)?;
    if let Some(netns) = env.netns.as_deref() {
        link::delete_in(netns, &env.ifname).map_err(link_failed)?;
    }
    if let Some(kind) = &conf.ipam {
        ipam::delegate(kind, spec::Command::Del, env, bytes)?;
    }
    Ok(())
}

/// STATUS: whether an ADD could succeed now: the agent answers and has joined the
/// grid with the configured network, and the bridge is there.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |e: CniError| CniError {
        code: code::NOT_AVAILABLE,
        ..e
    };
    let mut agent = Agent::connect(&conf.agent).map_err(unavailable)?;
    agent
        .network_info(conf.network.as_deref())
        .map_err(unavailable)?;
    link::check_bridge(&conf.bridge).map_err(|e| unavailable(link_failed(e)))
}

fn check_failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

/// CHECK: the attachment is as `prevResult` says and as ADD left it.
pub fn check(conf: &NetConf, env: &Env, bytes: &[u8]) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs the prevResult of the ADD",
        )
    })?;
    let netns = existing_netns(env)?;
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            check_failed(format!(
                "prevResult has no sandbox interface {}",
                env.ifname
            ))
        })?;
    let want = &prev.interfaces[index];
    let seen = link::observe(netns, &env.ifname).map_err(|e| check_failed(e.0))?;
    if !want.mac.is_empty() && !seen.mac.eq_ignore_ascii_case(&want.mac) {
        return Err(check_failed(format!(
            "{} has MAC {}, prevResult says {}",
            env.ifname, seen.mac, want.mac
        )));
    }
    if !seen.up {
        return Err(check_failed(format!("{} is down", env.ifname)));
    }
    let mine: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == index))
        .collect();
    if mine.is_empty() {
        return Err(check_failed(format!(
            "prevResult gives {} no address",
            env.ifname
        )));
    }
    for ip in &mine {
        if !seen.addresses.contains(&ip.address) {
            return Err(check_failed(format!(
                "{} lacks {} (it has {:?})",
                env.ifname,
                ip.address,
                seen.addresses
                    .iter()
                    .map(Cidr::to_string)
                    .collect::<Vec<_>>()
            )));
        }
    }
    for r in &prev.routes {
        let found = seen.routes.iter().any(|s| {
            s.dst
                == Cidr {
                    address: r.dst.network(),
                    prefix_len: r.dst.prefix_len,
                }
                && (r.gw.is_none() || s.gw == r.gw)
        });
        if !found {
            return Err(check_failed(format!("the route to {} is missing", r.dst)));
        }
    }
    let host = link::host_name(&env.container_id, &env.ifname);
    match link::master_of(&host) {
        None => return Err(check_failed(format!("the host end {host} is missing"))),
        Some(m) if m.as_deref() != Some(conf.bridge.as_str()) => {
            return Err(check_failed(format!(
                "the host end {host} is not on bridge {} (master {m:?})",
                conf.bridge
            )))
        }
        Some(_) => {}
    }
    let mut agent = Agent::connect(&conf.agent)?;
    let held = agent.owned(&owner(conf, env))?;
    let addresses: Vec<Ipv4Addr> = held["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    if held["containers"].as_array().is_none_or(Vec::is_empty) {
        return Err(check_failed(
            "the container is not registered with the weft agent".into(),
        ));
    }
    for ip in &mine {
        if !addresses.contains(&ip.address.address) {
            return Err(check_failed(format!(
                "{} is not registered for this container in the grid",
                ip.address.address
            )));
        }
    }
    if let Some(kind) = &conf.ipam {
        ipam::delegate(kind, spec::Command::Check, env, bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(args: &[(&str, &str)]) -> Env {
        Env {
            command: spec::Command::Add,
            container_id: "0123456789abcdef0123".into(),
            netns: None,
            ifname: "eth0".into(),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            path: vec![],
        }
    }

    #[test]
    fn names_come_from_the_pod_else_the_container_id() {
        assert_eq!(container_name(&env(&[("K8S_POD_NAME", "web-1")])), "web-1");
        // podman: the namespace (when sent) is the container's own name.
        assert_eq!(
            container_name(&env(&[
                ("K8S_POD_NAME", "web-1"),
                ("K8S_POD_NAMESPACE", "web-1")
            ])),
            "web-1"
        );
        assert_eq!(
            container_name(&env(&[
                ("K8S_POD_NAME", "web-1"),
                ("K8S_POD_NAMESPACE", "default")
            ])),
            "web-1"
        );
        assert_eq!(
            container_name(&env(&[
                ("K8S_POD_NAME", "api.v2"),
                ("K8S_POD_NAMESPACE", "prod")
            ])),
            "api-v2_prod"
        );
        assert_eq!(container_name(&env(&[])), "0123456789ab");
        assert_eq!(
            container_name(&env(&[("K8S_POD_NAME", "...")])),
            "0123456789ab"
        );
        assert_eq!(
            container_name(&env(&[("K8S_POD_NAME", &"x".repeat(99))])).len(),
            MAX_NAME
        );
    }
}
