//! Maintenance windows and their notices end to end (O3, O2's notification machinery), with
//! real targets: a real SMTP server (aiosmtpd, writing a Maildir) receives the emails, a real
//! HTTP server receives the webhooks and checks their HMAC signature, the public Atom feed is
//! read by feedparser, and the gateway's answers are checked during and after a window.
//!
//! Test-scale time: the node runs with `[maintenance] min_notice = "1h"` and
//! `reminder_before = "3s"`; windows seconds long are emergencies (with a reason), which is
//! exactly the rule under test.
#![allow(clippy::disallowed_methods)]

mod common;

use common::compat::{python, Smtp};
use common::wait_for;
mod gateway_support;

use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{Datelike, Duration as CDuration, TimeZone, Utc};
use common::upstream::{TestServer, Upstream};
use gateway_support::*;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use sha2::Sha256;

#[derive(Clone, Debug)]
struct Hook {
    path: String,
    notice_id: String,
    body: Value,
    signature_ok: bool,
}

/// A webhook receiver checking `X-Lgsp-Signature` against `secret` (per path); `/broken`
/// answers 500.
fn webhook_server(secrets: Vec<(&'static str, &'static str)>) -> (TestServer, Arc<Mutex<Vec<Hook>>>) {
    let got: Arc<Mutex<Vec<Hook>>> = Arc::default();
    let g = got.clone();
    let server = TestServer::start(move |req| {
        let g = g.clone();
        let secrets = secrets.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let (ts, sig, id) = (header("x-lgsp-timestamp"), header("x-lgsp-signature"), header("x-lgsp-notice-id"));
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let secret = secrets.iter().find(|(p, _)| *p == path).map(|(_, s)| *s).unwrap_or("");
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
            mac.update(format!("{ts}.").as_bytes());
            mac.update(&body);
            let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            let status = if path == "/broken" { 500 } else { 200 };
            g.lock().expect("lock").push(Hook {
                path,
                notice_id: id,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                signature_ok: !sig.is_empty() && sig == want,
            });
            Ok(hyper::Response::builder().status(status).body(Full::new(Bytes::from_static(b"ok"))).expect("response"))
        })
    });
    (server, got)
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The next local (UTC+7) date with this weekday, at least 8 days ahead, at `hour`:00 local.
fn next_local(weekday: chrono::Weekday, hour: u32) -> chrono::DateTime<Utc> {
    let tz = chrono::FixedOffset::east_opt(7 * 3600).expect("offset");
    let mut d = (Utc::now() + CDuration::days(8)).with_timezone(&tz).date_naive();
    while d.weekday() != weekday {
        d += CDuration::days(1);
    }
    tz.from_local_datetime(&d.and_hms_opt(hour, 0, 0).expect("time")).single().expect("local").with_timezone(&Utc)
}

#[test]
fn windows_notice_enforce_and_publish() {
    let tmp = tempfile::tempdir().expect("tmp");
    let smtp = Smtp::start(tmp.path());
    let (hooks, received) = webhook_server(vec![("/operator", "operator-secret-0123456789"), ("/agency", "agency-secret-0123456789")]);
    let secret_file = tmp.path().join("operator-webhook.secret");
    std::fs::write(&secret_file, "operator-secret-0123456789\n").expect("secret");
    let ops = tmp.path().join("ops.toml");
    std::fs::write(
        &ops,
        format!(
            "[notify]\nsmtp_server = '127.0.0.1:{}'\nsmtp_security = 'plain'\nfrom = 'LGSP <lgsp@lgsp.test>'\noperator_emails = ['ops@lgsp.test']\noperator_webhook = '{}/operator'\noperator_webhook_secret_file = '{}'\nretry_base = '1s'\nmax_attempts = 2\n[maintenance]\nmin_notice = '1h'\nreminder_before = '3s'\n",
            smtp.port,
            hooks.url(),
            secret_file.display()
        ),
    )
    .expect("ops config");
    let gw = Gw::on(common::Node::start_with(&["--ops-config", ops.to_str().expect("utf-8")]));
    let op = &gw.op;
    let provider = Upstream::start();
    gw.set_upstreams("dancu", "v1", &format!("{}/api", provider.url()), &format!("{}/test", provider.url()));
    let (s, b) = op.patch("/api/v1/agencies/000.00.00.H31", json!({"contacts": [{"name": "CNTT", "email": "cntt@provider.test"}]}));
    assert_eq!(s, 200, "{b}");
    let (s, b) = op.patch("/api/v1/agencies/000.00.01.H31", json!({"contacts": [{"name": "IT", "email": "it@consumer.test"}]}));
    assert_eq!(s, 200, "{b}");
    let (s, b) = op.put(
        "/api/v1/agencies/000.00.00.H31/webhooks",
        json!({"webhooks": [{"url": format!("{}/agency", hooks.url()), "secret": "agency-secret-0123456789"}]}),
    );
    assert_eq!(s, 200, "{b}");
    assert!(!b.to_string().contains("agency-secret"), "the secret is never shown: {b}");
    let (s, b) = op.put(
        "/api/v1/agencies/000.00.01.H31/webhooks",
        json!({"webhooks": [{"url": format!("{}/broken", hooks.url()), "secret": "broken-secret-0123456789"}]}),
    );
    assert_eq!(s, 200, "{b}");
    let cred = gw.credential("stp-hotich", "production", false);
    let token = gw.token(&cred);
    assert_eq!(gw.bearer(&token, "GET", "/dancu/v1/x", None).status, 200);

    // Too little notice: refused, saying the rule and what to do.
    let reason = json!({"vi": "Nâng cấp cơ sở dữ liệu", "en": "Database upgrade"});
    let soon = Utc::now() + CDuration::minutes(10);
    let (s, b) = op.post(
        "/api/v1/maintenance",
        json!({"id": "too-soon", "scope": {"kind": "services", "services": ["dancu"]}, "start": rfc3339(soon), "end": rfc3339(soon + CDuration::hours(1)), "reason": reason}),
    );
    assert_eq!((s, b["code"].as_str()), (422, Some("MAINTENANCE_NOTICE")), "{b}");
    assert!(b["message"].as_str().is_some_and(|m| m.contains("at least 1h") && m.contains("emergency")), "{b}");
    // An emergency needs its reason.
    let (s, b) = op.post(
        "/api/v1/maintenance",
        json!({"id": "too-soon", "scope": {"kind": "services", "services": ["dancu"]}, "start": rfc3339(soon), "end": rfc3339(soon + CDuration::hours(1)), "reason": reason, "emergency": true}),
    );
    assert_eq!(s, 400, "{b}");

    // Office hours: a Monday 09:00 local window is warned about, a Sunday one is not.
    let monday = next_local(chrono::Weekday::Mon, 9);
    let (s, b) = op.post(
        "/api/v1/maintenance",
        json!({"id": "monday", "scope": {"kind": "platform"}, "start": rfc3339(monday), "end": rfc3339(monday + CDuration::hours(2)), "reason": reason}),
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["office_hours"], true, "{b}");
    assert!(b["warnings"][0].as_str().is_some_and(|w| w.contains("office hours")), "{b}");
    let sunday = next_local(chrono::Weekday::Sun, 9);
    let (s, b) = op.post(
        "/api/v1/maintenance",
        json!({"id": "sunday", "scope": {"kind": "services", "services": ["dancu"]}, "start": rfc3339(sunday), "end": rfc3339(sunday + CDuration::hours(2)), "reason": reason}),
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!((b["office_hours"].as_bool(), b["warnings"].as_array().map(Vec::len)), (Some(false), Some(0)), "{b}");
    // Change and cancel the Monday one: each is a notice of its own.
    let (s, b) = op.patch("/api/v1/maintenance/monday", json!({"end": rfc3339(monday + CDuration::hours(3))}));
    assert_eq!((s, b["revision"].as_u64()), (200, Some(1)), "{b}");
    let (s, b) = op.post("/api/v1/maintenance/monday/cancel", json!({"reason": "moved to the weekend"}));
    assert_eq!((s, b["status"].as_str()), (200, Some("cancelled")), "{b}");

    // An emergency window a few seconds long on the service.
    let start = Utc::now() + CDuration::seconds(6);
    let end = start + CDuration::seconds(8);
    let (s, b) = op.post(
        "/api/v1/maintenance",
        json!({"id": "now", "scope": {"kind": "services", "services": ["dancu"]}, "start": rfc3339(start), "end": rfc3339(end), "reason": reason, "emergency": true, "emergency_reason": "security patch"}),
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!(gw.bearer(&token, "GET", "/dancu/v1/x", None).status, 200, "served before the window");
    let refused = wait_for("503 MAINTENANCE during the window", 30, || {
        let r = gw.bearer(&token, "GET", "/dancu/v1/x", None);
        (r.status == 503).then_some(r)
    });
    assert_refusal(&refused, 503, "MAINTENANCE");
    let retry: u64 = refused.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((1..=9).contains(&retry), "Retry-After counts down to the end: {retry}");
    let msg = refused.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("Nâng cấp cơ sở dữ liệu") && msg.contains("Database upgrade"), "{msg}");
    wait_for("served again after the window", 30, || (gw.bearer(&token, "GET", "/dancu/v1/x", None).status == 200).then_some(()));

    // A node window: /status answers 503 during it, like a drained node.
    let metrics = gw.metrics_url();
    let status = || reqwest::blocking::get(format!("{metrics}/status")).map(|r| r.status().as_u16()).unwrap_or(0);
    let ns = Utc::now() + CDuration::seconds(2);
    let (s, b) = op.post(
        "/api/v1/maintenance",
        json!({"id": "node", "scope": {"kind": "nodes", "nodes": ["dev"]}, "start": rfc3339(ns), "end": rfc3339(ns + CDuration::seconds(4)), "reason": reason, "emergency": true, "emergency_reason": "disk swap"}),
    );
    assert_eq!(s, 201, "{b}");
    wait_for("/status 503 in the node's window", 30, || (status() == 503).then_some(()));
    wait_for("/status 200 after it", 30, || (status() == 200).then_some(()));

    // The CLI: list as JSON, and a refusal that says what to do.
    let out = gw.node.cli(&["maintenance", "list", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert!(listed["items"].as_array().is_some_and(|i| i.iter().any(|w| w["id"] == "sunday")), "{listed}");
    let soon = rfc3339(Utc::now() + CDuration::minutes(5));
    let later = rfc3339(Utc::now() + CDuration::minutes(50));
    let out = gw.node.cli(
        &[
            "maintenance",
            "announce",
            "--scope",
            "services:dancu",
            "--start",
            &soon,
            "--end",
            &later,
            "--reason-vi",
            "Bảo trì",
            "--reason-en",
            "Upkeep",
        ],
        None,
    );
    assert!(!out.status.success(), "too little notice is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("min_notice"), "{}", String::from_utf8_lossy(&out.stderr));

    // The public feed, without credentials: JSON and Atom (read by feedparser).
    let feed: Value = gw.http.get(format!("{}/maintenance.json", gw.url)).send().expect("feed").json().expect("json");
    let ids: Vec<&str> = feed["windows"].as_array().expect("windows").iter().filter_map(|w| w["id"].as_str()).collect();
    for id in ["monday", "sunday", "now", "node"] {
        assert!(ids.contains(&id), "{id} in the feed: {feed}");
    }
    let monday_entry = feed["windows"].as_array().and_then(|w| w.iter().find(|w| w["id"] == "monday")).expect("monday");
    assert_eq!(monday_entry["status"], "cancelled");
    let atom = gw.http.get(format!("{}/maintenance.atom", gw.url)).send().expect("atom");
    assert!(atom.headers()["content-type"].to_str().unwrap_or("").starts_with("application/atom+xml"));
    let atom_path = tmp.path().join("feed.atom");
    std::fs::write(&atom_path, atom.bytes().expect("atom body")).expect("write");
    let out = Command::new(python())
        .args([
            "-c",
            "import feedparser, json, sys\nd = feedparser.parse(sys.argv[1])\nprint(json.dumps({'bozo': bool(d.bozo), 'version': d.version, 'ids': [e.id for e in d.entries], 'titles': [e.title for e in d.entries]}))",
        ])
        .arg(&atom_path)
        .output()
        .expect("feedparser");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((parsed["bozo"].as_bool(), parsed["version"].as_str()), (Some(false), Some("atom10")), "well-formed Atom 1.0: {parsed}");
    assert!(parsed["ids"].as_array().is_some_and(|ids| ids.iter().any(|i| i == "urn:lgsp:maintenance:now")), "{parsed}");

    // Emails: every stage of the emergency window reached the provider's and consumer's
    // contacts and the operator; change and cancellation of the Monday window too.
    let mails = wait_for("all maintenance emails", 60, || {
        let m = smtp.messages();
        let has = |to: &str, words: &str| {
            m.iter().any(|x| x["to"].as_str().is_some_and(|t| t.contains(to)) && x["subject"].as_str().is_some_and(|s| s.contains(words)))
        };
        let all = ["Maintenance announced", "Maintenance reminder", "Maintenance started", "Maintenance ended"]
            .iter()
            .all(|w| has("cntt@provider.test", w) && has("it@consumer.test", w) && has("ops@lgsp.test", w))
            && has("cntt@provider.test", "Maintenance changed")
            && has("ops@lgsp.test", "Maintenance cancelled");
        all.then_some(m)
    });
    let started: Vec<&Value> = mails
        .iter()
        .filter(|m| {
            m["subject"].as_str().is_some_and(|s| s.contains("Maintenance started"))
                && m["to"].as_str().is_some_and(|t| t.contains("cntt@provider.test"))
        })
        .collect();
    assert_eq!(started.len(), 2, "one start notice per window the provider is in (now, node), never twice: {started:?}");
    let body = started.iter().map(|m| m["body"].as_str().unwrap_or("")).collect::<String>();
    assert!(body.contains("Bắt đầu bảo trì") && body.contains("security patch"), "bilingual body with the emergency reason: {body}");

    // Webhooks: signed, for the operator and the provider's agency.
    let got = wait_for("webhooks for every stage", 30, || {
        let g = received.lock().expect("lock").clone();
        let kinds =
            |p: &str| g.iter().filter(|h| h.path == p).filter_map(|h| h.body["kind"].as_str().map(str::to_owned)).collect::<Vec<_>>();
        let ok = ["maintenance.announced", "maintenance.reminder", "maintenance.started", "maintenance.ended"]
            .iter()
            .all(|k| kinds("/operator").iter().any(|x| x == k) && kinds("/agency").iter().any(|x| x == k));
        ok.then_some(g)
    });
    for h in got.iter().filter(|h| h.path != "/broken") {
        assert!(h.signature_ok, "valid HMAC signature: {h:?}");
        assert_eq!(h.notice_id, h.body["id"].as_str().unwrap_or(""), "{h:?}");
    }

    // A webhook that keeps failing: retried, then marked failed, visible in the API and metrics.
    let failed = wait_for("a failed delivery", 60, || {
        let (s, b) = op.get("/api/v1/notices?state=failed");
        assert_eq!(s, 200, "{b}");
        b["items"].as_array().and_then(|items| {
            items
                .iter()
                .flat_map(|n| n["deliveries"].as_array().cloned().unwrap_or_default())
                .find(|d| d["channel"]["url"].as_str().is_some_and(|u| u.ends_with("/broken")) && d["state"] == "failed")
        })
    });
    assert_eq!(failed["attempts"], 2, "{failed}");
    assert!(failed["last_error"].as_str().is_some_and(|e| e.contains("HTTP 500")), "{failed}");
    let metrics_text = gw.metrics();
    assert!(metrics_text.contains("lgsp_notify_deliveries_total{channel=\"webhook\",result=\"failed\"}"), "{metrics_text}");
    assert!(metrics_text.contains("lgsp_notify_deliveries_total{channel=\"email\",result=\"sent\"}"), "{metrics_text}");
}
