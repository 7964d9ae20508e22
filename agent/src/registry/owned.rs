//! What one owner holds on one node: the container registrations, address claims and
//! published ports written with its `owner` tag (a runtime's attachment: the CNI plugin
//! tags everything of one container's interface), found by reading the store itself
//! (never the agent's view, which may not have seen a write that just happened), and
//! released together. Releasing what is not there changes nothing and is no error: a
//! runtime's teardown may run twice, or after a setup that failed half-way. It never
//! touches records of other nodes, nor records without the tag.

use std::net::Ipv4Addr;

use serde_json::{json, Value};
use weft_appliance::weft_netstack::base::NodeId;

use super::{Refusal, RETRIES};
use crate::schema::{decode, Prefix, Record, Scope};
use crate::store::{Cmp, Kv, Store, Txn, Write};

/// Deletes per transaction (etcd refuses more than 128 operations in one).
const DELETES_PER_TXN: usize = 100;

/// One record an owner holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// A container registration, by its name as registered.
    Container(String),
    Address(Ipv4Addr),
    /// A port published on the node, `tcp-8080` style.
    Publish(String),
}

/// The records an owner holds on a node, with the stored entries that hold them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    pub held: Vec<(Held, Kv)>,
}

impl Owned {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// `{"containers": [...], "addresses": [...], "publish": [...]}`
    pub fn json(&self) -> Value {
        let (mut containers, mut addresses, mut publish) = (vec![], vec![], vec![]);
        for (h, _) in &self.held {
            match h {
                Held::Container(n) => containers.push(json!(n)),
                Held::Address(a) => addresses.push(json!(a)),
                Held::Publish(p) => publish.push(json!(p)),
            }
        }
        json!({"containers": containers, "addresses": addresses, "publish": publish})
    }
}

/// Everything `owner` holds on node `me`, read from the store.
pub async fn owned(
    store: &Store,
    prefix: &Prefix,
    me: NodeId,
    owner: &str,
) -> Result<Owned, Refusal> {
    let mut found = Owned::default();
    for dir in ["containers/", "addresses/", "publish/"] {
        let (kvs, _) = store.range(&prefix.dir(dir)).await?;
        for kv in kvs {
            let Some(rel) = kv.key.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let Ok((_, record)) = decode(rel, &kv.value) else {
                continue;
            };
            let mine =
                |node: NodeId, tag: &Option<String>| node == me && tag.as_deref() == Some(owner);
            let held = match &record {
                Record::Container(c) if mine(c.node, &c.owner) => Held::Container(c.name.clone()),
                Record::Address(a, c) if mine(c.node, &c.owner) => Held::Address(*a),
                Record::Publish(pk, Scope::Node(n), p) if mine(*n, &p.owner) => {
                    Held::Publish(pk.to_string())
                }
                _ => continue,
            };
            found.held.push((held, kv));
        }
    }
    Ok(found)
}

/// Removes everything `owner` holds on node `me`: what was removed and the store
/// revision after it (none when there was nothing).
pub async fn release_owned(
    store: &Store,
    prefix: &Prefix,
    me: NodeId,
    owner: &str,
) -> Result<(Owned, Option<i64>), Refusal> {
    let mut released = Owned::default();
    let mut revision = None;
    for _ in 0..RETRIES {
        let now = owned(store, prefix, me, owner).await?;
        if now.is_empty() {
            return Ok((released, revision));
        }
        let mut lost = false;
        for chunk in now.held.chunks(DELETES_PER_TXN) {
            let txn = Txn {
                when: chunk
                    .iter()
                    .map(|(_, kv)| Cmp::ModRevision(kv.key.clone(), kv.mod_revision))
                    .collect(),
                then: chunk
                    .iter()
                    .map(|(_, kv)| Write::Delete(kv.key.clone()))
                    .collect(),
            };
            let c = store.txn(txn).await?;
            if !c.ok {
                // Something changed under us: read again and release what is left.
                lost = true;
                break;
            }
            revision = Some(c.revision);
            released.held.extend(chunk.iter().cloned());
        }
        if !lost {
            return Ok((released, revision));
        }
    }
    Err(Refusal::Contended)
}
