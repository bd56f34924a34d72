//! The incident log (O5; HP Art. 10, HN Art. 12): an incident's record, its timeline, the
//! pre-incident backup (HP Art. 10.5c), escalation (10.5e), the expected fix time notified to
//! those affected (10.5f) and whether it needs an incident report (10.5g).
//!
//! Invariants: pure (the instant and the actor come from the envelope; the backup's outcome
//! comes in the command, decided by the proposer before it proposed `OpenIncident`); every
//! change is a timeline entry; a resolved incident keeps its record and accepts notes and a
//! corrected cause only; notices are queued at opening, at each change of the expected fix
//! time and at resolution, addressed like maintenance notices (affected agencies' contacts and
//! webhooks, the operator's channels).
//!
//! **Severity.** HP/HN Art. 10.5a / 12.5a require following Circular 20/2017/TT-BTTTT and
//! Decision 05/2017/QĐ-TTg. We could not confirm from the texts at hand an exact level scale of
//! those instruments, so the scale here is ours and says what it rests on: `normal` (handled by
//! the operator, one agency or none affected), `serious` (nghiêm trọng: affecting several
//! agencies, HP Art. 10.5g: an incident report is due), `national` (beyond the city: to be
//! coordinated under the national emergency-response system of Decision 05/2017/QĐ-TTg). An
//! incident affecting two or more agencies needs a report whatever its severity.

use std::collections::BTreeSet;

use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::RegistryError as E;
use super::model::*;
use super::notice;
use super::rules;
use super::state::State;

/// Hours within which an incident should be fixed (HN Art. 16.10: within 24 hours of detection).
pub const FIX_WITHIN_HOURS: i64 = 24;
/// Longest title, description, note, cause or resolution.
const MAX_TITLE: usize = 300;
const MAX_TEXT: usize = 10_000;

/// How grave an incident is; see the module doc for what the levels rest on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Thông thường: handled by the operator.
    Normal,
    /// Nghiêm trọng: affects several agencies (HP Art. 10.5g): an incident report is due.
    Serious,
    /// Cấp quốc gia: beyond the city, coordinated nationally (Decision 05/2017/QĐ-TTg).
    National,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Normal => "normal",
            Severity::Serious => "serious",
            Severity::National => "national",
        }
    }
    pub fn words(self) -> Bilingual {
        let (vi, en) = match self {
            Severity::Normal => ("thông thường", "normal"),
            Severity::Serious => ("nghiêm trọng", "serious"),
            Severity::National => ("cấp quốc gia", "national-level"),
        };
        Bilingual { vi: vi.into(), en: en.into() }
    }
}

/// Where handling stands: `open` → `isolated` (HP Art. 10.4: contained) → `fixing` ⇄
/// `monitoring` (fix applied, watching) → `resolved` (only through `ResolveIncident`). Steps may
/// be skipped; an incident never goes back to `open` or `isolated` once past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Open,
    Isolated,
    Fixing,
    Monitoring,
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Isolated => "isolated",
            IncidentStatus::Fixing => "fixing",
            IncidentStatus::Monitoring => "monitoring",
            IncidentStatus::Resolved => "resolved",
        }
    }
    fn words(self) -> &'static str {
        match self {
            IncidentStatus::Open => "mới phát hiện / open",
            IncidentStatus::Isolated => "đã cô lập / isolated",
            IncidentStatus::Fixing => "đang khắc phục / fixing",
            IncidentStatus::Monitoring => "đang theo dõi / monitoring",
            IncidentStatus::Resolved => "đã khắc phục / resolved",
        }
    }
}

/// The backup made before handling began (HP Art. 10.5c), as the proposer found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PreIncidentBackup {
    /// The backup point is in the log at `log_index` and the proposing node wrote its file.
    Ok { id: String, log_index: u64, node: u64, file: String },
    /// No usable backup on the proposing node (the command failed, the file could not be
    /// written, or it was not written in time: `id` then names the point, which may still
    /// complete). The incident is recorded anyway: the log must exist during an outage.
    Failed {
        error: String,
        #[serde(default)]
        id: Option<String>,
    },
}

impl PreIncidentBackup {
    pub fn id(&self) -> Option<&str> {
        match self {
            PreIncidentBackup::Ok { id, .. } => Some(id),
            PreIncidentBackup::Failed { id, .. } => id.as_deref(),
        }
    }
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: Timestamp,
    pub by: String,
    /// `opened`, `note`, `status`, `expected_fix`, `severity`, `affected`, `cause`,
    /// `escalated`, `resolved`.
    pub kind: String,
    pub text: String,
    /// The status this entry moved the incident to, if it did.
    #[serde(default)]
    pub status: Option<IncidentStatus>,
}

/// An incident (the `incidents` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub title: Bilingual,
    #[serde(default)]
    pub description: String,
    pub severity: Severity,
    pub status: IncidentStatus,
    /// Service contexts affected (each existed when named).
    #[serde(default)]
    pub services: Vec<String>,
    /// Agencies named as affected (each existed when named).
    #[serde(default)]
    pub agencies: Vec<String>,
    /// Every agency affected: those named, the services' providers and the agencies of systems
    /// with an open subscription to them (recomputed at each change). Decides who is notified
    /// and which agency-admins see the incident.
    #[serde(default)]
    pub affected_agencies: Vec<String>,
    pub detected_at: Timestamp,
    pub opened_at: Timestamp,
    pub opened_by: String,
    #[serde(default)]
    pub expected_fix_at: Option<Timestamp>,
    /// Counts changes of the expected fix time; part of their notices' dedup keys.
    #[serde(default)]
    pub fix_revision: u32,
    #[serde(default)]
    pub cause: String,
    #[serde(default)]
    pub resolution: String,
    #[serde(default)]
    pub resolved_at: Option<Timestamp>,
    pub backup: PreIncidentBackup,
    /// Beyond the operator's capacity: Sở KH&CN and related units were asked to help
    /// (HP Art. 10.5e). Never reset.
    #[serde(default)]
    pub escalated: bool,
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
}

impl Incident {
    /// An incident report is due (HP Art. 10.5g): severity serious or above, or two or more
    /// agencies affected.
    pub fn serious(&self) -> bool {
        self.severity >= Severity::Serious || self.affected_agencies.len() >= 2
    }
    /// Detection to resolution.
    pub fn duration(&self) -> Option<Duration> {
        self.resolved_at.map(|r| r - self.detected_at)
    }
    /// Fixed within 24 hours of detection (HN Art. 16.10); `None` while open.
    pub fn fixed_in_time(&self) -> Option<bool> {
        self.duration().map(|d| d <= Duration::hours(FIX_WITHIN_HOURS))
    }
    /// Overlaps `[from, to)`: detected before `to`, and not resolved before `from`.
    pub fn overlaps(&self, from: Timestamp, to: Timestamp) -> bool {
        self.detected_at < to && self.resolved_at.is_none_or(|r| r >= from)
    }
    pub fn affects_agency(&self, code: &str) -> bool {
        self.affected_agencies.iter().any(|a| a == code)
    }
}

/// Incidents overlapping `[from, to)`, oldest first.
pub fn incidents_overlapping(state: &State, from: Timestamp, to: Timestamp) -> Vec<&Incident> {
    let mut v: Vec<&Incident> = state.incidents.values().filter(|i| i.overlaps(from, to)).collect();
    v.sort_by(|a, b| a.detected_at.cmp(&b.detected_at).then_with(|| a.id.cmp(&b.id)));
    v
}

/// The fields of `OpenIncident`.
pub struct NewIncident<'a> {
    pub id: &'a str,
    pub title: &'a Bilingual,
    pub description: &'a str,
    pub severity: Severity,
    pub services: &'a [String],
    pub agencies: &'a [String],
    pub detected_at: Timestamp,
    pub expected_fix_at: Option<Timestamp>,
    pub backup: &'a PreIncidentBackup,
}

/// The changes of `UpdateIncident`, also the body of `POST /api/v1/incidents/{id}/updates`:
/// a note and/or new values; `None` (or left out) keeps a field.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentChanges {
    /// A timeline note (with a status change, the text of that entry).
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub status: Option<IncidentStatus>,
    /// A new expected fix time: notified to those affected.
    #[serde(default)]
    pub expected_fix_at: Option<Timestamp>,
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Replaces the affected services.
    #[serde(default)]
    pub services: Option<Vec<String>>,
    /// Replaces the agencies named as affected.
    #[serde(default)]
    pub agencies: Option<Vec<String>>,
    #[serde(default)]
    pub cause: Option<String>,
    /// Beyond the operator's capacity: Sở KH&CN and related units asked to help (HP Art. 10.5e).
    #[serde(default)]
    pub escalate: bool,
}

fn entry(at: Timestamp, by: &str, kind: &str, text: String, status: Option<IncidentStatus>) -> TimelineEntry {
    TimelineEntry { at, by: by.to_owned(), kind: kind.to_owned(), text, status }
}

fn check_affected(state: &State, services: &[String], agencies: &[String]) -> Result<(), E> {
    // Unknown names are bad input (400), not a missing object: the incident itself is new.
    for (i, s) in services.iter().enumerate() {
        if !state.services.contains(s) {
            return Err(E::invalid(&format!("services[{i}]"), format!("no service with context {s:?}")));
        }
        if services[..i].contains(s) {
            return Err(E::invalid(&format!("services[{i}]"), format!("{s:?} is listed twice")));
        }
    }
    for (i, a) in agencies.iter().enumerate() {
        if !state.agencies.contains(a) {
            return Err(E::invalid(&format!("agencies[{i}]"), format!("no agency with code {a:?}")));
        }
        if agencies[..i].contains(a) {
            return Err(E::invalid(&format!("agencies[{i}]"), format!("{a:?} is listed twice")));
        }
    }
    Ok(())
}

fn check_expected_fix(expected: Timestamp, detected: Timestamp) -> Result<(), E> {
    if expected <= detected {
        return Err(E::invalid(
            "expected_fix_at",
            format!("{} is not after the detection time {}", rules::local_time(expected), rules::local_time(detected)),
        ));
    }
    Ok(())
}

/// Who an incident affects: named agencies plus the services' providers and open consumers.
fn affected(state: &State, inc: &Incident) -> (BTreeSet<String>, BTreeSet<String>, Vec<Contact>) {
    let (mut agencies, systems, contacts) = notice::affected(state, &MaintenanceScope::Services { services: inc.services.clone() });
    agencies.extend(inc.agencies.iter().cloned());
    (agencies, systems, contacts)
}

/// Checks an `OpenIncident` without applying it (the admin API checks before it makes the
/// pre-incident backup, so bad input costs no backup).
pub fn validate(state: &State, n: &NewIncident, at: Timestamp) -> Result<(), E> {
    rules::slug("id", n.id)?;
    if state.incidents.contains(n.id) {
        return Err(E::exists("incident", n.id));
    }
    rules::text("title.vi", &n.title.vi, MAX_TITLE)?;
    rules::text("title.en", &n.title.en, MAX_TITLE)?;
    if n.description.chars().count() > MAX_TEXT {
        return Err(E::invalid("description", format!("must be at most {MAX_TEXT} characters")));
    }
    check_affected(state, n.services, n.agencies)?;
    if n.detected_at > at + Duration::minutes(5) {
        return Err(E::invalid("detected_at", "is in the future"));
    }
    if let Some(x) = n.expected_fix_at {
        check_expected_fix(x, n.detected_at)?;
    }
    Ok(())
}

pub fn open(state: &mut State, n: NewIncident, at: Timestamp, by: &str) -> Result<(), E> {
    validate(state, &n, at)?;
    let backup_text = match n.backup {
        PreIncidentBackup::Ok { id, log_index, .. } => format!("pre-incident backup {id} at log index {log_index}"),
        PreIncidentBackup::Failed { error, .. } => format!("NO pre-incident backup: {error}"),
    };
    let mut inc = Incident {
        id: n.id.to_owned(),
        title: n.title.clone(),
        description: n.description.to_owned(),
        severity: n.severity,
        status: IncidentStatus::Open,
        services: n.services.to_vec(),
        agencies: n.agencies.to_vec(),
        affected_agencies: vec![],
        detected_at: n.detected_at,
        opened_at: at,
        opened_by: by.to_owned(),
        expected_fix_at: n.expected_fix_at,
        fix_revision: 0,
        cause: String::new(),
        resolution: String::new(),
        resolved_at: None,
        backup: n.backup.clone(),
        escalated: false,
        timeline: vec![entry(at, by, "opened", format!("opened ({}); {backup_text}", n.severity.as_str()), Some(IncidentStatus::Open))],
    };
    inc.affected_agencies = affected(state, &inc).0.into_iter().collect();
    notice::queue(state, incident_notice(state, &inc, Stage::Opened, at));
    state.incidents.put(inc);
    Ok(())
}

pub fn update(state: &mut State, id: &str, c: &IncidentChanges, at: Timestamp, by: &str) -> Result<(), E> {
    let mut inc = state.incidents.get(id).cloned().ok_or_else(|| E::not_found("incident", id))?;
    let resolved = inc.status == IncidentStatus::Resolved;
    if resolved
        && (c.status.is_some()
            || c.expected_fix_at.is_some()
            || c.severity.is_some()
            || c.services.is_some()
            || c.agencies.is_some()
            || c.escalate)
    {
        return Err(E::conflict("INCIDENT_RESOLVED", format!("incident {id} is resolved: only notes and the cause can change")));
    }
    if !c.note.is_empty() {
        rules::text("note", &c.note, MAX_TEXT)?;
    }
    let before = inc.clone();
    let mut entries = Vec::new();
    if let Some(s) = c.status {
        if s == IncidentStatus::Resolved {
            return Err(E::invalid("status", "resolve the incident with its resolution (POST /api/v1/incidents/{id}/resolve)"));
        }
        if s != inc.status {
            if s < inc.status && !(inc.status == IncidentStatus::Monitoring && s == IncidentStatus::Fixing) {
                return Err(E::invalid(
                    "status",
                    format!("cannot go back from {} to {} (only monitoring → fixing)", inc.status.as_str(), s.as_str()),
                ));
            }
            inc.status = s;
            let text = if c.note.is_empty() { format!("status: {}", s.words()) } else { c.note.clone() };
            entries.push(entry(at, by, "status", text, Some(s)));
        }
    }
    if !c.note.is_empty() && !entries.iter().any(|e| e.kind == "status") {
        entries.push(entry(at, by, "note", c.note.clone(), None));
    }
    if let Some(sev) = c.severity.filter(|s| *s != inc.severity) {
        entries.push(entry(at, by, "severity", format!("severity {} → {}", inc.severity.as_str(), sev.as_str()), None));
        inc.severity = sev;
    }
    if c.services.is_some() || c.agencies.is_some() {
        let services = c.services.as_deref().unwrap_or(&before.services);
        let agencies = c.agencies.as_deref().unwrap_or(&before.agencies);
        check_affected(state, services, agencies)?;
        if services != before.services.as_slice() || agencies != before.agencies.as_slice() {
            inc.services = services.to_vec();
            inc.agencies = agencies.to_vec();
            entries.push(entry(
                at,
                by,
                "affected",
                format!("affected services: [{}]; agencies: [{}]", inc.services.join(", "), inc.agencies.join(", ")),
                None,
            ));
        }
    }
    if let Some(cause) = c.cause.as_deref().filter(|x| *x != inc.cause) {
        rules::text("cause", cause, MAX_TEXT)?;
        inc.cause = cause.to_owned();
        entries.push(entry(at, by, "cause", format!("cause: {cause}"), None));
    }
    if c.escalate && !inc.escalated {
        inc.escalated = true;
        entries.push(entry(
            at,
            by,
            "escalated",
            "beyond the operator's capacity: Sở KH&CN and related units asked to help (HP Art. 10.5e)".into(),
            None,
        ));
    }
    let fix_changed = c.expected_fix_at.is_some_and(|x| Some(x) != inc.expected_fix_at);
    if let Some(x) = c.expected_fix_at.filter(|_| fix_changed) {
        check_expected_fix(x, inc.detected_at)?;
        let old = inc.expected_fix_at.map_or("—".to_owned(), rules::local_time);
        entries.push(entry(at, by, "expected_fix", format!("expected fix time {old} → {}", rules::local_time(x)), None));
        inc.expected_fix_at = Some(x);
        inc.fix_revision += 1;
    }
    if entries.is_empty() {
        return Err(E::invalid(
            "body",
            "changes nothing: give a note, a status, an expected fix time, a severity, affected services or agencies, a cause, or escalate",
        ));
    }
    inc.timeline.extend(entries);
    inc.affected_agencies = affected(state, &inc).0.into_iter().collect();
    if fix_changed {
        // Those affected before the change are told too.
        let mut n = incident_notice(state, &inc, Stage::FixChanged(inc.fix_revision), at);
        let old = incident_notice(state, &before, Stage::FixChanged(inc.fix_revision), at);
        let have: BTreeSet<Channel> = n.deliveries.iter().map(|d| d.channel.clone()).collect();
        n.deliveries.extend(old.deliveries.into_iter().filter(|d| !have.contains(&d.channel)));
        notice::queue(state, n);
    }
    state.incidents.put(inc);
    Ok(())
}

pub fn resolve(state: &mut State, id: &str, resolution: &str, cause: Option<&str>, at: Timestamp, by: &str) -> Result<(), E> {
    let mut inc = state.incidents.get(id).cloned().ok_or_else(|| E::not_found("incident", id))?;
    if inc.status == IncidentStatus::Resolved {
        return Err(E::conflict("INCIDENT_RESOLVED", format!("incident {id} is already resolved")));
    }
    rules::text("resolution", resolution, MAX_TEXT)?;
    if let Some(c) = cause {
        rules::text("cause", c, MAX_TEXT)?;
        inc.cause = c.to_owned();
    }
    if at < inc.detected_at {
        return Err(E::invalid("resolved_at", "is before the detection time"));
    }
    inc.status = IncidentStatus::Resolved;
    inc.resolution = resolution.to_owned();
    inc.resolved_at = Some(at);
    let hours = (at - inc.detected_at).num_minutes() as f64 / 60.0;
    inc.timeline.push(entry(at, by, "resolved", format!("resolved after {hours:.1} h: {resolution}"), Some(IncidentStatus::Resolved)));
    notice::queue(state, incident_notice(state, &inc, Stage::Resolved, at));
    state.incidents.put(inc);
    Ok(())
}

/// Moments of an incident that produce a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Opened,
    /// The expected fix time changed (its revision).
    FixChanged(u32),
    Resolved,
}

/// The notice to those affected: what happened, the expected fix time (HP Art. 10.5f), or the
/// resolution; Vietnamese then English.
pub fn incident_notice(state: &State, inc: &Incident, stage: Stage, at: Timestamp) -> Notice {
    let (agencies, systems, contacts) = affected(state, inc);
    let (key, kind, vi_word, en_word) = match stage {
        Stage::Opened => ("opened".to_owned(), "incident.opened", "Thông báo sự cố", "Incident"),
        Stage::FixChanged(r) => (
            format!("expected-fix-{r}"),
            "incident.expected_fix_changed",
            "Thay đổi thời gian dự kiến khắc phục sự cố",
            "Expected fix time changed",
        ),
        Stage::Resolved => ("resolved".to_owned(), "incident.resolved", "Đã khắc phục sự cố", "Incident resolved"),
    };
    let sev = inc.severity.words();
    let fix = inc.expected_fix_at.map(rules::local_time);
    let services = if inc.services.is_empty() { "—".to_owned() } else { inc.services.join(", ") };
    let mut vi = format!(
        "{vi_word}: {} ({})\nMức độ: {}\nPhát hiện lúc: {}\nDịch vụ bị ảnh hưởng: {services}\n",
        inc.title.vi,
        inc.id,
        sev.vi,
        rules::local_time(inc.detected_at)
    );
    let mut en = format!(
        "{en_word}: {} ({})\nSeverity: {}\nDetected at: {}\nServices affected: {services}\n",
        inc.title.en,
        inc.id,
        sev.en,
        rules::local_time(inc.detected_at)
    );
    match (stage, &fix) {
        (Stage::Resolved, _) => {
            let at_s = inc.resolved_at.map(rules::local_time).unwrap_or_default();
            vi.push_str(&format!("Khắc phục xong lúc: {at_s}\nBiện pháp: {}\n", inc.resolution));
            en.push_str(&format!("Fixed at: {at_s}\nResolution: {}\n", inc.resolution));
        }
        (_, Some(f)) => {
            vi.push_str(&format!("Thời gian dự kiến khắc phục xong: {f}\n"));
            en.push_str(&format!("Expected fix time: {f}\n"));
        }
        (_, None) => {
            vi.push_str("Thời gian dự kiến khắc phục xong: chưa xác định, sẽ được thông báo.\n");
            en.push_str("Expected fix time: not known yet; it will be notified.\n");
        }
    }
    let subject_tail = match (stage, &fix) {
        (Stage::Resolved, _) => (String::new(), String::new()),
        (_, Some(f)) => (format!(" (dự kiến khắc phục {f})"), format!(" (expected fix {f})")),
        (_, None) => (String::new(), String::new()),
    };
    Notice {
        id: format!("incident/{}/{key}", inc.id),
        kind: kind.into(),
        subject: Bilingual {
            vi: format!("[LGSP] {vi_word}: {}{}", inc.title.vi, subject_tail.0),
            en: format!("[LGSP] {en_word}: {}{}", inc.title.en, subject_tail.1),
        },
        body: Bilingual { vi, en },
        data: json!({
            "incident": inc.id,
            "stage": key,
            "severity": inc.severity,
            "status": inc.status,
            "services": inc.services,
            "agencies": inc.affected_agencies,
            "detected_at": inc.detected_at,
            "expected_fix_at": inc.expected_fix_at,
            "resolved_at": inc.resolved_at,
            "escalated": inc.escalated,
        }),
        created_at: at,
        deliveries: notice::recipients(state, &agencies, &systems, &contacts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap()
    }

    fn title() -> Bilingual {
        Bilingual { vi: "Mất kết nối CSDL dân cư".into(), en: "Population DB unreachable".into() }
    }

    fn ok_backup() -> PreIncidentBackup {
        PreIncidentBackup::Ok { id: "b1".into(), log_index: 7, node: 1, file: "/b/x.lgspbak".into() }
    }

    fn opened(s: &mut State, id: &str, fix: Option<Timestamp>) -> Result<(), E> {
        let (ti, b) = (title(), ok_backup());
        let n = NewIncident {
            id,
            title: &ti,
            description: "",
            severity: Severity::Normal,
            services: &[],
            agencies: &[],
            detected_at: t(1),
            expected_fix_at: fix,
            backup: &b,
        };
        open(s, n, t(2), "op")
    }

    #[test]
    fn open_validates_and_notifies_the_expected_fix() {
        let mut s = State::default();
        let e = opened(&mut s, "i1", Some(t(0))).unwrap_err();
        assert_eq!(e.code(), "INVALID_INPUT");
        assert!(e.to_string().contains("expected_fix_at"), "{e}");
        let (ti, b) = (Bilingual { vi: " ".into(), en: "x".into() }, ok_backup());
        let n = NewIncident {
            id: "i1",
            title: &ti,
            description: "",
            severity: Severity::Normal,
            services: &["ghost".into()],
            agencies: &[],
            detected_at: t(1),
            expected_fix_at: None,
            backup: &b,
        };
        assert!(open(&mut s, n, t(2), "op").unwrap_err().to_string().contains("title.vi"));
        opened(&mut s, "i1", Some(t(6))).unwrap();
        let n = s.notices.get("incident/i1/opened").expect("opening notice");
        assert!(n.body.vi.contains("dự kiến") && n.body.en.contains("Expected fix time"), "{n:?}");
        assert_eq!(opened(&mut s, "i1", None).unwrap_err().code(), "ALREADY_EXISTS");
        assert!(!s.incidents.get("i1").unwrap().serious());
    }

    #[test]
    fn updates_are_timeline_entries_and_fix_changes_are_notices() {
        let mut s = State::default();
        opened(&mut s, "i1", None).unwrap();
        let c = IncidentChanges { note: "cut off the upstream".into(), status: Some(IncidentStatus::Isolated), ..Default::default() };
        update(&mut s, "i1", &c, t(3), "op").unwrap();
        let c = IncidentChanges { expected_fix_at: Some(t(9)), ..Default::default() };
        update(&mut s, "i1", &c, t(3), "op").unwrap();
        assert!(s.notices.contains("incident/i1/expected-fix-1"));
        let c = IncidentChanges { expected_fix_at: Some(t(9)), ..Default::default() };
        assert_eq!(update(&mut s, "i1", &c, t(4), "op").unwrap_err().code(), "INVALID_INPUT", "same time: nothing changes");
        let c = IncidentChanges { status: Some(IncidentStatus::Open), ..Default::default() };
        assert!(update(&mut s, "i1", &c, t(4), "op").unwrap_err().to_string().contains("cannot go back"));
        let c = IncidentChanges {
            status: Some(IncidentStatus::Monitoring),
            severity: Some(Severity::Serious),
            escalate: true,
            ..Default::default()
        };
        update(&mut s, "i1", &c, t(4), "op").unwrap();
        let c = IncidentChanges { status: Some(IncidentStatus::Fixing), ..Default::default() };
        update(&mut s, "i1", &c, t(5), "op").expect("monitoring → fixing is a relapse, allowed");
        let i = s.incidents.get("i1").unwrap();
        let kinds: Vec<&str> = i.timeline.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["opened", "status", "expected_fix", "status", "severity", "escalated", "status"]);
        assert!(i.serious() && i.escalated);
    }

    #[test]
    fn resolve_measures_the_24_hours_and_freezes_the_record() {
        let mut s = State::default();
        opened(&mut s, "i1", Some(t(5))).unwrap();
        resolve(&mut s, "i1", "restarted the pool", Some("connection leak"), t(20), "op").unwrap();
        let i = s.incidents.get("i1").unwrap().clone();
        assert_eq!((i.status, i.fixed_in_time(), i.cause.as_str()), (IncidentStatus::Resolved, Some(true), "connection leak"));
        assert!(s.notices.contains("incident/i1/resolved"));
        assert_eq!(resolve(&mut s, "i1", "again", None, t(21), "op").unwrap_err().code(), "INCIDENT_RESOLVED");
        let c = IncidentChanges { expected_fix_at: Some(t(22)), ..Default::default() };
        assert_eq!(update(&mut s, "i1", &c, t(21), "op").unwrap_err().code(), "INCIDENT_RESOLVED");
        let c = IncidentChanges { note: "post-mortem written".into(), ..Default::default() };
        update(&mut s, "i1", &c, t(21), "op").expect("notes after resolution");
        let later = Incident { resolved_at: Some(t(1) + Duration::hours(25)), ..i };
        assert_eq!(later.fixed_in_time(), Some(false));
        assert!(later.overlaps(t(23), t(23) + Duration::days(1)) && !later.overlaps(t(0), t(1)));
    }
}
