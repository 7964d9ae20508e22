//! The sync state machine: from the grid as the store holds it and this node's own
//! document, the state the appliance should run ([`Desired`]), and from what it runs
//! now, the commands that take it there ([`plan`]). Pure: no I/O, no clock; the agent
//! feeds it and carries the commands to the appliance. It never sends a document that
//! the appliance's own validation refuses: generated entries that would make it refuse
//! are left out and reported, the node's own entries never are.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{json, Map, Value};
use weft_appliance::weft_netstack::base::NodeId;
use weft_appliance::Config;

use crate::grid::GridView;
use crate::schema::{parse_node, PortKey, Proto, Scope, DEFAULT_REGION};

/// This node: its number and its own document (as written, `[grid] node` filled in).
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    pub me: NodeId,
    pub doc: Value,
}

/// Where an entry of the desired state comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The node's own document: never left out.
    File,
    /// The store: left out when the appliance would refuse it.
    Grid,
}

/// A service as the appliance should run it: the item without `backends`, and the
/// backends (static ones, then the containers that name it) by address and port.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceState {
    pub spec: Value,
    pub backends: BTreeMap<(Ipv4Addr, u16), u32>,
    /// Backends that come from the spec itself (not from containers).
    pub fixed: BTreeSet<(Ipv4Addr, u16)>,
    pub origin: Origin,
}

/// The state the appliance should run. The document part is `base` plus the four
/// lists; the FDB entries are runtime state, pushed by command after an apply.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Desired {
    /// The node's document without `peers`, `containers`, `publish` and `services`.
    pub base: Map<String, Value>,
    pub peers: BTreeMap<NodeId, (Value, Origin)>,
    /// The underlay address this node reaches each peer at (for `peer-remove` and FDB).
    pub peer_addr: BTreeMap<NodeId, Ipv4Addr>,
    /// By lowercased name.
    pub containers: BTreeMap<String, (Value, Origin)>,
    pub publish: BTreeMap<PortKey, (Value, Origin)>,
    pub services: BTreeMap<String, ServiceState>,
    /// `fdb-add` arguments by (VNI, MAC).
    pub fdb: BTreeMap<(u64, String), Value>,
}

/// A generated entry left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    pub what: String,
    pub reason: String,
}

/// A desired state the appliance would refuse for a reason in the node's own document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unappliable {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Unappliable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid_config [{}]: {}", self.field, self.message)
    }
}

const LISTS: [&str; 4] = ["peers", "containers", "publish", "services"];

fn items<'a>(doc: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    doc.get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// `(name, vni)` of every network of the document.
fn networks(doc: &Value) -> Vec<(String, u64)> {
    items(doc, "networks")
        .filter_map(|n| {
            Some((
                n.get("name")?.as_str()?.to_string(),
                n.get("vni")?.as_u64()?,
            ))
        })
        .collect()
}

impl Desired {
    /// The whole document `apply` sends.
    pub fn document(&self) -> Value {
        let mut doc = self.base.clone();
        let put = |doc: &mut Map<String, Value>, k: &str, v: Vec<Value>| {
            if !v.is_empty() {
                doc.insert(k.to_string(), Value::Array(v));
            }
        };
        put(
            &mut doc,
            "peers",
            self.peers.values().map(|(v, _)| v.clone()).collect(),
        );
        put(
            &mut doc,
            "containers",
            self.containers.values().map(|(v, _)| v.clone()).collect(),
        );
        put(
            &mut doc,
            "publish",
            self.publish.values().map(|(v, _)| v.clone()).collect(),
        );
        put(
            &mut doc,
            "services",
            self.services.values().map(ServiceState::item).collect(),
        );
        Value::Object(doc)
    }

    /// Counts for the status.
    pub fn counts(&self) -> Value {
        json!({
            "peers": self.peers.len(),
            "containers": self.containers.len(),
            "publish": self.publish.len(),
            "services": self.services.len(),
            "fdb": self.fdb.len(),
        })
    }
}

impl ServiceState {
    /// The `[[services]]` item with its backends.
    pub fn item(&self) -> Value {
        let mut v = self.spec.clone();
        let backends: Vec<Value> = self
            .backends
            .iter()
            .map(|((a, p), w)| json!({"address": a.to_string(), "port": p, "weight": w}))
            .collect();
        v["backends"] = Value::Array(backends);
        v
    }
}

/// The state the appliance of `local` should run for `grid`, and what was left out.
pub fn desired(grid: &GridView, local: &Local) -> Result<(Desired, Vec<LeftOut>), Unappliable> {
    let doc = &local.doc;
    let mut d = Desired {
        base: doc.as_object().cloned().unwrap_or_default(),
        ..Desired::default()
    };
    for k in LISTS {
        d.base.remove(k);
    }
    let has_grid = doc.get("grid").is_some_and(Value::is_object);
    let has_dns = doc.get("dns").is_some_and(Value::is_object);
    let region = doc
        .pointer("/grid/region")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_REGION)
        .to_string();
    let nets = networks(doc);
    let net_names: Vec<String> = nets.iter().map(|(n, _)| n.clone()).collect();

    // The node's own entries.
    for p in items(doc, "peers") {
        if let Some(n) = p.get("node").and_then(Value::as_u64).and_then(node_from) {
            d.peers.insert(n, (p.clone(), Origin::File));
            if let Some(a) = file_peer_address(p, &region) {
                d.peer_addr.insert(n, a);
            }
        }
    }
    for c in items(doc, "containers") {
        if let Some(name) = c.get("name").and_then(Value::as_str) {
            d.containers
                .insert(name.to_ascii_lowercase(), (c.clone(), Origin::File));
        }
    }
    for p in items(doc, "publish") {
        if let Some(k) = port_key(p) {
            d.publish.insert(k, (p.clone(), Origin::File));
        }
    }
    for s in items(doc, "services") {
        if let Some(name) = s.get("name").and_then(Value::as_str) {
            d.services
                .insert(name.to_string(), service_state(s, Origin::File));
        }
    }

    // The grid's.
    if has_grid {
        for (id, n) in &grid.nodes {
            if *id == local.me || d.peers.contains_key(id) {
                continue;
            }
            d.peers.insert(*id, (n.peer(&net_names), Origin::Grid));
            d.peer_addr.insert(*id, n.address_from(&region));
        }
    }
    let live: Vec<_> = grid.live_containers(local.me).collect();
    if has_dns {
        for c in &live {
            let k = c.name.to_ascii_lowercase();
            d.containers
                .entry(k)
                .or_insert_with(|| (c.dns_entry(), Origin::Grid));
        }
    }
    // A port published by this node wins over the same port published everywhere.
    for scope in [Scope::Node(local.me), Scope::All] {
        for ((k, s), p) in &grid.publish {
            if *s == scope {
                d.publish
                    .entry(*k)
                    .or_insert_with(|| (p.item(), Origin::Grid));
            }
        }
    }
    for (name, s) in &grid.services {
        if d.services.contains_key(name) {
            continue;
        }
        let mut st = service_state(&s.item, Origin::Grid);
        for c in &live {
            if c.service.as_deref() == Some(name.as_str()) {
                st.backends
                    .entry((c.address, s.backend_port()))
                    .or_insert(1);
            }
        }
        d.services.insert(name.clone(), st);
    }

    let left_out = prune(&mut d)?;

    // FDB entries for the containers kept, on the networks this node has, behind
    // peers kept that carry the network.
    if has_grid {
        for c in &live {
            let (Some(mac), Some(net)) = (&c.mac, &c.network) else {
                continue;
            };
            let Some((_, vni)) = nets.iter().find(|(n, _)| n == net) else {
                continue;
            };
            // Kept, and the grid's (not a record of the node's own of that name).
            let kept = d
                .containers
                .get(&c.name.to_ascii_lowercase())
                .is_some_and(|(_, o)| *o == Origin::Grid);
            if has_dns && !kept {
                continue;
            }
            let entry = if c.node == local.me {
                json!({"vni": vni, "mac": mac, "local": true, "ip": c.address.to_string()})
            } else {
                let Some((peer, Origin::Grid)) = d.peers.get(&c.node) else {
                    continue;
                };
                let carries = peer
                    .get("networks")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|n| n.as_str() == Some(net)));
                let Some(addr) = d.peer_addr.get(&c.node).filter(|_| carries) else {
                    continue;
                };
                json!({"vni": vni, "mac": mac, "peer": addr.to_string(), "ip": c.address.to_string()})
            };
            d.fdb.insert((*vni, mac.to_ascii_lowercase()), entry);
        }
    }
    Ok((d, left_out))
}

fn node_from(n: u64) -> Option<NodeId> {
    u16::try_from(n).ok().and_then(NodeId::new)
}

/// The address in use for a peer item of the node's own document.
fn file_peer_address(p: &Value, region: &str) -> Option<Ipv4Addr> {
    let addr = |k: &str| p.get(k).and_then(Value::as_str)?.parse::<Ipv4Addr>().ok();
    let peer_region = p
        .get("region")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_REGION);
    let chosen = if peer_region == region {
        addr("private_address")
    } else {
        addr("public_address")
    };
    chosen.or_else(|| addr("address"))
}

fn port_key(p: &Value) -> Option<PortKey> {
    let proto: Proto = p.get("proto")?.as_str()?.parse().ok()?;
    let port = u16::try_from(p.get("host_port")?.as_u64()?).ok()?;
    Some(PortKey { proto, port })
}

fn service_state(item: &Value, origin: Origin) -> ServiceState {
    let mut spec = item.clone();
    let mut backends = BTreeMap::new();
    let mut fixed = BTreeSet::new();
    if let Some(obj) = spec.as_object_mut() {
        if let Some(Value::Array(list)) = obj.remove("backends") {
            for b in list {
                let a = b
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse().ok());
                let p = b
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok());
                let w = b.get("weight").and_then(Value::as_u64).unwrap_or(1);
                if let (Some(a), Some(p)) = (a, p) {
                    backends.insert((a, p), u32::try_from(w).unwrap_or(u32::MAX));
                    fixed.insert((a, p));
                }
            }
        }
    }
    ServiceState {
        spec,
        backends,
        fixed,
        origin,
    }
}

/// `list[i]` (and `.backends[j]`) at the start of a field path.
fn locate(field: &str) -> Option<(&str, usize, Option<usize>)> {
    let (list, rest) = field.split_once('[')?;
    let (i, rest) = rest.split_once(']')?;
    let i: usize = i.parse().ok()?;
    let j = rest
        .strip_prefix(".backends[")
        .and_then(|r| r.split_once(']'))
        .and_then(|(j, _)| j.parse().ok());
    Some((list, i, j))
}

/// Validates the document as the appliance will and leaves out the generated entries
/// it would refuse, one at a time, naming each.
fn prune(d: &mut Desired) -> Result<Vec<LeftOut>, Unappliable> {
    let mut left = Vec::new();
    loop {
        let doc = d.document();
        let Err(e) = Config::from_json_value(&doc) else {
            return Ok(left);
        };
        let unappliable = || Unappliable {
            field: e.field.clone(),
            message: e.message.clone(),
        };
        let Some((list, i, j)) = locate(&e.field) else {
            return Err(unappliable());
        };
        let what = match list {
            "peers" => {
                let (&k, (_, origin)) = d.peers.iter().nth(i).ok_or_else(unappliable)?;
                if *origin == Origin::File {
                    return Err(unappliable());
                }
                d.peers.remove(&k);
                d.peer_addr.remove(&k);
                format!("peer {k}")
            }
            "containers" => {
                let (k, (_, origin)) = d.containers.iter().nth(i).ok_or_else(unappliable)?;
                if *origin == Origin::File {
                    return Err(unappliable());
                }
                let k = k.clone();
                d.containers.remove(&k);
                format!("container {k}")
            }
            "publish" => {
                let (&k, (_, origin)) = d.publish.iter().nth(i).ok_or_else(unappliable)?;
                if *origin == Origin::File {
                    return Err(unappliable());
                }
                d.publish.remove(&k);
                format!("published port {k}")
            }
            "services" => {
                let (name, st) = d.services.iter_mut().nth(i).ok_or_else(unappliable)?;
                let name = name.clone();
                let backend = j.and_then(|j| st.backends.keys().nth(j).copied());
                match backend {
                    Some(b) if !st.fixed.contains(&b) => {
                        st.backends.remove(&b);
                        format!("backend {}:{} of service {name}", b.0, b.1)
                    }
                    _ if st.origin == Origin::Grid => {
                        d.services.remove(&name);
                        format!("service {name}")
                    }
                    _ => return Err(unappliable()),
                }
            }
            _ => return Err(unappliable()),
        };
        left.push(LeftOut {
            what,
            reason: format!("{}: {}", e.field, e.message),
        });
    }
}

/// One appliance command.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub cmd: &'static str,
    pub args: Value,
}

impl Op {
    fn new(cmd: &'static str, args: Value) -> Op {
        Op { cmd, args }
    }

    /// A removal whose target is already gone has done its job.
    pub fn tolerates_not_found(&self) -> bool {
        self.cmd.ends_with("-remove")
    }
}

/// The whole state at once: one `apply`, then every FDB entry.
pub fn full_plan(desired: &Desired) -> Vec<Op> {
    let mut ops = vec![Op::new("apply", desired.document())];
    ops.extend(desired.fdb.values().map(|e| Op::new("fdb-add", e.clone())));
    ops
}

/// The commands that take an appliance running `applied` (None: unknown, e.g. it
/// just greeted) to `desired`. Removals go first (peers last of all, since removing
/// one drops its FDB entries), then peers are added, then everything else.
pub fn plan(applied: Option<&Desired>, desired: &Desired) -> Vec<Op> {
    let Some(old) = applied else {
        return full_plan(desired);
    };
    if old.base != desired.base {
        // The node's own sections changed: the document as a whole (which may rebuild
        // the overlay's tables), then every FDB entry again, stale ones removed.
        let mut ops = vec![Op::new("apply", desired.document())];
        for (vni, mac) in old.fdb.keys() {
            if !desired.fdb.contains_key(&(*vni, mac.clone())) {
                ops.push(Op::new("fdb-remove", json!({"vni": vni, "mac": mac})));
            }
        }
        ops.extend(desired.fdb.values().map(|e| Op::new("fdb-add", e.clone())));
        return ops;
    }
    let mut first = Vec::new(); // removals
    let mut peers_in = Vec::new();
    let mut then = Vec::new(); // additions
    let mut last = Vec::new(); // peer removals

    for (n, (old_item, _)) in &old.peers {
        let old_addr = old.peer_addr.get(n);
        match desired.peers.get(n) {
            None => {
                if let Some(a) = old_addr {
                    last.push(Op::new("peer-remove", json!({"address": a.to_string()})));
                }
            }
            Some((item, _)) if item != old_item => {
                if let Some(a) = old_addr.filter(|a| desired.peer_addr.get(n) != Some(a)) {
                    first.push(Op::new("peer-remove", json!({"address": a.to_string()})));
                }
            }
            Some(_) => {}
        }
    }
    for (n, (item, _)) in &desired.peers {
        if old.peers.get(n).map(|(v, _)| v) != Some(item) {
            peers_in.push(Op::new("peer-add", item.clone()));
        }
    }

    for (k, (old_item, _)) in &old.containers {
        if !desired.containers.contains_key(k) {
            let name = old_item.get("name").cloned().unwrap_or(json!(k));
            first.push(Op::new("container-remove", json!({ "name": name })));
        }
    }
    for (k, (item, _)) in &desired.containers {
        if old.containers.get(k).map(|(v, _)| v) != Some(item) {
            then.push(Op::new("container-add", item.clone()));
        }
    }

    for (k, (old_item, _)) in &old.publish {
        if desired.publish.get(k).map(|(v, _)| v) != Some(old_item) {
            first.push(Op::new(
                "publish-remove",
                json!({"proto": k.proto, "host_port": k.port}),
            ));
        }
    }
    for (k, (item, _)) in &desired.publish {
        if old.publish.get(k).map(|(v, _)| v) != Some(item) {
            then.push(Op::new("publish-add", item.clone()));
        }
    }

    for name in old.services.keys() {
        if !desired.services.contains_key(name) {
            first.push(Op::new("service-remove", json!({ "name": name })));
        }
    }
    for (name, st) in &desired.services {
        match old.services.get(name) {
            Some(o) if o.spec == st.spec => {
                for (a, p) in o.backends.keys() {
                    if !st.backends.contains_key(&(*a, *p)) {
                        first.push(Op::new(
                            "backend-remove",
                            json!({"service": name, "address": a.to_string(), "port": p}),
                        ));
                    }
                }
                for ((a, p), w) in &st.backends {
                    if o.backends.get(&(*a, *p)) != Some(w) {
                        then.push(Op::new(
                            "backend-set",
                            json!({"service": name, "address": a.to_string(), "port": p, "weight": w}),
                        ));
                    }
                }
            }
            _ => then.push(Op::new("service-add", st.item())),
        }
    }

    fdb_diff(old, desired, &mut first, &mut then);

    let mut ops = first;
    ops.extend(peers_in);
    ops.extend(then);
    ops.extend(last);
    ops
}

fn fdb_diff(old: &Desired, new: &Desired, removes: &mut Vec<Op>, adds: &mut Vec<Op>) {
    for ((vni, mac), e) in &old.fdb {
        if new.fdb.get(&(*vni, mac.clone())) != Some(e) {
            removes.push(Op::new("fdb-remove", json!({"vni": vni, "mac": mac})));
        }
    }
    for (k, e) in &new.fdb {
        if old.fdb.get(k) != Some(e) {
            adds.push(Op::new("fdb-add", e.clone()));
        }
    }
}

/// The node number a document names, if any.
pub fn doc_node(doc: &Value) -> Option<NodeId> {
    let n = doc.pointer("/grid/node")?;
    n.as_u64()
        .and_then(node_from)
        .or_else(|| n.as_str().and_then(parse_node))
}

#[cfg(test)]
mod tests;
