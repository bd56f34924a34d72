//! The incident log (O5): open (after a pre-incident backup, HP Art. 10.5c), update, resolve,
//! list, show, and the incident report of a serious incident (HP Art. 10.5g).
//!
//! Invariants: operators write; auditors read; an agency-admin sees only incidents affecting
//! its agency (others answer 404, as if they did not exist). Opening first checks the input
//! (bad input makes no backup), then proposes the `Backup` cluster command through
//! `backup_api::backup_now` and waits for this node's file, and only then proposes
//! `OpenIncident` with the backup's id — or, if the backup failed or did not finish in time,
//! with the failure: the incident is recorded either way and the answer says so loudly.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::backup_api::{backup_now, BackupOutcome, WAIT};
use super::{page, ApiError, ApiJson, ApiQuery, Endpoint, Shared};
use crate::registry::incident::{self, Incident, IncidentChanges, IncidentStatus, PreIncidentBackup, Severity};
use crate::registry::{Bilingual, Command, Timestamp};

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "get",
            path: "/api/v1/incidents",
            summary: "The incident log, newest first (?open=true: not resolved yet); agency-admins see incidents affecting their agency",
            roles: "any (agency-admin: own agency's)",
            handler: || get(list),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/incidents",
            summary: "Open an incident: backs up every node first (reason `pre-incident: <title>`), then records the incident with the backup's id (or the backup's failure); those affected are told the expected fix time",
            roles: "operator",
            handler: || post(open),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/incidents/{id}",
            summary: "Show an incident with its timeline",
            roles: "any (agency-admin: own agency's)",
            handler: || get(show),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/incidents/{id}/updates",
            summary: "Add a timeline entry: a note, a status, a new expected fix time (notified), severity, affected services or agencies, cause, escalation",
            roles: "operator",
            handler: || post(update),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/incidents/{id}/resolve",
            summary: "Resolve an incident ({\"resolution\": ..., \"cause\"?: ...}); those affected are notified",
            roles: "operator",
            handler: || post(resolve),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/incidents/{id}/report",
            summary: "The incident report (?format=html|json): timeline, affected, backup, cause, resolution, duration, fixed within 24 h",
            roles: "any (agency-admin: own agency's)",
            handler: || get(report),
        },
    ]
}

/// Whether `p` may see `inc` (agency-admins: only incidents affecting their agency).
fn visible(p: &Principal, inc: &Incident) -> bool {
    p.is_operator() || p.agency.is_none() || p.agency.as_deref().is_some_and(|a| inc.affects_agency(a))
}

/// An incident as the API shows it, with the figures derived from it at `now`.
fn incident_json(inc: &Incident, now: Timestamp) -> Value {
    let mut v = json!(inc);
    v["serious"] = inc.serious().into();
    v["report_required"] = inc.serious().into();
    v["fixed_within_24h"] = json!(inc.fixed_in_time());
    v["duration_hours"] = json!(inc.duration().map(|d| (d.num_minutes() as f64 / 60.0 * 10.0).round() / 10.0));
    v["fix_overdue"] = json!(inc.resolved_at.is_none() && inc.expected_fix_at.is_some_and(|x| x < now));
    v
}

fn find(st: &Shared, p: &Principal, id: &str) -> Result<Incident, ApiError> {
    st.store.read().incidents.get(id).filter(|i| visible(p, i)).cloned().ok_or_else(|| ApiError::not_found("incident", id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only incidents not resolved yet.
    #[serde(default)]
    open: Option<bool>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<ListQuery>) -> Json<Value> {
    let reg = st.store.read();
    let now = Utc::now();
    let mut items: Vec<&Incident> =
        reg.incidents.values().filter(|i| visible(&p, i) && (q.open != Some(true) || i.status != IncidentStatus::Resolved)).collect();
    items.sort_by(|a, b| b.detected_at.cmp(&a.detected_at).then_with(|| a.id.cmp(&b.id)));
    Json(page(items.into_iter().map(|i| incident_json(i, now)).collect(), q.offset, q.limit))
}

async fn show(State(st): State<Shared>, p: Principal, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(incident_json(&find(&st, &p, &id)?, Utc::now())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    /// A slug; generated when left out.
    #[serde(default)]
    id: Option<String>,
    title: Bilingual,
    #[serde(default)]
    description: String,
    severity: Severity,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    agencies: Vec<String>,
    /// When the incident was detected (default: now).
    #[serde(default)]
    detected_at: Option<Timestamp>,
    #[serde(default)]
    expected_fix_at: Option<Timestamp>,
}

/// The reason written into the pre-incident backup's manifest and the admin audit trail.
fn backup_reason(title: &Bilingual, id: &str) -> String {
    let reason = format!("pre-incident: {} ({id})", title.vi.trim());
    reason.chars().take(500).collect()
}

async fn open(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<OpenBody>) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require_operator("open incidents")?;
    let now = Utc::now();
    let id = b.id.unwrap_or_else(|| crate::secrets::new_id("inc"));
    let detected_at = b.detected_at.unwrap_or(now);
    {
        let reg = st.store.read();
        let n = incident::NewIncident {
            id: &id,
            title: &b.title,
            description: &b.description,
            severity: b.severity,
            services: &b.services,
            agencies: &b.agencies,
            detected_at,
            expected_fix_at: b.expected_fix_at,
            backup: &PreIncidentBackup::Failed { error: String::new(), id: None },
        };
        incident::validate(&reg, &n, now)?;
    }
    // HP Art. 10.5c: important data is backed up before the incident is handled.
    let backup = match backup_now(&st, &p, &backup_reason(&b.title, &id), WAIT).await {
        Ok(BackupOutcome::Written { id, index, file, .. }) => {
            PreIncidentBackup::Ok { id, log_index: index, node: st.cluster.id, file: file.display().to_string() }
        }
        Ok(BackupOutcome::FileFailed { id, index, error }) => PreIncidentBackup::Failed {
            error: format!("backup {id} (log index {index}) was recorded but this node could not write its file: {error}"),
            id: Some(id),
        },
        Ok(BackupOutcome::Pending { id, index }) => PreIncidentBackup::Failed {
            error: format!(
                "backup {id} (log index {index}) was not written on this node within {} s; it may still complete (see `lgsp backup list`)",
                WAIT.as_secs()
            ),
            id: Some(id),
        },
        Err(e) => PreIncidentBackup::Failed { error: format!("{}: {}", e.code, e.message), id: None },
    };
    if let PreIncidentBackup::Failed { error, .. } = &backup {
        tracing::error!(incident = %id, error = %error, "pre-incident backup failed; recording the incident without it");
    }
    st.propose(
        p.actor(),
        Command::OpenIncident {
            id: id.clone(),
            title: b.title,
            description: b.description,
            severity: b.severity,
            services: b.services,
            agencies: b.agencies,
            detected_at,
            expected_fix_at: b.expected_fix_at,
            backup: backup.clone(),
        },
    )
    .await?;
    let mut v = incident_json(&find(&st, &p, &id)?, Utc::now());
    if let PreIncidentBackup::Failed { error, .. } = &backup {
        v["warnings"] = json!([format!(
            "NO PRE-INCIDENT BACKUP (HP Art. 10.5c): {error}. The incident is recorded. Before changing anything, make a backup now \
             (`lgsp backup create --reason \"pre-incident: {id}\"`) and check `lgsp backup list`; note its id in the incident \
             (`lgsp incident update {id} --note ...`)."
        )]);
    }
    Ok((StatusCode::CREATED, Json(v)))
}

async fn update(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(changes): ApiJson<IncidentChanges>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("update incidents")?;
    st.propose(p.actor(), Command::UpdateIncident { id: id.clone(), changes }).await?;
    Ok(Json(incident_json(&find(&st, &p, &id)?, Utc::now())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    resolution: String,
    #[serde(default)]
    cause: Option<String>,
}

async fn resolve(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ResolveBody>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("resolve incidents")?;
    st.propose(p.actor(), Command::ResolveIncident { id: id.clone(), resolution: b.resolution, cause: b.cause }).await?;
    Ok(Json(incident_json(&find(&st, &p, &id)?, Utc::now())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    #[serde(default)]
    format: Option<String>,
}

async fn report(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> Result<Response, ApiError> {
    let format = q.format.as_deref().unwrap_or("html");
    if !matches!(format, "html" | "json") {
        return Err(ApiError::invalid("format", format!("{format:?} is not html or json")));
    }
    let inc = find(&st, &p, &id)?;
    let built = {
        let reg = st.store.read();
        crate::report::incident_report::build(&inc, &reg, Utc::now())
    };
    Ok(if format == "json" {
        Json(built).into_response()
    } else {
        let html = crate::report::incident_report::html(&built);
        super::report_api::attachment("text/html; charset=utf-8", &format!("lgsp-incident-{}.html", inc.id), html)
    })
}
