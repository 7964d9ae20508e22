//! The single-host store: the grid's keys, values and revisions in memory, and in one
//! JSON file after every committed transaction, written atomically (a temporary file
//! beside it, fsync, rename, fsync of the directory), so a crash leaves the old state
//! or the new one, never half. It serves one agent process; it never merges with
//! another writer of the same file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use super::{Change, Cmp, Committed, Kv, StoreError, Txn, WatchMsg, Write};

/// The lease a file store hands out: nothing expires on one host.
pub const FILE_LEASE: i64 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Stored {
    value: String,
    create_revision: i64,
    mod_revision: i64,
    /// The lease it was written under (nothing expires here; kept for its readers).
    #[serde(default, skip_serializing_if = "is_zero")]
    lease: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileImage {
    revision: i64,
    entries: BTreeMap<String, Stored>,
}

struct Inner {
    path: PathBuf,
    image: FileImage,
}

/// The file-backed store; clones share it.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
    changes: broadcast::Sender<(Vec<Change>, i64)>,
}

impl FileStore {
    /// Opens `path`, or starts empty when it does not exist. A file that is not a
    /// store image is refused (never overwritten).
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        let image = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StoreError(format!(
                    "{} is not a weft store file ({e}); move it away to start empty",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileImage::default(),
            Err(e) => return Err(StoreError(format!("reading {}: {e}", path.display()))),
        };
        let (changes, _) = broadcast::channel(1024);
        Ok(FileStore {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_path_buf(),
                image,
            })),
            path: path.to_path_buf(),
            changes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the image half-changed (a txn
        // changes a copy and swaps it in), so a poisoned lock is still good.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn revision(&self) -> i64 {
        self.lock().image.revision
    }

    fn kv(key: &str, s: &Stored) -> Kv {
        Kv {
            key: key.to_string(),
            value: s.value.as_bytes().to_vec(),
            create_revision: s.create_revision,
            mod_revision: s.mod_revision,
            lease: s.lease,
        }
    }

    pub fn get(&self, key: &str) -> Option<Kv> {
        self.lock().image.entries.get(key).map(|s| Self::kv(key, s))
    }

    pub fn range(&self, prefix: &str) -> (Vec<Kv>, i64) {
        let g = self.lock();
        let kvs = g
            .image
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| Self::kv(k, s))
            .collect();
        (kvs, g.image.revision)
    }

    pub fn txn(&self, txn: Txn) -> Result<Committed, StoreError> {
        let mut g = self.lock();
        let entries = &g.image.entries;
        let holds = txn.when.iter().all(|c| match c {
            Cmp::Absent(k) => !entries.contains_key(k),
            Cmp::AbsentPrefix(p) => entries
                .range(p.clone()..)
                .next()
                .is_none_or(|(k, _)| !k.starts_with(p.as_str())),
            Cmp::ModRevision(k, r) => entries.get(k).is_some_and(|s| s.mod_revision == *r),
        });
        if !holds || txn.then.is_empty() {
            return Ok(Committed {
                ok: holds,
                revision: g.image.revision,
            });
        }
        let revision = g.image.revision + 1;
        let mut next = g.image.entries.clone();
        let mut changes = Vec::new();
        for w in txn.then {
            match w {
                Write::Put { key, value, lease } => {
                    let value = String::from_utf8(value)
                        .map_err(|_| StoreError("a file store keeps UTF-8 values".into()))?;
                    let create_revision = next.get(&key).map_or(revision, |s| s.create_revision);
                    let s = Stored {
                        value,
                        create_revision,
                        mod_revision: revision,
                        lease,
                    };
                    changes.push(Change::Put(Self::kv(&key, &s)));
                    next.insert(key, s);
                }
                Write::Delete(key) => {
                    if next.remove(&key).is_some() {
                        changes.push(Change::Delete {
                            key,
                            mod_revision: revision,
                        });
                    }
                }
            }
        }
        let image = FileImage {
            revision,
            entries: next,
        };
        persist(&g.path, &image)?;
        g.image = image;
        // Nobody watching is fine.
        let _ = self.changes.send((changes, revision));
        Ok(Committed { ok: true, revision })
    }

    /// Changes under `prefix` from `from` on. The file store keeps no history: a
    /// watch from before its current revision is answered with `Compacted` (read a
    /// snapshot again), unless nothing happened since.
    pub fn watch(&self, prefix: &str, from: i64) -> mpsc::Receiver<WatchMsg> {
        let (tx, rx) = mpsc::channel(256);
        let mut sub = self.changes.subscribe();
        let current = self.revision();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            if from <= current {
                let _ = tx.send(WatchMsg::Compacted).await;
                return;
            }
            loop {
                match sub.recv().await {
                    Ok((changes, revision)) => {
                        let mine: Vec<Change> = changes
                            .into_iter()
                            .filter(|c| match c {
                                Change::Put(kv) => kv.key.starts_with(&prefix),
                                Change::Delete { key, .. } => key.starts_with(&prefix),
                            })
                            .collect();
                        if mine.is_empty() {
                            continue;
                        }
                        let msg = WatchMsg::Changes {
                            changes: mine,
                            revision,
                        };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(WatchMsg::Compacted).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        rx
    }
}

/// Writes the image next to `path`, syncs it, renames it over `path`, syncs the
/// directory.
fn persist(path: &Path, image: &FileImage) -> Result<(), StoreError> {
    let err = |what: &str, e: std::io::Error| StoreError(format!("{what} {}: {e}", path.display()));
    let bytes = serde_json::to_vec_pretty(image)
        .map_err(|e| StoreError(format!("encoding the store: {e}")))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| err("creating a temporary for", e))?;
        f.write_all(&bytes).map_err(|e| err("writing", e))?;
        f.sync_all().map_err(|e| err("syncing", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err("renaming over", e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-fs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn put(k: &str, v: &str) -> Write {
        Write::Put {
            key: k.into(),
            value: v.as_bytes().to_vec(),
            lease: 0,
        }
    }

    #[test]
    fn transactions_check_their_conditions_and_survive_a_reopen() {
        let dir = tmp("txn");
        let path = dir.join("grid.json");
        let s = FileStore::open(&path).unwrap();
        let c = s
            .txn(Txn {
                when: vec![Cmp::Absent("/a/x".into())],
                then: vec![put("/a/x", "1"), put("/a/y", "2")],
            })
            .unwrap();
        assert_eq!(
            c,
            Committed {
                ok: true,
                revision: 1
            }
        );
        // The same condition again fails and changes nothing.
        let c = s
            .txn(Txn {
                when: vec![Cmp::Absent("/a/x".into())],
                then: vec![put("/a/x", "3")],
            })
            .unwrap();
        assert!(!c.ok);
        assert!(
            !s.txn(Txn {
                when: vec![Cmp::AbsentPrefix("/a/".into())],
                then: vec![put("/a/z", "3")],
            })
            .unwrap()
            .ok
        );
        assert!(
            s.txn(Txn {
                when: vec![
                    Cmp::AbsentPrefix("/b/".into()),
                    Cmp::ModRevision("/a/x".into(), 1)
                ],
                then: vec![put("/a/x", "4"), Write::Delete("/a/y".into())],
            })
            .unwrap()
            .ok
        );
        let (kvs, rev) = s.range("/a/");
        assert_eq!(rev, 2);
        assert_eq!(kvs.len(), 1);
        assert_eq!(kvs[0].value, b"4");
        assert_eq!(kvs[0].create_revision, 1);
        assert_eq!(kvs[0].mod_revision, 2);
        drop(s);
        let again = FileStore::open(&path).unwrap();
        assert_eq!(again.range("/a/"), (kvs, 2));
        // No temporary is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["grid.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_and_kept() {
        let dir = tmp("bad");
        let path = dir.join("grid.json");
        std::fs::write(&path, "my notes").unwrap();
        let e = FileStore::open(&path).err().unwrap();
        assert!(e.0.contains("not a weft store file"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "my notes");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_watch_sees_later_changes_under_its_prefix_only() {
        let dir = tmp("watch");
        let s = FileStore::open(&dir.join("g.json")).unwrap();
        s.txn(Txn {
            when: vec![],
            then: vec![put("/a/1", "x")],
        })
        .unwrap();
        let mut w = s.watch("/a/", 2);
        s.txn(Txn {
            when: vec![],
            then: vec![put("/b/1", "y")],
        })
        .unwrap();
        s.txn(Txn {
            when: vec![],
            then: vec![Write::Delete("/a/1".into())],
        })
        .unwrap();
        match w.recv().await.unwrap() {
            WatchMsg::Changes { changes, revision } => {
                assert_eq!(revision, 3);
                assert_eq!(
                    changes,
                    [Change::Delete {
                        key: "/a/1".into(),
                        mod_revision: 3
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        // From a revision already passed: read a snapshot again.
        let mut old = s.watch("/a/", 1);
        assert_eq!(old.recv().await.unwrap(), WatchMsg::Compacted);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
