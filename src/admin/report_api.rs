//! The periodic report endpoint (`lgsp report`, O6): a month or a year of the whole cluster's
//! traffic (from replicated rollups), this node's probe history, maintenance windows,
//! subscription requests, incidents and service levels, as JSON, HTML or CSV.
//!
//! Visibility: operators and auditors. Agency-admins are refused: the report covers every
//! agency (their own agency's transactions are in `GET /api/v1/audit/reconciliation`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use chrono::Utc;
use serde::Deserialize;

use super::auth::Principal;
use super::{ApiError, ApiQuery, Endpoint, Shared};
use crate::registry::traffic::{local_date, local_day_bounds};
use crate::report::{self, csv::Table, incidents, Inputs, Period, ProbeHistory, Targets};

pub fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint {
        method: "get",
        path: "/api/v1/reports",
        summary: "Monthly (?month=YYYY-MM) or yearly (?year=YYYY) report of the whole cluster; ?format=json|html|csv, ?table= for CSV (traffic, outcomes, uptime, maintenance, subscriptions, sla, coverage)",
        roles: "operator, auditor",
        handler: || get(report),
    }]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    #[serde(default)]
    month: Option<String>,
    #[serde(default)]
    year: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    table: Option<String>,
}

fn invalid(field: &str) -> impl Fn(report::ReportError) -> ApiError + '_ {
    move |e| ApiError::invalid(field, e.to_string())
}

async fn report(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<ReportQuery>) -> Result<Response, ApiError> {
    p.require_reader("read the periodic reports (they cover every agency; your agency's own counts are in the reconciliation)")?;
    let now = Utc::now();
    let period = match (&q.month, &q.year) {
        (Some(m), None) => Period::parse_month(m).map_err(invalid("month"))?,
        (None, Some(y)) => Period::parse_year(y).map_err(invalid("year"))?,
        _ => return Err(ApiError::invalid("month", "give exactly one of month=YYYY-MM or year=YYYY")),
    };
    let period = period.not_future(local_date(now)).map_err(invalid(if q.month.is_some() { "month" } else { "year" }))?;
    let format = q.format.as_deref().unwrap_or("json");
    let table = match (format, q.table.as_deref()) {
        ("csv", t) => Some(Table::parse(t.unwrap_or("traffic")).map_err(invalid("table"))?),
        ("json" | "html", None) => None,
        ("json" | "html", Some(_)) => return Err(ApiError::invalid("table", "only with format=csv")),
        (other, _) => return Err(ApiError::invalid("format", format!("{other:?} is not json, html or csv"))),
    };

    // Probe history of every target, read on the blocking pool.
    let targets: Vec<(String, String, String, u32)> = {
        let reg = st.store.read();
        reg.probe_targets().into_iter().map(|t| (t.target, t.system.to_owned(), t.agency.to_owned(), t.spec.interval_s)).collect()
    };
    let (from_utc, to_utc) = (period.first(), period.end());
    let ts = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp());
    let (from, to) = (ts(from_utc), ts(to_utc));
    let probes = match st.probes.get().cloned() {
        None => Vec::new(),
        Some(svc) => tokio::task::spawn_blocking(move || -> Result<Vec<ProbeHistory>, String> {
            targets
                .into_iter()
                .map(|(target, system, agency, interval_s)| {
                    let days = svc.history().daily(&target, from, to).map_err(|e| e.to_string())?;
                    Ok(ProbeHistory { target, system, agency, interval_s, days })
                })
                .collect()
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?
        .map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "PROBE_HISTORY_UNAVAILABLE", format!("the probe history could not be read: {e}"))
        })?,
    };
    let status = st.cluster.local_status();
    let node = status.nodes.iter().find(|n| n.id == st.cluster.id).map(|n| n.info.name.clone()).unwrap_or_default();
    let members: Vec<String> = status.nodes.into_iter().map(|n| n.info.name).collect();
    let cfg = &st.report;
    let built = {
        let reg = st.store.read();
        let incidents = incidents::incidents_in_period(&reg, local_day_bounds(period.first()).0, local_day_bounds(period.end()).0);
        report::build(&Inputs {
            period,
            now,
            node,
            members,
            state: &reg,
            probes,
            incidents,
            targets: Targets {
                availability_pct: cfg.availability_target,
                success_rate_pct: cfg.success_rate_target,
                latency_p95_ms: cfg.latency_p95_target_ms,
                subscription_decision_working_days: 5,
                incident_fix_hours: 24,
            },
        })
    };
    let name = format!("lgsp-report-{}", period.label());
    Ok(match (format, table) {
        ("csv", Some(t)) => {
            let suffix = Table::ALL.iter().find(|n| Table::parse(n).ok() == Some(t)).copied().unwrap_or("traffic");
            attachment("text/csv; charset=utf-8", &format!("{name}-{suffix}.csv"), report::csv::render(&built, t))
        }
        ("html", _) => attachment("text/html; charset=utf-8", &format!("{name}.html"), report::html::render(&built)),
        _ => Json(built).into_response(),
    })
}

/// An inline document with its file name (reports, incident reports).
pub(super) fn attachment(content_type: &str, file: &str, body: String) -> Response {
    let disposition = format!("inline; filename=\"{file}\"");
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type.to_owned()), (header::CONTENT_DISPOSITION, disposition)], body).into_response()
}
