//! The node under a service manager (SPEC §1), black-box against the real binary: the
//! sd_notify protocol on a real datagram socket (`READY=1` only once the listeners answer,
//! `WATCHDOG=1` while healthy and never from a stopped process, `RELOADING=1`/`READY=1` around
//! SIGHUP, `STOPPING=1` and exit 0 on SIGTERM), SIGHUP reloading the TLS certificate without
//! dropping open connections and surviving bad files, the shipped unit's hardening score from
//! the real `systemd-analyze`, and logs reaching a real `systemd-journald` (started in a private
//! mount namespace, so it needs root and `unshare`) with upper-case structured fields.
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::{free_tcp_port, sha256_hex, Pki, Serve};
use common::BIN;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A spawned process, killed (SIGKILL) if the test ends while it still runs.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(cmd.spawn().expect("spawn"))
}

/// The service manager's end of `NOTIFY_SOCKET`: every datagram the node sends, in order.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        Notify { sock, path, seen: Vec::new() }
    }

    /// The next datagram, if one arrives within `within`.
    fn recv(&mut self, within: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(within)).expect("timeout");
        let mut buf = vec![0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(m.clone());
                Some(m)
            }
            Err(_) => None,
        }
    }

    /// Waits (up to 60 s) for a datagram carrying `line`; returns it.
    #[track_caller]
    fn wait_for(&mut self, line: &str, child: &mut Child, log: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(m) = self.recv(Duration::from_millis(200)) {
                if has(&m, line) {
                    return m;
                }
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("lgsp exited with {status} before sending {line}; got {:?}\n{}", self.seen, read(log));
            }
            assert!(Instant::now() < deadline, "no {line} within 60 s; got {:?}\n{}", self.seen, read(log));
        }
    }

    /// Everything already queued on the socket.
    fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.sock.set_nonblocking(true).expect("nonblocking");
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).expect("blocking");
        self.seen.extend(out.iter().cloned());
        out
    }
}

/// Whether a notify datagram has `line` (e.g. `READY=1`) as one of its lines.
fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("kill").success();
    assert!(ok, "kill -{sig} {pid}");
}

/// The process state letter from `/proc/PID/stat` (`T` once stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[track_caller]
fn wait_exit(child: &mut Child, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "lgsp did not exit within 60 s of SIGTERM:\n{}", read(log));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SHA-256 of the certificate the server at `url` presented on the connection that answered.
#[track_caller]
fn served_cert(client: &reqwest::blocking::Client, url: &str) -> String {
    let resp = client.get(url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    sha256_hex(info.peer_certificate().expect("peer certificate"))
}

/// The lines of a `format = "json"` log; every line must be one JSON object.
#[track_caller]
fn json_lines(log: &Path) -> Vec<Value> {
    read(log)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect()
}

/// Waits for a JSON log line after the first `after` lines that satisfies `pred`.
#[track_caller]
fn wait_log(log: &Path, after: usize, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = json_lines(log).into_iter().skip(after).find(|v| pred(v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "no log line for {what}:\n{}", read(log));
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// sd_notify, watchdog, signals

#[test]
fn notify_ready_watchdog_reload_and_stop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut notify = Notify::bind(tmp.path());
    let data = tmp.path().join("data");
    let log = tmp.path().join("lgsp.log");
    let mut child = spawn(
        Command::new(BIN)
            .args(["dev", "--ephemeral-ports", "--data-dir"])
            .arg(&data)
            .env("NOTIFY_SOCKET", &notify.path)
            // Pings every 0.5 s; each probe must answer within 0.25 s.
            .env("WATCHDOG_USEC", "1000000")
            .env_remove("WATCHDOG_PID")
            .env("LGSP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    let pid = child.id();

    // READY=1: at that very moment every listener must already answer.
    let ready = notify.wait_for("READY=1", &mut child, &log);
    let info: Value =
        serde_json::from_slice(&std::fs::read(data.join("dev.json")).expect("dev.json is written before READY=1")).expect("dev.json");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let url = |k: &str| info[k].as_str().expect(k).to_owned();
    let status = http.get(format!("{}/status", url("metrics_url"))).send().expect("metrics listener answers at READY=1");
    assert_eq!(status.status().as_u16(), 200);
    let openapi = http.get(format!("{}/api/v1/openapi.json", url("admin_url"))).send().expect("admin listener answers at READY=1");
    assert_eq!(openapi.status().as_u16(), 200);
    let gw = http.get(format!("{}/nothing/v1/x", url("gateway_url"))).send().expect("gateway answers at READY=1");
    assert_eq!(gw.status().as_u16(), 401);
    assert!(field(&ready, "STATUS").is_some_and(|s| s.contains("serving") && s.contains(&url("gateway_url"))), "{ready}");
    assert!(notify.seen.iter().all(|m| !has(m, "WATCHDOG=1")) && notify.seen.len() == 1, "READY=1 is the first message: {:?}", notify.seen);

    // The watchdog pings while the runtime and storage answer.
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1", &mut child, &log);
    }

    // A stopped process cannot ping: systemd would restart it after WatchdogSec.
    signal(pid, "STOP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while proc_state(pid) != Some('T') {
        assert!(Instant::now() < deadline, "lgsp did not stop on SIGSTOP");
        std::thread::sleep(Duration::from_millis(10));
    }
    notify.drain();
    // Three whole watchdog intervals: a running process would have pinged six times. Nothing
    // can arrive while it is stopped, however slow the machine.
    let silent = notify.recv(Duration::from_secs(3));
    assert_eq!(silent, None, "a stopped process sent a notification");
    signal(pid, "CONT");
    notify.wait_for("WATCHDOG=1", &mut child, &log);
    notify.wait_for("WATCHDOG=1", &mut child, &log);

    // SIGHUP in dev mode: nothing to reload, but the process lives and says so.
    signal(pid, "HUP");
    let reloading = notify.wait_for("RELOADING=1", &mut child, &log);
    assert!(field(&reloading, "MONOTONIC_USEC").is_some_and(|v| v.parse::<u64>().is_ok()), "{reloading}");
    notify.wait_for("READY=1", &mut child, &log);
    assert!(child.try_wait().expect("wait").is_none(), "SIGHUP must not kill lgsp dev:\n{}", read(&log));
    assert!(read(&log).contains("dev mode has no configuration file to reload"), "{}", read(&log));
    let status = http.get(format!("{}/status", url("metrics_url"))).send().expect("still serving after SIGHUP");
    assert_eq!(status.status().as_u16(), 200);

    // SIGTERM: STOPPING=1 when the drain starts, then a clean exit.
    signal(pid, "TERM");
    let stopping = notify.wait_for("STOPPING=1", &mut child, &log);
    assert!(field(&stopping, "STATUS").is_some_and(|s| s.contains("draining")), "{stopping}");
    let exit = wait_exit(&mut child, &log);
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM:\n{}", read(&log));
    assert!(read(&log).contains("stopped"));
}

#[test]
fn sighup_reloads_certificate_and_level_and_survives_bad_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new();
    let a = pki.leaf("cert-a");
    let b = pki.leaf("cert-b");
    let node = Serve::prepare(tmp.path(), "sd-test", &a, "[log]\nformat = 'json'\nlevel = 'info'");
    let mut notify = Notify::bind(tmp.path());
    let log = tmp.path().join("lgsp.log");
    let mut child = spawn(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&node.config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env_remove("LGSP_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    let pid = child.id();
    notify.wait_for("READY=1", &mut child, &log);
    let gw_url = format!("{}/nothing/v1/x", node.gateway_url());
    let admin_url = format!("{}/api/v1/openapi.json", node.admin_url());

    // Before: certificate A on both listeners; per-transaction events are below `info`.
    let kept = pki.client();
    assert_eq!(served_cert(&kept, &gw_url), a.sha256);
    assert_eq!(served_cert(&pki.client(), &admin_url), a.sha256);
    let r = kept.get(&gw_url).send().expect("gateway");
    let first_txn = r.headers()["x-transaction-id"].to_str().expect("txn").to_owned();

    // A certificate with the wrong key: refused, A stays.
    std::fs::write(&node.cert, &b.cert_pem).expect("write");
    let mark = json_lines(&log).len();
    signal(pid, "HUP");
    notify.wait_for("RELOADING=1", &mut child, &log);
    let ready = notify.wait_for("READY=1", &mut child, &log);
    assert!(field(&ready, "STATUS").is_some_and(|s| s.contains("reload failed for tls")), "{ready}");
    let err =
        wait_log(&log, mark, "the refused key pair", |v| v["level"] == "ERROR" && v["message"].as_str().is_some_and(|m| m.contains("TLS")));
    assert!(err["error"].as_str().is_some_and(|e| e.contains("does not belong")), "{err}");
    assert_eq!(served_cert(&pki.client(), &gw_url), a.sha256, "a refused pair must not replace the served one");

    // The matching pair B, a more verbose level and a listener move (needs a restart).
    node.install(&b);
    let moved = free_tcp_port();
    node.write_config(moved, "[log]\nformat = 'json'\nlevel = 'info,lgsp::transaction=debug'");
    let mark = json_lines(&log).len();
    signal(pid, "HUP");
    notify.wait_for("RELOADING=1", &mut child, &log);
    let ready = notify.wait_for("READY=1", &mut child, &log);
    assert!(field(&ready, "STATUS").is_some_and(|s| !s.contains("failed")), "{ready}");
    let done = wait_log(&log, mark, "the reload summary", |v| v["message"] == "configuration reloaded");
    assert_eq!(done["applied"], "log.level, tls", "{done}");
    assert_eq!(done["restart_needed"], "listen.admin", "{done}");
    let warn = wait_log(&log, mark, "the restart warning", |v| v["level"] == "WARN" && v["settings"] == "listen.admin");
    assert!(warn["message"].as_str().is_some_and(|m| m.contains("restart")), "{warn}");
    let swapped =
        wait_log(&log, mark, "the new certificate", |v| v["message"].as_str().is_some_and(|m| m.contains("TLS certificate reloaded")));
    assert_eq!(swapped["sha256"], b.sha256.as_str());

    // New connections get B on both listeners (admin still on its old port); the connection
    // opened before the reload is still served, with the certificate it was opened with.
    assert_eq!(served_cert(&pki.client(), &gw_url), b.sha256);
    assert_eq!(served_cert(&pki.client(), &admin_url), b.sha256);
    assert_eq!(served_cert(&kept, &gw_url), a.sha256, "the open connection was dropped by the reload");

    // The new level is in force: a refused call now logs its transaction event.
    let r = pki.client().get(&gw_url).send().expect("gateway");
    let txn = r.headers()["x-transaction-id"].to_str().expect("txn").to_owned();
    let ev = wait_log(&log, mark, "the transaction event", |v| v["transaction_id"] == txn.as_str());
    assert_eq!(ev["target"], "lgsp::transaction");
    assert_eq!(ev["status"], 401);
    assert_eq!(ev["outcome"], "CREDENTIALS_REQUIRED");
    assert!(
        json_lines(&log).iter().all(|v| v["transaction_id"] != first_txn.as_str()),
        "a transaction before the level change was logged at the old level `info`"
    );

    // A file that does not parse: an error that names the problem; nothing changes.
    std::fs::write(&node.config, read(&node.config).replacen("[node]\n", "[node]\ncolour = 'red'\n", 1)).expect("write");
    let mark = json_lines(&log).len();
    signal(pid, "HUP");
    notify.wait_for("RELOADING=1", &mut child, &log);
    let ready = notify.wait_for("READY=1", &mut child, &log);
    assert!(field(&ready, "STATUS").is_some_and(|s| s.contains("last reload failed")), "{ready}");
    let bad = wait_log(&log, mark, "the parse error", |v| {
        v["level"] == "ERROR" && v["message"].as_str().is_some_and(|m| m.contains("reload failed"))
    });
    assert!(bad["error"].as_str().is_some_and(|e| e.contains("colour")), "{bad}");
    assert!(child.try_wait().expect("wait").is_none(), "a bad config must not stop the node:\n{}", read(&log));
    assert_eq!(served_cert(&pki.client(), &gw_url), b.sha256);

    // A file that parses but does not validate.
    node.write_config(moved, "[log]\nformat = 'json'\nlevel = 'info,lgsp::transaction=debug'\n[gateway]\nretries = 99");
    let mark = json_lines(&log).len();
    signal(pid, "HUP");
    notify.wait_for("READY=1", &mut child, &log);
    let bad = wait_log(&log, mark, "the validation error", |v| v["error"].as_str().is_some_and(|e| e.contains("gateway.retries")));
    assert_eq!(bad["level"], "ERROR");
    assert!(child.try_wait().expect("wait").is_none());

    signal(pid, "TERM");
    notify.wait_for("STOPPING=1", &mut child, &log);
    assert_eq!(wait_exit(&mut child, &log).code(), Some(0), "{}", read(&log));
    // Every line of a `json` log is one JSON object (json_lines panics otherwise).
    assert!(json_lines(&log).iter().any(|v| v["message"] == "stopped"));
}

// ---------------------------------------------------------------------------------------------
// The unit file

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/lgsp.service")
}

#[test]
fn unit_exposure_is_at_most_2() {
    let unit = unit_path();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (apt-get install systemd; scripts/test does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze security failed: {stderr}\n{stdout}");
    // Directives it does not know or cannot parse are warnings, not failures: refuse them.
    for bad in ["Unknown", "Failed to parse", "Invalid", "ignoring"] {
        assert!(!stderr.contains(bad), "systemd-analyze does not accept the unit: {stderr}");
    }
    let line = stdout.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no overall level:\n{stdout}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{stdout}");
}

#[test]
fn unit_runs_the_packaged_layout_and_fits_the_drain() {
    let text = std::fs::read_to_string(unit_path()).expect("systemd/lgsp.service");
    let get = |key: &str| -> Vec<String> {
        text.lines().filter_map(|l| l.trim().strip_prefix(key).and_then(|r| r.strip_prefix('='))).map(str::to_owned).collect()
    };
    let one = |key: &str| -> String {
        let v = get(key);
        assert_eq!(v.len(), 1, "{key}= must be set once: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("ExecStart"), "/usr/bin/lgsp serve --config /etc/lgsp/lgsp.toml");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("User"), "lgsp");
    assert_eq!(one("StateDirectory"), "lgsp");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX", "TCP, UDP (QUIC), journald and sd_notify");
    assert_eq!(one("CapabilityBoundingSet"), "", "every port is ≥ 1024: no capability is needed");
    let secs = |v: String| v.trim_end_matches('s').parse::<u64>().unwrap_or_else(|_| panic!("seconds: {v}"));
    let watchdog = secs(one("WatchdogSec"));
    assert!((10..=120).contains(&watchdog), "WatchdogSec={watchdog}");
    // The drain: 10 s for requests in flight + audit flush and Raft stop + 5 s runtime
    // shut-down; systemd must not SIGKILL before that.
    assert!(secs(one("TimeoutStopSec")) >= 30, "TimeoutStopSec too short for the drain");
    assert!(one("LimitNOFILE").parse::<u64>().is_ok_and(|n| n >= 65536));
}

// ---------------------------------------------------------------------------------------------
// journald

/// Runs `argv` in a private mount namespace where `/run` is a fresh tmpfs and, unless
/// `journald` is false, a real `systemd-journald` listens on `/run/systemd/journal/socket`
/// and writes its journal under `out/log`. The host's journal and sockets are never touched.
const NAMESPACE: &str = r#"set -eu
out="$1"; journald="$2"; shift 2
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/journal /run/log
mount --bind "$out/log" /run/log
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
if [ "$journald" = 1 ]; then
  # journald speaks sd_notify too: it must not answer on the node's NOTIFY_SOCKET.
  env -u NOTIFY_SOCKET -u WATCHDOG_USEC -u JOURNAL_STREAM /lib/systemd/systemd-journald </dev/null >"$out/journald.out" 2>&1 &
  echo $! >"$out/journald.pid"
  i=0
  while [ ! -S /run/systemd/journal/socket ]; do
    i=$((i+1)); [ "$i" -lt 600 ] || { echo "systemd-journald did not start" >&2; exit 70; }
    sleep 0.1
  done
fi
exec "$@"
"#;

fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the journald tests start a real systemd-journald in a private mount namespace: run them as root (scripts/test does)"
    );
}

fn in_namespace(out: &Path, journald: bool) -> Command {
    std::fs::create_dir_all(out.join("log")).expect("log dir");
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", NAMESPACE, "sh"]).arg(out).arg(if journald { "1" } else { "0" });
    c
}

/// `DEVICE:INODE` of a file, as systemd puts it in `JOURNAL_STREAM` for the stream it connects.
fn journal_stream_of(f: &Path) -> String {
    let m = std::fs::metadata(f).expect("stat");
    format!("{}:{}", m.dev(), m.ino())
}

/// Stops the namespace's journald (by the PID it recorded) when the test ends, even on failure.
struct Journald(PathBuf);

impl Drop for Journald {
    fn drop(&mut self) {
        stop_journald(&self.0);
    }
}

fn stop_journald(out: &Path) {
    let file = out.join("journald.pid");
    let Ok(pid) = read(&file).trim().parse::<u32>() else { return };
    // Forget the PID first: once journald is gone its PID may be reused by another process.
    let _ = std::fs::remove_file(&file);
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while proc_state(pid).is_some_and(|s| s != 'Z') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every entry journald wrote under `out/log`, as `journalctl -o json` shows them.
fn journal_entries(out: &Path) -> Vec<Value> {
    let mut files = Vec::new();
    let mut stack = vec![out.join("log")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "journal") {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty(), "journald wrote no journal file: {}", read(&out.join("journald.out")));
    let mut cmd = Command::new("journalctl");
    cmd.args(["-o", "json", "--no-pager"]);
    for f in &files {
        cmd.arg(format!("--file={}", f.display()));
    }
    let o = cmd.output().expect("journalctl");
    assert!(o.status.success(), "journalctl: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn logs_reach_journald_with_upper_case_fields() {
    require_root();
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("ns");
    let pki = Pki::new();
    // `auto`: journald because stderr is the stream JOURNAL_STREAM names, as under systemd.
    // Every transaction is logged (successes at debug), to see both kinds in the journal.
    let node =
        Serve::prepare(tmp.path(), "sd-test", &pki.leaf("journald"), "[log]\nformat = 'auto'\nlevel = 'info,lgsp::transaction=debug'");
    let mut notify = Notify::bind(tmp.path());
    let stderr = tmp.path().join("stderr");
    std::fs::write(&stderr, "").expect("stderr file");
    let _journald = Journald(out.clone());
    let mut child = spawn(
        in_namespace(&out, true)
            .arg(BIN)
            .args(["serve", "--config"])
            .arg(&node.config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("JOURNAL_STREAM", journal_stream_of(&stderr))
            .env_remove("LGSP_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().append(true).open(&stderr).expect("stderr")),
    );
    let pid = child.id();
    notify.wait_for("READY=1", &mut child, &stderr);

    // A call whose provider is unreachable: the operator must see it (warning).
    let http = pki.client();
    let op = node.operator(&http);
    common::seed(&op);
    let (s, cred) = op.post("/api/v1/credentials", json!({"system": "stp-hotich", "environment": "production"}));
    assert_eq!(s, 201, "{cred}");
    let (key, secret) = (cred["consumer_key"].as_str().expect("key"), cred["consumer_secret"].as_str().expect("secret"));
    let tok = gateway_support::eventually("the gateway knows the credential", || {
        let r = gateway_support::token_request_to(&http, &node.gateway_url(), key, secret);
        (r.status == 200).then(|| r.json()["access_token"].as_str().map(str::to_owned)).flatten()
    });
    let r = http.get(format!("{}/dancu/v1/congdan/001203000123", node.gateway_url())).bearer_auth(&tok).send().expect("gateway");
    assert_eq!(r.status().as_u16(), 502);
    let txn = r.headers()["x-transaction-id"].to_str().expect("txn").to_owned();

    // A call the provider answers: a debug-level event with the provider's share of the time.
    let provider = gateway_support::Provider::start(200, "journald-test");
    let (s, b) =
        op.patch("/api/v1/services/dancu/versions/v1", json!({"upstream": {"production": provider.url(), "test": provider.url()}}));
    assert_eq!(s, 200, "{b}");
    let ok_txn = gateway_support::eventually("the gateway uses the new upstream", || {
        let r = http.get(format!("{}/dancu/v1/congdan", node.gateway_url())).bearer_auth(&tok).send().expect("gateway");
        (r.status().as_u16() == 200).then(|| r.headers()["x-transaction-id"].to_str().expect("txn").to_owned())
    });

    signal(pid, "TERM");
    notify.wait_for("STOPPING=1", &mut child, &stderr);
    assert_eq!(wait_exit(&mut child, &stderr).code(), Some(0));
    stop_journald(&out);

    let entries = journal_entries(&out);
    let ours: Vec<&Value> = entries.iter().filter(|e| e["SYSLOG_IDENTIFIER"] == "lgsp").collect();
    let find = |what: &str, f: &dyn Fn(&Value) -> bool| -> Value {
        (*ours.iter().find(|e| f(e)).unwrap_or_else(|| panic!("no journal entry for {what}: {ours:#?}"))).clone()
    };
    let ready = find("ready", &|e| e["MESSAGE"] == "ready");
    assert_eq!(ready["PRIORITY"], "6", "info is Informational: {ready}");
    assert_eq!(ready["_PID"], pid.to_string(), "sent by the node itself: {ready}");
    assert_eq!(ready["GATEWAY"], node.gateway_url().replace("localhost", "127.0.0.1"));
    assert!(ready["STARTUP_MS"].as_str().is_some_and(|s| s.parse::<u64>().is_ok()));
    assert_eq!(ready["TARGET"], "lgsp::app");
    assert!(ready["CODE_FILE"].as_str().is_some_and(|f| f.ends_with("app.rs")));

    let t = find("the failed transaction", &|e| e["TRANSACTION_ID"] == txn.as_str() && e["MESSAGE"] == "transaction");
    assert_eq!(t["PRIORITY"], "4", "a provider failure is a warning: {t}");
    assert_eq!(t["TARGET"], "lgsp::transaction");
    assert_eq!(t["AGENCY"], gateway_support::CONSUMER_AGENCY);
    assert_eq!(t["SYSTEM"], "stp-hotich");
    assert_eq!(t["SERVICE"], "dancu");
    assert_eq!(t["VERSION"], "v1");
    assert_eq!(t["ENVIRONMENT"], "production");
    assert_eq!(t["METHOD"], "GET");
    assert_eq!(t["AUTH"], "oauth2");
    assert_eq!(t["STATUS"], "502");
    assert_eq!(t["OUTCOME"], "UPSTREAM_UNREACHABLE");
    assert!(t["DURATION_MS"].as_str().is_some_and(|s| s.parse::<f64>().is_ok()), "{t}");
    let ok = find("the proxied transaction", &|e| e["TRANSACTION_ID"] == ok_txn.as_str());
    assert_eq!(ok["PRIORITY"], "7", "a successful transaction is debug: {ok}");
    assert_eq!(ok["MESSAGE"], "transaction");
    assert_eq!(ok["STATUS"], "200");
    assert_eq!(ok["OUTCOME"], "OK");
    assert_eq!(ok["AGENCY"], gateway_support::CONSUMER_AGENCY);
    assert_eq!(ok["SERVICE"], "dancu");
    assert!(ok["UPSTREAM_MS"].as_str().is_some_and(|s| s.parse::<f64>().is_ok()), "{ok}");
    let journal = serde_json::to_string(&ours).expect("json");
    assert!(!journal.contains("001203000123"), "the path (a citizen id) must not be logged");
    for secret in [secret, tok.as_str(), op.token.as_deref().expect("token")] {
        assert!(!journal.contains(secret), "a secret reached the journal");
    }
    find("the drain", &|e| e["MESSAGE"] == "stopped");

    // Nothing went to stderr: the journal was the only output.
    let err = read(&stderr);
    assert!(!err.contains("ready") && !err.contains("transaction"), "logs duplicated on stderr:\n{err}");
}

#[test]
fn journald_unreachable_falls_back_to_stderr() {
    require_root();
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("ns");
    let mut notify = Notify::bind(tmp.path());
    let stderr = tmp.path().join("stderr");
    std::fs::write(&stderr, "").expect("stderr file");
    // Under "systemd" (JOURNAL_STREAM names stderr) but no journald listening.
    let mut child = spawn(
        in_namespace(&out, false)
            .arg(BIN)
            .args(["dev", "--ephemeral-ports", "--data-dir"])
            .arg(tmp.path().join("data"))
            .env("NOTIFY_SOCKET", &notify.path)
            .env("JOURNAL_STREAM", journal_stream_of(&stderr))
            .env("LGSP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().append(true).open(&stderr).expect("stderr")),
    );
    notify.wait_for("READY=1", &mut child, &stderr);
    let text = read(&stderr);
    assert!(text.contains("journald is unreachable; logging to stderr instead"), "{text}");
    assert!(text.lines().any(|l| l.contains(" ready ") || l.ends_with(" ready") || l.contains("ready admin=")), "{text}");
    signal(child.id(), "TERM");
    assert_eq!(wait_exit(&mut child, &stderr).code(), Some(0));
}
