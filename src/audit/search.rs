//! `lgsp audit search`: records matching a filter, newest first, and the time-bounded scan
//! of segments that reconciliation shares.
//!
//! Invariants: read-only; damaged lines are skipped here (reporting them is `verify`'s job);
//! a segment is skipped only when no record in it can fall in the asked time range — its window
//! runs from its anchor minus [`SLACK`] to the next segment's anchor plus [`SLACK`] (a record's
//! time is when the request arrived, a little before it is written; the slack also absorbs
//! clock steps).

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::record::{AuditRecord, Body};
use super::segment::{anchor_time, list_segments, parse_line, LineReader, SegmentFile};
use super::AuditError;

/// How far a record's time may lie outside the span its segment was written in.
pub(crate) const SLACK: Duration = Duration::hours(1);

/// What to look for. Every field that is set must match (strings exactly).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchFilter {
    /// Records at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Records strictly before this instant.
    pub to: Option<DateTime<Utc>>,
    /// Only this node's segments (default: every node in the directory).
    pub node: Option<String>,
    pub consumer_agency: Option<String>,
    pub consumer_system: Option<String>,
    pub service: Option<String>,
    pub version: Option<String>,
    pub environment: Option<String>,
    /// Inclusive.
    pub status_min: Option<u16>,
    /// Inclusive.
    pub status_max: Option<u16>,
    pub outcome: Option<String>,
    pub txn_id: Option<String>,
    /// At most this many (the newest); `None` for all.
    pub limit: Option<usize>,
}

impl SearchFilter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        fn eq(want: &Option<String>, got: &str) -> bool {
            want.as_deref().is_none_or(|w| w == got)
        }
        self.from.is_none_or(|t| r.at >= t)
            && self.to.is_none_or(|t| r.at < t)
            && self.status_min.is_none_or(|s| r.status >= s)
            && self.status_max.is_none_or(|s| r.status <= s)
            && eq(&self.txn_id, &r.txn_id)
            && eq(&self.consumer_agency, &r.consumer_agency)
            && eq(&self.consumer_system, &r.consumer_system)
            && eq(&self.service, &r.service)
            && eq(&self.version, &r.version)
            && eq(&self.environment, &r.environment)
            && eq(&self.outcome, &r.outcome)
            && eq(&self.node, &r.node)
    }
}

/// Records in `dir` matching `filter`, newest first (by the time the request arrived).
pub fn search(dir: &Path, filter: &SearchFilter) -> Result<Vec<AuditRecord>, AuditError> {
    let limit = filter.limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut wins = windows(dir, filter.node.as_deref())?;
    wins.retain(|w| w.overlaps(filter.from, filter.to));
    // Newest possible record first; an open end (the segment being written) is newest.
    wins.sort_by(|a, b| match (a.hi, b.hi) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => y.cmp(&x),
    });
    let mut found: Vec<(u64, AuditRecord)> = Vec::new();
    for w in wins {
        if found.len() >= limit {
            if let (Some(hi), Some((_, oldest_kept))) = (w.hi, found.last()) {
                if hi < oldest_kept.at {
                    break;
                }
            }
        }
        scan(&w.seg.path, |seq, body| {
            if let Body::Rec(r) = body {
                if filter.matches(&r) {
                    found.push((seq, *r));
                }
            }
        })?;
        found.sort_by(|(sa, a), (sb, b)| b.at.cmp(&a.at).then_with(|| a.node.cmp(&b.node)).then_with(|| sb.cmp(sa)));
        found.truncate(limit);
    }
    Ok(found.into_iter().map(|(_, r)| r).collect())
}

/// A segment and the span of record times it can hold (`None`: unbounded on that side).
pub(crate) struct Window {
    pub seg: SegmentFile,
    pub lo: Option<DateTime<Utc>>,
    pub hi: Option<DateTime<Utc>>,
}

impl Window {
    pub(crate) fn overlaps(&self, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> bool {
        let after_from = match (self.hi, from) {
            (Some(hi), Some(from)) => hi >= from,
            _ => true,
        };
        let before_to = match (self.lo, to) {
            (Some(lo), Some(to)) => lo < to,
            _ => true,
        };
        after_from && before_to
    }
}

/// Every segment (of `node`, or of all nodes) with its time window, from the anchors.
pub(crate) fn windows(dir: &Path, node: Option<&str>) -> Result<Vec<Window>, AuditError> {
    let (segs, _) = list_segments(dir)?;
    let segs: Vec<SegmentFile> = segs.into_iter().filter(|s| node.is_none_or(|n| s.node == n)).collect();
    let starts = segs.iter().map(|s| anchor_time(&s.path)).collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        let lo = starts[i].map(|t| t - SLACK);
        let hi = match segs.get(i + 1) {
            Some(next) if next.node == seg.node => starts[i + 1].map(|t| t + SLACK),
            _ => None,
        };
        out.push(Window { seg: seg.clone(), lo, hi });
    }
    Ok(out)
}

/// Calls `f` with every readable entry of a segment, in file order.
pub(crate) fn scan(path: &Path, mut f: impl FnMut(u64, Body)) -> Result<(), AuditError> {
    let mut r = LineReader::open(path)?;
    let mut buf = Vec::new();
    while let Some(info) = r.next_line(&mut buf).map_err(AuditError::io("read", path))? {
        if !info.terminated || info.too_long {
            continue;
        }
        if let Ok(raw) = parse_line(&mut buf) {
            if let Ok(body) = raw.parse_body() {
                f(raw.seq, body);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::log::tests::{key, rec, small_cfg, TestClock};
    use crate::audit::AuditConfig;
    use crate::audit::AuditLog;

    /// 30 records one minute apart, two nodes, small segments so several are involved.
    async fn fixture(dir: &Path) -> DateTime<Utc> {
        let clock = TestClock::start("2025-07-01T03:00:00Z");
        let start = clock.now();
        let cfg = AuditConfig { segment_max_bytes: 4096, ..small_cfg() };
        for node in ["node-1", "node-2"] {
            let (log, task) = AuditLog::open_with_clock(dir, node, key(1), cfg.clone(), clock.clock()).unwrap();
            let h = tokio::spawn(task.run(std::future::pending()));
            for i in 0..30u64 {
                log.record(rec(i, start + Duration::minutes(i as i64)));
                log.flush().await.unwrap(); // one record at a time, so segments rotate between them
                clock.advance(Duration::minutes(1));
            }
            drop(log);
            h.await.unwrap().unwrap();
        }
        start
    }

    #[tokio::test]
    async fn filters_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let start = fixture(dir.path()).await;
        assert!(crate::audit::segment::node_segments(dir.path(), "node-1").unwrap().len() >= 3);

        let all = search(dir.path(), &SearchFilter::default()).unwrap();
        assert_eq!(all.len(), 60);
        assert!(all.windows(2).all(|w| w[0].at >= w[1].at), "newest first");
        assert!(all.iter().all(|r| r.path.ends_with(char::is_numeric)), "no query strings");

        let f = SearchFilter { limit: Some(3), node: Some("node-2".into()), ..Default::default() };
        let top = search(dir.path(), &f).unwrap();
        assert_eq!(top.iter().map(|r| r.txn_id.as_str()).collect::<Vec<_>>(), ["txn-29", "txn-28", "txn-27"]);
        assert!(top.iter().all(|r| r.node == "node-2"));

        let f = SearchFilter { from: Some(start + Duration::minutes(10)), to: Some(start + Duration::minutes(20)), ..Default::default() };
        let mid = search(dir.path(), &f).unwrap();
        assert_eq!(mid.len(), 20);
        assert!(mid.iter().all(|r| r.at >= start + Duration::minutes(10) && r.at < start + Duration::minutes(20)));

        let f = SearchFilter { outcome: Some("SUBSCRIPTION_REQUIRED".into()), node: Some("node-1".into()), ..Default::default() };
        let refused = search(dir.path(), &f).unwrap();
        assert_eq!(refused.iter().map(|r| r.txn_id.as_str()).collect::<Vec<_>>(), ["txn-28", "txn-21", "txn-14", "txn-7", "txn-0"]);

        let f = SearchFilter { status_min: Some(400), status_max: Some(499), service: Some("dancu".into()), ..Default::default() };
        assert_eq!(search(dir.path(), &f).unwrap().len(), 2, "i % 7 == 0 and i % 5 == 0 below 30: only 0, on each node");

        let f = SearchFilter {
            consumer_agency: Some("000.00.01.H31".into()),
            consumer_system: Some("sys-1".into()),
            version: Some("v1".into()),
            environment: Some("production".into()),
            ..Default::default()
        };
        // odd i with i % 3 == 1: 1, 7, 13, 19, 25 on each node
        assert_eq!(search(dir.path(), &f).unwrap().len(), 10);

        let f = SearchFilter { txn_id: Some("txn-17".into()), ..Default::default() };
        assert_eq!(search(dir.path(), &f).unwrap().len(), 2);
        assert!(search(dir.path(), &SearchFilter { limit: Some(0), ..Default::default() }).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_limited_search_reads_only_the_newest_segments() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path()).await;
        // Damage the oldest segment's records beyond reading: a limited search never needs it.
        let oldest = &crate::audit::segment::node_segments(dir.path(), "node-1").unwrap()[0];
        let first_line = std::fs::read_to_string(&oldest.path).unwrap().lines().next().unwrap().to_owned();
        std::fs::write(&oldest.path, first_line + "\nnot json\n").unwrap();
        let f = SearchFilter { limit: Some(2), node: Some("node-1".into()), ..Default::default() };
        assert_eq!(search(dir.path(), &f).unwrap().len(), 2);
        let all = search(dir.path(), &SearchFilter { node: Some("node-1".into()), ..Default::default() }).unwrap();
        assert!(all.len() < 30, "an unlimited search reads the damaged segment and skips what it cannot read");
    }
}
