//! The grid's layout in the store: every key under `/weft/<grid>/` and the JSON value
//! each holds, and the decoding of one stored entry into a typed record. It owns the
//! rules an entry must meet to be used (checked with the appliance's own validators);
//! it never talks to a store and never decides what an appliance should run.
//!
//! ```text
//! /weft/<grid>/node-names/<name>        {"node": 2}                       persistent
//! /weft/<grid>/node-ids/<id>            {"name": "host-2"}                persistent
//! /weft/<grid>/nodes/<id>               NodeRecord                        under the node's lease
//! /weft/<grid>/containers/<name>        ContainerRecord (name lowercased)  persistent
//! /weft/<grid>/addresses/<ip>           AddressClaim                      persistent
//! /weft/<grid>/publish/<proto>-<port>/<node|all>  a [[publish]] item      persistent
//! /weft/<grid>/services/<name>          a [[services]] item (+ target_port) persistent
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use weft_appliance::protocol::Command;
use weft_appliance::weft_netstack::base::NodeId;

/// The key prefix of a grid: `/weft/<grid>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// `grid` is one DNS label (the `[dns] grid` name).
    pub fn new(grid: &str) -> Result<Prefix, String> {
        if grid.is_empty()
            || grid.len() > 63
            || !grid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "grid name {grid:?} must be 1..=63 characters of A-Z a-z 0-9 - _"
            ));
        }
        Ok(Prefix(format!("/weft/{grid}/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full key of `key`.
    pub fn key(&self, key: &Key) -> String {
        format!("{}{key}", self.0)
    }

    /// The full key of a directory (`publish/tcp-80/`), for prefix reads and compares.
    pub fn dir(&self, rel: &str) -> String {
        format!("{}{rel}", self.0)
    }
}

/// A published port's scope: the node that publishes it, or every node (the routing
/// mesh, for a port that targets a service VIP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Node(NodeId),
    All,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Node(n) => write!(f, "{n}"),
            Scope::All => f.write_str("all"),
        }
    }
}

/// `tcp` or `udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = ();
    fn from_str(s: &str) -> Result<Proto, ()> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(()),
        }
    }
}

/// A published port: protocol and port on the uplink address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub proto: Proto,
    pub port: u16,
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.proto, self.port)
    }
}

/// A key relative to the grid prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    NodeName(String),
    NodeIdClaim(NodeId),
    Node(NodeId),
    /// Lowercased: container names are unique case-insensitively.
    Container(String),
    Address(Ipv4Addr),
    Publish(PortKey, Scope),
    Service(String),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::NodeName(n) => write!(f, "node-names/{n}"),
            Key::NodeIdClaim(n) => write!(f, "node-ids/{n}"),
            Key::Node(n) => write!(f, "nodes/{n}"),
            Key::Container(n) => write!(f, "containers/{n}"),
            Key::Address(a) => write!(f, "addresses/{a}"),
            Key::Publish(p, s) => write!(f, "publish/{p}/{s}"),
            Key::Service(n) => write!(f, "services/{n}"),
        }
    }
}

/// The highest node id a key or record of an agent-run grid names (the appliance's
/// `NodeId::MAX`); which of them a grid hands out follows its subnet
/// (`registry::max_node`).
pub const MAX_NODE: u16 = NodeId::MAX;

/// Parses a node number of an agent-run grid (1..=[`MAX_NODE`]) in its canonical
/// decimal form (`7`, not `07`).
pub fn parse_node(s: &str) -> Option<NodeId> {
    if s.is_empty() || s.len() > 5 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>()
        .ok()
        .filter(|n| *n <= MAX_NODE)
        .and_then(NodeId::new)
}

/// Whether `name` can be a node name (the appliance's peer-name rule).
pub fn valid_node_name(name: &str) -> bool {
    weft_appliance::weft_netstack::stage::overlay::config::valid_name(name)
}

impl Key {
    /// Parses a key relative to the prefix; `None` for anything that is not one of
    /// the layout's keys in canonical form.
    pub fn parse(rel: &str) -> Option<Key> {
        let (dir, rest) = rel.split_once('/')?;
        let key = match dir {
            "node-names" if valid_node_name(rest) => Key::NodeName(rest.to_string()),
            "node-ids" => Key::NodeIdClaim(parse_node(rest)?),
            "nodes" => Key::Node(parse_node(rest)?),
            "containers" if !rest.is_empty() && !rest.contains('/') => {
                if rest.to_ascii_lowercase() != rest {
                    return None;
                }
                Key::Container(rest.to_string())
            }
            "addresses" => {
                let a = Ipv4Addr::from_str(rest).ok()?;
                if a.to_string() != rest {
                    return None;
                }
                Key::Address(a)
            }
            "publish" => {
                let (port, scope) = rest.split_once('/')?;
                let (proto, num) = port.split_once('-')?;
                let proto = Proto::from_str(proto).ok()?;
                let n: u16 = num.parse().ok()?;
                if n.to_string() != num {
                    return None;
                }
                let scope = match scope {
                    "all" => Scope::All,
                    s => Scope::Node(parse_node(s)?),
                };
                Key::Publish(PortKey { proto, port: n }, scope)
            }
            "services" if !rest.is_empty() && !rest.contains('/') => Key::Service(rest.to_string()),
            _ => return None,
        };
        // Only the canonical spelling is a key (so one record has one key).
        (key.to_string() == rel).then_some(key)
    }
}

/// `node-names/<name>`: the id a name holds, for good (a returning host gets it back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameClaim {
    pub node: NodeId,
}

/// `node-ids/<id>`: which name holds an id; created together with its [`NameClaim`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdClaim {
    pub name: String,
}

/// `nodes/<id>`: a live node, under its agent's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub node: NodeId,
    pub name: String,
    /// The uplink (underlay) address.
    pub address: Ipv4Addr,
    /// Used by nodes of the same region (default: `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_address: Option<Ipv4Addr>,
    /// Used by nodes of other regions (default: `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The overlay networks the node takes part in (by name).
    #[serde(default)]
    pub networks: Vec<String>,
}

/// The region of a node without one (the appliance's default).
pub const DEFAULT_REGION: &str =
    weft_appliance::weft_netstack::stage::overlay::config::DEFAULT_REGION;

impl NodeRecord {
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }

    pub fn private(&self) -> Ipv4Addr {
        self.private_address.unwrap_or(self.address)
    }

    pub fn public(&self) -> Ipv4Addr {
        self.public_address.unwrap_or(self.address)
    }

    /// The underlay address a node in `region` reaches this one at (the appliance's
    /// rule: private inside the region, public across).
    pub fn address_from(&self, region: &str) -> Ipv4Addr {
        if region == self.region() {
            self.private()
        } else {
            self.public()
        }
    }

    /// The `[[peers]]` item for this node on a node whose networks are `networks`.
    pub fn peer(&self, networks: &[String]) -> Value {
        let carried: Vec<&String> = self
            .networks
            .iter()
            .filter(|n| networks.contains(n))
            .collect();
        let mut p = json!({"node": self.node, "name": self.name, "networks": carried});
        if self.private() != self.public() {
            p["private_address"] = json!(self.private());
            p["public_address"] = json!(self.public());
        } else {
            p["address"] = json!(self.address);
        }
        if let Some(r) = &self.region {
            p["region"] = json!(r);
        }
        p
    }
}

/// `containers/<name>`: a container of the grid, on the node that registered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRecord {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The overlay network it is attached to (by name); none: DNS only, no FDB entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    pub address: Ipv4Addr,
    /// Its MAC address; none: DNS only, no FDB entry (the overlay learns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub node: NodeId,
    /// Who registered it (a runtime's attachment, e.g. the CNI plugin's), so that
    /// everything it holds can be released at once ([`valid_owner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl ContainerRecord {
    /// The `container-add` arguments.
    pub fn dns_entry(&self) -> Value {
        let mut v = json!({"name": self.name, "address": self.address.to_string()});
        if let Some(s) = &self.service {
            v["service"] = json!(s);
        }
        v
    }

    /// Checks every field with the appliance's own rules.
    pub fn check(&self) -> Result<(), String> {
        Command::parse("container-add", Some(&self.dns_entry())).map_err(|e| e.to_string())?;
        if let Some(mac) = &self.mac {
            let probe = json!({"vni": 1, "mac": mac, "local": true});
            Command::parse("fdb-add", Some(&probe)).map_err(|e| e.to_string())?;
        }
        if let Some(n) = &self.network {
            if !valid_node_name(n) {
                return Err(format!("network: {n:?} is not a network name"));
            }
        }
        check_owner(self.owner.as_deref())
    }
}

/// The longest owner tag (a CNI network name, a 64-digit container id and an
/// interface name fit with room to spare).
pub const MAX_OWNER_LEN: usize = 256;

/// Whether `owner` can tag records: 1..=256 printable ASCII characters, no space.
pub fn valid_owner(owner: &str) -> bool {
    !owner.is_empty() && owner.len() <= MAX_OWNER_LEN && owner.bytes().all(|b| b.is_ascii_graphic())
}

/// [`valid_owner`] as a refusal naming the field.
pub fn check_owner(owner: Option<&str>) -> Result<(), String> {
    match owner {
        Some(o) if !valid_owner(o) => Err(format!(
            "owner: {o:?} must be 1..={MAX_OWNER_LEN} printable ASCII characters without spaces"
        )),
        _ => Ok(()),
    }
}

/// `addresses/<ip>`: an overlay address taken in the grid, by a node's allocation or a
/// container's registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressClaim {
    pub node: NodeId,
    /// The container registered at it, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Who allocated or registered it ([`ContainerRecord::owner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `services/<name>`: a `[[services]]` item as written, plus `target_port`: the port of
/// the containers whose `service` is this one, which become its backends (default: the
/// service port).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRecord {
    /// The `[[services]]` item (static `backends` included), checked.
    pub item: Value,
    pub name: String,
    pub port: u16,
    pub target_port: Option<u16>,
}

impl ServiceRecord {
    /// From the stored JSON (or an API request's arguments).
    pub fn from_value(v: &Value) -> Result<ServiceRecord, String> {
        let mut item = v.clone();
        let obj = item
            .as_object_mut()
            .ok_or_else(|| "a service is a JSON object".to_string())?;
        let target_port = match obj.remove("target_port") {
            None | Some(Value::Null) => None,
            Some(t) => Some(
                t.as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| "target_port: expected a port 1..=65535".to_string())?,
            ),
        };
        let parsed = Command::parse("service-add", Some(&item)).map_err(|e| e.to_string())?;
        let Command::ServiceAdd(s) = parsed else {
            return Err("not a service".into());
        };
        Ok(ServiceRecord {
            item,
            name: s.name,
            port: s.port,
            target_port,
        })
    }

    /// The stored JSON.
    pub fn to_value(&self) -> Value {
        let mut v = self.item.clone();
        if let Some(t) = self.target_port {
            v["target_port"] = json!(t);
        }
        v
    }

    /// The port of container backends.
    pub fn backend_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// A `[[publish]]` item, checked, and who published it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRecord {
    pub proto: Proto,
    pub host_port: u16,
    pub container_address: Ipv4Addr,
    pub container_port: u16,
    /// Who published it ([`ContainerRecord::owner`]); not part of the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl PublishRecord {
    pub fn key(&self) -> PortKey {
        PortKey {
            proto: self.proto,
            port: self.host_port,
        }
    }

    /// The appliance's `[[publish]]` item.
    pub fn item(&self) -> Value {
        json!({
            "proto": self.proto,
            "host_port": self.host_port,
            "container_address": self.container_address,
            "container_port": self.container_port,
        })
    }

    pub fn check(&self) -> Result<(), String> {
        Command::parse("publish-add", Some(&self.item()))
            .map(|_| ())
            .map_err(|e| e.to_string())?;
        check_owner(self.owner.as_deref())
    }
}

/// One decoded entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    NodeName(String, NameClaim),
    NodeIdClaim(NodeId, IdClaim),
    Node(NodeRecord),
    Container(ContainerRecord),
    Address(Ipv4Addr, AddressClaim),
    Publish(PortKey, Scope, PublishRecord),
    Service(ServiceRecord),
}

/// Why a stored entry is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadEntry {
    /// A key under the prefix that is not one of the layout's.
    ForeignKey,
    NotUtf8,
    /// The value is not the JSON its key holds.
    Malformed(String),
    /// A well-formed value that breaks a rule (or disagrees with its key).
    Refused(String),
}

impl fmt::Display for BadEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadEntry::ForeignKey => f.write_str("not a key of the grid layout"),
            BadEntry::NotUtf8 => f.write_str("value is not UTF-8"),
            BadEntry::Malformed(m) => write!(f, "malformed value: {m}"),
            BadEntry::Refused(m) => write!(f, "refused: {m}"),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, BadEntry> {
    serde_json::from_value(v.clone()).map_err(|e| BadEntry::Malformed(e.to_string()))
}

fn agree(ok: bool, what: &str) -> Result<(), BadEntry> {
    if ok {
        Ok(())
    } else {
        Err(BadEntry::Refused(format!("{what} disagrees with the key")))
    }
}

/// Decodes the entry at `rel` (relative to the prefix) holding `value`.
pub fn decode(rel: &str, value: &[u8]) -> Result<(Key, Record), BadEntry> {
    let key = Key::parse(rel).ok_or(BadEntry::ForeignKey)?;
    let text = std::str::from_utf8(value).map_err(|_| BadEntry::NotUtf8)?;
    let v: Value =
        serde_json::from_str(text).map_err(|e| BadEntry::Malformed(format!("not JSON: {e}")))?;
    let record = match &key {
        Key::NodeName(name) => {
            let c: NameClaim = parse(&v)?;
            Record::NodeName(name.clone(), c)
        }
        Key::NodeIdClaim(id) => {
            let c: IdClaim = parse(&v)?;
            if !valid_node_name(&c.name) {
                return Err(BadEntry::Refused(format!(
                    "{:?} is not a node name",
                    c.name
                )));
            }
            Record::NodeIdClaim(*id, c)
        }
        Key::Node(id) => {
            let n: NodeRecord = parse(&v)?;
            agree(n.node == *id, "node")?;
            if let Some(bad) = std::iter::once(&n.name)
                .chain(n.region.iter())
                .chain(n.networks.iter())
                .find(|s| !valid_node_name(s))
            {
                return Err(BadEntry::Refused(format!("{bad:?} is not a valid name")));
            }
            let underlay =
                weft_appliance::weft_netstack::stage::overlay::config::valid_underlay_address;
            if let Some(bad) = [Some(n.address), n.private_address, n.public_address]
                .into_iter()
                .flatten()
                .find(|a| !underlay(*a))
            {
                return Err(BadEntry::Refused(format!(
                    "{bad} is not a unicast host address"
                )));
            }
            Command::parse("peer-add", Some(&n.peer(&n.networks)))
                .map_err(|e| BadEntry::Refused(e.to_string()))?;
            Record::Node(n)
        }
        Key::Container(lname) => {
            let c: ContainerRecord = parse(&v)?;
            agree(c.name.to_ascii_lowercase() == *lname, "name")?;
            c.check().map_err(BadEntry::Refused)?;
            Record::Container(c)
        }
        Key::Address(a) => {
            let c: AddressClaim = parse(&v)?;
            check_owner(c.owner.as_deref()).map_err(BadEntry::Refused)?;
            Record::Address(*a, c)
        }
        Key::Publish(pk, scope) => {
            let p: PublishRecord = parse(&v)?;
            agree(p.key() == *pk, "proto/host_port")?;
            p.check().map_err(BadEntry::Refused)?;
            Record::Publish(*pk, *scope, p)
        }
        Key::Service(name) => {
            let s = ServiceRecord::from_value(&v).map_err(BadEntry::Refused)?;
            agree(s.name == *name, "name")?;
            Record::Service(s)
        }
    };
    Ok((key, record))
}

/// The stored bytes of a record.
pub fn encode(record: &Record) -> Vec<u8> {
    let v = match record {
        Record::NodeName(_, c) => serde_json::to_value(c),
        Record::NodeIdClaim(_, c) => serde_json::to_value(c),
        Record::Node(n) => serde_json::to_value(n),
        Record::Container(c) => serde_json::to_value(c),
        Record::Address(_, c) => serde_json::to_value(c),
        Record::Publish(_, _, p) => serde_json::to_value(p),
        Record::Service(s) => Ok(s.to_value()),
    };
    v.map(|v| v.to_string().into_bytes()).unwrap_or_default()
}

/// The key of a record.
pub fn key_of(record: &Record) -> Key {
    match record {
        Record::NodeName(n, _) => Key::NodeName(n.clone()),
        Record::NodeIdClaim(id, _) => Key::NodeIdClaim(*id),
        Record::Node(n) => Key::Node(n.node),
        Record::Container(c) => Key::Container(c.name.to_ascii_lowercase()),
        Record::Address(a, _) => Key::Address(*a),
        Record::Publish(k, s, _) => Key::Publish(*k, *s),
        Record::Service(s) => Key::Service(s.name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(x: u16) -> NodeId {
        NodeId::new(x).unwrap()
    }

    fn container() -> ContainerRecord {
        ContainerRecord {
            name: "Web-1".into(),
            service: Some("web".into()),
            network: Some("grid".into()),
            address: Ipv4Addr::new(10, 81, 1, 2),
            mac: Some("02:42:0a:51:01:02".into()),
            node: n(1),
            owner: Some("cni:grid:0123abcd:eth0".into()),
        }
    }

    #[test]
    fn every_record_round_trips_through_its_key_and_bytes() {
        let records = vec![
            Record::NodeName("host-1".into(), NameClaim { node: n(1) }),
            Record::NodeIdClaim(
                n(1),
                IdClaim {
                    name: "host-1".into(),
                },
            ),
            Record::Node(NodeRecord {
                node: n(2),
                name: "host-2".into(),
                address: Ipv4Addr::new(192, 0, 2, 12),
                private_address: None,
                public_address: Some(Ipv4Addr::new(203, 0, 113, 12)),
                region: Some("east".into()),
                networks: vec!["grid".into()],
            }),
            Record::Container(container()),
            Record::Address(
                Ipv4Addr::new(10, 81, 1, 2),
                AddressClaim {
                    node: n(1),
                    container: Some("Web-1".into()),
                    owner: Some("cni:grid:0123abcd:eth0".into()),
                },
            ),
            Record::Publish(
                PortKey {
                    proto: Proto::Tcp,
                    port: 8080,
                },
                Scope::Node(n(1)),
                PublishRecord {
                    proto: Proto::Tcp,
                    host_port: 8080,
                    container_address: Ipv4Addr::new(10, 81, 1, 2),
                    container_port: 80,
                    owner: Some("cni:grid:0123abcd:eth0".into()),
                },
            ),
            Record::Service(
                ServiceRecord::from_value(&json!({
                    "name": "web", "vip": "10.81.255.1", "proto": "tcp", "port": 80,
                    "target_port": 8080
                }))
                .unwrap(),
            ),
        ];
        for r in records {
            let key = key_of(&r);
            let rel = key.to_string();
            assert_eq!(Key::parse(&rel), Some(key.clone()), "{rel}");
            let (k, back) = decode(&rel, &encode(&r)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert_eq!(k, key);
            assert_eq!(back, r, "{rel}");
        }
    }

    #[test]
    fn foreign_and_non_canonical_keys_are_refused() {
        for rel in [
            "",
            "nodes",
            "nodes/",
            "nodes/0",
            "nodes/1017",
            "nodes/07",
            "nodes/1/x",
            "containers/Web-1",
            "containers/",
            "addresses/10.81.1.02",
            "addresses/10.81.1",
            "publish/tcp-80",
            "publish/sctp-80/all",
            "publish/tcp-080/all",
            "publish/tcp-80/everyone",
            "node-names/bad name",
            "something/else",
            "services/a/b",
        ] {
            assert_eq!(
                decode(rel, b"{}").unwrap_err(),
                BadEntry::ForeignKey,
                "{rel:?}"
            );
        }
    }

    #[test]
    fn bad_values_are_named_never_a_panic() {
        let cases: Vec<(&str, &[u8])> = vec![
            ("nodes/1", b"\xff\xfe"),
            ("nodes/1", b"not json"),
            ("nodes/1", b"[1,2]"),
            ("nodes/1", br#"{"node":1}"#),
            ("nodes/1", br#"{"node":2,"name":"a","address":"192.0.2.2"}"#),
            ("nodes/1", br#"{"node":1,"name":"a b","address":"192.0.2.2"}"#),
            (
                "nodes/1",
                br#"{"node":1,"name":"a","address":"255.255.255.255"}"#,
            ),
            (
                "nodes/1",
                br#"{"node":1,"name":"a","address":"192.0.2.2","extra":1}"#,
            ),
            ("containers/web-1", br#"{"name":"web-2","address":"10.81.1.2","node":1}"#),
            ("containers/web.1", br#"{"name":"web.1","address":"10.81.1.2","node":1}"#),
            (
                "containers/web-1",
                br#"{"name":"web-1","address":"10.81.1.2","node":1,"mac":"ff:ff:ff:ff:ff:ff"}"#,
            ),
            ("containers/web-1", br#"{"name":"web-1","address":"10.81.1.2","node":0}"#),
            ("addresses/10.81.1.2", br#"{"node":"x"}"#),
            ("addresses/10.81.1.2", br#"{"node":1,"owner":"a b"}"#),
            (
                "containers/web-1",
                br#"{"name":"web-1","address":"10.81.1.2","node":1,"owner":""}"#,
            ),
            (
                "publish/tcp-53/all",
                br#"{"proto":"tcp","host_port":53,"container_address":"10.81.1.2","container_port":53}"#,
            ),
            (
                "publish/tcp-80/all",
                br#"{"proto":"tcp","host_port":81,"container_address":"10.81.1.2","container_port":80}"#,
            ),
            ("services/web", br#"{"name":"web","proto":"tcp"}"#),
            (
                "services/web",
                br#"{"name":"db","vip":"10.81.255.1","proto":"tcp","port":80}"#,
            ),
            (
                "services/web",
                br#"{"name":"web","vip":"10.81.255.1","proto":"tcp","port":80,"target_port":0}"#,
            ),
        ];
        for (rel, value) in cases {
            match decode(rel, value) {
                Ok(r) => panic!(
                    "{rel} {:?} decoded to {r:?}",
                    String::from_utf8_lossy(value)
                ),
                Err(BadEntry::ForeignKey) => panic!("{rel} is a layout key"),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn a_peer_item_uses_one_address_or_both_and_carries_only_shared_networks() {
        let mut rec = NodeRecord {
            node: n(3),
            name: "h3".into(),
            address: Ipv4Addr::new(192, 0, 2, 13),
            private_address: None,
            public_address: None,
            region: None,
            networks: vec!["a".into(), "b".into()],
        };
        let p = rec.peer(&["b".into(), "c".into()]);
        assert_eq!(
            p,
            json!({"node": 3, "name": "h3", "address": "192.0.2.13", "networks": ["b"]})
        );
        assert_eq!(rec.address_from("default"), rec.address);
        rec.public_address = Some(Ipv4Addr::new(203, 0, 113, 13));
        rec.region = Some("west".into());
        let p = rec.peer(&[]);
        assert_eq!(p["private_address"], "192.0.2.13");
        assert_eq!(p["public_address"], "203.0.113.13");
        assert_eq!(p["region"], "west");
        assert!(p.get("address").is_none());
        assert_eq!(rec.address_from("west"), Ipv4Addr::new(192, 0, 2, 13));
        assert_eq!(rec.address_from("east"), Ipv4Addr::new(203, 0, 113, 13));
    }

    #[test]
    fn grid_names_make_prefixes() {
        assert_eq!(Prefix::new("testgrid").unwrap().as_str(), "/weft/testgrid/");
        for bad in ["", "a/b", "a.b", &"x".repeat(64)] {
            assert!(Prefix::new(bad).is_err(), "{bad}");
        }
        let p = Prefix::new("g").unwrap();
        assert_eq!(p.key(&Key::Node(n(4))), "/weft/g/nodes/4");
    }
}
