//! The report's incidents section (O5, HP Art. 10, HN Art. 12): incidents that overlapped the
//! period, from the replicated incident log (`registry::incident`), with their severity and
//! whether the fix took at most 24 hours from detection (HN Art. 16.10).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::registry::incident::incidents_overlapping;
use crate::registry::State;

/// One incident as the report shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Incident {
    pub id: String,
    pub title: String,
    pub severity: String,
    /// `open`, `isolated`, `fixing`, `monitoring` or `resolved` (at the time of the report).
    pub status: String,
    /// When it was detected.
    pub started_at: DateTime<Utc>,
    /// `None` while still open.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Services and agencies affected, as text.
    pub affected: String,
    /// An incident report is due (HP Art. 10.5g).
    pub serious: bool,
}

impl Incident {
    /// Fixed within `hours` of detection: `Some(true|false)` once resolved, `Some(false)` while
    /// still open past the limit at `now`, `None` while open within it.
    pub fn fixed_within(&self, hours: u32, now: DateTime<Utc>) -> Option<bool> {
        let limit = Duration::hours(i64::from(hours));
        match self.resolved_at {
            Some(r) => Some(r - self.started_at <= limit),
            None => (now - self.started_at > limit).then_some(false),
        }
    }
}

/// Incidents overlapping `[from, to)` (detected before `to`, not resolved before `from`),
/// oldest first.
pub fn incidents_in_period(state: &State, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Incident> {
    incidents_overlapping(state, from, to)
        .into_iter()
        .map(|i| {
            let mut affected = Vec::new();
            if !i.services.is_empty() {
                affected.push(format!("dịch vụ / services: {}", i.services.join(", ")));
            }
            if !i.affected_agencies.is_empty() {
                affected.push(format!("cơ quan / agencies: {}", i.affected_agencies.join(", ")));
            }
            Incident {
                id: i.id.clone(),
                title: format!("{} / {}", i.title.vi, i.title.en),
                severity: i.severity.as_str().to_owned(),
                status: i.status.as_str().to_owned(),
                started_at: i.detected_at,
                resolved_at: i.resolved_at,
                affected: if affected.is_empty() { "—".to_owned() } else { affected.join("; ") },
                serious: i.serious(),
            }
        })
        .collect()
}
