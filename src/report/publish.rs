//! This node's traffic-rollup publisher: reads its own audit log per local day and proposes
//! `PublishTrafficRollup`, so the cluster's reports count what this node proxied.
//!
//! Schedule (one proposal at most per tick of a second, so start-up backfill is rate-bounded):
//! 1. today's rollup, when the published one is older than `[report] publish_interval`;
//! 2. otherwise the newest past day, from the first day of this node's audit log, that is
//!    missing or was published before the day ended plus [`GRACE`] (so yesterday is completed
//!    just after midnight, and days missed while the cluster had no quorum or the node was down
//!    are filled in once it is back, as far back as its audit retention).
//!
//! Invariants: reaches the cluster only through [`Cluster`] (implemented in `app.rs`); a
//! failed proposal is retried after [`RETRY`], never in a tight loop; reading the audit log
//! runs on the blocking pool.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use crate::audit::AuditLog;
use crate::registry::traffic::{local_date, local_day_bounds, TrafficRollup};
use crate::registry::Command;

/// A day's rollup is final once published this long after the day ended (requests that
/// arrived before midnight are written when their response ends).
pub const GRACE: chrono::Duration = chrono::Duration::minutes(10);
/// Wait after a failed proposal.
pub const RETRY: Duration = Duration::from_secs(5);

/// What the publisher needs from the cluster.
pub trait Cluster: Send + Sync {
    /// This node's rollups in the registry: day → (as_of, complete).
    fn published(&self, node: &str) -> BTreeMap<NaiveDate, (DateTime<Utc>, bool)>;
    fn propose(&self, command: Command) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

pub struct Publisher {
    pub node: String,
    pub audit_dir: PathBuf,
    pub audit: Option<AuditLog>,
    /// How often today's rollup is republished.
    pub interval: Duration,
    pub keep_days: u32,
    pub cluster: Arc<dyn Cluster>,
}

/// What to publish next, if anything, at `now`.
pub fn next_day(
    now: DateTime<Utc>,
    first_day: NaiveDate,
    interval: chrono::Duration,
    published: &BTreeMap<NaiveDate, (DateTime<Utc>, bool)>,
) -> Option<NaiveDate> {
    let today = local_date(now);
    match published.get(&today) {
        Some((as_of, _)) if now - *as_of < interval => {}
        _ => return Some(today),
    }
    let mut d = today.pred_opt()?;
    while d >= first_day {
        match published.get(&d) {
            Some((_, true)) => {}
            Some((as_of, false)) if *as_of < local_day_bounds(d).1 + GRACE && now >= local_day_bounds(d).1 + GRACE => return Some(d),
            Some(_) => {}
            None => return Some(d),
        }
        d = d.pred_opt()?;
    }
    None
}

impl Publisher {
    /// Runs until `stop` completes.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut wait = Duration::from_secs(2);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => return,
            }
            wait = match self.tick().await {
                Ok(_) => Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, "traffic rollup not published; retrying");
                    RETRY
                }
            };
        }
    }

    /// Publishes at most one day. Returns the day published.
    pub async fn tick(&self) -> Result<Option<NaiveDate>, String> {
        let now = Utc::now();
        let dir = self.audit_dir.clone();
        let node = self.node.clone();
        let first = tokio::task::spawn_blocking(move || crate::audit::node_first_day(&dir, &node))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| local_date(now));
        let published = self.cluster.published(&self.node);
        let interval = chrono::Duration::from_std(self.interval).unwrap_or(chrono::Duration::minutes(15));
        let Some(day) = next_day(now, first, interval, &published) else { return Ok(None) };
        if let Some(log) = &self.audit {
            log.flush().await.map_err(|e| e.to_string())?;
        }
        let as_of = Utc::now();
        let (dir, node) = (self.audit_dir.clone(), self.node.clone());
        let (rows, unlogged) = tokio::task::spawn_blocking(move || crate::audit::node_day_rollup(&dir, &node, day))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let rollup = TrafficRollup {
            id: TrafficRollup::key_of(day, &self.node),
            node: self.node.clone(),
            day,
            as_of,
            complete: as_of >= local_day_bounds(day).1 + GRACE,
            unlogged,
            rows,
        };
        let n = rollup.rows.len();
        self.cluster.propose(Command::PublishTrafficRollup { rollup, keep_days: self.keep_days }).await?;
        tracing::debug!(%day, rows = n, "traffic rollup published");
        Ok(Some(day))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn today_first_then_newest_missing_or_unfinished_day() {
        let every = chrono::Duration::minutes(15);
        // 10:00 on 5 Nov in Hanoi; the audit log starts on 2 Nov.
        let now = t("2026-11-05T03:00:00Z");
        let mut p = BTreeMap::new();
        assert_eq!(next_day(now, d("2026-11-02"), every, &p), Some(d("2026-11-05")));
        p.insert(d("2026-11-05"), (now, false));
        assert_eq!(next_day(now, d("2026-11-02"), every, &p), Some(d("2026-11-04")));
        p.insert(d("2026-11-04"), (t("2026-11-04T18:00:00Z"), true));
        // 3 Nov was published at 23:00 local, before it ended: finish it.
        p.insert(d("2026-11-03"), (t("2026-11-03T16:00:00Z"), false));
        assert_eq!(next_day(now, d("2026-11-02"), every, &p), Some(d("2026-11-03")));
        p.insert(d("2026-11-03"), (t("2026-11-03T17:20:00Z"), true));
        assert_eq!(next_day(now, d("2026-11-02"), every, &p), Some(d("2026-11-02")));
        p.insert(d("2026-11-02"), (t("2026-11-03T17:20:00Z"), true));
        assert_eq!(next_day(now, d("2026-11-02"), every, &p), None);
        // Today again once the interval has passed.
        assert_eq!(next_day(now + every, d("2026-11-02"), every, &p), Some(d("2026-11-05")));
        // Just after midnight, yesterday (published during the day) waits for the grace period.
        let mut p = BTreeMap::new();
        let just_after = t("2026-11-05T17:05:00Z");
        p.insert(d("2026-11-06"), (just_after, false));
        p.insert(d("2026-11-05"), (t("2026-11-05T16:50:00Z"), false));
        assert_eq!(next_day(just_after, d("2026-11-05"), every, &p), None);
        assert_eq!(next_day(t("2026-11-05T17:11:00Z"), d("2026-11-05"), every, &p), Some(d("2026-11-05")));
    }
}
