//! Health probes end to end (issue 6): real HTTP and TCP targets that go down and come back,
//! probed by real `lgsp` nodes. One node: the replicated status follows the target, status
//! changes are recorded as events with what a notice needs, history, uptime, the Level 2
//! `probes` component and the CLI. Three nodes: each target is probed by exactly one node,
//! results are readable from every node, and a killed node's targets are taken over.
//! No timing assertions: every wait polls with a generous deadline.
#![allow(clippy::disallowed_methods)]

mod common;

use common::wait_for;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Api, Node};
use serde_json::{json, Value};

/// Probes run every 300 ms in these tests instead of their agreed interval.
const FAST: &str = "300";

/// A tiny HTTP server on a fixed port that can be stopped (connections refused) and started
/// again on the same port.
struct Target {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Target {
    fn start() -> Target {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut t = Target { addr, stop: Arc::new(AtomicBool::new(false)), thread: None };
        t.serve(l);
        t
    }

    fn serve(&mut self, l: TcpListener) {
        l.set_nonblocking(true).expect("nonblocking");
        self.stop = Arc::new(AtomicBool::new(false));
        let stop = self.stop.clone();
        self.thread = Some(thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 2048];
                        let _ = s.read(&mut buf);
                        let body = r#"{"status":"up"}"#;
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
    }

    /// Stops listening: connections are refused from now on.
    fn down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens on the same port again.
    fn up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let l = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", self.addr);
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(l);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.down();
    }
}

fn ok(r: (u16, Value)) -> Value {
    assert!(r.0 < 300, "request failed: {} {}", r.0, r.1);
    r.1
}

fn registry(op: &Api, systems: &[&str]) {
    ok(op.post("/api/v1/agencies", json!({"code": "000.00.00.H31", "name": "UBND thành phố Hải Phòng"})));
    for id in systems {
        ok(op.post(
            "/api/v1/systems",
            json!({"id": id, "agency": "000.00.00.H31", "name": format!("System {id}"), "security": {"kind": "level", "level": 3}}),
        ));
    }
}

fn probe<'a>(list: &'a Value, target: &str) -> &'a Value {
    list["items"].as_array().and_then(|a| a.iter().find(|i| i["target"] == target)).unwrap_or(&Value::Null)
}

fn status_is(op: &Api, target: &str, want: &str) -> Option<Value> {
    let (s, list) = op.get("/api/v1/probes?consistency=local");
    (s == 200 && probe(&list, target)["status"] == want).then(|| probe(&list, target).clone())
}

#[test]
fn one_node_follows_a_target_that_goes_down_and_comes_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_in_with(&tmp.path().join("data"), &[], &[("LGSP_TEST_PROBE_INTERVAL_MS", FAST)]);
    let op = node.operator();
    registry(&op, &["web"]);
    let mut target = Target::start();
    let url = format!("http://{}/status", target.addr);

    // Validation speaks to the operator.
    let (s, e) = op.put("/api/v1/systems/web/probe", json!({"kind": "http", "target": url, "interval_s": 2}));
    assert_eq!(s, 400, "{e}");
    assert!(e.to_string().contains("interval_s"), "{e}");
    ok(op.put("/api/v1/systems/web/probe", json!({"kind": "http", "target": url, "interval_s": 30, "timeout_ms": 2000})));

    let up = wait_for("the target to be confirmed up", 60, || status_is(&op, "system:web", "up"));
    assert_eq!(up["system"], "web");
    assert_eq!(up["latest"]["node"], "dev");
    assert!(up["latest"]["last"]["detail"].as_str().is_some_and(|d| d.contains("200")), "{up}");

    target.down();
    let down = wait_for("the target to be confirmed down", 60, || status_is(&op, "system:web", "down"));
    assert!(down["latest"]["last"]["detail"].as_str().is_some_and(|d| d.contains("cannot reach")), "{down}");

    target.up();
    wait_for("the target to be confirmed up again", 60, || status_is(&op, "system:web", "up"));

    // The changes are replicated events carrying what a notice needs.
    let h = ok(op.get("/api/v1/probes/system:web/history?granularity=hourly"));
    let events = h["events"].as_array().expect("events").clone();
    let changes: Vec<(Value, Value)> = events.iter().map(|e| (e["from"].clone(), e["to"].clone())).collect();
    assert_eq!(changes, vec![(Value::Null, json!("up")), (json!("up"), json!("down")), (json!("down"), json!("up"))], "{h}");
    let went_down = &events[1];
    assert_eq!((went_down["system"].as_str(), went_down["agency"].as_str()), (Some("web"), Some("000.00.00.H31")));
    assert_eq!(went_down["notify"], true);
    assert!(went_down["reason"].as_str().is_some_and(|r| r.contains("cannot reach")), "{went_down}");

    // History and uptime count the checks of both states (recorded about every second).
    let h = wait_for("history with up and down checks", 30, || {
        let h = ok(op.get("/api/v1/probes/system:web/history?granularity=hourly"));
        (h["total"]["up"].as_u64() > Some(0) && h["total"]["down"].as_u64() > Some(0)).then_some(h)
    });
    let checks = h["total"]["checks"].as_u64().expect("checks");
    let u = ok(op.get("/api/v1/systems/web/uptime"));
    let month = &u["targets"][0]["month"];
    assert!(month["checks"].as_u64() >= Some(checks), "{u}");
    let share = month["uptime"].as_f64().expect("uptime");
    assert!(share > 0.0 && share < 1.0, "the target was down for a while: {u}");
    assert_eq!(u["targets"][0]["days"].as_array().map(Vec::len), Some(1), "{u}");

    // Level 2 status reports the scheduler.
    let metrics = node.info["metrics_url"].as_str().expect("metrics_url");
    let st: Value = reqwest::blocking::get(format!("{metrics}/status/services")).expect("status").json().expect("json");
    assert_eq!(st["components"]["probes"]["targets"], 1, "{st}");
    assert_eq!(st["components"]["probes"]["status"], "up", "{st}");

    // The CLI shows the same.
    let out = node.cli(&["probe", "list", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(probe(&v, "system:web")["status"], "up");
    let out = node.cli(&["probe", "clear", "--system", "web"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ok(op.get("/api/v1/probes"))["total"], 0);
}

/// O2: the owning agency's contacts and the operator are told when a connection is lost and
/// when it recovers, once each, through the replicated outbox (here the operator's signed
/// webhook receives them; the agency's contact is a recipient of the same notices).
/// Notices the operator's webhook received: (notice id, body).
type Received = Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// An operator webhook that records every notice, and the ops config naming it.
fn operator_webhook(dir: &std::path::Path) -> (common::upstream::TestServer, Received, std::path::PathBuf) {
    let got: Received = Arc::default();
    let sink = got.clone();
    let hook = common::upstream::TestServer::start(move |req| {
        let sink = sink.clone();
        Box::pin(async move {
            use http_body_util::BodyExt;
            let id = req.headers().get("x-lgsp-notice-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            sink.lock().expect("lock").push((id, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            Ok(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))))
        })
    });
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, "operator-secret-0123456789").expect("secret");
    let ops = dir.join("ops.toml");
    std::fs::write(
        &ops,
        format!("[notify]\noperator_webhook = '{}/operator'\noperator_webhook_secret_file = '{}'\n", hook.url(), secret.display()),
    )
    .expect("ops config");
    (hook, got, ops)
}

#[test]
fn a_lost_connection_and_its_recovery_are_notified_once_each() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_hook, got, ops) = operator_webhook(tmp.path());
    let node = Node::start_in_with(
        &tmp.path().join("data"),
        &["--ops-config", ops.to_str().expect("utf-8")],
        &[("LGSP_TEST_PROBE_INTERVAL_MS", FAST)],
    );
    let op = node.operator();
    ok(op.post(
        "/api/v1/agencies",
        json!({"code": "000.00.00.H31", "name": "UBND thành phố Hải Phòng", "contacts": [{"name": "Tổ CNTT", "email": "cntt@haiphong.example"}]}),
    ));
    ok(op.post(
        "/api/v1/systems",
        json!({"id": "web", "agency": "000.00.00.H31", "name": "Web", "security": {"kind": "level", "level": 3}}),
    ));
    let mut target = Target::start();
    let url = format!("http://{}/status", target.addr);
    ok(op.put("/api/v1/systems/web/probe", json!({"kind": "http", "target": url, "interval_s": 30, "timeout_ms": 2000})));
    wait_for("the target to be confirmed up", 60, || status_is(&op, "system:web", "up"));

    target.down();
    wait_for("the lost connection notified", 60, || got.lock().expect("lock").iter().any(|(_, b)| b["kind"] == "probe.down").then_some(()));
    target.up();
    wait_for("the recovery notified", 60, || got.lock().expect("lock").iter().any(|(_, b)| b["kind"] == "probe.recovered").then_some(()));
    // Probes go on meanwhile; nothing else is notified.
    wait_for("a few more checks of the recovered target", 60, || {
        let h = ok(op.get("/api/v1/probes/system:web/history?granularity=hourly"));
        (h["total"]["up"].as_u64() > Some(10)).then_some(())
    });
    let got = got.lock().expect("lock").clone();
    let kinds: Vec<&str> = got.iter().filter_map(|(_, b)| b["kind"].as_str()).collect();
    assert_eq!(kinds, ["probe.down", "probe.recovered"], "one notice per change, none for the first 'up': {got:?}");
    assert!(got.iter().all(|(id, _)| id.starts_with("probe/system:web/")), "{got:?}");
    // The same notices are addressed to the agency's contact (email is not configured here, so
    // that delivery is recorded as failed, visibly).
    let (s, notices) = op.get("/api/v1/notices");
    assert_eq!(s, 200, "{notices}");
    let down = notices["items"].as_array().and_then(|a| a.iter().find(|n| n["kind"] == "probe.down")).cloned().unwrap_or_default();
    let emails: Vec<&str> =
        down["deliveries"].as_array().map(|d| d.iter().filter_map(|d| d["channel"]["to"].as_str()).collect()).unwrap_or_default();
    assert_eq!(emails, ["cntt@haiphong.example"], "{down}");
    assert!(down["subject"]["vi"].as_str().is_some_and(|s| s.contains("Mất kết nối")), "{down}");
}

/// A TLS server on a fixed port whose certificate (a `localhost` leaf of a test CA) can be
/// replaced while it runs: each handshake uses the certificate of the moment.
struct TlsTarget {
    addr: SocketAddr,
    ca_pem: String,
    ca: (rcgen::Certificate, rcgen::KeyPair),
    config: Arc<std::sync::Mutex<Arc<rustls::ServerConfig>>>,
    stop: Arc<AtomicBool>,
}

impl TlsTarget {
    fn start(days_left: i64) -> TlsTarget {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        validity(&mut params, 3650);
        let ca = params.self_signed(&ca_key).expect("ca");
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        l.set_nonblocking(true).expect("nonblocking");
        let mut t = TlsTarget {
            addr,
            ca_pem: ca.pem(),
            ca: (ca, ca_key),
            config: Arc::new(std::sync::Mutex::new(Arc::new(
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new())),
            ))),
            stop: Arc::new(AtomicBool::new(false)),
        };
        t.renew(days_left);
        let (config, stop) = (t.config.clone(), t.stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        let config = config.lock().expect("lock").clone();
                        thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            if let Ok(conn) = rustls::ServerConnection::new(config) {
                                let mut tls = rustls::StreamOwned::new(conn, s);
                                let mut buf = [0u8; 64];
                                let _ = tls.read(&mut buf); // completes the handshake
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        t
    }

    /// Serves a new leaf certificate valid for `days_left` more days from now on.
    fn renew(&mut self, days_left: i64) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        validity(&mut params, days_left);
        let leaf = params.signed_by(&key, &self.ca.0, &self.ca.1).expect("leaf");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
            .expect("server config");
        *self.config.lock().expect("lock") = Arc::new(config);
    }
}

impl Drop for TlsTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Makes `params` valid from 30 days ago until `days_left` days from today.
fn validity(params: &mut rcgen::CertificateParams, days_left: i64) {
    use chrono::Datelike;
    let ymd = |d: chrono::DateTime<chrono::Utc>| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    let now = chrono::Utc::now();
    params.not_before = ymd(now - chrono::Duration::days(30));
    params.not_after = ymd(now + chrono::Duration::days(days_left));
}

/// O2: a certificate approaching expiry is notified once at each threshold it crosses (30,
/// 14, 7, 1 days), also while the probe's status does not change: here the first status
/// (degraded: under 21 days) brings the 30-day notice, and a certificate swapped for one with
/// 10 days left, still degraded, brings the 14-day notice, once.
#[test]
fn each_certificate_expiry_threshold_is_notified_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_hook, got, ops) = operator_webhook(tmp.path());
    let mut target = TlsTarget::start(20);
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &target.ca_pem).expect("ca");
    let node = Node::start_in_with(
        &tmp.path().join("data"),
        &["--ops-config", ops.to_str().expect("utf-8"), "--upstream-ca", ca.to_str().expect("utf-8")],
        &[("LGSP_TEST_PROBE_INTERVAL_MS", FAST)],
    );
    let op = node.operator();
    registry(&op, &["web"]);
    let spec = json!({"kind": "tls", "target": format!("localhost:{}", target.addr.port()), "interval_s": 30, "timeout_ms": 2000});
    ok(op.put("/api/v1/systems/web/probe", spec));
    wait_for("the target confirmed degraded (certificate under 21 days)", 60, || status_is(&op, "system:web", "degraded"));
    let thresholds = || -> Vec<i64> {
        let got = got.lock().expect("lock");
        got.iter().filter(|(_, b)| b["kind"] == "probe.cert_expiring").filter_map(|(_, b)| b["data"]["threshold_days"].as_i64()).collect()
    };
    wait_for("the 30-day notice", 60, || (thresholds() == [30]).then_some(()));

    target.renew(10);
    wait_for("the 14-day notice while the status stays degraded", 60, || (thresholds() == [30, 14]).then_some(()));
    // Checks and reconciliations (every 10 s) go on; nothing is notified twice.
    let checked = |n: u64| {
        let h = ok(op.get("/api/v1/probes/system:web/history?granularity=hourly"));
        (h["total"]["degraded"].as_u64() > Some(n)).then_some(())
    };
    let now = ok(op.get("/api/v1/probes/system:web/history?granularity=hourly"))["total"]["degraded"].as_u64().unwrap_or(0);
    wait_for("checks covering two more reconciliations", 90, || checked(now + 70));
    assert_eq!(thresholds(), [30, 14], "{:?}", got.lock().expect("lock"));
    let kinds: Vec<String> = got.lock().expect("lock").iter().filter_map(|(_, b)| b["kind"].as_str().map(str::to_owned)).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "probe.degraded").count(), 1, "one status notice: {kinds:?}");
    let (s, status) = op.get("/api/v1/probes?consistency=local");
    assert_eq!(s, 200, "{status}");
    assert_eq!(probe(&status, "system:web")["status"], "degraded", "{status}");
}

#[test]
fn three_nodes_share_the_targets_and_take_over_a_dead_nodes() {
    // Every node of the test cluster probes every 300 ms.
    std::env::set_var("LGSP_TEST_PROBE_INTERVAL_MS", FAST);
    let mut c = Cluster::start(3, &[]);
    let systems: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    let op = c.any();
    registry(&op, &systems.iter().map(String::as_str).collect::<Vec<_>>());
    let target = Target::start();
    for s in &systems {
        ok(op.put(&format!("/api/v1/systems/{s}/probe"), json!({"kind": "tcp", "target": target.addr.to_string(), "interval_s": 10})));
    }
    let ids: Vec<String> = systems.iter().map(|s| format!("system:{s}")).collect();

    // Each target is probed by exactly one node, and every node reads every result.
    let owners = wait_for("every target probed by exactly one node and seen up everywhere", 90, || {
        let mut owner = std::collections::BTreeMap::new();
        for k in 1..=3 {
            let list = ok(c.api(k).get("/api/v1/probes?consistency=local"));
            let name = list["node"].as_str()?.to_owned();
            for t in list["probing_here"].as_array()? {
                if owner.insert(t.as_str()?.to_owned(), name.clone()).is_some() {
                    return None; // probed twice (still settling)
                }
            }
            for id in &ids {
                if probe(&list, id)["status"] != "up" || probe(&list, id)["latest"]["node"].is_null() {
                    return None;
                }
            }
        }
        (owner.len() == ids.len()).then_some(owner)
    });
    let names: std::collections::BTreeSet<&String> = owners.values().collect();
    assert!(names.len() >= 2, "nine targets spread over three nodes: {owners:?}");

    // Kill the node that probes the first target; another node takes it over.
    let (first, victim) = owners.iter().next().map(|(t, n)| (t.clone(), n.clone())).expect("an owner");
    let k: usize = victim.trim_start_matches("node-").parse().expect("node-K");
    c.kill(k);
    let survivors: Vec<usize> = (1..=3).filter(|x| *x != k).collect();
    let (new_owner, taken_at) = wait_for("a surviving node to probe the dead node's target", 90, || {
        let list = ok(c.api(survivors[0]).get("/api/v1/probes?consistency=local"));
        let latest = &probe(&list, &first)["latest"];
        let node = latest["node"].as_str()?;
        (node != victim).then(|| (node.to_owned(), latest["checked_at"].as_i64().unwrap_or(0)))
    });
    assert!(survivors.iter().any(|s| new_owner == format!("node-{s}")), "{new_owner}");
    // The other survivor reads the same (gossiped) result.
    wait_for("the other survivor to see the new prober", 60, || {
        let list = ok(c.api(survivors[1]).get("/api/v1/probes?consistency=local"));
        let latest = &probe(&list, &first)["latest"];
        (latest["node"] == new_owner.as_str() && latest["checked_at"].as_i64() >= Some(taken_at)).then_some(())
    });
    // And after the move, still exactly one prober per target among the survivors.
    wait_for("the targets partitioned over the survivors", 60, || {
        let mut seen = std::collections::BTreeSet::new();
        for s in &survivors {
            let list = ok(c.api(*s).get("/api/v1/probes?consistency=local"));
            for t in list["probing_here"].as_array()? {
                if !seen.insert(t.as_str()?.to_owned()) {
                    return None;
                }
            }
        }
        (seen.len() == ids.len()).then_some(())
    });
    // The move raised no status change: the status stayed up, one event per target.
    let h = ok(c.api(survivors[0]).get(&format!("/api/v1/probes/{first}/history")));
    assert_eq!(h["events"].as_array().map(Vec::len), Some(1), "{h}");
}

#[test]
fn registry_documents_carry_probes_in_and_out() {
    let node = Node::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = r#"
[[agency]]
code = "000.00.00.H31"
name = "UBND"

[[system]]
id = "web"
agency = "000.00.00.H31"
name = "Web"
security_level = 3
probe = { kind = "http", target = "http://127.0.0.1:9/status", interval_s = 60 }

[[service]]
context = "dancu"
provider_system = "web"
name = "Dân cư"

[[service.version]]
version = "v1"
state = "published"
upstream = { production = "http://127.0.0.1:9/api" }
probe = { kind = "tls", target = "127.0.0.1:9", interval_s = 300, tls_warn_days = 30 }
"#;
    let good = dir.path().join("good.toml");
    std::fs::write(&good, doc).expect("write");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, doc.replace("interval_s = 60", "interval_s = 5")).expect("write");

    let out = node.cli(&["registry", "import", bad.to_str().expect("path")], None);
    assert!(!out.status.success());
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(err.contains("system[0].probe") && err.contains("interval_s"), "{err}");

    let out = node.cli(&["registry", "import", good.to_str().expect("path")], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = ok(node.operator().get("/api/v1/probes"));
    assert_eq!(probe(&list, "system:web")["spec"]["interval_s"], 60, "{list}");
    assert_eq!(probe(&list, "service:dancu:v1")["spec"]["tls_warn_days"], 30, "{list}");

    let out = node.cli(&["registry", "export", "--format", "json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported: Value = serde_json::from_slice(&out.stdout).expect("json export");
    assert_eq!(exported["system"][0]["probe"]["target"], "http://127.0.0.1:9/status", "{exported}");
    assert_eq!(exported["service"][0]["version"][0]["probe"]["kind"], "tls", "{exported}");
    // Importing it again changes nothing.
    let again = node.cli(&["registry", "import", good.to_str().expect("path")], None);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}
