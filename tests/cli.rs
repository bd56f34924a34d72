//! Command-line behaviour (SPEC §6): configuration errors exit 64 naming the key, refused
//! operations exit 1 with `error: CODE: message`, `--json` prints JSON, completions and the man
//! page are generated, and `lgsp login` prints a working token.
#![allow(clippy::disallowed_methods)] // std::thread::sleep is fine in a test driver.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Node, BIN};
use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `lgsp args...` with no node, killing it if it is still running after `limit` (a
/// configuration that is wrongly accepted would otherwise serve forever).
fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("LGSP_TOKEN")
        .env_remove("LGSP_ADMIN_URL")
        .env_remove("LGSP_DEV_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lgsp");
    // Drain the pipes while waiting: a large output would otherwise fill them and block.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lgsp {args:?} still running after {limit:?}; stderr:\n{}", String::from_utf8_lossy(&err.join().unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().expect("stdout"), stderr: err.join().expect("stderr") }
}

/// Writes `lgsp.toml` with loopback ephemeral listeners and the given extra text; returns its path.
fn config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("lgsp.toml");
    std::fs::write(&path, body.replace("DIR", &dir.display().to_string())).unwrap();
    path
}

/// `lgsp serve --config FILE` must refuse with exit 64, name `key` on stderr, and create nothing.
fn assert_config_refused(body: &str, key: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let path = config(tmp.path(), body);
    let o = run(&["serve", "--config", path.to_str().unwrap()], Duration::from_secs(20));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(64), "config error must exit 64 (EX_USAGE):\n{body}\nstderr: {err}");
    assert!(err.contains(key), "stderr does not name `{key}`:\n{err}");
    assert!(!tmp.path().join("data").exists(), "a refused configuration must not create the data directory");
}

const LISTEN: &str = "[listen]\ngateway = '127.0.0.1:0'\nadmin = '127.0.0.1:0'\nmetrics = '127.0.0.1:0'\ncluster = '127.0.0.1:0'\n";
const TLS: &str = "[tls]\ncert = 'DIR/server.crt'\nkey = 'DIR/server.key'\n";

#[test]
fn serve_refuses_unknown_keys_naming_them() {
    // Unknown key in a known section.
    assert_config_refused(&format!("[node]\ndata_dir = 'DIR/data'\ncolour = 'red'\n{LISTEN}{TLS}"), "colour");
    // Unknown key in [listen] (a typo of a real one).
    assert_config_refused(&format!("[node]\ndata_dir = 'DIR/data'\n[listen]\nadmni = '127.0.0.1:0'\n{TLS}"), "admni");
    // Unknown section.
    assert_config_refused(&format!("[node]\ndata_dir = 'DIR/data'\n{LISTEN}{TLS}[gatway]\nport = 1\n"), "gatway");
}

#[test]
fn serve_refuses_bad_values_naming_the_key() {
    assert_config_refused(&format!("[node]\ndata_dir = 'DIR/data'\n[listen]\nadmin = \"nope\"\n{TLS}"), "admin");
    assert_config_refused(
        &format!("[node]\ndata_dir = 'DIR/data'\n{LISTEN}{TLS}[admin]\nlockout_threshold = 0\n"),
        "admin.lockout_threshold",
    );
    assert_config_refused(
        &format!("[node]\ndata_dir = 'DIR/data'\n{LISTEN}{TLS}[admin]\nsession_ttl_seconds = 5\n"),
        "admin.session_ttl_seconds",
    );
    assert_config_refused(&format!("[node]\ndata_dir = 'DIR/data'\n{LISTEN}{TLS}[log]\nformat = 'xml'\n"), "format");
    assert_config_refused(
        &format!("[node]\ndata_dir = 'DIR/data'\n[listen]\nadmin = '127.0.0.1:9999'\ngateway = '127.0.0.1:9999'\n{TLS}"),
        "listen.",
    );
    // A missing required key.
    assert_config_refused(&format!("[node]\nname = 'n1'\n{LISTEN}{TLS}"), "data_dir");
    assert_config_refused(&format!("[node]\ndata_dir = 'DIR/data'\n{LISTEN}{TLS}[cluster]\nheartbeat_ms = 5\n"), "cluster.heartbeat_ms");
    assert_config_refused(
        &format!("[node]\ndata_dir = 'DIR/data'\n{LISTEN}{TLS}[cluster]\nheartbeat_ms = 100\nelection_timeout_ms = 150\n"),
        "cluster.election_timeout_ms",
    );
    assert_config_refused(&format!("[node]\ndata_dir = 'DIR/data'\n{LISTEN}{TLS}[cluster]\nadvertise = 'nohost'\n"), "cluster.advertise");
}

#[test]
fn serve_requires_tls_outside_dev() {
    // No [tls] at all: plain HTTP exists only in `lgsp dev`.
    assert_config_refused(&format!("[node]\ndata_dir = 'DIR/data'\n{LISTEN}"), "tls");
    // A [tls] section whose files do not exist.
    assert_config_refused(&format!("[node]\ndata_dir = 'DIR/data'\n{LISTEN}{TLS}"), "tls.cert");
    // A config file that cannot be read.
    let o = run(&["serve", "--config", "/nonexistent/lgsp.toml"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("/nonexistent/lgsp.toml"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let o = run(&["agency", "frobnicate"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(!stderr(&o).is_empty());
    let o = run(&["--help"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0));
    for cmd in ["serve", "dev", "agency", "system", "service", "subscription", "registry"] {
        assert!(stdout(&o).contains(cmd), "--help lacks {cmd}:\n{}", stdout(&o));
    }
    let o = run(&["--version"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")), "{}", stdout(&o));
}

#[test]
fn completions_and_man_page_are_generated() {
    let o = run(&["completions", "bash"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let bash = stdout(&o);
    assert!(bash.contains("complete") && bash.contains("lgsp"), "{bash}");
    for sub in ["registry", "agency", "subscription", "--json"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    for shell in ["zsh", "fish"] {
        let o = run(&["completions", shell], Duration::from_secs(20));
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains("registry"), "{shell} completion");
    }
    let o = run(&["man"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let man = stdout(&o);
    assert!(man.contains(".TH"), "not a roff man page:\n{man}");
    assert!(man.to_lowercase().contains("lgsp"), "{man}");
    assert!(man.contains("registry"), "the man page lists the commands");
}

#[test]
fn json_output_parses_and_tables_are_columns() {
    let node = Node::start();
    common::seed(&node.operator());

    for args in [&["--json", "agency", "list"][..], &["agency", "list", "--json"][..]] {
        let o = node.cli(args, None);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{args:?} is not JSON ({e}):\n{}", stdout(&o)));
        assert_eq!(v["total"], 2, "{v}");
        let codes: Vec<&str> = v["items"].as_array().unwrap().iter().map(|a| a["code"].as_str().unwrap()).collect();
        assert_eq!(codes, ["000.00.00.H31", "000.00.01.H31"]);
    }
    for args in [
        &["--json", "system", "list"][..],
        &["--json", "service", "list"][..],
        &["--json", "subscription", "list"][..],
        &["--json", "agency", "show", "000.00.00.H31"][..],
        &["--json", "audit", "admin"][..],
        &["--json", "user", "list"][..],
        &["--json", "token", "list"][..],
        &["--json", "credential", "list"][..],
        &["--json", "catalog", "list"][..],
        &["--json", "registry", "export"][..],
    ] {
        let o = node.cli(args, None);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let v: Result<Value, _> = serde_json::from_str(&stdout(&o));
        assert!(v.is_ok(), "{args:?} is not JSON:\n{}", stdout(&o));
    }

    // Without --json a list is aligned columns with a header.
    let o = node.cli(&["agency", "list"], None);
    assert!(o.status.success());
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("CODE"), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("000.00.01.H31")), "{text}");
}

#[test]
fn refused_operations_exit_1_with_code_and_message() {
    let node = Node::start();
    common::seed(&node.operator());
    let cases: [(&[&str], &str); 4] = [
        (&["agency", "show", "000.00.00.Z99"], "NOT_FOUND"),
        (&["agency", "create", "--code", "nope", "--name", "X"], "INVALID_INPUT"),
        (&["agency", "create", "--code", "000.00.00.H31", "--name", "Trùng"], ""),
        (&["subscription", "approve", "sub-0000000000000000"], "NOT_FOUND"),
    ];
    for (args, code) in cases {
        let o = node.cli(args, None);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?} must exit 1: {err}");
        let first = err.lines().next().unwrap_or("");
        let rest = first.strip_prefix("error: ").unwrap_or_else(|| panic!("{args:?}: stderr must start with `error: `: {err}"));
        let (got_code, message) = rest.split_once(": ").unwrap_or_else(|| panic!("{args:?}: no `CODE: message`: {err}"));
        assert!(
            !got_code.is_empty() && got_code.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
            "{args:?}: `{got_code}` is not a stable error code: {err}"
        );
        if !code.is_empty() {
            assert_eq!(got_code, code, "{err}");
        }
        assert!(!message.trim().is_empty(), "{args:?}: empty message");
        assert!(stdout(&o).is_empty(), "{args:?}: stdout: {}", stdout(&o));
    }
    // A role the API refuses: an auditor cannot write.
    let auditor = node.user("kiemtoan", "auditor", None);
    let token = auditor.token.clone().unwrap();
    let o = node.cli(&["--token", &token, "agency", "create", "--code", "000.00.05.H31", "--name", "Không được phép"], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error: FORBIDDEN: "), "{}", stderr(&o));
    let (s, _) = node.operator().get("/api/v1/agencies/000.00.05.H31");
    assert_eq!(s, 404, "the refused write did not happen");
}

#[test]
fn login_reads_the_password_from_stdin_and_prints_a_working_token() {
    let node = Node::start();
    let password = node.info["password"].as_str().unwrap().to_owned();
    let o = node.cli(&["login", "--username", "admin"], Some(&format!("{password}\n")));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let token = out.trim();
    assert_eq!(out.lines().count(), 1, "only the token on stdout: {out}");
    assert!(token.starts_with("lgsp."), "{token}");
    assert!(!stderr(&o).contains(token), "the token is printed once, on stdout");
    assert_ne!(token, node.info["api_token"].as_str().unwrap());

    // The token works against the API ...
    let (s, me) = node.api(token).get("/api/v1/auth/me");
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "operator");
    // ... and for the CLI.
    let o = node.cli(&["--token", token, "agency", "create", "--code", "000.00.00.H31", "--name", "UBND thành phố Hải Phòng"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, audit) = node.operator().get("/api/v1/audit/admin?action=create_agency");
    assert_eq!(audit["items"][0]["user"], "admin", "{audit}");

    // A wrong password is refused; no password at all is a clear error.
    let o = node.cli(&["login", "--username", "admin"], Some("Wrong-Passw0rd!\n"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: INVALID_CREDENTIALS: "), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    let o = node.cli(&["login", "--username", "admin"], Some(""));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("stdin"), "{}", stderr(&o));
    // The password never appears on the command line or in output.
    assert!(!stdout(&o).contains(&password) && !stderr(&o).contains(&password));
}
