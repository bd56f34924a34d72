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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::incident::{Incident as Logged, IncidentStatus, PreIncidentBackup, Severity};
    use crate::registry::Bilingual;
    use chrono::TimeZone;

    fn t(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
    }

    fn logged(id: &str, detected: DateTime<Utc>, resolved: Option<DateTime<Utc>>) -> Logged {
        Logged {
            id: id.into(),
            title: Bilingual { vi: "Sự cố".into(), en: "Incident".into() },
            description: String::new(),
            severity: Severity::Normal,
            status: if resolved.is_some() { IncidentStatus::Resolved } else { IncidentStatus::Fixing },
            services: vec![],
            agencies: vec![],
            affected_agencies: vec!["000.00.00.H31".into(), "000.00.01.H31".into()],
            detected_at: detected,
            opened_at: detected,
            opened_by: "op".into(),
            expected_fix_at: None,
            fix_revision: 0,
            cause: String::new(),
            resolution: String::new(),
            resolved_at: resolved,
            backup: PreIncidentBackup::Failed { error: "test".into(), id: None },
            escalated: false,
            timeline: vec![],
        }
    }

    #[test]
    fn overlapping_incidents_and_the_24_hour_rule() {
        let mut s = State::default();
        s.incidents.load(logged("before", t(1, 0), Some(t(2, 0))));
        s.incidents.load(logged("across", t(9, 0), Some(t(11, 0))));
        s.incidents.load(logged("open", t(12, 0), None));
        let got = incidents_in_period(&s, t(10, 0), t(20, 0));
        let ids: Vec<&str> = got.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["across", "open"], "resolved before the period: left out");
        assert!(got[0].serious, "two agencies affected");
        assert_eq!(got[0].fixed_within(24, t(20, 0)), Some(false), "48 h");
        assert_eq!(got[1].fixed_within(24, t(12, 12)), None, "open, within the limit");
        assert_eq!(got[1].fixed_within(24, t(14, 0)), Some(false), "open past the limit: late already");
    }
}
