//! The Raft log and vote, in their own redb file (`DATA_DIR/raft-log.redb`), with a journal
//! beside it (`DATA_DIR/raft-log.wal`, `cluster::journal`) that makes appends durable.
//!
//! Owns the tables `raft_log` (log index -> JSON [`Entry`]) and `raft_log_meta` (`vote`,
//! `committed`, `last_purged`, `journal_epoch` -> JSON). It is a separate file from the
//! registry so that log appends never wait for a state-machine transaction (redb has one writer
//! per file).
//!
//! Invariants: on a serving node an append is durable in the journal (one record, one
//! fdatasync) before openraft is told the entries are persisted: nothing a follower
//! acknowledges or votes on is missing from its disk. The file thread moves journaled
//! entries into the redb file in batches (a checkpoint, one durable transaction, once the
//! journal holds `journal::CHECKPOINT_BYTES`); opening the log writes what the journal holds
//! into the file first. openraft 0.9's core waits for each append to be flushed before it sends
//! the entries to the followers, which would put the leader's sync and the followers' in
//! series. So the **leader's own new entries** (created under this node's committed vote) are
//! only added to the log's tail in memory and reported at once; the flusher thread journals
//! them while they travel to the followers (the leader writes its log in parallel with
//! replicating it, Raft thesis §10.2.1, as etcd does). Nothing learns such an entry is committed
//! before it is durable here too: the state machine waits for [`Durable`] before applying it (so
//! no client is answered early), and the transport never sends followers a commit index beyond
//! it (`transport::NetworkClient`). [`Durable`] is the last entry known to be on disk. A store
//! that does not serve (restore, tests) appends with one durable transaction of the file.
//!
//! The tail ([`Tail`]) holds the log's last entries in memory, so that replication reads them
//! without the file; the entries not yet in the file are always in it, and every write
//! transaction writes them first, so the file's log never has a hole. The writer lock
//! serialises journal records and durable transactions; the file lock every transaction of the
//! file (a checkpoint holds only the file lock while it writes, so appends go on; the tail has
//! its own lock, never held across disk I/O). The leader batches client writes into entries
//! (`cluster::batch`). Votes, truncations and purges are one durable transaction each, which
//! also writes every entry not yet in the file and retires the journal's records, so a crash
//! never leaves a hole in the log nor brings truncated entries back. A purge records
//! `last_purged`; on a store that does not serve (restore) it deletes the entries in the same
//! transaction, on a serving node the file thread deletes them afterwards, [`PURGE_SLICE`]
//! per transaction between its checkpoints (deleting thousands of entries at once held the
//! Raft core and the writer lock for most of a second). Rows at or below `last_purged` are never read
//! nor counted as the log's end, and those a crash or restart left are deleted the same way.
//! The vote is committed durably before `save_vote` returns. The committed marker is
//! advisory (openraft re-learns it from the leader; at start-up it applies the entries up to it
//! again) and rides along with the next journal record and write transaction. No transaction
//! is ever held across an `.await`.
//! May import `cluster::types`, `cluster::journal` and `cluster::store` (its error type) only;
//! openraft and redb.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::journal::{Journal, CHECKPOINT_BYTES};
use super::store::StoreError;
use super::types::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";
const JOURNAL_EPOCH: &str = "journal_epoch";

/// How many of the log's last written entries the tail keeps for the replication tasks (the
/// unwritten ones are kept whatever their number).
const TAIL_KEPT: usize = 256;

/// How many purged rows one background transaction deletes (about 80 µs each with large
/// entries on the benchmark machine: a slice holds the writer lock for a few milliseconds).
const PURGE_SLICE: u64 = 32;

/// The pause between two slices of purged rows when no write is waiting.
const PURGE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// What one journal record holds: entries appended together, and the committed marker as it
/// was then (so that a restart applies the entries it covers again, as from the file's).
#[derive(Serialize, Deserialize)]
struct JournalRecord {
    entries: Vec<Entry<TypeConfig>>,
    #[serde(default)]
    committed: Option<LogId<NodeId>>,
}

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

/// The log's last entries in memory. `entries` are contiguous and end at `end` when not empty;
/// the file holds the log up to `written`, and every entry after it is in `entries`.
#[derive(Debug, Default)]
struct Tail {
    entries: VecDeque<Entry<TypeConfig>>,
    /// The log's last entry id (the last purged one when the log is empty), written or not.
    end: Option<LogId<NodeId>>,
    /// The last entry id in the file (or the last purged one), durably or not.
    written: Option<LogId<NodeId>>,
    /// The last entry id known durable, in the journal or the file (never before `written`).
    journaled: Option<LogId<NodeId>>,
    /// The last purged entry id: rows at or below it are not part of the log, even while the
    /// file still holds them.
    purged: Option<LogId<NodeId>>,
    /// True while the file may still hold rows at or below `purged`.
    purge_backlog: bool,
}

impl Tail {
    fn index_of(id: Option<LogId<NodeId>>) -> Option<u64> {
        id.map(|l| l.index)
    }

    /// True when the entry is in the file.
    fn is_written(&self, e: &Entry<TypeConfig>) -> bool {
        Self::index_of(self.written).is_some_and(|w| e.log_id.index <= w)
    }

    /// The entries not yet in the file, in order.
    fn unwritten(&self) -> Vec<Entry<TypeConfig>> {
        self.entries.iter().filter(|e| !self.is_written(e)).cloned().collect()
    }

    /// The entries not yet durable, in order.
    fn unjournaled(&self) -> Vec<Entry<TypeConfig>> {
        let journaled = Self::index_of(self.journaled);
        self.entries.iter().filter(|e| journaled.is_none_or(|j| e.log_id.index > j)).cloned().collect()
    }

    fn has_unjournaled(&self) -> bool {
        let journaled = Self::index_of(self.journaled);
        self.entries.back().is_some_and(|e| journaled.is_none_or(|j| e.log_id.index > j))
    }

    /// The durable entries not yet in the file, in order.
    fn journaled_unwritten(&self) -> Vec<Entry<TypeConfig>> {
        let journaled = Self::index_of(self.journaled);
        self.entries.iter().filter(|e| !self.is_written(e) && journaled.is_some_and(|j| e.log_id.index <= j)).cloned().collect()
    }

    /// Records that the log up to `id` is durable.
    fn journaled_up_to(&mut self, id: Option<LogId<NodeId>>) {
        if id > self.journaled {
            self.journaled = id;
        }
    }

    /// Adds entries at the end of the log (openraft truncates before it appends anywhere else).
    fn push(&mut self, entries: &[Entry<TypeConfig>]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let next = Self::index_of(self.end).map_or(0, |e| e + 1);
        if first.log_id.index != next && !self.entries.is_empty() {
            return Err(StoreError::Storage(format!(
                "Raft log: entries from {} appended to a log that ends before {next}; this is a bug, restart the node",
                first.log_id.index
            )));
        }
        self.entries.extend(entries.iter().cloned());
        self.end = entries.last().map(|e| e.log_id);
        Ok(())
    }

    /// Records that the file now holds the log up to `id`, and forgets the oldest written
    /// entries beyond [`TAIL_KEPT`].
    fn written_up_to(&mut self, id: Option<LogId<NodeId>>) {
        if id > self.written {
            self.written = id;
        }
        self.journaled_up_to(id);
        while self.entries.len() > TAIL_KEPT && self.entries.front().is_some_and(|e| self.is_written(e)) {
            self.entries.pop_front();
        }
    }
}

/// What the log store, its readers and the flusher thread share.
#[derive(Debug)]
struct Shared {
    db: Database,
    /// Serialises the journal's records and the durable write transactions, from their start
    /// until [`Durable`] is updated.
    writer: Mutex<Journal>,
    /// Held by every write transaction of the file (taken after `writer` by those that take
    /// both): the journal epoch the file names.
    file: Mutex<u64>,
    tail: Mutex<Tail>,
    durable: tokio::sync::watch::Sender<Durable>,
    /// The latest committed marker not yet written (it rides along with the next write).
    committed: Mutex<Option<Option<LogId<NodeId>>>>,
}

/// The Raft log store: what [`openraft::Raft::new`] takes as its `log_store`.
#[derive(Debug)]
pub struct LogStore {
    shared: Arc<Shared>,
    path: PathBuf,
    /// This node's id once it serves in a cluster ([`LogStore::serve_as`]); without it every
    /// append is durable before it is reported.
    node_id: Option<NodeId>,
    /// The vote as last saved or read.
    vote: Mutex<Option<Vote<NodeId>>>,
    /// Wakes the flusher thread (started by `serve_as`).
    flush: Option<mpsc::Sender<()>>,
    /// Wakes the file thread (started by `serve_as`).
    file_work: Option<mpsc::Sender<()>>,
    /// The flusher and file threads, joined on drop (in that order) so that the file is closed
    /// when the store is.
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the channels ends the flusher after its last record, then the file thread
        // after its last transaction; they hold the database.
        self.flush = None;
        self.file_work = None;
        for t in self.threads.drain(..) {
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
        // What the file holds after opening is what is on disk.
        let (written, purged, purge_backlog, epoch) = {
            let rtx = db.begin_read().map_err(storage("read the log"))?;
            let meta = rtx.open_table(META).map_err(storage("read the log"))?;
            let purged: Option<LogId<NodeId>> = decode_meta(&meta, LAST_PURGED)?;
            let epoch: u64 = decode_meta(&meta, JOURNAL_EPOCH)?.unwrap_or(0);
            let log = rtx.open_table(LOG).map_err(storage("read the log"))?;
            let first = log.first().map_err(storage("read the log"))?.map(|(k, _)| k.value());
            (last_of(&log, purged)?, purged, first.is_some_and(|f| purged.is_some_and(|p| f <= p.index)), epoch)
        };
        // The journal holds what was made durable after the file's last durable transaction.
        let (journal, records) = Journal::open(&path.with_extension("wal"), epoch)?;
        let (entries, journaled_commit) = journaled_entries(&records, written)?;
        // The journal's marker only when it is ahead of the file's (it rides on records only
        // while it waits for the file).
        let file_commit = read_meta::<Option<LogId<NodeId>>>(&db, COMMITTED)?.flatten();
        let journaled_commit = journaled_commit.filter(|c| Some(*c) > file_commit);
        let end = entries.back().map(|e| e.log_id).or(written);
        let replayed = journal.used() > 0 || journal.epoch() != epoch;
        let vote = read_meta(&db, VOTE)?;
        let tail = Tail { entries, end, written, journaled: end, purged, purge_backlog };
        let shared = Shared {
            db,
            writer: Mutex::new(journal),
            file: Mutex::new(epoch),
            tail: Mutex::new(tail),
            durable: tokio::sync::watch::channel(Durable { last: end, failed: None }).0,
            committed: Mutex::new(journaled_commit.map(Some)),
        };
        if replayed {
            // Into the file at once: the journal starts empty on every start.
            shared.transact("write the journal's entries into the log", |_| Ok(()), |_, ()| Ok(()))?;
        }
        Ok(LogStore {
            shared: Arc::new(shared),
            path: path.to_path_buf(),
            node_id: None,
            vote: Mutex::new(vote),
            flush: None,
            file_work: None,
            threads: Vec::new(),
        })
    }

    /// Lets this log, as node `id`'s, report the node's own entries as a leader before they are
    /// journaled (see the module documentation), and starts the flusher thread that journals
    /// them and the file thread that checkpoints the journal and deletes purged rows.
    pub fn serve_as(&mut self, id: NodeId) -> Result<(), StoreError> {
        let (flush, flush_rx) = mpsc::channel::<()>();
        let (file_work, file_rx) = mpsc::channel::<()>();
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(body)
                .map_err(|e| StoreError::Storage(format!("cannot start the Raft log's {name} thread: {e}")))
        };
        let shared = self.shared.clone();
        let checkpoints = file_work.clone();
        let flusher = spawn("lgsp-raft-flush", Box::new(move || flusher(&shared, &flush_rx, &checkpoints)))?;
        let shared = self.shared.clone();
        let filer = spawn("lgsp-raft-file", Box::new(move || file_thread(&shared, &file_rx)))?;
        self.node_id = Some(id);
        self.flush = Some(flush);
        self.file_work = Some(file_work);
        self.threads = vec![flusher, filer];
        Ok(())
    }

    /// As [`LogStore::serve_as`] but without the flusher: the leader's entries stay in memory
    /// until the next write transaction, so tests see exactly what that transaction writes.
    #[cfg(test)]
    pub(super) fn serve_as_without_flusher(&mut self, id: NodeId) {
        self.node_id = Some(id);
    }

    /// The indexes of the rows in the file, purged or not (tests see what is left to delete).
    #[cfg(test)]
    pub(super) fn rows_in_file(&self) -> Vec<u64> {
        let rtx = self.shared.db.begin_read().expect("read");
        let t = rtx.open_table(LOG).expect("log table");
        let rows: Vec<u64> = t.iter().expect("rows").map(|r| r.expect("row").0.value()).collect();
        rows
    }

    /// Checkpoints at once (the flusher's job, for tests without it).
    #[cfg(test)]
    pub(super) fn checkpoint_now(&self) -> Result<(), StoreError> {
        self.shared.checkpoint()
    }

    /// Watches how far the log is durable.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<Durable> {
        self.shared.durable.subscribe()
    }

    /// True when `entries` are this node's own, appended as the leader of its committed vote.
    fn own_as_leader(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let (Some(me), Some(vote)) = (self.node_id, *lock(&self.vote)) else { return false };
        vote.is_committed()
            && vote.leader_id().node_id == me
            && !entries.is_empty()
            && entries.iter().all(|e| e.log_id.leader_id == *vote.leader_id())
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reader(&self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }

    fn log_state(&self) -> LogState<TypeConfig> {
        let tail = lock(&self.shared.tail);
        LogState { last_purged_log_id: tail.purged, last_log_id: tail.end }
    }

    /// Appends the entries: the leader's own (`early`) to the tail only, for the flusher to
    /// make durable; any other durably before it returns: on a serving node in the journal
    /// (the flusher moves them into the file), otherwise in one transaction of the file.
    fn append_batch(&self, entries: &[Entry<TypeConfig>], early: bool) -> Result<(), StoreError> {
        if early {
            if let Some(failed) = self.shared.durable.borrow().failed.clone() {
                return Err(StoreError::Storage(format!("Raft log: {failed}")));
            }
            return lock(&self.shared.tail).push(entries);
        }
        if self.node_id.is_some() {
            let mut journal = self.shared.writable()?;
            lock(&self.shared.tail).push(entries)?;
            return self.shared.journal_locked(&mut journal);
        }
        self.shared.transact(
            "append entries",
            |tx| put_entries(tx, entries),
            |tail, _| {
                tail.push(entries)?;
                let end = tail.end;
                tail.written_up_to(end);
                Ok(())
            },
        )
    }

    /// Deletes `[from, ∞)`.
    fn truncate_from(&self, from: u64) -> Result<(), StoreError> {
        self.shared.transact(
            "truncate the log",
            |tx| {
                tx.open_table(LOG)
                    .map_err(storage("truncate the log"))?
                    .retain_in(from.., |_, _| false)
                    .map_err(storage("truncate the log"))?;
                last_log_id_in(tx)
            },
            |tail, end| {
                while tail.entries.back().is_some_and(|e| e.log_id.index >= from) {
                    tail.entries.pop_back();
                }
                tail.end = end;
                tail.written = end;
                tail.journaled = end;
                Ok(())
            },
        )
    }

    /// Records `upto` as the last purged id (durably) and deletes `[0, upto.index]`: in the
    /// same transaction on a store that does not serve, afterwards in slices by the flusher on
    /// a serving one.
    pub(super) fn purge_upto(&self, upto: LogId<NodeId>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        // A node serving in a cluster purges lazily; offline tools (restore) and plain stores at once.
        let at_once = self.node_id.is_none();
        let purged = self.shared.transact(
            "purge the log",
            |tx| {
                put_meta(tx, LAST_PURGED, &upto)?;
                if at_once {
                    let mut t = tx.open_table(LOG).map_err(storage("purge the log"))?;
                    t.retain_in(..=upto.index, |_, _| false).map_err(storage("purge the log"))?;
                }
                Ok(())
            },
            |tail, ()| {
                if tail.purged < Some(upto) {
                    tail.purged = Some(upto);
                }
                tail.purge_backlog = !at_once;
                while tail.entries.front().is_some_and(|e| e.log_id.index <= upto.index) {
                    tail.entries.pop_front();
                }
                // A purge past the last entry (a snapshot installed beyond the log) empties the
                // log, whose end is then the purge point.
                if tail.end.is_none_or(|e| e.index < upto.index) {
                    tail.end = Some(upto);
                }
                tail.written_up_to(Some(upto));
                Ok(())
            },
        );
        tracing::info!(upto = upto.index, ms = started.elapsed().as_millis() as u64, "Raft log purged");
        if let (Ok(()), Some(f)) = (&purged, &self.file_work) {
            let _ = f.send(());
        }
        purged
    }

    /// Writes one metadata value durably (the vote).
    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.shared.transact("write the log's metadata", |tx| put_meta(tx, key, value), |_, ()| Ok(()))
    }
}

impl Shared {
    /// One durable write transaction under the writer lock: first the tail's entries not yet in
    /// the file (so that it never has a hole) and the pending committed marker, then `write`,
    /// and a new journal epoch when the journal holds records (the file now holds them all).
    /// Once it is committed, `after` updates the tail with what `write` returned, and
    /// [`Durable`] moves to the log's last durable entry.
    fn transact<T, U>(
        &self,
        what: &str,
        write: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
        after: impl FnOnce(&mut Tail, T) -> Result<U, StoreError>,
    ) -> Result<U, StoreError> {
        let mut journal = self.writable()?;
        self.transact_locked(&mut journal, what, write, after)
    }

    /// [`Shared::transact`] under the writer lock already taken.
    fn transact_locked<T, U>(
        &self,
        journal: &mut Journal,
        what: &str,
        write: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
        after: impl FnOnce(&mut Tail, T) -> Result<U, StoreError>,
    ) -> Result<U, StoreError> {
        let mut named = lock(&self.file);
        // The marker first: every entry it covers is in the tail by then, or in the file.
        let committed = lock(&self.committed).take();
        let unwritten = lock(&self.tail).unwritten();
        let tx = self.db.begin_write().map_err(storage(what))?;
        put_entries(&tx, &unwritten)?;
        if let Some(c) = committed {
            put_meta(&tx, COMMITTED, &c)?;
        }
        // The file now holds all the journal does: naming the next epoch retires its records.
        let next = (journal.used() > 0 || journal.epoch() != *named).then(|| journal.epoch() + 1);
        if let Some(epoch) = next {
            put_meta(&tx, JOURNAL_EPOCH, &epoch)?;
        }
        let out = write(&tx)?;
        tx.commit().map_err(storage(what))?;
        if let Some(epoch) = next {
            *named = epoch;
            journal.next_epoch();
        }
        drop(named);
        let (result, durable) = {
            let mut tail = lock(&self.tail);
            tail.written_up_to(unwritten.last().map(|e| e.log_id));
            let result = after(&mut tail, out);
            (result, tail.journaled)
        };
        self.durable.send_modify(|d| d.last = durable);
        result
    }

    /// Records that writing the log failed for good (see the flusher thread).
    fn fail(&self, e: &StoreError) {
        tracing::error!(error = %e, "cannot write the Raft log; this node stops taking part in the cluster");
        self.durable.send_modify(|d| d.failed = Some(e.to_string()));
    }

    /// The writer lock (and with it the journal), unless flushing has failed.
    fn writable(&self) -> Result<std::sync::MutexGuard<'_, Journal>, StoreError> {
        let journal = lock(&self.writer);
        match self.durable.borrow().failed.clone() {
            Some(failed) => Err(StoreError::Storage(format!("Raft log: {failed}"))),
            None => Ok(journal),
        }
    }

    /// Makes the tail's entries not yet durable so, in one journal record (in a transaction of
    /// the file when the journal has no room for them), then moves [`Durable`] to them.
    fn journal_locked(&self, journal: &mut Journal) -> Result<(), StoreError> {
        let entries = lock(&self.tail).unjournaled();
        let Some(last) = entries.last().map(|e| e.log_id) else { return Ok(()) };
        // The marker stays pending for the file's next transaction too.
        let committed = lock(&self.committed).flatten();
        let record = serde_json::to_vec(&JournalRecord { entries, committed }).map_err(storage("encode entries"))?;
        if !journal.fits(record.len()) {
            return self.transact_locked(journal, "append entries", |_| Ok(()), |_, ()| Ok(()));
        }
        journal.append(&record)?;
        let durable = {
            let mut tail = lock(&self.tail);
            tail.journaled_up_to(Some(last));
            tail.journaled
        };
        self.durable.send_modify(|d| d.last = durable);
        Ok(())
    }

    /// Moves the journal to its next epoch, then writes the entries of the old one into the
    /// file with the new epoch's number, in one durable transaction: appends go on in the new
    /// epoch meanwhile (the writer lock is held only for the move).
    fn checkpoint(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let (mut named, entries, epoch) = {
            let mut journal = self.writable()?;
            let named = lock(&self.file);
            if journal.used() == 0 || journal.epoch() != *named {
                return Ok(());
            }
            let entries = lock(&self.tail).journaled_unwritten();
            (named, entries, journal.next_epoch())
        };
        let committed = lock(&self.committed).take();
        let tx = self.db.begin_write().map_err(storage("checkpoint the log"))?;
        put_entries(&tx, &entries)?;
        if let Some(c) = committed {
            put_meta(&tx, COMMITTED, &c)?;
        }
        put_meta(&tx, JOURNAL_EPOCH, &epoch)?;
        tx.commit().map_err(storage("checkpoint the log"))?;
        *named = epoch;
        // Before a truncation can start (it waits for the file lock).
        lock(&self.tail).written_up_to(entries.last().map(|e| e.log_id));
        drop(named);
        tracing::debug!(entries = entries.len(), ms = started.elapsed().as_millis() as u64, "Raft log checkpointed");
        Ok(())
    }

    /// Deletes up to [`PURGE_SLICE`] rows at or below the last purged id, in one transaction
    /// that is not fsynced by itself (the rows are no longer part of the log: a crash that
    /// brings them back only means they are deleted again). Clears the backlog when none is left.
    fn delete_purged_slice(&self) -> Result<(), StoreError> {
        let _file = lock(&self.file);
        let Some(purged) = lock(&self.tail).purged.map(|p| p.index) else {
            lock(&self.tail).purge_backlog = false;
            return Ok(());
        };
        let mut tx = self.db.begin_write().map_err(storage("delete purged entries"))?;
        tx.set_durability(redb::Durability::None);
        let more = {
            let mut t = tx.open_table(LOG).map_err(storage("delete purged entries"))?;
            let first = t.first().map_err(storage("delete purged entries"))?.map(|(k, _)| k.value());
            match first {
                Some(first) if first <= purged => {
                    let last = purged.min(first.saturating_add(PURGE_SLICE - 1));
                    t.retain_in(first..=last, |_, _| false).map_err(storage("delete purged entries"))?;
                    last < purged
                }
                _ => false,
            }
        };
        tx.commit().map_err(storage("delete purged entries"))?;
        if !more {
            lock(&self.tail).purge_backlog = false;
        }
        Ok(())
    }
}

/// The entries the journal's `records` hold after `written` (the file's last entry), checked
/// to follow it without a gap, and the last committed marker they carry.
type Journaled = (VecDeque<Entry<TypeConfig>>, Option<LogId<NodeId>>);
fn journaled_entries(records: &[Vec<u8>], written: Option<LogId<NodeId>>) -> Result<Journaled, StoreError> {
    let mut out = VecDeque::new();
    let mut committed = None;
    let mut next = written.map_or(0, |w| w.index + 1);
    for record in records {
        let batch: JournalRecord = serde_json::from_slice(record).map_err(|e| StoreError::Corrupt {
            table: "raft-log.wal".into(),
            key: format!("record after entry {}", next.saturating_sub(1)),
            reason: format!("{e}; remove this node from the cluster, wipe its data directory and join it again"),
        })?;
        committed = batch.committed.or(committed);
        for e in batch.entries {
            if e.log_id.index < next {
                continue;
            }
            if e.log_id.index != next && (written.is_some() || !out.is_empty()) {
                return Err(StoreError::Corrupt {
                    table: "raft-log.wal".into(),
                    key: e.log_id.index.to_string(),
                    reason: format!(
                        "the journal goes on at entry {} but the log ends before {next}; remove this node from the cluster, wipe its data directory and join it again",
                        e.log_id.index
                    ),
                });
            }
            next = e.log_id.index + 1;
            out.push_back(e);
        }
    }
    Ok((out, committed))
}

fn put_entries(tx: &redb::WriteTransaction, entries: &[Entry<TypeConfig>]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut t = tx.open_table(LOG).map_err(storage("append entries"))?;
    for e in entries {
        let bytes = serde_json::to_vec(e).map_err(storage("encode an entry"))?;
        t.insert(e.log_id.index, bytes.as_slice()).map_err(storage("append entries"))?;
    }
    Ok(())
}

fn put_meta<T: Serialize>(tx: &redb::WriteTransaction, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(storage("encode the log's metadata"))?;
    tx.open_table(META)
        .map_err(storage("write the log's metadata"))?
        .insert(key, bytes.as_slice())
        .map(|_| ())
        .map_err(storage("write the log's metadata"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The flusher thread: on each wake-up (coalesced), the leader's entries into the journal (the
/// write path waits for this), and a wake-up for the file thread once the journal holds
/// [`CHECKPOINT_BYTES`]. A failure is kept in [`Durable::failed`]: the waiting apply gives up
/// and the next append fails, which stops the Raft core (and the node, see `app::run`). Ends
/// when the log store is dropped, after journaling what is left.
fn flusher(shared: &Shared, wake: &mpsc::Receiver<()>, checkpoints: &mpsc::Sender<()>) {
    loop {
        let open = wake.recv().is_ok();
        while wake.try_recv().is_ok() {}
        if shared.durable.borrow().failed.is_some() {
            return;
        }
        if lock(&shared.tail).has_unjournaled() {
            if let Err(e) = shared.writable().and_then(|mut journal| shared.journal_locked(&mut journal)) {
                shared.fail(&e);
                return;
            }
        }
        if lock(&shared.writer).used() >= CHECKPOINT_BYTES {
            let _ = checkpoints.send(());
        }
        if !open {
            return;
        }
    }
}

/// The file thread: on each wake-up (coalesced), a checkpoint when the journal holds
/// [`CHECKPOINT_BYTES`] (on its own thread, so that neither the leader's journaling nor a
/// follower's append waits for it); between them it deletes the rows of purged entries, one
/// [`PURGE_SLICE`] at a time, [`PURGE_PAUSE`] apart (a failed deletion only leaves rows that
/// are never read; it is tried again at the next purge or start-up). When the log store is
/// dropped it writes everything into the file (a clean stop leaves the journal empty).
fn file_thread(shared: &Shared, wake: &mpsc::Receiver<()>) {
    loop {
        let backlog = lock(&shared.tail).purge_backlog;
        let open = if backlog {
            !matches!(wake.recv_timeout(PURGE_PAUSE), Err(mpsc::RecvTimeoutError::Disconnected))
        } else {
            wake.recv().is_ok()
        };
        while wake.try_recv().is_ok() {}
        if shared.durable.borrow().failed.is_some() {
            return;
        }
        let written = if !open {
            shared.transact("write the log before closing it", |_| Ok(()), |_, ()| Ok(()))
        } else if lock(&shared.writer).used() >= CHECKPOINT_BYTES {
            shared.checkpoint()
        } else {
            Ok(())
        };
        if let Err(e) = written {
            shared.fail(&e);
            return;
        }
        if !open {
            return;
        }
        if backlog {
            if let Err(e) = shared.delete_purged_slice() {
                tracing::warn!(error = %e, "cannot delete purged Raft log entries; they are kept (unread) until the next purge");
                lock(&shared.tail).purge_backlog = false;
            }
        }
    }
}

/// The log's last entry id (or the last purged one when it is empty), inside a write transaction.
fn last_log_id_in(tx: &redb::WriteTransaction) -> Result<Option<LogId<NodeId>>, StoreError> {
    let purged = decode_meta(&tx.open_table(META).map_err(storage("read the log"))?, LAST_PURGED)?;
    last_of(&tx.open_table(LOG).map_err(storage("read the log"))?, purged)
}

/// The last entry id of `log`, whose last purged id is `purged`.
fn last_of(log: &impl ReadableTable<u64, &'static [u8]>, purged: Option<LogId<NodeId>>) -> Result<Option<LogId<NodeId>>, StoreError> {
    match log.last().map_err(storage("read the log"))? {
        // Rows at or below the purge point may wait for deletion; they are not the log.
        Some((k, v)) if purged.is_none_or(|p| k.value() > p.index) => Ok(Some(decode_entry(k.value(), v.value())?.log_id)),
        _ => Ok(purged),
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

/// The entries in `range`: those still in the tail from memory, older ones from the file.
fn read_entries<RB: RangeBounds<u64>>(shared: &Shared, range: RB) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let asked = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let (start, first_in_tail, from_tail) = {
        let tail = lock(&shared.tail);
        // Rows at or below the purge point may wait for deletion: they are not the log.
        let start = tail.purged.map_or(asked, |p| asked.max(p.index.saturating_add(1)));
        let first = tail.entries.front().map_or(u64::MAX, |e| e.log_id.index);
        let from_tail: Vec<_> =
            tail.entries.iter().filter(|e| e.log_id.index >= start && range.contains(&e.log_id.index)).cloned().collect();
        (start, first, from_tail)
    };
    let mut out = Vec::new();
    if start < first_in_tail {
        let end = match range.end_bound() {
            Bound::Included(&e) => Bound::Included(e.min(first_in_tail - 1)),
            Bound::Excluded(&e) => Bound::Excluded(e.min(first_in_tail)),
            Bound::Unbounded => Bound::Excluded(first_in_tail),
        };
        let rtx = shared.db.begin_read().map_err(storage("read the log"))?;
        let t = rtx.open_table(LOG).map_err(storage("read the log"))?;
        for row in t.range::<u64>((Bound::Included(start), end)).map_err(storage("read the log"))? {
            let (k, v) = row.map_err(storage("read the log"))?;
            out.push(decode_entry(k.value(), v.value())?);
        }
    }
    out.extend(from_tail);
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
        Ok(self.log_state())
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
        let vote = read_meta(&self.shared.db, VOTE).map_err(|e| StorageIOError::read_vote(&e))?;
        *lock(&self.vote) = vote;
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Advisory (openraft re-learns it from the leader): written with the next write.
        *lock(&self.shared.committed) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if let Some(c) = *lock(&self.shared.committed) {
            return Ok(c);
        }
        Ok(read_meta::<Option<LogId<NodeId>>>(&self.shared.db, COMMITTED).map_err(read_err)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let early = self.own_as_leader(&entries);
        let result = self.append_batch(&entries, early);
        // The flusher makes the leader's entries durable, and moves any into the file.
        if let (Ok(()), Some(f)) = (&result, &self.flush) {
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
