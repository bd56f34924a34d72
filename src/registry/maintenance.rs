//! Maintenance windows (O3): announce, change, cancel and the scheduler's stages, with the
//! minimum-notice rule and the office-hours warning; each step queues its notice.
//!
//! Invariants: pure; the minimum notice comes in the command (the proposer's config), so every
//! node decides alike; a window that has ended cannot change; stages are idempotent.

use std::collections::BTreeSet;

use chrono::Duration;

use super::error::RegistryError as E;
use super::model::*;
use super::notice::{self, Stage};
use super::rules;
use super::state::State;

/// Longest window accepted.
pub const MAX_WINDOW_DAYS: i64 = 31;
/// Stage names the scheduler proposes.
pub const STAGES: [&str; 3] = ["reminder", "start", "end"];

/// The checked fields of an announced or changed window.
pub struct Draft<'a> {
    pub scope: &'a MaintenanceScope,
    pub start: Timestamp,
    pub end: Timestamp,
    pub reason: &'a Bilingual,
    pub emergency: bool,
    pub emergency_reason: &'a str,
    pub min_notice_secs: u64,
}

fn check(state: &State, d: &Draft, now: Timestamp, start_changed: bool) -> Result<(), E> {
    rules::text("reason.vi", &d.reason.vi, 2000)?;
    rules::text("reason.en", &d.reason.en, 2000)?;
    if d.end <= d.start {
        return Err(E::invalid("end", "must be after start"));
    }
    if d.end - d.start > Duration::days(MAX_WINDOW_DAYS) {
        return Err(E::invalid("end", format!("a window lasts at most {MAX_WINDOW_DAYS} days; announce several")));
    }
    if d.end <= now {
        return Err(E::invalid("end", "is in the past"));
    }
    match d.scope {
        MaintenanceScope::Platform => {}
        MaintenanceScope::Nodes { nodes } => {
            if nodes.is_empty() {
                return Err(E::invalid("scope.nodes", "name at least one node"));
            }
            for n in nodes {
                rules::text("scope.nodes", n, 63)?;
            }
        }
        MaintenanceScope::Services { services } => {
            if services.is_empty() {
                return Err(E::invalid("scope.services", "name at least one service context"));
            }
            for s in services {
                if !state.services.contains(s) {
                    return Err(E::not_found("service", s));
                }
            }
        }
    }
    if d.emergency && d.emergency_reason.trim().is_empty() {
        return Err(E::invalid("emergency_reason", "an emergency window needs a reason"));
    }
    let notice = Duration::seconds(i64::try_from(d.min_notice_secs).unwrap_or(i64::MAX / 2));
    if start_changed && !d.emergency && d.start < now + notice {
        return Err(E::rule(
            "MAINTENANCE_NOTICE",
            format!(
                "maintenance must be announced at least {} before it starts ([maintenance] min_notice); this one starts at {}: move start to {} or later, or mark it an emergency with a reason",
                rules::format_duration(d.min_notice_secs),
                rules::local_time(d.start),
                rules::local_time(now + notice),
            ),
        ));
    }
    if start_changed && d.start < now - Duration::minutes(5) {
        return Err(E::invalid("start", "is in the past"));
    }
    Ok(())
}

pub fn announce(state: &mut State, id: &str, d: Draft, at: Timestamp, by: &str) -> Result<(), E> {
    rules::slug("id", id)?;
    if state.maintenance.contains(id) {
        return Err(E::exists("maintenance window", id));
    }
    check(state, &d, at, true)?;
    let w = MaintenanceWindow {
        id: id.to_owned(),
        scope: d.scope.clone(),
        start: d.start,
        end: d.end,
        reason: d.reason.clone(),
        emergency: d.emergency,
        emergency_reason: d.emergency_reason.to_owned(),
        office_hours: rules::touches_office_hours(d.start, d.end, &state.settings.holidays),
        revision: 0,
        announced_at: at,
        announced_by: by.to_owned(),
        updated_at: None,
        cancelled_at: None,
        stages: vec![],
        history: vec![MaintenanceEvent { at, by: by.to_owned(), kind: "announced".into(), detail: String::new() }],
    };
    let n = notice::maintenance_notice(state, &w, Stage::Announced, at);
    notice::queue(state, n);
    state.maintenance.put(w);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn change(
    state: &mut State,
    id: &str,
    scope: Option<&MaintenanceScope>,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    reason: Option<&Bilingual>,
    emergency: bool,
    emergency_reason: &str,
    min_notice_secs: u64,
    at: Timestamp,
    by: &str,
) -> Result<(), E> {
    let mut w = state.maintenance.get(id).cloned().ok_or_else(|| E::not_found("maintenance window", id))?;
    if w.cancelled_at.is_some() {
        return Err(E::conflict("MAINTENANCE_CANCELLED", format!("window {id} was cancelled; announce a new one")));
    }
    if w.end <= at {
        return Err(E::conflict("MAINTENANCE_ENDED", format!("window {id} has ended; announce a new one")));
    }
    let started = w.start <= at;
    if started && (start.is_some_and(|s| s != w.start) || scope.is_some_and(|s| s != &w.scope)) {
        return Err(E::conflict("MAINTENANCE_STARTED", format!("window {id} is in progress: only its end and reason can change")));
    }
    let before = w.clone();
    // A start moved later keeps the notice already given; only an earlier start needs it again.
    let start_earlier = start.is_some_and(|s| s < w.start);
    if let Some(s) = scope {
        w.scope = s.clone();
    }
    if let Some(s) = start {
        w.start = s;
    }
    if let Some(e) = end {
        w.end = e;
    }
    if let Some(r) = reason {
        w.reason = r.clone();
    }
    if emergency {
        w.emergency = true;
        w.emergency_reason = emergency_reason.to_owned();
    }
    let d = Draft { scope: &w.scope, start: w.start, end: w.end, reason: &w.reason, emergency, emergency_reason, min_notice_secs };
    check(state, &d, at, start_earlier)?;
    if w == before {
        return Err(E::invalid("body", "changes nothing"));
    }
    w.office_hours = rules::touches_office_hours(w.start, w.end, &state.settings.holidays);
    w.revision += 1;
    w.updated_at = Some(at);
    // A moved window gets its reminder, start and end again.
    if w.start != before.start {
        w.stages.clear();
    }
    if w.end != before.end {
        w.stages.retain(|s| s != "end");
    }
    w.history.push(MaintenanceEvent { at, by: by.to_owned(), kind: "changed".into(), detail: format!("revision {}", w.revision) });
    // Units affected before or after the change are told.
    let mut n = notice::maintenance_notice(state, &w, Stage::Changed(w.revision), at);
    let old = notice::maintenance_notice(state, &before, Stage::Changed(w.revision), at);
    let have: BTreeSet<Channel> = n.deliveries.iter().map(|d| d.channel.clone()).collect();
    let extra: Vec<Delivery> = old.deliveries.into_iter().filter(|d| !have.contains(&d.channel)).collect();
    n.deliveries.extend(extra);
    notice::queue(state, n);
    state.maintenance.put(w);
    Ok(())
}

pub fn cancel(state: &mut State, id: &str, reason: &str, at: Timestamp, by: &str) -> Result<(), E> {
    rules::text("reason", reason, 2000)?;
    let mut w = state.maintenance.get(id).cloned().ok_or_else(|| E::not_found("maintenance window", id))?;
    if w.cancelled_at.is_some() {
        return Err(E::conflict("MAINTENANCE_CANCELLED", format!("window {id} is already cancelled")));
    }
    if w.end <= at {
        return Err(E::conflict("MAINTENANCE_ENDED", format!("window {id} has ended")));
    }
    w.cancelled_at = Some(at);
    w.history.push(MaintenanceEvent { at, by: by.to_owned(), kind: "cancelled".into(), detail: reason.to_owned() });
    let mut n = notice::maintenance_notice(state, &w, Stage::Cancelled, at);
    n.body.vi.push_str(&format!("Lý do hủy: {reason}\n"));
    n.body.en.push_str(&format!("Cancelled because: {reason}\n"));
    notice::queue(state, n);
    state.maintenance.put(w);
    Ok(())
}

/// The scheduler's stage: queues its notice once; later stages imply earlier ones.
pub fn stage(state: &mut State, id: &str, stage: &str, at: Timestamp, by: &str) -> Result<(), E> {
    let idx = STAGES.iter().position(|s| *s == stage).ok_or_else(|| E::invalid("stage", format!("{stage:?} is not one of {STAGES:?}")))?;
    let mut w = state.maintenance.get(id).cloned().ok_or_else(|| E::not_found("maintenance window", id))?;
    if w.cancelled_at.is_some() || w.stage_done(stage) {
        return Ok(());
    }
    let due = match stage {
        "reminder" => at < w.start,
        "start" => at >= w.start,
        _ => at >= w.end,
    };
    if !due {
        return Ok(());
    }
    for s in &STAGES[..=idx] {
        if !w.stage_done(s) {
            w.stages.push((*s).to_owned());
        }
    }
    let (st, kind) = match stage {
        "reminder" => (Stage::Reminder, "reminder"),
        "start" => (Stage::Started, "started"),
        _ => (Stage::Ended, "ended"),
    };
    w.history.push(MaintenanceEvent { at, by: by.to_owned(), kind: kind.into(), detail: String::new() });
    let mut n = notice::maintenance_notice(state, &w, st, at);
    // A moved window's stages are notices of their own.
    n.id = format!("{}@{}", n.id, w.start.timestamp());
    notice::queue(state, n);
    state.maintenance.put(w);
    Ok(())
}

/// Which stage of `w` the scheduler should propose at `now`, if any. `reminder` only when the
/// window was announced more than `reminder_secs` before its start.
pub fn due_stage(w: &MaintenanceWindow, now: Timestamp, reminder_secs: u64) -> Option<&'static str> {
    if w.cancelled_at.is_some() {
        return None;
    }
    let lead = Duration::seconds(i64::try_from(reminder_secs).unwrap_or(i64::MAX / 2));
    if now >= w.end {
        return (!w.stage_done("end")).then_some("end");
    }
    if now >= w.start {
        return (!w.stage_done("start")).then_some("start");
    }
    let announced = w.updated_at.unwrap_or(w.announced_at);
    if now >= w.start - lead && w.start - announced > lead && !w.stage_done("reminder") {
        return Some("reminder");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(d: u32, h: u32) -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
    }

    fn reason() -> Bilingual {
        Bilingual { vi: "Nâng cấp".into(), en: "Upgrade".into() }
    }

    fn announce_at(s: &mut State, id: &str, start: Timestamp, end: Timestamp, emergency: bool, now: Timestamp) -> Result<(), E> {
        let r = reason();
        let d = Draft {
            scope: &MaintenanceScope::Platform,
            start,
            end,
            reason: &r,
            emergency,
            emergency_reason: if emergency { "patch" } else { "" },
            min_notice_secs: 7 * 86_400,
        };
        announce(s, id, d, now, "op")
    }

    #[test]
    fn minimum_notice_unless_emergency() {
        let mut s = State::default();
        let e = announce_at(&mut s, "soon", t(25, 15), t(25, 18), false, t(23, 3)).unwrap_err();
        assert_eq!(e.code(), "MAINTENANCE_NOTICE");
        assert!(e.to_string().contains("7d"), "{e}");
        announce_at(&mut s, "soon", t(25, 15), t(25, 18), true, t(23, 3)).expect("an emergency with a reason");
        // Sunday 2026-11-29 is 8 days after the Saturday announcement; 22:00-01:00 local (15-18 UTC).
        announce_at(&mut s, "later", t(29, 15), t(29, 18), false, t(21, 3)).expect("enough notice");
        assert!(!s.maintenance.get("later").unwrap().office_hours);
        assert!(s.notices.contains("maintenance/later/announced"));
    }

    #[test]
    fn stages_are_idempotent_and_due_in_order() {
        let mut s = State::default();
        announce_at(&mut s, "w", t(29, 15), t(29, 18), false, t(21, 3)).unwrap();
        let w = s.maintenance.get("w").unwrap().clone();
        let day = 86_400;
        assert_eq!(due_stage(&w, t(27, 15), day), None, "two days before: nothing");
        assert_eq!(due_stage(&w, t(28, 16), day), Some("reminder"));
        assert_eq!(due_stage(&w, t(29, 15), day), Some("start"));
        stage(&mut s, "w", "start", t(29, 15), "system").unwrap();
        let before = s.notices.len();
        stage(&mut s, "w", "start", t(29, 16), "system").unwrap();
        stage(&mut s, "w", "reminder", t(29, 16), "system").unwrap();
        assert_eq!(s.notices.len(), before, "a stage reached is never notified twice, and the reminder is skipped once started");
        let w = s.maintenance.get("w").unwrap().clone();
        assert_eq!(due_stage(&w, t(29, 17), day), None);
        assert_eq!(due_stage(&w, t(29, 18), day), Some("end"));
        cancel(&mut s, "w", "no longer needed", t(29, 17), "op").unwrap();
        assert_eq!(due_stage(s.maintenance.get("w").unwrap(), t(29, 18), day), None, "a cancelled window has no more stages");
    }

    #[test]
    fn a_started_window_only_changes_its_end_or_reason() {
        let mut s = State::default();
        announce_at(&mut s, "w", t(29, 15), t(29, 18), false, t(21, 3)).unwrap();
        let e = change(&mut s, "w", None, Some(t(29, 16)), None, None, false, "", 0, t(29, 16), "op").unwrap_err();
        assert_eq!(e.code(), "MAINTENANCE_STARTED");
        change(&mut s, "w", None, None, Some(t(29, 20)), None, false, "", 0, t(29, 16), "op").expect("extend the end");
        assert!(s.notices.contains("maintenance/w/changed-1"));
    }
}
