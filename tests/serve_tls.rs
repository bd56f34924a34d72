//! `lgsp serve --config FILE`: TLS on the admin and gateway listeners, first-start credentials
//! written to `initial-admin.json` (0600), plain HTTP refused by the TLS listener.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::serve::{Pki, Serve};
use common::BIN;

#[test]
fn serve_speaks_tls_and_writes_initial_credentials() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new();
    let dir = tmp.path();
    let node = Serve::write(dir, "tls-test", &pki.leaf("tls-test"), "");
    let (admin, gateway) = (node.admin, node.gateway);
    // Before `cluster init`, serve refuses and says what to do.
    let out = Command::new(BIN).args(["serve", "--config"]).arg(dir.join("lgsp.toml")).output().expect("serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("lgsp cluster init"), "{err}");
    let out = Command::new(BIN).args(["cluster", "init", "--config"]).arg(dir.join("lgsp.toml")).output().expect("init");
    assert!(out.status.success(), "cluster init: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("lgsp cluster token create"));
    // A second init on the same data directory is refused.
    let out = Command::new(BIN).args(["cluster", "init", "--config"]).arg(dir.join("lgsp.toml")).output().expect("init");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already belongs to cluster"));
    let log = std::fs::File::create(dir.join("log")).expect("log");
    let mut child =
        Command::new(BIN).args(["serve", "--config"]).arg(dir.join("lgsp.toml")).stdout(Stdio::null()).stderr(log).spawn().expect("spawn");

    let creds = dir.join("data/initial-admin.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(dir.join("log")).unwrap_or_default().contains("ready") {
        assert!(Instant::now() < deadline, "not ready: {}", std::fs::read_to_string(dir.join("log")).unwrap_or_default());
        assert!(child.try_wait().expect("wait").is_none(), "exited: {}", std::fs::read_to_string(dir.join("log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&creds).expect("initial-admin.json").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "initial credentials must be private");
    }
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).expect("read")).expect("json");
    let token = info["api_token"].as_str().expect("token");
    let log_text = std::fs::read_to_string(dir.join("log")).expect("log");
    assert!(!log_text.contains(token), "the token must never be logged");
    assert!(!log_text.contains(info["password"].as_str().expect("pw")), "the password must never be logged");

    let https = pki.client();
    let me: serde_json::Value =
        https.get(format!("https://localhost:{admin}/api/v1/auth/me")).bearer_auth(token).send().expect("https").json().expect("json");
    assert_eq!(me["role"], "operator");
    let gw = https.get(format!("https://localhost:{gateway}/nothing/v1/x")).send().expect("gateway https");
    assert_eq!(gw.status().as_u16(), 401, "unauthenticated callers learn nothing about routes");
    assert!(gw.headers().contains_key("x-transaction-id"));

    // Plain HTTP on the TLS listener gets no admin answer.
    let plain = reqwest::blocking::Client::new().get(format!("http://127.0.0.1:{admin}/api/v1/auth/me")).bearer_auth(token).send();
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true), "plain HTTP must not be served");

    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "did not drain on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::fs::read_to_string(dir.join("log")).expect("log").contains("stopped"));
}
