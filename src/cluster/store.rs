//! The replicated state and its durable storage: the registry, the cluster's bookkeeping, the
//! admin audit trail and the Raft state machine over them, in one redb file
//! (`DATA_DIR/registry.redb`), with the current snapshot's bytes in `DATA_DIR/snapshots/`.
//!
//! Tables: one per registry entity kind (key -> JSON row), `settings`, `admin_audit` (log index
//! -> [`AuditEntry`]), `cluster` (the [`ClusterState`], JSON), `meta` (the last applied index,
//! u64, kept for older readers) and `raft_meta` (applied log id, last membership, current
//! snapshot's meta, JSON).
//!
//! Invariants:
//! - Applying changes the in-memory state only; the changes are written to the file by
//!   [`Store::flush_locked`], at once or (with [`Store::start_flusher`], on a node) up to
//!   [`FLUSH_DELAY`] later, so that one redb transaction carries every batch applied
//!   meanwhile. One write holds every changed row, the audit entries, the cluster state, the
//!   applied log id and the membership, so the file always holds the state at exactly the
//!   applied log id it names. Every [`DURABLE_EVERY`]th write, and every snapshot, is
//!   fsynced; the others are made durable by the next fsynced one (redb). Entries lost in a
//!   crash (applied but not yet written or fsynced) are applied again from the Raft log at
//!   start-up: the log keeps them until a snapshot covers them, and snapshots are built from
//!   the file after a write. A failed write stops applying for good (the node restarts and
//!   applies again from the log).
//! - Applying is deterministic: a refused command is an outcome (kept in memory for
//!   [`Store::outcome`]), the state is unchanged, and every node computes the same.
//! - Changes are serialised by one writer lock (lock order: writer -> file -> snapshot lock ->
//!   redb write transaction); readers use the in-memory state and never wait for disk. The
//!   flusher thread takes the applied changes under the writer lock and writes them under the
//!   file lock only, so applying goes on while they are written and fsynced; writes reach the
//!   file in the order their changes were taken.
//! - Snapshots, backups and admin-audit searches read the file after writing what is waiting,
//!   from a redb read transaction (MVCC), so they are consistent with exactly the applied log
//!   id they name, without blocking writers while they read.
//!
//! May import `registry` only (and the other `cluster` files); openraft and redb.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, ReadTransaction, ReadableTable, Table, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

use super::log_store::LogStore;
use super::snapshot::{new_snapshot_id, CurrentSnapshot, SnapshotDir, SnapshotDoc, SNAPSHOT_FORMAT, SNAPSHOT_VERSION};
use super::types::{
    BackupPoint, ClusterCommand, ClusterEnvelope, ClusterOutcome, ClusterRefusal, ClusterState, NodeId, NodeInfo, Request, TypeConfig,
};
use crate::registry::{self, Envelope, Outcome, RegistryError, State, Timestamp};

/// The registry file inside the data directory.
pub const REGISTRY_FILE: &str = "registry.redb";
/// The Raft log file inside the data directory.
pub const LOG_FILE: &str = "raft-log.redb";
/// The directory, beside the registry file, that holds the current snapshot.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// How many recent outcomes [`Store::outcome`] remembers (by log index).
pub const OUTCOMES_KEPT: usize = 65_536;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new(SETTINGS_TABLE);
/// The name [`Store::last_changed`] knows the registry settings by.
pub use crate::registry::SETTINGS_TABLE;
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("admin_audit");
const CLUSTER: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster");
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const LAST_APPLIED: &str = "last_applied";
const APPLIED_LOG_ID: &str = "applied_log_id";
const MEMBERSHIP: &str = "membership";
const CURRENT_SNAPSHOT: &str = "current_snapshot";
const CLUSTER_STATE: &str = "state";

fn rows(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// The registry refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] RegistryError),
    #[error("storage failed: {0}; check the data directory's disk space and permissions")]
    Storage(String),
    #[error("storage holds a record that cannot be read ({table}/{key}): {reason}; restore from backup")]
    Corrupt { table: String, key: String, reason: String },
    /// A snapshot was refused (other version, damaged, inconsistent); nothing changed.
    #[error("snapshot refused: {0}")]
    Snapshot(String),
}

fn storage<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// One line of the admin audit trail: who changed what, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub index: u64,
    pub at: Timestamp,
    pub user: String,
    pub role: String,
    #[serde(default)]
    pub agency: Option<String>,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What applying one log entry produced. Apply is deterministic, so every node computes the
/// same value for the same index; the node that proposed an entry reads it with
/// [`Store::outcome`] once its applied index has reached the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Registry(Result<Outcome, RegistryError>),
    Cluster(Result<ClusterOutcome, ClusterRefusal>),
    /// A batch entry: each member's outcome, in order.
    Batch(Vec<Applied>),
    /// A blank or membership entry.
    Other,
}

impl Applied {
    /// The outcome of the write at `position` of this entry (`None`: the entry itself).
    pub fn member(self, position: Option<u32>) -> Option<Applied> {
        match (self, position) {
            (a, None) => Some(a),
            (Applied::Batch(mut v), Some(i)) => {
                let i = usize::try_from(i).ok()?;
                (i < v.len()).then(|| v.swap_remove(i))
            }
            (_, Some(_)) => None,
        }
    }
}

/// Where the state machine stands.
#[derive(Debug, Clone, Default)]
struct Position {
    log_id: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
}

/// The replicated state (registry, cluster bookkeeping, admin audit) and its storage. Shared
/// (`Arc`) by the Raft state machine, the admin API and the gateway's view builder.
pub struct Store {
    db: Database,
    snapshots: SnapshotDir,
    state: RwLock<State>,
    cluster: RwLock<ClusterState>,
    /// Serialises every change (apply, snapshot install, the single-node `propose`).
    writer: Mutex<()>,
    /// Serialises writes of applied changes to the file (taken under `writer`, which a write
    /// of the flusher thread releases before it writes) and snapshot installs.
    file: Mutex<()>,
    /// Updated after each commit; read without waiting for disk.
    position: RwLock<Position>,
    /// Serialises saving/reading the current snapshot (file + meta).
    snapshot_lock: Mutex<()>,
    /// The outcome of each recently applied entry, by log index (at most [`OUTCOMES_KEPT`]).
    outcomes: Mutex<BTreeMap<u64, Applied>>,
    /// Announces each newly applied index (read views rebuild from it).
    applied_tx: tokio::sync::watch::Sender<u64>,
    /// For each registry table (and `settings`), the index of the last applied entry that
    /// changed it; a table not listed last changed at or before `changed_floor`.
    changed_at: Mutex<HashMap<&'static str, u64>>,
    /// Index at which the whole state was last replaced (open, snapshot install).
    changed_floor: std::sync::atomic::AtomicU64,
    /// What has been applied but not yet written to the file (lock order: writer -> state ->
    /// cluster -> unwritten).
    unwritten: Mutex<Unwritten>,
    /// Wakes the flusher thread ([`Store::start_flusher`]); without one, each apply writes at once.
    flush_wake: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Where committed backup points go (see [`Store::set_backup_sink`]).
    backup_sink: Mutex<Option<tokio::sync::mpsc::UnboundedSender<BackupSnapshot>>>,
}

/// A backup point committed at `log_id`, with the encoded state at exactly that entry (a
/// [`SnapshotDoc`]), for the node's backup writer.
#[derive(Debug, Clone)]
pub struct BackupSnapshot {
    pub point: BackupPoint,
    pub log_id: LogId<NodeId>,
    pub registry: Vec<u8>,
}

/// The ids of the backups an entry asks for (a batch's members included).
fn backup_ids(e: &Entry<TypeConfig>) -> Vec<String> {
    fn walk(r: &Request, out: &mut Vec<String>) {
        match r {
            Request::Cluster(ClusterEnvelope { command: ClusterCommand::Backup { id, .. }, .. }) => out.push(id.clone()),
            Request::Batch(members) => members.iter().for_each(|m| walk(m, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let EntryPayload::Normal(r) = &e.payload {
        walk(r, &mut out);
    }
    out
}

/// Every this many writes of applied entries one is committed durably (the others are made
/// durable by it, by a snapshot, or applied again from the Raft log after a crash): about once
/// a second under steady load, so that each fsync has a second's changes to write at most.
const DURABLE_EVERY: u32 = 10;

/// How long the flusher thread lets applied entries gather in memory before it writes them.
/// Each write is a redb commit (about 150 µs of CPU on the benchmark machine, more with many
/// rows); at 100 ms a node under steady load spends little CPU on them, and a crash re-applies
/// at most that much of the log.
const FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Applied changes taken out of the in-memory state for one write to the file, not yet in it:
/// the write holds the file lock from the moment its changes were taken.
pub(super) struct PendingWrite<'a> {
    _file: MutexGuard<'a, ()>,
    pos: Position,
    changes: crate::registry::Changes,
    audit: Vec<(u64, AuditEntry)>,
    cluster_bytes: Option<Vec<u8>>,
}

/// Applied effects not yet written to the registry file. The changed rows themselves stay in
/// [`State`]'s change journal until [`Store::flush_locked`] drains it.
#[derive(Debug, Default)]
struct Unwritten {
    /// True when entries were applied since the last write (the write brings the file to the
    /// store's position).
    waiting: bool,
    /// Admin-audit lines by key.
    audit: Vec<(u64, AuditEntry)>,
    /// The last admin-audit key assigned, written or not.
    audit_last: Option<u64>,
    /// True when the cluster bookkeeping changed.
    cluster: bool,
    /// Writes committed without an fsync since the last durable one.
    lazy: u32,
    /// Why a write failed. Nothing more is applied then: the entries stay in the Raft log and
    /// are applied again when the node restarts.
    failed: Option<String>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // A clean stop leaves nothing to apply again at start-up (a failure is logged).
        let _ = self.flush();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens everything a node stores in `data_dir`: the registry store ([`REGISTRY_FILE`] and
/// [`SNAPSHOT_DIR`]), the Raft log ([`LOG_FILE`]) and the state machine over the store. The
/// `Arc<Store>` is for the rest of the node (reads, outcomes, the applied-index watch); the log
/// store and the state machine go to `openraft::Raft::new`. Blocking: call from a blocking
/// context at start-up.
pub fn open_storage(data_dir: &Path) -> Result<(Arc<Store>, LogStore, StateMachine), StoreError> {
    let store = Arc::new(Store::open_registry(&data_dir.join(REGISTRY_FILE))?);
    let log = LogStore::open_at(&data_dir.join(LOG_FILE))?;
    Ok((store.clone(), log, StateMachine::new(store)))
}

impl Store {
    /// Opens (or creates) the registry file at `path` and loads the whole state into memory;
    /// the snapshot directory is [`SNAPSHOT_DIR`] beside it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_registry(path)
    }

    fn open_registry(path: &Path) -> Result<Store, StoreError> {
        // The whole registry lives in memory as `State`; redb's page cache only needs to hold
        // what a write transaction touches, so it is kept small (its default would cache the
        // whole file a second time).
        let db = redb::Builder::new()
            .set_cache_size(4 << 20)
            .create(path)
            .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(storage)?;
        {
            tx.open_table(META).map_err(storage)?;
            tx.open_table(SETTINGS).map_err(storage)?;
            tx.open_table(AUDIT).map_err(storage)?;
            tx.open_table(CLUSTER).map_err(storage)?;
            tx.open_table(RAFT_META).map_err(storage)?;
            for t in State::TABLES {
                tx.open_table(rows(t)).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)?;
        let snapshots = SnapshotDir::open(&path.parent().unwrap_or(Path::new("")).join(SNAPSHOT_DIR))?;

        let rtx = db.begin_read().map_err(storage)?;
        let state = load_state(&rtx)?;
        let cluster: ClusterState = get_json(&rtx.open_table(CLUSTER).map_err(storage)?, "cluster", CLUSTER_STATE)?.unwrap_or_default();
        let position = read_position(&rtx)?;
        let audit_last = last_audit_key(&rtx)?;
        let current: Option<CurrentSnapshot> = get_json(&rtx.open_table(RAFT_META).map_err(storage)?, "raft_meta", CURRENT_SNAPSHOT)?;
        drop(rtx);

        let keep = match current {
            Some(c) if snapshots.exists(&c.file) => Some(c.file),
            Some(c) => {
                // Without its file the snapshot is useless; forgetting it lets openraft build a
                // new one instead of failing when a follower needs it.
                tracing::warn!(file = %snapshots.path().join(&c.file).display(), "the current snapshot's file is missing; a new snapshot will be built");
                let tx = db.begin_write().map_err(storage)?;
                tx.open_table(RAFT_META).map_err(storage)?.remove(CURRENT_SNAPSHOT).map_err(storage)?;
                tx.commit().map_err(storage)?;
                None
            }
            None => None,
        };
        snapshots.remove_others(keep.as_deref());

        let index = position.log_id.map_or(0, |l| l.index);
        let (applied_tx, _) = tokio::sync::watch::channel(index);
        Ok(Store {
            db,
            snapshots,
            state: RwLock::new(state),
            cluster: RwLock::new(cluster),
            writer: Mutex::new(()),
            file: Mutex::new(()),
            position: RwLock::new(position),
            snapshot_lock: Mutex::new(()),
            outcomes: Mutex::new(BTreeMap::new()),
            unwritten: Mutex::new(Unwritten { audit_last, ..Unwritten::default() }),
            flush_wake: Mutex::new(None),
            backup_sink: Mutex::new(None),
            applied_tx,
            changed_at: Mutex::new(HashMap::new()),
            changed_floor: std::sync::atomic::AtomicU64::new(index),
        })
    }

    /// Reads the applied position back from the registry file in a fresh read transaction
    /// and returns its index: proves the file can still be read (`/status/services`). Blocking.
    pub fn probe(&self) -> Result<u64, StoreError> {
        let rtx = self.db.begin_read().map_err(storage)?;
        Ok(read_position(&rtx)?.log_id.map_or(0, |l| l.index))
    }

    /// The applied registry, for reading. Do not hold across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The applied cluster bookkeeping, for reading in place. Do not hold across an `.await`.
    pub fn cluster(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.cluster.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The applied cluster bookkeeping (join tokens, admitted nodes).
    pub fn cluster_state(&self) -> ClusterState {
        self.cluster.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes whenever entries have been applied and made durable (or a snapshot installed).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// An index at or after the last applied entry that changed any of `tables` (registry
    /// table names, or [`SETTINGS_TABLE`]; entries applied in one batch count at its last
    /// index): a reader built from the state at that index or later is still current for them,
    /// whatever was applied since.
    pub fn last_changed(&self, tables: &[&str]) -> u64 {
        let floor = self.changed_floor.load(std::sync::atomic::Ordering::Acquire);
        let at = lock(&self.changed_at);
        tables.iter().filter_map(|t| at.get(t).copied()).fold(floor, u64::max)
    }

    /// The index of the last applied entry; 0 if none.
    pub fn last_applied(&self) -> u64 {
        self.applied_log_id().map_or(0, |l| l.index)
    }

    /// The id of the last applied entry.
    pub fn applied_log_id(&self) -> Option<LogId<NodeId>> {
        self.position().log_id
    }

    /// The last membership applied (from a membership entry or a snapshot).
    pub fn membership(&self) -> StoredMembership<NodeId, NodeInfo> {
        self.position().membership
    }

    /// What applying the entry at `index` produced, if it was applied by this process recently
    /// (the last [`OUTCOMES_KEPT`] entries; not entries covered by an installed snapshot).
    pub fn outcome(&self, index: u64) -> Option<Applied> {
        lock(&self.outcomes).get(&index).cloned()
    }

    fn position(&self) -> Position {
        self.position.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies committed entries in one transaction; returns each entry's index and outcome.
    pub fn apply(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<Vec<(u64, Applied)>, StoreError> {
        let w = lock(&self.writer);
        self.apply_locked(&w, entries.into_iter().collect())
    }

    /// Applies entries; a batch is cut after each entry that asks for a backup, so the backup
    /// reads the state at exactly that entry (a redb read transaction opened right after its
    /// commit), before the rest of the batch is applied.
    fn apply_locked(&self, writer: &MutexGuard<'_, ()>, mut rest: Vec<Entry<TypeConfig>>) -> Result<Vec<(u64, Applied)>, StoreError> {
        let mut all = Vec::new();
        while !rest.is_empty() {
            let cut = rest.iter().position(|e| !backup_ids(e).is_empty()).map_or(rest.len(), |i| i + 1);
            let tail = rest.split_off(cut);
            let point = rest.last().map(|e| (e.log_id, backup_ids(e))).filter(|(_, ids)| !ids.is_empty());
            all.extend(self.apply_chunk(writer, rest)?);
            if let Some((log_id, ids)) = point {
                // The backup reads the file: it must hold the state at exactly this entry.
                self.flush_locked(writer)?;
                self.hand_over_backups(log_id, &ids);
            }
            rest = tail;
        }
        Ok(all)
    }

    /// Sends the backup points just applied and written at `log_id` to the backup writer, each
    /// with the state at exactly that entry (read in a thread from a read transaction opened
    /// now). Under the writer lock, right after the write.
    fn hand_over_backups(&self, log_id: LogId<NodeId>, ids: &[String]) {
        let Some(sink) = lock(&self.backup_sink).clone() else { return };
        let points: Vec<BackupPoint> =
            self.cluster().backups.iter().filter(|b| ids.contains(&b.id) && b.index == log_id.index).cloned().collect();
        if points.is_empty() {
            return;
        }
        let rtx = match self.db.begin_read() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(index = log_id.index, error = %e, "cannot open a read transaction for a backup; no backup file is written on this node for it");
                return;
            }
        };
        let spawned = std::thread::Builder::new().name("lgsp-backup-dump".into()).spawn(move || {
            let doc = match dump(&rtx) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(index = log_id.index, error = %e, "cannot read the state for a backup; no backup file is written on this node for it");
                    return;
                }
            };
            let bytes = match doc.encode() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode the state for a backup");
                    return;
                }
            };
            for point in points {
                let _ = sink.send(BackupSnapshot { point, log_id, registry: bytes.clone() });
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the backup thread; no backup file is written on this node");
        }
    }

    /// Where backup points go once committed (the node's backup writer). Without a sink, backup
    /// entries are applied (and audited) but no file is written on this node.
    pub fn set_backup_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<BackupSnapshot>) {
        *lock(&self.backup_sink) = Some(sink);
    }

    fn apply_chunk(&self, writer: &MutexGuard<'_, ()>, entries: Vec<Entry<TypeConfig>>) -> Result<Vec<(u64, Applied)>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pos = self.position();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut cluster = self.cluster.write().unwrap_or_else(|e| e.into_inner());
        let mut unwritten = lock(&self.unwritten);
        if let Some(why) = &unwritten.failed {
            return Err(StoreError::Storage(format!(
                "the registry file could not be written ({why}); nothing more is applied until the node restarts"
            )));
        }
        let mut applied = Vec::with_capacity(entries.len());
        for entry in entries {
            let log_id = entry.log_id;
            let index = log_id.index;
            let outcome = match entry.payload {
                EntryPayload::Blank => Applied::Other,
                EntryPayload::Membership(m) => {
                    pos.membership = StoredMembership::new(Some(log_id), m);
                    Applied::Other
                }
                EntryPayload::Normal(request) => {
                    ApplyCx { state: &mut state, cluster: &mut cluster, unwritten: &mut unwritten }.apply(index, &request)
                }
            };
            pos.log_id = Some(log_id);
            applied.push((index, outcome));
        }
        let changed = state.settle();
        unwritten.waiting = true;
        drop(unwritten);
        drop(cluster);
        drop(state);
        let index = pos.log_id.map_or(0, |l| l.index);
        // Under the writer lock: the next write reads the position set here.
        *self.position.write().unwrap_or_else(|e| e.into_inner()) = pos;
        {
            let mut at = lock(&self.changed_at);
            for table in changed {
                at.insert(table, index);
            }
        }
        {
            let mut outcomes = lock(&self.outcomes);
            outcomes.extend(applied.iter().cloned());
            while outcomes.len() > OUTCOMES_KEPT {
                outcomes.pop_first();
            }
        }
        match &*lock(&self.flush_wake) {
            // The flusher is alive as long as the store: a failed send only means it is gone.
            Some(wake) => {
                let _ = wake.send(());
            }
            None => self.flush_locked(writer)?,
        }
        self.applied_tx.send_replace(index);
        Ok(applied)
    }

    /// Starts the thread that writes applied entries to the file [`FLUSH_DELAY`] after the
    /// first of them, so that one redb commit carries every batch applied meanwhile. The
    /// Raft log holds every applied entry until a snapshot covers it, and a snapshot is built
    /// from the file only after writing it, so a crash loses nothing: the entries not yet
    /// written are applied again at start-up. Without this thread each apply writes at once.
    pub fn start_flusher(self: &Arc<Self>) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let store = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("lgsp-state-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Gather the wake-ups of the batches applied meanwhile.
                    let until = std::time::Instant::now() + FLUSH_DELAY;
                    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) = rx.recv_timeout(left) {
                            return;
                        }
                    }
                    let Some(store) = store.upgrade() else { return };
                    let _ = store.flush();
                }
            })
            .map_err(|e| StoreError::Storage(format!("cannot start the state flusher thread: {e}")))?;
        *lock(&self.flush_wake) = Some(tx);
        Ok(())
    }

    /// Makes applies leave their writes waiting, as with the flusher thread, but with nothing
    /// that writes them (tests write them with [`Store::begin_flush`] and [`Store::write`]).
    /// The writes wait while the returned receiver lives.
    #[cfg(test)]
    pub(super) fn defer_writes(&self) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        *lock(&self.flush_wake) = Some(tx);
        rx
    }

    /// Writes everything applied so far to the file (one redb transaction). Blocking. The
    /// applied changes are taken under the writer lock, which is released before the file is
    /// written: applying goes on meanwhile (the write's fsync can take long with a large state).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.begin_flush()?.map_or(Ok(()), |w| self.write(w))
    }

    /// The first half of [`Store::flush`]: takes what waits out of memory, under the writer
    /// lock, which is released on return (nothing when nothing waits).
    pub(super) fn begin_flush(&self) -> Result<Option<PendingWrite<'_>>, StoreError> {
        let w = lock(&self.writer);
        self.drain_locked(&w)
    }

    /// As [`Store::flush`], with the writer lock held throughout: once it returns, the file
    /// holds exactly the applied state.
    fn flush_locked(&self, writer: &MutexGuard<'_, ()>) -> Result<(), StoreError> {
        self.drain_locked(writer)?.map_or(Ok(()), |w| self.write(w))
    }

    /// Takes what was applied since the last write out of the in-memory state: the changed
    /// rows (from the state's change journal), the admin-audit lines, the cluster state, and the
    /// position they bring the file to. Also takes the file lock, before the writer lock is
    /// released, so that writes reach the file in the order their changes were taken.
    fn drain_locked(&self, _writer: &MutexGuard<'_, ()>) -> Result<Option<PendingWrite<'_>>, StoreError> {
        // Taken first, even when nothing waits: a write of earlier changes still in flight
        // (the flusher thread's) finishes before this returns, so that a reader of the file
        // who flushed first sees everything applied.
        let file = lock(&self.file);
        {
            // Nothing is applied without the writer lock, so what this reads stays true.
            let unwritten = lock(&self.unwritten);
            if let Some(why) = &unwritten.failed {
                return Err(StoreError::Storage(format!("the registry file could not be written ({why})")));
            }
            if !unwritten.waiting {
                return Ok(None);
            }
        }
        let pos = self.position();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let cluster = self.cluster.read().unwrap_or_else(|e| e.into_inner());
        let mut unwritten = lock(&self.unwritten);
        unwritten.waiting = false;
        let changes = state.drain_changes();
        drop(state);
        let audit = std::mem::take(&mut unwritten.audit);
        let cluster_bytes =
            if std::mem::take(&mut unwritten.cluster) { Some(serde_json::to_vec(&*cluster).map_err(storage)?) } else { None };
        Ok(Some(PendingWrite { _file: file, pos, changes, audit, cluster_bytes }))
    }

    /// Writes the changes taken by [`Store::begin_flush`] (or a flush under the writer lock) in
    /// one transaction, with the applied log id and the membership (the writer lock is not
    /// needed: the file lock the changes came with orders the writes).
    /// Every [`DURABLE_EVERY`]th write is fsynced. A failure is kept: every later write and
    /// apply fails, which stops the Raft core, and the node applies the entries again from its
    /// log when it restarts.
    pub(super) fn write(&self, d: PendingWrite<'_>) -> Result<(), StoreError> {
        let durable = {
            let unwritten = lock(&self.unwritten);
            if let Some(why) = &unwritten.failed {
                return Err(StoreError::Storage(format!("the registry file could not be written ({why})")));
            }
            unwritten.lazy + 1 >= DURABLE_EVERY
        };
        let written = (|| -> Result<(), StoreError> {
            let mut tx = self.db.begin_write().map_err(storage)?;
            if !durable {
                tx.set_durability(redb::Durability::None);
            }
            for (table, key, value) in &d.changes.rows {
                let mut t = tx.open_table(rows(table)).map_err(storage)?;
                match value {
                    Some(bytes) => t.insert(key.as_str(), bytes.as_slice()).map(|_| ()).map_err(storage)?,
                    None => t.remove(key.as_str()).map(|_| ()).map_err(storage)?,
                }
            }
            if let Some(s) = &d.changes.settings {
                tx.open_table(SETTINGS).map_err(storage)?.insert("settings", s.as_slice()).map_err(storage)?;
            }
            {
                let mut t = tx.open_table(AUDIT).map_err(storage)?;
                for (key, entry) in &d.audit {
                    let bytes = serde_json::to_vec(entry).map_err(storage)?;
                    t.insert(*key, bytes.as_slice()).map_err(storage)?;
                }
            }
            if let Some(bytes) = &d.cluster_bytes {
                tx.open_table(CLUSTER).map_err(storage)?.insert(CLUSTER_STATE, bytes.as_slice()).map_err(storage)?;
            }
            tx.open_table(META).map_err(storage)?.insert(LAST_APPLIED, d.pos.log_id.map_or(0, |l| l.index)).map_err(storage)?;
            {
                let mut meta = tx.open_table(RAFT_META).map_err(storage)?;
                put_json(&mut meta, APPLIED_LOG_ID, &d.pos.log_id)?;
                put_json(&mut meta, MEMBERSHIP, &d.pos.membership)?;
            }
            tx.commit().map_err(storage)
        })();
        let mut unwritten = lock(&self.unwritten);
        match written {
            Ok(()) => {
                unwritten.lazy = if durable { 0 } else { unwritten.lazy + 1 };
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write applied entries to the registry file; this node stops applying entries and applies them again from its Raft log when restarted");
                unwritten.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The applied state as a snapshot document (from one read transaction), without saving it.
    pub fn snapshot_doc(&self) -> Result<SnapshotDoc, StoreError> {
        dump(&self.read_all()?)
    }

    /// A read transaction on the file holding everything applied so far: writes what is
    /// waiting, then opens the transaction before the next apply (MVCC keeps it consistent
    /// while reading goes on without the writer lock).
    fn read_all(&self) -> Result<ReadTransaction, StoreError> {
        // A write in flight is waited for before the writer lock is taken, so that applying
        // does not wait for it too (the flush below waits again for one started meanwhile).
        drop(lock(&self.file));
        let w = lock(&self.writer);
        self.flush_locked(&w)?;
        self.db.begin_read().map_err(storage)
    }

    /// Builds a snapshot of the applied state, keeps it as the current snapshot and returns it.
    pub fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let started = std::time::Instant::now();
        let doc = dump(&self.read_all()?)?;
        let read = started.elapsed();
        let bytes = doc.encode()?;
        let encoded = started.elapsed();
        let meta = SnapshotMeta {
            last_log_id: doc.last_applied,
            snapshot_id: new_snapshot_id(doc.last_applied.as_ref()),
            last_membership: doc.membership,
        };
        let _s = lock(&self.snapshot_lock);
        let file = self.snapshots.write(meta.last_log_id.map_or(0, |l| l.index), &bytes)?;
        tracing::info!(
            index = meta.last_log_id.map_or(0, |l| l.index),
            bytes = bytes.len(),
            read_ms = read.as_millis() as u64,
            encode_ms = (encoded - read).as_millis() as u64,
            write_ms = (started.elapsed() - encoded).as_millis() as u64,
            "snapshot built"
        );
        match self.record_snapshot(&meta, &file) {
            Ok(true) => self.snapshots.remove_others(Some(&file)),
            // A newer snapshot was installed meanwhile: it stays current.
            Ok(false) => self.snapshots.discard(&file),
            Err(e) => {
                self.snapshots.discard(&file);
                return Err(e);
            }
        }
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }

    /// Makes `file` the current snapshot unless the current one is newer. Under `snapshot_lock`.
    fn record_snapshot(&self, meta: &SnapshotMeta<NodeId, NodeInfo>, file: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(storage)?;
        let newer = {
            let mut t = tx.open_table(RAFT_META).map_err(storage)?;
            let current: Option<CurrentSnapshot> = get_json(&t, "raft_meta", CURRENT_SNAPSHOT)?;
            let newer = current.is_some_and(|c| c.meta.last_log_id > meta.last_log_id);
            if !newer {
                put_json(&mut t, CURRENT_SNAPSHOT, &CurrentSnapshot { meta: meta.clone(), file: file.to_owned() })?;
            }
            newer
        };
        if newer {
            tx.abort().map_err(storage)?;
            return Ok(false);
        }
        tx.commit().map_err(storage)?;
        Ok(true)
    }

    /// The last snapshot built or installed, with its meta exactly as it was then.
    pub fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let _s = lock(&self.snapshot_lock);
        let current: Option<CurrentSnapshot> = {
            let rtx = self.db.begin_read().map_err(storage)?;
            get_json(&rtx.open_table(RAFT_META).map_err(storage)?, "raft_meta", CURRENT_SNAPSHOT)?
        };
        let Some(c) = current else { return Ok(None) };
        let bytes = self.snapshots.read(&c.file)?;
        Ok(Some(Snapshot { meta: c.meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }

    /// Replaces the whole replicated state with a snapshot's and keeps the snapshot as current.
    /// A snapshot of another version, a damaged one, or one whose contents do not match `meta`
    /// is refused before anything changes.
    pub fn install_snapshot(&self, meta: &SnapshotMeta<NodeId, NodeInfo>, bytes: Vec<u8>) -> Result<(), StoreError> {
        let doc = SnapshotDoc::decode(&bytes)?;
        if doc.last_applied != meta.last_log_id || doc.membership != meta.last_membership {
            return Err(StoreError::Snapshot(format!(
                "snapshot {} says it holds the state at {:?} with membership {}, but its contents are at {:?} with \
                 membership {}; it is damaged or mislabelled. Let the leader build a new snapshot",
                meta.snapshot_id, meta.last_log_id, meta.last_membership, doc.last_applied, doc.membership
            )));
        }
        let state = state_from(&doc)?;
        let index = doc.last_applied.map_or(0, |l| l.index);

        let _w = lock(&self.writer);
        // A write of earlier changes in flight finishes first; the snapshot's state replaces it.
        let _f = lock(&self.file);
        let _s = lock(&self.snapshot_lock);
        let file = self.snapshots.write(index, &bytes)?;
        if let Err(e) = self.replace_all(&doc, meta, &file) {
            self.snapshots.discard(&file);
            return Err(e);
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        *self.cluster.write().unwrap_or_else(|e| e.into_inner()) = doc.cluster;
        {
            // The file now holds the snapshot's state: what was waiting to be written is void.
            let mut unwritten = lock(&self.unwritten);
            unwritten.waiting = false;
            unwritten.audit.clear();
            unwritten.cluster = false;
            unwritten.audit_last = doc.admin_audit.last().map(|(k, _)| *k);
        }
        *self.position.write().unwrap_or_else(|e| e.into_inner()) = Position { log_id: doc.last_applied, membership: doc.membership };
        // Outcomes of entries this node never applied are unknown; older ones are meaningless.
        lock(&self.outcomes).clear();
        lock(&self.changed_at).clear();
        self.changed_floor.store(index, std::sync::atomic::Ordering::Release);
        self.snapshots.remove_others(Some(&file));
        self.applied_tx.send_replace(index);
        Ok(())
    }

    /// One transaction: every replicated table replaced by the snapshot's, plus its meta.
    fn replace_all(&self, doc: &SnapshotDoc, meta: &SnapshotMeta<NodeId, NodeInfo>, file: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(storage)?;
        {
            for name in State::TABLES {
                tx.delete_table(rows(name)).map_err(storage)?;
                let mut t = tx.open_table(rows(name)).map_err(storage)?;
                for (key, row) in doc.tables.get(name).into_iter().flatten() {
                    t.insert(key.as_str(), row.get().as_bytes()).map_err(storage)?;
                }
            }
            tx.delete_table(SETTINGS).map_err(storage)?;
            let mut settings = tx.open_table(SETTINGS).map_err(storage)?;
            if let Some(s) = &doc.settings {
                settings.insert("settings", s.get().as_bytes()).map_err(storage)?;
            }
            tx.delete_table(AUDIT).map_err(storage)?;
            let mut audit = tx.open_table(AUDIT).map_err(storage)?;
            for (index, entry) in &doc.admin_audit {
                audit.insert(*index, entry.get().as_bytes()).map_err(storage)?;
            }
            put_json(&mut tx.open_table(CLUSTER).map_err(storage)?, CLUSTER_STATE, &doc.cluster)?;
            tx.open_table(META).map_err(storage)?.insert(LAST_APPLIED, doc.last_applied.map_or(0, |l| l.index)).map_err(storage)?;
            let mut raft = tx.open_table(RAFT_META).map_err(storage)?;
            put_json(&mut raft, APPLIED_LOG_ID, &doc.last_applied)?;
            put_json(&mut raft, MEMBERSHIP, &doc.membership)?;
            put_json(&mut raft, CURRENT_SNAPSHOT, &CurrentSnapshot { meta: meta.clone(), file: file.to_owned() })?;
        }
        tx.commit().map_err(storage)
    }

    /// Admin audit entries, newest first, that pass `keep`, at most `limit`.
    pub fn audit(&self, limit: usize, keep: impl Fn(&AuditEntry) -> bool) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let rtx = self.read_all()?;
        let t = rtx.open_table(AUDIT).map_err(storage)?;
        for row in t.iter().map_err(storage)?.rev() {
            let (k, v) = row.map_err(storage)?;
            let e: AuditEntry = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                table: "admin_audit".into(),
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
            if keep(&e) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// What applying one request touches, for [`ApplyCx::apply`].
struct ApplyCx<'a> {
    state: &'a mut State,
    cluster: &'a mut ClusterState,
    unwritten: &'a mut Unwritten,
}

impl ApplyCx<'_> {
    /// Applies one request of the entry at `index` (a batch's members in order).
    fn apply(&mut self, index: u64, request: &Request) -> Applied {
        match request {
            Request::Registry(env) => {
                let r = registry::apply(self.state, env);
                if let Ok(o) = &r {
                    if !env.command.is_bookkeeping() {
                        self.unwritten.add_audit(registry_audit(index, env, o));
                    }
                }
                Applied::Registry(r)
            }
            Request::Cluster(env) => {
                let r = self.cluster.apply(env);
                if let Ok(ClusterOutcome::BackupPoint) = &r {
                    if let Some(b) = self.cluster.backups.last_mut() {
                        b.index = index;
                    }
                }
                if let Ok(o) = &r {
                    self.unwritten.cluster = true;
                    self.unwritten.add_audit(cluster_audit(index, env, o));
                }
                Applied::Cluster(r)
            }
            Request::Batch(members) => Applied::Batch(
                members
                    .iter()
                    .map(|m| match m {
                        // Never proposed; applied as nothing, the same way on every node.
                        Request::Batch(_) => Applied::Other,
                        m => self.apply(index, m),
                    })
                    .collect(),
            ),
        }
    }
}

/// An admin-audit line for a change made by `actor` at `at`.
fn audit_entry(
    index: u64,
    at: Timestamp,
    actor: &crate::registry::Actor,
    action: &str,
    target: String,
    reason: Option<String>,
) -> AuditEntry {
    AuditEntry {
        index,
        at,
        user: actor.user.clone(),
        role: actor.role.as_str().into(),
        agency: actor.agency.clone(),
        action: action.into(),
        target,
        reason,
    }
}

fn registry_audit(index: u64, env: &Envelope, outcome: &Outcome) -> AuditEntry {
    audit_entry(index, env.at, &env.actor, outcome.kind, outcome.target.clone(), env.command.reason().map(str::to_owned))
}

fn cluster_audit(index: u64, env: &ClusterEnvelope, outcome: &ClusterOutcome) -> AuditEntry {
    let (action, target) = match (&env.command, outcome) {
        (ClusterCommand::CreateJoinToken { id, .. }, _) => ("cluster.join_token.create", id.clone()),
        (_, ClusterOutcome::Joined { node_id }) => ("cluster.join", node_id.to_string()),
        (ClusterCommand::ForgetNode { node_id }, _) => ("cluster.forget_node", node_id.to_string()),
        (ClusterCommand::SetDraining { node_id, draining: true }, _) => ("node.drain", node_id.to_string()),
        (ClusterCommand::SetDraining { node_id, draining: false }, _) => ("node.resume", node_id.to_string()),
        (ClusterCommand::ConsumeJoinToken { id, .. }, _) => ("cluster.join", id.clone()),
        (ClusterCommand::Backup { id, reason }, _) => {
            return audit_entry(index, env.at, &env.actor, "backup.create", id.clone(), Some(reason.clone()))
        }
    };
    audit_entry(index, env.at, &env.actor, action, target, None)
}

impl Unwritten {
    /// Adds an audit line under the next key. Keys are a sequence (the members of a batch
    /// entry share its log index, which each line records); apply is deterministic, so every
    /// node assigns the same keys. (Lines written before batching are keyed by their log index:
    /// still ascending.)
    fn add_audit(&mut self, entry: AuditEntry) {
        let key = match self.audit_last {
            Some(last) => last.max(entry.index.saturating_sub(1)) + 1,
            None => entry.index,
        };
        self.audit_last = Some(key);
        self.audit.push((key, entry));
    }
}

/// The last admin-audit key in the file.
fn last_audit_key(rtx: &ReadTransaction) -> Result<Option<u64>, StoreError> {
    Ok(rtx.open_table(AUDIT).map_err(storage)?.last().map_err(storage)?.map(|(k, _)| k.value()))
}

fn get_json<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    table: &str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let Some(v) = t.get(key).map_err(storage)? else { return Ok(None) };
    serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt {
        table: table.into(),
        key: key.into(),
        reason: e.to_string(),
    })
}

fn put_json<T: Serialize>(t: &mut Table<'_, &'static str, &'static [u8]>, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(storage)?;
    t.insert(key, bytes.as_slice()).map_err(storage)?;
    Ok(())
}

/// Loads the registry from its tables (on one thread on purpose: parallel decoding used no
/// less CPU and raised peak memory through per-thread allocator arenas, see BENCHMARKS.md).
fn load_state(rtx: &ReadTransaction) -> Result<State, StoreError> {
    let mut state = State::default();
    for t in State::TABLES {
        let table = rtx.open_table(rows(t)).map_err(storage)?;
        for row in table.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            state.load_row(t, v.value()).map_err(|e| StoreError::Corrupt {
                table: t.into(),
                key: k.value().into(),
                reason: e.to_string(),
            })?;
        }
    }
    let settings = rtx.open_table(SETTINGS).map_err(storage)?;
    if let Some(v) = settings.get("settings").map_err(storage)? {
        state.load_settings(v.value()).map_err(|e| StoreError::Corrupt {
            table: "settings".into(),
            key: "settings".into(),
            reason: e.to_string(),
        })?;
    }
    state.rebuild_indexes();
    Ok(state)
}

fn read_position(rtx: &ReadTransaction) -> Result<Position, StoreError> {
    let raft = rtx.open_table(RAFT_META).map_err(storage)?;
    let log_id = match get_json::<Option<LogId<NodeId>>>(&raft, "raft_meta", APPLIED_LOG_ID)? {
        Some(id) => id,
        // A store written before Raft kept only the index: its entries count as term 0.
        None => {
            let index = rtx.open_table(META).map_err(storage)?.get(LAST_APPLIED).map_err(storage)?.map(|v| v.value()).unwrap_or(0);
            (index > 0).then(|| LogId::new(CommittedLeaderId::new(0, 0), index))
        }
    };
    let membership = get_json(&raft, "raft_meta", MEMBERSHIP)?.unwrap_or_default();
    Ok(Position { log_id, membership })
}

fn raw(table: &str, key: &str, bytes: &[u8]) -> Result<Box<RawValue>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { table: table.into(), key: key.into(), reason };
    let text = String::from_utf8(bytes.to_vec()).map_err(|e| corrupt(e.to_string()))?;
    RawValue::from_string(text).map_err(|e| corrupt(e.to_string()))
}

/// Everything replicated, as of the read transaction.
fn dump(rtx: &ReadTransaction) -> Result<SnapshotDoc, StoreError> {
    let mut tables = BTreeMap::new();
    for name in State::TABLES {
        let t = rtx.open_table(rows(name)).map_err(storage)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            out.push((k.value().to_owned(), raw(name, k.value(), v.value())?));
        }
        tables.insert(name.to_owned(), out);
    }
    let settings = match rtx.open_table(SETTINGS).map_err(storage)?.get("settings").map_err(storage)? {
        Some(v) => Some(raw("settings", "settings", v.value())?),
        None => None,
    };
    let mut admin_audit = Vec::new();
    for row in rtx.open_table(AUDIT).map_err(storage)?.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        admin_audit.push((k.value(), raw("admin_audit", &k.value().to_string(), v.value())?));
    }
    let cluster = get_json(&rtx.open_table(CLUSTER).map_err(storage)?, "cluster", CLUSTER_STATE)?.unwrap_or_default();
    let position = read_position(rtx)?;
    Ok(SnapshotDoc {
        format: SNAPSHOT_FORMAT.into(),
        version: SNAPSHOT_VERSION,
        last_applied: position.log_id,
        membership: position.membership,
        tables,
        settings,
        admin_audit,
        cluster,
    })
}

/// The in-memory registry a snapshot describes; refuses rows that do not decode.
fn state_from(doc: &SnapshotDoc) -> Result<State, StoreError> {
    let mut state = State::default();
    for (name, rows) in &doc.tables {
        if !State::TABLES.contains(&name.as_str()) {
            return Err(StoreError::Snapshot(format!(
                "the snapshot holds a table {name:?} this node does not know; run the same lgsp version on every node"
            )));
        }
        for (key, row) in rows {
            state.load_row(name, row.get().as_bytes()).map_err(|e| {
                StoreError::Snapshot(format!("row {name}/{key} cannot be read ({e}); the snapshot is damaged or from another version"))
            })?;
        }
    }
    if let Some(s) = &doc.settings {
        state.load_settings(s.get().as_bytes()).map_err(|e| {
            StoreError::Snapshot(format!("its settings cannot be read ({e}); the snapshot is damaged or from another version"))
        })?;
    }
    for (index, entry) in &doc.admin_audit {
        serde_json::from_str::<AuditEntry>(entry.get())
            .map_err(|e| StoreError::Snapshot(format!("admin audit entry {index} cannot be read ({e}); the snapshot is damaged")))?;
    }
    state.rebuild_indexes();
    Ok(state)
}

/// The Raft state machine: what `openraft::Raft::new` takes as its `state_machine`. A handle
/// on the shared [`Store`].
#[derive(Debug, Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    /// How far the Raft log is on disk: an entry is applied only once it is (the leader writes
    /// its own entries in parallel with replicating them; see `log_store`).
    durable: Option<tokio::sync::watch::Receiver<super::log_store::Durable>>,
}

impl StateMachine {
    pub fn new(store: Arc<Store>) -> StateMachine {
        StateMachine { store, durable: None }
    }

    /// Applies entries only once `durable` covers them.
    pub fn wait_for_log(&mut self, durable: tokio::sync::watch::Receiver<super::log_store::Durable>) {
        self.durable = Some(durable);
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

/// Builds snapshots for openraft (possibly while entries are being applied).
#[derive(Debug, Clone)]
pub struct SnapshotBuilder {
    store: Arc<Store>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Reading, encoding and fsyncing the whole state takes long with a large registry: on
        // the blocking pool, so that no runtime worker (and no task queued on it) waits for it.
        let store = self.store.clone();
        let built = tokio::task::spawn_blocking(move || store.build_snapshot())
            .await
            .unwrap_or_else(|e| Err(StoreError::Storage(format!("the snapshot builder stopped: {e}"))));
        built.map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>> {
        let p = self.store.position();
        Ok((p.log_id, p.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if let (Some(rx), Some(last)) = (self.durable.as_mut(), entries.last()) {
            let index = last.log_id.index;
            let durable = rx.wait_for(|d| d.covers(index)).await.map(|d| d.clone());
            let failed = match durable {
                Ok(d) => d.failed,
                Err(_) => Some("the Raft log was closed".into()),
            };
            if let Some(why) = failed {
                let e = StoreError::Storage(format!("the Raft log could not be made durable ({why}); nothing more is applied"));
                return Err(StorageIOError::write_state_machine(&e).into());
            }
        }
        let applied = self.store.apply(entries).map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(vec![(); applied.len()])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { store: self.store.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.store
            .install_snapshot(meta, snapshot.into_inner())
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.store.current_snapshot().map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}
