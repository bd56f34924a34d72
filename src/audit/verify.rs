//! `lgsp audit verify`: reads every segment of one node (or of every node in a directory),
//! recomputes every hash, follows every link, checks every anchor and checkpoint signature and
//! says exactly where (file, line, seq) and what is wrong.
//!
//! Invariants: read-only; one finding per cause where the cause can be told apart (an edited
//! body, edited chain fields, a deleted line, a reordered line, a missing segment); errors mean
//! the log was damaged or tampered with, warnings are facts an auditor should see (unsigned tail,
//! torn last line, dropped records, unclean shutdowns, key change) — see the bounds in `mod.rs`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::record::Body;
use super::segment::{self, entry_hash, list_segments, parse_line, LineReader, SegmentFile};
use super::AuditError;

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub nodes: Vec<NodeSummary>,
    /// In the order found: node, then segment, then line.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    /// No errors (warnings and notes allowed).
    pub fn ok(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    pub fn count(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == severity).count()
    }
}

/// One node's chain as read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub node: String,
    pub segments: u32,
    pub first_segment: u32,
    pub last_segment: u32,
    pub first_seq: Option<u64>,
    /// Compare with the running node's `AuditStats::last_seq`: the files cannot show that their newest entries were removed.
    pub last_seq: Option<u64>,
    pub entries: u64,
    pub records: u64,
    pub checkpoints: u64,
    pub last_checkpoint_seq: Option<u64>,
    pub last_checkpoint_at: Option<DateTime<Utc>>,
    pub first_record_at: Option<DateTime<Utc>>,
    pub last_record_at: Option<DateTime<Utc>>,
    /// Records the writer could not log (sum of `gap` entries).
    pub dropped_records: u64,
    /// Base64 public keys that signed anchors and checkpoints, in order of first use.
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

/// Stable codes for findings (tools match on these, people read the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A line that is not an audit entry (bytes changed, or lines merged or cut).
    Unparseable,
    /// The entry's content or its hash field was edited.
    HashMismatch,
    /// The entry's seq or prev field was edited (its body is intact).
    ChainFieldsEdited,
    /// `prev` is not the hash of the entry before: that entry was replaced, or files were spliced.
    BrokenLink,
    /// Seq numbers jump forward: entries were deleted.
    MissingEntries,
    /// Seq numbers go backwards: lines reordered, duplicated or copied in.
    OutOfOrder,
    /// A segment file is missing (deleted outside retention).
    MissingSegment,
    /// A segment does not start with its own anchor, or an anchor is out of place.
    BadAnchor,
    /// A checkpoint's head or count does not match the chain.
    BadCheckpoint,
    /// A signature does not verify.
    BadSignature,
    /// Signed by a key other than the trusted one.
    UntrustedKey,
    /// The signing key changed.
    KeyChanged,
    /// An entry names another node.
    WrongNode,
    /// A segment is empty.
    EmptySegment,
    /// Entries after the last checkpoint are not covered by a signature yet.
    UnsignedTail,
    /// The newest segment ends in a partial line (a crash mid-write; cut off at the next start).
    TornTail,
    /// The writer could not log some records (a `gap` entry).
    DroppedRecords,
    /// A run ended without a shutdown checkpoint (a `recovered` entry).
    UncleanShutdown,
    /// Old segments were deleted by retention.
    RetentionDeleted,
    /// Segments retention should have deleted are still there.
    RetentionLeftover,
    /// No segments for the node asked for.
    NoSegments,
    /// A file named like a segment that is not one.
    UnknownFile,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Unparseable => "unparseable",
            FindingKind::HashMismatch => "hash_mismatch",
            FindingKind::ChainFieldsEdited => "chain_fields_edited",
            FindingKind::BrokenLink => "broken_link",
            FindingKind::MissingEntries => "missing_entries",
            FindingKind::OutOfOrder => "out_of_order",
            FindingKind::MissingSegment => "missing_segment",
            FindingKind::BadAnchor => "bad_anchor",
            FindingKind::BadCheckpoint => "bad_checkpoint",
            FindingKind::BadSignature => "bad_signature",
            FindingKind::UntrustedKey => "untrusted_key",
            FindingKind::KeyChanged => "key_changed",
            FindingKind::WrongNode => "wrong_node",
            FindingKind::EmptySegment => "empty_segment",
            FindingKind::UnsignedTail => "unsigned_tail",
            FindingKind::TornTail => "torn_tail",
            FindingKind::DroppedRecords => "dropped_records",
            FindingKind::UncleanShutdown => "unclean_shutdown",
            FindingKind::RetentionDeleted => "retention_deleted",
            FindingKind::RetentionLeftover => "retention_leftover",
            FindingKind::NoSegments => "no_segments",
            FindingKind::UnknownFile => "unknown_file",
        }
    }
}

/// One problem or fact, and exactly where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: FindingKind,
    pub node: String,
    /// Segment file name (not the full path).
    pub file: String,
    /// 1-based line; 0 when the finding is about the file or the node as a whole.
    pub line: u64,
    /// The seq this position should hold, when known.
    pub seq: Option<u64>,
    pub message: String,
}

/// Verifies the chains in `dir`: of `node` only, or of every node found. With `trusted_key`,
/// every anchor and checkpoint must be signed by it; without, any valid signature is accepted
/// and the keys are listed in the report. I/O errors are errors; what is found is in the report.
pub fn verify(dir: &Path, node: Option<&str>, trusted_key: Option<&VerifyingKey>) -> Result<VerifyReport, AuditError> {
    let (segs, odd) = list_segments(dir)?;
    let mut report = VerifyReport::default();
    for name in odd {
        report.findings.push(Finding {
            severity: Severity::Warning,
            kind: FindingKind::UnknownFile,
            node: String::new(),
            file: name,
            line: 0,
            seq: None,
            message: "named like an audit segment but not audit-<node>-<number>.jsonl; ignored".into(),
        });
    }
    let mut nodes: Vec<&str> = segs.iter().map(|s| s.node.as_str()).collect();
    nodes.dedup();
    if let Some(n) = node {
        nodes.retain(|x| *x == n);
        if nodes.is_empty() {
            report.findings.push(Finding {
                severity: Severity::Error,
                kind: FindingKind::NoSegments,
                node: n.to_owned(),
                file: String::new(),
                line: 0,
                seq: None,
                message: format!("no audit segments for node {n} in {}", dir.display()),
            });
        }
    }
    let trusted = trusted_key.map(|k| STANDARD.encode(k.as_bytes()));
    for n in nodes {
        let mine: Vec<&SegmentFile> = segs.iter().filter(|s| s.node == n).collect();
        let mut c = NodeCheck::new(n, trusted.clone(), &mut report.findings);
        for (i, seg) in mine.iter().enumerate() {
            c.segment(seg, i + 1 == mine.len())?;
        }
        c.finish(&mine);
        report.nodes.push(c.summary);
    }
    Ok(report)
}

/// The chain state while one node's segments are read in order.
struct NodeCheck<'a> {
    node: String,
    trusted: Option<String>,
    findings: &'a mut Vec<Finding>,
    summary: NodeSummary,
    /// The seq the next line should have; `None` at the start and after a missing segment.
    expected_seq: Option<u64>,
    /// Hashes the next `prev` may equal (the stored one and, if the line was edited, the recomputed one).
    link: Vec<[u8; 32]>,
    /// `rec` entries since the last checkpoint or `recovered` entry, when known.
    counter: Option<u64>,
    /// First seq not covered by a checkpoint.
    unsigned_from: Option<u64>,
    unsigned_entries: u64,
    /// The oldest segment that should exist, from the newest anchor and retention entries.
    expected_oldest: Option<u32>,
    prev_segment: Option<u32>,
    keys: BTreeSet<String>,
    last_key: Option<String>,
}

/// Where the line being checked is.
struct At<'s> {
    file: &'s str,
    line: u64,
    seq: Option<u64>,
}

impl<'a> NodeCheck<'a> {
    fn new(node: &str, trusted: Option<String>, findings: &'a mut Vec<Finding>) -> Self {
        NodeCheck {
            node: node.to_owned(),
            trusted,
            findings,
            summary: NodeSummary { node: node.to_owned(), ..NodeSummary::default() },
            expected_seq: None,
            link: Vec::new(),
            counter: None,
            unsigned_from: None,
            unsigned_entries: 0,
            expected_oldest: None,
            prev_segment: None,
            keys: BTreeSet::new(),
            last_key: None,
        }
    }

    fn push(&mut self, severity: Severity, kind: FindingKind, at: &At<'_>, message: String) {
        self.findings.push(Finding {
            severity,
            kind,
            node: self.node.clone(),
            file: at.file.to_owned(),
            line: at.line,
            seq: at.seq,
            message,
        });
    }

    fn segment(&mut self, seg: &SegmentFile, newest: bool) -> Result<(), AuditError> {
        let file = seg.file_name();
        if self.summary.segments == 0 {
            self.summary.first_segment = seg.no;
        }
        self.summary.segments += 1;
        self.summary.last_segment = seg.no;
        if let Some(p) = self.prev_segment {
            if seg.no != p + 1 {
                let at = At { file: &file, line: 0, seq: self.expected_seq };
                let msg = format!(
                    "segment{} {} missing before this one: deleted outside retention; the chain restarts at this segment's anchor",
                    if seg.no == p + 2 { "" } else { "s" },
                    range(p + 1, seg.no - 1)
                );
                self.push(Severity::Error, FindingKind::MissingSegment, &at, msg);
                self.expected_seq = None;
                self.link.clear();
                self.counter = None;
            }
        }
        self.prev_segment = Some(seg.no);

        let mut r = LineReader::open(&seg.path)?;
        let mut buf = Vec::new();
        let mut lines = 0u64;
        while let Some(info) = r.next_line(&mut buf).map_err(AuditError::io("read", &seg.path))? {
            lines += 1;
            let at = At { file: &file, line: info.no, seq: self.expected_seq };
            if !info.terminated {
                let n = buf.len();
                if newest {
                    let msg = format!(
                        "the last line is incomplete ({n} bytes, no newline): a crash mid-write; lgsp cuts it off at its next start"
                    );
                    self.push(Severity::Warning, FindingKind::TornTail, &at, msg);
                } else {
                    let msg = format!("incomplete last line ({n} bytes) in a segment that is not the newest: the segment was cut short");
                    self.push(Severity::Error, FindingKind::Unparseable, &at, msg);
                }
                break;
            }
            if info.too_long {
                self.push(
                    Severity::Error,
                    FindingKind::Unparseable,
                    &at,
                    format!("line longer than {} bytes: not an audit entry", segment::MAX_LINE),
                );
                self.lost_line();
                continue;
            }
            let raw = match parse_line(&mut buf) {
                Ok(raw) => raw,
                Err(why) => {
                    self.push(Severity::Error, FindingKind::Unparseable, &at, format!("not an audit entry: {why}"));
                    self.lost_line();
                    continue;
                }
            };
            self.entry(seg, &at, info.no == 1, &raw);
        }
        if lines == 0 {
            let at = At { file: &file, line: 0, seq: self.expected_seq };
            let (sev, msg) = if newest {
                (Severity::Warning, "the newest segment is empty: created just before a crash; lgsp reuses it at its next start")
            } else {
                (Severity::Error, "the segment is empty: its content was removed")
            };
            self.push(sev, FindingKind::EmptySegment, &at, msg.into());
        }
        Ok(())
    }

    /// A line that could not be read: assume it held one entry.
    fn lost_line(&mut self) {
        self.expected_seq = self.expected_seq.map(|e| e + 1);
        self.link.clear();
        self.counter = None;
    }

    fn entry(&mut self, seg: &SegmentFile, at: &At<'_>, first_line: bool, raw: &segment::RawEntry<'_>) {
        let computed = raw.computed_hash();
        let mut seq = raw.seq;
        let mut chain_checked = false;
        let mut out_of_order = false;
        if computed != raw.hash {
            // Were only the chain fields edited? Then the body hashes correctly at the expected place.
            let want_seq = self.expected_seq.unwrap_or(raw.seq);
            let intact_at = self.link.iter().chain([&raw.prev]).any(|p| entry_hash(p, want_seq, raw.body) == raw.hash);
            if intact_at && (want_seq != raw.seq || (!self.link.is_empty() && !self.link.contains(&raw.prev))) {
                let msg = format!(
                    "the seq or prev field of this entry was edited (found seq {}, prev {}…); its content is intact",
                    raw.seq,
                    &hex::encode(raw.prev)[..12]
                );
                self.push(Severity::Error, FindingKind::ChainFieldsEdited, at, msg);
                seq = want_seq;
                chain_checked = true;
            } else {
                let msg = "the entry does not match its hash: its content or its hash field was edited after it was written".into();
                self.push(Severity::Error, FindingKind::HashMismatch, at, msg);
            }
        }
        if !chain_checked {
            if let Some(e) = self.expected_seq {
                if raw.seq > e {
                    let msg = format!(
                        "expected seq {e}, found {}: {} entr{} missing here (lines deleted, or a segment cut short)",
                        raw.seq,
                        raw.seq - e,
                        if raw.seq - e == 1 { "y is" } else { "ies are" }
                    );
                    self.push(Severity::Error, FindingKind::MissingEntries, at, msg);
                    self.counter = None;
                    chain_checked = true;
                } else if raw.seq < e {
                    let msg = format!("seq {} comes after seq {}: lines were reordered, duplicated or copied in", raw.seq, e - 1);
                    self.push(Severity::Error, FindingKind::OutOfOrder, at, msg);
                    self.counter = None;
                    chain_checked = true;
                    out_of_order = true;
                }
            }
        }
        if !chain_checked && !self.link.is_empty() && !self.link.contains(&raw.prev) {
            let msg = "prev is not the hash of the entry before: that entry was replaced, or this file was spliced from another".into();
            self.push(Severity::Error, FindingKind::BrokenLink, at, msg);
            self.counter = None;
        }

        let body = raw.parse_body();
        let is_anchor = matches!(body, Ok(Body::Anchor(_)));
        if first_line && !is_anchor {
            let msg = "the segment does not start with its anchor: its beginning was removed, or it was assembled from other lines".into();
            self.push(Severity::Error, FindingKind::BadAnchor, at, msg);
        }
        match body {
            Err(e) => {
                self.push(Severity::Error, FindingKind::Unparseable, at, format!("the entry body cannot be read: {e}"));
                self.counter = None;
            }
            Ok(body) => self.body(seg, at, first_line, seq, raw, body),
        }

        self.summary.entries += 1;
        if out_of_order {
            // An extra line: the chain goes on from the entry before it.
            return;
        }
        if self.summary.first_seq.is_none() {
            self.summary.first_seq = Some(seq);
        }
        self.summary.last_seq = Some(seq);
        self.expected_seq = Some(seq + 1);
        self.link.clear();
        self.link.push(raw.hash);
        if computed != raw.hash {
            self.link.push(computed);
        }
    }

    fn body(&mut self, seg: &SegmentFile, at: &At<'_>, first_line: bool, seq: u64, raw: &segment::RawEntry<'_>, body: Body) {
        let mut signed = false;
        match body {
            Body::Rec(r) => {
                self.summary.records += 1;
                self.counter = self.counter.map(|c| c + 1);
                if r.node != self.node {
                    self.push(
                        Severity::Error,
                        FindingKind::WrongNode,
                        at,
                        format!("a record of node {:?} in node {}'s chain", r.node, self.node),
                    );
                }
                self.summary.first_record_at = Some(self.summary.first_record_at.map_or(r.at, |t| t.min(r.at)));
                self.summary.last_record_at = Some(self.summary.last_record_at.map_or(r.at, |t| t.max(r.at)));
            }
            Body::Anchor(a) => {
                if !first_line {
                    self.push(
                        Severity::Error,
                        FindingKind::BadAnchor,
                        at,
                        "an anchor in the middle of a segment: segments were joined".into(),
                    );
                }
                if a.segment != seg.no {
                    let msg = format!("the anchor says segment {}, the file name says {}: the file was renamed", a.segment, seg.no);
                    self.push(Severity::Error, FindingKind::BadAnchor, at, msg);
                }
                if a.node != self.node {
                    self.push(Severity::Error, FindingKind::WrongNode, at, format!("the anchor names node {:?}", a.node));
                }
                let msg = segment::anchor_message(&a.node, a.segment, a.oldest, seq, &raw.prev, a.at);
                self.signature(at, "anchor", &a.key, &a.sig, &msg);
                self.expected_oldest = Some(a.oldest);
                // A segment starts right after a checkpoint (or is followed by a `recovered` entry).
                self.counter = Some(0);
                signed = true;
            }
            Body::Checkpoint(c) => {
                signed = true;
                if c.head != hex::encode(raw.prev) {
                    self.push(Severity::Error, FindingKind::BadCheckpoint, at, "the checkpoint's head is not its prev".into());
                }
                let msg = segment::checkpoint_message(&self.node, seq, &raw.prev, c.count, c.at);
                self.signature(at, "checkpoint", &c.key, &c.sig, &msg);
                if let Some(n) = self.counter {
                    if n != c.count {
                        let msg = format!("the checkpoint counts {} records since the previous one, the chain holds {n}", c.count);
                        self.push(Severity::Error, FindingKind::BadCheckpoint, at, msg);
                    }
                }
                self.counter = Some(0);
                self.summary.checkpoints += 1;
                self.summary.last_checkpoint_seq = Some(seq);
                self.summary.last_checkpoint_at = Some(c.at);
            }
            Body::Gap(g) => {
                self.summary.dropped_records += g.dropped;
                let msg = format!("{} records were not logged around {} (queue full or disk failing)", g.dropped, g.at);
                self.push(Severity::Warning, FindingKind::DroppedRecords, at, msg);
            }
            Body::Recovered(r) => {
                self.counter = Some(0);
                let msg = format!(
                    "the run before {} ended without a shutdown checkpoint (crash, kill or power loss); {} torn bytes were cut off",
                    r.at, r.truncated_bytes
                );
                self.push(Severity::Warning, FindingKind::UncleanShutdown, at, msg);
            }
            Body::Retention(r) => {
                for &(a, b) in &r.missing {
                    let msg = format!(
                        "when retention ran at {}, segment{} {} {} already missing: deleted outside lgsp",
                        r.at,
                        if a == b { "" } else { "s" },
                        range(a, b),
                        if a == b { "was" } else { "were" }
                    );
                    self.push(Severity::Error, FindingKind::MissingSegment, at, msg);
                }
                self.expected_oldest = Some(self.expected_oldest.unwrap_or(0).max(r.oldest_after()));
            }
        }
        if signed {
            self.unsigned_from = None;
            self.unsigned_entries = 0;
        } else {
            self.unsigned_from.get_or_insert(seq);
            self.unsigned_entries += 1;
        }
    }

    fn signature(&mut self, at: &At<'_>, what: &str, key_b64: &str, sig_b64: &str, msg: &[u8]) {
        if self.keys.insert(key_b64.to_owned()) {
            self.summary.keys.push(key_b64.to_owned());
        }
        if let Some(t) = &self.trusted {
            if t != key_b64 {
                self.push(
                    Severity::Error,
                    FindingKind::UntrustedKey,
                    at,
                    format!("the {what} is signed by key {key_b64}, not the trusted key {t}"),
                );
            }
        } else if let Some(last) = &self.last_key {
            if last != key_b64 {
                let m = format!("the signing key changed from {last} to {key_b64}: make sure the new key is this node's");
                self.push(Severity::Warning, FindingKind::KeyChanged, at, m);
            }
        }
        self.last_key = Some(key_b64.to_owned());
        let key = STANDARD.decode(key_b64).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).and_then(|b| VerifyingKey::from_bytes(&b).ok());
        let sig = STANDARD.decode(sig_b64).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()).map(|b| Signature::from_bytes(&b));
        let valid = match (key, sig) {
            (Some(k), Some(s)) => k.verify_strict(msg, &s).is_ok(),
            _ => false,
        };
        if !valid {
            let m = format!("the {what}'s signature does not verify: the entries it covers, or the {what} itself, were changed");
            self.push(Severity::Error, FindingKind::BadSignature, at, m);
        }
    }

    fn finish(&mut self, segs: &[&SegmentFile]) {
        let Some(first) = segs.first() else { return };
        let file = first.file_name();
        let at = At { file: &file, line: 0, seq: None };
        match self.expected_oldest {
            Some(o) if first.no > o => {
                let msg = format!(
                    "segment{} {} missing at the old end: retention only deleted segments before {o}; they were deleted outside lgsp",
                    if first.no - o == 1 { " is" } else { "s are" },
                    range(o, first.no - 1)
                );
                self.push(Severity::Error, FindingKind::MissingSegment, &at, msg);
            }
            Some(o) if first.no < o => {
                let msg = format!("segments {} should have been deleted by retention and are still here", range(first.no, o - 1));
                self.push(Severity::Warning, FindingKind::RetentionLeftover, &at, msg);
            }
            None if first.no > 1 => {
                let msg = format!("segments {} are missing and no retention entry accounts for them", range(1, first.no - 1));
                self.push(Severity::Error, FindingKind::MissingSegment, &at, msg);
            }
            _ if first.no > 1 => {
                self.push(
                    Severity::Note,
                    FindingKind::RetentionDeleted,
                    &at,
                    format!("segments {} were deleted by retention", range(1, first.no - 1)),
                );
            }
            _ => {}
        }
        if let (Some(from), Some(last)) = (self.unsigned_from, self.summary.last_seq) {
            let file = segs.last().map(|s| s.file_name()).unwrap_or_default();
            let at = At { file: &file, line: 0, seq: Some(from) };
            let msg = format!(
                "{} entr{} (seq {}) after the last checkpoint {} not covered by a signature yet: normal while lgsp runs or after a crash; \
                 until the next checkpoint they are only as trustworthy as the file system",
                self.unsigned_entries,
                if self.unsigned_entries == 1 { "y" } else { "ies" },
                range_u64(from, last),
                if self.unsigned_entries == 1 { "is" } else { "are" }
            );
            self.push(Severity::Warning, FindingKind::UnsignedTail, &at, msg);
        }
    }
}

fn range(a: u32, b: u32) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}..{b}")
    }
}

fn range_u64(a: u64, b: u64) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}..{b}")
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Note => "NOTE",
        })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<7} {}", self.severity, if self.file.is_empty() { &self.node } else { &self.file })?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(s) = self.seq {
            write!(f, " seq {s}")?;
        }
        write!(f, " [{}] {}", self.kind.as_str(), self.message)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.nodes {
            write!(
                f,
                "node {}: {} segment(s) {}..{}, {} entries, {} records",
                n.node, n.segments, n.first_segment, n.last_segment, n.entries, n.records
            )?;
            if let (Some(a), Some(b)) = (n.first_seq, n.last_seq) {
                write!(f, ", seq {a}..{b}")?;
            }
            write!(f, ", {} checkpoints", n.checkpoints)?;
            if let (Some(s), Some(t)) = (n.last_checkpoint_seq, n.last_checkpoint_at) {
                write!(f, " (last at seq {s}, {t})")?;
            }
            if n.dropped_records > 0 {
                write!(f, ", {} dropped records", n.dropped_records)?;
            }
            writeln!(f, "; key(s): {}", n.keys.join(", "))?;
        }
        for x in &self.findings {
            writeln!(f, "{x}")?;
        }
        let (e, w) = (self.count(Severity::Error), self.count(Severity::Warning));
        write!(f, "{}: {e} error(s), {w} warning(s)", if self.ok() { "OK" } else { "FAILED" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::log::tests::{key, lines, segs, small_cfg, write_run, TestClock};
    use crate::audit::record::Checkpoint;
    use crate::audit::segment::encode_line;
    use crate::audit::AuditConfig;
    use ed25519_dalek::Signer;

    fn first_error(r: &VerifyReport) -> &Finding {
        r.findings.iter().find(|f| f.severity == Severity::Error).unwrap_or_else(|| panic!("no error in {r}"))
    }

    async fn sample(dir: &Path) -> Vec<SegmentFile> {
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        write_run(dir, &clock, small_cfg(), 10, 0).await;
        segs(dir)
    }

    #[tokio::test]
    async fn every_edited_byte_of_a_record_is_found_at_its_line_and_seq() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample(dir.path()).await;
        let path = &s[0].path;
        let original = std::fs::read(path).unwrap();
        let text = String::from_utf8(original.clone()).unwrap();
        // Line 6 holds seq 5 (line 1 is the anchor, seq 0).
        let start: usize = text.lines().take(5).map(|l| l.len() + 1).sum();
        let len = text.lines().nth(5).unwrap().len();
        assert!(text[start..].starts_with("{\"seq\":5,"));
        for i in start..start + len {
            let mut edited = original.clone();
            edited[i] ^= 0x01;
            if edited[i] == b'\n' {
                continue;
            }
            std::fs::write(path, &edited).unwrap();
            let r = verify(dir.path(), Some("node-1"), None).unwrap();
            let e = first_error(&r);
            assert_eq!((e.line, e.seq), (6, Some(5)), "byte {} ({:?}): {r}", i - start, char::from(original[i]));
        }
        std::fs::write(path, &original).unwrap();
        assert!(verify(dir.path(), None, None).unwrap().ok());
    }

    #[tokio::test]
    async fn a_deleted_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample(dir.path()).await;
        let mut l = lines(&s[0].path);
        l.remove(4); // seq 4
        std::fs::write(&s[0].path, l.join("\n") + "\n").unwrap();
        let r = verify(dir.path(), None, None).unwrap();
        let e = first_error(&r);
        assert_eq!((e.kind, e.line, e.seq), (FindingKind::MissingEntries, 5, Some(4)), "{r}");
        assert_eq!(r.count(Severity::Error), 1, "{r}");
    }

    #[tokio::test]
    async fn reordered_lines_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample(dir.path()).await;
        let mut l = lines(&s[0].path);
        l.swap(3, 4);
        std::fs::write(&s[0].path, l.join("\n") + "\n").unwrap();
        let r = verify(dir.path(), None, None).unwrap();
        assert!(!r.ok());
        let e = first_error(&r);
        assert_eq!((e.line, e.seq), (4, Some(3)), "{r}");
        assert!(r.findings.iter().any(|f| f.kind == FindingKind::OutOfOrder && f.line == 5), "{r}");
        assert_eq!(r.count(Severity::Error), 2, "one finding per moved line: {r}");
    }

    #[tokio::test]
    async fn a_deleted_middle_segment_is_found_even_when_the_rest_are_renumbered() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        let cfg = AuditConfig { segment_max_bytes: 4096, ..small_cfg() };
        write_run(dir.path(), &clock, cfg, 30, 0).await;
        let s = segs(dir.path());
        assert!(s.len() >= 4, "{}", s.len());
        assert!(verify(dir.path(), None, None).unwrap().ok());

        std::fs::remove_file(&s[1].path).unwrap();
        let r = verify(dir.path(), None, None).unwrap();
        let e = first_error(&r);
        assert_eq!((e.kind, e.file.as_str(), e.line), (FindingKind::MissingSegment, s[2].file_name().as_str(), 0), "{r}");

        // Close the numbering gap by renaming the newer segments: the anchors and links tell.
        for w in s[1..].windows(2) {
            std::fs::rename(&w[1].path, &w[0].path).unwrap();
        }
        let r = verify(dir.path(), None, None).unwrap();
        assert!(!r.ok());
        let e = first_error(&r);
        assert_eq!((e.kind, e.file.as_str(), e.line), (FindingKind::MissingEntries, s[1].file_name().as_str(), 1), "{r}");
        assert!(r.findings.iter().any(|f| f.kind == FindingKind::BadAnchor && f.message.contains("renamed")), "{r}");
    }

    #[tokio::test]
    async fn the_oldest_segment_deleted_outside_retention_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        let cfg = AuditConfig { segment_max_bytes: 4096, ..small_cfg() };
        write_run(dir.path(), &clock, cfg, 20, 0).await;
        let s = segs(dir.path());
        std::fs::remove_file(&s[0].path).unwrap();
        let r = verify(dir.path(), None, None).unwrap();
        assert_eq!(first_error(&r).kind, FindingKind::MissingSegment, "{r}");
    }

    /// Rewrites a segment entry by entry, re-chaining every hash (what an intruder with the
    /// files, but without the key, can do).
    fn rechain(path: &Path, mut f: impl FnMut(u64, Body) -> Body) {
        let mut out = Vec::new();
        let mut prev: Option<[u8; 32]> = None;
        for l in lines(path) {
            let mut b = l.into_bytes();
            let raw = parse_line(&mut b).unwrap();
            let p = prev.unwrap_or(raw.prev);
            let body = match raw.parse_body().unwrap() {
                // A careful intruder also fixes up the heads.
                Body::Checkpoint(c) => Body::Checkpoint(Checkpoint { head: hex::encode(p), ..c }),
                b => b,
            };
            let body = f(raw.seq, body);
            prev = Some(encode_line(&mut out, raw.seq, &p, &body).unwrap());
        }
        std::fs::write(path, out).unwrap();
    }

    #[tokio::test]
    async fn rewriting_history_with_recomputed_hashes_breaks_the_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample(dir.path()).await;
        rechain(&s[0].path, |seq, b| match b {
            Body::Rec(mut r) if seq == 3 => {
                r.status = 200;
                r.consumer_system = "someone-else".into();
                Body::Rec(r)
            }
            b => b,
        });
        let r = verify(dir.path(), None, None).unwrap();
        let e = first_error(&r);
        assert_eq!((e.kind, e.line, e.seq), (FindingKind::BadSignature, 12, Some(11)), "{r}");
    }

    #[tokio::test]
    async fn a_checkpoint_signed_by_another_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample(dir.path()).await;
        let intruder = key(9);
        rechain(&s[0].path, |seq, b| match b {
            Body::Checkpoint(c) => {
                let head: [u8; 32] = hex::decode(&c.head).unwrap().try_into().unwrap();
                let msg = segment::checkpoint_message("node-1", seq, &head, c.count, c.at);
                let sig = STANDARD.encode(intruder.sign(&msg).to_bytes());
                Body::Checkpoint(Checkpoint { sig, key: STANDARD.encode(intruder.verifying_key().as_bytes()), ..c })
            }
            b => b,
        });
        let trusted = key(1).verifying_key();
        let r = verify(dir.path(), None, Some(&trusted)).unwrap();
        let e = first_error(&r);
        assert_eq!((e.kind, e.line), (FindingKind::UntrustedKey, 12), "{r}");
        // Without a trusted key the signature itself is valid, but the key change is reported.
        let r = verify(dir.path(), None, None).unwrap();
        assert!(r.ok(), "{r}");
        assert!(r.findings.iter().any(|f| f.kind == FindingKind::KeyChanged), "{r}");
        assert_eq!(r.nodes[0].keys.len(), 2);
        // And the genuine log verifies against its key.
        let dir2 = tempfile::tempdir().unwrap();
        sample(dir2.path()).await;
        assert!(verify(dir2.path(), None, Some(&trusted)).unwrap().ok());
        assert_eq!(first_error(&verify(dir2.path(), None, Some(&intruder.verifying_key())).unwrap()).kind, FindingKind::UntrustedKey);
    }

    #[tokio::test]
    async fn a_truncated_tail_is_an_unsigned_tail_warning() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample(dir.path()).await;
        let mut l = lines(&s[0].path);
        l.truncate(8); // drop the shutdown checkpoint and the last records
        std::fs::write(&s[0].path, l.join("\n") + "\n").unwrap();
        let r = verify(dir.path(), None, None).unwrap();
        assert!(r.ok(), "{r}");
        let w = r.findings.iter().find(|f| f.kind == FindingKind::UnsignedTail).unwrap();
        assert_eq!((w.severity, w.seq), (Severity::Warning, Some(1)), "{r}");
        assert_eq!(r.nodes[0].last_seq, Some(7));
    }

    #[tokio::test]
    async fn report_reads_well() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample(dir.path()).await;
        let mut l = lines(&s[0].path);
        l[3] = l[3].replace("\"status\":200", "\"status\":500");
        std::fs::write(&s[0].path, l.join("\n") + "\n").unwrap();
        let text = verify(dir.path(), None, None).unwrap().to_string();
        assert!(text.contains("ERROR   audit-node-1-00000001.jsonl:4 seq 3 [hash_mismatch]"), "{text}");
        assert!(text.ends_with("FAILED: 1 error(s), 0 warning(s)"), "{text}");
        assert!(verify(dir.path(), Some("nobody"), None).unwrap().findings[0].kind == FindingKind::NoSegments);
    }
}
