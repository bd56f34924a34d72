//! The cluster with real nodes over real QUIC: replication, forwarding, linearizable reads,
//! concurrent writes (group commit),
//! leader failure, catch-up by snapshot, membership under load, minority partitions, 5 nodes,
//! join tokens and certificate rotation.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{agency_code, create_agency, Cluster};
use serde_json::json;

fn retry_write(c: &Cluster, nodes: &[usize], i: usize, within: Duration) -> (usize, Duration) {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        let k = nodes[attempt % nodes.len()];
        let (s, b) = create_agency(&c.api(k), i);
        if s == 201 {
            return (k, start.elapsed());
        }
        // A retried write that was in fact applied the first time answers 409.
        if s == 409 && b["code"] == "ALREADY_EXISTS" {
            return (k, start.elapsed());
        }
        assert!(start.elapsed() < within, "write {i} not accepted within {within:?}: last answer {s} {b}");
        attempt += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has_agency(c: &Cluster, k: usize, i: usize, local: bool) -> bool {
    let q = if local { "?consistency=local" } else { "" };
    c.api(k).get(&format!("/api/v1/agencies/{}{q}", agency_code(i))).0 == 200
}

#[test]
fn three_nodes_replicate_forward_and_read_linearizably() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader_seen_by(1) as usize;
    let follower = (1..=3).find(|k| *k != leader).expect("a follower");
    let other = (1..=3).find(|k| *k != leader && *k != follower).expect("another follower");

    // A write through a follower is forwarded to the leader and acknowledged.
    let (s, b) = create_agency(&c.api(follower), 1);
    assert_eq!(s, 201, "{b}");
    // Read-your-write on the node that took it, and a linearizable read on another follower.
    assert!(has_agency(&c, follower, 1, true), "the writing node applied it before answering");
    assert!(has_agency(&c, other, 1, false), "a linearizable read on another follower sees it");
    // A refused write is refused the same way through a follower.
    let (s, b) = create_agency(&c.api(other), 1);
    assert_eq!((s, b["code"].as_str()), (409, Some("ALREADY_EXISTS")), "{b}");

    // Status: leader, term, indices and every node's lag, from any node.
    let st = c.status(other);
    assert_eq!(st["leader"].as_u64(), Some(leader as u64), "{st}");
    assert!(st["term"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert!(st["last_log_index"].as_u64().unwrap_or(0) >= 1, "{st}");
    let nodes = st["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{st}");
    for n in nodes {
        assert!(n["lag"].is_u64(), "the leader reports each node's lag: {st}");
        assert!(n["admin_url"].as_str().is_some_and(|u| u.starts_with("http://127.0.0.1:")), "{st}");
    }
    // The CLI shows the same.
    let out = common::cluster::cli_on(&c, other, &["cluster", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("leader") && text.contains("node-1") && text.contains("node-3") && text.contains("LAG"), "{text}");
    // Prometheus: the leader exports its term, leadership and each member's lag.
    let metrics_url = c.node(leader).info["metrics_url"].as_str().expect("metrics_url").to_owned();
    let text = reqwest::blocking::get(format!("{metrics_url}/metrics")).expect("metrics").text().expect("text");
    assert!(text.contains("lgsp_cluster_is_leader 1"), "{text}");
    assert!(text.contains("lgsp_cluster_voters 3") && text.contains("lgsp_cluster_quorum 1"), "{text}");
    assert!(text.contains("lgsp_cluster_replication_lag_entries{node=\"node-2\"}"), "{text}");
    // The admin audit trail of every node records the change once.
    for k in 1..=3 {
        let (s, a) = c.api(k).get("/api/v1/audit/admin?limit=50");
        assert_eq!(s, 200, "{a}");
        let n = a["items"].as_array().expect("items").iter().filter(|e| e["target"] == format!("agency/{}", agency_code(1))).count();
        assert_eq!(n, 1, "node {k} audit: {a}");
    }
}

/// Concurrent writes through every node share Raft entries on the leader (group commit); each
/// caller still gets its own write's answer: the first creation of a code wins once, every
/// duplicate is refused, and each node's audit trail holds one line per created agency.
#[test]
fn concurrent_writes_each_get_their_own_answer() {
    let c = Cluster::start(3, &[]);
    c.leader_seen_by(1);
    let codes = 40;
    let created = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for t in 0..24 {
            let (c, created, refused) = (&c, created.clone(), refused.clone());
            s.spawn(move || {
                // Three threads per code range: every code is written three times at once.
                let node = 1 + t % 3;
                for i in 0..codes {
                    if i % 8 != t / 3 {
                        continue;
                    }
                    let (st, b) = create_agency(&c.api(node), 1000 + i);
                    match (st, b["code"].as_str()) {
                        (201, _) => created.lock().expect("lock").push(1000 + i),
                        (409, Some("ALREADY_EXISTS")) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("write of code {i} through node {node}: {other:?} {b}"),
                    }
                }
            });
        }
    });
    let mut created = created.lock().expect("lock").clone();
    created.sort_unstable();
    assert_eq!(created, (1000..1000 + codes).collect::<Vec<_>>(), "every code created exactly once");
    assert_eq!(refused.load(Ordering::SeqCst), 2 * codes, "every duplicate refused");
    for k in 1..=3 {
        let (s, a) = c.api(k).get("/api/v1/audit/admin?limit=500");
        assert_eq!(s, 200, "{a}");
        let items = a["items"].as_array().expect("items");
        for i in 0..codes {
            let target = format!("agency/{}", agency_code(1000 + i));
            assert_eq!(items.iter().filter(|e| e["target"] == target).count(), 1, "node {k}: one audit line for {target}");
        }
    }
}

#[test]
fn leader_killed_then_restarted_keeps_every_acknowledged_write() {
    let mut c = Cluster::start(3, &[]);
    for i in 0..20 {
        let (s, b) = create_agency(&c.any(), i);
        assert_eq!(s, 201, "{b}");
    }
    let leader = c.leader_seen_by(1) as usize;
    c.kill(leader);
    let rest: Vec<usize> = (1..=3).filter(|k| *k != leader).collect();
    // The survivors elect a new leader and take writes again.
    let (_, took) = retry_write(&c, &rest, 20, Duration::from_secs(30));
    eprintln!("first write after killing the leader accepted after {took:?}");
    let new_leader = c.leader_seen_by(rest[0]) as usize;
    assert_ne!(new_leader, leader);
    for i in 21..30 {
        let (s, b) = create_agency(&c.api(rest[1]), i);
        assert_eq!(s, 201, "{b}");
    }
    // The old leader restarts on its data, rejoins as a follower and catches up.
    c.restart(leader);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(has_agency(&c, leader, 29, true) && has_agency(&c, leader, 0, true)) {
        assert!(Instant::now() < deadline, "restarted node did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..30 {
        assert!(has_agency(&c, leader, i, true), "agency {i} missing on the restarted node");
    }
    c.wait_voters(3);
}

#[test]
fn lagging_node_catches_up_by_snapshot_after_compaction() {
    let mut c = Cluster::start(3, &["--snapshot-logs", "20", "--keep-logs", "0"]);
    c.kill(3);
    let before = c.status(1)["last_log_index"].as_u64().expect("index");
    for i in 0..80 {
        let (s, b) = create_agency(&c.api(1 + (i % 2)), i);
        assert_eq!(s, 201, "{b}");
    }
    // The log behind node 3's position has been compacted away.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.status(1);
        if st["purged_index"].as_u64().unwrap_or(0) > before + 20 {
            break;
        }
        assert!(Instant::now() < deadline, "leader did not snapshot and purge: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.restart(3);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_agency(&c, 3, 79, true) {
        assert!(Instant::now() < deadline, "node 3 did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..80 {
        assert!(has_agency(&c, 3, i, true), "agency {i} missing on node 3");
    }
    // Node 3 stopped at or below `before`, and the leader purged the log well past that before
    // node 3 came back: the entries in between exist only in the snapshot, so having every
    // agency proves node 3 caught up by installing it.
}

#[test]
fn membership_changes_under_write_load_lose_nothing() {
    let mut c = Cluster::start(3, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let api = c.api(1);
    let writer = {
        let (stop, next, acked, failed) = (stop.clone(), next.clone(), acked.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let (s, b) = create_agency(&api, i);
                if s == 201 {
                    acked.lock().expect("lock").push(i);
                } else {
                    failed.lock().expect("lock").push((i, s, b.to_string()));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    c.add_node(4);
    c.wait_voters(4);
    // Remove a follower that is not the node taking the writes.
    let leader = c.leader_seen_by(1) as usize;
    let victim = (2..=3).find(|k| *k != leader).expect("a follower to remove");
    let (s, b) = c.api(1).delete(&format!("/api/v1/cluster/nodes/{victim}"));
    assert_eq!(s, 200, "{b}");
    c.kill(victim);
    c.wait_voters(3);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    let acked = acked.lock().expect("lock").clone();
    let failed = failed.lock().expect("lock").clone();
    assert!(acked.len() > 20, "the writer made progress: {} acked", acked.len());
    assert!(failed.is_empty(), "writes failed during membership changes: {failed:?}");
    // Every acknowledged write is on the new node.
    let last = *acked.last().expect("acked");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has_agency(&c, 4, last, true) {
        assert!(Instant::now() < deadline, "node 4 did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in acked {
        assert!(has_agency(&c, 4, i, true), "acknowledged agency {i} missing on node 4");
    }
    let st = c.status(1);
    assert!(st["nodes"].as_array().expect("nodes").iter().all(|n| n["id"].as_u64() != Some(victim as u64)), "{st}");
}

#[test]
fn minority_partition_never_accepts_a_write_and_keeps_proxying() {
    let c = Cluster::start(3, &[]);
    let op = c.api(1);
    common::seed(&op);
    let leader = c.leader_seen_by(1) as usize;
    // A consumer credential and an access token from the node that will be cut off.
    let (s, cred) = op.post("/api/v1/credentials", json!({"system": "stp-hotich", "environment": "production"}));
    assert_eq!(s, 201, "{cred}");
    let gw = c.node(leader).info["gateway_url"].as_str().expect("gateway_url").to_owned();
    let http = reqwest::blocking::Client::new();
    let token = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = http
                .post(format!("{gw}/token"))
                .basic_auth(cred["consumer_key"].as_str().expect("key"), cred["consumer_secret"].as_str())
                .form(&[("grant_type", "client_credentials")])
                .send()
                .expect("token");
            if r.status() == 200 {
                break r.json::<serde_json::Value>().expect("json")["access_token"].as_str().expect("token").to_owned();
            }
            assert!(Instant::now() < deadline, "no token: {}", r.status());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Cut the leader off: it is the minority side.
    c.partition(&[leader]);
    let majority: Vec<usize> = (1..=3).filter(|k| *k != leader).collect();

    let (s, b) = create_agency(&c.api(leader), 500);
    assert!(s == 503 || s == 504, "a write on the minority side must not be acknowledged: {s} {b}");
    let (s, b) = c.api(leader).get("/api/v1/agencies");
    assert_eq!(s, 503, "a linearizable read on the minority side is refused: {b}");
    assert_eq!(b["code"], "NO_QUORUM", "{b}");
    // ... while a stale read is still possible on request.
    let (s, _) = c.api(leader).get("/api/v1/agencies?consistency=local");
    assert_eq!(s, 200);

    // The majority elects a leader and goes on.
    let (k, took) = retry_write(&c, &majority, 501, Duration::from_secs(30));
    eprintln!("majority accepted a write via node {k} after {took:?}");
    // A change to that agency through the cut-off node cannot be checked against the leader's
    // state: it is refused for want of a quorum, never answered "does not exist".
    let contacts = json!({"contacts": [{"name": "Nguyễn Văn A", "email": "a@example.vn"}]});
    let (s, b) = c.api(leader).patch(&format!("/api/v1/agencies/{}", agency_code(501)), contacts.clone());
    assert_eq!((s, b["code"].as_str()), (503, Some("NO_QUORUM")), "{b}");

    // The minority node reports degraded (still serving) on /status.
    let metrics = c.node(leader).info["metrics_url"].as_str().expect("metrics_url").to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st: serde_json::Value = reqwest::blocking::get(format!("{metrics}/status")).expect("status").json().expect("json");
        if st["status"] == "degraded" {
            break;
        }
        assert!(Instant::now() < deadline, "minority node never reported degraded: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its gateway still applies the full policy with the last replicated view: the consumer's
    // call passes authentication, subscription and limits and reaches the provider's address
    // (nothing listens there in this test: 502 means "forwarded"), and a bad token is refused.
    let r = http.get(format!("{gw}/dancu/v1/citizens")).bearer_auth(&token).send().expect("gateway reachable");
    assert_eq!(r.status(), 502, "the minority gateway forwards: {:?}", r.text());
    let r = http.get(format!("{gw}/dancu/v1/citizens")).bearer_auth("not-a-token").send().expect("gateway reachable");
    assert_eq!(r.status(), 401);

    c.heal();
    // After healing, the write refused on the minority side never appears anywhere.
    c.wait_voters(3);
    // The healed node takes the change at once: it catches up before deciding the agency exists.
    let (s, b) = c.api(leader).patch(&format!("/api/v1/agencies/{}", agency_code(501)), contacts);
    assert_eq!(s, 200, "{b}");
    for k in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !has_agency(&c, k, 501, false) {
            assert!(Instant::now() < deadline, "node {k} did not catch up after healing");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!has_agency(&c, k, 500, false), "the unacknowledged minority write appeared on node {k}");
    }
}

#[test]
fn a_deposed_leader_caught_up_by_snapshot_answers_its_stranded_writes_and_leads_again() {
    let c = Cluster::start(3, &["--snapshot-logs", "20", "--keep-logs", "0"]);
    let old = c.leader_seen_by(1) as usize;
    let majority: Vec<usize> = (1..=3).filter(|k| *k != old).collect();
    c.partition(&[old]);
    // Writes through the cut-off leader: appended to its log, never committed; as many at once
    // as its write queue keeps on their way.
    let stranded: Vec<_> = (0..2)
        .map(|i| {
            let api = c.api(old);
            std::thread::spawn(move || create_agency(&api, 600 + i))
        })
        .collect();
    for t in stranded {
        let (s, b) = t.join().expect("writer");
        assert!(s == 503 || s == 504, "a write on the minority side must not be acknowledged: {s} {b}");
    }
    // The majority goes on, past a snapshot and the purge of the log behind it, so the old leader
    // will catch up by the snapshot, which covers its stranded entries without replacing them.
    let before = c.status(majority[0])["last_log_index"].as_u64().expect("index");
    retry_write(&c, &majority, 0, Duration::from_secs(30));
    for i in 1..60 {
        let (s, b) = create_agency(&c.api(majority[i % 2]), i);
        assert_eq!(s, 201, "{b}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.status(majority[0])["purged_index"].as_u64().unwrap_or(0) <= before + 5 {
        assert!(Instant::now() < deadline, "the majority did not snapshot and purge");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.heal();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_agency(&c, old, 59, true) {
        assert!(Instant::now() < deadline, "the old leader did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Leading again, it takes writes: its stranded ones were answered and freed their places.
    let mut moved = false;
    for _ in 0..5 {
        let (s, b) = c.api(majority[0]).post("/api/v1/cluster/leader", json!({ "node_id": old }));
        if s == 200 && c.leader_seen_by(old) as usize == old {
            moved = true;
            break;
        }
        eprintln!("transfer attempt: {s} {b}");
    }
    assert!(moved, "leadership did not move back to node {old}");
    let (s, b) = create_agency(&c.api(old), 700);
    assert_eq!(s, 201, "{b}");
    for i in [600, 601] {
        assert!(!has_agency(&c, old, i, false), "the unacknowledged minority write {i} appeared");
    }
}

#[test]
fn five_nodes_survive_two_failures() {
    let mut c = Cluster::start(5, &[]);
    for i in 0..5 {
        assert_eq!(create_agency(&c.api(1 + i), i).0, 201);
    }
    let leader = c.leader_seen_by(1) as usize;
    let other = (1..=5).find(|k| *k != leader).expect("another");
    c.kill(leader);
    c.kill(other);
    let rest: Vec<usize> = (1..=5).filter(|k| *k != leader && *k != other).collect();
    retry_write(&c, &rest, 5, Duration::from_secs(30));
    for &k in &rest {
        for i in 0..6 {
            assert!(has_agency(&c, k, i, false), "agency {i} on node {k}");
        }
    }
}

#[test]
fn join_tokens_are_one_time_and_certificates_rotate() {
    let mut c = Cluster::start(2, &[]);
    let (s, b) = c.api(1).post("/api/v1/cluster/join-tokens", json!({"ttl_seconds": 600}));
    assert_eq!(s, 201, "{b}");
    let token = b["token"].as_str().expect("token").to_owned();
    let peer = c.node(1).info["cluster_addr"].as_str().expect("cluster_addr").to_owned();
    let join = |dir: &std::path::Path, name: &str, token: &str| {
        common::cli_in(
            dir,
            &["cluster", "join", "--data-dir", dir.to_str().expect("path"), "--name", name, "--peer", &peer, "--token", token],
            None,
        )
    };
    let d3 = c.root.join("n3").join("data");
    std::fs::create_dir_all(&d3).expect("dir");
    assert!(join(&d3, "node-3", &token).status.success());
    // The same token a second time is refused, with a message that says what to do.
    let d4 = c.root.join("x4");
    std::fs::create_dir_all(&d4).expect("dir");
    let out = join(&d4, "node-4", &token);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("join token") && err.contains("lgsp cluster token create"), "{err}");
    // A malformed token and a token for another cluster (wrong CA fingerprint) are refused.
    let out = join(&d4, "node-4", "nonsense");
    assert!(!out.status.success());
    let forged = format!("{}{}", &token[..token.len() - 4], "0000");
    let out = join(&d4, "node-4", &forged);
    assert!(!out.status.success(), "a token whose CA fingerprint does not match must not connect");
    assert!(!d4.join("cluster").join("node.pem").exists());

    c.restart(3);
    c.wait_voters(3);

    // Rotate node 2's certificate: it keeps replicating and forwarding without a restart.
    let cert = std::fs::read(c.root.join("n2").join("data").join("cluster").join("node.pem")).expect("node.pem");
    let (s, b) = c.api(2).post("/api/v1/cluster/certificate/rotate", json!({}));
    assert_eq!(s, 200, "{b}");
    let cert2 = std::fs::read(c.root.join("n2").join("data").join("cluster").join("node.pem")).expect("node.pem");
    assert_ne!(cert, cert2, "a new certificate was written");
    for i in 0..5 {
        assert_eq!(create_agency(&c.api(2), i).0, 201);
        assert_eq!(create_agency(&c.api(3), 100 + i).0, 201);
    }
    assert!(has_agency(&c, 2, 104, false));
    c.node_mut(2).restart();
    c.wait_voters(3);
    assert!(has_agency(&c, 2, 104, false), "the rotated certificate is used after a restart too");
}

#[test]
fn leadership_can_be_transferred() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader_seen_by(1);
    let target = (1..=3u64).find(|k| *k != leader).expect("target");
    let mut moved = false;
    for _ in 0..3 {
        let (s, b) = c.api(1).post("/api/v1/cluster/leader", json!({ "node_id": target }));
        if s == 200 {
            moved = true;
            break;
        }
        eprintln!("transfer attempt: {s} {b}");
    }
    assert!(moved, "leadership did not move to node {target} in 3 attempts");
    assert_eq!(c.leader_seen_by(1), target);
    assert_eq!(create_agency(&c.api(1), 1).0, 201);
}

#[test]
fn a_learner_token_keeps_the_node_a_learner_until_promoted() {
    let mut c = Cluster::start(2, &[]);
    let (s, b) = c.api(1).post("/api/v1/cluster/join-tokens", json!({"voter": false}));
    assert_eq!(s, 201, "{b}");
    let token = b["token"].as_str().expect("token").to_owned();
    let peer = c.node(1).info["cluster_addr"].as_str().expect("cluster_addr").to_owned();
    let d3 = c.root.join("n3").join("data");
    std::fs::create_dir_all(&d3).expect("dir");
    let out = common::cli_in(
        &d3,
        &["cluster", "join", "--data-dir", d3.to_str().expect("path"), "--name", "node-3", "--peer", &peer, "--token", &token],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.restart(3);
    // It catches up as a learner and stays one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.status(1);
        let role = st["nodes"].as_array().expect("nodes").iter().find(|n| n["id"] == 3).map(|n| n["role"].clone());
        if role.as_ref().is_some_and(|r| r == "learner") && all_caught_up(&st) {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never became a caught-up learner: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let st = c.status(1);
    assert!(st["nodes"].as_array().expect("nodes").iter().any(|n| n["id"] == 3 && n["role"] == "learner"), "still a learner: {st}");
    // A learner replicates: a write through it is forwarded and readable there.
    assert_eq!(create_agency(&c.api(3), 1).0, 201);
    assert!(has_agency(&c, 3, 1, true));
    // The operator promotes it (CLI), and it votes from then on.
    let out = common::cluster::cli_on(&c, 2, &["cluster", "promote", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.wait_voters(3);
}

fn all_caught_up(st: &serde_json::Value) -> bool {
    st["nodes"].as_array().is_some_and(|ns| ns.iter().all(|n| n["lag"].as_u64().is_some_and(|l| l < 5)))
}

fn node_status(c: &Cluster, k: usize) -> (u16, serde_json::Value) {
    node_status_at(c, k, "/status")
}

fn node_status_at(c: &Cluster, k: usize, path: &str) -> (u16, serde_json::Value) {
    let url = format!("{}{path}", c.node(k).info["metrics_url"].as_str().expect("metrics_url"));
    let r = reqwest::blocking::get(url).expect("GET /status");
    (r.status().as_u16(), r.json().expect("json"))
}

/// `lgsp node drain`: the node's `/status` answers 503 (load balancers take it out), leadership
/// leaves it, a drain that would leave fewer than a quorum of healthy voters in service is
/// refused with the reason, and `resume` puts it back. The drain is replicated and audited.
#[test]
fn drain_moves_leadership_away_and_keeps_a_quorum_in_service() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader_seen_by(1) as usize;
    let other = (1..=3).find(|k| *k != leader).expect("another node");
    assert_eq!(node_status(&c, leader).0, 200);

    let out = common::cluster::cli_on(&c, leader, &["node", "drain", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, body) = node_status(&c, leader);
    assert_eq!((code, body["status"].as_str()), (503, Some("draining")), "{body}");
    // Level 2 says the same, and still shows the components' health.
    let (code, body) = node_status_at(&c, leader, "/status/services");
    assert_eq!((code, body["status"].as_str()), (503, Some("draining")), "{body}");
    assert_eq!(body["components"]["storage"]["status"], "up", "{body}");
    // Leadership moves to a node in service.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let l = c.leader_seen_by(other) as usize;
        if l != leader {
            break;
        }
        assert!(Instant::now() < deadline, "a drained leader still leads after 15 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Writes still work (the drained node is still a voter and forwards), and the drained node
    // still proxies what reaches it.
    assert_eq!(create_agency(&c.api(leader), 7).0, 201);

    // A second drain would leave one healthy voter of three in service: refused, with why.
    let out = common::cluster::cli_on(&c, other, &["node", "drain"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && err.contains("quorum"), "{err}");
    assert_eq!(node_status(&c, other).0, 200, "a refused drain changes nothing");

    let out = common::cluster::cli_on(&c, leader, &["node", "resume"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(node_status(&c, leader).0, 200);
    assert_eq!(node_status_at(&c, leader, "/status/services").0, 200);
    // With the first node back in service, the other one may be drained.
    let out = common::cluster::cli_on(&c, other, &["node", "drain"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (s, a) = c.api(other).get("/api/v1/audit/admin?limit=50");
    assert_eq!(s, 200, "{a}");
    let actions: Vec<&str> = a["items"].as_array().expect("items").iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "node.drain").count(), 2, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| **a == "node.resume").count(), 1, "{actions:?}");
}
