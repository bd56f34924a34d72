//! The checks: HTTP(S) with expected status and timeout, TCP connect, TLS handshake with the
//! days left on the server certificate.
//!
//! Invariants: a check never takes longer than its spec's timeout (the whole check, DNS and
//! body included, runs under one deadline) and never fails as a Rust error: every problem is
//! an [`Outcome`] of `down` with a sentence saying what failed. HTTPS and TLS checks verify
//! certificates against the trust store handed in (the gateway's upstream roots: system roots
//! plus `gateway.upstream_ca_file`). HTTP connections are pooled, so a target costs one TCP and
//! TLS handshake per idle period, not per check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::Health;
use crate::registry::model::{ProbeKind, ProbeSpec};

/// A Level 2 status body larger than this is not read (the status code alone decides).
const MAX_BODY: usize = 64 * 1024;
const USER_AGENT: &str = concat!("lgsp-probe/", env!("CARGO_PKG_VERSION"));

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub health: Health,
    pub latency_ms: u64,
    /// A sentence for the operator: what was seen, or what failed and why.
    pub detail: String,
    /// Whole days until the server certificate's `notAfter` (`tls` checks; negative once expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_days_left: Option<i64>,
}

impl Outcome {
    fn new(health: Health, detail: impl Into<String>) -> Outcome {
        Outcome { health, latency_ms: 0, detail: detail.into(), cert_days_left: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    #[error("cannot set up TLS for the probes: {0}")]
    Tls(String),
}

/// Runs checks; cheap to share (`Arc`) across the scheduler's tasks.
pub struct Checker {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    tls: TlsConnector,
}

impl Checker {
    /// A checker trusting `roots` for HTTPS and TLS targets.
    pub fn new(roots: Arc<RootCertStore>) -> Result<Checker, CheckerError> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| CheckerError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).pool_max_idle_per_host(2).build(https);
        Ok(Checker { http, tls: TlsConnector::from(Arc::new(config)) })
    }

    /// Runs one check under the spec's timeout.
    pub async fn check(&self, spec: &ProbeSpec) -> Outcome {
        let start = Instant::now();
        let run = async {
            match spec.kind {
                ProbeKind::Http => self.http(spec).await,
                ProbeKind::Tcp => tcp(spec).await,
                ProbeKind::Tls => self.tls(spec).await,
            }
        };
        let mut out = match tokio::time::timeout(Duration::from_millis(spec.timeout_ms.into()), run).await {
            Ok(o) => o,
            Err(_) => Outcome::new(Health::Down, format!("{} did not answer within {} ms", spec.target, spec.timeout_ms)),
        };
        out.latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        out
    }

    async fn http(&self, spec: &ProbeSpec) -> Outcome {
        let uri: http::Uri = match spec.target.parse() {
            Ok(u) => u,
            Err(e) => return Outcome::new(Health::Down, format!("{:?} is not a URL: {e}; correct the probe", spec.target)),
        };
        let req = match http::Request::get(uri).header(http::header::USER_AGENT, USER_AGENT).body(Empty::new()) {
            Ok(r) => r,
            Err(e) => return Outcome::new(Health::Down, format!("cannot build a request for {}: {e}", spec.target)),
        };
        let resp = match self.http.request(req).await {
            Ok(r) => r,
            Err(e) => return Outcome::new(Health::Down, format!("cannot reach {}: {}", spec.target, chain(&e))),
        };
        let status = resp.status().as_u16();
        if status != spec.expect_status {
            return Outcome::new(Health::Down, format!("{} answered {status}, expected {}", spec.target, spec.expect_status));
        }
        // A Level 2 endpoint may answer 200 while reporting itself degraded (or down).
        let reported = match Limited::new(resp.into_body(), MAX_BODY).collect().await {
            Ok(body) => serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
                .ok()
                .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_ascii_lowercase)),
            Err(_) => None,
        };
        match reported.as_deref() {
            Some("degraded") => Outcome::new(Health::Degraded, format!("{} answered {status} and reports itself degraded", spec.target)),
            Some("down") => Outcome::new(Health::Down, format!("{} answered {status} but reports itself down", spec.target)),
            _ => Outcome::new(Health::Up, format!("{} answered {status}", spec.target)),
        }
    }

    async fn tls(&self, spec: &ProbeSpec) -> Outcome {
        let Some((host, _)) = spec.target.rsplit_once(':') else {
            return Outcome::new(Health::Down, format!("{:?} is not host:port; correct the probe", spec.target));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = match ServerName::try_from(host.to_string()) {
            Ok(n) => n,
            Err(e) => return Outcome::new(Health::Down, format!("{host:?} is not a valid server name: {e}")),
        };
        let tcp = match TcpStream::connect(&spec.target).await {
            Ok(s) => s,
            Err(e) => return Outcome::new(Health::Down, format!("cannot connect to {}: {e}", spec.target)),
        };
        let conn = match self.tls.connect(name, tcp).await {
            Ok(c) => c,
            Err(e) => return Outcome::new(Health::Down, format!("TLS handshake with {} failed: {e}", spec.target)),
        };
        let not_after = conn
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| c.validity().not_after.timestamp()));
        let Some(not_after) = not_after else {
            return Outcome::new(Health::Down, format!("{} presented no readable certificate", spec.target));
        };
        let days = (not_after - chrono::Utc::now().timestamp()).div_euclid(86_400);
        let when = chrono::DateTime::from_timestamp(not_after, 0).map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default();
        let mut out = if days < i64::from(spec.tls_warn_days) {
            Outcome::new(
                Health::Degraded,
                format!(
                    "the certificate of {} expires in {days} days ({when}), under the {} day warning; renew it",
                    spec.target, spec.tls_warn_days
                ),
            )
        } else {
            Outcome::new(Health::Up, format!("the certificate of {} is valid for {days} more days ({when})", spec.target))
        };
        out.cert_days_left = Some(days);
        out
    }
}

async fn tcp(spec: &ProbeSpec) -> Outcome {
    match TcpStream::connect(&spec.target).await {
        Ok(_) => Outcome::new(Health::Up, format!("{} accepts connections", spec.target)),
        Err(e) => Outcome::new(Health::Down, format!("cannot connect to {}: {e}", spec.target)),
    }
}

/// An error and its causes on one line (hyper's own message alone is "client error (Connect)").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
