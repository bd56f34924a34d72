//! Black-box harness: starts the real `lgsp` binary in dev mode on ephemeral loopback ports,
//! waits for its ready line, and talks to it over real HTTP.
#![allow(dead_code, clippy::disallowed_methods)]

pub mod cluster;
pub mod compat;
pub mod serve;
pub mod upstream;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_lgsp");

/// Polls `f` every 100 ms until it returns `Some`, failing the test with `what` after `secs`
/// seconds (tests wait for outcomes this way, never on timings).
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running dev appliance. Killed on drop.
pub struct Node {
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub info: Value,
    pub log: PathBuf,
    pub http: reqwest::blocking::Client,
    /// Extra `lgsp dev` arguments, kept for restarts.
    extra: Vec<String>,
    /// Extra environment variables, kept for restarts.
    env: Vec<(String, String)>,
}

impl Node {
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// Starts with extra `lgsp dev` arguments (e.g. `--upstream-ca FILE`).
    pub fn start_with(args: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let extra = args.iter().map(|a| a.to_string()).collect();
        let mut n =
            Node { child: None, _tmp: Some(tmp), dir, info: Value::Null, log: PathBuf::new(), http: client(), extra, env: Vec::new() };
        n.spawn();
        n
    }

    /// Starts on an existing data directory (not removed on drop).
    pub fn start_in(dir: &Path) -> Node {
        Node::start_in_with(dir, &[], &[])
    }

    /// Starts on an existing data directory with extra `lgsp dev` arguments and environment.
    pub fn start_in_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
        let mut n = Node {
            child: None,
            _tmp: None,
            dir: dir.to_owned(),
            info: Value::Null,
            log: PathBuf::new(),
            http: client(),
            extra: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        n.spawn();
        n
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("data dir");
        let n = std::fs::read_dir(self.dir.parent().unwrap_or(&self.dir)).map(|d| d.count()).unwrap_or(0);
        self.log = self.dir.parent().unwrap_or(&self.dir).join(format!("lgsp-{n}.log"));
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new(BIN)
            .args(["dev", "--data-dir"])
            .arg(&self.dir)
            .arg("--ephemeral-ports")
            .args(&self.extra)
            // The node's extra environment may override the log level (LGSP_LOG).
            .env("LGSP_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lgsp");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("LGSP dev appliance ready") {
                break;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("lgsp dev exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "lgsp dev did not become ready:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let bytes = std::fs::read(self.dir.join("dev.json")).expect("dev.json");
        self.info = serde_json::from_slice(&bytes).expect("dev.json is JSON");
    }

    /// Stops with SIGTERM (graceful), waits, and starts again on the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills with SIGKILL (crash), no drain.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn admin_url(&self) -> String {
        self.info["admin_url"].as_str().expect("admin_url").to_owned()
    }

    /// The bootstrap operator's API.
    pub fn operator(&self) -> Api {
        self.api(self.info["api_token"].as_str().expect("api_token"))
    }

    pub fn api(&self, token: &str) -> Api {
        Api { base: self.admin_url(), token: Some(token.to_owned()), http: self.http.clone() }
    }

    pub fn anonymous(&self) -> Api {
        Api { base: self.admin_url(), token: None, http: self.http.clone() }
    }

    /// Creates a user with `role` (and agency) and returns an API for it, logged in.
    pub fn user(&self, username: &str, role: &str, agency: Option<&str>) -> Api {
        let op = self.operator();
        let password = "Str0ng!Passw0rd";
        let (s, b) =
            op.post("/api/v1/users", serde_json::json!({"username": username, "role": role, "agency": agency, "password": password}));
        assert_eq!(s, 201, "create user {username}: {b}");
        let (s, b) = self.anonymous().post("/api/v1/auth/login", serde_json::json!({"username": username, "password": password}));
        assert_eq!(s, 200, "login {username}: {b}");
        self.api(b["token"].as_str().expect("token"))
    }

    /// Runs the CLI against this node (`LGSP_DEV_DIR`), optionally feeding stdin.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        cli_in(&self.dir, args, stdin)
    }
}

pub fn cli_in(dev_dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(BIN)
        .args(args)
        .env("LGSP_DEV_DIR", dev_dir)
        .env_remove("LGSP_TOKEN")
        .env_remove("LGSP_ADMIN_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lgsp cli");
    if let Some(input) = stdin {
        c.stdin.as_mut().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    drop(c.stdin.take());
    c.wait_with_output().expect("cli output")
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().expect("http client")
}

/// A caller of the admin API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::blocking::Client,
}

impl Api {
    /// Sends a request; returns the status and the JSON body (Null when empty, String when not JSON).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(m, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().expect("admin API reachable");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    /// Sends raw bytes with a content type (for malformed-body tests).
    pub fn raw(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(m, format!("{}{path}", self.base)).header("content-type", content_type).body(body.to_vec());
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().expect("admin API reachable");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().expect("body");
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }
    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(&body))
    }
    pub fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PATCH", path, Some(&body))
    }
    pub fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PUT", path, Some(&body))
    }
    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.call("DELETE", path, None)
    }
}

/// A small registry: two agencies, a provider and a consumer system, a published service with
/// an active subscription. Returns the subscription id.
pub fn seed(op: &Api) -> String {
    use serde_json::json;
    let ok = |r: (u16, Value)| {
        assert!(r.0 < 300, "seed step failed: {} {}", r.0, r.1);
        r.1
    };
    ok(op.post("/api/v1/agencies", json!({"code": "000.00.00.H31", "name": "UBND thành phố Hải Phòng"})));
    ok(op.post("/api/v1/agencies", json!({"code": "000.00.01.H31", "name": "Sở Tư pháp Hải Phòng"})));
    ok(op.post(
        "/api/v1/systems",
        json!({"id": "hp-dancu", "agency": "000.00.00.H31", "name": "CSDL dân cư", "security": {"kind": "level", "level": 3}}),
    ));
    ok(op.post(
        "/api/v1/systems",
        json!({"id": "stp-hotich", "agency": "000.00.01.H31", "name": "Hộ tịch", "security": {"kind": "level", "level": 2}}),
    ));
    ok(op.post("/api/v1/services", json!({"context": "dancu", "provider_system": "hp-dancu", "name": "Tra cứu dân cư"})));
    ok(op.post(
        "/api/v1/services/dancu/versions",
        json!({"version": "v1", "upstream": {"production": "http://127.0.0.1:9/api", "test": "http://127.0.0.1:9/test"}}),
    ));
    ok(op.post("/api/v1/services/dancu/versions/v1/publish", json!({})));
    let sub = ok(op.post("/api/v1/subscriptions", json!({"consumer_system": "stp-hotich", "service": "dancu", "version": "v1", "environment": "production", "purpose": "đăng ký hộ tịch"})));
    let id = sub["id"].as_str().expect("id").to_owned();
    ok(op.post(&format!("/api/v1/subscriptions/{id}/provider-approve"), json!({})));
    ok(op.post(&format!("/api/v1/subscriptions/{id}/approve"), json!({})));
    id
}
