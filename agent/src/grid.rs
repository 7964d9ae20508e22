//! The agent's picture of the grid: every usable entry under the prefix, typed, at the
//! last store revision it has seen, and the entries it skipped with the reason. It is
//! fed whole snapshots and watch events; it never writes to a store and never decides
//! what the appliance runs (that is `sync`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use weft_appliance::weft_netstack::base::NodeId;

use crate::schema::{
    decode, AddressClaim, ContainerRecord, Key, NodeRecord, PortKey, Prefix, PublishRecord, Record,
    Scope, ServiceRecord,
};

/// One raw stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key lives under (0: none).
    pub lease: i64,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

/// The grid as the agent knows it.
#[derive(Clone, Debug, Default)]
pub struct GridView {
    /// The store revision this view reflects.
    pub revision: i64,
    pub node_names: BTreeMap<String, NodeId>,
    pub node_ids: BTreeMap<NodeId, String>,
    /// Live nodes (their lease holds).
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// By lowercased name.
    pub containers: BTreeMap<String, ContainerRecord>,
    pub addresses: BTreeMap<Ipv4Addr, AddressClaim>,
    pub publish: BTreeMap<(PortKey, Scope), PublishRecord>,
    pub services: BTreeMap<String, ServiceRecord>,
    /// Entries skipped now, by full key, with the reason.
    pub skipped: BTreeMap<String, String>,
    /// Every bad entry seen since start (a key rewritten badly twice counts twice).
    pub skipped_total: u64,
}

/// What a change did to the view, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Changed,
    /// A bad entry: skipped (and logged by the caller once).
    Skipped {
        key: String,
        reason: String,
    },
    /// Not under the prefix (a watch never sends these; a snapshot might).
    Ignored,
}

impl GridView {
    /// A view of `kvs` at `revision` (a snapshot read).
    pub fn from_snapshot(prefix: &Prefix, kvs: &[Kv], revision: i64) -> (GridView, Vec<Effect>) {
        let mut g = GridView::default();
        let effects = kvs.iter().map(|kv| g.put(prefix, kv)).collect();
        g.revision = revision;
        (g, effects)
    }

    /// Applies one watched change.
    pub fn apply(&mut self, prefix: &Prefix, change: &Change) -> Effect {
        match change {
            Change::Put(kv) => {
                let e = self.put(prefix, kv);
                self.revision = self.revision.max(kv.mod_revision);
                e
            }
            Change::Delete { key, mod_revision } => {
                self.revision = self.revision.max(*mod_revision);
                self.delete(prefix, key)
            }
        }
    }

    fn put(&mut self, prefix: &Prefix, kv: &Kv) -> Effect {
        let Some(rel) = kv.key.strip_prefix(prefix.as_str()) else {
            return Effect::Ignored;
        };
        // Whatever the key held before goes first: a good value replaced by a bad one
        // must not keep serving the old one.
        self.remove_rel(rel);
        match decode(rel, &kv.value) {
            Ok((_, record)) => {
                self.skipped.remove(&kv.key);
                self.insert(record);
                Effect::Changed
            }
            Err(e) => {
                self.skipped_total += 1;
                let reason = e.to_string();
                self.skipped.insert(kv.key.clone(), reason.clone());
                Effect::Skipped {
                    key: kv.key.clone(),
                    reason,
                }
            }
        }
    }

    fn delete(&mut self, prefix: &Prefix, key: &str) -> Effect {
        let Some(rel) = key.strip_prefix(prefix.as_str()) else {
            return Effect::Ignored;
        };
        self.skipped.remove(key);
        self.remove_rel(rel);
        Effect::Changed
    }

    fn insert(&mut self, record: Record) {
        match record {
            Record::NodeName(name, c) => {
                self.node_names.insert(name, c.node);
            }
            Record::NodeIdClaim(id, c) => {
                self.node_ids.insert(id, c.name);
            }
            Record::Node(n) => {
                self.nodes.insert(n.node, n);
            }
            Record::Container(c) => {
                self.containers.insert(c.name.to_ascii_lowercase(), c);
            }
            Record::Address(a, c) => {
                self.addresses.insert(a, c);
            }
            Record::Publish(k, s, p) => {
                self.publish.insert((k, s), p);
            }
            Record::Service(s) => {
                self.services.insert(s.name.clone(), s);
            }
        }
    }

    fn remove_rel(&mut self, rel: &str) {
        match Key::parse(rel) {
            Some(Key::NodeName(n)) => {
                self.node_names.remove(&n);
            }
            Some(Key::NodeIdClaim(id)) => {
                self.node_ids.remove(&id);
            }
            Some(Key::Node(id)) => {
                self.nodes.remove(&id);
            }
            Some(Key::Container(n)) => {
                self.containers.remove(&n);
            }
            Some(Key::Address(a)) => {
                self.addresses.remove(&a);
            }
            Some(Key::Publish(k, s)) => {
                self.publish.remove(&(k, s));
            }
            Some(Key::Service(n)) => {
                self.services.remove(&n);
            }
            None => {}
        }
    }

    /// Containers whose node is alive (or is `me`).
    pub fn live_containers(&self, me: NodeId) -> impl Iterator<Item = &ContainerRecord> {
        self.containers
            .values()
            .filter(move |c| c.node == me || self.nodes.contains_key(&c.node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease: 0,
        }
    }

    #[test]
    fn bad_entries_are_counted_and_skipped_and_a_good_rewrite_heals_them() {
        let p = Prefix::new("g").unwrap();
        let (mut g, effects) = GridView::from_snapshot(
            &p,
            &[
                kv(
                    "/weft/g/nodes/1",
                    r#"{"node":1,"name":"a","address":"192.0.2.11"}"#,
                    2,
                ),
                kv("/weft/g/nodes/2", "garbage", 3),
                kv("/weft/g/who/knows", "{}", 4),
                kv("/other/x", "{}", 5),
            ],
            5,
        );
        assert_eq!(effects[0], Effect::Changed);
        assert!(matches!(effects[1], Effect::Skipped { .. }));
        assert!(matches!(effects[2], Effect::Skipped { .. }));
        assert_eq!(effects[3], Effect::Ignored);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.skipped.len(), 2);
        assert_eq!(g.skipped_total, 2);
        assert_eq!(g.revision, 5);

        // A good value replaces the bad one.
        let e = g.apply(
            &p,
            &Change::Put(kv(
                "/weft/g/nodes/2",
                r#"{"node":2,"name":"b","address":"192.0.2.12"}"#,
                6,
            )),
        );
        assert_eq!(e, Effect::Changed);
        assert_eq!(g.nodes.len(), 2);
        assert_eq!(g.skipped.len(), 1);
        // A bad value replaces a good one: the old one is gone, not kept.
        g.apply(&p, &Change::Put(kv("/weft/g/nodes/1", "{}", 7)));
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.skipped.len(), 2);
        assert_eq!(g.skipped_total, 3);
        // Deleting a skipped key forgets it.
        g.apply(
            &p,
            &Change::Delete {
                key: "/weft/g/who/knows".into(),
                mod_revision: 8,
            },
        );
        assert_eq!(g.skipped.len(), 1);
        assert_eq!(g.revision, 8);
    }

    #[test]
    fn containers_of_dead_nodes_are_not_live() {
        let p = Prefix::new("g").unwrap();
        let (mut g, _) = GridView::from_snapshot(
            &p,
            &[
                kv(
                    "/weft/g/nodes/2",
                    r#"{"node":2,"name":"b","address":"192.0.2.12"}"#,
                    2,
                ),
                kv(
                    "/weft/g/containers/c1",
                    r#"{"name":"c1","address":"10.81.1.2","node":1}"#,
                    3,
                ),
                kv(
                    "/weft/g/containers/c2",
                    r#"{"name":"c2","address":"10.81.2.2","node":2}"#,
                    4,
                ),
                kv(
                    "/weft/g/containers/c3",
                    r#"{"name":"c3","address":"10.81.3.2","node":3}"#,
                    5,
                ),
            ],
            5,
        );
        let me = NodeId::new(1).unwrap();
        let live: Vec<&str> = g.live_containers(me).map(|c| c.name.as_str()).collect();
        assert_eq!(live, ["c1", "c2"]);
        g.apply(
            &p,
            &Change::Delete {
                key: "/weft/g/nodes/2".into(),
                mod_revision: 6,
            },
        );
        let live: Vec<&str> = g.live_containers(me).map(|c| c.name.as_str()).collect();
        assert_eq!(live, ["c1"]);
    }
}
