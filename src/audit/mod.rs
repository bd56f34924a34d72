//! The transaction audit log (G8) and daily reconciliation (G9): one append-only, hash-chained,
//! periodically signed log of every gateway transaction's metadata per node, its verification,
//! its search, and per-day counts that an operator compares with a provider's.
//!
//! Invariants: **metadata only** — no payload, header value, query string or credential ever
//! becomes a field (bodies appear only as their SHA-256); every line on disk is written by
//! `segment::encode_line` and its hash covers the exact bytes written; the chain never restarts
//! silently (a restart after a crash writes a `recovered` entry, dropped records a `gap` entry,
//! retention a `retention` entry and a signed `anchor`); the hot path (`AuditLog::record`)
//! never blocks and never does I/O. This module imports nothing internal.
//!
//! # Files
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | this design, [`AuditConfig`], [`AuditError`], re-exports |
//! | `record.rs` | [`AuditRecord`] and the bodies of the other entries (the JSON shapes) |
//! | `segment.rs` | the on-disk format: file names, line layout, hash, signed messages, readers |
//! | `log.rs` | [`AuditLog`] (the handle) and [`AuditWriterTask`] (the writer thread) |
//! | `verify.rs` | [`verify`] and its [`VerifyReport`] |
//! | `search.rs` | [`search`] and the time-bounded segment scan shared with reconciliation |
//! | `reconcile.rs` | [`daily_counts`], [`to_csv`], [`parse_csv`], [`compare`] |
//! | `rollup.rs` | [`node_day_rollup`]: one node's day as replicated traffic rows (the periodic report) |
//! | `key.rs` | the node's Ed25519 audit key on disk; public key text forms |
//!
//! # On disk
//!
//! A directory holds segment files `audit-<node>-<nnnnnnnn>.jsonl` (the node name with bytes
//! outside `[A-Za-z0-9._-]` written as `%XX`; numbers start at 1 and never repeat). Each line is
//!
//! ```text
//! {"seq":N,"prev":"<64 hex>","hash":"<64 hex>","<kind>":{...}}
//! ```
//!
//! with `hash = SHA-256("lgsp-audit-v1\0" ‖ prev (32 bytes) ‖ seq (u64 big-endian) ‖ body)` where
//! `body` is the exact bytes of the object `{"<kind>":{...}}` as written (the line from its
//! `"<kind>"` member on, with the leading `,` read as `{`). Hashing the bytes on disk rather than a
//! re-serialisation means new record fields never invalidate old lines. The first entry of a
//! node's first segment has `seq` 0 and `prev` = 64 zeros. Kinds:
//!
//! - `rec`: one transaction ([`AuditRecord`]).
//! - `anchor`: the first entry of every segment; signed over (node, segment, oldest segment
//!   kept, seq, prev, time). It lets what remains after retention be verified from its start.
//! - `checkpoint`: signed over (node, seq, head = prev, rec count since the previous checkpoint
//!   or `recovered` entry, time), carrying the public key. Written every
//!   [`AuditConfig::checkpoint_every`] records, every [`AuditConfig::checkpoint_interval`] when
//!   anything was written, before every rotation, on [`AuditLog::checkpoint`] and at shutdown
//!   (reason `shutdown`: the only way the next start knows the previous run ended cleanly).
//! - `gap`: N records were not logged (queue full, or the disk failing); written by the writer as
//!   soon as it notices, so the chain itself says that records are missing and roughly when.
//! - `recovered`: the previous run did not end with a shutdown checkpoint (crash, kill, power
//!   loss); says how many torn bytes were cut from the tail.
//! - `retention`: segments a..b are about to be deleted because they are older than
//!   [`AuditConfig::retention_days`] (written and fsynced before deleting), or were already
//!   missing when retention ran (an error that `verify` reports for as long as the entry exists).
//!
//! # Writing and durability
//!
//! [`AuditLog::record`] is a `try_send` into a bounded queue ([`AuditConfig::queue_capacity`]);
//! if the queue is full the record is counted as dropped ([`AuditStats::dropped_total`]) and the
//! writer later appends a `gap` entry with the count. Blocking the gateway on audit would turn a
//! slow disk into an outage; losing records silently would violate G8; a counted, chained gap is
//! the compromise. The writer runs on its own OS thread (fsync never stalls the async runtime):
//! it drains the queue in batches, `write`s each batch at once (a process crash loses only what
//! was still queued), and `fdatasync`s at least every [`AuditConfig::fsync_interval`] (a power
//! loss loses at most that interval, typically 100 ms). [`AuditLog::flush`] returns once
//! everything recorded before it is fsynced. Shutdown (the future given to
//! [`AuditWriterTask::run`], or every [`AuditLog`] handle dropped) drains the queue, writes a
//! `gap` if needed and a signed `shutdown` checkpoint, and fsyncs. Wire it to complete after the
//! gateway has drained: records handed over after that are lost (counted only in the stats).
//!
//! If a write or fsync fails (disk full), the writer truncates the partial write, keeps the
//! entries it had already chained, counts new records as dropped, answers `flush` with an error,
//! and retries every second; once it succeeds a `gap` entry records how many were dropped.
//!
//! On start, [`AuditLog::open`] reads the newest segment: a torn last line (no newline) is cut
//! off; if the last entry is not a `shutdown` checkpoint a `recovered` entry is appended. The
//! chain then continues with the next seq.
//!
//! Segments rotate when they reach [`AuditConfig::segment_max_bytes`] and when the local date
//! (Asia/Ho_Chi_Minh, UTC+7) changes — at the latest on the next idle tick, so there is at least
//! one segment per day and retention runs at least daily. Retention runs at rotation: a segment
//! is deleted when the *next* segment's anchor is older than `retention_days` (so every line in
//! it is), oldest first and never the current one.
//!
//! # Verification bounds ([`verify`])
//!
//! Detected as errors, each with file, line and seq: any edited byte of any line; deleted,
//! duplicated or reordered lines; a deleted segment in the middle or at the old end (beyond what
//! retention recorded); a renamed or spliced segment; an invalid signature; a key other than the
//! trusted one (when one is given). Reported as warnings: the **unsigned tail** (entries after the
//! last checkpoint — normal while the node is running or after a crash, but their content is only
//! as trustworthy as the file system, since an intruder could rewrite the tail and recompute its
//! hashes), a torn last line, dropped records, unclean shutdowns, a change of signing key.
//! Not detectable from the files alone: removal of the newest entries up to a checkpoint, or of
//! whole newest segments — compare [`VerifyReport`]'s `last_seq` with the running node's
//! [`AuditStats::last_seq`], or with a previous report kept elsewhere. Without a trusted key,
//! signatures only prove consistency; an intruder holding the files could re-sign with their own
//! key, so pass the node's public key (shown in every checkpoint, [`encode_public_key`]).
//!
//! # Personal data
//!
//! Only the path of the request URL is kept, never the query. Path segments can still carry
//! identifiers (e.g. a citizen ID in `/dancu/v1/congdan/0010…`); that is deliberate for
//! accountability ("who looked up whom") and access to the log is restricted to the `auditor`
//! and `operator` roles. Strings are clamped (path 1024 bytes, others 256) so lines stay small.
//!
//! # Reconciliation (G9)
//!
//! [`daily_counts`] counts records per (date, consumer agency, consumer system, service, version,
//! outcome) for one local date (UTC+7) across every node whose segments are in the directory;
//! records dropped that day appear as one row with outcome `AUDIT_GAP` and empty keys so a count
//! known to be incomplete never looks exact. [`to_csv`] / [`parse_csv`] use RFC 4180 with the
//! header `date,consumer_agency,consumer_system,service,version,outcome,count` (a `date` column
//! makes a file self-describing, so comparing the wrong day shows up as differences).
//! [`compare`] lists rows missing on either side and count mismatches.
//!
//! `verify`, `search` and `daily_counts` do blocking file I/O: call them from
//! `tokio::task::spawn_blocking` in async code.

mod key;
mod log;
mod reconcile;
mod record;
mod rollup;
mod search;
mod segment;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use key::{encode_public_key, load_or_create_signing_key, parse_public_key};
pub use log::{AuditLog, AuditStats, AuditWriterTask};
pub use reconcile::{
    compare, daily_counts, differences_to_csv, parse_csv, to_csv, write_csv_row, CountRow, Difference, DifferenceKind, GAP_OUTCOME,
};
pub use record::{digest_hex, AuditRecord};
pub use rollup::{node_day_rollup, node_first_day};
pub use search::{search, SearchFilter};
pub use verify::{verify, Finding, FindingKind, NodeSummary, Severity, VerifyReport};

/// How the writer batches, signs, rotates and forgets. Built by `app` from `config::AuditConfig`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Upper bound on the time a written record waits for `fdatasync` (what a power loss can lose).
    pub fsync_interval: Duration,
    /// A signed checkpoint after this many records (bounds the unsigned tail by count).
    pub checkpoint_every: u64,
    /// A signed checkpoint at least this often while anything is being written (bounds it by time).
    pub checkpoint_interval: Duration,
    /// A segment is closed once it reaches this size (segments also rotate every local day).
    pub segment_max_bytes: u64,
    /// Segments older than this many days are deleted; 0 keeps everything.
    pub retention_days: u32,
    /// Records waiting for the writer; beyond this `record` drops and counts (see the module doc).
    pub queue_capacity: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            fsync_interval: Duration::from_millis(100),
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            segment_max_bytes: 64 * 1024 * 1024,
            retention_days: 365,
            queue_capacity: 65_536,
        }
    }
}

/// Everything that can go wrong at this module's boundary, worded for the operator who reads it.
#[derive(Debug, Error)]
pub enum AuditError {
    #[error("cannot {action} {path}: {source}; check that the audit directory exists, has free space and belongs to the lgsp user")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("invalid audit setting: {0}; fix the [audit] section of lgsp.toml")]
    Config(String),
    #[error("the audit writer has stopped, so transactions are no longer audited; see the journal for its last error and restart lgsp")]
    Closed,
    #[error(
        "the audit writer cannot write: {message}; new records are dropped and counted (a gap entry will say how many) until the disk recovers"
    )]
    WriterFailed { message: String },
    #[error("audit key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "reconciliation CSV line {line}: {reason}; expected RFC 4180 with the header date,consumer_agency,consumer_system,service,version,outcome,count"
    )]
    Csv { line: usize, reason: String },
    #[error("cannot encode an audit entry: {0} (a bug; please report it)")]
    Encode(#[from] serde_json::Error),
}

impl AuditError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AuditError {
        let path = path.into();
        move |source| AuditError::Io { action, path, source }
    }
}
