//! The Raft log and vote, in their own redb file (`DATA_DIR/raft-log.redb`).
//!
//! Owns the tables `raft_log` (log index -> JSON [`Entry`]) and `raft_log_meta` (`vote`,
//! `committed`, `last_purged` -> JSON). It is a separate file from the registry so that log
//! appends never wait for a state-machine transaction (redb has one writer per file).
//!
//! Invariants: every change to the log goes through one *writer* thread, in the order openraft
//! made it. `append` never touches the file: it puts the encoded entries in an in-memory buffer
//! (readers see them at once, as openraft requires) and queues them; the writer writes everything
//! queued meanwhile in **one durable transaction** (one fsync) and only then completes the
//! appends' callbacks, so openraft counts an entry as persisted (for voting and for commitment)
//! only once it is on disk, and an append never waits for an fsync in progress (redb has one
//! writer per file: writing each append in its own transaction made the Raft core wait for the
//! previous fsync, which serialised client writes). Truncation and purge are queued the same way
//! and their callers wait until they are durable; a purge deletes the entries and records
//! `last_purged` in the same transaction, so a crash never leaves a hole in the log or purged
//! entries without their marker. The vote is committed durably before `save_vote` returns. The
//! committed marker is advisory (openraft re-learns it from the leader) and rides along with the
//! next write. No transaction is ever held across an `.await`.
//! May import `cluster::types` and `cluster::store` (its error type) only; openraft and redb.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

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

/// One queued change to the log, applied by the writer in order.
enum Op {
    /// Encoded entries by index.
    Append(Vec<(u64, Arc<[u8]>)>),
    /// Delete `[from, ∞)`.
    Truncate(u64),
    /// Delete `[0, upto.index]` and record `upto` as the last purged id.
    Purge(LogId<NodeId>),
}

/// What the writer has yet to do.
#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    callbacks: Vec<LogFlushed<TypeConfig>>,
    /// The latest committed marker not yet written.
    committed: Option<Option<LogId<NodeId>>>,
    /// Batches taken by the writer, and batches written (or failed): truncate and purge wait
    /// for the batch that carries them.
    taken: u64,
    written: u64,
    /// Recent failed batches and why (a failed log write stops openraft anyway).
    errors: std::collections::VecDeque<(u64, String)>,
    stop: bool,
}

/// Appended entries not yet written to the file, by index. A finished write removes an entry
/// only if it is still the same allocation it wrote (`Arc::ptr_eq`), never a newer append.
type Unwritten = Mutex<std::collections::BTreeMap<u64, Arc<[u8]>>>;

/// The state shared by the store, its readers and the writer thread.
struct Shared {
    db: Database,
    queue: Mutex<Queue>,
    /// Signals the writer that the queue is not empty, and waiters that a write finished.
    wake: Condvar,
    done: Condvar,
    unwritten: Unwritten,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftLog")
    }
}

impl Shared {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_unwritten(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, Arc<[u8]>>> {
        self.unwritten.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer thread: one durable transaction for everything queued since the last one.
    fn run_writer(&self) {
        loop {
            let (ops, callbacks, committed, stop) = {
                let mut q = self.lock_queue();
                // The committed marker alone does not wake the writer: it rides along.
                while q.ops.is_empty() && q.callbacks.is_empty() && !q.stop {
                    q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                q.taken += 1;
                (std::mem::take(&mut q.ops), std::mem::take(&mut q.callbacks), q.committed.take(), q.stop)
            };
            let result = if ops.is_empty() && committed.is_none() { Ok(()) } else { self.write(&ops, committed) };
            if result.is_ok() {
                // Written entries are now read from the file.
                let mut u = self.lock_unwritten();
                for op in &ops {
                    if let Op::Append(entries) = op {
                        for (index, bytes) in entries {
                            if u.get(index).is_some_and(|b| Arc::ptr_eq(b, bytes)) {
                                u.remove(index);
                            }
                        }
                    }
                }
            }
            for cb in callbacks {
                match &result {
                    Ok(()) => cb.log_io_completed(Ok(())),
                    Err(e) => cb.log_io_completed(Err(std::io::Error::other(format!("Raft log write failed: {e}")))),
                }
            }
            {
                let mut q = self.lock_queue();
                q.written = q.taken;
                if let Err(e) = result {
                    let batch = q.written;
                    q.errors.push_back((batch, e));
                    if q.errors.len() > 16 {
                        q.errors.pop_front();
                    }
                }
            }
            self.done.notify_all();
            if stop {
                let q = self.lock_queue();
                if q.ops.is_empty() && q.callbacks.is_empty() {
                    return;
                }
            }
        }
    }

    fn write(&self, ops: &[Op], committed: Option<Option<LogId<NodeId>>>) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let tx = self.db.begin_write().map_err(|x| e(&x))?;
        {
            let mut log = tx.open_table(LOG).map_err(|x| e(&x))?;
            let mut meta = tx.open_table(META).map_err(|x| e(&x))?;
            for op in ops {
                match op {
                    Op::Append(entries) => {
                        for (index, bytes) in entries {
                            log.insert(*index, &bytes[..]).map_err(|x| e(&x))?;
                        }
                    }
                    Op::Truncate(from) => {
                        log.retain_in(*from.., |_, _| false).map_err(|x| e(&x))?;
                    }
                    Op::Purge(upto) => {
                        let bytes = serde_json::to_vec(upto).map_err(|x| e(&x))?;
                        meta.insert(LAST_PURGED, bytes.as_slice()).map_err(|x| e(&x))?;
                        log.retain_in(..=upto.index, |_, _| false).map_err(|x| e(&x))?;
                    }
                }
            }
            if let Some(c) = committed {
                let bytes = serde_json::to_vec(&c).map_err(|x| e(&x))?;
                meta.insert(COMMITTED, bytes.as_slice()).map_err(|x| e(&x))?;
            }
        }
        tx.commit().map_err(|x| e(&x))
    }

    /// Queues `op` and waits until the write that carries it is durable.
    fn queue_and_wait(&self, op: Op) -> Result<(), StoreError> {
        let mut q = self.lock_queue();
        q.ops.push(op);
        // The writer takes the queue whole: `op` goes with the next batch it takes.
        let batch = q.taken + 1;
        self.wake.notify_one();
        while q.written < batch {
            q = self.done.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        match q.errors.iter().find(|(b, _)| *b == batch) {
            Some((_, err)) => Err(StoreError::Storage(format!("Raft log: write failed: {err}"))),
            None => Ok(()),
        }
    }
}

/// The Raft log store: what [`openraft::Raft::new`] takes as its `log_store`.
#[derive(Debug)]
pub struct LogStore {
    shared: Arc<Shared>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.shared.lock_queue().stop = true;
        self.shared.wake.notify_one();
        // Queued changes are written first; then the file is closed (it can be reopened).
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// A read-only handle on the same log, for openraft's replication tasks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared {
            db,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            unwritten: Mutex::default(),
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lgsp-raft-log".into())
            .spawn(move || writer.run_writer())
            .map_err(|e| StoreError::Storage(format!("cannot start the Raft log writer: {e}")))?;
        Ok(LogStore { shared, writer_thread: Some(thread), path: path.to_path_buf() })
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reader(&self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_unwritten = self.shared.lock_unwritten().last_key_value().map(|(k, v)| (*k, v.clone()));
        let last_purged: Option<LogId<NodeId>> = read_meta(&self.shared.db, LAST_PURGED)?;
        let last = match last_unwritten {
            Some((k, v)) => Some(decode_entry(k, &v)?.log_id),
            None => {
                let rtx = self.shared.db.begin_read().map_err(storage("read the log"))?;
                let t = rtx.open_table(LOG).map_err(storage("read the log"))?;
                let last = match t.last().map_err(storage("read the log"))? {
                    Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
                    None => None,
                };
                last
            }
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    /// Makes the entries readable at once and queues them for the writer.
    fn append_batch(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StoreError> {
        let mut encoded = Vec::new();
        for e in entries {
            let bytes: Arc<[u8]> = serde_json::to_vec(&e).map_err(storage("encode an entry"))?.into();
            encoded.push((e.log_id.index, bytes));
        }
        {
            let mut u = self.shared.lock_unwritten();
            for (index, bytes) in &encoded {
                u.insert(*index, bytes.clone());
            }
        }
        let mut q = self.shared.lock_queue();
        q.ops.push(Op::Append(encoded));
        q.callbacks.push(callback);
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Deletes `[from, ∞)`; returns once that is durable.
    fn truncate_from(&self, from: u64) -> Result<(), StoreError> {
        self.shared.lock_unwritten().retain(|k, _| *k < from);
        self.shared.queue_and_wait(Op::Truncate(from))
    }

    /// Deletes `[0, upto.index]` and records `upto` as the last purged id, together; returns
    /// once that is durable.
    fn purge_upto(&self, upto: LogId<NodeId>) -> Result<(), StoreError> {
        self.shared.lock_unwritten().retain(|k, _| *k > upto.index);
        self.shared.queue_and_wait(Op::Purge(upto))
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
    let t = rtx.open_table(META).map_err(storage("read the log's metadata"))?;
    let Some(v) = t.get(key).map_err(storage("read the log's metadata"))? else { return Ok(None) };
    serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt {
        table: "raft_log_meta".into(),
        key: key.into(),
        reason: e.to_string(),
    })
}

/// Writes one metadata value durably (the vote).
fn write_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(storage("encode the log's metadata"))?;
    let tx = db.begin_write().map_err(storage("write the log's metadata"))?;
    tx.open_table(META)
        .map_err(storage("write the log's metadata"))?
        .insert(key, bytes.as_slice())
        .map_err(storage("write the log's metadata"))?;
    tx.commit().map_err(storage("write the log's metadata"))
}

/// The entries in `range`: those written to the file, overlaid with those still queued. The
/// queued ones are copied first, so an entry the writer moves to the file meanwhile is seen in
/// one place or the other, never missed.
fn read_entries<RB: RangeBounds<u64> + Clone>(shared: &Shared, range: RB) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let queued: Vec<(u64, Arc<[u8]>)> = shared.lock_unwritten().range(range.clone()).map(|(k, v)| (*k, v.clone())).collect();
    let mut out = std::collections::BTreeMap::new();
    {
        let rtx = shared.db.begin_read().map_err(storage("read the log"))?;
        let t = rtx.open_table(LOG).map_err(storage("read the log"))?;
        for row in t.range(range).map_err(storage("read the log"))? {
            let (k, v) = row.map_err(storage("read the log"))?;
            out.insert(k.value(), decode_entry(k.value(), v.value())?);
        }
    }
    for (k, v) in queued {
        out.insert(k, decode_entry(k, &v)?);
    }
    Ok(out.into_values().collect())
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
        read_entries(&self.shared, range).map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        read_entries(&self.shared, range).map_err(read_err)
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
        write_meta(&self.shared.db, VOTE, vote).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        read_meta(&self.shared.db, VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Advisory (openraft re-learns it from the leader): written with the next batch.
        self.shared.lock_queue().committed = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if let Some(c) = self.shared.lock_queue().committed {
            return Ok(c);
        }
        Ok(read_meta::<Option<LogId<NodeId>>>(&self.shared.db, COMMITTED).map_err(read_err)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_batch(entries, callback).map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.truncate_from(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.purge_upto(log_id).map_err(write_err)
    }
}
