//! The Raft log and vote, in their own redb file (`DATA_DIR/raft-log.redb`).
//!
//! Owns the tables `raft_log` (log index -> JSON [`Entry`]) and `raft_log_meta` (`vote`,
//! `committed`, `last_purged` -> JSON). It is a separate file from the registry so that log
//! appends never wait for a state-machine transaction (redb has one writer per file).
//!
//! Invariants: an append is one durable redb transaction (one fsync), made before openraft is
//! told the entries are persisted: nothing is acknowledged or voted on before it is on disk.
//! openraft 0.9's core waits for each append to be durable before it handles its next message,
//! so appends never overlap and a writer thread could batch nothing; the leader batches client
//! writes into entries instead (`cluster::batch`). Truncation and purge are one durable
//! transaction each; a purge deletes the entries and records `last_purged` in the same
//! transaction, so a crash never leaves a hole in the log or purged entries without their
//! marker. The vote is committed durably before `save_vote` returns. The committed marker is
//! advisory (openraft re-learns it from the leader) and rides along with the next append. No
//! transaction is ever held across an `.await`.
//! May import `cluster::types` and `cluster::store` (its error type) only; openraft and redb.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// The Raft log store: what [`openraft::Raft::new`] takes as its `log_store`.
#[derive(Debug)]
pub struct LogStore {
    db: Arc<Database>,
    /// The latest committed marker not yet written (it rides along with the next append).
    committed: Mutex<Option<Option<LogId<NodeId>>>>,
    path: PathBuf,
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
        Ok(LogStore { db: Arc::new(db), committed: Mutex::new(None), path: path.to_path_buf() })
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
        let last_purged: Option<LogId<NodeId>> = read_meta(&self.db, LAST_PURGED)?;
        let rtx = self.db.begin_read().map_err(storage("read the log"))?;
        let t = rtx.open_table(LOG).map_err(storage("read the log"))?;
        let last = match t.last().map_err(storage("read the log"))? {
            Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
            None => None,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    /// Writes the entries (and the pending committed marker) in one durable transaction.
    fn append_batch(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<(), StoreError> {
        let committed = self.take_committed();
        let tx = self.db.begin_write().map_err(storage("append entries"))?;
        {
            let mut t = tx.open_table(LOG).map_err(storage("append entries"))?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(storage("encode an entry"))?;
                t.insert(e.log_id.index, bytes.as_slice()).map_err(storage("append entries"))?;
            }
            if let Some(c) = committed {
                let bytes = serde_json::to_vec(&c).map_err(storage("encode the committed marker"))?;
                tx.open_table(META)
                    .map_err(storage("append entries"))?
                    .insert(COMMITTED, bytes.as_slice())
                    .map_err(storage("append entries"))?;
            }
        }
        tx.commit().map_err(storage("append entries"))
    }

    /// Deletes `[from, ∞)`.
    fn truncate_from(&self, from: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(storage("truncate the log"))?;
        {
            let mut t = tx.open_table(LOG).map_err(storage("truncate the log"))?;
            t.retain_in(from.., |_, _| false).map_err(storage("truncate the log"))?;
        }
        tx.commit().map_err(storage("truncate the log"))
    }

    /// Deletes `[0, upto.index]` and records `upto` as the last purged id, together.
    pub(super) fn purge_upto(&self, upto: LogId<NodeId>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(storage("purge the log"))?;
        {
            let bytes = serde_json::to_vec(&upto).map_err(storage("encode the purge point"))?;
            tx.open_table(META)
                .map_err(storage("purge the log"))?
                .insert(LAST_PURGED, bytes.as_slice())
                .map_err(storage("purge the log"))?;
            let mut t = tx.open_table(LOG).map_err(storage("purge the log"))?;
            t.retain_in(..=upto.index, |_, _| false).map_err(storage("purge the log"))?;
        }
        tx.commit().map_err(storage("purge the log"))
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
        write_meta(&self.db, VOTE, vote).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        read_meta(&self.db, VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
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
        let result = self.append_batch(entries);
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
