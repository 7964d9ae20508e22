//! The plugin's conversation with `weft agent` over its API socket, through the one
//! control client (`weft_control::client::Client`): what the network is like, an
//! address, the registration, published ports, and releasing everything one
//! attachment holds. The agent's errors become the spec's: unreachable or not ready is
//! "try again later", a full share is the pool exhausted, a conflict is a refusal.
//! It never touches an interface.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weft_appliance::protocol::ErrorCode;
use weft_control::client::{Client, ControlError};

use crate::config::PortMapping;
use crate::result::Dns;
use crate::spec::{code, CniError};

/// How long the plugin waits for the agent's socket and greeting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take (a write goes through etcd).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected agent.
pub struct Agent {
    client: Client,
    socket: String,
}

/// The network as the agent describes it (`network-info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    pub network: String,
    pub vlan: Option<u16>,
    pub mtu: u32,
    /// The node address: the containers' gateway and nameserver.
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub dns: Dns,
}

fn bad_reply(what: &str, v: &Value) -> CniError {
    CniError::new(
        code::TRY_AGAIN,
        format!("the weft agent's {what} reply is not understood: {v}"),
    )
}

impl Agent {
    /// Connects to the agent at `socket`; unreachable is "try again later".
    pub fn connect(socket: &Path) -> Result<Agent, CniError> {
        let mut client = Client::connect(socket, CONNECT_TIMEOUT).map_err(|e| {
            CniError::new(
                code::TRY_AGAIN,
                format!(
                    "the weft agent is not reachable at {} (is `weft agent` running? \"agent\" in the network config names its API socket)",
                    socket.display()
                ),
            )
            .with_details(e.to_string())
        })?;
        client.set_timeout(REQUEST_TIMEOUT);
        Ok(Agent {
            client,
            socket: socket.display().to_string(),
        })
    }

    /// One request; the agent's refusal mapped to the spec's codes.
    fn call(&mut self, cmd: &str, args: Value) -> Result<Value, CniError> {
        let reply = self.client.call(cmd, Some(args)).map_err(|e| {
            let transient = !matches!(e, ControlError::BadReply(_) | ControlError::Remote(_));
            CniError::new(
                if transient {
                    code::TRY_AGAIN
                } else {
                    code::REFUSED
                },
                format!("{cmd} through the weft agent at {} failed", self.socket),
            )
            .with_details(e.to_string())
        })?;
        reply.outcome.map_err(|e| {
            let code = match e.code {
                ErrorCode::NotReady => code::TRY_AGAIN,
                ErrorCode::InvalidConfig
                    if e.field.as_deref() == Some("address")
                        && e.message.contains("no free address") =>
                {
                    code::POOL_EXHAUSTED
                }
                ErrorCode::InvalidConfig if e.field.as_deref() == Some("network") => {
                    code::INVALID_CONFIG
                }
                _ => code::REFUSED,
            };
            let field = e
                .field
                .as_deref()
                .map(|f| format!(" [{f}]"))
                .unwrap_or_default();
            CniError::new(
                code,
                format!("the weft agent refused {cmd}{field}: {}", e.message),
            )
        })
    }

    pub fn network_info(&mut self, network: Option<&str>) -> Result<NetworkInfo, CniError> {
        let args = match network {
            Some(n) => json!({ "network": n }),
            None => json!({}),
        };
        let v = self.call("network-info", args)?;
        let parsed = (|| {
            Some(NetworkInfo {
                network: v.get("network")?.as_str()?.to_string(),
                vlan: match v.get("vlan") {
                    None | Some(Value::Null) => None,
                    Some(x) => Some(u16::try_from(x.as_u64()?).ok()?),
                },
                mtu: u32::try_from(v.get("mtu")?.as_u64()?).ok()?,
                gateway: v.get("gateway")?.as_str()?.parse().ok()?,
                prefix_len: u8::try_from(v.get("prefix_len")?.as_u64()?).ok()?,
                dns: v.get("dns").map(Dns::from_json).unwrap_or_default(),
            })
        })();
        parsed.ok_or_else(|| bad_reply("network-info", &v))
    }

    /// A free address of the node's share for `name`, tagged with `owner`.
    pub fn allocate(&mut self, name: &str, owner: &str) -> Result<Ipv4Addr, CniError> {
        let v = self.call(
            "address-allocate",
            json!({"container": name, "owner": owner}),
        )?;
        v.get("address")
            .and_then(Value::as_str)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad_reply("address-allocate", &v))
    }

    pub fn register(&mut self, c: &Registration) -> Result<(), CniError> {
        let mut args = json!({
            "name": c.name,
            "address": c.address.to_string(),
            "mac": c.mac,
            "network": c.network,
            "owner": c.owner,
        });
        if let Some(s) = &c.service {
            args["service"] = json!(s);
        }
        self.call("container-add", args).map(|_| ())
    }

    pub fn publish(
        &mut self,
        pm: &PortMapping,
        address: Ipv4Addr,
        owner: &str,
    ) -> Result<(), CniError> {
        self.call(
            "publish-add",
            json!({
                "proto": pm.proto.name(),
                "host_port": pm.host_port,
                "container_address": address.to_string(),
                "container_port": pm.container_port,
                "owner": owner,
            }),
        )
        .map(|_| ())
    }

    /// What `owner` holds: `{"containers", "addresses", "publish"}`.
    pub fn owned(&mut self, owner: &str) -> Result<Value, CniError> {
        self.call("owner-show", json!({ "owner": owner }))
    }

    /// Releases everything `owner` holds (nothing held is no error).
    pub fn release(&mut self, owner: &str) -> Result<Value, CniError> {
        self.call("owner-release", json!({ "owner": owner }))
    }
}

/// A container registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub address: Ipv4Addr,
    pub mac: String,
    pub network: String,
    pub service: Option<String>,
    pub owner: String,
}
