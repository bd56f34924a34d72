//! The replicated outbox survives the leader (ARCHITECTURE.md, "Notifications"): on a real
//! 3-node cluster, a notice queued through Raft whose delivery the leader has started but not
//! recorded is delivered by the next leader after the old one is killed (at-least-once: the
//! receiver sees the same notice id again), and the delivery is recorded as sent on every
//! surviving node.
#![allow(clippy::disallowed_methods)]

mod common;

use common::wait_for;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{Duration as CDuration, Utc};
use common::cluster::Cluster;
use common::upstream::TestServer;
use http_body_util::Full;
use serde_json::{json, Value};

#[test]
fn a_leader_killed_while_sending_does_not_lose_the_notice() {
    // The operator's webhook: the first request never gets an answer (the leader is killed
    // while waiting for it); later ones are accepted.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (s2, c2) = (seen.clone(), calls.clone());
    let hook = TestServer::start(move |req| {
        let (seen, calls) = (s2.clone(), c2.clone());
        Box::pin(async move {
            let id = req.headers().get("x-lgsp-notice-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            seen.lock().expect("lock").push(id);
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
            Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
        })
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let secret = tmp.path().join("hook.secret");
    std::fs::write(&secret, "operator-secret-0123456789").expect("secret");
    let ops = tmp.path().join("ops.toml");
    std::fs::write(
        &ops,
        format!(
            "[notify]\noperator_webhook = '{}/operator'\noperator_webhook_secret_file = '{}'\nretry_base = '1s'\n[maintenance]\nmin_notice = '1h'\n",
            hook.url(),
            secret.display()
        ),
    )
    .expect("ops config");
    let mut c = Cluster::start(3, &["--ops-config", ops.to_str().expect("utf-8")]);
    let leader = c.leader_seen_by(1) as usize;
    let start = Utc::now() + CDuration::days(8);
    let (s, b) = c.api(leader).post(
        "/api/v1/maintenance",
        json!({
            "id": "upgrade",
            "scope": {"kind": "platform"},
            "start": start.to_rfc3339(),
            "end": (start + CDuration::hours(2)).to_rfc3339(),
            "reason": {"vi": "Nâng cấp", "en": "Upgrade"},
        }),
    );
    assert_eq!(s, 201, "{b}");
    let id = "maintenance/upgrade/announced";
    wait_for("the leader to start sending", 30, || (seen.lock().expect("lock").len() == 1).then_some(()));
    c.kill(leader);
    let other = (1..=3).find(|k| *k != leader).expect("a survivor");
    let new_leader = wait_for("a new leader", 30, || {
        let l = c.leader_seen_by(other) as usize;
        (l != leader).then_some(l)
    });
    wait_for("the new leader to send the notice again", 60, || {
        let s = seen.lock().expect("lock");
        (s.len() >= 2).then_some(())
    });
    assert!(seen.lock().expect("lock").iter().all(|n| n == id), "the same notice id each time: {:?}", seen.lock());
    for k in (1..=3).filter(|k| *k != leader) {
        let d: Value = wait_for("the delivery recorded as sent on every survivor", 30, || {
            let (s, b) = c.api(k).get("/api/v1/notices?consistency=local");
            assert_eq!(s, 200, "{b}");
            let n = b["items"].as_array()?.iter().find(|n| n["id"] == id)?.clone();
            let d = n["deliveries"].as_array()?.iter().find(|d| d["channel"]["kind"] == "operator_webhook")?.clone();
            (d["state"] == "sent").then_some(d)
        });
        assert!(d["sent_at"].is_string(), "node {k} (leader {new_leader}): {d}");
    }
}
