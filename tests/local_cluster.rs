//! `scripts/local-cluster N DIR`: starts an N-node cluster on loopback and writes
//! `DIR/cluster.json` with every node's URLs; `scripts/local-cluster stop DIR` stops it.
#![allow(clippy::disallowed_methods)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp");

#[test]
fn local_cluster_script_starts_three_voters_and_describes_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("c3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-cluster");
    let out = Command::new(script).args(["3"]).arg(&dir).env("LGSP_BIN", BIN).output().expect("run scripts/local-cluster");
    let stop = || {
        let _ = Command::new(script).arg("stop").arg(&dir).output();
    };
    if !out.status.success() {
        stop();
        panic!("local-cluster failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).expect("cluster.json")).expect("JSON");
    let nodes = info["nodes"].as_array().expect("nodes").clone();
    let http = reqwest::blocking::Client::new();
    let token = info["api_token"].as_str().expect("api_token").to_owned();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(nodes.len(), 3, "{info}");
        assert!(info["leader"].is_u64(), "{info}");
        for n in &nodes {
            assert!(n["role"] == "leader" || n["role"] == "voter", "{n}");
            for key in ["admin_url", "gateway_url", "metrics_url"] {
                assert!(n[key].as_str().is_some_and(|u| u.starts_with("http://127.0.0.1:")), "{key} of {n}");
            }
            // Every node answers its admin API with the first operator's token, and its status.
            let admin = n["admin_url"].as_str().expect("admin_url");
            let r = http.get(format!("{admin}/api/v1/cluster")).bearer_auth(&token).send().expect("admin API");
            assert_eq!(r.status(), 200);
            let metrics = n["metrics_url"].as_str().expect("metrics_url");
            let st: serde_json::Value = http.get(format!("{metrics}/status")).send().expect("status").json().expect("json");
            assert_eq!(st["status"], "up", "{st}");
        }
    }));
    stop();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    for n in &nodes {
        let pid = n["pid"].as_u64().expect("pid");
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid), "node pid {pid} still running after stop");
    }
}

fn is_zombie(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}
