//! Snapshots of the replicated state: their format, and the directory that keeps the current one.
//!
//! Owns the snapshot encoding ([`SnapshotDoc`]: a versioned JSON document holding every registry
//! table, the settings, the admin audit trail, the cluster state, the applied log id and the
//! membership) and `DATA_DIR/snapshots/`, where the current snapshot's bytes live (its meta is in
//! the registry's redb file, see `store.rs`).
//!
//! Invariants: a snapshot file is written under a temporary name, fsynced, renamed and its
//! directory fsynced before the store commits the meta that names it, so committed meta always
//! names a complete file; files other than the current one are deleted once the meta is
//! committed (and at open, which clears what a crash left behind). A snapshot from another
//! format or version is refused before anything is touched. No redb here.
//! May import `registry` and `cluster::types` only (and openraft, serde).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::{LogId, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::store::StoreError;
use super::types::{ClusterState, NodeId, NodeInfo};

/// Names the document's kind; anything else is not an lgsp snapshot.
pub const SNAPSHOT_FORMAT: &str = "lgsp-state-snapshot";
/// Bumped when the layout changes incompatibly; a node refuses any other version.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The whole replicated state at one applied log id, as it travels and as it is kept on disk.
///
/// Rows are carried as the exact JSON the store keeps in redb, so building and installing a
/// snapshot neither decodes nor re-encodes them (install still decodes each row once, to
/// rebuild the in-memory registry and to refuse a damaged one).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotDoc {
    pub format: String,
    pub version: u32,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, NodeInfo>,
    /// Registry table name -> (key, stored row), in key order.
    pub tables: BTreeMap<String, Vec<(String, Box<RawValue>)>>,
    pub settings: Option<Box<RawValue>>,
    /// Admin audit trail: (log index, stored entry).
    pub admin_audit: Vec<(u64, Box<RawValue>)>,
    pub cluster: ClusterState,
}

/// Just enough of a document to check what it is before reading the rest.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    version: Option<u32>,
}

impl SnapshotDoc {
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|e| StoreError::Snapshot(format!("cannot encode the snapshot: {e}")))
    }

    /// Reads a document, refusing another format or version with an operator-facing reason.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotDoc, StoreError> {
        let header: Header = serde_json::from_slice(bytes).map_err(|e| {
            StoreError::Snapshot(format!(
                "the snapshot is damaged or is not an lgsp snapshot ({e}); the node cannot catch up from it. \
                 Check the sending node's disk and let it build a new snapshot"
            ))
        })?;
        if header.format.as_deref() != Some(SNAPSHOT_FORMAT) {
            return Err(StoreError::Snapshot(format!(
                "the snapshot's format is {:?}, not {SNAPSHOT_FORMAT:?}; it was not made by lgsp",
                header.format.unwrap_or_default()
            )));
        }
        match header.version {
            Some(SNAPSHOT_VERSION) => {}
            other => {
                return Err(StoreError::Snapshot(format!(
                    "the snapshot has format version {}, but this node reads only version {SNAPSHOT_VERSION}; \
                     run the same lgsp version on every node (upgrade this node), then restart it",
                    other.map_or_else(|| "none".to_owned(), |v| v.to_string())
                )))
            }
        }
        serde_json::from_slice(bytes).map_err(|e| {
            StoreError::Snapshot(format!(
                "the snapshot (version {SNAPSHOT_VERSION}) cannot be read: {e}; it is damaged. \
                 Check the sending node's disk and let it build a new snapshot"
            ))
        })
    }
}

/// What the store records (in redb) about the current snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurrentSnapshot {
    pub meta: SnapshotMeta<NodeId, NodeInfo>,
    /// File name inside the snapshot directory (local; never taken from a peer).
    pub file: String,
}

/// A new, unique snapshot id: `{term}-{index}-{random}`.
pub fn new_snapshot_id(last: Option<&LogId<NodeId>>) -> String {
    let (term, index) = last.map_or((0, 0), |l| (l.leader_id.term, l.index));
    format!("{term}-{index}-{:016x}", rand::random::<u64>())
}

/// The directory holding the current snapshot's file.
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Storage(format!("cannot {what} {}: {e}", path.display()))
}

/// How much of a snapshot is written between two syncs. The Raft log's fsyncs share the disk:
/// one sync of a whole snapshot (tens of megabytes with a large registry) made them wait for
/// all of it, stalling writes for hundreds of milliseconds.
const SYNC_CHUNK: usize = 4 << 20;

/// temp file -> written and synced a chunk at a time -> rename -> fsync the directory (so the
/// rename itself survives a crash).
fn write_durably(dir: &Path, tmp: &Path, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(tmp)?;
    for chunk in bytes.chunks(SYNC_CHUNK) {
        f.write_all(chunk)?;
        f.sync_data()?;
    }
    f.sync_all()?;
    fs::rename(tmp, dest)?;
    fs::File::open(dir)?.sync_all()
}

impl SnapshotDir {
    pub fn open(dir: &Path) -> Result<SnapshotDir, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_err("create the snapshot directory", dir, e))?;
        // Snapshots hold the whole registry (password hashes, sealed secrets): owner only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io_err("restrict the snapshot directory", dir, e))?;
        }
        Ok(SnapshotDir { dir: dir.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `bytes` durably under a new name and returns the name.
    pub fn write(&self, index: u64, bytes: &[u8]) -> Result<String, StoreError> {
        let name = format!("{index:020}-{:016x}.snap", rand::random::<u64>());
        let tmp = self.dir.join(format!("{name}.tmp"));
        let dest = self.dir.join(&name);
        if let Err(e) = write_durably(&self.dir, &tmp, &dest, bytes) {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&dest);
            return Err(io_err("write the snapshot", &dest, e));
        }
        Ok(name)
    }

    pub fn read(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join(name);
        fs::read(&path).map_err(|e| io_err("read the current snapshot", &path, e))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.dir.join(name).is_file()
    }

    /// Deletes a file this store wrote but did not make current.
    pub fn discard(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(name));
    }

    /// Deletes every file but `keep` (best effort: a leftover file only costs disk space).
    pub fn remove_others(&self, keep: Option<&str>) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            if keep.is_some_and(|k| name == k) {
                continue;
            }
            if let Err(err) = fs::remove_file(e.path()) {
                tracing::warn!(file = %e.path().display(), error = %err, "cannot delete an old snapshot; delete it by hand to free the space");
            }
        }
    }
}
