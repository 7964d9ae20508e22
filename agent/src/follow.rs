//! Following the store: the task that joins the grid (node id, lease, the node's live
//! entry), reads a snapshot, watches from the last revision it saw, keeps the lease
//! alive and probes the store; when any of that fails it says so once, backs off and
//! starts again from where it was (a broken watch resumes from its revision; only a
//! compacted one, or a restart, reads a snapshot again). It reports to the agent and
//! never touches the appliance.

use std::time::Duration;

use tokio::sync::mpsc;
use weft_appliance::weft_netstack::base::NodeId;

use crate::registry::{announce, claim_id, RegisterError};
use crate::schema::{NodeRecord, Prefix};
use crate::store::{Change, Kv, Store, StoreError, WatchMsg};

/// What the follower reports.
#[derive(Debug)]
pub enum StoreEvent {
    /// The node holds this id.
    Joined(NodeId),
    /// The node's live entry is under this lease.
    Leased(i64),
    /// Every entry under the prefix at `revision` (the first read, or a resync).
    Snapshot {
        kvs: Vec<Kv>,
        revision: i64,
    },
    Changes {
        changes: Vec<Change>,
        revision: i64,
    },
    /// The store serves again.
    Up,
    /// The store stopped serving (said once per loss).
    Down(String),
}

/// Who this node is, for joining.
#[derive(Clone, Debug)]
pub struct Joining {
    pub name: String,
    /// `[grid] node` from the config, when given.
    pub wanted: Option<NodeId>,
    /// The highest id the grid subnet's address plan has a share for.
    pub max_node: u16,
    /// The node's live entry; `node` is set once the id is known.
    pub record: NodeRecord,
    pub ttl: Duration,
}

enum Stop {
    /// Read a snapshot again (the watch's start was compacted away).
    Resync,
    /// The lease expired: take a new one and announce again.
    LeaseLost,
    Failed(String),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::Failed(e.0)
    }
}

/// Runs until `events` is closed.
pub async fn follow(
    store: Store,
    prefix: Prefix,
    join: Joining,
    events: mpsc::UnboundedSender<StoreEvent>,
) {
    let mut node: Option<NodeId> = None;
    let mut lease: Option<i64> = None;
    let mut last: Option<i64> = None;
    let mut up: Option<bool> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        let stop = round(
            &store, &prefix, &join, &events, &mut node, &mut lease, &mut last, &mut up,
        )
        .await;
        if events.is_closed() {
            return;
        }
        match stop {
            Stop::Resync => last = None,
            Stop::LeaseLost => lease = None,
            Stop::Failed(why) => {
                // One member going away is not the store going away: if another member
                // answers at once, carry on from where the watch was.
                if up == Some(true) && store.probe().await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                if up != Some(false) {
                    up = Some(false);
                    let _ = events.send(StoreEvent::Down(why));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(4));
                continue;
            }
        }
        backoff = Duration::from_millis(250);
    }
}

#[allow(clippy::too_many_arguments)]
async fn round(
    store: &Store,
    prefix: &Prefix,
    join: &Joining,
    events: &mpsc::UnboundedSender<StoreEvent>,
    node: &mut Option<NodeId>,
    lease: &mut Option<i64>,
    last: &mut Option<i64>,
    up: &mut Option<bool>,
) -> Stop {
    let id = match *node {
        Some(id) => id,
        None => match claim_id(store, prefix, &join.name, join.wanted, join.max_node).await {
            Ok(id) => {
                *node = Some(id);
                let _ = events.send(StoreEvent::Joined(id));
                id
            }
            Err(RegisterError::Store(e)) => return Stop::Failed(e.0),
            Err(e) => return Stop::Failed(format!("joining the grid as {:?}: {e}", join.name)),
        },
    };
    let record = NodeRecord {
        node: id,
        ..join.record.clone()
    };
    let l = match *lease {
        Some(l) => l,
        None => match store.grant(join.ttl).await {
            Ok(l) => l,
            Err(e) => return Stop::Failed(e.0),
        },
    };
    *lease = Some(l);
    let mut held = l;
    match announce(store, prefix, &record, held).await {
        Ok(()) => {}
        Err(RegisterError::Busy {
            lease: old,
            same_host: true,
            ..
        }) => {
            // This host's earlier agent left its entry alive: carry on under its lease
            // (the grid sees no change) if it still holds.
            match store.keep_alive(old).await {
                Ok(true) => {
                    held = old;
                    *lease = Some(old);
                    if let Err(e) = announce(store, prefix, &record, held).await {
                        return Stop::Failed(e.to_string());
                    }
                }
                Ok(false) => {
                    return Stop::Failed(format!("node {id}: waiting for its old entry to expire"))
                }
                Err(e) => return Stop::Failed(e.0),
            }
        }
        Err(e) => return Stop::Failed(e.to_string()),
    }
    let _ = events.send(StoreEvent::Leased(held));
    let from = match *last {
        Some(rev) => rev,
        None => match store.range(prefix.as_str()).await {
            Ok((kvs, revision)) => {
                let _ = events.send(StoreEvent::Snapshot { kvs, revision });
                *last = Some(revision);
                revision
            }
            Err(e) => return Stop::Failed(e.0),
        },
    };
    let mut watch = match store.watch(prefix.as_str(), from + 1).await {
        Ok(w) => w,
        Err(e) => return Stop::Failed(e.0),
    };
    if *up != Some(true) {
        *up = Some(true);
        let _ = events.send(StoreEvent::Up);
    }
    let mut keep = tokio::time::interval((join.ttl / 3).max(Duration::from_millis(500)));
    let mut probe = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            msg = watch.recv() => match msg {
                Some(WatchMsg::Changes { changes, revision }) => {
                    *last = Some(revision.max(last.unwrap_or(0)));
                    if events.send(StoreEvent::Changes { changes, revision }).is_err() {
                        return Stop::Failed("the agent is stopping".into());
                    }
                }
                Some(WatchMsg::Compacted) => return Stop::Resync,
                Some(WatchMsg::Broken(why)) => return Stop::Failed(why),
                None => return Stop::Failed("the watch ended".into()),
            },
            _ = keep.tick() => match store.keep_alive(held).await {
                Ok(true) => {}
                Ok(false) => return Stop::LeaseLost,
                Err(e) => return e.into(),
            },
            _ = probe.tick() => {
                if let Err(e) = store.probe().await {
                    return e.into();
                }
            }
        }
    }
}
