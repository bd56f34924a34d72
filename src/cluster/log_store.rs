//! The Raft log and vote, in their own redb file (`DATA_DIR/raft-log.redb`).
//!
//! Owns the tables `raft_log` (log index -> JSON [`Entry`]) and `raft_log_meta` (`vote`,
//! `committed`, `last_purged` -> JSON). It is a separate file from the registry so that log
//! appends never wait for a state-machine transaction (redb has one writer per file).
//!
//! Invariants: a follower's append is one durable redb transaction (one fsync), made before
//! openraft is told the entries are persisted: nothing a follower acknowledges or votes on is
//! missing from its disk. openraft 0.9's core waits for each append to be flushed before it
//! sends the entries to the followers, which would put the leader's fsync and the followers' in
//! series. So the **leader's own new entries** (created under this node's committed vote) are
//! written without fsync, reported at once, and made durable by the flusher thread while they
//! travel to the followers (the leader writes its log in parallel with replicating it, Raft
//! thesis §10.2.1, as etcd does). Nothing learns such an entry is committed before it is durable
//! here too: the state machine waits for [`Durable`] before applying it (so no client is answered
//! early), and the transport never sends followers a commit index beyond it
//! (`transport::NetworkClient`). [`Durable`] is the last entry known to be on disk; every durable
//! transaction moves it to the log's end under the writer lock.
//! The leader batches client writes into entries (`cluster::batch`). Truncation and purge are one durable
//! transaction each; a purge deletes the entries and records `last_purged` in the same
//! transaction, so a crash never leaves a hole in the log or purged entries without their
//! marker. The vote is committed durably before `save_vote` returns. The committed marker is
//! advisory (openraft re-learns it from the leader) and rides along with the next append. No
//! transaction is ever held across an `.await`.
//! May import `cluster::types` and `cluster::store` (its error type) only; openraft and redb.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::store::StoreError;
use super::types::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

const FLUSHED: &str = "flushed";

/// How far this node's log is on disk: the last entry known durable, or why flushing stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durable {
    pub last: Option<LogId<NodeId>>,
    pub failed: Option<String>,
}

impl Durable {
    /// True once the entry at `index` is on disk (or flushing failed: the waiter must give up).
    pub fn covers(&self, index: u64) -> bool {
        self.failed.is_some() || self.last.is_some_and(|l| l.index >= index)
    }
}

/// The Raft log store: what [`openraft::Raft::new`] takes as its `log_store`.
#[derive(Debug)]
pub struct LogStore {
    db: Arc<Database>,
    /// The latest committed marker not yet written (it rides along with the next append).
    committed: Mutex<Option<Option<LogId<NodeId>>>>,
    path: PathBuf,
    /// This node's id once it serves in a cluster ([`LogStore::serve_as`]); without it every
    /// append is durable before it is reported.
    node_id: Option<NodeId>,
    /// The vote as last saved or read.
    vote: Mutex<Option<Vote<NodeId>>>,
    /// The writer lock, held from the start of each write transaction until [`Durable`] is
    /// updated for it; it guards the log's end (last entry id, or the last purged one) as the
    /// committed writes left it, so no durable commit has to read the log back to learn it.
    end: Arc<Mutex<Option<LogId<NodeId>>>>,
    durable: Arc<tokio::sync::watch::Sender<Durable>>,
    /// Wakes the flusher thread (started by `serve_as`).
    flush: Option<mpsc::Sender<()>>,
    /// The flusher thread, joined on drop so that the file is closed when the store is.
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the channel ends the flusher after its last flush; it holds the database.
        self.flush = None;
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
    }
}

/// A read-only handle on the same log, for openraft's replication tasks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogReader {
    db: Arc<Database>,
}

fn storage<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> StoreError + '_ {
    move |e| StoreError::Storage(format!("Raft log: cannot {what}: {e}"))
}

impl LogStore {
    /// Opens (or creates) the log file and its tables.
    pub fn open_at(path: &Path) -> Result<LogStore, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(16 << 20)
            .create(path)
            .map_err(|e| StoreError::Storage(format!("cannot open the Raft log {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(storage("start a transaction"))?;
        {
            tx.open_table(LOG).map_err(storage("create its tables"))?;
            tx.open_table(META).map_err(storage("create its tables"))?;
        }
        tx.commit().map_err(storage("create its tables"))?;
        let db = Arc::new(db);
        // What the file holds after opening is what is on disk.
        let end = last_log_id(&db.begin_read().map_err(storage("read the log"))?)?;
        let durable = Durable { last: end, failed: None };
        let vote = read_meta(&db, VOTE)?;
        Ok(LogStore {
            db,
            committed: Mutex::new(None),
            path: path.to_path_buf(),
            node_id: None,
            vote: Mutex::new(vote),
            end: Arc::new(Mutex::new(end)),
            durable: Arc::new(tokio::sync::watch::channel(durable).0),
            flush: None,
            flusher: None,
        })
    }

    /// Lets this log, as node `id`'s, report the node's own entries as a leader before they are
    /// flushed (see the module documentation), and starts the flusher thread that makes them
    /// durable.
    pub fn serve_as(&mut self, id: NodeId) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel::<()>();
        let (db, end, durable) = (self.db.clone(), self.end.clone(), self.durable.clone());
        let thread = std::thread::Builder::new()
            .name("lgsp-raft-flush".into())
            .spawn(move || flusher(&db, &end, &durable, &rx))
            .map_err(|e| StoreError::Storage(format!("cannot start the Raft log flusher thread: {e}")))?;
        self.node_id = Some(id);
        self.flush = Some(tx);
        self.flusher = Some(thread);
        Ok(())
    }

    /// Watches how far the log is durable.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<Durable> {
        self.durable.subscribe()
    }

    /// True when `entries` are this node's own, appended as the leader of its committed vote.
    fn own_as_leader(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let (Some(me), Some(vote)) = (self.node_id, *lock(&self.vote)) else { return false };
        vote.is_committed()
            && vote.leader_id().node_id == me
            && !entries.is_empty()
            && entries.iter().all(|e| e.log_id.leader_id == *vote.leader_id())
    }

    /// Runs `write` in one write transaction under the writer lock. `write` updates the log's
    /// end when it moves it; the new end is kept once the commit succeeded, and a durable commit
    /// moves [`Durable`] to it.
    fn transact<T>(
        &self,
        what: &str,
        durable: bool,
        write: impl FnOnce(&redb::WriteTransaction, &mut Option<LogId<NodeId>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut end = lock(&self.end);
        if let Some(failed) = self.durable.borrow().failed.clone() {
            return Err(StoreError::Storage(format!("Raft log: {failed}")));
        }
        let mut tx = self.db.begin_write().map_err(storage(what))?;
        if !durable {
            tx.set_durability(redb::Durability::None);
        }
        let mut new_end = *end;
        let out = write(&tx, &mut new_end)?;
        tx.commit().map_err(storage(what))?;
        *end = new_end;
        if durable {
            self.durable.send_modify(|d| d.last = new_end);
        }
        Ok(out)
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reader(&self) -> LogReader {
        LogReader { db: self.db.clone() }
    }

    fn take_committed(&self) -> Option<Option<LogId<NodeId>>> {
        self.committed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let rtx = self.db.begin_read().map_err(storage("read the log"))?;
        let last_purged = decode_meta(&rtx.open_table(META).map_err(storage("read the log"))?, LAST_PURGED)?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last_log_id(&rtx)? })
    }

    /// Writes the entries (and the pending committed marker) in one transaction, durable unless
    /// `early` (the leader's own entries, flushed by the flusher thread).
    fn append_batch(&self, entries: &[Entry<TypeConfig>], early: bool) -> Result<(), StoreError> {
        let committed = self.take_committed();
        self.transact("append entries", !early, |tx, end| {
            // openraft appends at the end of the log (it truncates first on a conflict).
            if let Some(last) = entries.last() {
                *end = Some(last.log_id);
            }
            let mut t = tx.open_table(LOG).map_err(storage("append entries"))?;
            for e in entries {
                let bytes = serde_json::to_vec(e).map_err(storage("encode an entry"))?;
                t.insert(e.log_id.index, bytes.as_slice()).map_err(storage("append entries"))?;
            }
            if let Some(c) = committed {
                let bytes = serde_json::to_vec(&c).map_err(storage("encode the committed marker"))?;
                tx.open_table(META)
                    .map_err(storage("append entries"))?
                    .insert(COMMITTED, bytes.as_slice())
                    .map_err(storage("append entries"))?;
            }
            Ok(())
        })
    }

    /// Deletes `[from, ∞)`.
    fn truncate_from(&self, from: u64) -> Result<(), StoreError> {
        self.transact("truncate the log", true, |tx, end| {
            tx.open_table(LOG)
                .map_err(storage("truncate the log"))?
                .retain_in(from.., |_, _| false)
                .map_err(storage("truncate the log"))?;
            *end = last_log_id_in(tx)?;
            Ok(())
        })
    }

    /// Deletes `[0, upto.index]` and records `upto` as the last purged id, together.
    pub(super) fn purge_upto(&self, upto: LogId<NodeId>) -> Result<(), StoreError> {
        self.transact("purge the log", true, |tx, end| {
            // A purge past the last entry (a snapshot installed beyond the log) empties the log,
            // whose end is then the purge point.
            if end.is_none_or(|e| e.index < upto.index) {
                *end = Some(upto);
            }
            let bytes = serde_json::to_vec(&upto).map_err(storage("encode the purge point"))?;
            tx.open_table(META)
                .map_err(storage("purge the log"))?
                .insert(LAST_PURGED, bytes.as_slice())
                .map_err(storage("purge the log"))?;
            let mut t = tx.open_table(LOG).map_err(storage("purge the log"))?;
            t.retain_in(..=upto.index, |_, _| false).map_err(storage("purge the log"))
        })
    }

    /// Writes one metadata value durably (the vote).
    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(storage("encode the log's metadata"))?;
        self.transact("write the log's metadata", true, |tx, _| {
            tx.open_table(META)
                .map_err(storage("write the log's metadata"))?
                .insert(key, bytes.as_slice())
                .map(|_| ())
                .map_err(storage("write the log's metadata"))
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The flusher thread: on each wake-up (coalesced), one durable transaction that makes every
/// entry written before it durable, then [`Durable`] moves to the log's end. A failure is kept
/// in [`Durable::failed`]: the waiting apply gives up and the next append fails, which stops
/// the Raft core (and the node, see `app::run`). Ends when the log store is dropped.
fn flusher(db: &Database, end: &Mutex<Option<LogId<NodeId>>>, durable: &tokio::sync::watch::Sender<Durable>, wake: &mpsc::Receiver<()>) {
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {}
        let end = lock(end);
        if durable.borrow().failed.is_some() {
            return;
        }
        let flushed = (|| -> Result<(), StoreError> {
            let tx = db.begin_write().map_err(storage("flush the log"))?;
            // A change, so that the commit is a real, durable one.
            let bytes = serde_json::to_vec(&*end).map_err(storage("encode the flush marker"))?;
            tx.open_table(META).map_err(storage("flush the log"))?.insert(FLUSHED, bytes.as_slice()).map_err(storage("flush the log"))?;
            tx.commit().map_err(storage("flush the log"))
        })();
        match flushed {
            Ok(()) => durable.send_modify(|d| d.last = *end),
            Err(e) => {
                tracing::error!(error = %e, "cannot flush the Raft log; this node stops taking part in the cluster");
                durable.send_modify(|d| d.failed = Some(e.to_string()));
                return;
            }
        }
    }
}

/// The log's last entry id (or the last purged one when it is empty), as a read sees it.
fn last_log_id(rtx: &redb::ReadTransaction) -> Result<Option<LogId<NodeId>>, StoreError> {
    last_of(&rtx.open_table(LOG).map_err(storage("read the log"))?, &rtx.open_table(META).map_err(storage("read the log"))?)
}

/// The same, inside a write transaction.
fn last_log_id_in(tx: &redb::WriteTransaction) -> Result<Option<LogId<NodeId>>, StoreError> {
    last_of(&tx.open_table(LOG).map_err(storage("read the log"))?, &tx.open_table(META).map_err(storage("read the log"))?)
}

fn last_of(
    log: &impl ReadableTable<u64, &'static [u8]>,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<LogId<NodeId>>, StoreError> {
    match log.last().map_err(storage("read the log"))? {
        Some((k, v)) => Ok(Some(decode_entry(k.value(), v.value())?.log_id)),
        None => decode_meta(meta, LAST_PURGED),
    }
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table: "raft_log".into(),
        key: index.to_string(),
        reason: format!("{e}; remove this node from the cluster, wipe its data directory and join it again"),
    })
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StoreError> {
    let rtx = db.begin_read().map_err(storage("read the log's metadata"))?;
    decode_meta(&rtx.open_table(META).map_err(storage("read the log's metadata"))?, key)
}

fn decode_meta<T: DeserializeOwned>(t: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<T>, StoreError> {
    let Some(v) = t.get(key).map_err(storage("read the log's metadata"))? else { return Ok(None) };
    serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt {
        table: "raft_log_meta".into(),
        key: key.into(),
        reason: e.to_string(),
    })
}

fn read_entries<RB: RangeBounds<u64>>(db: &Database, range: RB) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let rtx = db.begin_read().map_err(storage("read the log"))?;
    let t = rtx.open_table(LOG).map_err(storage("read the log"))?;
    let mut out = Vec::new();
    for row in t.range(range).map_err(storage("read the log"))? {
        let (k, v) = row.map_err(storage("read the log"))?;
        out.push(decode_entry(k.value(), v.value())?);
    }
    Ok(out)
}

fn read_err(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        read_entries(&self.db, range).map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        read_entries(&self.db, range).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.log_state().map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(VOTE, vote).map_err(|e| StorageIOError::write_vote(&e))?;
        *lock(&self.vote) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let vote = read_meta(&self.db, VOTE).map_err(|e| StorageIOError::read_vote(&e))?;
        *lock(&self.vote) = vote;
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Advisory (openraft re-learns it from the leader): written with the next append.
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if let Some(c) = *self.committed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(c);
        }
        Ok(read_meta::<Option<LogId<NodeId>>>(&self.db, COMMITTED).map_err(read_err)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let early = self.own_as_leader(&entries);
        let result = self.append_batch(&entries, early);
        if let (Ok(()), true, Some(f)) = (&result, early, &self.flush) {
            let _ = f.send(());
        }
        // openraft learns the outcome from the callback (and stops on an error returned here).
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.truncate_from(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.purge_upto(log_id).map_err(write_err)
    }
}
