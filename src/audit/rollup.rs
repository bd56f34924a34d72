//! A node's traffic rollup of one local day (report, O6), computed from its own segments:
//! per consumer × service version × outcome, counts, bytes and a latency histogram
//! (`registry::traffic`), plus the transactions known to be missing (`gap` entries).
//!
//! Invariants: read-only; only the named node's segments are read (a directory may hold
//! copies of other nodes' segments, whose traffic those nodes publish themselves); a record
//! belongs to the day its request arrived (UTC+7), like reconciliation.

use std::collections::BTreeMap;
use std::path::Path;

use crate::registry::traffic::{local_day_bounds, LatencyHistogram, TrafficRow};
use chrono::NaiveDate;

use super::record::Body;
use super::search::{scan, windows};
use super::AuditError;

/// The rows (sorted, keys unique) and the count of unlogged transactions of `node` on `day`.
pub fn node_day_rollup(dir: &Path, node: &str, day: NaiveDate) -> Result<(Vec<TrafficRow>, u64), AuditError> {
    let (from, to) = local_day_bounds(day);
    let mut rows: BTreeMap<(String, String, String, String, String), TrafficRow> = BTreeMap::new();
    let mut unlogged = 0u64;
    for w in windows(dir, Some(node))?.into_iter().filter(|w| w.overlaps(Some(from), Some(to))) {
        scan(&w.seg.path, |_, body| match body {
            Body::Rec(r) if r.at >= from && r.at < to => {
                let key = (r.consumer_agency, r.consumer_system, r.service, r.version, r.outcome);
                let row = rows.entry(key).or_insert_with_key(|k| TrafficRow {
                    consumer_agency: k.0.clone(),
                    consumer_system: k.1.clone(),
                    service: k.2.clone(),
                    version: k.3.clone(),
                    outcome: k.4.clone(),
                    latency: LatencyHistogram::default(),
                    ..TrafficRow::default()
                });
                row.count += 1;
                row.request_bytes = row.request_bytes.saturating_add(r.request_bytes);
                row.response_bytes = row.response_bytes.saturating_add(r.response_bytes);
                row.latency.record(r.gateway_us.saturating_add(r.upstream_us.unwrap_or(0)));
            }
            Body::Gap(g) if g.at >= from && g.at < to => unlogged += g.dropped,
            _ => {}
        })?;
    }
    Ok((rows.into_values().collect(), unlogged))
}

/// The local day of `node`'s oldest segment still in `dir` (`None`: no segment): how far back
/// its rollups can be computed.
pub fn node_first_day(dir: &Path, node: &str) -> Result<Option<NaiveDate>, AuditError> {
    let wins = windows(dir, Some(node))?;
    Ok(wins.iter().filter_map(|w| w.lo).min().map(|lo| crate::registry::traffic::local_date(lo + super::search::SLACK)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::log::tests::{key, rec, small_cfg, TestClock};
    use crate::audit::AuditLog;

    #[tokio::test]
    async fn rollup_counts_one_node_and_one_vietnam_day() {
        let dir = tempfile::tempdir().unwrap();
        // 16:30 UTC on 30 June is 23:30 in Hanoi; an hour later it is 1 July there.
        let clock = TestClock::start("2025-06-30T16:30:00Z");
        let (log, task) = AuditLog::open_with_clock(dir.path(), "node-1", key(1), small_cfg(), clock.clock()).unwrap();
        let h = tokio::spawn(task.run(std::future::pending()));
        for i in 1..=20u64 {
            log.record(rec(i, clock.now()));
        }
        clock.advance(chrono::Duration::hours(1));
        for i in 21..=27u64 {
            log.record(rec(i, clock.now()));
        }
        log.flush().await.unwrap();
        drop(log);
        h.await.unwrap().unwrap();

        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let (june, gaps) = node_day_rollup(dir.path(), "node-1", d("2025-06-30")).unwrap();
        assert_eq!(gaps, 0);
        assert_eq!(june.iter().map(|r| r.count).sum::<u64>(), 20);
        assert!(june.iter().all(|r| r.latency.count() == r.count));
        // The same keys as the reconciliation counts of that day.
        let counts = crate::audit::daily_counts(dir.path(), d("2025-06-30")).unwrap();
        assert_eq!(counts.len(), june.len());
        for (c, r) in counts.iter().zip(&june) {
            assert_eq!((&c.consumer_system, &c.service, &c.outcome, c.count), (&r.consumer_system, &r.service, &r.outcome, r.count));
        }
        let (july, _) = node_day_rollup(dir.path(), "node-1", d("2025-07-01")).unwrap();
        assert_eq!(july.iter().map(|r| r.count).sum::<u64>(), 7);
        // Another node's name reads nothing.
        assert!(node_day_rollup(dir.path(), "node-2", d("2025-06-30")).unwrap().0.is_empty());
    }
}
