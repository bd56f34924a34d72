//! Probe history on this node: `DATA_DIR/probes.redb`, separate from the registry store.
//!
//! Holds hourly and daily aggregates per target (checks, up, degraded, down, latency sum and
//! maximum), written in batches (one transaction per flush, not per check). Hourly rows are
//! kept `hourly_days`, daily rows `daily_days` (≥ 90 by default: 3 months of uptime per day
//! and month); [`History::prune`] drops older rows, so the file stays bounded by
//! targets × (24 × hourly_days + daily_days) rows of 48 bytes plus keys.
//!
//! Invariants: only what this node probed is here (a target that moved has rows on several
//! nodes; readers merge them); aggregates are sums, so merging is adding.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::Health;

const HOURLY: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("probe_hourly");
const DAILY: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("probe_daily");

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot open the probe history {path}: {reason}; check the data directory's permissions and free space")]
    Open { path: String, reason: String },
    #[error("the probe history could not be read or written: {0}")]
    Io(String),
}

fn io(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Io(e.to_string())
}

/// Sums over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Aggregate {
    pub checks: u64,
    pub up: u64,
    pub degraded: u64,
    pub down: u64,
    pub latency_sum_ms: u64,
    pub latency_max_ms: u64,
}

impl Aggregate {
    fn add_result(&mut self, health: Health, latency_ms: u64) {
        self.checks += 1;
        match health {
            Health::Up => self.up += 1,
            Health::Degraded => self.degraded += 1,
            Health::Down => self.down += 1,
        }
        self.latency_sum_ms = self.latency_sum_ms.saturating_add(latency_ms);
        self.latency_max_ms = self.latency_max_ms.max(latency_ms);
    }

    /// Adds another period's (or node's) sums.
    pub fn merge(&mut self, o: &Aggregate) {
        self.checks += o.checks;
        self.up += o.up;
        self.degraded += o.degraded;
        self.down += o.down;
        self.latency_sum_ms = self.latency_sum_ms.saturating_add(o.latency_sum_ms);
        self.latency_max_ms = self.latency_max_ms.max(o.latency_max_ms);
    }

    /// Share of checks that were not `down` (degraded counts as available), `None` without checks.
    pub fn uptime(&self) -> Option<f64> {
        (self.checks > 0).then(|| (self.up + self.degraded) as f64 / self.checks as f64)
    }

    fn to_bytes(self) -> [u8; 48] {
        let mut b = [0u8; 48];
        for (i, v) in [self.checks, self.up, self.degraded, self.down, self.latency_sum_ms, self.latency_max_ms].iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8]) -> Aggregate {
        let f = |i: usize| b.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
        Aggregate { checks: f(0), up: f(1), degraded: f(2), down: f(3), latency_sum_ms: f(4), latency_max_ms: f(5) }
    }
}

/// One result to record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub target: String,
    pub at: i64,
    pub health: Health,
    pub latency_ms: u64,
}

pub struct History {
    db: Database,
}

impl History {
    pub fn open(path: &Path) -> Result<History, HistoryError> {
        let db = Database::create(path).map_err(|e| HistoryError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        let tx = db.begin_write().map_err(io)?;
        tx.open_table(HOURLY).map_err(io)?;
        tx.open_table(DAILY).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(History { db })
    }

    /// Adds a batch of results to their hour's and day's aggregates in one transaction.
    pub fn record(&self, samples: &[Sample]) -> Result<(), HistoryError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut hourly = tx.open_table(HOURLY).map_err(io)?;
            let mut daily = tx.open_table(DAILY).map_err(io)?;
            for s in samples {
                for (table, start) in [(&mut hourly, s.at - s.at.rem_euclid(3600)), (&mut daily, s.at - s.at.rem_euclid(86_400))] {
                    let mut agg =
                        table.get((s.target.as_str(), start)).map_err(io)?.map(|v| Aggregate::from_bytes(v.value())).unwrap_or_default();
                    agg.add_result(s.health, s.latency_ms);
                    table.insert((s.target.as_str(), start), agg.to_bytes().as_slice()).map_err(io)?;
                }
            }
        }
        tx.commit().map_err(io)
    }

    /// Daily aggregates of `target` for days starting in `[from, to)` (unix seconds).
    pub fn daily(&self, target: &str, from: i64, to: i64) -> Result<Vec<(i64, Aggregate)>, HistoryError> {
        self.rows(DAILY, target, from, to)
    }

    /// Hourly aggregates of `target` for hours starting in `[from, to)`.
    pub fn hourly(&self, target: &str, from: i64, to: i64) -> Result<Vec<(i64, Aggregate)>, HistoryError> {
        self.rows(HOURLY, target, from, to)
    }

    fn rows(
        &self,
        def: TableDefinition<(&str, i64), &[u8]>,
        target: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Aggregate)>, HistoryError> {
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(def).map_err(io)?;
        let mut out = Vec::new();
        for row in table.range((target, from)..(target, to)).map_err(io)? {
            let (k, v) = row.map_err(io)?;
            out.push((k.value().1, Aggregate::from_bytes(v.value())));
        }
        Ok(out)
    }

    /// Drops hourly rows older than `hourly_days` and daily rows older than `daily_days`.
    /// Returns how many rows were removed.
    pub fn prune(&self, now: i64, hourly_days: i64, daily_days: i64) -> Result<u64, HistoryError> {
        let tx = self.db.begin_write().map_err(io)?;
        let mut removed = 0;
        for (def, days) in [(HOURLY, hourly_days), (DAILY, daily_days)] {
            let cutoff = now - days * 86_400;
            let mut table = tx.open_table(def).map_err(io)?;
            let old: Vec<(String, i64)> = table
                .iter()
                .map_err(io)?
                .filter_map(Result::ok)
                .filter(|(k, _)| k.value().1 < cutoff)
                .map(|(k, _)| (k.value().0.to_string(), k.value().1))
                .collect();
            for (t, at) in old {
                table.remove((t.as_str(), at)).map_err(io)?;
                removed += 1;
            }
        }
        tx.commit().map_err(io)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_by_hour_and_day_survive_reopening_and_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("probes.redb");
        let day = 20_000 * 86_400; // a day boundary
        let s = |target: &str, at: i64, health, latency_ms| Sample { target: target.into(), at, health, latency_ms };
        {
            let h = History::open(&path).expect("open");
            h.record(&[
                s("system:a", day + 10, Health::Up, 5),
                s("system:a", day + 40, Health::Down, 50),
                s("system:b", day + 10, Health::Up, 1),
            ])
            .expect("record");
            h.record(&[s("system:a", day + 3600 + 1, Health::Degraded, 7), s("system:a", day + 86_400 + 1, Health::Up, 3)])
                .expect("record");
        }
        let h = History::open(&path).expect("reopen");
        let hours = h.hourly("system:a", day, day + 86_400).expect("hourly");
        assert_eq!(hours.len(), 2);
        assert_eq!(hours[0].1, Aggregate { checks: 2, up: 1, degraded: 0, down: 1, latency_sum_ms: 55, latency_max_ms: 50 });
        let days = h.daily("system:a", day, day + 2 * 86_400).expect("daily");
        assert_eq!(days.iter().map(|d| d.1.checks).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(days[0].1.uptime(), Some(2.0 / 3.0));
        assert_eq!(h.daily("system:b", day, day + 86_400).expect("daily")[0].1.checks, 1);
        assert_eq!(Aggregate::default().uptime(), None);

        // Hourly rows kept one day, daily rows kept 90 days.
        let removed = h.prune(day + 86_400 + 3600 + 10, 1, 90).expect("prune");
        assert_eq!(removed, 3, "the first day's three hourly rows (a, a, b)");
        assert_eq!(h.hourly("system:a", 0, i64::MAX).expect("hourly").len(), 1);
        assert_eq!(h.daily("system:a", 0, i64::MAX).expect("daily").len(), 2);
        assert_eq!(h.prune(day + 200 * 86_400, 1, 90).expect("prune"), 4);
    }
}
