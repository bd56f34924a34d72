//! Level 1 and Level 2 status on the metrics listener (SPEC §2): `/status` answers at once;
//! `/status/services` reports storage, raft, disk, memory and clock, the node takes its worst
//! component's state, `degraded` answers 200 and `down` 503; thresholds come from `[status]`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::{Pki, Serve};
use serde_json::Value;

const COMPONENTS: [&str; 5] = ["storage", "raft", "disk", "memory", "clock"];

fn get(url: &str) -> (u16, Value) {
    let r = reqwest::blocking::Client::new().get(url).timeout(Duration::from_secs(30)).send().expect("metrics listener reachable");
    let status = r.status().as_u16();
    (status, r.json().expect("JSON body"))
}

fn rank(s: &str) -> u8 {
    match s {
        "up" => 0,
        "degraded" => 1,
        "down" => 2,
        other => panic!("unknown status {other:?}"),
    }
}

/// Checks the shape every answer must have and returns the overall status.
fn check_shape(code: u16, body: &Value) -> String {
    let overall = body["status"].as_str().expect("status").to_owned();
    let comps = body["components"].as_object().expect("components object");
    for name in COMPONENTS {
        let c = &comps[name];
        assert!(c["status"].as_str().is_some_and(|s| rank(s) <= 2), "{name}: {c}");
        assert!(c["message"].as_str().is_some_and(|m| !m.is_empty()), "{name} must say something: {c}");
    }
    let worst = comps.values().map(|c| rank(c["status"].as_str().expect("status"))).max().expect("components");
    assert_eq!(rank(&overall), worst, "the node takes its worst component's state: {body}");
    assert_eq!(code, if overall == "down" { 503 } else { 200 }, "{body}");
    assert!(body["checked_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    overall
}

#[test]
fn services_report_each_component_and_down_answers_503() {
    let node = common::Node::start();
    let base = node.info["metrics_url"].as_str().expect("metrics_url").to_owned();
    let (code, l1) = get(&format!("{base}/status"));
    assert_eq!((code, l1["status"].as_str()), (200, Some("up")), "{l1}");

    let (code, body) = get(&format!("{base}/status/services"));
    check_shape(code, &body);
    let c = &body["components"];
    assert_eq!(c["storage"]["status"], "up", "{body}");
    assert!(c["storage"]["applied_index"].as_u64().is_some_and(|i| i > 0), "{body}");
    assert_eq!(c["raft"]["status"], "up", "a one-node cluster has its quorum: {body}");
    assert_eq!(c["raft"]["quorum"], true);
    assert_eq!(c["clock"]["status"], "up");
    let now = chrono::Utc::now().timestamp();
    assert!(c["clock"]["unix_seconds"].as_i64().is_some_and(|t| (t - now).abs() < 300), "{body}");
    let (free, total) = (c["disk"]["free_bytes"].as_u64().expect("free_bytes"), c["disk"]["total_bytes"].as_u64().expect("total_bytes"));
    assert!(total > 0 && free <= total, "{body}");
    assert!(c["disk"]["path"].as_str().is_some_and(|p| p.ends_with("/data")), "{body}");
    assert!(c["memory"]["total_bytes"].as_u64().is_some_and(|t| t > 0), "{body}");

    // The data directory stops taking new files: storage is down, the node answers 503.
    let blocker = node.dir.join(".status-probe");
    std::fs::create_dir(&blocker).expect("block the probe file");
    let (code, body) = get(&format!("{base}/status/services"));
    assert_eq!(check_shape(code, &body), "down", "{body}");
    assert_eq!(code, 503);
    let msg = body["components"]["storage"]["message"].as_str().expect("message");
    assert!(msg.contains("cannot write in") && msg.contains(node.dir.to_str().expect("utf-8")), "{msg}");
    // Level 1 still answers at once and still says up: it checks nothing.
    assert_eq!(get(&format!("{base}/status")).1["status"], "up");
    std::fs::remove_dir(&blocker).expect("unblock");
    let (code, body) = get(&format!("{base}/status/services"));
    assert_eq!(body["components"]["storage"]["status"], "up", "{body}");
    assert_eq!(code, 200);
}

/// `lgsp serve` from a config file whose `[status]` thresholds no disk can meet: the disk is
/// degraded, so is the node, and it still answers 200.
#[test]
fn configured_disk_threshold_degrades_the_node_but_keeps_200() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let node = Serve::prepare(dir, "status-test", &Pki::new().leaf("status-test"), "[status]\ndisk_min_free_percent = 100");
    let (cfg, metrics) = (node.config.clone(), node.metrics);
    let log = std::fs::File::create(dir.join("log")).expect("log");
    let mut child =
        Command::new(common::BIN).args(["serve", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(log).spawn().expect("spawn");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(&mut child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(dir.join("log")).unwrap_or_default().contains("ready") {
        assert!(Instant::now() < deadline, "not ready: {}", std::fs::read_to_string(dir.join("log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = get(&format!("http://127.0.0.1:{metrics}/status/services"));
    assert_eq!(check_shape(code, &body), "degraded", "{body}");
    let disk = &body["components"]["disk"];
    assert_eq!(disk["status"], "degraded", "{body}");
    assert_eq!(disk["min_free_ratio"], 1.0);
    assert!(disk["message"].as_str().is_some_and(|m| m.contains("status.disk_min_free")), "{disk}");
    assert_eq!(body["node"], "status-test");
    drop(child);

    // A threshold that is not a percentage is refused before anything starts.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).expect("read").replace("disk_min_free_percent = 100", "disk_min_free_percent = 101"),
    )
    .expect("write");
    let out = Command::new(common::BIN).args(["serve", "--config"]).arg(&cfg).output().expect("serve");
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("status.disk_min_free_percent"));
}
