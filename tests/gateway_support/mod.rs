//! Helpers shared by the gateway black-box tests (`tests/gateway.rs`, `tests/gateway_refusals.rs`,
//! `tests/no_payload_at_rest.rs`): a started and seeded appliance, calls through its gateway,
//! consumer credentials and tokens, RFC 9421 signing with the crate's own signer, the JSON
//! envelope check, and a second, richer provider (`Provider`) that echoes bodies and answers
//! with headers of its choosing.
#![allow(dead_code, clippy::disallowed_methods)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::{BodyExt, Full};
use lgsp::gateway::digest::content_digest_sha256;
use lgsp::gateway::httpsig::{sign_with, RequestView, SignOptions, SignerKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{self, Api, Node};

pub const CONSUMER_AGENCY: &str = "000.00.01.H31";
pub const PROVIDER_AGENCY: &str = "000.00.00.H31";

/// A response from the gateway, whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: reqwest::Version,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The `X-Transaction-Id` every gateway response must carry.
    pub fn txn(&self) -> String {
        let t = self.header("x-transaction-id");
        assert!(t.as_deref().is_some_and(|t| !t.is_empty()), "no X-Transaction-Id on a {} response: {:?}", self.status, self.headers);
        t.unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Asserts that `r` is a refusal the gateway produced itself: the status, the JSON envelope
/// `{"status":"01","code","message","transactionId"}` and a transaction id matching the header.
#[track_caller]
pub fn assert_refusal(r: &Resp, status: u16, code: &str) {
    let v = r.json();
    assert_eq!(r.status, status, "expected {status} {code}, got {} {}", r.status, r.text());
    assert_eq!(v["code"], code, "expected code {code}: {v}");
    assert_eq!(v["status"], "01", "envelope status: {v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "envelope message: {v}");
    let txn = r.txn();
    assert_eq!(v["transactionId"], Value::String(txn.clone()), "transactionId must match the X-Transaction-Id header: {v}");
    let keys: Vec<&String> = v.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    assert_eq!(keys.len(), 4, "the envelope has exactly status, code, message, transactionId: {v}");
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "content-type of a refusal: {:?}", r.headers);
    if status == 429 {
        assert!(r.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)), "429 needs Retry-After: {:?}", r.headers);
    }
    if status == 401 {
        assert!(r.header("www-authenticate").is_some(), "401 needs WWW-Authenticate: {:?}", r.headers);
    }
}

/// A consumer credential as issued by the admin API (secrets shown once).
#[derive(Debug, Clone)]
pub struct Cred {
    pub id: String,
    pub system: String,
    pub consumer_key: String,
    pub consumer_secret: String,
    pub hmac_key_id: Option<String>,
    pub hmac_secret: Option<Vec<u8>>,
}

impl Cred {
    pub fn hmac_signer(&self) -> Signer {
        Signer {
            key: SignerKey::Hmac(self.hmac_secret.clone().expect("credential issued with an HMAC key")),
            key_id: self.hmac_key_id.clone().expect("HMAC key id"),
        }
    }
}

/// A key a consumer signs with, and the `keyid` it is registered under.
#[derive(Debug, Clone)]
pub struct Signer {
    pub key: SignerKey,
    pub key_id: String,
}

/// A started and seeded appliance, with a client for its gateway.
pub struct Gw {
    pub node: Node,
    pub op: Api,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`, what clients send as Host.
    pub authority: String,
    pub http: reqwest::blocking::Client,
    /// The seed's active production subscription of stp-hotich to dancu v1.
    pub sub: String,
    barrier: std::sync::atomic::AtomicUsize,
    barrier_cred: Mutex<Option<Cred>>,
}

pub fn gateway_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("gateway client")
}

impl Gw {
    /// Starts a node and seeds it (`common::seed`).
    pub fn start() -> Gw {
        Gw::on(Node::start())
    }

    /// Seeds an already started node (`common::seed`) and wraps it.
    pub fn on(node: Node) -> Gw {
        let op = node.operator();
        let sub = common::seed(&op);
        let url = node.info["gateway_url"].as_str().expect("gateway_url").to_owned();
        let authority = url.strip_prefix("http://").expect("dev gateway is plain HTTP").to_owned();
        Gw {
            node,
            op,
            url,
            authority,
            http: gateway_client(),
            sub,
            barrier: std::sync::atomic::AtomicUsize::new(0),
            barrier_cred: Mutex::new(None),
        }
    }

    pub fn metrics_url(&self) -> String {
        self.node.info["metrics_url"].as_str().expect("metrics_url").to_owned()
    }

    /// Sends a request to the gateway. `path` may carry a query.
    pub fn send(&self, method: &str, path: &str, headers: &[(String, String)], body: Option<Vec<u8>>) -> Resp {
        send_to(&self.http, &self.url, method, path, headers, body)
    }

    /// Sends a request with a body of unknown length (chunked transfer coding).
    pub fn send_chunked(&self, method: &str, path: &str, headers: &[(String, String)], body: Vec<u8>) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(m, format!("{}{path}", self.url));
        for (k, v) in headers {
            r = r.header(k.as_str(), v.as_str());
        }
        finish(r.body(reqwest::blocking::Body::new(std::io::Cursor::new(body))))
    }

    pub fn bearer(&self, token: &str, method: &str, path: &str, body: Option<Vec<u8>>) -> Resp {
        self.send(method, path, &[h("authorization", &format!("Bearer {token}"))], body)
    }

    /// Issues a credential for `system` in `environment` (`production` or `test`).
    pub fn credential(&self, system: &str, environment: &str, hmac: bool) -> Cred {
        let (s, b) = self.op.post("/api/v1/credentials", json!({"system": system, "environment": environment, "hmac": hmac}));
        assert_eq!(s, 201, "issue credential: {b}");
        Cred {
            id: b["id"].as_str().expect("id").to_owned(),
            system: system.to_owned(),
            consumer_key: b["consumer_key"].as_str().expect("consumer_key").to_owned(),
            consumer_secret: b["consumer_secret"].as_str().expect("consumer_secret").to_owned(),
            hmac_key_id: b["hmac"]["key_id"].as_str().map(str::to_owned),
            hmac_secret: b["hmac"]["secret_base64"].as_str().map(|s| STANDARD.decode(s).expect("hmac secret is base64")),
        }
    }

    /// `POST /token` with HTTP Basic client authentication; the raw answer.
    pub fn token_request(&self, key: &str, secret: &str) -> Resp {
        token_request_to(&self.http, &self.url, key, secret)
    }

    /// An access token for `cred`, waiting for the gateway's view to know the credential.
    pub fn token(&self, cred: &Cred) -> String {
        let r = eventually("the gateway knows the new credential", || {
            let r = self.token_request(&cred.consumer_key, &cred.consumer_secret);
            (r.status != 401).then_some(r)
        });
        assert_eq!(r.status, 200, "token: {}", r.text());
        let v = r.json();
        assert_eq!(v["token_type"], "Bearer", "{v}");
        assert!(v["expires_in"].as_i64().is_some_and(|n| n > 0), "{v}");
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// Waits until the gateway serves a registry view that includes every change made so far
    /// through the admin API: issues a fresh credential and waits until `/token` knows it.
    pub fn sync(&self) {
        let n = self.barrier.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cred = self.credential("stp-hotich", "production", false);
        eventually(&format!("gateway view catches up (barrier {n})"), || {
            let r = self.token_request(&cred.consumer_key, &cred.consumer_secret);
            (r.status != 401).then_some(())
        });
        *self.barrier_cred.lock().expect("barrier") = Some(cred);
    }

    /// PATCH a service version (upstream, limits, timeout, upstream auth) and wait for the view.
    pub fn patch_version(&self, context: &str, version: &str, patch: Value) {
        let (s, b) = self.op.patch(&format!("/api/v1/services/{context}/versions/{version}"), patch);
        assert_eq!(s, 200, "patch version: {b}");
        self.sync();
    }

    pub fn set_upstreams(&self, context: &str, version: &str, production: &str, test: &str) {
        self.patch_version(context, version, json!({"upstream": {"production": production, "test": test}}));
    }

    /// Requests and approves (provider, then operator) a subscription; returns its id.
    pub fn subscribe(&self, system: &str, service: &str, version: &str, environment: &str) -> String {
        let (s, b) = self.op.post(
            "/api/v1/subscriptions",
            json!({"consumer_system": system, "service": service, "version": version, "environment": environment, "purpose": "kiểm thử"}),
        );
        assert_eq!(s, 201, "request subscription: {b}");
        let id = b["id"].as_str().expect("id").to_owned();
        let (s, b) = self.op.post(&format!("/api/v1/subscriptions/{id}/provider-approve"), json!({}));
        assert_eq!(s, 200, "provider approve: {b}");
        let (s, b) = self.op.post(&format!("/api/v1/subscriptions/{id}/approve"), json!({}));
        assert_eq!(s, 200, "approve: {b}");
        id
    }

    /// A new consumer system of the consumer agency (or `agency`).
    pub fn system(&self, id: &str, agency: &str) {
        let (s, b) = self.op.post(
            "/api/v1/systems",
            json!({"id": id, "agency": agency, "name": format!("Hệ thống {id}"), "security": {"kind": "level", "level": 2}}),
        );
        assert_eq!(s, 201, "create system {id}: {b}");
    }

    /// Signs and sends a request (RFC 9421), covering `@method`, `@target-uri` and, with a body,
    /// `content-digest`.
    pub fn signed(&self, signer: &Signer, method: &str, path: &str, body: Option<Vec<u8>>) -> Resp {
        let headers = sign_request(&self.authority, signer, method, path, body.as_deref(), &SignParams::fresh());
        self.send(method, path, &headers, body)
    }

    /// The audit record of a transaction (polls: records are written when the response ends).
    pub fn audit(&self, txn: &str) -> Value {
        eventually(&format!("audit record of {txn}"), || {
            let (s, b) = self.op.get(&format!("/api/v1/audit/transactions?txn_id={txn}"));
            assert_eq!(s, 200, "audit search: {b}");
            let items = b["items"].as_array().cloned().unwrap_or_default();
            assert!(items.len() <= 1, "one record per transaction id: {b}");
            items.into_iter().next()
        })
    }

    pub fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.metrics_url())).send().expect("metrics reachable").text().expect("metrics text")
    }
}

/// Sends a request to the gateway at `base` (`http://host:port`). `path` may carry a query.
pub fn send_to(
    http: &reqwest::blocking::Client,
    base: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<Vec<u8>>,
) -> Resp {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = http.request(m, format!("{base}{path}"));
    for (k, v) in headers {
        r = r.header(k.as_str(), v.as_str());
    }
    if let Some(b) = body {
        r = r.body(b);
    }
    finish(r)
}

/// The HTTP Basic client authentication header for a consumer key and secret.
pub fn basic(key: &str, secret: &str) -> (String, String) {
    h("authorization", &format!("Basic {}", STANDARD.encode(format!("{key}:{secret}"))))
}

/// `POST /token` (client credentials, HTTP Basic) on the gateway at `base`; the raw answer.
pub fn token_request_to(http: &reqwest::blocking::Client, base: &str, key: &str, secret: &str) -> Resp {
    send_to(
        http,
        base,
        "POST",
        "/token",
        &[basic(key, secret), h("content-type", "application/x-www-form-urlencoded")],
        Some(b"grant_type=client_credentials".to_vec()),
    )
}

fn finish(r: reqwest::blocking::RequestBuilder) -> Resp {
    let resp = r.send().expect("gateway reachable");
    let status = resp.status().as_u16();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp.bytes().expect("gateway response body").to_vec();
    Resp { status, version, headers, body }
}

/// A header pair.
pub fn h(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

/// Polls `f` every 20 ms for up to 10 s until it yields a value.
#[track_caller]
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// What varies between signatures.
#[derive(Debug, Clone)]
pub struct SignParams {
    pub created: i64,
    pub nonce: Option<String>,
    /// Components; `None` = `@method`, `@target-uri` (+ `content-digest` with a body).
    pub components: Option<Vec<String>>,
    /// Extra headers sent (and available to cover).
    pub extra: Vec<(String, String)>,
}

impl SignParams {
    pub fn fresh() -> SignParams {
        SignParams { created: now(), nonce: Some(random_hex(12)), components: None, extra: vec![] }
    }
}

/// The headers of a signed request: `extra`, `Content-Digest` (with a body), `Signature-Input`
/// and `Signature`, computed with the crate's own signer over `http://{authority}{path}`.
pub fn sign_request(
    authority: &str,
    signer: &Signer,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    p: &SignParams,
) -> Vec<(String, String)> {
    let (path_only, query) = match path.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (path, None),
    };
    let mut map = HeaderMap::new();
    let mut out = Vec::new();
    for (k, v) in &p.extra {
        map.append(HeaderName::from_bytes(k.as_bytes()).expect("header name"), HeaderValue::from_str(v).expect("header value"));
        out.push((k.clone(), v.clone()));
    }
    if let Some(b) = body {
        let d = content_digest_sha256(b);
        map.insert("content-digest", HeaderValue::from_str(&d).expect("digest"));
        out.push(h("content-digest", &d));
    }
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let rv = RequestView { method: &method, scheme: "http", authority, path: path_only, query, headers: &map, has_body: body.is_some() };
    let default: Vec<String> = if body.is_some() {
        vec!["@method".into(), "@target-uri".into(), "content-digest".into()]
    } else {
        vec!["@method".into(), "@target-uri".into()]
    };
    let comps = p.components.clone().unwrap_or(default);
    let comps: Vec<&str> = comps.iter().map(String::as_str).collect();
    let opts = SignOptions {
        label: "sig1",
        key_id: &signer.key_id,
        created: p.created,
        expires: None,
        nonce: p.nonce.as_deref(),
        tag: None,
        include_alg: true,
    };
    let (input, sig) = sign_with(&rv, &comps, &opts, &signer.key).expect("sign");
    out.push(h("signature-input", &input));
    out.push(h("signature", &sig));
    out
}

/// What a `Provider` saw of one request.
#[derive(Debug, Clone)]
pub struct ProviderSeen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request body arrived whole (no stream error).
    pub complete: bool,
}

/// A provider with more control than `common::upstream`: any path answers with a fixed status,
/// a fixed set of headers (including repeated ones), and the body
/// `<request body>|<response marker>|<query>|<x-echo header>`; `/binary` answers all 256 byte
/// values. It keeps every request (with its body) for assertions.
pub struct Provider {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<ProviderSeen>>>,
    _server: common::upstream::TestServer,
}

/// The headers `Provider` answers with (besides content-length and date).
pub const PROVIDER_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/vnd.lgsp-test+json; charset=utf-8"),
    ("x-provider-note", "Xin chào, thế giới"),
    ("set-cookie", "a=1; Path=/; HttpOnly"),
    ("set-cookie", "b=2; Path=/"),
    ("cache-control", "no-store, private"),
    ("etag", "\"v1-abc\""),
    ("x-provider-multi", "one"),
    ("x-provider-multi", "two"),
];

impl Provider {
    pub fn start(status: u16, response_marker: &str) -> Provider {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let marker = response_marker.to_owned();
        let server = common::upstream::TestServer::start(move |req| Box::pin(provider_handle(req, seen2.clone(), status, marker.clone())));
        Provider { addr: server.addr, seen, _server: server }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }

    pub fn last(&self) -> Option<ProviderSeen> {
        self.seen.lock().expect("seen").last().cloned()
    }

    pub fn all(&self) -> Vec<ProviderSeen> {
        self.seen.lock().expect("seen").clone()
    }
}

async fn provider_handle(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<ProviderSeen>>>,
    status: u16,
    marker: String,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> =
        req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let echo_header = req.headers().get("x-echo").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
    let (body, complete) = match req.into_body().collect().await {
        Ok(c) => (c.to_bytes().to_vec(), true),
        Err(_) => (Vec::new(), false),
    };
    seen.lock().expect("seen").push(ProviderSeen {
        method,
        path: path.clone(),
        query: query.clone(),
        headers,
        body: body.clone(),
        complete,
    });
    let out = if path.ends_with("/binary") {
        (0..=255u8).cycle().take(4096).collect::<Vec<u8>>()
    } else {
        let mut out = body;
        out.push(b'|');
        out.extend_from_slice(marker.as_bytes());
        out.push(b'|');
        out.extend_from_slice(query.as_bytes());
        out.push(b'|');
        out.extend_from_slice(&echo_header);
        out
    };
    let mut r = hyper::Response::new(Full::new(Bytes::from(out)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    for (k, v) in PROVIDER_HEADERS {
        r.headers_mut().append(HeaderName::from_static(k), HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")));
    }
    Ok(r)
}

/// A TCP listener that accepts connections, reads the request head, and closes without
/// answering; counts the connections it accepted.
pub struct Dropper {
    pub addr: SocketAddr,
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Dropper {
    pub fn start() -> Dropper {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind dropper");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = accepted.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                drop(s);
            }
        });
        Dropper { addr, accepted }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The purpose keys the appliance derives from `secrets.key` (HMAC-SHA256 over a label).
pub fn derive_key(node_dir: &std::path::Path, label: &str) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let text = std::fs::read_to_string(node_dir.join("secrets.key")).expect("secrets.key");
    let key = STANDARD.decode(text.trim()).expect("secrets.key is base64");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("hmac key");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Seconds until midnight in Vietnam (UTC+7), when daily quotas reset.
pub fn secs_to_vn_midnight() -> i64 {
    use chrono::Timelike;
    let off = chrono::FixedOffset::east_opt(7 * 3600).expect("offset");
    let t = chrono::Utc::now().with_timezone(&off);
    86_400 - i64::from(t.num_seconds_from_midnight())
}
