//! The report's incidents section (O5, HP Art. 10, HN Art. 12): incidents that overlapped the
//! period, with their severity and how long the fix took (HN Art. 16.10: within 24 hours).
//!
//! **Placeholder.** The incident log is being built on another branch (`incident`); until it
//! is merged, [`incidents_in_period`] returns an empty list and the report says that incidents
//! are not yet recorded by the appliance. Wiring it is one line: call the incident module's
//! `incidents_overlapping(state, from, to)` here and map its records to [`Incident`].

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::registry::State;

/// One incident as the report shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Incident {
    pub id: String,
    pub title: String,
    pub severity: String,
    pub started_at: DateTime<Utc>,
    /// `None` while still open.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Systems or services affected, as text.
    pub affected: String,
}

impl Incident {
    /// Whole hours from start to resolution (`None` while open).
    pub fn resolution_hours(&self) -> Option<i64> {
        self.resolved_at.map(|r| (r - self.started_at).num_minutes().div_euclid(60))
    }
}

/// Whether the appliance records incidents yet (false until the incident log is wired in):
/// the report then says so instead of showing "no incidents".
pub const INCIDENT_LOG_AVAILABLE: bool = false;

/// Incidents overlapping `[from, to)`. PLACEHOLDER: always empty until the incident log
/// (branch `incident`) is merged; see the module doc.
pub fn incidents_in_period(_state: &State, _from: DateTime<Utc>, _to: DateTime<Utc>) -> Vec<Incident> {
    Vec::new()
}
