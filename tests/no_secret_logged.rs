//! "Never log a secret", held at the most verbose level the node supports (`LGSP_LOG=trace`,
//! openraft included): two real nodes go through every flow that handles a secret (the dev
//! bootstrap password and API token, user passwords at creation, login, a failed login and a
//! change, an API token, a consumer secret and HMAC key, access tokens from `POST /token` by
//! Basic and by form, bearer and signed calls, revocation, a cluster join token, and the keys
//! a joining node receives), then every log they wrote is searched for each secret, raw and
//! base64-encoded. The only place a secret may appear is the banner `lgsp dev` prints on
//! purpose (SPEC §2: it "prints the admin credentials"), and only there.
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::{cluster::TUNING, Node, BIN};
use gateway_support::*;
use serde_json::json;

const VERBOSE: &str = "trace,openraft=trace";

/// The forms in which a secret could leak into a text log.
fn forms(secret: &str) -> Vec<(&'static str, String)> {
    vec![("raw", secret.to_owned()), ("base64", STANDARD.encode(secret)), ("base64url", URL_SAFE_NO_PAD.encode(secret))]
}

/// `lgsp dev`'s banner, which prints the first operator's credentials on purpose: cut out
/// exactly once, so a second copy anywhere (e.g. in a log line) is still found.
fn without_banner(log: &str) -> String {
    let start = log.find("LGSP dev appliance ready").expect("the dev banner");
    let end = log[start..].find("(also in ").map(|i| start + i).expect("the banner's last line");
    let end = log[end..].find('\n').map_or(log.len(), |i| end + i);
    format!("{}{}", &log[..start], &log[end..])
}

/// The key material a node keeps in its data directory, as the text that could be logged:
/// `secrets.key` (base64) and each base64 line of the PEM private keys.
fn key_material(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in ["secrets.key", "audit-signing.key", "cluster/ca.key", "cluster/node.key"] {
        let p = dir.join(f);
        let Ok(text) = std::fs::read_to_string(&p) else { continue };
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("-----") && l.len() >= 24) {
            out.push((format!("{} ({f})", dir.display()), line.to_owned()));
        }
    }
    out
}

#[test]
fn no_secret_reaches_the_log_at_the_most_verbose_level() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir1 = tmp.path().join("n1/data");
    let mut args1: Vec<&str> = vec!["--name", "node-1"];
    args1.extend(TUNING);
    let mut gw = Gw::on(Node::start_in_with(&dir1, &args1, &[("LGSP_LOG", VERBOSE)]));
    let op = gw.op.clone();
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut keep = |what: &str, v: &str| secrets.push((what.to_owned(), v.to_owned()));
    let password = gw.node.info["password"].as_str().expect("password").to_owned();
    let api_token = gw.node.info["api_token"].as_str().expect("api_token").to_owned();
    keep("bootstrap password", &password);
    keep("bootstrap API token", &api_token);

    // Passwords and sessions.
    let anon = gw.node.anonymous();
    let (s, b) = anon.post("/api/v1/auth/login", json!({"username": "admin", "password": password}));
    assert_eq!(s, 200, "{b}");
    keep("session token", b["token"].as_str().expect("token"));
    let user_pw = format!("Str0ng!{}", random_hex(12));
    let (s, b) = op.post("/api/v1/users", json!({"username": "auditor1", "role": "auditor", "password": user_pw}));
    assert_eq!(s, 201, "{b}");
    keep("user password", &user_pw);
    let wrong_pw = format!("Wr0ng!{}", random_hex(12));
    let (s, _) = anon.post("/api/v1/auth/login", json!({"username": "auditor1", "password": wrong_pw}));
    assert_eq!(s, 401);
    keep("mistyped password", &wrong_pw);
    let (s, b) = anon.post("/api/v1/auth/login", json!({"username": "auditor1", "password": user_pw}));
    assert_eq!(s, 200, "{b}");
    let session = b["token"].as_str().expect("token").to_owned();
    keep("user session token", &session);
    let new_pw = format!("N3w!{}", random_hex(12));
    let user = gw.node.api(&session);
    let (s, b) = user.post("/api/v1/users/auditor1/password", json!({"current_password": user_pw, "new_password": new_pw}));
    assert!(s < 300, "{s} {b}");
    keep("changed password", &new_pw);
    let (s, b) = op.post("/api/v1/tokens", json!({"name": "automation"}));
    assert_eq!(s, 201, "{b}");
    keep("API token", b["token"].as_str().expect("token"));

    // Consumer credentials, access tokens, calls, revocation.
    let provider = Provider::start(200, &random_hex(16));
    gw.set_upstreams("dancu", "v1", &provider.url(), &provider.url());
    let cred = gw.credential("stp-hotich", "production", true);
    keep("consumer secret", &cred.consumer_secret);
    keep("consumer key:secret", &format!("{}:{}", cred.consumer_key, cred.consumer_secret));
    let hmac = cred.hmac_secret.clone().expect("hmac");
    keep("HMAC key (base64)", &STANDARD.encode(&hmac));
    keep("HMAC key (hex)", &hex::encode(&hmac));
    let basic_token = gw.token(&cred);
    keep("access token (Basic)", &basic_token);
    let form = format!("grant_type=client_credentials&client_id={}&client_secret={}", cred.consumer_key, cred.consumer_secret);
    let r = gw.send("POST", "/token", &[h("content-type", "application/x-www-form-urlencoded")], Some(form.into_bytes()));
    assert_eq!(r.status, 200, "{}", r.text());
    let form_token = r.json()["access_token"].as_str().expect("access_token").to_owned();
    keep("access token (form)", &form_token);
    assert_eq!(gw.bearer(&basic_token, "GET", "/dancu/v1/congdan/1", None).status, 200);
    assert_eq!(gw.bearer(&form_token, "POST", "/dancu/v1/congdan", Some(b"{\"a\":1}".to_vec())).status, 200);
    assert_eq!(gw.signed(&cred.hmac_signer(), "GET", "/dancu/v1/congdan/2", None).status, 200);
    assert_eq!(gw.bearer("not-a-token", "GET", "/dancu/v1/congdan/3", None).status, 401);
    let r = gw.send(
        "POST",
        "/revoke",
        &[basic(&cred.consumer_key, &cred.consumer_secret), h("content-type", "application/x-www-form-urlencoded")],
        Some(format!("token={form_token}").into_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.bearer(&form_token, "GET", "/dancu/v1/congdan/4", None).status, 401);

    // A second node joins with a one-time token and receives the cluster's keys.
    let (s, b) = op.post("/api/v1/cluster/join-tokens", json!({}));
    assert_eq!(s, 201, "{b}");
    let join = b["token"].as_str().expect("token").to_owned();
    keep("join token", &join);
    let join_secret = join.split('.').nth(2).expect("lgspjoin1.<id>.<secret>.<fingerprint>").to_owned();
    keep("join token secret", &join_secret);
    let dir2 = tmp.path().join("n2/data");
    std::fs::create_dir_all(&dir2).expect("dir");
    let peer = gw.node.info["cluster_addr"].as_str().expect("cluster_addr").to_owned();
    let out = Command::new(BIN)
        .args(["cluster", "join", "--name", "node-2", "--peer", &peer, "--token", &join, "--data-dir"])
        .arg(&dir2)
        .env("LGSP_LOG", VERBOSE)
        .stdin(Stdio::null())
        .output()
        .expect("lgsp cluster join");
    assert!(out.status.success(), "join: {}", String::from_utf8_lossy(&out.stderr));
    let join_output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut args2: Vec<&str> = vec!["--name", "node-2"];
    args2.extend(TUNING);
    let mut node2 = Node::start_in_with(&dir2, &args2, &[("LGSP_LOG", VERBOSE)]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (s, v) = op.get("/api/v1/cluster");
        let voters = v["nodes"].as_array().map_or(0, |n| n.iter().filter(|x| x["role"] == "voter" || x["role"] == "leader").count());
        if s == 200 && voters == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 did not become a voter: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A replicated write, so entries travel over the new link at trace level.
    let (s, b) = op.post("/api/v1/tokens", json!({"name": "after-join"}));
    assert_eq!(s, 201, "{b}");
    keep("API token after join", b["token"].as_str().expect("token"));

    node2.stop();
    gw.node.stop();

    let log1 = std::fs::read_to_string(&gw.node.log).expect("node 1 log");
    let log2 = std::fs::read_to_string(&node2.log).expect("node 2 log");
    // The check means something only if the logs are really verbose and the banner really
    // holds the credentials it is allowed to hold.
    for (name, log) in [("node 1", &log1), ("node 2", &log2)] {
        assert!(log.contains("TRACE") && log.contains("DEBUG"), "{name} did not log at trace level");
    }
    assert!(log1.contains(&password) && log1.contains(&api_token), "the banner prints the bootstrap credentials");
    let logs: Vec<(String, String)> = vec![
        ("node 1 log (banner removed)".into(), without_banner(&log1)),
        ("node 2 log".into(), log2),
        ("cluster join output".into(), join_output),
    ];
    for d in [&dir1, &dir2] {
        secrets.extend(key_material(d));
    }
    assert!(secrets.iter().any(|(w, _)| w.contains("ca.key")), "the cluster CA key was found on disk");

    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        for (form, needle) in forms(secret) {
            for (name, log) in &logs {
                if log.contains(&needle) {
                    leaks.push(format!("{what} ({form}) in the {name}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secrets were logged:\n{}", leaks.join("\n"));
    let bytes: usize = logs.iter().map(|(_, l)| l.len()).sum();
    eprintln!("searched {bytes} bytes of logs for {} secrets", secrets.len());
}
