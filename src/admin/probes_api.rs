//! Health probe endpoints (issue 6): set and clear the probe of a system or a service
//! version, list every probe with its replicated status and the cluster's latest result,
//! history (hourly or daily aggregates plus status-change events) and uptime per day and month.
//!
//! Invariants: changes are registry commands (`SetProbe`, `ClearProbe`) proposed like every
//! other change; an agency-admin sees and changes only its own agency's probes (others answer
//! 404); latest results come from the node's probe service (gossiped cluster-wide) and history
//! from its `probes.redb`, which holds every node's results it heard.

use axum::extract::{Path, State};
use axum::routing::{delete, get, put};
use axum::Json;
use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::{ApiError, ApiJson, ApiQuery, Endpoint, Shared};
use crate::probes::history::Aggregate;
use crate::registry::{Command, ProbeOwner, ProbeSpec, State as Registry};

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "get",
            path: "/api/v1/probes",
            summary: "Every health probe: spec, owning system and agency, replicated status, the latest result (from whichever node probes it)",
            roles: "operator, auditor, agency-admin (own agency)",
            handler: || get(list),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/probes/{target}/history",
            summary: "A probe's aggregates (?granularity=hourly|daily, ?from=&to= RFC 3339, default the last 7 days) and its status-change events",
            roles: "operator, auditor, agency-admin (own agency)",
            handler: || get(history),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/systems/{id}/uptime",
            summary: "Uptime per day and for the month (?month=YYYY-MM, default this month, UTC) of a system's probes and its service versions'",
            roles: "operator, auditor, agency-admin (own agency)",
            handler: || get(uptime),
        },
        Endpoint {
            method: "put",
            path: "/api/v1/systems/{id}/probe",
            summary: "Set the system's health probe ({kind: http|tcp|tls, target, interval_s, timeout_ms, expect_status, tls_warn_days})",
            roles: "operator, agency-admin (own agency)",
            handler: || put(set_system),
        },
        Endpoint {
            method: "delete",
            path: "/api/v1/systems/{id}/probe",
            summary: "Remove the system's health probe",
            roles: "operator, agency-admin (own agency)",
            handler: || delete(clear_system),
        },
        Endpoint {
            method: "put",
            path: "/api/v1/services/{context}/versions/{version}/probe",
            summary: "Set a service version's health probe",
            roles: "operator, agency-admin (provider's agency)",
            handler: || put(set_version),
        },
        Endpoint {
            method: "delete",
            path: "/api/v1/services/{context}/versions/{version}/probe",
            summary: "Remove a service version's health probe",
            roles: "operator, agency-admin (provider's agency)",
            handler: || delete(clear_version),
        },
    ]
}

fn internal(message: String) -> ApiError {
    tracing::error!(error = %message, "probe history read failed");
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", format!("{message}; see the node's log"))
}

/// The owning system of an owner, if it exists and `p` may see it.
fn owner_system(reg: &Registry, p: &Principal, owner: &ProbeOwner) -> Result<String, ApiError> {
    let system = match owner {
        ProbeOwner::System { id } => reg.systems.get(id).map(|s| s.id.clone()),
        ProbeOwner::Version { service, version } => {
            reg.services.get(service).filter(|s| s.versions.contains_key(version)).map(|s| s.provider_system.clone())
        }
    };
    match system {
        Some(s) if p.sees_system(reg, &s) => Ok(s),
        _ => Err(ApiError::not_found("probe owner", &owner.target_id())),
    }
}

/// Writers only, and among agency admins only the owning agency's.
fn may_change(st: &Shared, p: &Principal, owner: &ProbeOwner) -> Result<(), ApiError> {
    p.require_write()?;
    let reg = st.store.read();
    let sys = owner_system(&reg, p, owner)?;
    if !p.owns_system(&reg, &sys) {
        return Err(ApiError::forbidden("only an operator or the owning agency's admin may change a probe"));
    }
    Ok(())
}

async fn set(st: Shared, p: Principal, owner: ProbeOwner, spec: ProbeSpec) -> Result<Json<Value>, ApiError> {
    may_change(&st, &p, &owner)?;
    let target = owner.target_id();
    st.propose(p.actor(), Command::SetProbe { owner, spec: spec.clone() }).await?;
    Ok(Json(json!({ "target": target, "spec": spec })))
}

async fn clear(st: Shared, p: Principal, owner: ProbeOwner) -> Result<Json<Value>, ApiError> {
    may_change(&st, &p, &owner)?;
    let target = owner.target_id();
    st.propose(p.actor(), Command::ClearProbe { owner }).await?;
    Ok(Json(json!({ "target": target, "cleared": true })))
}

async fn set_system(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<ProbeSpec>,
) -> Result<Json<Value>, ApiError> {
    set(st, p, ProbeOwner::System { id }, spec).await
}

async fn clear_system(State(st): State<Shared>, p: Principal, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    clear(st, p, ProbeOwner::System { id }).await
}

async fn set_version(
    State(st): State<Shared>,
    p: Principal,
    Path((service, version)): Path<(String, String)>,
    ApiJson(spec): ApiJson<ProbeSpec>,
) -> Result<Json<Value>, ApiError> {
    set(st, p, ProbeOwner::Version { service, version }, spec).await
}

async fn clear_version(
    State(st): State<Shared>,
    p: Principal,
    Path((service, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    clear(st, p, ProbeOwner::Version { service, version }).await
}

async fn list(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    let latest = st.probes.get().map(|s| s.latest()).unwrap_or_default();
    let mut here = st.probes.get().map(|s| s.mine()).unwrap_or_default();
    let reg = st.store.read();
    let mut items = Vec::new();
    for t in reg.probe_targets() {
        if !p.sees_agency(t.agency) {
            continue;
        }
        let status = reg.probe_status.get(&t.target);
        items.push(json!({
            "target": t.target,
            "system": t.system,
            "agency": t.agency,
            "spec": t.spec,
            "status": status.map(|s| s.status),
            "since": status.map(|s| s.since),
            "flapping": status.is_some_and(|s| s.flapping),
            "latest": latest.get(&t.target),
        }));
    }
    let total = items.len();
    let visible: std::collections::HashSet<String> =
        reg.probe_targets().into_iter().filter(|x| p.sees_agency(x.agency)).map(|x| x.target).collect();
    here.retain(|t| visible.contains(t));
    let node = st.cluster.local_status().nodes.into_iter().find(|n| n.id == st.cluster.id).map(|n| n.info.name);
    Ok(Json(json!({ "items": items, "total": total, "node": node, "probing_here": here })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    granularity: Option<String>,
    #[serde(default)]
    from: Option<chrono::DateTime<Utc>>,
    #[serde(default)]
    to: Option<chrono::DateTime<Utc>>,
}

fn agg_json(start: i64, a: &Aggregate) -> Value {
    json!({
        "start": chrono::DateTime::from_timestamp(start, 0),
        "checks": a.checks,
        "up": a.up,
        "degraded": a.degraded,
        "down": a.down,
        "uptime": a.uptime(),
        "latency_avg_ms": (a.checks > 0).then(|| a.latency_sum_ms / a.checks),
        "latency_max_ms": a.latency_max_ms,
    })
}

/// The probe `target` if it exists and `p` may see it.
fn visible_target(st: &Shared, p: &Principal, target: &str) -> Result<(), ApiError> {
    let reg = st.store.read();
    let owner = ProbeOwner::parse(target).ok_or_else(|| ApiError::not_found("probe", target))?;
    owner_system(&reg, p, &owner)?;
    Ok(())
}

async fn history(
    State(st): State<Shared>,
    p: Principal,
    Path(target): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    visible_target(&st, &p, &target)?;
    let Some(svc) = st.probes.get().cloned() else {
        return Err(ApiError::not_found("probe history", &target));
    };
    let to = q.to.unwrap_or_else(Utc::now).timestamp();
    let from = q.from.map_or(to - 7 * 86_400, |f| f.timestamp());
    let daily = match q.granularity.as_deref() {
        None | Some("hourly") => false,
        Some("daily") => true,
        Some(other) => return Err(ApiError::invalid("granularity", format!("{other:?} is neither hourly nor daily"))),
    };
    let t = target.clone();
    let rows =
        tokio::task::spawn_blocking(move || if daily { svc.history().daily(&t, from, to) } else { svc.history().hourly(&t, from, to) })
            .await
            .map_err(|e| internal(format!("history read failed: {e}")))?
            .map_err(|e| internal(e.to_string()))?;
    let events = st.store.read().probe_status.get(&target).map(|s| s.events.clone()).unwrap_or_default();
    let mut total = Aggregate::default();
    for (_, a) in &rows {
        total.merge(a);
    }
    Ok(Json(json!({
        "target": target,
        "granularity": if daily { "daily" } else { "hourly" },
        "from": chrono::DateTime::from_timestamp(from, 0),
        "to": chrono::DateTime::from_timestamp(to, 0),
        "rows": rows.iter().map(|(s, a)| agg_json(*s, a)).collect::<Vec<_>>(),
        "total": agg_json(from, &total),
        "events": events,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UptimeQuery {
    #[serde(default)]
    month: Option<String>,
}

async fn uptime(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<UptimeQuery>,
) -> Result<Json<Value>, ApiError> {
    let targets: Vec<String> = {
        let reg = st.store.read();
        if !reg.systems.contains(&id) || !p.sees_system(&reg, &id) {
            return Err(ApiError::not_found("system", &id));
        }
        reg.probe_targets().into_iter().filter(|t| t.system == id).map(|t| t.target).collect()
    };
    let today = Utc::now().date_naive();
    let first = match &q.month {
        None => NaiveDate::from_ymd_opt(today.year(), today.month(), 1),
        Some(m) => NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d").ok(),
    }
    .ok_or_else(|| ApiError::invalid("month", "must be YYYY-MM, e.g. 2026-11"))?;
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    }
    .ok_or_else(|| ApiError::invalid("month", "out of range"))?;
    let ts = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map_or(0, |dt| Utc.from_utc_datetime(&dt).timestamp());
    let (from, to) = (ts(first), ts(next));
    let Some(svc) = st.probes.get().cloned() else {
        return Ok(Json(json!({ "system": id, "month": first.format("%Y-%m").to_string(), "targets": [] })));
    };
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for t in targets {
            let days = svc.history().daily(&t, from, to).map_err(|e| e.to_string())?;
            let mut month = Aggregate::default();
            for (_, a) in &days {
                month.merge(a);
            }
            out.push(json!({
                "target": t,
                "month": agg_json(from, &month),
                "days": days.iter().map(|(s, a)| json!({
                    "day": chrono::DateTime::from_timestamp(*s, 0).map(|d| d.date_naive().to_string()),
                    "checks": a.checks,
                    "uptime": a.uptime(),
                })).collect::<Vec<_>>(),
            }));
        }
        Ok(out)
    })
    .await
    .map_err(|e| internal(format!("uptime read failed: {e}")))?
    .map_err(internal)?;
    Ok(Json(json!({ "system": id, "month": first.format("%Y-%m").to_string(), "targets": out })))
}
