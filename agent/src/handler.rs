//! The agent API's commands: its own (`agent-status`, the grid writes, address
//! allocation, `apply` of the node's document, what a network is like, and what an
//! owner such as the CNI plugin holds, to show or release) and every other command passed through
//! to the appliance and answered with the appliance's reply. Grid writes go to the
//! store only; the appliance follows from the watch, like every other host's.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use weft_appliance::protocol::{Command, ErrorBody, ErrorCode};
use weft_control::document::Document;

use crate::agent::{Ident, Shared};
use crate::api::{args_object, Handler};
use crate::netinfo::network_info;
use crate::registry::{self, Refusal};
use crate::schema::{ContainerRecord, PortKey, Proto, PublishRecord, Scope, ServiceRecord};

/// The agent's own commands (every other name goes to the appliance).
pub const AGENT_COMMANDS: &[&str] = &[
    "agent-status",
    "apply",
    "container-add",
    "container-remove",
    "publish-add",
    "publish-remove",
    "service-add",
    "service-remove",
    "backend-set",
    "backend-remove",
    "address-allocate",
    "address-release",
    "network-info",
    "owner-show",
    "owner-release",
];

fn invalid(field: &str, message: String) -> ErrorBody {
    ErrorBody::with_field(ErrorCode::InvalidConfig, message, field)
}

/// Typed `args`, refusals naming the field.
fn typed<T: serde::de::DeserializeOwned>(args: Map<String, Value>) -> Result<T, ErrorBody> {
    weft_appliance::field_path::from_value(&Value::Object(args)).map_err(|e| ErrorBody {
        code: ErrorCode::InvalidConfig,
        message: e.message,
        field: Some(e.field),
    })
}

fn done(revision: i64) -> Value {
    json!({"changed": true, "revision": revision})
}

fn refused(r: Refusal) -> ErrorBody {
    r.body()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerAdd {
    name: String,
    #[serde(default)]
    service: Option<String>,
    address: Ipv4Addr,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ScopeArg {
    #[default]
    Node,
    All,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishAdd {
    proto: Proto,
    host_port: u16,
    container_address: Ipv4Addr,
    container_port: u16,
    #[serde(default)]
    scope: ScopeArg,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRemove {
    proto: Proto,
    host_port: u16,
    #[serde(default)]
    scope: ScopeArg,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Backend {
    service: String,
    address: Ipv4Addr,
    port: u16,
    #[serde(default)]
    weight: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Allocate {
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NetworkArg {
    #[serde(default)]
    network: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByOwner {
    owner: String,
}

/// The owner tag of a request, refused (naming `owner`) unless it is valid.
fn owner_arg(owner: Option<String>) -> Result<Option<String>, ErrorBody> {
    crate::schema::check_owner(owner.as_deref()).map_err(|m| {
        let message = m
            .split_once(": ")
            .map_or(m.as_str(), |(_, m)| m)
            .to_string();
        invalid("owner", message)
    })?;
    Ok(owner)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    address: Ipv4Addr,
}

impl Shared {
    fn joined(&self) -> Result<Ident, ErrorBody> {
        self.ident().ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::NotReady,
                "the agent has not joined the grid yet (is the store reachable?)".into(),
            )
        })
    }

    fn scope(&self, s: ScopeArg, id: &Ident) -> Scope {
        match s {
            ScopeArg::Node => Scope::Node(id.node),
            ScopeArg::All => Scope::All,
        }
    }

    async fn container_add(&self, args: Map<String, Value>) -> Result<Value, ErrorBody> {
        let id = self.joined()?;
        let a: ContainerAdd = typed(args)?;
        let network = match a.network {
            Some(n) if !id.networks.contains(&n) => {
                return Err(invalid(
                    "network",
                    format!("this node has no network {n:?} (it has {:?})", id.networks),
                ))
            }
            Some(n) => Some(n),
            None => id.networks.first().cloned(),
        };
        let rec = ContainerRecord {
            name: a.name,
            service: a.service,
            network,
            address: a.address,
            mac: a.mac.map(|m| m.to_ascii_lowercase()),
            node: id.node,
            owner: a.owner,
        };
        if let Err(m) = rec.check() {
            let (field, message) = m.split_once(": ").unwrap_or(("name", &m));
            return Err(invalid(field, message.to_string()));
        }
        registry::add_container(&self.store, &self.prefix, id.node, &rec)
            .await
            .map(done)
            .map_err(refused)
    }

    async fn handle_agent(&self, cmd: &str, args: Option<Value>) -> Result<Value, ErrorBody> {
        let (store, prefix) = (&self.store, &self.prefix);
        match cmd {
            "agent-status" => {
                if !args_object(args)?.is_empty() {
                    return Err(ErrorBody::with_field(
                        ErrorCode::InvalidRequest,
                        "agent-status takes no arguments".into(),
                        "args",
                    ));
                }
                Ok(self.status.lock().map(|s| s.clone()).unwrap_or(Value::Null))
            }
            "apply" => self.apply(args).await,
            "container-add" => self.container_add(args_object(args)?).await,
            "container-remove" => {
                let a: ByName = typed(args_object(args)?)?;
                registry::remove_container(store, prefix, &a.name)
                    .await
                    .map(done)
                    .map_err(refused)
            }
            "publish-add" => {
                let id = self.joined()?;
                let a: PublishAdd = typed(args_object(args)?)?;
                let rec = PublishRecord {
                    proto: a.proto,
                    host_port: a.host_port,
                    container_address: a.container_address,
                    container_port: a.container_port,
                    owner: owner_arg(a.owner)?,
                };
                if let Err(m) = rec.check() {
                    let (field, message) = m.split_once(": ").unwrap_or(("host_port", &m));
                    return Err(invalid(field, message.to_string()));
                }
                registry::add_publish(store, prefix, self.scope(a.scope, &id), &rec)
                    .await
                    .map(done)
                    .map_err(refused)
            }
            "publish-remove" => {
                let id = self.joined()?;
                let a: PublishRemove = typed(args_object(args)?)?;
                let pk = PortKey {
                    proto: a.proto,
                    port: a.host_port,
                };
                registry::remove_publish(store, prefix, self.scope(a.scope, &id), pk)
                    .await
                    .map(done)
                    .map_err(refused)
            }
            "service-add" => {
                let v = Value::Object(args_object(args)?);
                let rec = ServiceRecord::from_value(&v).map_err(|m| {
                    let (field, message) = m.split_once(": ").unwrap_or(("name", &m));
                    invalid(field, message.to_string())
                })?;
                registry::put_service(store, prefix, &rec)
                    .await
                    .map(done)
                    .map_err(refused)
            }
            "service-remove" => {
                let a: ByName = typed(args_object(args)?)?;
                registry::remove_service(store, prefix, &a.name)
                    .await
                    .map(done)
                    .map_err(refused)
            }
            "backend-set" | "backend-remove" => {
                let a: Backend = typed(args_object(args)?)?;
                let weight = (cmd == "backend-set").then(|| a.weight.unwrap_or(1));
                if cmd == "backend-remove" && a.weight.is_some() {
                    return Err(ErrorBody::with_field(
                        ErrorCode::InvalidConfig,
                        "backend-remove takes no weight".into(),
                        "weight",
                    ));
                }
                registry::edit_backend(store, prefix, &a.service, a.address, a.port, weight)
                    .await
                    .map(done)
                    .map_err(refused)
            }
            "address-allocate" => {
                let id = self.joined()?;
                let a: Allocate = typed(args_object(args)?)?;
                let owner = owner_arg(a.owner)?;
                let share = id.share.ok_or_else(|| {
                    invalid(
                        "address",
                        "the grid subnet is too small to give each node a share".into(),
                    )
                })?;
                let taken: std::collections::BTreeSet<Ipv4Addr> = self
                    .view
                    .read()
                    .map(|v| v.addresses.keys().copied().collect())
                    .unwrap_or_default();
                let (address, revision) = registry::allocate_address(
                    store,
                    prefix,
                    id.node,
                    share,
                    &|a| taken.contains(&a),
                    a.container,
                    owner,
                )
                .await
                .map_err(refused)?;
                let doc = self.node_doc.lock().map(|d| d.clone()).unwrap_or_default();
                let mtu = network_info(&doc, &id, None)
                    .ok()
                    .and_then(|i| i["mtu"].as_u64())
                    .unwrap_or(id.mtu);
                Ok(json!({
                    "address": address.to_string(),
                    "prefix_len": id.subnet.1,
                    "subnet": format!("{}/{}", id.subnet.0, id.subnet.1),
                    "gateway": id.gateway().to_string(),
                    "network": id.networks.first(),
                    "mtu": mtu,
                    "node": id.node.get(),
                    "revision": revision,
                }))
            }
            "address-release" => {
                let id = self.joined()?;
                let a: Release = typed(args_object(args)?)?;
                registry::release_address(store, prefix, id.node, a.address)
                    .await
                    .map(done)
                    .map_err(refused)
            }
            "network-info" => {
                let id = self.joined()?;
                let a: NetworkArg = typed(args_object(args)?)?;
                let doc = self.node_doc.lock().map(|d| d.clone()).unwrap_or_default();
                network_info(&doc, &id, a.network.as_deref())
            }
            "owner-show" | "owner-release" => {
                let id = self.joined()?;
                let a: ByOwner = typed(args_object(args)?)?;
                let owner = owner_arg(Some(a.owner))?.unwrap_or_default();
                if cmd == "owner-show" {
                    let held = registry::owned(store, prefix, id.node, &owner)
                        .await
                        .map_err(refused)?;
                    return Ok(held.json());
                }
                let (released, revision) = registry::release_owned(store, prefix, id.node, &owner)
                    .await
                    .map_err(refused)?;
                let mut v = released.json();
                v["changed"] = json!(revision.is_some());
                if let Some(r) = revision {
                    v["revision"] = json!(r);
                }
                Ok(v)
            }
            other => Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {other:?}"),
            )),
        }
    }

    /// `apply` through the agent replaces the node's own document (until the agent
    /// restarts); the grid's sections are added to it as always.
    async fn apply(&self, args: Option<Value>) -> Result<Value, ErrorBody> {
        let id = self.joined()?;
        let Some(mut doc) = args.filter(Value::is_object) else {
            return Err(ErrorBody::with_field(
                ErrorCode::InvalidRequest,
                "apply needs the configuration document as `args`".into(),
                "args",
            ));
        };
        if let Some(g) = doc.get_mut("grid").and_then(Value::as_object_mut) {
            match g.get("node").and_then(Value::as_u64) {
                Some(n) if n != u64::from(id.node.get()) => {
                    return Err(invalid(
                        "grid.node",
                        format!("this node is node {} in the grid", id.node),
                    ))
                }
                _ => {
                    g.insert("node".into(), json!(id.node.get()));
                }
            }
        }
        Document::from_json(doc.clone()).map_err(|e| invalid(&e.0.field, e.0.message))?;
        let (tx, rx) = oneshot::channel();
        self.docs
            .send((doc, tx))
            .map_err(|_| ErrorBody::new(ErrorCode::NotReady, "the agent is stopping".into()))?;
        let changed = rx.await.unwrap_or(false);
        Ok(json!({ "changed": changed }))
    }

    async fn pass_through(&self, cmd: String, args: Option<Value>) -> Result<Value, ErrorBody> {
        if let Err(e) = Command::parse(&cmd, args.as_ref()) {
            if e.code == ErrorCode::UnknownCommand {
                let mut known: Vec<&str> = Command::NAMES.to_vec();
                for c in AGENT_COMMANDS {
                    if !known.contains(c) {
                        known.push(c);
                    }
                }
                return Err(ErrorBody::new(
                    ErrorCode::UnknownCommand,
                    format!("unknown command {cmd:?}; known: {}", known.join(", ")),
                ));
            }
            return Err(e);
        }
        match self.link.call(&cmd, args).await {
            Ok(reply) => reply.outcome,
            Err(e) => Err(ErrorBody::new(
                ErrorCode::NotReady,
                format!("the appliance is not reachable: {e}"),
            )),
        }
    }
}

impl Handler for Shared {
    async fn handle(&self, cmd: String, args: Option<Value>) -> Result<Value, ErrorBody> {
        if AGENT_COMMANDS.contains(&cmd.as_str()) {
            self.handle_agent(&cmd, args).await
        } else {
            self.pass_through(cmd, args).await
        }
    }
}
