//! The admin API (SPEC §5): axum router under `/api/v1/`, authentication, role checks,
//! handlers and the OpenAPI document.
//!
//! Invariants: every change goes through [`AdminState::propose`] (so it is a registry command,
//! replicated and audited); every handler decides visibility with [`auth::Principal`] and
//! answers 404 for objects outside an agency-admin's agency; may import `registry`, `cluster`
//! (the store handle), `secrets`, `config` and `probes` (the running probe service's results).

pub mod access;
pub mod auth;
pub mod backup_api;
pub mod catalogs;
pub mod cluster_api;
pub mod error;
pub mod incident_api;
pub mod maintenance_api;
pub mod openapi;
pub mod probes_api;
pub mod registry_api;
pub mod report_api;
pub mod transactions;

use std::sync::Arc;

use axum::routing::MethodRouter;
use axum::Router;
use chrono::Utc;

use crate::cluster::node::ClusterNode;
use crate::cluster::store::Applied;
use crate::cluster::types::Request;
use crate::cluster::Store;
use crate::config::AdminConfig;
use crate::registry::{Actor, Command, Envelope, Outcome};
use crate::secrets::SecretsKey;
pub use error::{ApiError, ApiJson, ApiQuery};

/// Largest request body for ordinary admin calls.
pub const BODY_LIMIT: usize = 16 << 20;
/// Largest body for whole-registry imports and catalog versions.
pub const LARGE_BODY: usize = 512 << 20;

pub struct AdminState {
    pub store: Arc<Store>,
    /// Where writes go (committed through Raft) and read barriers come from.
    pub cluster: Arc<ClusterNode>,
    pub key: SecretsKey,
    pub cfg: AdminConfig,
    /// Where the transaction audit segments live (read by search, verify, reconciliation).
    pub audit_dir: std::path::PathBuf,
    /// The running audit log, to flush or sign its tail before reading.
    pub audit: Option<crate::audit::AuditLog>,
    /// Minimum notice and reminder lead of maintenance windows.
    pub maintenance: crate::config::MaintenanceConfig,
    /// This node's probe service, set once it runs (latest results and history).
    pub probes: std::sync::OnceLock<Arc<crate::probes::service::ProbeService>>,
    /// This node's backup writer (`None` until it runs).
    pub backups: Option<Arc<crate::backup::writer::BackupService>>,
    /// `[report]`: service-level targets of the periodic report.
    pub report: crate::config::ReportConfig,
}

pub type Shared = Arc<AdminState>;

impl AdminState {
    /// Proposes a command as `actor` and waits until it is committed by the cluster and
    /// applied on this node (so this node's next read sees it).
    pub async fn propose(&self, actor: Actor, command: Command) -> Result<Outcome, ApiError> {
        let env = Envelope::new(Utc::now(), actor, command);
        match self.cluster.write(Request::Registry(env)).await? {
            Applied::Registry(result) => result.map_err(ApiError::from),
            _ => Err(ApiError::from(crate::cluster::node::ClusterError::OutcomeUnknown)),
        }
    }
}

/// One documented endpoint: the router and the OpenAPI document are both built from this list.
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Who may call it, as shown in the OpenAPI description.
    pub roles: &'static str,
    pub handler: fn() -> MethodRouter<Shared>,
}

pub fn endpoints() -> Vec<Endpoint> {
    let mut v = Vec::new();
    v.extend(auth::endpoints());
    v.extend(registry_api::endpoints());
    v.extend(access::endpoints());
    v.extend(catalogs::endpoints());
    v.extend(transactions::endpoints());
    v.extend(cluster_api::endpoints());
    v.extend(maintenance_api::endpoints());
    v.extend(probes_api::endpoints());
    v.extend(backup_api::endpoints());
    v.extend(incident_api::endpoints());
    v.extend(report_api::endpoints());
    v
}

/// Reads see every write acknowledged before them, on any node: a GET first waits for the
/// leader's confirmation (`?consistency=local` skips it and reads this node's state, which may
/// lag by a few milliseconds, or more when the node has lost its quorum).
async fn read_barrier(
    axum::extract::State(st): axum::extract::State<Shared>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let local = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "consistency=local"));
    if local {
        // Handlers refuse unknown query parameters: take this one out.
        let rest: Vec<&str> = req.uri().query().unwrap_or("").split('&').filter(|kv| *kv != "consistency=local").collect();
        let pq = if rest.is_empty() { req.uri().path().to_owned() } else { format!("{}?{}", req.uri().path(), rest.join("&")) };
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    if req.method() == axum::http::Method::GET && !local && req.uri().path() != "/api/v1/openapi.json" {
        if let Err(e) = st.cluster.read_barrier().await {
            return ApiError::from(e).into_response();
        }
        return next.run(req).await;
    }
    if local {
        return next.run(req).await;
    }
    // A write checks that its object exists in the local state before proposing. A node a few
    // entries behind (just restarted, or cut off) would answer 404 for an object created through
    // another node, so a 404 is only given after the node caught up with the leader; nothing was
    // proposed by the first attempt, so running the handler again is safe.
    // Only bodies of a declared, ordinary size are kept for a second attempt (large imports and
    // catalogs stream to their handler; they do not answer 404 for a missing object).
    let small = match req.headers().get(axum::http::header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n <= BODY_LIMIT),
        None => !req.headers().contains_key(axum::http::header::TRANSFER_ENCODING),
    };
    if !small {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(axum::http::StatusCode::BAD_REQUEST, "INVALID_INPUT", format!("the request body could not be read: {e}"))
                .into_response()
        }
    };
    let first = next.clone().run(axum::extract::Request::from_parts(parts.clone(), body.clone().into())).await;
    if first.extensions().get::<error::NotFoundObject>().is_none() {
        return first;
    }
    if let Err(e) = st.cluster.read_barrier().await {
        return ApiError::from(e).into_response();
    }
    next.run(axum::extract::Request::from_parts(parts, body.into())).await
}

pub fn router(state: Shared) -> Router {
    let mut r: Router<Shared> = Router::new();
    let mut by_path: std::collections::BTreeMap<&str, MethodRouter<Shared>> = Default::default();
    for e in endpoints() {
        let mr = (e.handler)();
        let merged = match by_path.remove(e.path) {
            Some(prev) => prev.merge(mr),
            None => mr,
        };
        by_path.insert(e.path, merged);
    }
    for (path, mr) in by_path {
        r = r.route(path, mr);
    }
    r.route("/api/v1/openapi.json", axum::routing::get(openapi::serve))
        .layer(axum::middleware::from_fn_with_state(state.clone(), read_barrier))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this endpoint does not accept that HTTP method; see /api/v1/openapi.json",
            )
        })
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "NO_SUCH_ENDPOINT",
                "no admin API endpoint at this path; see /api/v1/openapi.json",
            )
        })
        .with_state(state)
}

/// `{"items": [...], "total": n}` with paging applied.
pub fn page<T: serde::Serialize>(items: Vec<T>, offset: Option<usize>, limit: Option<usize>) -> serde_json::Value {
    let total = items.len();
    let offset = offset.unwrap_or(0);
    let limit = limit.unwrap_or(1000).min(100_000);
    let items: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
    serde_json::json!({ "items": items, "total": total, "offset": offset })
}
