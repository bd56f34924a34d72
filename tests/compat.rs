//! Compatibility with third-party client libraries from PyPI (black box): a real `lgsp dev` node
//! and a real loopback provider; the consumer side is Python —
//! `requests-oauthlib`/`oauthlib` and `Authlib` for OAuth 2.0 client credentials (Basic, form
//! secret, RS256 `private_key_jwt`, RFC 7009 revocation), pyauth's `http-message-signatures`
//! and `requests-http-signature` for RFC 9421 with all five algorithms and RFC 9530
//! `Content-Digest`. The scripts live in `tests/compat/`, the pinned libraries in
//! `tests/compat/requirements.txt`, installed by `scripts/compat-setup` (called by `scripts/test`)
//! into `target/compat-venv`. Without that virtualenv these tests fail: they never skip.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{json, Value};

use common::upstream::Upstream;
use common::Node;

const CONSUMER_SYSTEM: &str = "stp-hotich";
const CONSUMER_AGENCY: &str = "000.00.01.H31";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv's interpreter (`LGSP_COMPAT_VENV` overrides `target/compat-venv`).
fn python() -> PathBuf {
    let venv = std::env::var_os("LGSP_COMPAT_VENV").map(PathBuf::from).unwrap_or_else(|| repo().join("target/compat-venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} does not exist: the PyPI client libraries of the compatibility tests are not installed.\n\
         Run `scripts/test` (the whole suite, as CI does) or `scripts/compat-setup` (only the virtualenv), then rerun.",
        py.display()
    );
    py
}

fn run_py(args: &[&str]) -> Output {
    Command::new(python())
        .args(args)
        .current_dir(repo())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the compat virtualenv's python")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A node with the seeded registry, the service pointed at a real provider, and a production
/// credential of `stp-hotich` with an HMAC key and one public key per algorithm. Returns the
/// configuration the scripts read (tests/compat/_compat.py).
struct Setup {
    node: Node,
    upstream: Upstream,
    config: Value,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let upstream = Upstream::start();
    let node = Node::start();
    let op = node.operator();
    common::seed(&op);
    let (s, b) = op.patch(
        "/api/v1/services/dancu/versions/v1",
        json!({"upstream": {"production": format!("{}/api", upstream.url()), "test": format!("{}/test", upstream.url())}}),
    );
    assert_eq!(s, 200, "point dancu v1 at the provider: {b}");

    let (s, cred) = op.post("/api/v1/credentials", json!({"system": CONSUMER_SYSTEM, "environment": "production", "hmac": true}));
    assert_eq!(s, 201, "issue a credential: {cred}");
    let id = cred["id"].as_str().expect("credential id");

    let out = run_py(&["tests/compat/keygen.py"]);
    assert!(out.status.success(), "keygen.py failed:\n{}", text(&out.stderr));
    let keys: Value = serde_json::from_slice(&out.stdout).expect("keygen.py prints JSON");
    let keys = keys["keys"].as_array().expect("keys").clone();
    assert_eq!(keys.len(), 4, "one key per public-key algorithm");
    let public: Vec<Value> = keys.iter().map(|k| json!({"key_id": k["key_id"], "alg": k["alg"], "pem": k["public_key_pem"]})).collect();
    let (s, b) = op.put(&format!("/api/v1/credentials/{id}/public-keys"), json!({ "public_keys": public }));
    assert_eq!(s, 200, "register the consumer's public keys: {b}");

    let rsa = keys.iter().find(|k| k["alg"] == "rsa-v1_5-sha256").expect("an RS256 key");
    let mut sig_keys: Vec<Value> =
        keys.iter().map(|k| json!({"alg": k["alg"], "key_id": k["key_id"], "private_key_pem": k["private_key_pem"]})).collect();
    sig_keys.push(json!({"alg": "hmac-sha256", "key_id": cred["hmac"]["key_id"], "secret_base64": cred["hmac"]["secret_base64"]}));
    let config = json!({
        "gateway_url": node.info["gateway_url"],
        "service_path": "/dancu/v1/citizens",
        "upstream_path": "/api/citizens",
        "consumer_system": CONSUMER_SYSTEM,
        "consumer_agency": CONSUMER_AGENCY,
        "oauth2": {
            "consumer_key": cred["consumer_key"],
            "consumer_secret": cred["consumer_secret"],
            "jwt_key_id": rsa["key_id"],
            "jwt_private_key_pem": rsa["private_key_pem"],
        },
        "httpsig": {"keys": sig_keys},
    });
    Setup { node, upstream, config, dir: tempfile::tempdir().expect("tempdir") }
}

/// Runs one client script on the configuration; panics with its output unless it succeeds.
fn run_script(s: &Setup, script: &str) -> String {
    let cfg = s.dir.path().join("compat.json");
    std::fs::write(&cfg, serde_json::to_vec_pretty(&s.config).expect("config")).expect("write config");
    let out = run_py(&[&format!("tests/compat/{script}"), cfg.to_str().expect("utf-8 path")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "tests/compat/{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- gateway log ({})\n{}",
        out.status,
        s.node.log.display(),
        std::fs::read_to_string(&s.node.log).unwrap_or_default().lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(stdout.contains("checks passed"), "tests/compat/{script} did not report its checks:\n{stdout}");
    stdout
}

#[test]
fn oauth2_client_libraries() {
    let s = setup();
    let before = s.upstream.count();
    let out = run_script(&s, "oauth2_client.py");
    println!("{out}");
    // Six token flows, each a GET and a POST that reached the provider.
    assert!(s.upstream.count() >= before + 12, "the provider saw {} requests", s.upstream.count() - before);
}

#[test]
fn rfc9421_client_libraries() {
    let s = setup();
    let before = s.upstream.count();
    let out = run_script(&s, "httpsig_client.py");
    println!("{out}");
    // Five algorithms × (GET + POST), plus the @authority/@path/@query, sha-512 and first-replay calls.
    assert!(s.upstream.count() >= before + 13, "the provider saw {} requests", s.upstream.count() - before);
    // The provider never saw a request whose body failed its Content-Digest as complete.
    let seen = s.upstream.seen.lock().expect("seen").clone();
    let tampered = seen.iter().filter(|r| r.method == "POST" && r.body_len > 0).filter(|r| {
        r.headers.iter().any(|(n, _)| n == "content-digest")
            && !r.headers.iter().any(|(n, v)| n == "content-digest" && v.contains(&sha256_b64(&r.body_sha256)))
    });
    assert_eq!(tampered.count(), 0, "a body that does not match its Content-Digest was passed on whole");
}

/// `sha-256` member value of a Content-Digest from the provider's hex SHA-256 of the body.
fn sha256_b64(hex_digest: &str) -> String {
    use base64::Engine as _;
    let bytes = hex::decode(hex_digest).expect("hex");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
