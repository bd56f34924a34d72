//! Durability: the registry, users, tokens and the admin audit trail survive a graceful restart
//! (SIGTERM) and a crash (SIGKILL); a write the API acknowledged before a crash is never lost.
#![allow(clippy::disallowed_methods)] // std::thread::sleep is fine in a test driver.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Api, Node};
use serde_json::{json, Value};

fn ok(r: (u16, Value)) -> Value {
    assert!(r.0 < 300, "request failed: {} {}", r.0, r.1);
    r.1
}

/// Everything an operator can read about the registry, plus the whole admin audit trail.
fn snapshot(op: &Api) -> Value {
    let mut snap = serde_json::Map::new();
    for path in [
        "/api/v1/agencies?limit=100000",
        "/api/v1/systems?limit=100000",
        "/api/v1/services?limit=100000",
        "/api/v1/subscriptions?limit=100000",
        "/api/v1/credentials?limit=100000",
        "/api/v1/catalogs",
        "/api/v1/catalogs/danhmuc-coquan/entries",
        "/api/v1/users?limit=100000",
        "/api/v1/tokens",
        "/api/v1/settings/holidays",
        "/api/v1/audit/admin?limit=10000",
    ] {
        let (s, v) = op.get(path);
        assert_eq!(s, 200, "GET {path}: {v}");
        snap.insert(path.to_owned(), v);
    }
    Value::Object(snap)
}

/// Reports which parts of two snapshots differ (the whole values are large).
fn assert_same(before: &Value, after: &Value, when: &str) {
    let b = before.as_object().expect("snapshot");
    let a = after.as_object().expect("snapshot");
    let differing: Vec<String> =
        b.iter().filter(|(k, v)| a.get(*k) != Some(*v)).map(|(k, v)| format!("{k}:\n  before: {v}\n  after:  {}", a[k])).collect();
    assert!(differing.is_empty(), "{when}: the registry changed:\n{}", differing.join("\n"));
}

/// Builds a registry with one of everything, returning (api token, revoked token, user session).
fn populate(node: &Node) -> (String, String, Api) {
    let op = node.operator();
    let sub = common::seed(&op);
    ok(op.post("/api/v1/agencies", json!({"code": "000.00.02.H31", "name": "Sở Y tế Hải Phòng", "parent": "000.00.00.H31"})));
    ok(op.post("/api/v1/agencies/000.00.02.H31/suspend", json!({"reason": "kiểm tra an toàn thông tin"})));
    ok(op.post("/api/v1/systems", json!({"id": "hp-yte", "agency": "000.00.00.H31", "name": "Hồ sơ sức khỏe", "security": {"kind": "commitment", "document": "Cam kết 03/2025", "signed_on": "2025-07-01"}})));
    ok(op.post("/api/v1/services", json!({"context": "hotich", "provider_system": "stp-hotich", "name": "Tra cứu hộ tịch"})));
    ok(op.post("/api/v1/services/hotich/versions", json!({"version": "v1", "upstream": {"test": "http://127.0.0.1:9/hotich"}})));
    ok(op.post("/api/v1/services/hotich/versions/v1/publish", json!({})));
    let req = ok(op.post(
        "/api/v1/subscriptions",
        json!({"consumer_system": "hp-dancu", "service": "hotich", "version": "v1", "environment": "test", "purpose": "đối chiếu"}),
    ));
    ok(op.post(&format!("/api/v1/subscriptions/{}/reject", req["id"].as_str().unwrap()), json!({"reason": "thiếu văn bản"})));
    ok(op.put(&format!("/api/v1/subscriptions/{sub}/limits"), json!({"per_second": 5, "per_day": 10000})));
    ok(op.post("/api/v1/credentials", json!({"system": "stp-hotich", "environment": "production", "hmac": true})));
    ok(op.put("/api/v1/settings/holidays", json!({"holidays": ["2026-09-02", "2027-01-01"]})));
    ok(op.post("/api/v1/catalogs", json!({"code": "danhmuc-coquan", "name": "Danh mục cơ quan", "owner_agency": "000.00.00.H31"})));
    ok(op.post("/api/v1/catalogs/danhmuc-coquan/versions", json!({"fields": [{"name": "code", "type": "string", "description": "Mã"}], "entries": [{"code": "000.00.00.H31"}, {"code": "000.00.01.H31"}]})));
    let user = node.user("hp-admin", "agency-admin", Some("000.00.00.H31"));
    node.user("kiemtoan", "auditor", None);
    let token = ok(op.post("/api/v1/tokens", json!({"name": "ansible"})))["token"].as_str().expect("token").to_owned();
    let revoked = ok(op.post("/api/v1/tokens", json!({"name": "old-script", "expires_in_days": 30})));
    let (s, _) = op.delete(&format!("/api/v1/tokens/{}", revoked["id"].as_str().unwrap()));
    assert_eq!(s, 204);
    (token, revoked["token"].as_str().unwrap().to_owned(), user)
}

fn me(api: &Api) -> (u16, Value) {
    api.get("/api/v1/auth/me")
}

fn check_tokens(node: &Node, token: &str, revoked: &str, user: &Api, when: &str) {
    let (s, v) = me(&node.operator());
    assert_eq!(s, 200, "{when}: dev.json api_token: {v}");
    assert_eq!(v["role"], "operator");
    let (s, v) = me(&node.api(token));
    assert_eq!(s, 200, "{when}: API token: {v}");
    let (s, v) = me(&node.api(revoked));
    assert_eq!(s, 401, "{when}: a revoked token must stay revoked: {v}");
    let (s, v) = me(user);
    assert_eq!(s, 200, "{when}: the user's session: {v}");
    assert_eq!(v["agency"], "000.00.00.H31");
    let (s, v) = node.anonymous().post("/api/v1/auth/login", json!({"username": "hp-admin", "password": "Str0ng!Passw0rd"}));
    assert_eq!(s, 200, "{when}: a user's password: {v}");
}

#[test]
fn registry_survives_graceful_restart_and_crash() {
    let mut node = Node::start();
    let info = node.info.clone();
    let (token, revoked, user) = populate(&node);
    let before = snapshot(&node.operator());
    let audit_len = before["/api/v1/audit/admin?limit=10000"]["items"].as_array().unwrap().len();
    assert!(audit_len >= 20, "the writes are audited: {audit_len}");

    // SIGTERM: drains and starts again on the same data directory.
    node.restart();
    assert_eq!(node.info["api_token"], info["api_token"], "dev.json keeps the credentials");
    assert_eq!(node.info["password"], info["password"]);
    assert_same(&before, &snapshot(&node.operator()), "after SIGTERM");
    let user = Api { base: node.admin_url(), ..user };
    // (This logs in once more: a new session and its audit entry.)
    check_tokens(&node, &token, &revoked, &user, "after SIGTERM");
    let before = snapshot(&node.operator());

    // SIGKILL: no drain at all.
    node.kill();
    node.restart();
    assert_same(&before, &snapshot(&node.operator()), "after SIGKILL");
    let user = Api { base: node.admin_url(), ..user };
    check_tokens(&node, &token, &revoked, &user, "after SIGKILL");
    let (_, a) = node.operator().get("/api/v1/audit/admin?limit=10000");
    let audit = a["items"].as_array().unwrap().clone();

    // Still writable, and the audit trail continues where it was.
    let op = node.operator();
    ok(op.post("/api/v1/agencies", json!({"code": "000.00.03.H31", "name": "Sở Xây dựng Hải Phòng"})));
    let (_, a) = op.get("/api/v1/audit/admin?limit=10000");
    let items = a["items"].as_array().unwrap();
    assert_eq!(items.len(), audit.len() + 1, "one new audit entry");
    assert_eq!(&items[1..], &audit[..], "the old entries are unchanged");
    assert!(items[0]["index"].as_u64() > audit[0]["index"].as_u64(), "indexes keep growing: {} then {}", audit[0], items[0]);
    assert!(items[0]["target"].as_str().unwrap_or("").contains("000.00.03.H31"));
}

#[test]
fn graceful_stop_drains_and_says_so() {
    let mut node = Node::start();
    ok(node.operator().post("/api/v1/agencies", json!({"code": "000.00.00.H31", "name": "UBND thành phố Hải Phòng"})));
    let first_log = node.log.clone();
    node.restart();
    let text = std::fs::read_to_string(&first_log).unwrap();
    assert!(text.contains("draining"), "no drain on SIGTERM:\n{text}");
    assert!(text.contains("stopped"), "no clean stop on SIGTERM:\n{text}");
    let (s, v) = node.operator().get("/api/v1/agencies/000.00.00.H31");
    assert_eq!(s, 200, "{v}");
    // A second start on the same directory does not bootstrap another operator.
    let (_, users) = node.operator().get("/api/v1/users");
    assert_eq!(users["total"], 1, "{users}");
}

/// Writers create agencies as fast as they can while the node is killed with SIGKILL; every
/// agency whose creation was acknowledged (HTTP 201) must be there after the restart.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut node = Node::start();
    let op = node.operator();
    ok(op.post("/api/v1/agencies", json!({"code": "000.00.00.K01", "name": "Cơ quan gốc"})));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let acked = acked.clone();
        let stop = stop.clone();
        let base = op.base.clone();
        let token = op.token.clone().unwrap();
        writers.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            let mut refused = Vec::new();
            for i in 0..10_000u32 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let code = format!("{:03}.{:02}.{:02}.K02", i / 100, i % 100, w);
                let r = http
                    .post(format!("{base}/api/v1/agencies"))
                    .bearer_auth(&token)
                    .json(&json!({"code": code, "name": format!("Cơ quan {w}-{i}"), "parent": "000.00.00.K01"}))
                    .send();
                match r {
                    Ok(resp) if resp.status().as_u16() == 201 => {
                        acked.lock().unwrap().push(code);
                    }
                    Ok(resp) => refused.push(format!("{code}: {}", resp.status())),
                    Err(_) => break, // the node is gone
                }
            }
            refused
        }));
    }
    // Let some writes land, then crash the node in the middle of the stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 30 {
        assert!(Instant::now() < deadline, "writes are too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    node.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let refused = w.join().expect("writer thread");
        assert!(refused.is_empty(), "writes refused: {refused:?}");
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} acknowledged writes before SIGKILL", acked.len());

    node.restart();
    let op = node.operator();
    let (s, list) = op.get("/api/v1/agencies?limit=100000");
    assert_eq!(s, 200);
    let present: std::collections::BTreeSet<&str> = list["items"].as_array().unwrap().iter().map(|a| a["code"].as_str().unwrap()).collect();
    let lost: Vec<&String> = acked.iter().filter(|c| !present.contains(c.as_str())).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost after kill -9: {lost:?}", lost.len(), acked.len());
    // Each acknowledged write has its audit entry.
    let (_, a) = op.get("/api/v1/audit/admin?limit=10000");
    let targets: Vec<&str> = a["items"].as_array().unwrap().iter().map(|e| e["target"].as_str().unwrap_or("")).collect();
    for code in &acked {
        assert!(targets.iter().any(|t| t.contains(code.as_str())), "no audit entry for {code}");
    }
    // And the store is healthy: it takes new writes.
    ok(op.post("/api/v1/agencies", json!({"code": "999.99.99.K03", "name": "Sau sự cố"})));
}

#[test]
fn dev_credentials_survive_restart() {
    let mut node = Node::start();
    let info = node.info.clone();
    for _ in 0..2 {
        node.restart();
        assert_eq!(node.info["username"], info["username"]);
        assert_eq!(node.info["password"], info["password"]);
        assert_eq!(node.info["api_token"], info["api_token"]);
        let (s, v) = me(&node.operator());
        assert_eq!(s, 200, "the dev.json token after restart: {v}");
        let (s, v) = node.anonymous().post("/api/v1/auth/login", json!({"username": info["username"], "password": info["password"]}));
        assert_eq!(s, 200, "the dev.json password after restart: {v}");
    }
    // The same data directory under a new harness (as after a reboot).
    let dir = node.dir.clone();
    node.kill();
    let again = Node::start_in(&dir);
    assert_eq!(again.info["api_token"], info["api_token"]);
    let (s, v) = me(&again.operator());
    assert_eq!(s, 200, "{v}");
}
