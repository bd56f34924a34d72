//! Bad input of every kind gets a 4xx with a stable `code` and a human `message`, and changes
//! nothing (SPEC §5: "Errors are JSON with a stable `code` and a human `message`").
//!
//! Every refused call is checked the same way (see [`Fx::expect`]): status, code, a non-empty
//! message, the offending field in `details.field` where the API names one, and "nothing
//! changed": the admin audit trail did not grow and the operator reads back the same object (or
//! list) before and after.
//!
//! Tests named `suspected_*` probe single behaviours that were found wrong while writing this
//! file; they are kept apart so that they do not hide the results of the broad tests.
mod common;

use common::{Api, Node};
use serde_json::{json, Value};

const P: &str = "000.00.00.H31";
const C: &str = "000.00.01.H31";
const GHOST_AGENCY: &str = "999.99.99.Z99";
const NB: Value = Value::Null;
const PASSWORD: &str = "Str0ng!Passw0rd";
/// Above the admin API's 16 MiB body limit.
const OVERSIZED: usize = 17 << 20;

fn in_days(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days)).to_rfc3339()
}

// ---------------------------------------------------------------------------------------------
// Requests with full control over headers and body

enum Body {
    None,
    Json(Value),
    /// Bytes with a content type (`None`: no Content-Type header at all).
    Raw(Option<&'static str>, Vec<u8>),
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

fn send(api: &Api, method: &str, path: &str, body: &Body) -> Result<Resp, reqwest::Error> {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    // The server may close the connection after refusing an oversized body without reading it;
    // such a request gets a client of its own so that the shared connection pool stays usable.
    let oversized = matches!(body, Body::Raw(_, b) if b.len() > 1 << 20);
    let http = if oversized { reqwest::blocking::Client::new() } else { api.http.clone() };
    let mut r = http.request(m, format!("{}{path}", api.base));
    if let Some(t) = &api.token {
        r = r.bearer_auth(t);
    }
    r = match body {
        Body::None => r,
        Body::Json(v) => r.json(v),
        Body::Raw(ct, bytes) => {
            let r = r.body(bytes.clone());
            match ct {
                Some(ct) => r.header("content-type", *ct),
                None => r,
            }
        }
    };
    let resp = r.send()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes()?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Ok(Resp { status, headers, body })
}

// ---------------------------------------------------------------------------------------------
// Cases

struct Bad {
    method: &'static str,
    path: String,
    body: Body,
    status: u16,
    code: &'static str,
    field: Option<String>,
    says: Vec<String>,
}

/// A JSON body (`NB`: none) that must be refused with `status` and `code`.
fn bad(method: &'static str, path: impl Into<String>, body: Value, status: u16, code: &'static str) -> Bad {
    Bad {
        method,
        path: path.into(),
        body: if body.is_null() { Body::None } else { Body::Json(body) },
        status,
        code,
        field: None,
        says: vec![],
    }
}

/// Raw bytes (with a content type, or none) that must be refused.
fn raw(
    method: &'static str,
    path: impl Into<String>,
    content_type: Option<&'static str>,
    bytes: &[u8],
    status: u16,
    code: &'static str,
) -> Bad {
    Bad { method, path: path.into(), body: Body::Raw(content_type, bytes.to_vec()), status, code, field: None, says: vec![] }
}

/// 400 INVALID_INPUT naming `field` in `details.field`.
fn invalid(method: &'static str, path: impl Into<String>, body: Value, field: &str) -> Bad {
    bad(method, path, body, 400, "INVALID_INPUT").field(field)
}

fn not_found(method: &'static str, path: impl Into<String>, body: Value) -> Bad {
    bad(method, path, body, 404, "NOT_FOUND")
}

fn conflict(method: &'static str, path: impl Into<String>, body: Value, code: &'static str) -> Bad {
    bad(method, path, body, 409, code)
}

impl Bad {
    fn field(mut self, f: &str) -> Bad {
        self.field = Some(f.into());
        self
    }
    /// The message must contain `s`.
    fn says(mut self, s: &str) -> Bad {
        self.says.push(s.into());
        self
    }
    fn label(&self) -> String {
        let body = match &self.body {
            Body::None => String::new(),
            Body::Json(v) => {
                let s = v.to_string();
                s.chars().take(200).collect()
            }
            Body::Raw(ct, b) => {
                format!("[{} {} bytes: {:?}]", ct.unwrap_or("no content type"), b.len(), String::from_utf8_lossy(&b[..b.len().min(40)]))
            }
        };
        format!("{} {} {body}", self.method, self.path)
    }
}

/// Runs `f`; a panic is recorded in `failed` (under `label`) instead of ending the test.
fn check(failed: &mut Vec<String>, label: &str, f: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        failed.push(format!("- {label}: {}", msg.lines().next().unwrap_or("")));
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture

struct Fx {
    node: Node,
    op: Api,
    /// The seeded active subscription stp-hotich -> dancu/v1 (production).
    sub: String,
}

impl Fx {
    fn new() -> Fx {
        let node = Node::start();
        let op = node.operator();
        let sub = common::seed(&op);
        Fx { node, op, sub }
    }

    fn must(&self, api: &Api, method: &str, path: &str, body: Value) -> Value {
        let (s, b) = api.call(method, path, (!body.is_null()).then_some(&body));
        assert!((200..300).contains(&s), "{method} {path}: expected success, got {s} {b}");
        b
    }

    fn audit_head(&self) -> u64 {
        let (s, b) = self.op.get("/api/v1/audit/admin?limit=1");
        assert_eq!(s, 200, "audit: {b}");
        b["items"][0]["index"].as_u64().unwrap_or(0)
    }

    /// The nearest path at or above `path` that the operator can GET (the object a call is
    /// about, or its list); otherwise the registry export.
    fn readback_path(&self, path: &str) -> String {
        let mut p = path.split('?').next().unwrap_or(path).to_owned();
        loop {
            if p == "/api/v1" || !p.starts_with("/api/v1/") {
                return "/api/v1/registry/export".into();
            }
            if self.op.get(&p).0 == 200 {
                return p;
            }
            p.truncate(p.rfind('/').unwrap_or(0));
        }
    }

    fn snapshot(&self, readback: &str) -> (u64, Value) {
        (self.audit_head(), self.op.get(readback).1)
    }

    fn expect(&self, api: &Api, cases: &[Bad]) {
        for c in cases {
            self.expect_one(api, c);
        }
    }

    /// Like [`Fx::expect`], but runs every case and then fails with the list of those that
    /// failed (for the suspected_* tests, so that one report shows every wrong behaviour).
    fn expect_all(&self, api: &Api, cases: &[Bad]) {
        let mut failed = Vec::new();
        for c in cases {
            check(&mut failed, &c.label(), || {
                self.expect_one(api, c);
            });
        }
        assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), cases.len(), failed.join("\n"));
    }

    /// Sends a bad call and checks the refusal and that nothing changed; returns the body.
    fn expect_one(&self, api: &Api, c: &Bad) -> Value {
        let label = c.label();
        let rb = self.readback_path(&c.path);
        let before = self.snapshot(&rb);
        let r = send(api, c.method, &c.path, &c.body)
            .unwrap_or_else(|e| panic!("{label}: no HTTP answer ({e}); did the handler panic? see {}", self.node.log.display()));
        let b = r.body;
        assert_eq!(
            (r.status, b["code"].as_str().unwrap_or("")),
            (c.status, c.code),
            "{label}: expected {} {}, got {} {b}",
            c.status,
            c.code,
            r.status
        );
        let message = b["message"].as_str().unwrap_or("");
        assert!(!message.trim().is_empty(), "{label}: no message: {b}");
        if let Some(f) = &c.field {
            assert_eq!(b["details"]["field"], f.as_str(), "{label}: wrong or no field: {b}");
        }
        for s in &c.says {
            assert!(message.contains(s.as_str()), "{label}: the message does not say {s:?}: {b}");
        }
        let after = self.snapshot(&rb);
        assert_eq!(before.0, after.0, "{label}: a refused call wrote to the audit trail");
        assert_eq!(before.1, after.1, "{label}: a refused call changed {rb}");
        b
    }

    /// A new subscription request by the operator; returns its id.
    fn request(&self, consumer: &str, version: &str, env: &str) -> String {
        let b = self.must(
            &self.op,
            "POST",
            "/api/v1/subscriptions",
            json!({"consumer_system": consumer, "service": "dancu", "version": version,
                   "environment": env, "purpose": "tra cứu"}),
        );
        b["id"].as_str().expect("id").to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed bodies, content types, unknown fields, query strings

/// Every documented write that reads a JSON body, with a path to existing objects.
/// (publish, unlock and logout read no body.)
fn json_endpoints(fx: &Fx, cred: &str, sub_req: &str, sub_pa: &str) -> Vec<(&'static str, String)> {
    let sub = &fx.sub;
    vec![
        ("POST", "/api/v1/auth/login".into()),
        ("POST", "/api/v1/users".into()),
        ("PATCH", "/api/v1/users/admin".into()),
        ("POST", "/api/v1/users/admin/password".into()),
        ("POST", "/api/v1/tokens".into()),
        ("POST", "/api/v1/agencies".into()),
        ("PATCH", format!("/api/v1/agencies/{P}")),
        ("POST", format!("/api/v1/agencies/{P}/rename")),
        ("POST", format!("/api/v1/agencies/{P}/split")),
        ("POST", "/api/v1/agencies/merge".into()),
        ("POST", format!("/api/v1/agencies/{C}/dissolve")),
        ("POST", format!("/api/v1/agencies/{P}/suspend")),
        ("POST", format!("/api/v1/agencies/{P}/reinstate")),
        ("POST", "/api/v1/systems".into()),
        ("PATCH", "/api/v1/systems/hp-dancu".into()),
        ("PUT", "/api/v1/systems/hp-dancu/probe".into()),
        ("PUT", "/api/v1/services/dancu/versions/v1/probe".into()),
        ("POST", "/api/v1/services".into()),
        ("PATCH", "/api/v1/services/dancu".into()),
        ("POST", "/api/v1/services/dancu/versions".into()),
        ("PATCH", "/api/v1/services/dancu/versions/v1".into()),
        ("POST", "/api/v1/services/dancu/versions/v1/deprecate".into()),
        ("POST", "/api/v1/services/dancu/versions/v1/retire".into()),
        ("POST", "/api/v1/subscriptions".into()),
        ("POST", format!("/api/v1/subscriptions/{sub_req}/provider-approve")),
        ("POST", format!("/api/v1/subscriptions/{sub_pa}/approve")),
        ("POST", format!("/api/v1/subscriptions/{sub_req}/reject")),
        ("POST", format!("/api/v1/subscriptions/{sub}/revoke")),
        ("PUT", format!("/api/v1/subscriptions/{sub}/limits")),
        ("POST", "/api/v1/credentials".into()),
        ("POST", format!("/api/v1/credentials/{cred}/revoke")),
        ("PUT", format!("/api/v1/credentials/{cred}/public-keys")),
        ("POST", "/api/v1/catalogs".into()),
        ("POST", "/api/v1/catalogs/dm-test/versions".into()),
        ("POST", "/api/v1/registry/import".into()),
        ("PUT", "/api/v1/settings/holidays".into()),
        ("POST", "/api/v1/cluster/join-tokens".into()),
        ("POST", "/api/v1/cluster/leader".into()),
        ("PUT", "/api/v1/cluster/test-partition".into()),
        ("POST", "/api/v1/maintenance".into()),
        ("PATCH", "/api/v1/maintenance/mw-x".into()),
        ("POST", "/api/v1/maintenance/mw-x/cancel".into()),
        ("POST", "/api/v1/backups".into()),
        ("POST", "/api/v1/incidents".into()),
        ("POST", "/api/v1/incidents/inc-x/updates".into()),
        ("POST", "/api/v1/incidents/inc-x/resolve".into()),
        ("PUT", format!("/api/v1/agencies/{P}/webhooks")),
    ]
}

/// Objects for the sweeps: a credential, a catalog, a requested and a provider-approved
/// subscription. Returns (credential, requested, provider-approved).
fn sweep_objects(fx: &Fx) -> (String, String, String) {
    let op = &fx.op;
    let cred = fx.must(op, "POST", "/api/v1/credentials", json!({"system": "stp-hotich", "environment": "test"}));
    fx.must(op, "POST", "/api/v1/catalogs", json!({"code": "dm-test", "name": "Danh mục", "owner_agency": P}));
    fx.must(
        op,
        "POST",
        "/api/v1/systems",
        json!({"id": "stp-2", "agency": C, "name": "Hệ thống 2", "security": {"kind": "level", "level": 1}}),
    );
    let sub_req = fx.request("stp-hotich", "v1", "test");
    let sub_pa = fx.request("stp-2", "v1", "production");
    fx.must(op, "POST", &format!("/api/v1/subscriptions/{sub_pa}/provider-approve"), NB);
    (cred["id"].as_str().unwrap().to_owned(), sub_req, sub_pa)
}

#[test]
fn malformed_bodies_wrong_content_types_and_unknown_fields() {
    let fx = Fx::new();
    let (cred, sub_req, sub_pa) = sweep_objects(&fx);
    let endpoints = json_endpoints(&fx, &cred, &sub_req, &sub_pa);

    // The list covers every documented write that takes a body.
    let (_, doc) = fx.op.get("/api/v1/openapi.json");
    // No body, or not JSON (the reconciliation comparison takes the provider's CSV).
    let no_body = [
        "/publish",
        "/unlock",
        "/auth/logout",
        "/audit/verify",
        "/audit/reconciliation/compare",
        "/promote",
        "/cluster/leave",
        "/certificate/rotate",
        "/node/drain",
        "/node/resume",
    ];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let m = method.to_uppercase();
            if !matches!(m.as_str(), "POST" | "PUT" | "PATCH") || no_body.iter().any(|s| path.ends_with(s)) {
                continue;
            }
            let pattern = path.split('/').map(|seg| if seg.starts_with('{') { "*" } else { seg }).collect::<Vec<_>>();
            let covered = endpoints.iter().any(|(em, ep)| {
                let segs: Vec<&str> = ep.split('/').collect();
                *em == m && segs.len() == pattern.len() && segs.iter().zip(&pattern).all(|(a, b)| *b == "*" || a == b)
            });
            assert!(covered, "{m} {path} is not in json_endpoints()");
        }
    }

    let anon = fx.node.anonymous();
    for (method, path) in &endpoints {
        let method = *method;
        let api = if path == "/api/v1/auth/login" { &anon } else { &fx.op };
        let import = path == "/api/v1/registry/import";
        let optional = path.ends_with("approve");
        // PUT .../limits takes unknown fields: see suspected_unknown_fields_anywhere_are_refused.
        let limits = path.ends_with("/limits");
        let mut cases = vec![
            raw(method, path.as_str(), Some("application/json"), b"{\"reason\": ", 400, "INVALID_INPUT"),
            raw(method, path.as_str(), Some("application/json"), b"{'reason': 'x'}", 400, "INVALID_INPUT"),
            raw(method, path.as_str(), Some("application/json"), b"\xff\xfe{}", 400, "INVALID_INPUT"),
            raw(method, path.as_str(), Some("application/json"), b"{\"a\": 1} {\"b\": 2}", 400, "INVALID_INPUT"),
        ];
        if !optional {
            // Approvals take an optional body; for the others the body is required. The
            // decision endpoints' content type is checked in suspected_* below.
            cases.extend([
                raw(method, path.as_str(), Some("application/json"), b"", 400, "INVALID_INPUT"),
                raw(method, path.as_str(), Some("text/plain"), b"{}", 415, "UNSUPPORTED_MEDIA_TYPE"),
                raw(method, path.as_str(), Some("application/x-www-form-urlencoded"), b"reason=x", 415, "UNSUPPORTED_MEDIA_TYPE"),
                raw(method, path.as_str(), None, b"{}", 415, "UNSUPPORTED_MEDIA_TYPE"),
            ]);
        }
        if import {
            // A body that is not a JSON object is refused like on every endpoint; inside a
            // document, the import reports every problem with its path.
            cases.extend([
                bad(method, path.as_str(), json!([1, 2]), 400, "INVALID_INPUT"),
                raw(method, path.as_str(), Some("application/json"), b"null", 400, "INVALID_INPUT"),
                bad(method, path.as_str(), json!({"agencies": []}), 422, "IMPORT_INVALID"),
                bad(method, path.as_str(), json!({"agency": [{"code": P, "name": "x", "bogus_field": 1}]}), 422, "IMPORT_INVALID"),
            ]);
        } else {
            cases.extend([
                raw(method, path.as_str(), Some("application/json"), b"null", 400, "INVALID_INPUT"),
                bad(method, path.as_str(), json!("reason"), 400, "INVALID_INPUT"),
                bad(method, path.as_str(), json!(42), 400, "INVALID_INPUT"),
            ]);
            if !limits {
                cases.push(bad(method, path.as_str(), json!({"bogus_field": 1}), 400, "INVALID_INPUT").says("bogus_field"));
            }
        }
        fx.expect(api, &cases);
    }

    // An import names every error with its path (shape errors, then rule errors).
    for doc in [
        json!({"agency": [{"code": P, "name": "x", "extra": true}, {"code": C}]}),
        json!({"agency": [{"code": "bad", "name": "x"}, {"code": "000.00.09.h31", "name": "y"}]}),
    ] {
        let b = fx.expect_one(&fx.op, &bad("POST", "/api/v1/registry/import", doc, 422, "IMPORT_INVALID"));
        let errors = b["details"]["errors"].as_array().expect("details.errors");
        let paths: Vec<&str> = errors.iter().filter_map(|e| e["path"].as_str()).collect();
        assert!(paths.iter().any(|p| p.starts_with("agency[0]")) && paths.iter().any(|p| p.starts_with("agency[1]")), "{b}");
        assert!(errors.iter().all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty())), "{b}");
    }

    // Bodies above the limit.
    let big = {
        let mut v = b"{\"code\": \"000.00.09.H31\", \"name\": \"".to_vec();
        v.resize(OVERSIZED, b'a');
        v.extend_from_slice(b"\"}");
        v
    };
    fx.expect_one(&fx.op, &raw("POST", "/api/v1/agencies", Some("application/json"), &big, 413, "PAYLOAD_TOO_LARGE"));
}

#[test]
fn bad_query_strings() {
    let fx = Fx::new();
    let sub = fx.sub.clone();
    let q = |path: &str| bad("GET", path, NB, 400, "INVALID_INPUT");
    fx.expect(
        &fx.op,
        &[
            q("/api/v1/agencies?bogus=1").says("bogus"),
            q("/api/v1/agencies?status=closed"),
            q("/api/v1/agencies?limit=abc"),
            q("/api/v1/agencies?offset=-1"),
            q("/api/v1/systems?agency=P&agency_code=x"),
            q("/api/v1/services?provider=hp-dancu"),
            q("/api/v1/subscriptions?state=approved"),
            q("/api/v1/credentials?limit=1.5"),
            q("/api/v1/users?role=operator"),
            q("/api/v1/catalogs/x/entries?version=latest"),
            q("/api/v1/audit/admin?limit=many"),
            q("/api/v1/audit/admin?since=yesterday"),
            q("/api/v1/incidents?open=maybe"),
            q("/api/v1/incidents/inc-x/report?format=pdf").says("html or json"),
            bad("POST", "/api/v1/registry/import?dry_run=maybe", json!({}), 400, "INVALID_INPUT"),
            bad(
                "POST",
                "/api/v1/registry/import?dryrun=true",
                json!({"agency": [{"code": "000.00.09.H31", "name": "x"}]}),
                400,
                "INVALID_INPUT",
            ),
        ],
    );
    // Unknown endpoints are JSON errors too.
    fx.expect(
        &fx.op,
        &[
            bad("GET", "/api/v1/nope", NB, 404, "NO_SUCH_ENDPOINT"),
            bad("POST", format!("/api/v1/subscriptions/{sub}/approve-now"), json!({}), 404, "NO_SUCH_ENDPOINT"),
            bad("GET", "/api/v2/agencies", NB, 404, "NO_SUCH_ENDPOINT"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Wrong types and missing fields

#[test]
fn wrong_types_and_missing_required_fields() {
    let fx = Fx::new();
    let sub = fx.sub.clone();
    let wrong =
        |method: &'static str, path: &str, body: Value, mentions: &str| bad(method, path, body, 400, "INVALID_INPUT").says(mentions);
    let sys = |security: Value| json!({"id": "x-sys", "agency": P, "name": "x", "security": security});
    fx.expect(
        &fx.op,
        &[
            // Wrong types.
            wrong("POST", "/api/v1/agencies", json!({"code": 123, "name": "x"}), "code"),
            wrong("POST", "/api/v1/agencies", json!({"code": "000.00.09.H31", "name": ["x"]}), "name"),
            wrong("POST", "/api/v1/agencies", json!({"code": "000.00.09.H31", "name": "x", "contacts": "a@b.vn"}), "contacts"),
            wrong("POST", "/api/v1/systems", sys(json!({"kind": "level", "level": "3"})), "security"),
            wrong("POST", "/api/v1/systems", sys(json!({"kind": "level", "level": 300})), "security"),
            wrong("POST", "/api/v1/systems", sys(json!({"kind": "level", "level": -1})), "security"),
            wrong("POST", "/api/v1/systems", sys(json!({"kind": "none"})), "none"),
            wrong("POST", "/api/v1/systems", sys(json!(3)), "security"),
            wrong("POST", "/api/v1/systems", sys(json!({"kind": "commitment", "signed_on": "31/12/2026", "document": "x"})), "security"),
            wrong("POST", "/api/v1/services/dancu/versions", json!({"version": "v9", "upstream": "http://10.0.0.5/api"}), "upstream"),
            wrong("POST", "/api/v1/services/dancu/versions", json!({"version": 2}), "version"),
            wrong("POST", "/api/v1/services/dancu/versions", json!({"version": "v9", "max_body_bytes": -5}), "max_body_bytes"),
            wrong("POST", "/api/v1/services", json!({"context": "x", "provider_system": "hp-dancu", "name": "x", "format": "yaml"}), "format"),
            wrong("POST", "/api/v1/services", json!({"context": "x", "provider_system": "hp-dancu", "name": "x", "methods": "GET"}), "methods"),
            wrong("POST", "/api/v1/subscriptions", json!({"consumer_system": "stp-hotich", "service": "dancu", "version": "v1", "environment": "staging", "purpose": "p"}), "environment"),
            wrong("POST", "/api/v1/subscriptions", json!({"consumer_system": "stp-hotich", "service": "dancu", "version": "v1", "environment": "test", "purpose": "p", "rate_limit": {"per_second": "fast"}}), "per_second"),
            wrong("POST", "/api/v1/services/dancu/versions/v1/deprecate", json!({"retire_at": "next year", "reason": "x"}), "retire_at"),
            wrong("POST", "/api/v1/services/dancu/versions/v1/deprecate", json!({"retire_at": 1893456000, "reason": "x"}), "retire_at"),
            wrong("POST", "/api/v1/incidents", json!({"title": "Sự cố", "severity": "normal"}), "title"),
            wrong("POST", "/api/v1/incidents", json!({"title": {"vi": "Sự cố", "en": "Incident"}, "severity": "critical"}), "severity"),
            wrong("POST", "/api/v1/incidents", json!({"title": {"vi": "Sự cố", "en": "Incident"}, "severity": "normal", "expected_fix_at": "tomorrow"}), "expected_fix_at"),
            wrong("POST", "/api/v1/incidents", json!({"title": {"vi": "Sự cố", "en": "Incident"}, "severity": "normal", "services": "dancu"}), "services"),
            wrong("PUT", "/api/v1/settings/holidays", json!({"holidays": ["2027-13-01"]}), "holidays"),
            wrong("PUT", "/api/v1/settings/holidays", json!({"holidays": "2027-01-01"}), "holidays"),
            wrong("PUT", &format!("/api/v1/subscriptions/{sub}/limits"), json!({"per_day": -1}), "per_day"),
            wrong("POST", "/api/v1/users", json!({"username": "u1", "role": "superuser", "password": PASSWORD}), "role"),
            wrong("POST", "/api/v1/users", json!({"username": "u1", "role": "auditor", "password": 12345678}), "password"),
            wrong("PATCH", "/api/v1/users/admin", json!({"disabled": "yes"}), "disabled"),
            wrong("POST", "/api/v1/tokens", json!({"name": "x", "expires_in_days": -1}), "expires_in_days"),
            wrong("POST", "/api/v1/tokens", json!({"name": "x", "expires_in_days": "30"}), "expires_in_days"),
            wrong("POST", "/api/v1/credentials", json!({"system": "stp-hotich", "environment": "production", "hmac": "yes"}), "hmac"),
            wrong("POST", "/api/v1/catalogs/x/versions", json!({"entries": {"code": "1"}}), "entries"),
            // Missing required fields.
            wrong("POST", "/api/v1/agencies", json!({"name": "x"}), "code"),
            wrong("POST", "/api/v1/agencies", json!({"code": "000.00.09.H31"}), "name"),
            wrong("POST", "/api/v1/systems", json!({"id": "x-sys", "agency": P, "name": "x"}), "security"),
            wrong("POST", "/api/v1/services", json!({"context": "x", "name": "x"}), "provider_system"),
            wrong("POST", "/api/v1/services/dancu/versions", json!({"upstream": {}}), "version"),
            wrong("POST", "/api/v1/subscriptions", json!({"consumer_system": "stp-hotich", "service": "dancu", "version": "v1", "environment": "test"}), "purpose"),
            wrong("POST", "/api/v1/credentials", json!({"system": "stp-hotich"}), "environment"),
            wrong("POST", "/api/v1/services/dancu/versions/v1/deprecate", json!({"reason": "x"}), "retire_at"),
            wrong("POST", "/api/v1/services/dancu/versions/v1/retire", json!({}), "reason"),
            wrong("POST", &format!("/api/v1/agencies/{P}/rename"), json!({"new_name": "x"}), "reason"),
            wrong("POST", &format!("/api/v1/agencies/{P}/suspend"), json!({}), "reason"),
            wrong("POST", "/api/v1/agencies/merge", json!({"sources": [C], "reason": "x"}), "into"),
            wrong("POST", "/api/v1/users", json!({"username": "u1", "role": "auditor"}), "password"),
            wrong("POST", "/api/v1/users/admin/password", json!({}), "new_password"),
            wrong("POST", "/api/v1/tokens", json!({}), "name"),
            wrong("POST", "/api/v1/catalogs", json!({"code": "dm-x", "name": "x"}), "owner_agency"),
            wrong("PUT", "/api/v1/settings/holidays", json!({}), "holidays"),
        ],
    );
    let anon = fx.node.anonymous();
    fx.expect(
        &anon,
        &[
            bad("POST", "/api/v1/auth/login", json!({"username": "admin"}), 400, "INVALID_INPUT").says("password"),
            bad("POST", "/api/v1/auth/login", json!({"username": 1, "password": "x"}), 400, "INVALID_INPUT").says("username"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Identifier shapes and value rules

#[test]
fn identifier_shapes_and_value_rules() {
    let fx = Fx::new();
    let mut cases = Vec::new();
    // QĐ 20/2020 identifier codes: NNN.NN.NN.ANN.
    let long_name = "x".repeat(301);
    for code in [
        "",
        "000.00.00.h31",
        "000.00.00H31",
        "00.00.00.H31",
        "0000.00.00.H31",
        "000.00.00.H3",
        "000.00.00.H311",
        "000-00-00-H31",
        "000.00.00.H31 ",
        " 000.00.00.H31",
        "A00.00.00.H31",
        "000.0a.00.H31",
        "000.00.00.331",
        "000.00.00.ĐH1",
        "000.00.00.H31\n",
    ] {
        cases.push(invalid("POST", "/api/v1/agencies", json!({"code": code, "name": "Sở"}), "code").says("NNN.NN.NN.ANN"));
    }
    cases.extend([
        invalid(
            "POST",
            format!("/api/v1/agencies/{P}/rename"),
            json!({"new_name": "x", "new_code": "000.00.0.H31", "reason": "r"}),
            "new_code.code",
        ),
        invalid(
            "POST",
            format!("/api/v1/agencies/{C}/split"),
            json!({"into": [{"code": "000.00.05.H31", "name": "A"}, {"code": "bad", "name": "B"}], "reason": "r"}),
            "into[1].code",
        ),
        invalid(
            "POST",
            "/api/v1/agencies/merge",
            json!({"sources": [C], "into": {"code": "000.00.05.h31", "name": "A"}, "reason": "r"}),
            "into.code",
        ),
        // Names and reasons.
        invalid("POST", "/api/v1/agencies", json!({"code": "000.00.09.H31", "name": "   "}), "name"),
        invalid("POST", "/api/v1/agencies", json!({"code": "000.00.09.H31", "name": long_name}), "name").says("300"),
        invalid("POST", format!("/api/v1/agencies/{P}/suspend"), json!({"reason": " "}), "reason"),
        invalid("PATCH", "/api/v1/systems/hp-dancu", json!({"name": ""}), "name"),
    ]);
    // Slugs: system ids, service contexts, catalog codes.
    let sys = |id: &str| json!({"id": id, "agency": P, "name": "x", "security": {"kind": "level", "level": 2}});
    for id in ["", "HP-dancu", "-dancu", "hp dancu", "hp_dancu", "hp.dancu", "hệ-thống", "hp/dancu", &"a".repeat(64)] {
        cases.push(invalid("POST", "/api/v1/systems", sys(id), "id"));
    }
    let svc = |ctx: &str| json!({"context": ctx, "provider_system": "hp-dancu", "name": "x"});
    for ctx in ["Dancu", "-x", "dan cu", "dân-cư", ""] {
        cases.push(invalid("POST", "/api/v1/services", svc(ctx), "context"));
    }
    // Contexts the gateway uses itself.
    for ctx in ["token", "revoke", "dmdc", "status", "metrics", "api"] {
        cases.push(invalid("POST", "/api/v1/services", svc(ctx), "context").says("reserved"));
    }
    cases.push(invalid(
        "POST",
        "/api/v1/services",
        json!({"context": "ok-ctx", "provider_system": "hp-dancu", "name": "x", "methods": ["GET", "FETCH"]}),
        "methods[1]",
    ));
    for code in ["DM", "dm_x", "dm x", "-dm"] {
        cases.push(invalid("POST", "/api/v1/catalogs", json!({"code": code, "name": "x", "owner_agency": P}), "code"));
    }
    // Version labels.
    let version = |v: &str| json!({"version": v, "upstream": {"production": "http://10.0.0.5/api"}});
    for v in ["", "1", "v", "V1", "v1.", "v.1", "v1..2", "v1-beta", "version1", "v1.a", "v 1", "v12345678901234567"] {
        cases.push(invalid("POST", "/api/v1/services/dancu/versions", version(v), "version").says("v1 or v2.1"));
    }
    // Upstreams: absolute http(s) URLs with a host.
    for url in [
        "ftp://10.0.0.5/api",
        "10.0.0.5/api",
        "//10.0.0.5/api",
        "http://",
        "https://",
        "http:///api",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://exa mple.vn/api",
        "",
    ] {
        cases.push(
            invalid(
                "POST",
                "/api/v1/services/dancu/versions",
                json!({"version": "v9", "upstream": {"production": url}}),
                "upstream.production",
            )
            .says("http"),
        );
        cases.push(invalid(
            "POST",
            "/api/v1/services/dancu/versions",
            json!({"version": "v9", "upstream": {"test": url}}),
            "upstream.test",
        ));
    }
    cases.extend([
        invalid(
            "PATCH",
            "/api/v1/services/dancu/versions/v1",
            json!({"upstream": {"production": "gopher://10.0.0.5"}}),
            "upstream.production",
        ),
        // A published version keeps an upstream.
        invalid("PATCH", "/api/v1/services/dancu/versions/v1", json!({"upstream": {}}), "upstream"),
    ]);
    // Security levels 1..5 (NĐ 85/2016).
    let level = |l: u8| json!({"kind": "level", "level": l});
    for l in [0, 6, 255] {
        let body = json!({"id": "lvl-sys", "agency": P, "name": "x", "security": level(l)});
        cases.push(invalid("POST", "/api/v1/systems", body, "security.level").says("1 to 5"));
        cases.push(invalid("PATCH", "/api/v1/systems/hp-dancu", json!({"security": level(l)}), "security.level"));
    }
    cases.push(invalid(
        "POST",
        "/api/v1/systems",
        json!({"id": "cmt-sys", "agency": P, "name": "x", "security": {"kind": "commitment", "signed_on": "2026-01-05", "document": " "}}),
        "security.document",
    ));
    // Tokens and rate limits.
    cases.extend([
        invalid("POST", "/api/v1/tokens", json!({"name": " "}), "name"),
        invalid("POST", "/api/v1/tokens", json!({"name": "x".repeat(101)}), "name"),
        invalid("POST", "/api/v1/tokens", json!({"name": "ci", "expires_in_days": 0}), "expires_in_days"),
        invalid("PUT", format!("/api/v1/subscriptions/{}/limits", fx.sub), json!({"per_second": 0}), "rate_limit"),
        invalid("PUT", format!("/api/v1/subscriptions/{}/limits", fx.sub), json!({"per_day": 0}), "rate_limit"),
    ]);
    fx.expect(&fx.op, &cases);

    // A bad username is refused too (after the password is hashed: one case only).
    fx.expect_one(
        &fx.op,
        &invalid("POST", "/api/v1/users", json!({"username": "Bad User", "role": "auditor", "password": PASSWORD}), "username"),
    );
    // Catalog field types and entries.
    fx.must(&fx.op, "POST", "/api/v1/catalogs", json!({"code": "dm-x", "name": "x", "owner_agency": P}));
    fx.expect(
        &fx.op,
        &[
            invalid("POST", "/api/v1/catalogs/dm-x/versions", json!({"entries": []}), "fields"),
            invalid("POST", "/api/v1/catalogs/dm-x/versions", json!({"fields": [], "entries": []}), "fields"),
            invalid(
                "POST",
                "/api/v1/catalogs/dm-x/versions",
                json!({"fields": [{"name": "code", "type": "uuid"}], "entries": []}),
                "fields[0].type",
            ),
            invalid(
                "POST",
                "/api/v1/catalogs/dm-x/versions",
                json!({"fields": [{"name": "code"}], "entries": [{"code": "1"}, {"code": "1"}]}),
                "entries[1].code",
            ),
            invalid(
                "POST",
                "/api/v1/catalogs/dm-x/versions",
                json!({"fields": [{"name": "code"}], "entries": [{"code": "1", "ten": "x"}]}),
                "entries[0].ten",
            ),
            invalid(
                "POST",
                "/api/v1/catalogs/dm-x/versions",
                json!({"fields": [{"name": "code"}], "entries": [{"ten": "x"}]}),
                "entries[0].ten",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Duplicates and references to missing objects

#[test]
fn duplicates_and_missing_references() {
    let fx = Fx::new();
    fx.must(&fx.op, "POST", "/api/v1/catalogs", json!({"code": "dm-x", "name": "x", "owner_agency": P}));
    let exists = |method: &'static str, path: &str, body: Value| bad(method, path, body, 409, "ALREADY_EXISTS");
    let sys = |id: &str, agency: &str| json!({"id": id, "agency": agency, "name": "x", "security": {"kind": "level", "level": 2}});
    let svc = |ctx: &str, provider: &str| json!({"context": ctx, "provider_system": provider, "name": "x"});
    let request = |consumer: &str, service: &str, version: &str| json!({"consumer_system": consumer, "service": service, "version": version, "environment": "test", "purpose": "p"});
    let reason = json!({"reason": "r"});
    let two = |a: &str, b: &str| json!({"into": [{"code": a, "name": "A"}, {"code": b, "name": "B"}], "systems": {"stp-hotich": a}, "reason": "r"});
    fx.expect(
        &fx.op,
        &[
            // Duplicates.
            exists("POST", "/api/v1/agencies", json!({"code": P, "name": "x"})).says(P),
            exists("POST", "/api/v1/systems", sys("hp-dancu", C)).says("hp-dancu"),
            exists("POST", "/api/v1/services", svc("dancu", "stp-hotich")),
            exists("POST", "/api/v1/services/dancu/versions", json!({"version": "v1"})),
            exists("POST", "/api/v1/catalogs", json!({"code": "dm-x", "name": "x", "owner_agency": C})),
            exists("POST", &format!("/api/v1/agencies/{C}/rename"), json!({"new_name": "x", "new_code": P, "reason": "r"})),
            exists("POST", &format!("/api/v1/agencies/{C}/split"), two("000.00.05.H31", P)),
            // References to missing objects.
            not_found("POST", "/api/v1/agencies", json!({"code": "000.00.09.H31", "name": "x", "parent": GHOST_AGENCY})),
            not_found("PATCH", format!("/api/v1/agencies/{P}"), json!({"parent": GHOST_AGENCY})),
            not_found("POST", "/api/v1/systems", sys("new-sys", GHOST_AGENCY)).says(GHOST_AGENCY),
            not_found("POST", "/api/v1/services", svc("new-svc", "no-such-sys")).says("no-such-sys"),
            not_found("PATCH", "/api/v1/services/no-such-svc", svc("no-such-svc", "hp-dancu")),
            not_found("POST", "/api/v1/services/no-such-svc/versions", json!({"version": "v1"})),
            not_found("PATCH", "/api/v1/services/dancu/versions/v9", json!({"max_body_bytes": 1})),
            not_found("POST", "/api/v1/services/dancu/versions/v9/publish", NB),
            not_found("POST", "/api/v1/services/dancu/versions/v9/deprecate", json!({"retire_at": in_days(400), "reason": "r"})),
            not_found("POST", "/api/v1/services/dancu/versions/v9/retire", json!({"reason": "r", "override_reason": "o"})),
            not_found("POST", "/api/v1/subscriptions", request("stp-hotich", "no-such-svc", "v1")),
            not_found("POST", "/api/v1/subscriptions", request("stp-hotich", "dancu", "v9")),
            not_found("POST", "/api/v1/subscriptions", request("no-such-sys", "dancu", "v1")),
            not_found("POST", "/api/v1/subscriptions/sub-nope/provider-approve", NB),
            not_found("POST", "/api/v1/subscriptions/sub-nope/approve", NB),
            not_found("POST", "/api/v1/subscriptions/sub-nope/reject", reason.clone()),
            not_found("POST", "/api/v1/subscriptions/sub-nope/revoke", reason.clone()),
            not_found("PUT", "/api/v1/subscriptions/sub-nope/limits", json!({"per_second": 5})),
            not_found("POST", "/api/v1/credentials", json!({"system": "no-such-sys", "environment": "test"})),
            not_found("POST", "/api/v1/credentials/cred-nope/revoke", reason.clone()),
            not_found("POST", "/api/v1/catalogs", json!({"code": "dm-y", "name": "x", "owner_agency": GHOST_AGENCY})),
            not_found("POST", "/api/v1/catalogs/no-such-cat/versions", json!({"fields": [{"name": "code"}], "entries": []})),
            not_found("POST", format!("/api/v1/agencies/{GHOST_AGENCY}/rename"), json!({"new_name": "x", "reason": "r"})),
            not_found("POST", format!("/api/v1/agencies/{GHOST_AGENCY}/suspend"), reason.clone()),
            not_found("POST", format!("/api/v1/agencies/{C}/dissolve"), json!({"successor": GHOST_AGENCY, "reason": "r"})),
            not_found(
                "POST",
                "/api/v1/agencies/merge",
                json!({"sources": [GHOST_AGENCY], "into": {"code": P, "name": "x"}, "reason": "r"}),
            ),
            not_found("PATCH", "/api/v1/systems/no-such-sys", json!({"name": "x"})),
            not_found("PATCH", "/api/v1/users/no-such-user", json!({"display_name": "x"})),
            not_found("POST", "/api/v1/users/no-such-user/unlock", NB),
            not_found("POST", "/api/v1/users/no-such-user/password", json!({"new_password": "An0ther!Passw0rd"})),
            not_found("DELETE", "/api/v1/tokens/ffffffffffffffff", NB),
            // Reads.
            not_found("GET", format!("/api/v1/agencies/{GHOST_AGENCY}"), NB).says(GHOST_AGENCY),
            not_found("GET", "/api/v1/systems/no-such-sys", NB),
            not_found("GET", "/api/v1/services/no-such-svc", NB),
            not_found("GET", "/api/v1/subscriptions/sub-nope", NB),
            not_found("GET", "/api/v1/credentials/cred-nope", NB),
            not_found("GET", "/api/v1/catalogs/no-such-cat", NB),
            not_found("GET", "/api/v1/catalogs/no-such-cat/entries", NB),
            not_found("GET", "/api/v1/users/no-such-user", NB),
            bad("GET", "/api/v1/catalogs/dm-x/entries", NB, 404, "NO_VERSION"),
        ],
    );
    // Creating a user that exists, or in an agency that does not (each hashes a password).
    fx.expect(
        &fx.op,
        &[
            exists("POST", "/api/v1/users", json!({"username": "admin", "role": "auditor", "password": PASSWORD})),
            not_found(
                "POST",
                "/api/v1/users",
                json!({"username": "ghost-admin", "role": "agency-admin", "agency": GHOST_AGENCY, "password": PASSWORD}),
            ),
            invalid("POST", "/api/v1/users", json!({"username": "no-agency", "role": "agency-admin", "password": PASSWORD}), "agency"),
            invalid(
                "POST",
                "/api/v1/users",
                json!({"username": "op-with-agency", "role": "operator", "agency": P, "password": PASSWORD}),
                "agency",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Lifecycle transitions

#[test]
fn invalid_lifecycle_transitions() {
    let fx = Fx::new();
    let op = &fx.op;
    let sub = fx.sub.clone();
    let t = |method: &'static str, path: &str, body: Value| conflict(method, path, body, "INVALID_TRANSITION");
    let v = |version: &str, action: &str| format!("/api/v1/services/dancu/versions/{version}/{action}");
    let s = |id: &str, action: &str| format!("/api/v1/subscriptions/{id}/{action}");
    let reason = json!({"reason": "r"});
    let deprecate = json!({"retire_at": in_days(200), "reason": "r"});
    fx.must(op, "POST", "/api/v1/services/dancu/versions", json!({"version": "v2", "upstream": {"test": "http://127.0.0.1:9/t"}}));
    fx.must(op, "POST", "/api/v1/services/dancu/versions", json!({"version": "v3"}));
    let requested = fx.request("stp-hotich", "v1", "test");
    fx.expect(
        op,
        &[
            // Versions: draft -> published -> deprecated -> retired.
            t("POST", &v("v1", "publish"), NB).says("published"),
            t("POST", &v("v2", "deprecate"), deprecate.clone()).says("draft"),
            t("POST", &v("v2", "retire"), reason.clone()),
            t("POST", &v("v2", "retire"), json!({"reason": "r", "override_reason": "o"})),
            t("POST", &v("v1", "retire"), reason.clone()),
            invalid("POST", v("v3", "publish"), NB, "upstream").says("upstream"),
            // Subscriptions: requested -> provider_approved -> active; rejected, revoked.
            t("POST", &s(&sub, "provider-approve"), NB),
            t("POST", &s(&sub, "approve"), NB),
            t("POST", &s(&sub, "reject"), reason.clone()),
            t("POST", &s(&requested, "approve"), NB).says("requested"),
            t("POST", &s(&requested, "revoke"), reason.clone()),
        ],
    );
    fx.must(op, "POST", &v("v1", "deprecate"), deprecate.clone());
    fx.must(op, "POST", &s(&requested, "reject"), reason.clone());
    fx.must(op, "POST", &s(&sub, "revoke"), reason.clone());
    let cred = fx.must(op, "POST", "/api/v1/credentials", json!({"system": "stp-hotich", "environment": "test"}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fx.must(op, "POST", &format!("/api/v1/credentials/{cred}/revoke"), reason.clone());
    fx.expect(
        op,
        &[
            t("POST", &v("v1", "publish"), NB).says("deprecated"),
            t("POST", &v("v1", "deprecate"), deprecate.clone()),
            t("POST", &s(&requested, "reject"), reason.clone()).says("rejected"),
            t("POST", &s(&requested, "provider-approve"), NB),
            t("POST", &s(&requested, "revoke"), reason.clone()),
            t("POST", &s(&sub, "revoke"), reason.clone()).says("revoked"),
            t("POST", &s(&sub, "approve"), NB),
            t("POST", &s(&sub, "provider-approve"), NB),
            conflict("POST", format!("/api/v1/credentials/{cred}/revoke"), reason.clone(), "ALREADY_REVOKED"),
        ],
    );
    fx.must(op, "POST", &v("v1", "retire"), json!({"reason": "r", "override_reason": "o"}));
    fx.expect(
        op,
        &[
            t("POST", &v("v1", "retire"), json!({"reason": "r", "override_reason": "o"})).says("retired"),
            t("POST", &v("v1", "deprecate"), deprecate.clone()),
            t("POST", &v("v1", "publish"), NB),
            conflict("PATCH", "/api/v1/services/dancu/versions/v1", json!({"max_body_bytes": 5}), "VERSION_RETIRED"),
        ],
    );
    // Agencies that no longer exist as such refuse changes.
    fx.must(op, "POST", "/api/v1/agencies", json!({"code": "000.00.09.H31", "name": "Sở cũ"}));
    fx.must(op, "POST", "/api/v1/agencies/000.00.09.H31/dissolve", json!({"reason": "QĐ giải thể"}));
    let gone = |method: &'static str, path: &str, body: Value| conflict(method, path, body, "AGENCY_INACTIVE");
    fx.expect(
        op,
        &[
            gone("POST", "/api/v1/agencies/000.00.09.H31/suspend", reason.clone()),
            gone("POST", "/api/v1/agencies/000.00.09.H31/dissolve", reason.clone()),
            gone("POST", "/api/v1/agencies/000.00.09.H31/rename", json!({"new_name": "x", "reason": "r"})),
            gone("PATCH", "/api/v1/agencies/000.00.09.H31", json!({"contacts": []})),
            gone(
                "POST",
                "/api/v1/systems",
                json!({"id": "late-sys", "agency": "000.00.09.H31", "name": "x", "security": {"kind": "level", "level": 1}}),
            ),
            conflict("POST", format!("/api/v1/agencies/{C}/dissolve").as_str(), reason.clone(), "AGENCY_HAS_SYSTEMS").says("stp-hotich"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Deprecation: 60-day notice, 180-day overlap, operator override with a reason

#[test]
fn deprecation_notice_overlap_and_operator_override() {
    let fx = Fx::new();
    let op = &fx.op;
    let prov = fx.node.user("prov-admin", "agency-admin", Some(P));
    let v = |version: &str, action: &str| format!("/api/v1/services/dancu/versions/{version}/{action}");
    let dep = |days: i64| json!({"retire_at": in_days(days), "reason": "thay bằng v2"});
    let dep_override = |days: i64, o: &str| json!({"retire_at": in_days(days), "reason": "thay bằng v2", "override_reason": o});
    let notice = |body: Value| bad("POST", v("v1", "deprecate"), body, 422, "NOTICE_PERIOD").says("60 days");
    let overlap = |body: Value| bad("POST", v("v1", "deprecate"), body, 422, "OVERLAP_PERIOD").says("180 days");
    let forbidden = |path: String, body: Value| bad("POST", path, body, 403, "FORBIDDEN");

    // v1 is the only version: only the notice period applies.
    for api in [&prov, op] {
        fx.expect(api, &[notice(dep(30)), notice(dep(59)), notice(dep(-1))]);
    }
    fx.expect(
        &prov,
        &[forbidden(v("v1", "deprecate"), dep_override(30, "khẩn cấp")), forbidden(v("v1", "deprecate"), dep_override(90, "khẩn cấp"))],
    );
    fx.expect(
        op,
        &[
            invalid("POST", v("v1", "deprecate"), dep_override(30, " "), "override_reason"),
            invalid("POST", v("v1", "deprecate"), json!({"retire_at": in_days(90), "reason": ""}), "reason"),
        ],
    );

    // v2 published now: v1 must keep running 180 days after that.
    fx.must(op, "POST", "/api/v1/services/dancu/versions", json!({"version": "v2", "upstream": {"production": "http://127.0.0.1:9/v2"}}));
    fx.must(op, "POST", &v("v2", "publish"), NB);
    fx.expect(&prov, &[overlap(dep(90)), overlap(dep(179))]);
    fx.expect(op, &[overlap(dep(90))]);
    fx.expect(&prov, &[forbidden(v("v1", "deprecate"), dep_override(90, "khẩn cấp"))]);

    // The operator overrides, with a reason that is recorded.
    let why = "QĐ 123/QĐ-UBND: hệ thống cũ có lỗ hổng";
    let body = dep_override(90, why);
    let retire_at = chrono::DateTime::parse_from_rfc3339(body["retire_at"].as_str().unwrap()).unwrap();
    let svc = fx.must(op, "POST", &v("v1", "deprecate"), body);
    let v1 = &svc["versions"]["v1"];
    assert_eq!(v1["state"], "deprecated", "{svc}");
    let got = chrono::DateTime::parse_from_rfc3339(v1["retire_at"].as_str().unwrap()).unwrap();
    assert_eq!(got, retire_at, "{svc}");
    let last = v1["history"].as_array().and_then(|h| h.last()).cloned().unwrap_or(NB);
    assert_eq!(last["to"], "deprecated", "{svc}");
    assert_eq!(last["from"], "published", "{svc}");
    assert_eq!(last["override_reason"], why, "the override is not in the history: {svc}");
    assert_eq!(last["by"], "admin", "{svc}");
    let (_, audit) = op.get("/api/v1/audit/admin?limit=1");
    let entry = &audit["items"][0];
    assert_eq!(entry["action"], "deprecate_version", "{audit}");
    assert_eq!(entry["target"], "service/dancu/v1", "{audit}");
    assert_eq!(entry["reason"], why, "{audit}");

    // Retiring before the announced date also needs the operator's override.
    let retire = json!({"reason": "đã chuyển sang v2"});
    let retire_override = json!({"reason": "đã chuyển sang v2", "override_reason": why});
    fx.expect(
        &prov,
        &[bad("POST", v("v1", "retire"), retire.clone(), 422, "NOTICE_PERIOD"), forbidden(v("v1", "retire"), retire_override.clone())],
    );
    fx.expect(op, &[bad("POST", v("v1", "retire"), retire, 422, "NOTICE_PERIOD")]);
    let svc = fx.must(op, "POST", &v("v1", "retire"), retire_override);
    let last = svc["versions"]["v1"]["history"].as_array().and_then(|h| h.last()).cloned().unwrap_or(NB);
    assert_eq!(svc["versions"]["v1"]["state"], "retired", "{svc}");
    assert_eq!((last["to"].as_str(), last["override_reason"].as_str()), (Some("retired"), Some(why)), "{svc}");
    let (_, s) = op.get(&format!("/api/v1/subscriptions/{}", fx.sub));
    assert_eq!(s["state"], "revoked", "retiring a version revokes its subscriptions: {s}");

    // Without a newer version, 60 days of notice is enough, for the provider too.
    fx.must(op, "POST", "/api/v1/services", json!({"context": "tracuu", "provider_system": "hp-dancu", "name": "Tra cứu"}));
    fx.must(op, "POST", "/api/v1/services/tracuu/versions", json!({"version": "v1", "upstream": {"production": "http://127.0.0.1:9/"}}));
    fx.must(op, "POST", "/api/v1/services/tracuu/versions/v1/publish", NB);
    let svc = fx.must(&prov, "POST", "/api/v1/services/tracuu/versions/v1/deprecate", dep(61));
    let last = svc["versions"]["v1"]["history"].as_array().and_then(|h| h.last()).cloned().unwrap_or(NB);
    assert_eq!(last["to"], "deprecated", "{svc}");
    assert!(last.get("override_reason").is_none_or(Value::is_null), "{svc}");
}

// ---------------------------------------------------------------------------------------------
// Passwords and lockout

#[test]
fn password_policy_names_what_is_missing() {
    let fx = Fx::new();
    let op = &fx.op;
    let all = ["at least 8 characters", "an upper-case letter", "a lower-case letter", "a digit", "a special character"];
    let user = |pw: &str| json!({"username": "weak-user", "role": "auditor", "password": pw});
    for (pw, missing) in [
        ("Sh0rt!a", vec![all[0]]),
        ("alllowercase1!", vec![all[1]]),
        ("ALLUPPERCASE1!", vec![all[2]]),
        ("NoDigitsHere!", vec![all[3]]),
        ("NoSpecial1234", vec![all[4]]),
        ("", all.to_vec()),
        ("        ", all[1..].to_vec()),
        ("abc", vec![all[0], all[1], all[3], all[4]]),
    ] {
        let b = fx.expect_one(op, &invalid("POST", "/api/v1/users", user(pw), "password"));
        let message = b["message"].as_str().unwrap();
        for m in all {
            assert_eq!(message.contains(m), missing.contains(&m), "password {pw:?}: {message}");
        }
    }
    fx.expect_one(op, &not_found("GET", "/api/v1/users/weak-user", NB));

    // Resets and own changes follow the same policy.
    let me = fx.node.user("pw-user", "auditor", None);
    fx.expect_one(
        op,
        &invalid("POST", "/api/v1/users/pw-user/password", json!({"new_password": "weakpass"}), "new_password")
            .says("an upper-case letter"),
    );
    fx.expect(
        &me,
        &[
            invalid("POST", "/api/v1/users/pw-user/password", json!({"new_password": "An0ther!Passw0rd"}), "current_password"),
            bad(
                "POST",
                "/api/v1/users/pw-user/password",
                json!({"current_password": "Wr0ng!Passw0rd", "new_password": "An0ther!Passw0rd"}),
                403,
                "INVALID_CREDENTIALS",
            ),
            invalid(
                "POST",
                "/api/v1/users/pw-user/password",
                json!({"current_password": PASSWORD, "new_password": "short"}),
                "new_password",
            )
            .says("at least 8 characters"),
        ],
    );
    // The password did not change.
    let (s, b) = fx.node.anonymous().post("/api/v1/auth/login", json!({"username": "pw-user", "password": PASSWORD}));
    assert_eq!(s, 200, "{b}");
}

fn login(node: &Node, user: &str, password: &str) -> Resp {
    send(&node.anonymous(), "POST", "/api/v1/auth/login", &Body::Json(json!({"username": user, "password": password})))
        .expect("login answered")
}

#[test]
fn account_locks_after_five_failed_logins_and_operator_unlocks() {
    let fx = Fx::new();
    fx.node.user("locky", "auditor", None);
    let wrong = "Wr0ng!Passw0rd";
    let failed = |r: &Resp| {
        assert_eq!((r.status, r.body["code"].as_str()), (401, Some("INVALID_CREDENTIALS")), "{}", r.body);
    };
    // Four failures do not lock; the fifth does.
    for _ in 0..4 {
        failed(&login(&fx.node, "locky", wrong));
    }
    let (_, u) = fx.op.get("/api/v1/users/locky");
    assert!(u["locked_until"].is_null(), "locked after four failures: {u}");
    failed(&login(&fx.node, "locky", wrong));
    for pw in [PASSWORD, wrong] {
        let r = login(&fx.node, "locky", pw);
        assert_eq!((r.status, r.body["code"].as_str()), (423, Some("ACCOUNT_LOCKED")), "{}", r.body);
        assert!(r.body["message"].as_str().is_some_and(|m| m.contains("locked")), "{}", r.body);
        let retry: u64 = r
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("423 without a Retry-After in seconds: {:?}", r.headers));
        assert!((1..=900).contains(&retry), "Retry-After {retry}");
    }
    let (_, u) = fx.op.get("/api/v1/users/locky");
    assert!(u["locked_until"].is_string(), "{u}");
    // An unknown user gets the same answer as a wrong password, and no lock to learn from.
    failed(&login(&fx.node, "nobody-here", wrong));

    let (s, b) = fx.op.post("/api/v1/users/locky/unlock", NB);
    assert_eq!(s, 204, "{b}");
    let (_, u) = fx.op.get("/api/v1/users/locky");
    assert!(u["locked_until"].is_null(), "{u}");
    assert_eq!(login(&fx.node, "locky", PASSWORD).status, 200);
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[test]
fn garbage_revoked_and_disabled_tokens_are_401() {
    let fx = Fx::new();
    let url = format!("{}/api/v1/auth/me", fx.node.admin_url());
    let op_token = fx.op.token.clone().unwrap();
    let op_id = op_token.split('.').nth(1).unwrap().to_owned();
    let with_header = |value: Option<String>| {
        let mut r = fx.node.http.get(&url);
        if let Some(v) = value {
            r = r.header("authorization", v);
        }
        let resp = r.send().expect("answered");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().unwrap_or(NB))
    };
    let unauthenticated = |label: &str, (s, b): (u16, Value)| {
        assert_eq!((s, b["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{label}: {b}");
        assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{label}: {b}");
    };
    let mut chopped = op_token.clone();
    chopped.pop();
    for h in [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer garbage".to_owned()),
        Some("Bearer lgsp.".to_owned()),
        Some("Bearer lgsp.abc".to_owned()),
        Some("Bearer lgsp..secret".to_owned()),
        Some("Bearer lgsp.abc.".to_owned()),
        Some(format!("Bearer lgsp.{op_id}.wrong-secret")),
        Some(format!("Bearer lgsp.{op_id}.")),
        Some(format!("Bearer {chopped}")),
        Some(format!("Bearer {op_token}x")),
        Some(format!("Bearer {}", op_token.replacen("lgsp.", "LGSP.", 1))),
        Some("Basic YWRtaW46cGFzc3dvcmQ=".to_owned()),
        Some(format!("Token {op_token}")),
        Some(op_token.clone()),
    ] {
        unauthenticated(&format!("{h:?}"), with_header(h));
    }
    // The scheme is case-insensitive (RFC 9110 §11.1).
    assert_eq!(with_header(Some(format!("bearer {op_token}"))).0, 200);

    // A revoked tool token.
    let t = fx.must(&fx.op, "POST", "/api/v1/tokens", json!({"name": "ci"}));
    let tool = fx.node.api(t["token"].as_str().unwrap());
    assert_eq!(tool.get("/api/v1/auth/me").0, 200);
    let (s, b) = fx.op.delete(&format!("/api/v1/tokens/{}", t["id"].as_str().unwrap()));
    assert_eq!(s, 204, "{b}");
    unauthenticated("revoked tool token", tool.get("/api/v1/auth/me"));
    unauthenticated("revoked tool token", tool.post("/api/v1/tokens", json!({"name": "again"})));

    // A logged-out session.
    let session = fx.node.user("sess-user", "auditor", None);
    let (s, b) = session.post("/api/v1/auth/logout", NB);
    assert_eq!(s, 204, "{b}");
    unauthenticated("logged-out session", session.get("/api/v1/auth/me"));
    unauthenticated("logged-out session", session.post("/api/v1/auth/logout", NB));

    // A disabled user: its tokens stop working and it cannot log in.
    let dis = fx.node.user("dis-user", "auditor", None);
    let (s, b) = fx.op.patch("/api/v1/users/dis-user", json!({"disabled": true}));
    assert_eq!(s, 200, "{b}");
    unauthenticated("disabled user's session", dis.get("/api/v1/auth/me"));
    let r = login(&fx.node, "dis-user", PASSWORD);
    assert_eq!((r.status, r.body["code"].as_str()), (403, Some("ACCOUNT_DISABLED")), "{}", r.body);
    // One cannot disable oneself.
    fx.expect_one(&fx.op, &conflict("PATCH", "/api/v1/users/admin", json!({"disabled": true}), "SELF_DISABLE"));
    // Expiry cannot be reached black-box in dev mode (sessions last 8 h, tool tokens at least
    // one day); a zero lifetime is refused instead.
    fx.expect_one(&fx.op, &invalid("POST", "/api/v1/tokens", json!({"name": "ci", "expires_in_days": 0}), "expires_in_days"));
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

#[test]
fn subscription_duplicates_and_reasons() {
    let fx = Fx::new();
    let op = &fx.op;
    let sub = fx.sub.clone();
    let request = |consumer: &str, version: &str, env: &str, purpose: &str| json!({"consumer_system": consumer, "service": "dancu", "version": version, "environment": env, "purpose": purpose});
    let exists = |body: Value| conflict("POST", "/api/v1/subscriptions", body, "SUBSCRIPTION_EXISTS");
    // The seeded subscription is active; a requested one is open too.
    let requested = fx.request("stp-hotich", "v1", "test");
    fx.must(op, "POST", "/api/v1/services/dancu/versions", json!({"version": "v2", "upstream": {"production": "http://127.0.0.1:9/v2"}}));
    fx.must(op, "POST", "/api/v1/services/dancu/versions", json!({"version": "v3", "upstream": {"production": "http://127.0.0.1:9/v3"}}));
    fx.must(op, "POST", "/api/v1/services/dancu/versions/v3/publish", NB);
    let s = |id: &str, action: &str| format!("/api/v1/subscriptions/{id}/{action}");
    fx.expect(
        op,
        &[
            exists(request("stp-hotich", "v1", "production", "lần hai")).says(&sub),
            exists(request("stp-hotich", "v1", "test", "lần hai")).says(&requested),
            conflict("POST", "/api/v1/subscriptions", request("stp-hotich", "v2", "production", "p"), "VERSION_NOT_OPEN").says("draft"),
            conflict("POST", "/api/v1/subscriptions", request("stp-hotich", "v3", "test", "p"), "ENVIRONMENT_NOT_OFFERED").says("test"),
            invalid("POST", "/api/v1/subscriptions", request("stp-hotich", "v3", "production", "  "), "purpose"),
            // Rejecting and revoking need a reason.
            invalid("POST", s(&requested, "reject"), json!({}), "reason"),
            invalid("POST", s(&requested, "reject"), json!({"reason": ""}), "reason"),
            invalid("POST", s(&requested, "reject"), json!({"reason": " \n "}), "reason"),
            invalid("POST", s(&sub, "revoke"), json!({}), "reason"),
            invalid("POST", s(&sub, "revoke"), json!({"reason": ""}), "reason"),
            invalid("POST", s(&sub, "approve"), json!({"reason": 5}), "reason"),
        ],
    );
    // Without any body the reason is missing as well (the refusal may be about the body).
    for path in [s(&requested, "reject"), s(&sub, "revoke")] {
        let before = fx.audit_head();
        let (st, b) = op.call("POST", &path, None);
        assert!(
            matches!((st, b["code"].as_str()), (400, Some("INVALID_INPUT")) | (415, Some("UNSUPPORTED_MEDIA_TYPE"))),
            "POST {path} without a body: {st} {b}"
        );
        assert_eq!(before, fx.audit_head());
    }
    let cred = fx.must(op, "POST", "/api/v1/credentials", json!({"system": "stp-hotich", "environment": "test"}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fx.expect_one(op, &invalid("POST", format!("/api/v1/credentials/{cred}/revoke"), json!({}), "reason"));
    // After a rejection the same request may be made again.
    fx.must(op, "POST", &s(&requested, "reject"), json!({"reason": "thiếu văn bản"}));
    fx.request("stp-hotich", "v1", "test");
}

// ---------------------------------------------------------------------------------------------
// Suspected defects, one behaviour each

/// `expires_in_days` is unbounded: a large value overflows the expiry instant, the handler
/// panics and the client gets no answer at all.
#[test]
fn suspected_huge_token_lifetime_is_refused_not_a_crash() {
    let fx = Fx::new();
    let cases: Vec<Bad> = [4_294_967_295u64, 100_000_000]
        .iter()
        .map(|days| invalid("POST", "/api/v1/tokens", json!({"name": "ci", "expires_in_days": days}), "expires_in_days"))
        .collect();
    fx.expect_all(&fx.op, &cases);
}

/// A rate limit of 0 is refused by PUT .../limits (it would block all traffic) but accepted
/// when the operator sets it in the request itself.
#[test]
fn suspected_zero_rate_limit_is_refused_in_requests_too() {
    let fx = Fx::new();
    // Two consumers, so that an accepted first request does not make the second a duplicate.
    let request = |consumer: &str, limit: Value| json!({"consumer_system": consumer, "service": "dancu", "version": "v1", "environment": "test", "purpose": "p", "rate_limit": limit});
    fx.expect_all(
        &fx.op,
        &[
            invalid("POST", "/api/v1/subscriptions", request("stp-hotich", json!({"per_second": 0})), "rate_limit"),
            invalid("POST", "/api/v1/subscriptions", request("hp-dancu", json!({"per_day": 0})), "rate_limit"),
        ],
    );
}

/// The decision endpoints with an optional body read it whatever its content type.
#[test]
fn suspected_decisions_check_the_content_type() {
    let fx = Fx::new();
    let (_, sub_req, sub_pa) = sweep_objects(&fx);
    let mut cases = Vec::new();
    for path in [format!("/api/v1/subscriptions/{sub_req}/provider-approve"), format!("/api/v1/subscriptions/{sub_pa}/approve")] {
        cases.push(raw("POST", path.as_str(), Some("text/plain"), b"{}", 415, "UNSUPPORTED_MEDIA_TYPE"));
        cases.push(raw("POST", path.as_str(), Some("application/x-www-form-urlencoded"), b"reason=ok", 415, "UNSUPPORTED_MEDIA_TYPE"));
    }
    fx.expect_all(&fx.op, &cases);
}

/// Errors are JSON with a code (SPEC §5), including a wrong method (405, which RFC 9110 also
/// wants with an Allow header) and an oversized body on the decision endpoints.
#[test]
fn suspected_every_refusal_is_a_json_error() {
    let fx = Fx::new();
    let mut failed = Vec::new();
    for (method, path) in [
        ("DELETE", "/api/v1/agencies".to_owned()),
        ("PUT", "/api/v1/auth/login".to_owned()),
        ("GET", "/api/v1/tokens/abc".to_owned()),
        ("DELETE", format!("/api/v1/subscriptions/{}", fx.sub)),
    ] {
        check(&mut failed, &format!("{method} {path}"), || {
            let before = fx.audit_head();
            let r = send(&fx.op, method, &path, &Body::None).expect("answered");
            assert_eq!(r.status, 405, "{}", r.body);
            assert!(r.headers.contains_key("allow"), "405 without Allow");
            assert!(
                r.body["code"].as_str().is_some_and(|c| !c.is_empty()) && r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "405 is not a JSON error: {:?}",
                r.body
            );
            assert_eq!(before, fx.audit_head());
        });
    }
    let (_, _, sub_pa) = sweep_objects(&fx);
    let mut big = b"{\"reason\": \"".to_vec();
    big.resize(OVERSIZED, b'a');
    big.extend_from_slice(b"\"}");
    let case = raw("POST", format!("/api/v1/subscriptions/{sub_pa}/approve"), Some("application/json"), &big, 413, "PAYLOAD_TOO_LARGE");
    check(&mut failed, &case.label(), || {
        fx.expect_one(&fx.op, &case);
    });
    assert!(failed.is_empty(), "{} checks failed:\n{}", failed.len(), failed.join("\n"));
}

/// Unknown fields are refused at the top level of every body but PUT .../limits, and nowhere in
/// nested objects (contacts, upstreams, security, rate limits, new agencies, catalog fields): a
/// typo such as `prodution` is silently dropped. JSON arrays are also taken for objects
/// (`["000.00.09.H31", "x"]` registers an agency).
#[test]
fn suspected_unknown_fields_anywhere_are_refused() {
    let fx = Fx::new();
    let sub = fx.sub.clone();
    fx.must(&fx.op, "POST", "/api/v1/catalogs", json!({"code": "dm-x", "name": "x", "owner_agency": P}));
    let unknown = |method: &'static str, path: &str, body: Value, field: &str| bad(method, path, body, 400, "INVALID_INPUT").says(field);
    #[rustfmt::skip]
    let cases = [
        unknown("POST", "/api/v1/subscriptions", json!({"consumer_system": "hp-dancu", "service": "dancu", "version": "v1", "environment": "production", "purpose": "p", "rate_limit": {"per_minute": 10}}), "per_minute"),
        unknown("PUT", &format!("/api/v1/subscriptions/{sub}/limits"), json!({"per_second": 5, "burst": 10}), "burst"),
        unknown("POST", "/api/v1/services/dancu/versions", json!({"version": "v9", "upstream": {"prodution": "http://10.0.0.5/"}}), "prodution"),
        unknown("PATCH", "/api/v1/services/dancu/versions/v1", json!({"upstream": {"production": "http://10.0.0.5/", "tset": "http://10.0.0.6/"}}), "tset"),
        unknown("POST", "/api/v1/systems", json!({"id": "x-sys", "agency": P, "name": "x", "security": {"kind": "level", "level": 3, "approved_by": "x"}}), "approved_by"),
        unknown("PATCH", &format!("/api/v1/agencies/{P}"), json!({"contacts": [{"name": "A", "mail": "a@b.vn"}]}), "mail"),
        unknown("POST", "/api/v1/catalogs/dm-x/versions", json!({"fields": [{"name": "code", "kind": "string"}], "entries": []}), "kind"),
        bad("PUT", format!("/api/v1/subscriptions/{sub}/limits"), json!([5, 100]), 400, "INVALID_INPUT"),
        bad("POST", "/api/v1/agencies", json!(["000.00.09.H31", "Sở"]), 400, "INVALID_INPUT"),
        unknown("POST", &format!("/api/v1/agencies/{C}/split"), json!({"into": [{"code": "000.00.05.H31", "name": "A", "parent": P}, {"code": "000.00.06.H31", "name": "B"}], "systems": {"stp-hotich": "000.00.05.H31"}, "reason": "r"}), "parent"),
    ];
    fx.expect_all(&fx.op, &cases);
}
