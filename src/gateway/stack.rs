//! The request pipeline. Phase order, written once:
//!
//! 1. stamp a transaction id and take the current registry view;
//! 2. built-in endpoints (`/token`, `/revoke`, `/dmdc/...`) branch off;
//! 3. **authenticate** the calling system (bearer token, else RFC 9421 signature) → 401;
//! 4. **consumer standing**: system disabled or agency suspended → 403;
//! 5. **route** `/{context}/{version}/...` or the default version → 404;
//! 6. **authorise**: an active subscription for system × service × version × environment → 403;
//! 7. **rate limit** and quota → 429 with `Retry-After`;
//! 8. **body limit** by `Content-Length` → 413 (and while streaming);
//! 9. **forward** to the environment's upstream with the consumer's credentials removed and the
//!    appliance's own added; timeouts → 504, unreachable → 502;
//! 10. **audit** one record when the response body has been sent (or the request was refused).
//!
//! Invariants: the payload is streamed, never stored (only its length and SHA-256 are kept);
//! every response carries `X-Transaction-Id`; refusals are produced by `rescue::Refusal` only.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::watch;

use super::body::{full, GwBody, Meter, Metered, Sink, StreamCheck};
use super::digest::{DigestCheck, ExpectedDigest};
use super::httpsig::{self, RequestView};
use super::metrics::GatewayMetrics;
use super::oauth::{self, TokenAuthority};
use super::rate_limit::Limited as RateLimited;
use super::rescue::Refusal;
use super::shared::SharedState;
use super::upstream::Upstreams;
use super::view::{CredView, RouteService, RouteVersion, UpstreamAuthMaterial, View};
use crate::audit::{AuditLog, AuditRecord};
use crate::config::GatewayConfig;
use crate::registry::{rules, Command, VersionState};

/// Sends a registry command on the gateway's behalf (token revocation, catalog entries), so the
/// gateway never needs to know how commands are replicated.
pub trait Proposer: Send + Sync {
    fn propose(&self, system: &str, agency: &str, command: Command) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// Everything the pipeline needs; shared by all connections.
pub struct Gateway {
    pub node: String,
    pub view: watch::Receiver<Arc<View>>,
    pub tokens: TokenAuthority,
    /// Nonce and jti replay caches and rate limits, shared with the other nodes by gossip.
    shared: Arc<SharedState>,
    pub upstreams: Upstreams,
    pub audit: Option<AuditLog>,
    pub metrics: GatewayMetrics,
    pub proposer: Arc<dyn Proposer>,
    pub cfg: GatewayConfig,
    /// The appliance's key for RFC 9421 signatures towards providers.
    pub signing_key: ed25519_dalek::SigningKey,
    pub signing_key_id: String,
    /// `https`, or `http` in dev mode: part of `@target-uri`.
    pub scheme: &'static str,
    txn_prefix: String,
    txn_counter: AtomicU64,
}

/// The calling connection, prepared once per connection rather than per request.
pub struct Peer {
    /// The `for=` node of the `Forwarded` header (RFC 7239 §6: an IPv6 address in brackets).
    forwarded_for: String,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let forwarded_for = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Peer { forwarded_for }
    }
}

/// The authenticated caller.
struct Consumer {
    cred: Arc<CredView>,
    auth_method: String,
    /// Set when a signature covered `content-digest`: the body must match it.
    digest: Option<ExpectedDigest>,
}

/// An audit record being filled in as the request moves through the phases.
#[derive(Clone, Default)]
struct Draft {
    txn: String,
    at: chrono::DateTime<Utc>,
    method: String,
    path: String,
    consumer_agency: String,
    consumer_system: String,
    service: String,
    version: String,
    environment: String,
    auth_method: String,
}

const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization"];
/// Consumer credentials and spoofable identity headers never reach the provider.
const STRIPPED: [&str; 7] =
    ["authorization", "signature", "signature-input", "x-consumer-agency", "x-consumer-system", "x-transaction-id", "forwarded"];

fn secs_to_local_midnight() -> u64 {
    use chrono::Timelike;
    let secs = Utc::now().with_timezone(&rules::vietnam()).time().num_seconds_from_midnight();
    u64::from(86_400 - secs)
}

impl StreamCheck for DigestCheck {
    fn update(&mut self, chunk: &[u8]) {
        DigestCheck::update(self, chunk);
    }
    fn finish(self: Box<Self>) -> bool {
        DigestCheck::finish(*self).is_ok()
    }
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: &str,
        view: watch::Receiver<Arc<View>>,
        tokens: TokenAuthority,
        upstreams: Upstreams,
        audit: Option<AuditLog>,
        metrics: GatewayMetrics,
        proposer: Arc<dyn Proposer>,
        cfg: GatewayConfig,
        signing_key: ed25519_dalek::SigningKey,
        scheme: &'static str,
    ) -> Gateway {
        let window = i64::try_from(cfg.signature_window_seconds).unwrap_or(300);
        let signing_key_id = format!("lgsp-{}", &hex::encode(signing_key.verifying_key().as_bytes())[..16]);
        Gateway {
            node: node.to_owned(),
            view,
            tokens,
            shared: Arc::new(SharedState::new(node, window, metrics.shared_dropped.clone())),
            upstreams,
            audit,
            metrics,
            proposer,
            cfg,
            signing_key,
            signing_key_id,
            scheme,
            txn_prefix: hex::encode(crate::secrets::random_bytes::<6>()),
            txn_counter: AtomicU64::new(0),
        }
    }

    /// The cluster-wide gateway state, for the cluster's gossip task to take this node's outbox
    /// and absorb the peers' batches.
    pub fn shared(&self) -> Arc<SharedState> {
        Arc::clone(&self.shared)
    }

    /// A unique, cheap transaction id: a random per-process prefix and a counter, shaped as a UUID.
    fn next_txn(&self) -> String {
        let n = self.txn_counter.fetch_add(1, Ordering::Relaxed);
        txn_id(&self.txn_prefix, n)
    }

    /// Handles one request; never fails (every error is a response).
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>, peer: &Peer) -> Response<GwBody> {
        let started = Instant::now();
        let txn = self.next_txn();
        let view = self.view.borrow().clone();
        self.metrics.view_index.set(i64::try_from(view.applied).unwrap_or(i64::MAX));
        let mut d = Draft {
            txn: txn.clone(),
            at: Utc::now(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            ..Draft::default()
        };
        let path = req.uri().path();
        let result = if path == "/token" {
            d.service = "token".into();
            self.token(req, &view, &mut d).await
        } else if path == "/revoke" {
            d.service = "revoke".into();
            self.revoke(req, &view, &mut d).await
        } else if path == "/maintenance.json" || path == "/maintenance.atom" {
            d.service = "maintenance-feed".into();
            Ok(Reply::Local(super::feed::response(&view, path.ends_with(".atom"), Utc::now())))
        } else if let Some(rest) = path.strip_prefix("/dmdc/") {
            d.service = "dmdc".into();
            let rest = rest.to_owned();
            self.dmdc(req, &view, &mut d, &rest).await
        } else {
            self.proxy(req, &view, &mut d, peer, started).await
        };
        match result {
            Ok(Reply::Proxied(resp)) => resp,
            Ok(Reply::Local(mut resp)) => {
                if let Ok(v) = HeaderValue::from_str(&txn) {
                    resp.headers_mut().insert("x-transaction-id", v);
                }
                let outcome = if resp.status().is_success() { "OK" } else { "REFUSED" };
                self.finish(d, resp.status().as_u16(), outcome, started, None, Meter::default(), local_meter(&resp));
                resp
            }
            Err(refusal) => {
                if refusal.status == StatusCode::UNAUTHORIZED {
                    self.metrics.auth_failures.with_label_values(&[refusal.code]).inc();
                }
                let code = refusal.code;
                let status = refusal.status.as_u16();
                let resp = refusal.into_response(&txn);
                self.finish(d, status, code, started, None, Meter::default(), local_meter(&resp));
                resp
            }
        }
    }

    /// Writes the audit record and the metrics of a finished transaction.
    #[allow(clippy::too_many_arguments)]
    /// Consumes the draft: its strings move into the audit record instead of being copied.
    fn finish(&self, d: Draft, status: u16, outcome: &str, started: Instant, upstream: Option<Duration>, req: Meter, resp: Meter) {
        let service = if d.service.is_empty() { "-" } else { d.service.as_str() };
        let consumer = if d.consumer_agency.is_empty() { "-" } else { d.consumer_agency.as_str() };
        self.metrics.requests.with_label_values(&[service, consumer, outcome]).inc();
        self.metrics.responses.with_label_values(&[service, status_class(status)]).inc();
        let total = started.elapsed();
        self.metrics.duration.with_label_values(&[service]).observe(total.as_secs_f64());
        if let Some(u) = upstream {
            self.metrics.upstream_duration.with_label_values(&[service]).observe(u.as_secs_f64());
        }
        self.metrics.request_bytes.with_label_values(&[service]).inc_by(req.bytes);
        self.metrics.response_bytes.with_label_values(&[service]).inc_by(resp.bytes);
        log_transaction(&d, status, outcome, total, upstream);
        if let Some(log) = &self.audit {
            let upstream_us = upstream.map(|u| u64::try_from(u.as_micros()).unwrap_or(u64::MAX));
            let total_us = u64::try_from(total.as_micros()).unwrap_or(u64::MAX);
            log.record(AuditRecord {
                txn_id: d.txn,
                at: d.at,
                // The audit writer stamps its own node name.
                node: String::new(),
                consumer_agency: d.consumer_agency,
                consumer_system: d.consumer_system,
                service: d.service,
                version: d.version,
                environment: d.environment,
                method: d.method,
                path: d.path,
                status,
                outcome: outcome.to_owned(),
                gateway_us: total_us.saturating_sub(upstream_us.unwrap_or(0)),
                upstream_us,
                request_bytes: req.bytes,
                response_bytes: resp.bytes,
                request_sha256: req.sha256.as_ref().map(crate::audit::digest_hex).unwrap_or_default(),
                response_sha256: resp.sha256.as_ref().map(crate::audit::digest_hex).unwrap_or_default(),
                auth_method: if d.auth_method.is_empty() { "none".into() } else { d.auth_method },
            });
        }
    }

    fn authenticate(&self, view: &View, req: &Request<Incoming>, has_body: bool) -> Result<Consumer, Refusal> {
        let headers = req.headers();
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            let token =
                auth.to_str().ok().and_then(|v| v.split_once(' ')).filter(|(s, _)| s.eq_ignore_ascii_case("bearer")).map(|(_, t)| t.trim());
            let Some(token) = token else {
                return Err(Refusal::unauthenticated(
                    "UNSUPPORTED_AUTHORIZATION",
                    "Chỉ chấp nhận Authorization: Bearer <token> hoặc chữ ký HTTP (RFC 9421). / Only Authorization: Bearer <token> or an HTTP message signature (RFC 9421) is accepted.",
                ));
            };
            let claims = self.tokens.validate(token).ok_or_else(Refusal::invalid_token)?;
            if view.is_revoked(&claims.jti) {
                return Err(Refusal::invalid_token());
            }
            let cred = view.credential(&claims.sub).cloned().ok_or_else(Refusal::invalid_token)?;
            return Ok(Consumer { cred, auth_method: "oauth2".into(), digest: None });
        }
        if !headers.contains_key("signature-input") && !headers.contains_key("signature") {
            return Err(Refusal::no_credentials());
        }
        let sig_err = |e: httpsig::HttpSigError| Refusal::new(e.status(), e.code(), e.to_string());
        let sig = httpsig::parse(headers, None).map_err(sig_err)?;
        let key = view.sig_key(&sig.key_id).cloned().ok_or_else(|| {
            Refusal::unauthenticated(
                "SIGNATURE_UNKNOWN_KEY",
                "keyid không được đăng ký hoặc đã bị thu hồi. / The keyid is not registered or has been revoked.",
            )
        })?;
        let authority =
            headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri().authority().map(|a| a.as_str())).unwrap_or("");
        let rv = RequestView {
            method: req.method(),
            scheme: self.scheme,
            authority,
            path: req.uri().path(),
            query: req.uri().query(),
            headers,
            has_body,
        };
        let now = Utc::now().timestamp();
        let window = i64::try_from(self.cfg.signature_window_seconds).unwrap_or(300);
        let verified = httpsig::verify(&sig, &rv, &key.key, key.alg, now, window).map_err(sig_err)?;
        match &verified.nonce {
            Some(n) => self.shared.admit_nonce(&verified.key_id, n, verified.created, now).map_err(sig_err)?,
            None if self.cfg.require_nonce => {
                return Err(Refusal::unauthenticated(
                    "SIGNATURE_NONCE_REQUIRED",
                    "Chữ ký phải có tham số nonce (chống phát lại). / The signature must carry a nonce parameter (replay protection).",
                ))
            }
            None => {}
        }
        let digest = if has_body && verified.covers_content_digest {
            ExpectedDigest::from_headers(headers).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?
        } else {
            None
        };
        Ok(Consumer { cred: key.cred.clone(), auth_method: format!("httpsig-{}", key.alg.as_str()), digest })
    }

    fn standing(&self, view: &View, c: &Consumer, d: &mut Draft) -> Result<(), Refusal> {
        d.consumer_system = c.cred.system.clone();
        d.environment = c.cred.environment.as_str().into();
        d.auth_method = c.auth_method.clone();
        match view.consumer(&c.cred.system) {
            Some(s) if !s.refused => {
                d.consumer_agency = s.agency.clone();
                Ok(())
            }
            Some(s) => {
                d.consumer_agency = s.agency.clone();
                Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "CONSUMER_SUSPENDED",
                    "Hệ thống hoặc cơ quan của bạn đang bị tạm ngừng kết nối; liên hệ đơn vị vận hành LGSP. / Your system or agency is suspended; contact the LGSP operator.",
                ))
            }
            None => Err(Refusal::invalid_token()),
        }
    }

    async fn proxy(
        self: &Arc<Self>,
        req: Request<Incoming>,
        view: &View,
        d: &mut Draft,
        peer: &Peer,
        started: Instant,
    ) -> Result<Reply, Refusal> {
        let has_body = !req.body().is_end_stream();
        let consumer = self.authenticate(view, &req, has_body)?;
        self.standing(view, &consumer, d)?;
        let (svc, ver, rest) = route(view, req.uri().path())?;
        d.service = svc.context.clone();
        d.version = ver.version.clone();
        let now = Utc::now();
        if let Some(w) = view.maintenance_for(&svc.context, now) {
            let secs = u64::try_from((w.end - now).num_seconds()).unwrap_or(0).max(1);
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "MAINTENANCE",
                format!(
                    "Dịch vụ đang bảo trì đến {}: {} / The service is under maintenance until {}: {}",
                    rules::local_time(w.end),
                    w.reason.vi,
                    rules::local_time(w.end),
                    w.reason.en
                ),
            )
            .retry_after(secs));
        }
        if svc.provider_unavailable {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_SUSPENDED",
                "Dịch vụ tạm thời không cung cấp vì cơ quan cung cấp đang bị tạm ngừng. / The service is unavailable: its provider is suspended.",
            ));
        }
        if !svc.methods.is_empty() && !svc.methods.contains(req.method()) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "METHOD_NOT_ALLOWED",
                "Phương thức HTTP này không được dịch vụ cho phép. / The provider does not allow this HTTP method.",
            ));
        }
        let env = consumer.cred.environment;
        let sub = view.subscription(&consumer.cred.system, &svc.context, &ver.version, env).ok_or_else(Refusal::subscription_required)?;
        let upstream = ver.upstream(env).ok_or_else(|| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ENVIRONMENT_NOT_OFFERED",
                "Phiên bản này hiện không có địa chỉ cho môi trường của bạn. / This version currently has no upstream for your environment.",
            )
        })?;
        let today = rules::local_date(Utc::now());
        if let Err(l) = self.shared.check_rate(&sub.id, &sub.rate_limit, Instant::now(), today, secs_to_local_midnight()) {
            return Err(match l {
                RateLimited::PerSecond { retry_after } => Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    "Vượt giới hạn số yêu cầu mỗi giây của đăng ký; thử lại sau Retry-After giây. / Per-second rate limit of the subscription exceeded; retry after Retry-After seconds.",
                )
                .retry_after(retry_after),
                RateLimited::Daily { retry_after } => Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "QUOTA_EXHAUSTED",
                    "Đã dùng hết hạn mức trong ngày của đăng ký; hạn mức đặt lại lúc 0 giờ (giờ Việt Nam). / The subscription's daily quota is used up; it resets at midnight Vietnam time.",
                )
                .retry_after(retry_after),
            });
        }
        let limit = ver.max_body_bytes.unwrap_or(self.cfg.max_body_bytes);
        if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
            if len > limit {
                return Err(too_large(limit));
            }
        }
        self.forward(req, &svc, &ver, upstream, &rest, consumer, d, peer, started, limit).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        svc: &RouteService,
        ver: &RouteVersion,
        upstream: &super::view::Upstream,
        rest: &str,
        consumer: Consumer,
        d: &mut Draft,
        peer: &Peer,
        started: Instant,
        limit: u64,
    ) -> Result<Reply, Refusal> {
        let (parts, body) = req.into_parts();
        let mut path = String::with_capacity(upstream.prefix.len() + rest.len() + 1);
        path.push_str(&upstream.prefix);
        path.push_str(rest);
        if path.is_empty() {
            path.push('/');
        }
        if let Some(q) = parts.uri.query() {
            path.push('?');
            path.push_str(q);
        }
        let uri =
            Uri::builder().scheme(upstream.scheme.clone()).authority(upstream.authority.clone()).path_and_query(path).build().map_err(
                |_| {
                    Refusal::new(
                        StatusCode::BAD_GATEWAY,
                        "UPSTREAM_ADDRESS_INVALID",
                        "Địa chỉ dịch vụ cung cấp không hợp lệ; báo đơn vị vận hành. / The provider address is invalid; tell the operator.",
                    )
                },
            )?;
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 5);
        // HTTP/2 carries the host in `:authority`, HTTP/1.1 in `Host`.
        let original_host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_owned();
        let nominated = connection_tokens(&parts.headers);
        for (name, value) in parts.headers.iter() {
            let n = name.as_str();
            if HOP_BY_HOP.contains(&n) || STRIPPED.contains(&n) || n == "host" || nominated.iter().any(|t| t == n) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        let hv = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"));
        headers.insert(HeaderName::from_static("x-transaction-id"), hv(&d.txn));
        headers.insert(HeaderName::from_static("x-consumer-agency"), hv(&d.consumer_agency));
        headers.insert(HeaderName::from_static("x-consumer-system"), hv(&consumer.cred.system));
        let mut forwarded = String::with_capacity(32 + peer.forwarded_for.len() + original_host.len());
        for part in ["for=\"", &peer.forwarded_for, "\";proto=", self.scheme, ";host=\"", &original_host, "\""] {
            forwarded.push_str(part);
        }
        headers.insert(header::FORWARDED, hv(&forwarded));
        let mut client = self.upstreams.plain().clone();
        match &ver.auth {
            UpstreamAuthMaterial::None => {}
            UpstreamAuthMaterial::Header(h) => {
                headers.insert(header::AUTHORIZATION, h.clone());
            }
            UpstreamAuthMaterial::MutualTls { cert_pem, key_pem } => {
                client = self.upstreams.with_identity(cert_pem, key_pem).map_err(|e| {
                    tracing::error!(service = %svc.context, version = %ver.version, error = %e, "upstream client identity unusable");
                    Refusal::new(StatusCode::BAD_GATEWAY, "UPSTREAM_AUTH_MISCONFIGURED", "Cấu hình xác thực tới dịch vụ cung cấp bị lỗi; báo đơn vị vận hành. / Authentication towards the provider is misconfigured; tell the operator.")
                })?;
            }
            UpstreamAuthMaterial::Signature => {
                let authority = upstream.authority.as_str();
                let path_only = uri.path();
                let rv = RequestView {
                    method: &parts.method,
                    scheme: upstream.scheme.as_str(),
                    authority,
                    path: path_only,
                    query: uri.query(),
                    headers: &headers,
                    has_body: false,
                };
                let nonce = hex::encode(crate::secrets::random_bytes::<12>());
                let comps = ["@method", "@target-uri", "x-transaction-id", "x-consumer-agency", "x-consumer-system"];
                match httpsig::sign(&rv, &comps, &self.signing_key_id, &self.signing_key, Utc::now().timestamp(), &nonce, "lgsp") {
                    Ok((input, signature)) => {
                        headers.insert(HeaderName::from_static("signature-input"), hv(&input));
                        headers.insert(HeaderName::from_static("signature"), hv(&signature));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot sign the upstream request");
                        return Err(Refusal::internal());
                    }
                }
            }
        }

        let req_meter = Arc::new(std::sync::Mutex::new(Meter::default()));
        let check: Option<Box<dyn StreamCheck>> = consumer.digest.map(|e| Box::new(DigestCheck::new(e)) as Box<dyn StreamCheck>);
        let idempotent = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE);
        let bodyless = body.is_end_stream();
        let mut first_body = Some(Metered::new(body, Some(limit), check, Sink::Shared(req_meter.clone())).boxed_unsync());
        let timeout = Duration::from_millis(ver.timeout_ms.unwrap_or(self.cfg.upstream_timeout_ms));
        let attempts = if idempotent && bodyless { 1 + u32::from(self.cfg.retries) } else { 1 };
        let upstream_started = Instant::now();
        let mut last_err = None;
        let mut response = None;
        for attempt in 0..attempts {
            let body = match first_body.take() {
                Some(b) => b,
                None => super::body::empty(),
            };
            let mut builder = Request::builder().method(parts.method.clone()).uri(uri.clone()).version(http::Version::HTTP_11);
            if let Some(h) = builder.headers_mut() {
                // Only a retry needs the headers again: the last attempt takes them.
                *h = if attempt + 1 < attempts { headers.clone() } else { std::mem::take(&mut headers) };
            }
            let Ok(up_req) = builder.body(body) else { return Err(Refusal::internal()) };
            match tokio::time::timeout(timeout, client.request(up_req)).await {
                Err(_) => {
                    return Err(Refusal::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "UPSTREAM_TIMEOUT",
                        "Dịch vụ cung cấp không trả lời kịp thời hạn. / The provider did not answer in time.",
                    ))
                }
                Ok(Ok(r)) => {
                    response = Some(r);
                    break;
                }
                Ok(Err(e)) => {
                    let retryable = e.is_connect() && attempt + 1 < attempts;
                    last_err = Some(e);
                    if !retryable {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt + 1))).await;
                }
            }
        }
        let upstream_elapsed = upstream_started.elapsed();
        let Some(resp) = response else {
            let m = req_meter.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(match m.error {
                Some("PAYLOAD_TOO_LARGE") => too_large(limit),
                Some("CONTENT_DIGEST_MISMATCH") => Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "CONTENT_DIGEST_MISMATCH",
                    "Nội dung không khớp với Content-Digest đã ký. / The body does not match the signed Content-Digest.",
                ),
                _ => {
                    if let Some(e) = &last_err {
                        tracing::warn!(service = %svc.context, version = %ver.version, error = %e, transaction_id = %d.txn, "provider unreachable");
                    }
                    Refusal::new(
                        StatusCode::BAD_GATEWAY,
                        "UPSTREAM_UNREACHABLE",
                        "Không kết nối được tới hệ thống cung cấp dịch vụ. / The provider's system cannot be reached.",
                    )
                }
            });
        };

        let (mut rparts, rbody) = resp.into_parts();
        if rparts.headers.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
            for t in connection_tokens(&rparts.headers) {
                rparts.headers.remove(t.as_str());
            }
            for h in HOP_BY_HOP {
                rparts.headers.remove(h);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&d.txn) {
            rparts.headers.insert(HeaderName::from_static("x-transaction-id"), v);
        }
        let status = rparts.status.as_u16();
        // The audit record is written when the response body has been passed on entirely.
        let ctx = FinishCtx { draft: std::mem::take(d), status, started, upstream: upstream_elapsed, req_meter };
        let gw = Arc::clone(self);
        let rbody = Metered::new(rbody, None, None, Sink::Call(Box::new(move |m: Meter| gw.finish_proxied(ctx, m)))).boxed_unsync();
        Ok(Reply::Proxied(Response::from_parts(rparts, rbody)))
    }

    async fn token(&self, req: Request<Incoming>, view: &View, d: &mut Draft) -> Result<Reply, Refusal> {
        if req.method() != Method::POST {
            return Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "Dùng POST /token. / Use POST /token."));
        }
        let authz = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let form = read_small(req).await?;
        let now = Utc::now().timestamp();
        let tr = match oauth::parse_request(authz.as_deref(), &form) {
            Ok(t) => t,
            Err(e) => return Ok(Reply::Local(oauth_error(&e))),
        };
        if tr.grant_type.as_deref() != Some("client_credentials") {
            let e = oauth::OAuthError {
                status: 400,
                error: "unsupported_grant_type",
                description: "Chỉ hỗ trợ grant_type=client_credentials. / Only grant_type=client_credentials is supported.",
            };
            return Ok(Reply::Local(oauth_error(&e)));
        }
        let cred = match self.tokens.authenticate(view, &tr, now, &self.shared) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.auth_failures.with_label_values(&["INVALID_CLIENT"]).inc();
                return Ok(Reply::Local(oauth_error(&e)));
            }
        };
        d.auth_method = match tr.client {
            oauth::ClientAuth::Assertion { .. } => "private_key_jwt".into(),
            _ => "client_secret".into(),
        };
        let consumer = Consumer { cred: cred.clone(), auth_method: d.auth_method.clone(), digest: None };
        self.standing(view, &consumer, d)?;
        let (token, claims) = self.tokens.issue(&cred, &tr.scope, now).map_err(|_| Refusal::internal())?;
        let body =
            serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": claims.exp - now, "scope": claims.scope});
        let mut r = json_response(StatusCode::OK, &body);
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(Reply::Local(r))
    }

    async fn revoke(&self, req: Request<Incoming>, view: &View, d: &mut Draft) -> Result<Reply, Refusal> {
        if req.method() != Method::POST {
            return Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "Dùng POST /revoke. / Use POST /revoke."));
        }
        let authz = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let form = read_small(req).await?;
        let tr = match oauth::parse_request(authz.as_deref(), &form) {
            Ok(t) => t,
            Err(e) => return Ok(Reply::Local(oauth_error(&e))),
        };
        let cred = match self.tokens.authenticate(view, &tr, Utc::now().timestamp(), &self.shared) {
            Ok(c) => c,
            Err(e) => return Ok(Reply::Local(oauth_error(&e))),
        };
        d.consumer_system = cred.system.clone();
        d.consumer_agency = cred.agency.clone();
        let Some(token) = tr.token else {
            let e = oauth::OAuthError {
                status: 400,
                error: "invalid_request",
                description: "Thiếu tham số token. / The token parameter is missing.",
            };
            return Ok(Reply::Local(oauth_error(&e)));
        };
        // RFC 7009 §2.2: an unknown or foreign token is answered 200 as well.
        if let Some(claims) = self.tokens.decode_for_revocation(&token) {
            if claims.sub == cred.id && !view.is_revoked(&claims.jti) {
                let exp = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now);
                let jti = claims.jti.clone();
                self.proposer
                    .propose(&cred.system, &cred.agency, Command::RevokeAccessToken { jti: claims.jti, expires_at: exp })
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "token revocation could not be recorded");
                        Refusal::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "REVOCATION_UNAVAILABLE",
                            "Chưa ghi nhận được việc thu hồi; thử lại. / The revocation could not be recorded; retry.",
                        )
                        .retry_after(1)
                    })?;
                // Answer only once this gateway refuses the token: the caller may rely on it.
                let mut rx = self.view.clone();
                if tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| v.is_revoked(&jti))).await.is_err() {
                    tracing::warn!("token revocation recorded but not yet visible to the gateway after 5 s");
                }
            }
        }
        Ok(Reply::Local(json_response(StatusCode::OK, &serde_json::json!({}))))
    }

    async fn dmdc(&self, req: Request<Incoming>, view: &View, d: &mut Draft, rest: &str) -> Result<Reply, Refusal> {
        let has_body = !req.body().is_end_stream();
        let consumer = self.authenticate(view, &req, has_body)?;
        self.standing(view, &consumer, d)?;
        let (kind, code) = rest.split_once('/').unwrap_or((rest, ""));
        let not_found =
            || Refusal::new(StatusCode::NOT_FOUND, "NO_SUCH_CATALOG", "Không có danh mục dùng chung này. / No such shared catalog.");
        let cat = view.catalog(code).cloned().ok_or_else(not_found)?;
        d.version = cat.latest().map(|v| v.version.to_string()).unwrap_or_default();
        let version_param =
            req.uri().query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("version="))).and_then(|v| v.parse::<u32>().ok());
        let pick = || match version_param {
            Some(n) => cat.versions.iter().find(|v| v.version == n),
            None => cat.latest(),
        };
        match (req.method(), kind) {
            (&Method::GET, "Metadata") => {
                let v = pick().ok_or_else(not_found)?;
                let body = serde_json::json!({"status": "00", "data": {"code": cat.code, "name": cat.name, "owner_agency": cat.owner_agency, "version": v.version, "published_at": v.published_at, "fields": v.fields}});
                Ok(Reply::Local(json_response(StatusCode::OK, &body)))
            }
            (&Method::GET, "Category") => {
                let v = pick().ok_or_else(not_found)?;
                let body = serde_json::json!({"status": "00", "version": v.version, "total": v.entries.len(), "data": v.entries});
                Ok(Reply::Local(json_response(StatusCode::OK, &body)))
            }
            (&Method::POST, "Category") => {
                if consumer.cred.agency != cat.owner_agency {
                    return Err(Refusal::new(
                        StatusCode::FORBIDDEN,
                        "CATALOG_OWNER_ONLY",
                        "Chỉ cơ quan chủ quản danh mục được thêm mục. / Only the catalog's owner agency may add entries.",
                    ));
                }
                let bytes = read_limited(req, 16 << 20).await?;
                #[derive(serde::Deserialize)]
                struct Add {
                    entries: Vec<crate::registry::CatalogEntry>,
                }
                let add: Add = serde_json::from_slice(&bytes).map_err(|e| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "INVALID_BODY",
                        format!("Thân yêu cầu phải là {{\"entries\": [...]}}. / The body must be {{\"entries\": [...]}}: {e}"),
                    )
                })?;
                let n = add.entries.len();
                self.proposer
                    .propose(
                        &consumer.cred.system,
                        &consumer.cred.agency,
                        Command::PublishCatalogVersion {
                            code: cat.code.clone(),
                            fields: None,
                            entries: add.entries,
                            append: true,
                            note: format!("added {n} entries through the gateway"),
                        },
                    )
                    .await
                    .map_err(|e| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, "CATALOG_REFUSED", e))?;
                Ok(Reply::Local(json_response(StatusCode::CREATED, &serde_json::json!({"status": "00", "added": n}))))
            }
            _ => Err(not_found()),
        }
    }

    /// Called by the response body when it ends (or is dropped early).
    fn finish_proxied(&self, ctx: FinishCtx, resp: Meter) {
        let req = ctx.req_meter.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let outcome = match (resp.error, req.error) {
            (None, None) if ctx.status < 400 => "OK",
            (None, None) => "UPSTREAM_ERROR_STATUS",
            (Some(e), _) | (None, Some(e)) => e,
        };
        self.finish(ctx.draft, ctx.status, outcome, ctx.started, Some(ctx.upstream), req, resp);
    }
}

struct FinishCtx {
    draft: Draft,
    status: u16,
    started: Instant,
    upstream: Duration,
    req_meter: Arc<std::sync::Mutex<Meter>>,
}

/// One log event per transaction (target `lgsp::transaction`), whose fields become journal
/// fields (`TRANSACTION_ID`, `AGENCY`, `SYSTEM`, `SERVICE`, ...). Warning when the gateway could
/// not obtain or relay the provider's answer (500, 502, 504, a broken provider stream): the
/// operator must see those. Every other transaction is at debug level (it is in the audit log
/// and the metrics; `log.level = "info,lgsp::transaction=debug"` shows them all). Never the
/// path (it may carry personal identifiers) or anything from the payload.
fn log_transaction(d: &Draft, status: u16, outcome: &str, total: Duration, upstream: Option<Duration>) {
    let failed = (status >= 500 && status != 503 && outcome != "UPSTREAM_ERROR_STATUS") || outcome == "BODY_STREAM_FAILED";
    let duration_ms = total.as_secs_f64() * 1000.0;
    let upstream_ms = upstream.map(|u| u.as_secs_f64() * 1000.0);
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                target: "lgsp::transaction",
                $level,
                transaction_id = %d.txn,
                agency = %d.consumer_agency,
                system = %d.consumer_system,
                service = %d.service,
                version = %d.version,
                environment = %d.environment,
                method = %d.method,
                auth = %d.auth_method,
                status,
                outcome,
                duration_ms,
                upstream_ms,
                "transaction"
            )
        };
    }
    if failed {
        event!(tracing::Level::WARN);
    } else {
        event!(tracing::Level::DEBUG);
    }
}

/// What a pipeline branch produced.
enum Reply {
    /// The provider's answer, streaming; audited when its body ends.
    Proxied(Response<GwBody>),
    /// An answer of the gateway's own (token, catalog); audited at once.
    Local(Response<GwBody>),
}

/// Size of a response the gateway produced itself (its content is not hashed: it is ours).
fn local_meter(resp: &Response<GwBody>) -> Meter {
    Meter { bytes: resp.body().size_hint().exact().unwrap_or(0), complete: true, ..Meter::default() }
}

/// Header names listed in `Connection` (RFC 9110 §7.6.1): hop-by-hop, never forwarded.
fn connection_tokens(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Refuses paths that could leave the service's upstream prefix once a provider normalises
/// them: `.` and `..` segments (also percent-encoded) and encoded `/` or `\`.
fn check_path(path: &str) -> Result<(), Refusal> {
    let bad = path
        .split('/')
        .any(|seg| is_dot_segment(seg) || seg.contains('\\') || contains_ignore_case(seg, b"%2f") || contains_ignore_case(seg, b"%5c"));
    if bad {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PATH",
            "Đường dẫn chứa đoạn '.' hoặc '..' hoặc dấu phân cách được mã hoá; hãy gửi đường dẫn đã chuẩn hoá. / The path contains '.' or '..' segments or encoded separators; send a normalised path.",
        ));
    }
    Ok(())
}

/// `.` or `..`, each dot written as `.` or as `%2e` in any case (checked on every request,
/// so without allocating).
fn is_dot_segment(seg: &str) -> bool {
    let mut rest = seg.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

fn contains_ignore_case(haystack: &str, needle: &[u8]) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

fn too_large(limit: u64) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("Thân yêu cầu vượt giới hạn {limit} byte của dịch vụ. / The request body exceeds the service's limit of {limit} bytes."),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<GwBody> {
    let mut r = Response::new(full(Bytes::from(serde_json::to_vec(body).unwrap_or_default())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

fn oauth_error(e: &oauth::OAuthError) -> Response<GwBody> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = json_response(status, &serde_json::json!({"error": e.error, "error_description": e.description, "status": "01"}));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"lgsp\""));
    }
    r
}

async fn read_small(req: Request<Incoming>) -> Result<Bytes, Refusal> {
    read_limited(req, 64 * 1024).await
}

async fn read_limited(req: Request<Incoming>, limit: usize) -> Result<Bytes, Refusal> {
    Limited::new(req.into_body(), limit).collect().await.map(|c| c.to_bytes()).map_err(|_| too_large(limit as u64))
}

/// `/{context}/{version}/{rest}` or `/{context}/{rest}` (default version).
fn route(view: &View, path: &str) -> Result<(Arc<RouteService>, Arc<RouteVersion>, String), Refusal> {
    let no_service = || {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "NO_SUCH_SERVICE",
            "Không có dịch vụ tại đường dẫn này. / No service is published at this path.",
        )
    };
    check_path(path)?;
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let (context, after) = match trimmed.find('/') {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => (trimmed, ""),
    };
    let svc = view.service(context).cloned().ok_or_else(no_service)?;
    let second = after.strip_prefix('/').map(|s| s.split('/').next().unwrap_or(""));
    let is_label = |s: &str| {
        s.strip_prefix('v').is_some_and(|r| !r.is_empty() && r.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    };
    let (ver, rest) = match second {
        Some(s) if is_label(s) => {
            let v = svc.versions.get(s).cloned().ok_or_else(|| {
                Refusal::new(StatusCode::NOT_FOUND, "NO_SUCH_VERSION", "Dịch vụ không có phiên bản này. / The service has no such version.")
            })?;
            (v, after[1 + s.len()..].to_owned())
        }
        _ => {
            let v = svc.default_version.clone().ok_or_else(|| {
                Refusal::new(
                    StatusCode::NOT_FOUND,
                    "NO_SUCH_VERSION",
                    "Dịch vụ chưa có phiên bản đang cung cấp. / The service has no published version.",
                )
            })?;
            (v, after.to_owned())
        }
    };
    if ver.state == VersionState::Retired {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "VERSION_RETIRED",
            "Phiên bản dịch vụ này đã ngừng cung cấp; chuyển sang phiên bản mới. / This service version is retired; move to a newer version.",
        ));
    }
    Ok((svc, ver, rest))
}

/// `pppppppp-pppp-4xxx-8xxx-xxxxxxxxxxxx`: the 12 hex digits of `prefix`, then bits of the
/// counter, shaped as a UUID (written by hand: this runs on every request).
fn txn_id(prefix: &str, n: u64) -> String {
    fn hex_digits(out: &mut String, value: u64, count: u32) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for i in (0..count).rev() {
            out.push(char::from(HEX[((value >> (4 * i)) & 0xf) as usize]));
        }
    }
    let mut out = String::with_capacity(36);
    out.push_str(prefix.get(..8).unwrap_or(prefix));
    out.push('-');
    out.push_str(prefix.get(8..12).unwrap_or(""));
    out.push('-');
    hex_digits(&mut out, 0x4000 | ((n >> 60) & 0xfff), 4);
    out.push('-');
    hex_digits(&mut out, 0x8000 | ((n >> 48) & 0xfff), 4);
    out.push('-');
    hex_digits(&mut out, n & 0xffff_ffff_ffff, 12);
    out
}

/// `2xx`-style class of an HTTP status, for a bounded metric label.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_are_uuid_shaped_and_follow_the_counter() {
        let p = "0123456789ab";
        for n in [0u64, 1, 0xabc, 0xffff_ffff_ffff, 0x0123_4567_89ab_cdef, u64::MAX] {
            let expected =
                format!("{}-{}-4{:03x}-8{:03x}-{:012x}", &p[..8], &p[8..12], (n >> 60) & 0xfff, (n >> 48) & 0xfff, n & 0xffff_ffff_ffff);
            assert_eq!(txn_id(p, n), expected);
        }
    }

    #[test]
    fn paths_that_could_climb_out_of_the_upstream_prefix_are_refused() {
        for bad in ["/a/./b", "/a/../b", "/a/%2e/b", "/a/%2E%2e/b", "/a/.%2E", "/..", "/a/b%2fc", "/a/b%2Fc", "/a/%5C", "/a/b\\c"] {
            assert!(check_path(bad).is_err(), "{bad} must be refused");
        }
        for good in ["/", "/dancu/v1/citizens", "/a/.../b", "/a/.b/c", "/a/%2e%2e%2e", "/a/%2/b", "/a/%2ex", "/a/b.c", "/a//b"] {
            assert!(check_path(good).is_ok(), "{good} must pass");
        }
    }
}
