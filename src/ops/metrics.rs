//! The metrics and status listener (SPEC §2, §7): `GET /metrics` (Prometheus text), `GET /status`
//! (Level 1: answers at once, checks nothing), `GET /status/services` (Level 2: checks each
//! component, see `ops::status`).
//!
//! Invariants: metric names are `lgsp_<area>_<name>_<unit>`; labels come from a fixed set.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::ops::status::{self, Services};

/// A new integer gauge, registered in `registry` (the one way gauges are made here).
pub fn int_gauge(registry: &Registry, name: &str, help: &str) -> Result<prometheus::IntGauge, prometheus::Error> {
    let g = prometheus::IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Counts of registry objects, refreshed by `app` on every scrape.
pub type CountsFn = Arc<dyn Fn() -> Vec<(&'static str, i64)> + Send + Sync>;
/// The node's health for `/status`: whether it is fully up (not degraded) and details.
pub type HealthFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    objects: IntGaugeVec,
    counts: CountsFn,
    node: String,
    health: Option<HealthFn>,
    refresh: Vec<Arc<dyn Fn() + Send + Sync>>,
    draining: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    services: Option<Services>,
}

impl Metrics {
    pub fn new(node: &str, counts: CountsFn) -> Metrics {
        let registry = Registry::new();
        let objects = IntGaugeVec::new(Opts::new("lgsp_registry_objects", "Objects in the replicated registry, by kind"), &["kind"])
            .unwrap_or_else(|_| IntGaugeVec::new(Opts::new("lgsp_registry_objects_fallback", "unused"), &["kind"]).expect("static metric"));
        let _ = registry.register(Box::new(objects.clone()));
        let info = IntGaugeVec::new(Opts::new("lgsp_build_info", "Build and node information"), &["version", "node"]);
        if let Ok(info) = info {
            info.with_label_values(&[env!("CARGO_PKG_VERSION"), node]).set(1);
            let _ = registry.register(Box::new(info));
        }
        Metrics { registry, objects, counts, node: node.to_owned(), health: None, refresh: Vec::new(), draining: None, services: None }
    }

    /// Adds the cluster's view to `/status`: `degraded` (still serving) when it is not healthy.
    pub fn with_health(mut self, health: HealthFn) -> Metrics {
        self.health = Some(health);
        self
    }

    /// Whether an operator drained the node: `/status` then answers 503 `draining`, so load
    /// balancers stop sending it traffic.
    pub fn with_drain(mut self, f: Arc<dyn Fn() -> bool + Send + Sync>) -> Metrics {
        self.draining = Some(f);
        self
    }

    /// Runs `f` before every scrape (for gauges read from elsewhere, e.g. the cluster); each
    /// call adds one more.
    pub fn with_refresh(mut self, f: Arc<dyn Fn() + Send + Sync>) -> Metrics {
        self.refresh.push(f);
        self
    }

    /// Serves `GET /status/services` (Level 2) from these checks; host figures are also
    /// refreshed on every scrape.
    pub fn with_services(self, services: Services) -> Metrics {
        let host = services.host.clone();
        let mut m = self.with_refresh(Arc::new(move || {
            host.sample();
        }));
        m.services = Some(services);
        m
    }

    /// The Prometheus registry other modules register their metrics in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/status", get(status))
            .route("/status/services", get(status_services))
            .with_state(self)
    }
}

async fn metrics(State(m): State<Metrics>) -> impl IntoResponse {
    for (kind, n) in (m.counts)() {
        m.objects.with_label_values(&[kind]).set(n);
    }
    for f in &m.refresh {
        f();
    }
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&m.registry.gather(), &mut buf);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf)
}

/// Level 1: answers at once. `degraded` means the node still proxies traffic (from the last
/// replicated state) but cannot change the registry (no quorum): keep it in the load balancer.
/// `draining` (HTTP 503) means an operator took the node out of service: take it out.
async fn status(State(m): State<Metrics>) -> impl IntoResponse {
    let mut body = serde_json::json!({ "status": "up", "node": m.node, "version": env!("CARGO_PKG_VERSION") });
    if let Some(h) = &m.health {
        let (ok, details) = h();
        if !ok {
            body["status"] = "degraded".into();
        }
        body["cluster"] = details;
    }
    let mut code = axum::http::StatusCode::OK;
    if m.draining.as_ref().is_some_and(|d| d()) {
        body["status"] = "draining".into();
        code = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    (code, Json(body))
}

/// Level 2: checks every component (each within `status::CHECK_TIMEOUT`). 200 when the node is
/// `up` or `degraded` (it serves traffic), 503 when it is `down`. 404 when the node was built
/// without checks (unit tests).
async fn status_services(State(m): State<Metrics>) -> axum::response::Response {
    let Some(services) = &m.services else {
        return (StatusCode::NOT_FOUND, Json(serde_json::json!({"code": "NOT_FOUND", "message": "no service checks on this listener"})))
            .into_response();
    };
    let health = m.health.as_ref().map(|h| h());
    let components = status::check(services, health).await;
    let level = status::overall(components.values());
    let body = serde_json::json!({
        "status": level,
        "node": m.node,
        "version": env!("CARGO_PKG_VERSION"),
        "checked_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "components": components.iter().map(|(k, c)| (k.to_string(), c.to_json())).collect::<serde_json::Map<_, _>>(),
    });
    let code = StatusCode::from_u16(status::http_status(level)).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (code, Json(body)).into_response()
}
