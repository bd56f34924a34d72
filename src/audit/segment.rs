//! The on-disk format of the audit log, defined once: segment file names, the line layout, the
//! entry hash, the byte strings that anchors and checkpoints sign, and the readers every other
//! file uses (lines with a length cap, the tail of a segment, its first entry).
//!
//! Invariants: a line is `{"seq":N,"prev":"<64 hex>","hash":"<64 hex>",<body members>}\n`,
//! produced only by [`encode_line`] and accepted only in exactly that shape by [`parse_line`]
//! (no spaces, lowercase hex, canonical decimal seq); the hash covers the body bytes as written;
//! lines longer than [`MAX_LINE`] are never loaded whole (a damaged file cannot exhaust memory).

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, Utc};
use sha2::{Digest, Sha256};

use super::record::{push_digest_hex, Body};
use super::AuditError;

/// `prev` of a node's very first entry.
pub(crate) const GENESIS: [u8; 32] = [0; 32];
/// Longest line read; ours are a few KiB at most (fields are clamped).
pub(crate) const MAX_LINE: usize = 64 * 1024;

const HASH_DOMAIN: &[u8] = b"lgsp-audit-v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"lgsp-audit-checkpoint-v1\0";
const ANCHOR_DOMAIN: &[u8] = b"lgsp-audit-anchor-v1\0";

const P_SEQ: &[u8] = b"{\"seq\":";
const P_PREV: &[u8] = b",\"prev\":\"";
const P_HASH: &[u8] = b"\",\"hash\":\"";
const P_BODY: &[u8] = b"\",";

/// Vietnam's offset (no daylight saving): days, rotation and reconciliation use this date.
pub(crate) fn vietnam() -> FixedOffset {
    FixedOffset::east_opt(7 * 3600).unwrap_or_else(|| Utc.fix())
}

/// The local (UTC+7) date of an instant.
pub(crate) fn local_date(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&vietnam()).date_naive()
}

/// `SHA-256("lgsp-audit-v1\0" ‖ prev ‖ seq_be ‖ body)`.
pub(crate) fn entry_hash(prev: &[u8; 32], seq: u64, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(body);
    h.finalize().into()
}

/// Appends one complete line (with its newline) for `body` at `seq` after `prev`; returns its hash.
pub(crate) fn encode_line(out: &mut Vec<u8>, seq: u64, prev: &[u8; 32], body: &Body) -> Result<[u8; 32], serde_json::Error> {
    let json = serde_json::to_vec(body)?;
    let Some(members) = json.strip_prefix(b"{") else {
        return Err(serde::ser::Error::custom("an entry body did not serialise as a JSON object"));
    };
    let hash = entry_hash(prev, seq, &json);
    out.extend_from_slice(P_SEQ);
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(P_PREV);
    push_digest_hex(out, prev);
    out.extend_from_slice(P_HASH);
    push_digest_hex(out, &hash);
    out.extend_from_slice(P_BODY);
    out.extend_from_slice(members);
    out.push(b'\n');
    Ok(hash)
}

/// A line split into its chain fields and its body bytes (the body is not parsed yet).
pub(crate) struct RawEntry<'a> {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    /// `{"<kind>":{...}}`: the bytes the hash covers.
    pub body: &'a [u8],
}

impl RawEntry<'_> {
    pub(crate) fn computed_hash(&self) -> [u8; 32] {
        entry_hash(&self.prev, self.seq, self.body)
    }

    pub(crate) fn parse_body(&self) -> Result<Body, serde_json::Error> {
        serde_json::from_slice(self.body)
    }
}

/// Splits a line (without its newline) in the exact shape [`encode_line`] writes. The `,` before
/// the body is overwritten with `{` in place, so the body is a borrowed slice of `line`.
pub(crate) fn parse_line(line: &mut [u8]) -> Result<RawEntry<'_>, &'static str> {
    let mut pos = expect(line, 0, P_SEQ).ok_or("it does not start with {\"seq\":")?;
    let digits = line.get(pos..).unwrap_or_default().iter().take_while(|b| b.is_ascii_digit()).count();
    let text = line.get(pos..pos + digits).unwrap_or_default();
    if digits == 0 || digits > 20 || (digits > 1 && text.first() == Some(&b'0')) {
        return Err("its seq is not a plain decimal number");
    }
    let seq = std::str::from_utf8(text).ok().and_then(|s| s.parse::<u64>().ok()).ok_or("its seq is out of range")?;
    pos = expect(line, pos + digits, P_PREV).ok_or("\"prev\" is not where it belongs")?;
    let prev = hex32(line.get(pos..pos + 64)).ok_or("\"prev\" is not 64 lowercase hex digits")?;
    pos = expect(line, pos + 64, P_HASH).ok_or("\"hash\" is not where it belongs")?;
    let hash = hex32(line.get(pos..pos + 64)).ok_or("\"hash\" is not 64 lowercase hex digits")?;
    pos = expect(line, pos + 64, P_BODY).ok_or("the entry body is not where it belongs")?;
    let start = pos - 1;
    let body = line.get_mut(start..).ok_or("the line ends before its body")?;
    if let Some(b) = body.first_mut() {
        *b = b'{';
    }
    Ok(RawEntry { seq, prev, hash, body })
}

fn expect(line: &[u8], pos: usize, lit: &[u8]) -> Option<usize> {
    line.get(pos..pos + lit.len()).filter(|s| *s == lit).map(|_| pos + lit.len())
}

fn hex32(s: Option<&[u8]>) -> Option<[u8; 32]> {
    let s = s?;
    if !s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// What a checkpoint signs.
pub(crate) fn checkpoint_message(node: &str, seq: u64, head: &[u8; 32], count: u64, at: DateTime<Utc>) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(node.as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(&at.timestamp_millis().to_be_bytes());
    m
}

/// What an anchor signs.
pub(crate) fn anchor_message(node: &str, segment: u32, oldest: u32, seq: u64, prev: &[u8; 32], at: DateTime<Utc>) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(ANCHOR_DOMAIN);
    m.extend_from_slice(node.as_bytes());
    m.push(0);
    m.extend_from_slice(&segment.to_be_bytes());
    m.extend_from_slice(&oldest.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(prev);
    m.extend_from_slice(&at.timestamp_millis().to_be_bytes());
    m
}

// ---------------------------------------------------------------- file names

/// One segment file found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    pub path: PathBuf,
    pub node: String,
    pub no: u32,
}

impl SegmentFile {
    pub(crate) fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

pub(crate) fn segment_name(node: &str, no: u32) -> String {
    format!("audit-{}-{no:08}.jsonl", encode_node(node))
}

fn encode_node(node: &str) -> String {
    let mut s = String::with_capacity(node.len());
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn decode_node(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|n| !n.is_empty())
}

fn parse_segment_name(name: &str) -> Option<(String, u32)> {
    let inner = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let (node, no) = inner.rsplit_once('-')?;
    if no.len() < 8 || !no.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((decode_node(node)?, no.parse().ok()?))
}

/// Every segment in `dir`, sorted by node then number, and the names of files that look like
/// segments (`audit-*.jsonl`) but are not named like one.
pub(crate) fn list_segments(dir: &Path) -> Result<(Vec<SegmentFile>, Vec<String>), AuditError> {
    let mut segs = Vec::new();
    let mut odd = Vec::new();
    for e in std::fs::read_dir(dir).map_err(AuditError::io("list", dir))? {
        let e = e.map_err(AuditError::io("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("audit-") || !name.ends_with(".jsonl") {
            continue;
        }
        match parse_segment_name(&name) {
            Some((node, no)) => segs.push(SegmentFile { path: e.path(), node, no }),
            None => odd.push(name),
        }
    }
    segs.sort_by(|a, b| (&a.node, a.no).cmp(&(&b.node, b.no)));
    odd.sort();
    Ok((segs, odd))
}

/// One node's segments, oldest first.
pub(crate) fn node_segments(dir: &Path, node: &str) -> Result<Vec<SegmentFile>, AuditError> {
    Ok(list_segments(dir)?.0.into_iter().filter(|s| s.node == node).collect())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(AuditError::io("fsync the directory", dir))
}

// ---------------------------------------------------------------- readers

/// Where a line was and whether it was whole.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineInfo {
    /// 1-based line number.
    pub no: u64,
    /// Byte offset of its first byte.
    pub offset: u64,
    /// Ended with a newline (only a torn last line does not).
    pub terminated: bool,
    /// Longer than [`MAX_LINE`]; its content in the buffer is incomplete.
    pub too_long: bool,
}

/// Reads lines with a length cap, tracking line numbers and offsets.
pub(crate) struct LineReader<R> {
    r: R,
    line: u64,
    offset: u64,
}

impl LineReader<BufReader<File>> {
    pub(crate) fn open(path: &Path) -> Result<Self, AuditError> {
        let f = File::open(path).map_err(AuditError::io("open", path))?;
        Ok(LineReader::new(BufReader::with_capacity(256 * 1024, f)))
    }
}

impl<R: BufRead> LineReader<R> {
    pub(crate) fn new(r: R) -> Self {
        LineReader { r, line: 0, offset: 0 }
    }

    /// The next line into `buf` (without its newline), or `None` at the end.
    pub(crate) fn next_line(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<LineInfo>> {
        buf.clear();
        let start = self.offset;
        let mut too_long = false;
        loop {
            let avail = self.r.fill_buf()?;
            if avail.is_empty() {
                if self.offset == start {
                    return Ok(None);
                }
                self.line += 1;
                return Ok(Some(LineInfo { no: self.line, offset: start, terminated: false, too_long }));
            }
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            let keep = take.min(MAX_LINE.saturating_sub(buf.len()));
            too_long |= keep < take;
            buf.extend_from_slice(&avail[..keep]);
            self.r.consume(take);
            self.offset += take as u64;
            if done {
                if !too_long {
                    buf.pop();
                }
                self.line += 1;
                return Ok(Some(LineInfo { no: self.line, offset: start, terminated: true, too_long }));
            }
        }
    }
}

/// The last intact entry of a segment.
#[derive(Debug, Clone)]
pub(crate) struct TailEntry {
    pub seq: u64,
    pub hash: [u8; 32],
    /// Its body is a checkpoint with reason `shutdown`.
    pub clean_shutdown: bool,
}

/// What a full scan of a segment found at its end.
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    /// Length up to and including the last newline.
    pub good_len: u64,
    /// Bytes after the last newline (a torn write).
    pub torn_bytes: u64,
    /// Complete (newline-terminated) lines.
    pub complete_lines: u64,
    pub last: Option<TailEntry>,
    /// Complete lines after `last` that could not be read.
    pub damaged_after_last: u64,
    /// The oldest segment that may exist according to `retention` entries in this segment.
    pub retained_from: Option<u32>,
}

/// Scans a whole segment for its last intact entry (used on start, bounded by the segment size).
pub(crate) fn read_tail(path: &Path) -> Result<Tail, AuditError> {
    let mut r = LineReader::open(path)?;
    let mut buf = Vec::new();
    let mut t = Tail { good_len: 0, torn_bytes: 0, complete_lines: 0, last: None, damaged_after_last: 0, retained_from: None };
    let mut last_body: Vec<u8> = Vec::new();
    while let Some(info) = r.next_line(&mut buf).map_err(AuditError::io("read", path))? {
        if !info.terminated {
            t.torn_bytes = r.offset - info.offset;
            break;
        }
        t.complete_lines += 1;
        t.good_len = r.offset;
        match parse_line(&mut buf) {
            Ok(raw) if !info.too_long => {
                if raw.body.starts_with(b"{\"retention\":") {
                    if let Ok(Body::Retention(r)) = raw.parse_body() {
                        t.retained_from = Some(t.retained_from.unwrap_or(0).max(r.oldest_after()));
                    }
                }
                last_body.clear();
                last_body.extend_from_slice(raw.body);
                t.last = Some(TailEntry { seq: raw.seq, hash: raw.hash, clean_shutdown: false });
                t.damaged_after_last = 0;
            }
            _ => t.damaged_after_last += 1,
        }
    }
    if let Some(last) = t.last.as_mut() {
        last.clean_shutdown = matches!(serde_json::from_slice(&last_body), Ok(Body::Checkpoint(c)) if c.reason == "shutdown");
    }
    Ok(t)
}

/// The first entry of a segment, if it is intact (normally its anchor).
pub(crate) fn read_first(path: &Path) -> Result<Option<(u64, [u8; 32], Body)>, AuditError> {
    let mut r = LineReader::open(path)?;
    let mut buf = Vec::new();
    match r.next_line(&mut buf).map_err(AuditError::io("read", path))? {
        Some(info) if info.terminated && !info.too_long => {
            let Ok(raw) = parse_line(&mut buf) else { return Ok(None) };
            Ok(raw.parse_body().ok().map(|b| (raw.seq, raw.prev, b)))
        }
        _ => Ok(None),
    }
}

/// When a segment was started, from its anchor.
pub(crate) fn anchor_time(path: &Path) -> Result<Option<DateTime<Utc>>, AuditError> {
    Ok(match read_first(path)? {
        Some((_, _, Body::Anchor(a))) => Some(a.at),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Gap;

    #[test]
    fn line_round_trip_and_strictness() {
        let at = DateTime::from_timestamp_millis(1_751_338_800_123).unwrap();
        let body = Body::Gap(Gap { at, dropped: 3, total_dropped: 3 });
        let mut out = Vec::new();
        let h = encode_line(&mut out, 42, &[7u8; 32], &body).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        let mut line = out[..out.len() - 1].to_vec();
        assert!(line.starts_with(b"{\"seq\":42,\"prev\":\"0707"));
        let raw = parse_line(&mut line).unwrap();
        assert_eq!((raw.seq, raw.prev, raw.hash), (42, [7u8; 32], h));
        assert_eq!(raw.computed_hash(), h);
        assert_eq!(raw.parse_body().unwrap(), body);

        let text = String::from_utf8(out[..out.len() - 1].to_vec()).unwrap();
        for bad in [text.replace("\"seq\":42", "\"seq\":042"), text.replace("\"seq\":42", "\"seq\": 42"), text.to_uppercase()] {
            assert!(parse_line(&mut bad.into_bytes()).is_err());
        }
    }

    #[test]
    fn names_round_trip() {
        for node in ["node-1", "hp node/2", "a%b", "nút-1"] {
            let name = segment_name(node, 12);
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-%".contains(&b)), "{name}");
            assert_eq!(parse_segment_name(&name), Some((node.to_owned(), 12)));
        }
        assert_eq!(parse_segment_name("audit-x-12.jsonl"), None);
    }

    #[test]
    fn line_reader_caps_and_reports_torn() {
        let mut data = b"a\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        data.extend_from_slice(b"\nshort\ntorn");
        let mut r = LineReader::new(&data[..]);
        let mut buf = Vec::new();
        let a = r.next_line(&mut buf).unwrap().unwrap();
        assert!(a.terminated && !a.too_long && buf == b"a");
        let b = r.next_line(&mut buf).unwrap().unwrap();
        assert!(b.terminated && b.too_long && buf.len() == MAX_LINE);
        let c = r.next_line(&mut buf).unwrap().unwrap();
        assert!(c.terminated && buf == b"short" && c.no == 3);
        let d = r.next_line(&mut buf).unwrap().unwrap();
        assert!(!d.terminated && buf == b"torn");
        assert!(r.next_line(&mut buf).unwrap().is_none());
    }
}
