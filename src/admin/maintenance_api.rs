//! Maintenance windows (O3), the notice outbox and agencies' notice webhooks.
//!
//! Invariants: announcing, changing and cancelling are operator writes, proposed with this
//! node's `[maintenance] min_notice` in the command (checked in `apply`); every window is
//! public (it is in the gateway's feed anyway); notices are shown to operators and auditors
//! only (they name recipients); webhook secrets are sealed before they leave this handler and
//! never shown again.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post, put};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::{page, ApiError, ApiJson, ApiQuery, Endpoint, Shared};
use crate::registry::{rules, Bilingual, Command, DeliveryState, MaintenanceScope, MaintenanceWindow, Timestamp, Webhook};

fn window_json(w: &MaintenanceWindow) -> Value {
    let mut v = json!(w);
    v["status"] = w.status_at(Utc::now()).into();
    let mut warnings = Vec::new();
    if w.office_hours {
        warnings.push(
            "the window falls within office hours (Mon–Fri 07:30–17:00 Asia/Ho_Chi_Minh); O3 prefers maintenance outside them".to_owned(),
        );
    }
    v["warnings"] = json!(warnings);
    v
}

fn get_window(st: &Shared, id: &str) -> Result<Value, ApiError> {
    st.store.read().maintenance.get(id).map(window_json).ok_or_else(|| ApiError::not_found("maintenance window", id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list(State(st): State<Shared>, _p: Principal, ApiQuery(q): ApiQuery<ListQuery>) -> Json<Value> {
    let reg = st.store.read();
    let mut items: Vec<&MaintenanceWindow> = reg.maintenance.values().collect();
    items.sort_by_key(|w| std::cmp::Reverse(w.start));
    Json(page(items.into_iter().map(window_json).collect(), q.offset, q.limit))
}

async fn show(State(st): State<Shared>, _p: Principal, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    get_window(&st, &id).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnounceBody {
    #[serde(default)]
    id: Option<String>,
    scope: MaintenanceScope,
    start: Timestamp,
    end: Timestamp,
    reason: Bilingual,
    #[serde(default)]
    emergency: bool,
    #[serde(default)]
    emergency_reason: String,
}

async fn announce(
    State(st): State<Shared>,
    p: Principal,
    ApiJson(b): ApiJson<AnnounceBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require_operator("announce maintenance")?;
    let id = b.id.unwrap_or_else(|| crate::secrets::new_id("mw"));
    st.propose(
        p.actor(),
        Command::AnnounceMaintenance {
            id: id.clone(),
            scope: b.scope,
            start: b.start,
            end: b.end,
            reason: b.reason,
            emergency: b.emergency,
            emergency_reason: b.emergency_reason,
            min_notice_secs: st.maintenance.min_notice_secs(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(get_window(&st, &id)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    #[serde(default)]
    scope: Option<MaintenanceScope>,
    #[serde(default)]
    start: Option<Timestamp>,
    #[serde(default)]
    end: Option<Timestamp>,
    #[serde(default)]
    reason: Option<Bilingual>,
    #[serde(default)]
    emergency: bool,
    #[serde(default)]
    emergency_reason: String,
}

async fn change(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ChangeBody>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("change maintenance windows")?;
    st.propose(
        p.actor(),
        Command::ChangeMaintenance {
            id: id.clone(),
            scope: b.scope,
            start: b.start,
            end: b.end,
            reason: b.reason,
            emergency: b.emergency,
            emergency_reason: b.emergency_reason,
            min_notice_secs: st.maintenance.min_notice_secs(),
        },
    )
    .await?;
    get_window(&st, &id).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: String,
}

async fn cancel(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<CancelBody>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("cancel maintenance windows")?;
    st.propose(p.actor(), Command::CancelMaintenance { id: id.clone(), reason: b.reason }).await?;
    get_window(&st, &id).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticeQuery {
    /// `pending`, `sent` or `failed`: notices with at least one delivery in that state.
    #[serde(default)]
    state: Option<DeliveryState>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn notices(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<NoticeQuery>) -> Result<Json<Value>, ApiError> {
    p.require_reader("read the notice outbox")?;
    let reg = st.store.read();
    let mut items: Vec<_> = reg.notices.values().filter(|n| q.state.is_none_or(|s| n.deliveries.iter().any(|d| d.state == s))).collect();
    items.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
    Ok(Json(page(items, q.offset, q.limit)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookIn {
    url: String,
    /// The signing secret the receiver verifies with (at least 16 characters).
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhooksBody {
    webhooks: Vec<WebhookIn>,
}

async fn set_webhooks(
    State(st): State<Shared>,
    p: Principal,
    Path(code): Path<String>,
    ApiJson(b): ApiJson<WebhooksBody>,
) -> Result<Json<Value>, ApiError> {
    p.require_write()?;
    if !p.sees_agency(&code) {
        return Err(ApiError::not_found("agency", &code));
    }
    let mut hooks = Vec::new();
    for (i, w) in b.webhooks.into_iter().enumerate() {
        if w.secret.chars().count() < 16 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_INPUT",
                format!("webhooks[{i}].secret: must be at least 16 characters (the receiver verifies signatures with it)"),
            ));
        }
        hooks.push(Webhook { url: w.url, secret: st.key.seal(w.secret.as_bytes()) });
    }
    st.propose(p.actor(), Command::SetAgencyWebhooks { code: code.clone(), webhooks: hooks }).await?;
    let reg = st.store.read();
    let urls: Vec<&str> = reg.agencies.get(&code).map(|a| a.webhooks.iter().map(|w| w.url.as_str()).collect()).unwrap_or_default();
    Ok(Json(json!({ "agency": code, "webhooks": urls })))
}

/// Minimum notice in force on this node, for clients and the console.
async fn policy(State(st): State<Shared>, _p: Principal) -> Json<Value> {
    Json(json!({
        "min_notice": rules::format_duration(st.maintenance.min_notice_secs()),
        "reminder_before": rules::format_duration(st.maintenance.reminder_secs()),
        "office_hours": "Mon-Fri 07:30-17:00 Asia/Ho_Chi_Minh, public holidays excepted",
    }))
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint { method: "get", path: "/api/v1/maintenance", summary: "List maintenance windows (newest start first)", roles: "any", handler: || get(list) },
        Endpoint {
            method: "post",
            path: "/api/v1/maintenance",
            summary: "Announce a maintenance window (minimum notice from [maintenance] min_notice unless emergency with a reason); warns when it touches office hours",
            roles: "operator",
            handler: || post(announce),
        },
        Endpoint { method: "get", path: "/api/v1/maintenance/policy", summary: "Minimum notice, reminder lead and office hours in force", roles: "any", handler: || get(policy) },
        Endpoint { method: "get", path: "/api/v1/maintenance/{id}", summary: "Show a maintenance window with its history", roles: "any", handler: || get(show) },
        Endpoint {
            method: "patch",
            path: "/api/v1/maintenance/{id}",
            summary: "Change a window's scope, times or reason (affected units are notified)",
            roles: "operator",
            handler: || patch(change),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/maintenance/{id}/cancel",
            summary: "Cancel a window ({\"reason\": ...}; affected units are notified)",
            roles: "operator",
            handler: || post(cancel),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/notices",
            summary: "The notice outbox with each delivery's state, attempts and last error (?state=pending|sent|failed)",
            roles: "operator, auditor",
            handler: || get(notices),
        },
        Endpoint {
            method: "put",
            path: "/api/v1/agencies/{code}/webhooks",
            summary: "Replace an agency's notice webhooks ({\"webhooks\": [{\"url\", \"secret\"}]}); secrets are sealed and never shown",
            roles: "operator, agency-admin (own)",
            handler: || put(set_webhooks),
        },
    ]
}
