//! The network configuration on stdin: the spec's keys, weft's three (`agent`,
//! `bridge`, `network`), the runtime's `runtimeConfig.portMappings` and the
//! `prevResult`, all checked before anything is done; any other key is refused with
//! the spec's "unsupported field" error naming it. It never acts on the config.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::result::CniResult;
use crate::spec::{code, valid_ifname, CniError, SUPPORTED_VERSIONS};

/// Where the agent's API socket is unless `agent` says otherwise.
pub const DEFAULT_AGENT: &str = "/run/weft/agent.sock";
/// The bridge that holds the appliance's link tap unless `bridge` says otherwise.
pub const DEFAULT_BRIDGE: &str = "weft0";
/// The label (CNI `args.cni.labels`) and the `CNI_ARGS` key that name a container's
/// service.
pub const SERVICE_LABEL: &str = "weft.service";
pub const SERVICE_ARG: &str = "WEFT_SERVICE";

/// The spec's keys (those a runtime or the conflist may put in any plugin's config).
const SPEC_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "disableCheck",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "args",
    "ipMasq",
    "ipam",
    "dns",
];
const WEFT_KEYS: &[&str] = &["agent", "bridge", "network"];

/// `tcp` or `udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One of the runtime's port mappings (`podman run -p 8080:80`, a pod's `hostPort`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

/// A checked network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    /// The network's name (the conflist's).
    pub name: String,
    pub agent: PathBuf,
    pub bridge: String,
    /// The grid network; none: the node's first.
    pub network: Option<String>,
    /// The `ipam` section's plugin type, when IPAM is delegated.
    pub ipam: Option<String>,
    pub port_mappings: Vec<PortMapping>,
    /// `prevResult` (CHECK, DEL), parsed.
    pub prev_result: Option<CniResult>,
    /// The service named by `args.cni.labels` (`weft.service`).
    pub service_label: Option<String>,
}

fn unsupported(key: &str, value: &Value) -> CniError {
    let mut shown = value.to_string();
    // Cut by characters: the value is whatever the runtime wrote, any UTF-8.
    if let Some((cut, _)) = shown
        .char_indices()
        .nth(77)
        .filter(|_| shown.chars().count() > 80)
    {
        shown.truncate(cut);
        shown.push_str("...");
    }
    CniError::new(
        code::UNSUPPORTED_FIELD,
        format!("unsupported field in network configuration: {key}={shown}"),
    )
    .with_details(format!(
        "weft's own keys are {}; see the README's CNI section",
        WEFT_KEYS.join(", ")
    ))
}

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn string(conf: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match conf.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!("{key} must be a string, not {other}"))),
    }
}

/// Whether `name` can name a grid network (the appliance's rule for names).
fn valid_network_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Whether `name` is a network name as the spec has them (it also tags the
/// attachment's records in the grid, so it is kept to what the spec allows).
fn valid_config_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Parses and checks the config bytes of a call.
pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            "the network configuration is not JSON",
        )
        .with_details(e.to_string())
    })?;
    let Value::Object(conf) = v else {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "the network configuration is not a JSON object",
        ));
    };
    if let Some((k, v)) = conf
        .iter()
        .find(|(k, _)| !SPEC_KEYS.contains(&k.as_str()) && !WEFT_KEYS.contains(&k.as_str()))
    {
        return Err(unsupported(k, v));
    }
    let cni_version =
        string(&conf, "cniVersion")?.ok_or_else(|| invalid("cniVersion is missing".into()))?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {cni_version:?} is not supported (weft speaks {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let name = string(&conf, "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("name is missing".into()))?;
    if !valid_config_name(&name) {
        return Err(invalid(format!(
            "name {name:?}: the spec's network names start with a letter or digit, then letters, digits, '_', '.' and '-'"
        )));
    }
    string(&conf, "type")?.ok_or_else(|| invalid("type is missing".into()))?;
    let agent = PathBuf::from(string(&conf, "agent")?.unwrap_or_else(|| DEFAULT_AGENT.into()));
    if !agent.is_absolute() {
        return Err(invalid(format!(
            "agent {:?} must be an absolute path (the agent's API socket)",
            agent.display()
        )));
    }
    let bridge = string(&conf, "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.into());
    if !valid_ifname(&bridge) {
        return Err(invalid(format!(
            "bridge {bridge:?} is not an interface name"
        )));
    }
    let network = string(&conf, "network")?;
    if let Some(n) = network.as_deref().filter(|n| !valid_network_name(n)) {
        return Err(invalid(format!("network {n:?} is not a network name")));
    }
    let ipam = match conf.get("ipam") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(Value::Object(m)) => {
            let t = m
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("ipam.type is missing".into()))?;
            if t.is_empty() || t.contains('/') || t.starts_with('.') {
                return Err(invalid(format!("ipam.type {t:?} is not a plugin name")));
            }
            Some(t.to_string())
        }
        Some(other) => return Err(invalid(format!("ipam must be an object, not {other}"))),
    };
    let port_mappings = match conf.get("runtimeConfig") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(rc)) => runtime_config(rc)?,
        Some(other) => {
            return Err(invalid(format!(
                "runtimeConfig must be an object, not {other}"
            )))
        }
    };
    let prev_result = match conf.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(p) => Some(CniResult::from_json(p).map_err(|e| invalid(format!("prevResult: {e}")))?),
    };
    Ok(NetConf {
        cni_version,
        name,
        agent,
        bridge,
        network,
        ipam,
        port_mappings,
        prev_result,
        service_label: service_label(conf.get("args"))?,
    })
}

/// `runtimeConfig`: the capabilities the conflist declared and the runtime filled in.
fn runtime_config(rc: &Map<String, Value>) -> Result<Vec<PortMapping>, CniError> {
    if let Some((k, v)) = rc.iter().find(|(k, _)| k.as_str() != "portMappings") {
        return Err(unsupported(&format!("runtimeConfig.{k}"), v));
    }
    let Some(list) = rc.get("portMappings").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(list) = list.as_array() else {
        return Err(invalid(
            "runtimeConfig.portMappings must be an array".into(),
        ));
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| port_mapping(i, m))
        .collect()
}

fn port_mapping(i: usize, m: &Value) -> Result<PortMapping, CniError> {
    let at = |what: &str| format!("runtimeConfig.portMappings[{i}].{what}");
    let port = |key: &str| -> Result<u16, CniError> {
        m.get(key)
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(format!("{} must be a port 1..=65535", at(key))))
    };
    let proto = match m.get("protocol").and_then(Value::as_str) {
        None | Some("") => Proto::Tcp,
        Some(p) if p.eq_ignore_ascii_case("tcp") => Proto::Tcp,
        Some(p) if p.eq_ignore_ascii_case("udp") => Proto::Udp,
        Some(p) => {
            return Err(invalid(format!(
                "{} {p:?}: weft publishes tcp and udp",
                at("protocol")
            )))
        }
    };
    // The appliance publishes on its uplink address: a mapping bound to one host
    // address (`-p 127.0.0.1:8080:80`) cannot be honoured, and is refused, not widened.
    match m.get("hostIP").and_then(Value::as_str).unwrap_or("") {
        "" | "0.0.0.0" | "::" => {}
        ip => {
            return Err(invalid(format!(
            "{} {ip:?}: weft publishes on the appliance's uplink address only; leave hostIP empty",
            at("hostIP")
        )))
        }
    }
    Ok(PortMapping {
        host_port: port("hostPort")?,
        container_port: port("containerPort")?,
        proto,
    })
}

/// The service of `args.cni.labels` (`[{"key": "weft.service", "value": "web"}]`).
fn service_label(args: Option<&Value>) -> Result<Option<String>, CniError> {
    let Some(labels) = args
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get("labels"))
        .filter(|l| !l.is_null())
    else {
        return Ok(None);
    };
    let Some(labels) = labels.as_array() else {
        return Err(invalid("args.cni.labels must be an array".into()));
    };
    Ok(labels
        .iter()
        .filter(|l| l.get("key").and_then(Value::as_str) == Some(SERVICE_LABEL))
        .filter_map(|l| l.get("value").and_then(Value::as_str))
        .next_back()
        .map(str::to_string))
}

/// The address a delegated IPAM result gives the container (its first IPv4).
pub fn first_ipv4(r: &CniResult) -> Option<(Ipv4Addr, u8)> {
    r.ips
        .first()
        .map(|ip| (ip.address.address, ip.address.prefix_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(extra: Value) -> Vec<u8> {
        let mut v = json!({"cniVersion": "1.0.0", "name": "weftnet", "type": "weft"});
        if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
            m.extend(e);
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn defaults_and_every_key_of_ours() {
        let c = parse(&conf(json!({}))).unwrap();
        assert_eq!(c.agent, PathBuf::from(DEFAULT_AGENT));
        assert_eq!(c.bridge, DEFAULT_BRIDGE);
        assert_eq!((c.network, c.ipam, c.prev_result), (None, None, None));
        let c = parse(&conf(json!({
            "agent": "/tmp/a.sock", "bridge": "br-grid", "network": "db",
            "ipam": {"type": "host-local", "ranges": []},
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
                {"hostPort": 5353, "containerPort": 53, "protocol": "UDP"},
            ]},
            "args": {"cni": {"labels": [{"key": "weft.service", "value": "web"}]}},
            "dns": {}, "ipMasq": true,
        })))
        .unwrap();
        assert_eq!(c.agent, PathBuf::from("/tmp/a.sock"));
        assert_eq!(
            (c.bridge.as_str(), c.network.as_deref()),
            ("br-grid", Some("db"))
        );
        assert_eq!(c.ipam.as_deref(), Some("host-local"));
        assert_eq!(
            c.port_mappings,
            [
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    proto: Proto::Tcp
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    proto: Proto::Udp
                },
            ]
        );
        assert_eq!(c.service_label.as_deref(), Some("web"));
        assert!(parse(&conf(json!({"cniVersion": "0.4.0"}))).is_ok());
    }

    #[test]
    fn unknown_keys_are_refused_by_name_with_the_spec_code() {
        for (extra, key) in [
            (json!({"mtu": 9000}), "mtu=9000"),
            (
                json!({"runtimeConfig": {"bandwidth": {}}}),
                "runtimeConfig.bandwidth",
            ),
        ] {
            let e = parse(&conf(extra)).unwrap_err();
            assert_eq!(e.code, code::UNSUPPORTED_FIELD);
            assert!(e.msg.contains(key), "{e}");
        }
    }

    #[test]
    fn a_long_unknown_value_is_cut_between_characters() {
        let long = "é".repeat(100);
        let e = parse(&conf(json!({ "mtu": long }))).unwrap_err();
        assert_eq!(e.code, code::UNSUPPORTED_FIELD);
        assert!(
            e.msg.contains(&"é".repeat(76)) && e.msg.ends_with("..."),
            "{e}"
        );
        assert!(!e.msg.contains(&"é".repeat(78)), "{e}");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let bad = |extra: Value, code: u32, words: &str| {
            let e = parse(&conf(extra.clone())).unwrap_err();
            assert_eq!(e.code, code, "{extra}: {e}");
            assert!(e.msg.contains(words), "{extra}: {e}");
        };
        bad(
            json!({"cniVersion": "0.3.1"}),
            code::INCOMPATIBLE_VERSION,
            "0.3.1",
        );
        bad(json!({"cniVersion": 1}), code::INVALID_CONFIG, "cniVersion");
        bad(json!({"name": ""}), code::INVALID_CONFIG, "name");
        bad(json!({"name": "my net"}), code::INVALID_CONFIG, "name");
        bad(json!({"name": "-net"}), code::INVALID_CONFIG, "name");
        bad(
            json!({"agent": "run/a.sock"}),
            code::INVALID_CONFIG,
            "absolute",
        );
        bad(
            json!({"bridge": "a-bridge-name-too-long"}),
            code::INVALID_CONFIG,
            "bridge",
        );
        bad(json!({"network": "a b"}), code::INVALID_CONFIG, "network");
        bad(
            json!({"ipam": {"type": "../x"}}),
            code::INVALID_CONFIG,
            "ipam.type",
        );
        assert_eq!(parse(&conf(json!({"ipam": {}}))).unwrap().ipam, None);
        let pm = |m: Value| json!({"runtimeConfig": {"portMappings": [m]}});
        bad(
            pm(json!({"hostPort": 0, "containerPort": 80})),
            code::INVALID_CONFIG,
            "hostPort",
        );
        bad(
            pm(json!({"hostPort": 80, "containerPort": 70000})),
            code::INVALID_CONFIG,
            "containerPort",
        );
        bad(
            pm(json!({"hostPort": 80, "containerPort": 80, "protocol": "sctp"})),
            code::INVALID_CONFIG,
            "sctp",
        );
        bad(
            pm(json!({"hostPort": 80, "containerPort": 80, "hostIP": "127.0.0.1"})),
            code::INVALID_CONFIG,
            "hostIP",
        );
        bad(
            json!({"prevResult": {"ips": [{"address": "nope"}]}}),
            code::INVALID_CONFIG,
            "prevResult",
        );
        for raw in [&b"not json"[..], b"[1]", b""] {
            assert_eq!(parse(raw).unwrap_err().code, code::DECODING_FAILURE);
        }
    }
}
