//! The grid's writes and the rules that keep it consistent across hosts: node ids
//! (allocated by transaction, kept by name), container registrations and overlay
//! addresses (unique in the grid), published ports (one per port on a node, or one on
//! every node), services. Every write is a read, a decision, and a transaction whose
//! conditions are what was read: a concurrent writer makes it fail and it is decided
//! again, so two hosts never both win. It never touches an appliance.

use std::net::Ipv4Addr;

use serde_json::{json, Value};
use weft_appliance::protocol::{ErrorBody, ErrorCode};
use weft_appliance::weft_netstack::base::NodeId;

use crate::schema::{
    decode, encode, key_of, AddressClaim, ContainerRecord, IdClaim, Key, NameClaim, NodeRecord,
    PortKey, Prefix, PublishRecord, Record, Scope, ServiceRecord,
};
use crate::store::{Cmp, Kv, Store, StoreError, Txn, Write};

/// How often a write is decided again after losing a race.
const RETRIES: usize = 16;

/// Why a grid write was refused; becomes the API's error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The store could not be reached: nothing changed.
    Store(StoreError),
    /// The request conflicts with the grid (a taken name, address, port).
    Conflict {
        field: &'static str,
        message: String,
    },
    NotFound {
        field: &'static str,
        message: String,
    },
    /// Kept losing races (a very busy grid); safe to try again.
    Contended,
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        Refusal::Store(e)
    }
}

impl Refusal {
    pub fn body(&self) -> ErrorBody {
        match self {
            Refusal::Store(e) => ErrorBody::new(
                ErrorCode::NotReady,
                format!("the grid store is unreachable, nothing changed: {e}"),
            ),
            Refusal::Conflict { field, message } => {
                ErrorBody::with_field(ErrorCode::InvalidConfig, message.clone(), field)
            }
            Refusal::NotFound { field, message } => {
                ErrorBody::with_field(ErrorCode::NotFound, message.clone(), field)
            }
            Refusal::Contended => ErrorBody::new(
                ErrorCode::NotReady,
                "the grid changed under this request too often; try again".into(),
            ),
        }
    }
}

fn conflict(field: &'static str, message: String) -> Refusal {
    Refusal::Conflict { field, message }
}

fn put(prefix: &Prefix, record: &Record) -> Write {
    Write::Put {
        key: prefix.key(&key_of(record)),
        value: encode(record),
        lease: 0,
    }
}

/// The condition "this key is as read": absent, or at the revision read.
fn as_read(key: String, kv: &Option<Kv>) -> Cmp {
    match kv {
        None => Cmp::Absent(key),
        Some(kv) => Cmp::ModRevision(key, kv.mod_revision),
    }
}

/// Reads and decodes one key (a bad value reads as absent-but-present: `Some(None)`).
async fn read(
    store: &Store,
    prefix: &Prefix,
    key: &Key,
) -> Result<(Option<Kv>, Option<Record>), StoreError> {
    let full = prefix.key(key);
    let kv = store.get(&full).await?;
    let rec = kv
        .as_ref()
        .and_then(|kv| decode(&key.to_string(), &kv.value).ok().map(|(_, r)| r));
    Ok((kv, rec))
}

/// Why a node could not take its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterError {
    Store(StoreError),
    /// The config names an id that the name does not hold, or another name holds.
    IdMismatch(String),
    /// Every id is taken.
    /// Every id up to this one is taken.
    Full(u16),
    /// A live node holds this id under another lease (the same host restarting, or a
    /// second host with the same name).
    Busy {
        node: NodeId,
        lease: i64,
        same_host: bool,
    },
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::Store(e) => write!(f, "{e}"),
            RegisterError::IdMismatch(m) => f.write_str(m),
            RegisterError::Full(max) => write!(f, "every node id 1..={max} is taken in this grid"),
            RegisterError::Busy {
                node, same_host, ..
            } => {
                if *same_host {
                    write!(
                        f,
                        "node {node} is still alive under an earlier lease (this host restarting?)"
                    )
                } else {
                    write!(
                        f,
                        "node {node} is alive at another address: two hosts with one name?"
                    )
                }
            }
        }
    }
}

impl From<StoreError> for RegisterError {
    fn from(e: StoreError) -> Self {
        RegisterError::Store(e)
    }
}

/// The id `name` holds, claiming one if it holds none (`wanted`, or the lowest free);
/// `max`: the highest id the grid's address plan has a share for ([`max_node`]).
pub async fn claim_id(
    store: &Store,
    prefix: &Prefix,
    name: &str,
    wanted: Option<NodeId>,
    max: u16,
) -> Result<NodeId, RegisterError> {
    for _ in 0..RETRIES {
        let name_key = Key::NodeName(name.to_string());
        if let (_, Some(Record::NodeName(_, c))) = read(store, prefix, &name_key).await? {
            if let Some(w) = wanted.filter(|w| *w != c.node) {
                return Err(RegisterError::IdMismatch(format!(
                    "node name {name:?} holds id {} in this grid, the config says [grid] node = {w}",
                    c.node
                )));
            }
            return Ok(c.node);
        }
        let (taken, _) = store.range(&prefix.dir("node-ids/")).await?;
        let taken: Vec<String> = taken.into_iter().map(|kv| kv.key).collect();
        let free = |id: NodeId| !taken.contains(&prefix.key(&Key::NodeIdClaim(id)));
        let id = match wanted {
            Some(w) if w.get() > max => {
                return Err(RegisterError::IdMismatch(format!(
                    "node id {w} ([grid] node in the config) is beyond 1..={max}, the ids \
                     the agents' address plan has a share of this grid subnet for (a /14 \
                     or wider has 1016; docs/agent.md)"
                )))
            }
            Some(w) if free(w) => w,
            Some(w) => {
                return Err(RegisterError::IdMismatch(format!(
                    "node id {w} ([grid] node in the config) is held by another name"
                )))
            }
            None => (1..=max)
                .filter_map(NodeId::new)
                .find(|id| free(*id))
                .ok_or(RegisterError::Full(max))?,
        };
        let txn = Txn {
            when: vec![
                Cmp::Absent(prefix.key(&name_key)),
                Cmp::Absent(prefix.key(&Key::NodeIdClaim(id))),
            ],
            then: vec![
                put(
                    prefix,
                    &Record::NodeName(name.to_string(), NameClaim { node: id }),
                ),
                put(
                    prefix,
                    &Record::NodeIdClaim(
                        id,
                        IdClaim {
                            name: name.to_string(),
                        },
                    ),
                ),
            ],
        };
        if store.txn(txn).await?.ok {
            return Ok(id);
        }
    }
    Err(RegisterError::Store(StoreError(
        "node id allocation kept losing races".into(),
    )))
}

/// Puts the node's live entry under `lease`, unless another lease holds it.
pub async fn announce(
    store: &Store,
    prefix: &Prefix,
    record: &NodeRecord,
    lease: i64,
) -> Result<(), RegisterError> {
    let key = prefix.key(&Key::Node(record.node));
    for _ in 0..RETRIES {
        let cur = store.get(&key).await?;
        if let Some(kv) = &cur {
            if kv.lease != 0 && kv.lease != lease {
                let same_host = decode(&Key::Node(record.node).to_string(), &kv.value)
                    .ok()
                    .is_some_and(|(_, r)| {
                        matches!(r, Record::Node(n) if n.address == record.address && n.name == record.name)
                    });
                return Err(RegisterError::Busy {
                    node: record.node,
                    lease: kv.lease,
                    same_host,
                });
            }
        }
        let txn = Txn {
            when: vec![as_read(key.clone(), &cur)],
            then: vec![Write::Put {
                key: key.clone(),
                value: encode(&Record::Node(record.clone())),
                lease,
            }],
        };
        if store.txn(txn).await?.ok {
            return Ok(());
        }
    }
    Err(RegisterError::Store(StoreError(
        "announcing the node kept losing races".into(),
    )))
}

/// Registers a container (or replaces this node's registration of the same name).
/// Its name must be free in the grid and its address free or allocated to this node.
pub async fn add_container(
    store: &Store,
    prefix: &Prefix,
    me: NodeId,
    rec: &ContainerRecord,
) -> Result<i64, Refusal> {
    let lname = rec.name.to_ascii_lowercase();
    for _ in 0..RETRIES {
        let ckey = Key::Container(lname.clone());
        let (ckv, cur) = read(store, prefix, &ckey).await?;
        let mut then = vec![
            put(prefix, &Record::Container(rec.clone())),
            put(
                prefix,
                &Record::Address(
                    rec.address,
                    AddressClaim {
                        node: me,
                        container: Some(rec.name.clone()),
                        owner: rec.owner.clone(),
                    },
                ),
            ),
        ];
        let mut when = vec![as_read(prefix.key(&ckey), &ckv)];
        if let Some(Record::Container(old)) = &cur {
            if old.node != me {
                return Err(conflict(
                    "name",
                    format!(
                        "container {:?} is registered on node {}; remove it there first",
                        old.name, old.node
                    ),
                ));
            }
            if old.address != rec.address {
                // The old address goes with the old registration.
                let okey = Key::Address(old.address);
                let (okv, orec) = read(store, prefix, &okey).await?;
                if let Some(Record::Address(_, c)) = &orec {
                    if c.node == me
                        && c.container.as_deref().map(str::to_ascii_lowercase)
                            == Some(lname.clone())
                    {
                        when.push(as_read(prefix.key(&okey), &okv));
                        then.push(Write::Delete(prefix.key(&okey)));
                    }
                }
            }
        }
        let akey = Key::Address(rec.address);
        let (akv, arec) = read(store, prefix, &akey).await?;
        if let Some(Record::Address(_, c)) = &arec {
            let same = c.container.as_deref().map(str::to_ascii_lowercase) == Some(lname.clone());
            match (&c.container, c.node == me) {
                (Some(other), _) if !same => {
                    return Err(conflict(
                        "address",
                        format!(
                            "address {} is used by container {other:?} on node {}",
                            rec.address, c.node
                        ),
                    ))
                }
                (None, false) => {
                    return Err(conflict(
                        "address",
                        format!("address {} is allocated to node {}", rec.address, c.node),
                    ))
                }
                _ => {}
            }
        }
        when.push(as_read(prefix.key(&akey), &akv));
        let c = store.txn(Txn { when, then }).await?;
        if c.ok {
            return Ok(c.revision);
        }
    }
    Err(Refusal::Contended)
}

/// Removes a container's registration and releases its address.
pub async fn remove_container(store: &Store, prefix: &Prefix, name: &str) -> Result<i64, Refusal> {
    let lname = name.to_ascii_lowercase();
    for _ in 0..RETRIES {
        let ckey = Key::Container(lname.clone());
        let (ckv, cur) = read(store, prefix, &ckey).await?;
        let Some(ckv) = ckv else {
            return Err(Refusal::NotFound {
                field: "name",
                message: format!("no container named {name:?} in the grid"),
            });
        };
        let mut when = vec![Cmp::ModRevision(prefix.key(&ckey), ckv.mod_revision)];
        let mut then = vec![Write::Delete(prefix.key(&ckey))];
        if let Some(Record::Container(old)) = &cur {
            let akey = Key::Address(old.address);
            let (akv, arec) = read(store, prefix, &akey).await?;
            if let (Some(akv), Some(Record::Address(_, c))) = (&akv, &arec) {
                if c.container.as_deref().map(str::to_ascii_lowercase) == Some(lname.clone()) {
                    when.push(Cmp::ModRevision(prefix.key(&akey), akv.mod_revision));
                    then.push(Write::Delete(prefix.key(&akey)));
                }
            }
        }
        let c = store.txn(Txn { when, then }).await?;
        if c.ok {
            return Ok(c.revision);
        }
    }
    Err(Refusal::Contended)
}

/// The highest node id an agent-run grid with a subnet of `prefix_len` numbers (see
/// [`node_share`]): 254 in a /16 to a /22 (today's plan, every node a 256th of the
/// subnet), none in anything narrower, and in a wider subnet as many as it has /24s for, up to 1016
/// (`NodeId::MAX`, from a /14).
pub fn max_node(prefix_len: u8) -> u16 {
    if prefix_len > 22 {
        // A 256th of the subnet is too small to hand out from.
        return 0;
    }
    if prefix_len >= 16 {
        return MAX_SMALL_GRID_NODE;
    }
    // /24 blocks: the bottom four hold node addresses, the top one service VIPs.
    let blocks = 1u32 << (24 - u32::from(prefix_len).max(8));
    u16::try_from(blocks - 5).map_or(NodeId::MAX, |n| n.min(NodeId::MAX))
}

/// Node ids of a grid on a /16 or narrower subnet: 1..=254, whose node addresses are
/// all in block 0.
const MAX_SMALL_GRID_NODE: u16 = 254;

/// The addresses a node hands out, without the first and last of its block.
/// - A grid subnet of /16 or narrower (Kontena's `10.81.0.0/16`) is cut in 256 blocks:
///   node `n` (1..=254) has block `n` (`10.81.<n>.0/24` in a /16), block 0 holds the
///   node addresses and block 255 is left for service VIPs.
/// - A wider subnet (a /15, a /14 for 1016 nodes) is cut in /24s: the bottom four (the
///   /22 where the appliance puts the addresses of nodes 1..=1016) hold node
///   addresses, node `n` has the /24 `n + 3` and the top /24 is left for service VIPs
///   (in `10.80.0.0/14`: node 1 hands out `10.80.4.1-254`, node 1016
///   `10.83.251.1-254`; docs/agent.md).
///
/// None when the subnet has no share for `node` (beyond [`max_node`]).
pub fn node_share(subnet: Ipv4Addr, prefix_len: u8, node: NodeId) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if node.get() > max_node(prefix_len) {
        return None;
    }
    let (block, size) = if prefix_len >= 16 {
        (
            u32::from(node.get()),
            1u32 << (32 - u32::from(prefix_len) - 8),
        )
    } else {
        (u32::from(node.get()) + 3, 256)
    };
    if size < 4 {
        return None;
    }
    let base = u32::from(subnet) + block * size;
    Some((Ipv4Addr::from(base + 1), Ipv4Addr::from(base + size - 2)))
}

/// Allocates a free address of `share` to this node (optionally for a named
/// container, optionally tagged with its owner), skipping the ones `taken` already
/// lists and any a race takes first.
pub async fn allocate_address(
    store: &Store,
    prefix: &Prefix,
    me: NodeId,
    share: (Ipv4Addr, Ipv4Addr),
    taken: &(dyn Fn(Ipv4Addr) -> bool + Sync),
    container: Option<String>,
    owner: Option<String>,
) -> Result<(Ipv4Addr, i64), Refusal> {
    let (first, last) = (u32::from(share.0), u32::from(share.1));
    let mut races = 0;
    for a in first..=last {
        let a = Ipv4Addr::from(a);
        if taken(a) {
            continue;
        }
        let key = prefix.key(&Key::Address(a));
        let claim = Record::Address(
            a,
            AddressClaim {
                node: me,
                container: container.clone(),
                owner: owner.clone(),
            },
        );
        let c = store
            .txn(Txn {
                when: vec![Cmp::Absent(key)],
                then: vec![put(prefix, &claim)],
            })
            .await?;
        if c.ok {
            return Ok((a, c.revision));
        }
        races += 1;
        if races > 4 * RETRIES {
            return Err(Refusal::Contended);
        }
    }
    Err(conflict(
        "address",
        format!(
            "no free address left in this node's share {}..{}",
            share.0, share.1
        ),
    ))
}

/// Releases an address this node allocated and no container uses.
pub async fn release_address(
    store: &Store,
    prefix: &Prefix,
    me: NodeId,
    address: Ipv4Addr,
) -> Result<i64, Refusal> {
    let key = Key::Address(address);
    let (kv, rec) = read(store, prefix, &key).await?;
    let Some(kv) = kv else {
        return Err(Refusal::NotFound {
            field: "address",
            message: format!("address {address} is not allocated"),
        });
    };
    if let Some(Record::Address(_, c)) = &rec {
        if c.node != me {
            return Err(conflict(
                "address",
                format!("address {address} is allocated to node {}", c.node),
            ));
        }
        if let Some(name) = &c.container {
            return Err(conflict(
                "address",
                format!("address {address} is used by container {name:?}; remove it first"),
            ));
        }
    }
    let c = store
        .txn(Txn {
            when: vec![Cmp::ModRevision(prefix.key(&key), kv.mod_revision)],
            then: vec![Write::Delete(prefix.key(&key))],
        })
        .await?;
    if c.ok {
        Ok(c.revision)
    } else {
        Err(Refusal::Contended)
    }
}

fn where_published(s: Scope) -> String {
    match s {
        Scope::Node(n) => format!("on node {n}"),
        Scope::All => "on every node".into(),
    }
}

/// Publishes a port on one node or on every node; a port is published once per node.
pub async fn add_publish(
    store: &Store,
    prefix: &Prefix,
    scope: Scope,
    rec: &PublishRecord,
) -> Result<i64, Refusal> {
    let pk = rec.key();
    let dir = prefix.dir(&format!("publish/{pk}/"));
    let when = match scope {
        Scope::All => vec![Cmp::AbsentPrefix(dir.clone())],
        Scope::Node(_) => vec![
            Cmp::Absent(prefix.key(&Key::Publish(pk, Scope::All))),
            Cmp::Absent(prefix.key(&Key::Publish(pk, scope))),
        ],
    };
    let c = store
        .txn(Txn {
            when,
            then: vec![put(prefix, &Record::Publish(pk, scope, rec.clone()))],
        })
        .await?;
    if c.ok {
        return Ok(c.revision);
    }
    let (holders, _) = store.range(&dir).await?;
    let holder = holders
        .iter()
        .filter_map(|kv| kv.key.rsplit('/').next())
        .find(|s| match scope {
            Scope::All => true,
            Scope::Node(n) => *s == "all" || *s == n.to_string(),
        })
        .map(|s| match s {
            "all" => Scope::All,
            s => crate::schema::parse_node(s).map_or(Scope::All, Scope::Node),
        });
    Err(conflict(
        "host_port",
        format!(
            "{} port {} is already published {}",
            pk.proto,
            pk.port,
            holder.map_or_else(|| "in the grid".into(), where_published)
        ),
    ))
}

pub async fn remove_publish(
    store: &Store,
    prefix: &Prefix,
    scope: Scope,
    pk: PortKey,
) -> Result<i64, Refusal> {
    let key = prefix.key(&Key::Publish(pk, scope));
    let Some(kv) = store.get(&key).await? else {
        return Err(Refusal::NotFound {
            field: "host_port",
            message: format!(
                "{} port {} is not published {}",
                pk.proto,
                pk.port,
                where_published(scope)
            ),
        });
    };
    let c = store
        .txn(Txn {
            when: vec![Cmp::ModRevision(key.clone(), kv.mod_revision)],
            then: vec![Write::Delete(key)],
        })
        .await?;
    if c.ok {
        Ok(c.revision)
    } else {
        Err(Refusal::Contended)
    }
}

/// Adds a service or replaces the one of its name; a VIP and port serve one service.
pub async fn put_service(
    store: &Store,
    prefix: &Prefix,
    rec: &ServiceRecord,
) -> Result<i64, Refusal> {
    let vip_port = |item: &Value| (item.get("vip").cloned(), item.get("port").cloned());
    for _ in 0..RETRIES {
        let (all, _) = store.range(&prefix.dir("services/")).await?;
        let key = prefix.key(&Key::Service(rec.name.clone()));
        let mine = vip_port(&rec.item);
        for kv in &all {
            if kv.key == key {
                continue;
            }
            let rel = kv.key.strip_prefix(prefix.as_str()).unwrap_or_default();
            if let Ok((_, Record::Service(other))) = decode(rel, &kv.value) {
                if mine.0.as_ref().is_some_and(|v| !v.is_null()) && vip_port(&other.item) == mine {
                    return Err(conflict(
                        "vip",
                        format!(
                            "{} port {} serves service {:?}",
                            mine.0.unwrap_or_default(),
                            mine.1.unwrap_or_default(),
                            other.name
                        ),
                    ));
                }
            }
        }
        let cur = all.into_iter().find(|kv| kv.key == key);
        let c = store
            .txn(Txn {
                when: vec![as_read(key, &cur)],
                then: vec![put(prefix, &Record::Service(rec.clone()))],
            })
            .await?;
        if c.ok {
            return Ok(c.revision);
        }
    }
    Err(Refusal::Contended)
}

async fn read_service(
    store: &Store,
    prefix: &Prefix,
    name: &str,
) -> Result<(Kv, ServiceRecord), Refusal> {
    let key = Key::Service(name.to_string());
    match read(store, prefix, &key).await? {
        (Some(kv), Some(Record::Service(s))) => Ok((kv, s)),
        _ => Err(Refusal::NotFound {
            field: "service",
            message: format!("no service {name:?} in the grid"),
        }),
    }
}

pub async fn remove_service(store: &Store, prefix: &Prefix, name: &str) -> Result<i64, Refusal> {
    let (kv, _) = read_service(store, prefix, name)
        .await
        .map_err(|e| match e {
            Refusal::NotFound { message, .. } => Refusal::NotFound {
                field: "name",
                message,
            },
            e => e,
        })?;
    let c = store
        .txn(Txn {
            when: vec![Cmp::ModRevision(kv.key.clone(), kv.mod_revision)],
            then: vec![Write::Delete(kv.key)],
        })
        .await?;
    if c.ok {
        Ok(c.revision)
    } else {
        Err(Refusal::Contended)
    }
}

/// Sets (weight `Some`) or removes (`None`) a static backend of a service.
pub async fn edit_backend(
    store: &Store,
    prefix: &Prefix,
    service: &str,
    address: Ipv4Addr,
    port: u16,
    weight: Option<u32>,
) -> Result<i64, Refusal> {
    for _ in 0..RETRIES {
        let (kv, mut rec) = read_service(store, prefix, service).await?;
        let mut list: Vec<Value> = rec
            .item
            .get("backends")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let same = |b: &Value| {
            b.get("address").and_then(Value::as_str) == Some(&address.to_string())
                && b.get("port").and_then(Value::as_u64) == Some(u64::from(port))
        };
        let had = list.iter().any(same);
        list.retain(|b| !same(b));
        match weight {
            Some(w) => {
                list.push(json!({"address": address.to_string(), "port": port, "weight": w}))
            }
            None if !had => {
                return Err(Refusal::NotFound {
                    field: "address",
                    message: format!("service {service:?} has no backend {address}:{port}"),
                })
            }
            None => {}
        }
        rec.item["backends"] = Value::Array(list);
        let rec = ServiceRecord::from_value(&rec.to_value()).map_err(|m| conflict("address", m))?;
        let c = store
            .txn(Txn {
                when: vec![Cmp::ModRevision(kv.key.clone(), kv.mod_revision)],
                then: vec![put(prefix, &Record::Service(rec))],
            })
            .await?;
        if c.ok {
            return Ok(c.revision);
        }
    }
    Err(Refusal::Contended)
}

mod owned;
pub use owned::{owned, release_owned, Owned};

#[cfg(test)]
mod tests;
