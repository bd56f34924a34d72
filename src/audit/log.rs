//! The writing side of the audit log: [`AuditLog`], the cheap cloneable handle the gateway
//! records into, and [`AuditWriterTask`], which owns the segment files and runs the writer on its
//! own OS thread (so `fdatasync` never stalls the async runtime). Start-up recovery, group
//! commit, checkpoints, rotation and retention live here.
//!
//! Invariants: `record` never blocks and never does I/O (a full queue is counted, then chained
//! as a `gap`); only the writer thread touches segment files and the chain state; every entry
//! is hash-chained to the previous one in the order it is written; a partial write is truncated
//! before anything else is appended; retention writes and fsyncs its `retention` entry before it
//! deletes anything, and never deletes the segment being written.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::record::{Anchor, AuditRecord, Body, Checkpoint, Gap, Recovered, Retention};
use super::segment::{self, anchor_time, local_date, node_segments, read_first, read_tail, segment_name, SegmentFile, GENESIS};
use super::{AuditConfig, AuditError};

/// Messages handled by the writer per wake-up before it writes and checks the clock.
/// How long the writer lets records accumulate after waking (bounds the added latency).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);
const BATCH: usize = 4096;
/// How long the writer waits before retrying after a failed write or fsync.
const RETRY: Duration = Duration::from_secs(1);

/// Where the writer reads the time (a test clock in unit tests).
pub(crate) type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The handle the gateway records into. Cloning is cheap; every clone feeds the same writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

/// Counters for metrics and status (`lgsp_audit_records_total`, `lgsp_audit_dropped_records_total`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStats {
    /// Records accepted into the queue since start.
    pub accepted_total: u64,
    /// Records not logged since start (queue full, writer failing or stopped); each is in a `gap` entry.
    pub dropped_total: u64,
    /// Seq of the newest entry written to the file (compare with `verify`'s `last_seq`).
    pub last_seq: u64,
    /// Seq of the newest entry known to be fsynced.
    pub durable_seq: u64,
    /// The writer's last write or fsync failed and it is retrying.
    pub writer_failing: bool,
}

/// Owns the files; run it once with [`AuditWriterTask::run`].
pub struct AuditWriterTask {
    writer: Writer,
    rx: Receiver<Msg>,
    stop: Arc<AtomicBool>,
}

impl AuditLog {
    /// Opens (or creates) `dir`, recovers the chain of `node` from its newest segment and
    /// returns the handle and the writer to spawn. Blocking I/O: call it at start-up.
    pub fn open(dir: &Path, node: &str, key: SigningKey, cfg: AuditConfig) -> Result<(AuditLog, AuditWriterTask), AuditError> {
        Self::open_with_clock(dir, node, key, cfg, Arc::new(Utc::now))
    }

    pub(crate) fn open_with_clock(
        dir: &Path,
        node: &str,
        key: SigningKey,
        cfg: AuditConfig,
        clock: Clock,
    ) -> Result<(AuditLog, AuditWriterTask), AuditError> {
        validate(node, &cfg)?;
        let (tx, rx) = mpsc::sync_channel(cfg.queue_capacity);
        let shared = Arc::new(Shared {
            node: node.to_owned(),
            public_key: key.verifying_key(),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            durable_seq: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        });
        let writer = Writer::open(dir, node, key, cfg, clock, shared.clone())?;
        let stop = Arc::new(AtomicBool::new(false));
        Ok((AuditLog { tx, shared }, AuditWriterTask { writer, rx, stop }))
    }

    /// Hands one transaction to the writer. Never blocks: if the queue is full (or the writer
    /// has stopped) the record is counted in `dropped_total` and a `gap` entry says so later.
    pub fn record(&self, rec: AuditRecord) {
        match self.tx.try_send(Msg::Record(Box::new(rec))) {
            Ok(()) => self.shared.accepted.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.shared.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Returns once everything recorded before this call is written and fsynced.
    pub async fn flush(&self) -> Result<(), AuditError> {
        self.request(false).await
    }

    /// Like [`AuditLog::flush`], after appending a signed checkpoint (e.g. before a backup).
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        self.request(true).await
    }

    pub fn stats(&self) -> AuditStats {
        let s = &self.shared;
        AuditStats {
            accepted_total: s.accepted.load(Ordering::Relaxed),
            dropped_total: s.dropped.load(Ordering::Relaxed),
            last_seq: s.last_seq.load(Ordering::Relaxed),
            durable_seq: s.durable_seq.load(Ordering::Relaxed),
            writer_failing: s.failing.load(Ordering::Relaxed),
        }
    }

    /// The node whose chain this handle feeds.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// The key checkpoints are signed with (give it to auditors for `verify`).
    pub fn public_key(&self) -> VerifyingKey {
        self.shared.public_key
    }

    async fn request(&self, checkpoint: bool) -> Result<(), AuditError> {
        let (done, answer) = oneshot::channel();
        let mut msg = Msg::Flush { checkpoint, done };
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    msg = m;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(AuditError::Closed),
            }
        }
        answer.await.unwrap_or(Err(AuditError::Closed))
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("node", &self.shared.node).field("stats", &self.stats()).finish()
    }
}

impl std::fmt::Debug for AuditWriterTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = &self.writer;
        f.debug_struct("AuditWriterTask").field("node", &w.node).field("segment", &w.seg.path).field("next_seq", &w.next_seq).finish()
    }
}

impl AuditWriterTask {
    /// Runs the writer until `shutdown` completes or every [`AuditLog`] handle is dropped, then
    /// drains the queue, appends a `gap` if records were dropped and a signed `shutdown`
    /// checkpoint, and fsyncs. Let `shutdown` complete after the gateway has drained. If this
    /// future is dropped early, the writer thread still shuts down the same way.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AuditError> {
        let AuditWriterTask { writer, rx, stop } = self;
        let (done, mut finished) = oneshot::channel();
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("lgsp-audit".into())
            .spawn(move || {
                let _ = done.send(writer.run_blocking(rx, &thread_stop));
            })
            .map_err(|e| AuditError::WriterFailed { message: format!("cannot start the audit writer thread: {e}") })?;
        let _stop_on_drop = StopOnDrop(stop.clone());
        let panicked = || Err(AuditError::WriterFailed { message: "the audit writer thread panicked".into() });
        tokio::select! {
            r = &mut finished => return r.unwrap_or_else(|_| panicked()),
            () = shutdown => {}
        }
        stop.store(true, Ordering::Release);
        finished.await.unwrap_or_else(|_| panicked())
    }
}

// ---------------------------------------------------------------- internals

enum Msg {
    Record(Box<AuditRecord>),
    Flush { checkpoint: bool, done: oneshot::Sender<Result<(), AuditError>> },
}

struct Shared {
    node: String,
    public_key: VerifyingKey,
    accepted: AtomicU64,
    dropped: AtomicU64,
    last_seq: AtomicU64,
    durable_seq: AtomicU64,
    failing: AtomicBool,
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn validate(node: &str, cfg: &AuditConfig) -> Result<(), AuditError> {
    if node.is_empty() || node.len() > 255 {
        return Err(AuditError::Config(format!("the node name must be 1-255 bytes, not {:?}", node)));
    }
    if cfg.queue_capacity == 0 {
        return Err(AuditError::Config("the audit queue capacity must be at least 1".into()));
    }
    if cfg.fsync_interval.is_zero() || cfg.checkpoint_interval.is_zero() || cfg.checkpoint_every == 0 {
        return Err(AuditError::Config("fsync and checkpoint intervals must be positive".into()));
    }
    if cfg.segment_max_bytes < 4096 {
        return Err(AuditError::Config(format!("segment_max_bytes must be at least 4096, not {}", cfg.segment_max_bytes)));
    }
    Ok(())
}

/// The segment being appended to.
struct Segment {
    file: File,
    path: PathBuf,
    no: u32,
    /// Bytes on disk (after the last successful write).
    len: u64,
    /// When its anchor was written (the end of the previous segment, for retention).
    started: DateTime<Utc>,
    /// Local date it was started; a new date rotates.
    day: NaiveDate,
    /// Oldest segment of this node that should exist (what the next retention checks against).
    oldest: u32,
}

fn create_segment(dir: &Path, node: &str, no: u32, started: DateTime<Utc>, oldest: u32) -> Result<Segment, AuditError> {
    let path = dir.join(segment_name(node, no));
    let file = match OpenOptions::new().create_new(true).append(true).mode(0o640).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let f = OpenOptions::new().append(true).open(&path).map_err(AuditError::io("open", &path))?;
            let len = f.metadata().map_err(AuditError::io("stat", &path))?.len();
            if len != 0 {
                return Err(AuditError::Io {
                    action: "create",
                    path,
                    source: std::io::Error::other("a non-empty file with the next segment's name is in the way; move it aside"),
                });
            }
            f
        }
        Err(e) => return Err(AuditError::io("create", &path)(e)),
    };
    segment::sync_dir(dir)?;
    Ok(Segment { file, path, no, len: 0, started, day: local_date(started), oldest })
}

fn open_append(path: &Path, len: u64) -> Result<File, AuditError> {
    let f = OpenOptions::new().append(true).open(path).map_err(AuditError::io("open", path))?;
    let on_disk = f.metadata().map_err(AuditError::io("stat", path))?.len();
    if on_disk != len {
        f.set_len(len).map_err(AuditError::io("truncate the torn tail of", path))?;
        f.sync_all().map_err(AuditError::io("fsync", path))?;
    }
    Ok(f)
}

fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// The chain state and the open segment; lives on the writer thread.
struct Writer {
    dir: PathBuf,
    node: String,
    key: SigningKey,
    key_b64: String,
    cfg: AuditConfig,
    clock: Clock,
    shared: Arc<Shared>,
    /// Seq and hash the next entry chains to.
    next_seq: u64,
    prev: [u8; 32],
    /// `rec` entries since the last checkpoint or `recovered` entry (the checkpoint's `count`).
    records_since_cp: u64,
    /// Entries of any kind since the last checkpoint (0 means the head is signed).
    entries_since_cp: u64,
    last_cp: Instant,
    /// Drops already written in `gap` entries.
    dropped_logged: u64,
    seg: Segment,
    /// Encoded lines not yet written to `seg`.
    buf: Vec<u8>,
    buf_last_seq: Option<u64>,
    written_seq: Option<u64>,
    unsynced: bool,
    last_sync: Instant,
    /// The last write error while failing; records are dropped meanwhile.
    failing: Option<String>,
    retry_at: Instant,
}

impl Writer {
    /// Recovers the chain from the newest segment (see the module doc) and makes the start durable.
    fn open(dir: &Path, node: &str, key: SigningKey, cfg: AuditConfig, clock: Clock, shared: Arc<Shared>) -> Result<Writer, AuditError> {
        std::fs::create_dir_all(dir).map_err(AuditError::io("create", dir))?;
        let segs = node_segments(dir, node)?;
        let now = ms(clock());
        let today = local_date(now);
        let first_no = segs.first().map_or(1, |s| s.no);
        let mut recovered = None;
        let mut anchor_reason = None;
        let (seg, head) = match segs.last() {
            None => {
                anchor_reason = Some("genesis");
                (create_segment(dir, node, 1, now, 1)?, None)
            }
            Some(last) => {
                let tail = read_tail(&last.path)?;
                match &tail.last {
                    Some(e) => {
                        let file = open_append(&last.path, tail.good_len)?;
                        let (started, oldest) = segment_start(&last.path, tail.retained_from, now, first_no)?;
                        let (path, no, len, day) = (last.path.clone(), last.no, tail.good_len, local_date(started));
                        let seg = Segment { file, path, no, len, started, day, oldest };
                        if !e.clean_shutdown || tail.torn_bytes > 0 || tail.damaged_after_last > 0 {
                            recovered = Some(Recovered {
                                at: now,
                                previous_seq: Some(e.seq),
                                truncated_bytes: tail.torn_bytes,
                                damaged_lines: tail.damaged_after_last,
                                segment: last.no,
                                reason: "the previous run did not end with a shutdown checkpoint (crash, kill or power loss)".into(),
                            });
                        }
                        (seg, Some((e.seq, e.hash)))
                    }
                    None => {
                        // Nothing intact in the newest segment: continue from the one before it.
                        let before = match segs.len().checked_sub(2).and_then(|i| segs.get(i)) {
                            Some(s) => read_tail(&s.path)?.last.map(|e| (e.seq, e.hash)),
                            None => None,
                        };
                        let seg = if tail.complete_lines == 0 {
                            // Created just before a crash: only a torn fragment, if anything. Reuse it.
                            let file = open_append(&last.path, 0)?;
                            Segment { file, path: last.path.clone(), no: last.no, len: 0, started: now, day: today, oldest: first_no }
                        } else {
                            // Complete but unreadable lines: keep them as evidence, continue in a new segment.
                            tracing::error!(segment = %last.path.display(), "the newest audit segment is unreadable; continuing in a new segment (run `lgsp audit verify`)");
                            create_segment(dir, node, last.no.saturating_add(1), now, first_no)?
                        };
                        anchor_reason = Some("recovered");
                        recovered = Some(Recovered {
                            at: now,
                            previous_seq: before.map(|(s, _)| s),
                            truncated_bytes: tail.torn_bytes,
                            damaged_lines: tail.complete_lines,
                            segment: last.no,
                            reason: "the newest segment held no intact entry".into(),
                        });
                        (seg, before)
                    }
                }
            }
        };
        let (next_seq, prev) = head.map_or((0, GENESIS), |(s, h)| (s + 1, h));
        let key_b64 = STANDARD.encode(key.verifying_key().as_bytes());
        let t = Instant::now();
        let mut w = Writer {
            dir: dir.to_owned(),
            node: node.to_owned(),
            key,
            key_b64,
            cfg,
            clock,
            shared,
            next_seq,
            prev,
            records_since_cp: 0,
            entries_since_cp: 0,
            last_cp: t,
            dropped_logged: 0,
            seg,
            buf: Vec::with_capacity(256 * 1024),
            buf_last_seq: None,
            written_seq: head.map(|(s, _)| s),
            unsynced: false,
            last_sync: t,
            failing: None,
            retry_at: t,
        };
        if let Some(s) = head {
            w.shared.last_seq.store(s.0, Ordering::Relaxed);
            w.shared.durable_seq.store(s.0, Ordering::Relaxed);
        }
        if let Some(reason) = anchor_reason {
            let oldest = w.seg.oldest;
            w.anchor(reason, oldest)?;
        }
        if let Some(r) = recovered {
            tracing::warn!(segment = r.segment, truncated_bytes = r.truncated_bytes, "audit log recovered after an unclean shutdown");
            w.push(&Body::Recovered(r))?;
        }
        w.sync()?;
        Ok(w)
    }

    // A dedicated OS thread, not a runtime worker: sleeping here blocks nothing else.
    #[allow(clippy::disallowed_methods)]
    fn run_blocking(mut self, rx: Receiver<Msg>, stop: &AtomicBool) -> Result<(), AuditError> {
        loop {
            match rx.recv_timeout(self.cfg.fsync_interval) {
                Ok(m) => {
                    self.handle(m);
                    // Coalesce: while this thread sleeps, producers only queue (no wake-up per
                    // record, which cost a quarter of the gateway's CPU under load).
                    std::thread::sleep(COALESCE);
                    for _ in 0..BATCH {
                        match rx.try_recv() {
                            Ok(m) => self.handle(m),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.housekeeping();
            if stop.load(Ordering::Acquire) {
                break;
            }
        }
        // What is queued now, and no more: producers that keep sending must not keep us alive.
        for _ in 0..self.cfg.queue_capacity {
            match rx.try_recv() {
                Ok(m) => self.handle(m),
                Err(_) => break,
            }
        }
        drop(rx);
        self.finish()
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(mut rec) => {
                if self.failing.is_some() {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                rec.sanitize(&self.node);
                if let Err(e) = self.append(Body::Rec(rec)) {
                    // `append` fails only before the entry is chained, so this record is truly lost.
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    self.fail(&e);
                }
            }
            Msg::Flush { checkpoint, done } => {
                let r = self.flush(checkpoint);
                let _ = done.send(r);
            }
        }
    }

    fn flush(&mut self, checkpoint: bool) -> Result<(), AuditError> {
        if self.failing.is_some() {
            self.retry();
        }
        if let Some(message) = &self.failing {
            return Err(AuditError::WriterFailed { message: message.clone() });
        }
        let r = self.try_flush(checkpoint);
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    fn try_flush(&mut self, checkpoint: bool) -> Result<(), AuditError> {
        self.note_drops()?;
        if checkpoint {
            self.checkpoint("request")?;
        }
        self.sync()
    }

    fn housekeeping(&mut self) {
        if self.failing.is_some() {
            if Instant::now() >= self.retry_at {
                self.retry();
            }
            if self.failing.is_some() {
                return;
            }
        }
        if let Err(e) = self.tick() {
            self.fail(&e);
        }
    }

    fn tick(&mut self) -> Result<(), AuditError> {
        self.note_drops()?;
        if self.day_changed() {
            self.rotate()?;
        }
        if self.entries_since_cp > 0 && self.last_cp.elapsed() >= self.cfg.checkpoint_interval {
            self.checkpoint("interval")?;
        }
        self.write_out()?;
        if self.unsynced && self.last_sync.elapsed() >= self.cfg.fsync_interval {
            self.sync()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), AuditError> {
        if self.failing.is_some() {
            self.retry();
        }
        if let Some(message) = self.failing.take() {
            return Err(AuditError::WriterFailed { message });
        }
        self.note_drops()?;
        self.checkpoint("shutdown")?;
        self.sync()
    }

    fn fail(&mut self, e: &AuditError) {
        if self.failing.is_none() {
            tracing::error!(error = %e, "audit writer failing; records are dropped and counted until it recovers");
        }
        self.failing = Some(e.to_string());
        self.shared.failing.store(true, Ordering::Relaxed);
        self.retry_at = Instant::now() + RETRY;
    }

    fn retry(&mut self) {
        match self.sync() {
            Ok(()) => {
                tracing::info!("audit writer recovered");
                self.failing = None;
                self.shared.failing.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                self.failing = Some(e.to_string());
                self.retry_at = Instant::now() + RETRY;
            }
        }
    }

    fn now(&self) -> DateTime<Utc> {
        ms((self.clock)())
    }

    fn day_changed(&self) -> bool {
        local_date(self.now()) != self.seg.day
    }

    /// Appends a `rec` or `gap` entry, rotating first when the segment is full or a day old.
    /// Fails only before the entry is chained (rotation or encoding); never writes the buffer.
    fn append(&mut self, body: Body) -> Result<(), AuditError> {
        if self.seg.len + self.buf.len() as u64 >= self.cfg.segment_max_bytes || self.day_changed() {
            self.rotate()?;
        }
        let is_rec = matches!(body, Body::Rec(_));
        self.push(&body)?;
        if is_rec && self.records_since_cp >= self.cfg.checkpoint_every {
            self.checkpoint("count")?;
        }
        Ok(())
    }

    /// Encodes one entry into the buffer and advances the chain.
    fn push(&mut self, body: &Body) -> Result<(), AuditError> {
        let seq = self.next_seq;
        self.prev = segment::encode_line(&mut self.buf, seq, &self.prev, body)?;
        self.next_seq += 1;
        self.buf_last_seq = Some(seq);
        match body {
            Body::Checkpoint(_) => {
                self.records_since_cp = 0;
                self.entries_since_cp = 0;
                self.last_cp = Instant::now();
            }
            Body::Recovered(_) => {
                self.records_since_cp = 0;
                self.entries_since_cp += 1;
            }
            Body::Rec(_) => {
                self.records_since_cp += 1;
                self.entries_since_cp += 1;
            }
            _ => self.entries_since_cp += 1,
        }
        Ok(())
    }

    fn checkpoint(&mut self, reason: &str) -> Result<(), AuditError> {
        let at = self.now();
        let count = self.records_since_cp;
        let msg = segment::checkpoint_message(&self.node, self.next_seq, &self.prev, count, at);
        let sig = STANDARD.encode(self.key.sign(&msg).to_bytes());
        let body = Checkpoint { at, reason: reason.into(), head: hex::encode(self.prev), count, sig, key: self.key_b64.clone() };
        self.push(&Body::Checkpoint(body))
    }

    fn anchor(&mut self, reason: &str, oldest: u32) -> Result<(), AuditError> {
        let at = self.now();
        let msg = segment::anchor_message(&self.node, self.seg.no, oldest, self.next_seq, &self.prev, at);
        let sig = STANDARD.encode(self.key.sign(&msg).to_bytes());
        let body =
            Anchor { at, node: self.node.clone(), segment: self.seg.no, oldest, reason: reason.into(), sig, key: self.key_b64.clone() };
        self.push(&Body::Anchor(body))
    }

    /// Closes the current segment with a checkpoint, applies retention, opens the next segment
    /// and writes its anchor. Safe to repeat after a failure part-way.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let plan = self.retention_plan();
        if let Some(entry) = plan.entry {
            self.push(&Body::Retention(entry))?;
        }
        if self.entries_since_cp > 0 {
            self.checkpoint("rotation")?;
        }
        self.sync()?;
        for s in &plan.delete {
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(segment = %s.path.display(), error = %e, "cannot delete an expired audit segment; it will be retried");
            }
        }
        if !plan.delete.is_empty() {
            segment::sync_dir(&self.dir)?;
            tracing::info!(count = plan.delete.len(), "expired audit segments deleted");
        }
        let now = self.now();
        self.seg = create_segment(&self.dir, &self.node, self.seg.no.saturating_add(1), now, plan.oldest_after)?;
        self.anchor("rotation", plan.oldest_after)
    }

    /// Which old segments to delete now, and what to say about it. Never fails: a problem here
    /// is logged and retention waits for the next rotation, but auditing goes on.
    fn retention_plan(&self) -> RetentionPlan {
        let keep = RetentionPlan { delete: Vec::new(), entry: None, oldest_after: self.seg.oldest };
        let segs = match node_segments(&self.dir, &self.node) {
            Ok(s) => s.into_iter().filter(|s| s.no < self.seg.no).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "audit retention skipped");
                return keep;
            }
        };
        let expected = self.seg.oldest;
        let first = segs.first().map_or(self.seg.no, |s| s.no);
        let mut missing = Vec::new();
        if first > expected {
            missing.push((expected, first - 1));
        }
        let mut delete: Vec<SegmentFile> = Vec::new();
        if self.cfg.retention_days > 0 {
            let cutoff = self.now() - chrono::Duration::days(i64::from(self.cfg.retention_days));
            let nexts = segs.iter().skip(1).map(|s| (s.no, anchor_time(&s.path))).chain([(self.seg.no, Ok(Some(self.seg.started)))]);
            for (old, (next_no, started)) in segs.iter().zip(nexts) {
                match started {
                    Ok(Some(t)) if t < cutoff => {
                        if next_no > old.no + 1 {
                            missing.push((old.no + 1, next_no - 1));
                        }
                        delete.push(old.clone());
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "audit retention stopped at an unreadable segment");
                        break;
                    }
                }
            }
        }
        if delete.is_empty() && missing.is_empty() {
            return keep;
        }
        if !missing.is_empty() {
            tracing::error!(?missing, "audit segments are missing that retention did not delete; they were removed outside lgsp");
        }
        let oldest_after = segs.get(delete.len()).map_or(self.seg.no, |s| s.no);
        let entry = Retention {
            at: self.now(),
            retention_days: self.cfg.retention_days,
            deleted: delete.first().zip(delete.last()).map(|(a, b)| (a.no, b.no)),
            missing,
        };
        RetentionPlan { delete, entry: Some(entry), oldest_after }
    }

    /// Counts drops since the last gap entry into a new one.
    fn note_drops(&mut self) -> Result<(), AuditError> {
        let total = self.shared.dropped.load(Ordering::Relaxed);
        if total > self.dropped_logged {
            let dropped = total - self.dropped_logged;
            self.append(Body::Gap(Gap { at: self.now(), dropped, total_dropped: total }))?;
            self.dropped_logged = total;
            tracing::warn!(dropped, total, "audit records were dropped (queue full or disk failing); a gap entry records it");
        }
        Ok(())
    }

    /// Writes the buffer to the segment (no fsync). A partial write is cut off again.
    fn write_out(&mut self) -> Result<(), AuditError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.seg.file.write_all(&self.buf) {
            let _ = self.seg.file.set_len(self.seg.len);
            return Err(AuditError::io("write", &self.seg.path)(e));
        }
        self.seg.len += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
        if let Some(s) = self.buf_last_seq.take() {
            self.written_seq = Some(s);
            self.shared.last_seq.store(s, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes and fsyncs.
    fn sync(&mut self) -> Result<(), AuditError> {
        self.write_out()?;
        if self.unsynced {
            self.seg.file.sync_data().map_err(AuditError::io("fsync", &self.seg.path))?;
            self.unsynced = false;
            if let Some(s) = self.written_seq {
                self.shared.durable_seq.store(s, Ordering::Relaxed);
            }
        }
        self.last_sync = Instant::now();
        Ok(())
    }
}

struct RetentionPlan {
    delete: Vec<SegmentFile>,
    entry: Option<Retention>,
    /// The `oldest` of the next anchor.
    oldest_after: u32,
}

/// When a segment was started and the oldest segment it expects, from its anchor and any
/// retention entries written in it since.
fn segment_start(path: &Path, retained_from: Option<u32>, now: DateTime<Utc>, first_no: u32) -> Result<(DateTime<Utc>, u32), AuditError> {
    let (started, oldest) = match read_first(path)? {
        Some((_, _, Body::Anchor(a))) => (a.at, a.oldest),
        _ => (now, first_no),
    };
    Ok((started, retained_from.map_or(oldest, |r| r.max(oldest))))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::verify::{verify, FindingKind, Severity};
    use std::sync::atomic::AtomicI64;

    /// A clock the test moves by hand.
    pub(crate) struct TestClock(pub AtomicI64);

    impl TestClock {
        pub(crate) fn start(rfc3339: &str) -> Arc<TestClock> {
            let t = DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis();
            Arc::new(TestClock(AtomicI64::new(t)))
        }
        pub(crate) fn advance(&self, d: chrono::Duration) {
            self.0.fetch_add(d.num_milliseconds(), Ordering::SeqCst);
        }
        pub(crate) fn clock(self: &Arc<Self>) -> Clock {
            let me = self.clone();
            Arc::new(move || DateTime::from_timestamp_millis(me.0.load(Ordering::SeqCst)).unwrap())
        }
        pub(crate) fn now(&self) -> DateTime<Utc> {
            DateTime::from_timestamp_millis(self.0.load(Ordering::SeqCst)).unwrap()
        }
    }

    pub(crate) fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    pub(crate) fn rec(i: u64, at: DateTime<Utc>) -> AuditRecord {
        AuditRecord {
            txn_id: format!("txn-{i}"),
            at,
            consumer_agency: if i % 2 == 0 { "000.00.00.H31".into() } else { "000.00.01.H31".into() },
            consumer_system: format!("sys-{}", i % 3),
            service: if i % 5 == 0 { "dancu".into() } else { "hotich".into() },
            version: "v1".into(),
            environment: "production".into(),
            method: "GET".into(),
            path: format!("/dancu/v1/congdan/{i}?cccd=secret"),
            status: if i % 7 == 0 { 403 } else { 200 },
            outcome: if i % 7 == 0 { "SUBSCRIPTION_REQUIRED".into() } else { "OK".into() },
            gateway_us: 120 + i,
            upstream_us: if i % 7 == 0 { None } else { Some(3000 + i) },
            request_bytes: 0,
            response_bytes: 512,
            request_sha256: hex::encode([0u8; 32]),
            response_sha256: hex::encode([i as u8; 32]),
            auth_method: "oauth2".into(),
            ..Default::default()
        }
    }

    pub(crate) fn small_cfg() -> AuditConfig {
        AuditConfig { fsync_interval: Duration::from_millis(20), ..AuditConfig::default() }
    }

    /// Opens a log in `dir`, records `n` records at the clock's time, shuts down cleanly.
    pub(crate) async fn write_run(dir: &Path, clock: &Arc<TestClock>, cfg: AuditConfig, n: u64, first: u64) {
        let (log, task) = AuditLog::open_with_clock(dir, "node-1", key(1), cfg, clock.clock()).unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let h = tokio::spawn(task.run(async move {
            let _ = stop_rx.await;
        }));
        for i in first..first + n {
            log.record(rec(i, clock.now()));
        }
        log.flush().await.unwrap();
        stop_tx.send(()).unwrap();
        h.await.unwrap().unwrap();
    }

    pub(crate) fn segs(dir: &Path) -> Vec<SegmentFile> {
        node_segments(dir, "node-1").unwrap()
    }

    pub(crate) fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn chain_continues_across_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        write_run(dir.path(), &clock, small_cfg(), 10, 0).await;
        write_run(dir.path(), &clock, small_cfg(), 10, 10).await;
        let s = segs(dir.path());
        assert_eq!(s.len(), 1);
        let l = lines(&s[0].path);
        // anchor, 10 recs, shutdown checkpoint, 10 recs, shutdown checkpoint
        assert_eq!(l.len(), 23, "{l:#?}");
        assert!(l[0].contains("\"anchor\"") && l[0].starts_with("{\"seq\":0,"));
        assert!(l[11].contains("\"reason\":\"shutdown\"") && l[22].contains("\"reason\":\"shutdown\""));
        assert!(l[12].starts_with("{\"seq\":12,"), "no recovered marker after a clean shutdown");
        assert!(!l[1].contains("secret"), "the query string is never stored");
        let report = verify(dir.path(), Some("node-1"), Some(&key(1).verifying_key())).unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!(report.nodes[0].records, 20);
        assert_eq!(report.nodes[0].last_seq, Some(22));
        assert!(report.findings.iter().all(|f| f.severity != Severity::Warning), "{report}");
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        write_run(dir.path(), &clock, small_cfg(), 5, 0).await;
        let path = segs(dir.path())[0].path.clone();
        // A crash mid-write: half a record after the shutdown checkpoint, no newline.
        let torn = b"{\"seq\":7,\"prev\":\"00ab";
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(torn).unwrap();
        drop(f);
        let before = verify(dir.path(), None, None).unwrap();
        assert!(before.ok() && before.findings.iter().any(|f| f.kind == FindingKind::TornTail), "{before}");

        write_run(dir.path(), &clock, small_cfg(), 5, 5).await;
        let l = lines(&path);
        let cut = format!("\"truncated_bytes\":{}", torn.len());
        assert!(l[7].starts_with("{\"seq\":7,") && l[7].contains("\"recovered\":{") && l[7].contains(&cut), "{}", l[7]);
        let report = verify(dir.path(), None, Some(&key(1).verifying_key())).unwrap();
        assert!(report.ok(), "{report}");
        assert!(report.findings.iter().any(|f| f.kind == FindingKind::UncleanShutdown && f.seq == Some(7)), "{report}");
        assert_eq!(report.nodes[0].records, 10);
    }

    #[tokio::test]
    async fn crash_without_shutdown_checkpoint_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        {
            // Never run the writer to its end: write through flush, then drop it all (as a kill would).
            let (log, task) = AuditLog::open_with_clock(dir.path(), "node-1", key(1), small_cfg(), clock.clock()).unwrap();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let h = tokio::spawn(task.run(async move {
                let _ = stop_rx.await;
            }));
            for i in 0..3 {
                log.record(rec(i, clock.now()));
            }
            log.flush().await.unwrap();
            // Simulate the kill by cutting the file after the flush (the shutdown checkpoint would follow).
            let path = segs(dir.path())[0].path.clone();
            let len = std::fs::metadata(&path).unwrap().len();
            stop_tx.send(()).unwrap();
            h.await.unwrap().unwrap();
            OpenOptions::new().write(true).open(&path).unwrap().set_len(len).unwrap();
        }
        write_run(dir.path(), &clock, small_cfg(), 1, 3).await;
        let l = lines(&segs(dir.path())[0].path);
        assert!(l[4].contains("\"recovered\":{") && l[4].contains("\"previous_seq\":3"), "{}", l[4]);
        let report = verify(dir.path(), None, None).unwrap();
        assert!(report.ok(), "{report}");
    }

    #[tokio::test]
    async fn rotation_by_size_and_day_and_checkpoints_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        let cfg = AuditConfig { segment_max_bytes: 8 * 1024, checkpoint_every: 7, ..small_cfg() };
        write_run(dir.path(), &clock, cfg.clone(), 40, 0).await;
        let n_size = segs(dir.path()).len();
        assert!(n_size >= 3, "{n_size} segments");
        clock.advance(chrono::Duration::days(1));
        write_run(dir.path(), &clock, cfg, 1, 40).await;
        let s = segs(dir.path());
        assert_eq!(s.len(), n_size + 1, "a new local day starts a new segment");
        for (i, seg) in s.iter().enumerate() {
            let l = lines(&seg.path);
            assert!(l[0].contains("\"anchor\":{"), "segment {} starts with its anchor", seg.no);
            assert_eq!(seg.no as usize, i + 1);
        }
        let text: String = s.iter().map(|s| std::fs::read_to_string(&s.path).unwrap()).collect();
        assert!(text.matches("\"reason\":\"count\"").count() >= 2, "{text}");
        assert!(text.matches("\"reason\":\"rotation\"").count() >= n_size, "{text}");
        let report = verify(dir.path(), Some("node-1"), Some(&key(1).verifying_key())).unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!(report.nodes[0].records, 41);
    }

    fn nos(dir: &Path) -> Vec<u32> {
        segs(dir).iter().map(|s| s.no).collect()
    }

    #[tokio::test]
    async fn retention_deletes_old_segments_and_what_remains_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let trusted = key(1).verifying_key();
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        let cfg = AuditConfig { retention_days: 5, ..small_cfg() };
        let day = chrono::Duration::days(1);
        write_run(d, &clock, cfg.clone(), 5, 0).await; // segment 1, day 0
        clock.advance(day * 10);
        write_run(d, &clock, cfg.clone(), 5, 5).await; // segment 2, day 10
        assert_eq!(nos(d), [1, 2], "segment 1 was still being written when it rotated");
        clock.advance(day * 10);
        write_run(d, &clock, cfg.clone(), 5, 10).await; // segment 3, day 20: segment 1 ended on day 10 < day 15
        assert_eq!(nos(d), [2, 3]);
        let text = std::fs::read_to_string(&segs(d)[0].path).unwrap();
        assert!(text.contains("\"retention\":{") && text.contains("\"deleted\":[1,1]"), "{text}");
        let r = verify(d, Some("node-1"), Some(&trusted)).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.nodes[0].records, 10);
        assert!(r.findings.iter().any(|f| f.kind == FindingKind::RetentionDeleted), "{r}");

        clock.advance(day);
        write_run(d, &clock, cfg.clone(), 1, 15).await; // segment 4, day 21: segment 2 ended on day 20, kept
        assert_eq!(nos(d), [2, 3, 4]);
        assert!(verify(d, None, Some(&trusted)).unwrap().ok());

        // Deleting the oldest remaining segment by hand is caught...
        std::fs::remove_file(&segs(d)[0].path).unwrap();
        let r = verify(d, None, Some(&trusted)).unwrap();
        assert_eq!(
            r.findings.iter().filter(|f| f.severity == Severity::Error).map(|f| f.kind).collect::<Vec<_>>(),
            [FindingKind::MissingSegment]
        );
        // ...and the next retention does not launder it: it records what was already missing.
        clock.advance(day * 10);
        write_run(d, &clock, cfg, 1, 16).await; // segment 5, day 31: deletes 3, notes 2 missing
        assert_eq!(nos(d), [4, 5]);
        let r = verify(d, None, Some(&trusted)).unwrap();
        let errors: Vec<_> = r.findings.iter().filter(|f| f.severity == Severity::Error).collect();
        assert_eq!(errors.len(), 1, "{r}");
        assert!(errors[0].kind == FindingKind::MissingSegment && errors[0].message.contains("already missing"), "{r}");
    }

    #[tokio::test]
    async fn a_new_day_rotates_even_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::start("2025-07-01T16:59:59Z"); // 23:59:59 in Hanoi
        let (log, task) = AuditLog::open_with_clock(dir.path(), "node-1", key(1), small_cfg(), clock.clock()).unwrap();
        let h = tokio::spawn(task.run(std::future::pending()));
        log.record(rec(1, clock.now()));
        log.flush().await.unwrap();
        clock.advance(chrono::Duration::seconds(2));
        for _ in 0..500 {
            if nos(dir.path()).len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(nos(dir.path()), [1, 2]);
        drop(log);
        h.await.unwrap().unwrap();
        assert!(verify(dir.path(), None, None).unwrap().ok());
    }

    #[tokio::test]
    async fn throughput_100k_records() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig { queue_capacity: 131_072, ..AuditConfig::default() };
        let (log, task) = AuditLog::open(dir.path(), "node-1", key(1), cfg).unwrap();
        let h = tokio::spawn(task.run(std::future::pending()));
        let now = Utc::now();
        for i in 0..100_000 {
            log.record(rec(i, now));
        }
        log.flush().await.unwrap();
        let st = log.stats();
        assert_eq!(st.accepted_total, 100_000);
        assert_eq!(st.dropped_total, 0);
        assert!(st.durable_seq >= 100_000, "{st:?}");
        drop(log); // every handle gone: the writer shuts down
        h.await.unwrap().unwrap();
        let report = verify(dir.path(), None, Some(&key(1).verifying_key())).unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!(report.nodes[0].records, 100_000);
    }

    #[tokio::test]
    async fn full_queue_drops_are_chained_as_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        let cfg = AuditConfig { queue_capacity: 4, ..small_cfg() };
        let (log, task) = AuditLog::open_with_clock(dir.path(), "node-1", key(1), cfg, clock.clock()).unwrap();
        // The writer is not running yet: the queue takes 4, the rest are dropped.
        for i in 0..10 {
            log.record(rec(i, clock.now()));
        }
        assert_eq!(log.stats().dropped_total, 6);
        let h = tokio::spawn(task.run(std::future::pending()));
        log.flush().await.unwrap();
        drop(log);
        h.await.unwrap().unwrap();
        let text = std::fs::read_to_string(&segs(dir.path())[0].path).unwrap();
        assert!(text.contains("\"gap\":{") && text.contains("\"dropped\":6,\"total_dropped\":6"), "{text}");
        let report = verify(dir.path(), None, None).unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!(report.nodes[0].dropped_records, 6);
        assert!(report.findings.iter().any(|f| f.kind == FindingKind::DroppedRecords), "{report}");
    }

    #[tokio::test]
    async fn flush_after_writer_stopped_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (log, task) = AuditLog::open(dir.path(), "node-1", key(1), small_cfg()).unwrap();
        task.run(async {}).await.unwrap();
        assert!(matches!(log.flush().await, Err(AuditError::Closed)));
        log.record(rec(1, Utc::now()));
        assert_eq!(log.stats().dropped_total, 1);
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bad = AuditConfig { segment_max_bytes: 10, ..AuditConfig::default() };
        let e = AuditLog::open(dir.path(), "node-1", key(1), bad).unwrap_err().to_string();
        assert!(e.contains("segment_max_bytes") && e.contains("lgsp.toml"), "{e}");
        assert!(AuditLog::open(dir.path(), "", key(1), AuditConfig::default()).is_err());
    }
}
