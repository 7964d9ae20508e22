//! The store the grid lives in, behind one small interface both backends speak: etcd
//! (`--store etcd:URL,...`, the grid's source of truth: transactions, leases, watch
//! from a revision) and a file (`--store file:PATH`, one host: the same keys and
//! revisions in one JSON file, written atomically). It moves keys and revisions; what
//! they mean is `schema`'s, and which writes are allowed is `registry`'s.

pub mod etcd;
pub mod file;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

pub use crate::grid::{Change, Kv};

/// Where the grid is kept, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    Etcd(Vec<String>),
    File(PathBuf),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<StoreSpec, String> {
        if let Some(list) = s.strip_prefix("etcd:") {
            let urls: Vec<String> = list.split(',').map(|u| u.trim().to_string()).collect();
            if urls
                .iter()
                .any(|u| !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 8)
            {
                return Err(format!(
                    "store {s:?}: etcd endpoints are http://HOST:PORT, comma-separated"
                ));
            }
            return Ok(StoreSpec::Etcd(urls));
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("store file: needs a path (file:/var/lib/weft/grid.json)".into());
            }
            return Ok(StoreSpec::File(PathBuf::from(path)));
        }
        Err(format!(
            "store {s:?}: expected etcd:http://HOST:2379[,http://...] or file:PATH"
        ))
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Etcd(urls) => write!(f, "etcd:{}", urls.join(",")),
            StoreSpec::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// The store could not be reached or did not answer; nothing was changed by the call
/// (or, for a write, whether it was is unknown and it is safe to read back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// The key does not exist.
    Absent(String),
    /// No key starts with this prefix.
    AbsentPrefix(String),
    /// The key exists and was last written at this revision.
    ModRevision(String, i64),
}

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// `lease` 0: none.
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(String),
}

/// All writes happen if every condition holds, else none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub when: Vec<Cmp>,
    pub then: Vec<Write>,
}

/// A transaction's outcome: whether its conditions held, and the store's revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub ok: bool,
    pub revision: i64,
}

/// What a watch delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMsg {
    /// Changes up to `revision`, in order.
    Changes { changes: Vec<Change>, revision: i64 },
    /// The start revision is compacted away: read a snapshot again.
    Compacted,
    /// The watch broke; watch again from the last revision seen.
    Broken(String),
}

/// A connected store (cheap to clone; clones share the connection).
#[derive(Clone)]
pub enum Store {
    /// Boxed: the client is large and the store is cloned into every task.
    Etcd(Box<etcd::EtcdStore>),
    File(file::FileStore),
}

impl Store {
    /// Connects (etcd: lazily; the first call finds out) or opens the file.
    pub async fn open(spec: &StoreSpec) -> Result<Store, StoreError> {
        match spec {
            StoreSpec::Etcd(urls) => etcd::EtcdStore::connect(urls)
                .await
                .map(|s| Store::Etcd(Box::new(s))),
            StoreSpec::File(path) => file::FileStore::open(path).map(Store::File),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        match self {
            Store::Etcd(s) => s.get(key).await,
            Store::File(s) => Ok(s.get(key)),
        }
    }

    /// Every entry under `prefix`, and the revision of the read.
    pub async fn range(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        match self {
            Store::Etcd(s) => s.range(prefix).await,
            Store::File(s) => Ok(s.range(prefix)),
        }
    }

    pub async fn txn(&self, txn: Txn) -> Result<Committed, StoreError> {
        match self {
            Store::Etcd(s) => s.txn(txn).await,
            Store::File(s) => s.txn(txn),
        }
    }

    /// Changes under `prefix` from revision `from` (inclusive) on.
    pub async fn watch(
        &self,
        prefix: &str,
        from: i64,
    ) -> Result<mpsc::Receiver<WatchMsg>, StoreError> {
        match self {
            Store::Etcd(s) => s.watch(prefix, from).await,
            Store::File(s) => Ok(s.watch(prefix, from)),
        }
    }

    /// A new lease of `ttl`.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        match self {
            Store::Etcd(s) => s.grant(ttl).await,
            Store::File(_) => Ok(file::FILE_LEASE),
        }
    }

    /// Renews a lease; `Ok(false)` when it has expired.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        match self {
            Store::Etcd(s) => s.keep_alive(lease).await,
            Store::File(_) => Ok(true),
        }
    }

    /// A cheap read that fails when the store cannot serve (no quorum, unreachable).
    pub async fn probe(&self) -> Result<i64, StoreError> {
        match self {
            Store::Etcd(s) => s.probe().await,
            Store::File(s) => Ok(s.revision()),
        }
    }

    /// The endpoints, for the status.
    pub fn describe(&self) -> (&'static str, Vec<String>) {
        match self {
            Store::Etcd(s) => ("etcd", s.endpoints().to_vec()),
            Store::File(s) => ("file", vec![s.path().display().to_string()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs_parse_and_print() {
        assert_eq!(
            "etcd:http://10.0.0.1:2379,http://10.0.0.2:2379"
                .parse::<StoreSpec>()
                .unwrap(),
            StoreSpec::Etcd(vec![
                "http://10.0.0.1:2379".into(),
                "http://10.0.0.2:2379".into()
            ])
        );
        let f: StoreSpec = "file:/var/lib/weft/grid.json".parse().unwrap();
        assert_eq!(f.to_string(), "file:/var/lib/weft/grid.json");
        for bad in [
            "",
            "etcd:",
            "etcd:10.0.0.1:2379",
            "file:",
            "consul:x",
            "etcd:http://",
        ] {
            assert!(bad.parse::<StoreSpec>().is_err(), "{bad}");
        }
    }
}
