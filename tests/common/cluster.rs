//! Black-box cluster harness: N real `lgsp dev` processes on loopback forming one Raft cluster
//! over real QUIC (mutual TLS). Node 1 creates the cluster; the others join with one-time tokens
//! through `lgsp cluster join`, exactly as an operator would.
#![allow(dead_code, clippy::disallowed_methods)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{cli_in, Api, Node};

/// Raft timings for tests: slower than production so a loaded 2-core CI machine does not see
/// spurious elections.
pub const TUNING: &[&str] = &["--heartbeat-ms", "100", "--election-timeout-ms", "600"];

pub struct Cluster {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    /// Index i holds node i+1 (None while it is stopped or removed).
    pub nodes: Vec<Option<Node>>,
    pub token: String,
    args: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes and waits until all are voters.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let mut args: Vec<String> = TUNING.iter().map(|s| s.to_string()).collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut c = Cluster { _tmp: tmp, root, nodes: Vec::new(), token: String::new(), args };
        let first = c.spawn(1);
        c.token = first.info["api_token"].as_str().expect("api_token").to_owned();
        c.nodes.push(Some(first));
        for k in 2..=n {
            c.add_node(k);
        }
        c.wait_voters(n);
        c
    }

    fn dir(&self, k: usize) -> PathBuf {
        self.root.join(format!("n{k}")).join("data")
    }

    fn spawn(&self, k: usize) -> Node {
        let name = format!("node-{k}");
        let mut a: Vec<&str> = vec!["--name", &name];
        a.extend(self.args.iter().map(String::as_str));
        Node::start_in_with(&self.dir(k), &a, &[("LGSP_TEST_FAULTS", "1")])
    }

    /// Joins node `k` with a fresh token through node 1 (or the first running node) and starts it.
    pub fn add_node(&mut self, k: usize) {
        let (status, body) = self.any().post("/api/v1/cluster/join-tokens", json!({}));
        assert_eq!(status, 201, "join token: {body}");
        let token = body["token"].as_str().expect("token").to_owned();
        let peer = self.running().next().expect("a running node").info["cluster_addr"].as_str().expect("cluster_addr").to_owned();
        let dir = self.dir(k);
        std::fs::create_dir_all(&dir).expect("dir");
        let name = format!("node-{k}");
        let out = cli_in(
            &dir,
            &["cluster", "join", "--data-dir", dir.to_str().expect("utf-8 path"), "--name", &name, "--peer", &peer, "--token", &token],
            None,
        );
        assert!(out.status.success(), "join node {k}: {}", String::from_utf8_lossy(&out.stderr));
        let node = self.spawn(k);
        while self.nodes.len() < k {
            self.nodes.push(None);
        }
        self.nodes[k - 1] = Some(node);
    }

    pub fn node(&self, k: usize) -> &Node {
        self.nodes[k - 1].as_ref().expect("node is running")
    }

    pub fn node_mut(&mut self, k: usize) -> &mut Node {
        self.nodes[k - 1].as_mut().expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    /// The operator's API on node `k`.
    pub fn api(&self, k: usize) -> Api {
        self.node(k).api(&self.token)
    }

    /// The operator's API on the first running node.
    pub fn any(&self) -> Api {
        self.running().next().expect("a running node").api(&self.token)
    }

    /// The node number (1-based) of the node that is `id` in the cluster (ids follow join order).
    pub fn status(&self, k: usize) -> Value {
        let (s, v) = self.api(k).get("/api/v1/cluster");
        assert_eq!(s, 200, "cluster status on node {k}: {v}");
        v
    }

    /// Waits until `n` nodes are voters (or leader) with a known leader, and returns the leader's id.
    pub fn wait_voters(&self, n: usize) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (s, v) = self.any().get("/api/v1/cluster");
            if s == 200 {
                let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
                let voters = nodes.iter().filter(|x| x["role"] == "voter" || x["role"] == "leader").count();
                if voters == n && nodes.len() == n && !v["leader"].is_null() {
                    return v["leader"].as_u64().expect("leader id");
                }
            }
            assert!(Instant::now() < deadline, "cluster did not reach {n} voters: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The current leader's id as seen by node `k` (waiting for one).
    pub fn leader_seen_by(&self, k: usize) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, v) = self.api(k).get("/api/v1/cluster?consistency=local");
            if s == 200 && v["leader"].is_u64() {
                return v["leader"].as_u64().expect("leader");
            }
            assert!(Instant::now() < deadline, "node {k} sees no leader: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Drops all cluster traffic between `group` and every other node (test fault hook).
    pub fn partition(&self, group: &[usize]) {
        let all: Vec<usize> = (1..=self.nodes.len()).filter(|k| self.nodes[k - 1].is_some()).collect();
        for &k in &all {
            let blocked: Vec<usize> = if group.contains(&k) {
                all.iter().copied().filter(|x| !group.contains(x)).collect()
            } else {
                group.to_vec()
            };
            let (s, v) = self.api(k).put("/api/v1/cluster/test-partition", json!({ "blocked": blocked }));
            assert_eq!(s, 200, "partition on node {k}: {v}");
        }
    }

    pub fn heal(&self) {
        for k in 1..=self.nodes.len() {
            if self.nodes[k - 1].is_some() {
                let (s, v) = self.api(k).put("/api/v1/cluster/test-partition", json!({ "blocked": [] }));
                assert_eq!(s, 200, "heal on node {k}: {v}");
            }
        }
    }

    pub fn kill(&mut self, k: usize) {
        if let Some(mut n) = self.nodes[k - 1].take() {
            n.kill();
        }
    }

    /// Starts a stopped node again on its data directory.
    pub fn restart(&mut self, k: usize) {
        assert!(self.nodes[k - 1].is_none(), "node {k} is running");
        let n = self.spawn(k);
        self.nodes[k - 1] = Some(n);
    }
}

/// A valid, unique agency code for test writes (`000.NN.NN.H31`).
pub fn agency_code(i: usize) -> String {
    format!("000.{:02}.{:02}.H31", (i / 100) % 100, i % 100)
}

/// Creates agency number `i` through `api`; returns the HTTP status and body.
pub fn create_agency(api: &Api, i: usize) -> (u16, Value) {
    api.post("/api/v1/agencies", json!({ "code": agency_code(i), "name": format!("Cơ quan thử nghiệm {i}") }))
}
