//! Endpoints over the transaction audit log (G8, G9): search, verification of the hash chain
//! and signatures, and the daily reconciliation counts as JSON or CSV, compared with a
//! provider's or consumer's CSV.
//!
//! Visibility: operators and auditors see every record; an agency-admin sees the records where
//! its agency is the consumer or the provider. Verification is for operators and auditors.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::{ApiError, ApiQuery, Endpoint, Shared};
use crate::audit::{self, AuditRecord, CountRow, SearchFilter};
use crate::registry::Role;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
}

fn audit_unavailable(e: audit::AuditError) -> ApiError {
    tracing::error!(error = %e, "audit log unreadable");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "AUDIT_UNAVAILABLE", format!("the audit log could not be read: {e}"))
}

/// Keeps what an agency-admin may see: its agency as consumer or as provider.
fn scope(st: &Shared, p: &Principal, records: Vec<AuditRecord>) -> Vec<AuditRecord> {
    if p.role != Role::AgencyAdmin {
        return records;
    }
    let own = p.agency.clone().unwrap_or_default();
    let reg = st.store.read();
    records.into_iter().filter(|r| r.consumer_agency == own || reg.provider_agency(&r.service) == Some(own.as_str())).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    #[serde(default)]
    from: Option<DateTime<Utc>>,
    #[serde(default)]
    to: Option<DateTime<Utc>>,
    #[serde(default)]
    consumer_agency: Option<String>,
    #[serde(default)]
    consumer_system: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    status_min: Option<u16>,
    #[serde(default)]
    status_max: Option<u16>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    txn_id: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn search(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<SearchQuery>) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).min(100_000);
    let filter = SearchFilter {
        from: q.from,
        to: q.to,
        node: None,
        consumer_agency: q.consumer_agency,
        consumer_system: q.consumer_system,
        service: q.service,
        version: q.version,
        environment: q.environment,
        status_min: q.status_min,
        status_max: q.status_max,
        outcome: q.outcome,
        txn_id: q.txn_id,
        // Agency-admins' results are filtered afterwards, so read more than asked.
        limit: if p.role == Role::AgencyAdmin { None } else { Some(limit) },
    };
    if let Some(log) = &st.audit {
        log.flush().await.map_err(audit_unavailable)?;
    }
    let dir = st.audit_dir.clone();
    let found = tokio::task::spawn_blocking(move || audit::search(&dir, &filter)).await.map_err(internal)?.map_err(audit_unavailable)?;
    let mut items = scope(&st, &p, found);
    items.truncate(limit);
    Ok(Json(json!({ "items": items })))
}

async fn verify(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require_reader("verify the audit log")?;
    // Sign the tail first so that a live node's newest records are covered too.
    let key = match &st.audit {
        Some(log) => {
            log.checkpoint().await.map_err(audit_unavailable)?;
            Some(log.public_key())
        }
        None => None,
    };
    let dir = st.audit_dir.clone();
    let report =
        tokio::task::spawn_blocking(move || audit::verify(&dir, None, key.as_ref())).await.map_err(internal)?.map_err(audit_unavailable)?;
    let text = report.to_string();
    Ok(Json(json!({ "ok": report.ok(), "report": report, "text": text })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DayQuery {
    date: NaiveDate,
    #[serde(default)]
    format: Option<String>,
}

async fn counts(st: &Shared, p: &Principal, date: NaiveDate) -> Result<Vec<CountRow>, ApiError> {
    if let Some(log) = &st.audit {
        log.flush().await.map_err(audit_unavailable)?;
    }
    let dir = st.audit_dir.clone();
    let rows = tokio::task::spawn_blocking(move || audit::daily_counts(&dir, date)).await.map_err(internal)?.map_err(audit_unavailable)?;
    if p.role != Role::AgencyAdmin {
        return Ok(rows);
    }
    let own = p.agency.clone().unwrap_or_default();
    let reg = st.store.read();
    Ok(rows.into_iter().filter(|r| r.consumer_agency == own || reg.provider_agency(&r.service) == Some(own.as_str())).collect())
}

fn csv_response(name: &str, body: String) -> Response {
    let disposition = format!("attachment; filename=\"{name}\"");
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, disposition)], body)
        .into_response()
}

async fn reconciliation(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<DayQuery>) -> Result<Response, ApiError> {
    let rows = counts(&st, &p, q.date).await?;
    match q.format.as_deref() {
        Some("csv") => Ok(csv_response(&format!("lgsp-reconciliation-{}.csv", q.date), audit::to_csv(&rows))),
        None | Some("json") => Ok(Json(json!({ "date": q.date, "rows": rows })).into_response()),
        Some(other) => Err(ApiError::invalid("format", format!("{other:?} is not json or csv"))),
    }
}

async fn compare(State(st): State<Shared>, p: Principal, Query(q): Query<DayQuery>, body: Bytes) -> Result<Response, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::invalid("body", "the CSV must be UTF-8"))?;
    let theirs = audit::parse_csv(text).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    let theirs: Vec<CountRow> = theirs.into_iter().filter(|r| r.date == q.date).collect();
    let ours = counts(&st, &p, q.date).await?;
    let diffs = audit::compare(&ours, &theirs);
    match q.format.as_deref() {
        Some("csv") => Ok(csv_response(&format!("lgsp-reconciliation-differences-{}.csv", q.date), audit::differences_to_csv(&diffs))),
        _ => Ok(Json(json!({ "date": q.date, "matches": diffs.is_empty(), "differences": diffs })).into_response()),
    }
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "get",
            path: "/api/v1/audit/transactions",
            summary: "Search the transaction audit log (metadata only), newest first",
            roles: "any (agency-admin: as consumer or provider)",
            handler: || get(search),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/audit/verify",
            summary: "Verify the hash chain and signatures of this node's audit log",
            roles: "operator, auditor",
            handler: || post(verify),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/audit/reconciliation",
            summary: "Daily counts per consumer x service x outcome (?date=YYYY-MM-DD, &format=csv)",
            roles: "any (agency-admin: as consumer or provider)",
            handler: || get(reconciliation),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/audit/reconciliation/compare",
            summary: "Compare a provider's or consumer's CSV with our counts (?date=YYYY-MM-DD)",
            roles: "any (agency-admin: as consumer or provider)",
            handler: || post(compare),
        },
    ]
}
