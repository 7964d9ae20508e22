//! The etcd backend: etcd's v3 API through `etcd-client` (gRPC), every call with a
//! time limit, watches that require a leader (so a member cut off from the quorum
//! fails the watch instead of going quiet). One connection per member: a call that a
//! member does not answer goes to the next one, and the one that answered serves the
//! following calls (a stopped member then costs one failed connect, not every call).
//! It translates; it keeps no state of its own besides the connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, TxnOp,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::{Change, Cmp, Committed, Kv, StoreError, Txn, WatchMsg, Write};

/// Longest a single call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct EtcdStore {
    /// One per endpoint, in the order given.
    clients: Vec<Client>,
    /// The member that answered last.
    current: Arc<AtomicUsize>,
    endpoints: Vec<String>,
}

fn err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("etcd {what}: {e}"))
}

fn kv(k: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: k.value().to_vec(),
        create_revision: k.create_revision(),
        mod_revision: k.mod_revision(),
        lease: k.lease(),
    }
}

async fn timed<T, F>(what: &str, f: F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(err(what, e)),
        Err(_) => Err(err(what, format!("no answer within {CALL_TIMEOUT:?}"))),
    }
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let mut clients = Vec::new();
        for e in endpoints {
            // Lazy: nothing is sent before the first call.
            let c = timed("connect", Client::connect([e], Some(opts.clone()))).await?;
            clients.push(c);
        }
        if clients.is_empty() {
            return Err(err("connect", "no endpoints"));
        }
        Ok(EtcdStore {
            clients,
            current: Arc::new(AtomicUsize::new(0)),
            endpoints: endpoints.to_vec(),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Runs `call` on the member that answered last, then on each other one until one
    /// answers; the last error when none does.
    async fn each<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut last = err(what, "no endpoints");
        for i in 0..n {
            let at = (first + i) % n;
            match timed(what, call(self.clients[at].clone())).await {
                Ok(v) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => last = StoreError(format!("{} ({})", e.0, self.endpoints[at])),
            }
        }
        Err(last)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let r = self
            .each("get", |mut c| async move { c.get(key, None).await })
            .await?;
        Ok(r.kvs().first().map(kv))
    }

    pub async fn range(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        let r = self
            .each("range", |mut c| async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        let rev = r.header().map_or(0, |h| h.revision());
        Ok((r.kvs().iter().map(kv).collect(), rev))
    }

    pub async fn probe(&self) -> Result<i64, StoreError> {
        // A linearizable read: served only by a member with a quorum.
        let r = self
            .each("probe", |mut c| async move {
                c.get("/weft/", Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    pub async fn txn(&self, txn: Txn) -> Result<Committed, StoreError> {
        let when: Vec<Compare> = txn
            .when
            .into_iter()
            .map(|c| match c {
                Cmp::Absent(k) => Compare::version(k, CompareOp::Equal, 0),
                Cmp::AbsentPrefix(p) => Compare::version(p, CompareOp::Equal, 0).with_prefix(),
                Cmp::ModRevision(k, r) => Compare::mod_revision(k, CompareOp::Equal, r),
            })
            .collect();
        let then: Vec<TxnOp> = txn
            .then
            .into_iter()
            .map(|w| match w {
                Write::Put { key, value, lease } => {
                    let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                    TxnOp::put(key, value, opts)
                }
                Write::Delete(k) => TxnOp::delete(k, None),
            })
            .collect();
        let txn = etcd_client::Txn::new().when(when).and_then(then);
        let r = self
            .each("txn", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(Committed {
            ok: r.succeeded(),
            revision: r.header().map_or(0, |h| h.revision()),
        })
    }

    pub async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let r = self
            .each("lease grant", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(r.id())
    }

    /// One keep-alive round trip; false when the lease is gone.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.each("lease keep-alive", |mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            let r = stream.message().await?;
            Ok(r.map(|r| r.ttl() > 0).unwrap_or(false))
        })
        .await
    }

    pub async fn watch(
        &self,
        prefix: &str,
        from: i64,
    ) -> Result<mpsc::Receiver<WatchMsg>, StoreError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let stream = self
            .each("watch", |mut c| {
                let opts = opts.clone();
                async move { c.watch(prefix, Some(opts)).await }
            })
            .await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                let msg = match stream.message().await {
                    Ok(Some(r)) if r.compact_revision() > 0 => WatchMsg::Compacted,
                    Ok(Some(r)) if r.canceled() => {
                        WatchMsg::Broken(format!("watch canceled: {}", r.cancel_reason()))
                    }
                    Ok(Some(r)) => {
                        let revision = r.header().map_or(0, |h| h.revision());
                        let changes: Vec<Change> = r
                            .events()
                            .iter()
                            .filter_map(|e| {
                                let k = e.kv()?;
                                Some(match e.event_type() {
                                    EventType::Put => Change::Put(kv(k)),
                                    EventType::Delete => Change::Delete {
                                        key: String::from_utf8_lossy(k.key()).into_owned(),
                                        mod_revision: k.mod_revision(),
                                    },
                                })
                            })
                            .collect();
                        if changes.is_empty() {
                            // Created, or a progress notification: nothing to pass on
                            // (a created response's revision is not yet caught up to).
                            continue;
                        }
                        let last = changes
                            .iter()
                            .map(|c| match c {
                                Change::Put(kv) => kv.mod_revision,
                                Change::Delete { mod_revision, .. } => *mod_revision,
                            })
                            .max()
                            .unwrap_or(revision);
                        WatchMsg::Changes {
                            changes,
                            revision: last,
                        }
                    }
                    Ok(None) => WatchMsg::Broken("watch stream ended".into()),
                    Err(e) => WatchMsg::Broken(format!("watch: {e}")),
                };
                let end = matches!(msg, WatchMsg::Compacted | WatchMsg::Broken(_));
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
