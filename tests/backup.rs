//! Backups with the real binary: `lgsp backup create|list|verify` against a running dev node,
//! the admin API's role check and audit line, and damaged files (a flipped byte in a part, in
//! the manifest, a truncated file) refused offline with an error naming the damaged part.
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::Node;
use serde_json::{json, Value};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Creates a backup through the CLI and returns its JSON answer.
fn create(node: &Node, reason: &str) -> Value {
    let o = node.cli(&["--json", "backup", "create", "--reason", reason], None);
    assert!(o.status.success(), "backup create failed: {}{}", stdout(&o), stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("backup create is not JSON ({e}): {}", stdout(&o)))
}

/// The byte range of a member's data in a tar file (ustar headers, as lgsp writes them).
fn member(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let mut pos = 0;
    while pos + 512 <= bytes.len() {
        let h = &bytes[pos..pos + 512];
        let n = String::from_utf8_lossy(&h[..100]).trim_end_matches('\0').to_owned();
        let size_text = String::from_utf8_lossy(&h[124..136]).trim_matches(|c| c == '\0' || c == ' ').to_owned();
        let size = usize::from_str_radix(&size_text, 8).expect("size");
        if n == name {
            return pos + 512..pos + 512 + size;
        }
        pos += 512 + size.div_ceil(512) * 512;
    }
    panic!("no member {name}");
}

/// Polls `f` every 100 ms for up to 60 s (scheduled work on a loaded machine) until it yields.
#[track_caller]
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn verify(node: &Node, file: &Path) -> Output {
    node.cli(&["backup", "verify", file.to_str().expect("utf-8 path")], None)
}

/// Starts the node restored into `dir` (with the backed-up node's dev.json) and checks that an
/// access token issued before the backup gets the answer it got then.
fn assert_restored_gateway_answers_like_before(node: &Node, dir: &Path, token: &str, before: u16) {
    std::fs::copy(node.dir.join("dev.json"), dir.join("dev.json")).expect("dev.json");
    let restored = Node::start_in(dir);
    let url = restored.info["gateway_url"].as_str().expect("gateway_url").to_owned();
    let http = gateway_support::gateway_client();
    let after = poll("the restored gateway serves", || {
        let r = gateway_support::send_to(
            &http,
            &url,
            "GET",
            "/dancu/v1/citizens/1",
            &[gateway_support::h("authorization", &format!("Bearer {token}"))],
            None,
        );
        (r.status != 503).then_some(r)
    });
    assert_eq!(after.status, before, "{}", after.text());
}

fn damaged_copy(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write damaged copy");
    p
}

#[test]
fn create_list_verify_and_damaged_files_refused() {
    let node = Node::start();
    let op = node.operator();
    common::seed(&op);

    let b = create(&node, "before the November upgrade");
    let file = PathBuf::from(b["file"].as_str().expect("file"));
    assert!(file.is_file(), "{b}");
    assert!(file.starts_with(node.dir.join("backups")), "{b}");
    let id = b["id"].as_str().expect("id").to_owned();
    assert!(b["log_index"].as_u64().expect("index") > 0, "{b}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup holds password hashes: owner only");
    }

    // A second one, then the list shows both, newest first, with their reasons.
    let b2 = create(&node, "second");
    assert!(b2["log_index"].as_u64() > b["log_index"].as_u64(), "{b2}");
    let o = node.cli(&["--json", "backup", "list"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let l: Value = serde_json::from_str(&stdout(&o)).expect("list JSON");
    let items = l["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{l}");
    assert_eq!(items[0]["id"], b2["id"]);
    assert_eq!(items[1]["id"], json!(id));
    assert_eq!(items[1]["reason"], "before the November upgrade");
    let o = node.cli(&["backup", "list"], None);
    assert!(stdout(&o).contains("before the November upgrade"), "{}", stdout(&o));

    // The request is in the admin audit trail with its reason.
    let (s, audit) = op.get("/api/v1/audit/admin?limit=20");
    assert_eq!(s, 200, "{audit}");
    let text = audit.to_string();
    assert!(text.contains("backup.create") && text.contains(&id) && text.contains("before the November upgrade"), "{audit}");

    // Only operators create backups.
    let auditor = node.user("kiemtoan", "auditor", None);
    let (s, body) = auditor.post("/api/v1/backups", json!({"reason": "not allowed"}));
    assert_eq!(s, 403, "{body}");
    let (s, body) = op.post("/api/v1/backups", json!({"reason": "  "}));
    assert_eq!(s, 400, "{body}");

    // Verify: OK, with the registry digest; the file holds the seeded registry and no
    // plaintext password.
    let o = verify(&node, &file);
    assert!(o.status.success(), "verify failed: {}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("OK"), "{}", stdout(&o));
    let bytes = std::fs::read(&file).expect("read backup");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("hp-dancu") && text.contains("dancu"), "the registry part holds the registry");
    let password = node.info["password"].as_str().expect("password");
    assert!(!text.contains(password), "a plaintext password is in the backup");
    assert!(!member(&bytes, "config/lgsp.toml").is_empty());

    let tmp = tempfile::tempdir().expect("tempdir");
    // A flipped byte inside the registry snapshot: refused, naming the part.
    let r = member(&bytes, "registry.json");
    let mut bad = bytes.clone();
    bad[r.start + r.len() / 2] ^= 0x20;
    let o = verify(&node, &damaged_copy(tmp.path(), "flipped.lgspbak", &bad));
    assert!(!o.status.success(), "a flipped byte was accepted");
    let err = stderr(&o);
    assert!(err.contains("registry.json") && err.contains("SHA-256") && err.contains("damaged"), "{err}");

    // A changed manifest (its checksum member no longer matches).
    let r = member(&bytes, "manifest.json");
    let mut bad = bytes.clone();
    let at = r.start + String::from_utf8_lossy(&bytes[r.clone()]).find("log_index").expect("log_index") + 13;
    bad[at] ^= 0x01;
    let o = verify(&node, &damaged_copy(tmp.path(), "manifest.lgspbak", &bad));
    assert!(!o.status.success(), "a changed manifest was accepted");
    assert!(stderr(&o).contains("manifest.json"), "{}", stderr(&o));

    // Truncated in the middle of a part, and cut just before the end.
    for (name, len) in [("half.lgspbak", bytes.len() / 2), ("short.lgspbak", bytes.len() - 600)] {
        let o = verify(&node, &damaged_copy(tmp.path(), name, &bytes[..len]));
        assert!(!o.status.success(), "{name} was accepted");
        assert!(stderr(&o).contains("truncated"), "{name}: {}", stderr(&o));
    }

    // Not a backup at all.
    let o = verify(&node, &damaged_copy(tmp.path(), "other.lgspbak", b"hello"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not an lgsp backup"), "{}", stderr(&o));

    // The good file still verifies (the checks read, never write).
    assert!(verify(&node, &file).status.success());
}

/// The restore drill: back up a node that has served traffic, restore the file into a fresh
/// directory as a new cluster, and prove the registry, the admin audit trail and the
/// transaction audit chain are identical, and that a token issued before the backup works.
#[test]
fn restore_drill_reproduces_registry_and_audit_and_refuses_a_used_dir() {
    let gw = gateway_support::Gw::on(Node::start());
    let cred = gw.credential("stp-hotich", "production", false);
    let token = gw.token(&cred);
    let before_call = gw.bearer(&token, "GET", "/dancu/v1/citizens/1", None);
    assert_ne!(before_call.status, 401, "the token works before the backup: {}", before_call.text());
    gw.audit(&before_call.txn());
    let node = &gw.node;

    let b = create(node, "restore drill");
    let file = PathBuf::from(b["file"].as_str().expect("file"));
    let (s, export_before) = gw.op.get("/api/v1/registry/export");
    assert_eq!(s, 200);
    let (s, admin_before) = gw.op.get("/api/v1/audit/admin?limit=1000");
    assert_eq!(s, 200);

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("restored");
    let secrets = node.dir.join("secrets.key");
    let audit_key = node.dir.join("audit-signing.key");
    let restore = |force: bool| {
        let mut args = vec![
            "--json",
            "backup",
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--secrets-key",
            secrets.to_str().expect("utf-8"),
            "--audit-key",
            audit_key.to_str().expect("utf-8"),
        ];
        if force {
            args.push("--force");
        }
        node.cli(&args, None)
    };
    let o = restore(false);
    assert!(o.status.success(), "restore failed: {}{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).expect("restore JSON");
    let o = verify(node, &file);
    let v: Value = serde_json::from_str(&stdout(&node.cli(&["--json", "backup", "verify", file.to_str().expect("utf-8")], None)))
        .expect("verify JSON");
    assert!(o.status.success());
    assert_eq!(r["registry_digest"], v["registry_digest"], "the restored registry's digest is the backup's");
    assert_eq!(r["log_index"], b["log_index"]);

    // The audit chain: the restored segments are byte for byte the original's (up to the
    // backup), and verify on their own.
    for e in std::fs::read_dir(dir.join("audit")).expect("audit dir").flatten() {
        let copy = std::fs::read(e.path()).expect("read copy");
        let original = std::fs::read(node.dir.join("audit").join(e.file_name())).expect("the original segment");
        assert!(original.starts_with(&copy) && !copy.is_empty(), "{:?} differs from the original", e.file_name());
    }
    let o = node.cli(&["audit", "verify", "--dir", dir.join("audit").to_str().expect("utf-8")], None);
    assert!(o.status.success(), "the restored audit log does not verify: {}{}", stdout(&o), stderr(&o));

    // A directory with data is refused unless --force, which moves it aside.
    let o = restore(false);
    assert!(!o.status.success(), "restore onto a used directory was accepted");
    assert!(stderr(&o).contains("not empty") && stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = restore(true);
    assert!(o.status.success(), "forced restore failed: {}{}", stdout(&o), stderr(&o));
    let r2: Value = serde_json::from_str(&stdout(&o)).expect("restore JSON");
    let aside = PathBuf::from(r2["moved_aside"].as_str().expect("moved_aside"));
    assert!(aside.join("registry.redb").is_file(), "the old contents were kept in {}", aside.display());
    assert_ne!(r2["cluster_id"], r["cluster_id"], "each restore forms a new cluster");

    // Start the restored node (the harness reads the old dev.json for its credentials).
    std::fs::copy(node.dir.join("dev.json"), dir.join("dev.json")).expect("copy dev.json");
    let restored = Node::start_in(&dir);
    let op2 = restored.operator();
    let (s, export_after) = op2.get("/api/v1/registry/export");
    assert_eq!(s, 200, "the API token issued before the backup works on the restored node: {export_after}");
    assert_eq!(export_after, export_before, "the restored registry differs");
    let (s, admin_after) = op2.get("/api/v1/audit/admin?limit=1000");
    assert_eq!(s, 200);
    let older = |v: &Value| -> Vec<Value> {
        v["items"].as_array().expect("items").iter().filter(|e| e["index"].as_u64() <= b["log_index"].as_u64()).cloned().collect()
    };
    assert_eq!(older(&admin_after), older(&admin_before), "the admin audit trail up to the backup differs");

    // The gateway of the restored node accepts the access token issued before the backup (same
    // secrets key) and still refuses a forged one.
    let url = restored.info["gateway_url"].as_str().expect("gateway_url").to_owned();
    let http = gateway_support::gateway_client();
    let auth = |t: &str| vec![gateway_support::h("authorization", &format!("Bearer {t}"))];
    let after_call = gateway_support::eventually("the restored gateway serves", || {
        let r = gateway_support::send_to(&http, &url, "GET", "/dancu/v1/citizens/1", &auth(&token), None);
        (r.status != 503).then_some(r)
    });
    assert_eq!(after_call.status, before_call.status, "the old token is not served alike: {}", after_call.text());
    let forged = gateway_support::send_to(&http, &url, "GET", "/dancu/v1/citizens/1", &auth("forged.token.value"), None);
    assert_eq!(forged.status, 401, "{}", forged.text());

    // Its audit log continues the restored chain and still verifies.
    let o = restored.cli(&["audit", "verify"], None);
    assert!(o.status.success(), "the restored node's audit log does not verify: {}{}", stdout(&o), stderr(&o));
}

/// `[backup]` schedule, retention and post-backup hook: the leader asks for a backup every
/// interval, the node keeps only `keep` files, and the hook receives each new file's path.
#[test]
fn scheduled_backups_are_pruned_and_handed_to_the_hook() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let offsite = tmp.path().join("offsite");
    std::fs::create_dir_all(&offsite).expect("offsite dir");
    let hook = tmp.path().join("hook.sh");
    std::fs::write(&hook, format!("#!/bin/sh\nset -e\ncp \"$1\" '{}/'\n", offsite.display())).expect("hook");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let ops = tmp.path().join("ops.toml");
    std::fs::write(&ops, format!("[backup]\ninterval = \"2s\"\nkeep = 2\npost_hook = '{}'\n", hook.display())).expect("ops config");
    let node = Node::start_with(&["--ops-config", ops.to_str().expect("utf-8")]);

    let count = |dir: &Path| {
        std::fs::read_dir(dir).map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "lgspbak")).count()).unwrap_or(0)
    };
    poll("three scheduled backups reach the hook", || (count(&offsite) >= 3).then_some(()));
    poll("retention keeps two files", || {
        let o = node.cli(&["--json", "backup", "list"], None);
        let v: Value = serde_json::from_str(&stdout(&o)).ok()?;
        let items = v["items"].as_array()?.clone();
        (items.len() == 2).then_some(items)
    })
    .iter()
    .for_each(|it| assert_eq!(it["reason"], "scheduled", "{it}"));
    // The metrics say so too (Prometheus alerts on a stale last-success time).
    let metrics_url = format!("{}/metrics", node.info["metrics_url"].as_str().expect("metrics_url"));
    let text = reqwest::blocking::get(&metrics_url).expect("metrics").text().expect("metrics text");
    let value = |name: &str| -> f64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    assert!(value("lgsp_backups_total{result=\"ok\"}") >= 3.0, "{text}");
    assert!(value("lgsp_backup_last_success_timestamp_seconds") > 1.7e9, "{text}");
    assert_eq!(value("lgsp_backup_hook_failures_total"), 0.0, "{text}");
    for e in std::fs::read_dir(&offsite).expect("offsite").flatten() {
        let o = verify(&node, &e.path());
        assert!(o.status.success(), "{:?}: {}", e.path(), stderr(&o));
    }
}

/// On a 3-node cluster under concurrent writes, one `backup create` makes every node write its
/// own file at the same log index, and the three registry parts are identical (same digest).
#[test]
fn every_node_backs_up_the_same_state_at_the_same_index() {
    let c = common::cluster::Cluster::start(3, &[]);
    let writer_api = c.api(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_w = stop.clone();
    let writes = std::thread::spawn(move || {
        let mut i = 0;
        while !stop_w.load(std::sync::atomic::Ordering::Relaxed) && i < 400 {
            let _ = common::cluster::create_agency(&writer_api, 100 + i);
            i += 1;
        }
        i
    });
    // Let some writes flow, then back up through a node that is (usually) not the first.
    poll("writes under way", || {
        let (s, v) = c.api(2).get("/api/v1/agencies");
        (s == 200 && v["total"].as_u64().unwrap_or(0) >= 5).then_some(())
    });
    let o = common::cluster::cli_on(&c, 2, &["--json", "backup", "create", "--reason", "cluster backup"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let b: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let id = b["id"].as_str().expect("id").to_owned();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made = writes.join().expect("writer thread");
    assert!(made >= 5, "only {made} writes");

    let mut seen = Vec::new();
    for k in 1..=3 {
        let dir = c.node(k).dir.join("backups");
        let file = poll(&format!("node {k} writes its backup file"), || {
            std::fs::read_dir(&dir).ok()?.flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(&format!("-{id}.lgspbak")))
        });
        let o = common::cli_in(&c.node(k).dir, &["--json", "backup", "verify", file.to_str().expect("utf-8")], None);
        assert!(o.status.success(), "node {k}: {}", stderr(&o));
        let v: Value = serde_json::from_str(&stdout(&o)).expect("verify JSON");
        assert_eq!(v["node_id"].as_u64(), Some(k as u64), "{v}");
        seen.push((v["log_index"].clone(), v["registry_digest"].clone()));
    }
    assert_eq!(seen[0].0, b["log_index"]);
    assert!(seen.iter().all(|s| *s == seen[0]), "nodes backed up different states: {seen:?}");
}

/// With `[backup] recipients`, the node's keys travel in the backup encrypted with age
/// (`keys.age`), never in plaintext; restore with the identity file brings them back, so an
/// access token issued before the backup works without the operator's separate key copies.
#[test]
fn keys_sealed_to_recipients_restore_with_the_identity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let identity = tmp.path().join("backup-identity.txt");
    let o = common::cli_in(tmp.path(), &["backup", "keygen", "--output", identity.to_str().expect("utf-8")], None);
    assert!(o.status.success(), "keygen: {}", stderr(&o));
    let recipient = stdout(&o).trim().to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let o = common::cli_in(tmp.path(), &["backup", "keygen", "--output", identity.to_str().expect("utf-8")], None);
    assert!(!o.status.success(), "an identity file was overwritten");
    let ops = tmp.path().join("ops.toml");
    std::fs::write(&ops, format!("[backup]\nrecipients = [\"{recipient}\"]\n")).expect("ops");

    let gw = gateway_support::Gw::on(Node::start_with(&["--ops-config", ops.to_str().expect("utf-8")]));
    let cred = gw.credential("stp-hotich", "production", false);
    let token = gw.token(&cred);
    let before = gw.bearer(&token, "GET", "/dancu/v1/citizens/1", None);
    assert_ne!(before.status, 401);
    let b = create(&gw.node, "sealed keys");
    let file = PathBuf::from(b["file"].as_str().expect("file"));
    let bytes = std::fs::read(&file).expect("read");
    assert!(!member(&bytes, "keys.age").is_empty());
    let secrets = std::fs::read(gw.node.dir.join("secrets.key")).expect("secrets.key");
    let secret_text = String::from_utf8_lossy(&secrets).trim().to_owned();
    assert!(!String::from_utf8_lossy(&bytes).contains(&secret_text), "the secrets key is in the backup in plaintext");
    assert!(verify(&gw.node, &file).status.success());

    // A wrong identity is refused with a clear error before anything is written.
    let other = tmp.path().join("other-identity.txt");
    assert!(common::cli_in(tmp.path(), &["backup", "keygen", "--output", other.to_str().expect("utf-8")], None).status.success());
    let dir = tmp.path().join("restored");
    let restore = |id: &Path, dir: &Path| {
        common::cli_in(
            tmp.path(),
            &[
                "backup",
                "restore",
                file.to_str().expect("utf-8"),
                "--data-dir",
                dir.to_str().expect("utf-8"),
                "--identity",
                id.to_str().expect("utf-8"),
            ],
            None,
        )
    };
    let o = restore(&other, &tmp.path().join("wrong"));
    assert!(!o.status.success(), "a wrong identity was accepted");
    assert!(stderr(&o).contains("cannot be decrypted"), "{}", stderr(&o));
    assert!(!tmp.path().join("wrong").exists(), "a refused restore created its directory");

    let o = restore(&identity, &dir);
    assert!(o.status.success(), "restore: {}{}", stdout(&o), stderr(&o));
    assert_eq!(std::fs::read(dir.join("secrets.key")).expect("restored key"), secrets);
    assert_eq!(
        std::fs::read(dir.join("audit-signing.key")).expect("restored audit key"),
        std::fs::read(gw.node.dir.join("audit-signing.key")).expect("audit key")
    );
    assert_restored_gateway_answers_like_before(&gw.node, &dir, &token, before.status);
}

#[test]
fn a_whole_backup_encrypted_to_recipients_is_checked_listed_and_restored_with_the_identity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keygen = |name: &str| {
        let path = tmp.path().join(name);
        let o = common::cli_in(tmp.path(), &["backup", "keygen", "--output", path.to_str().expect("utf-8")], None);
        assert!(o.status.success(), "keygen: {}", stderr(&o));
        (path, stdout(&o).trim().to_owned())
    };
    let (identity, recipient) = keygen("identity.txt");
    let (other, _) = keygen("other.txt");

    // encrypt without a recipient is a configuration error, said before the node starts.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[backup]\nencrypt = true\n").expect("bad ops");
    let o = std::process::Command::new(common::BIN)
        .args(["dev", "--data-dir", tmp.path().join("never").to_str().expect("utf-8"), "--ops-config", bad.to_str().expect("utf-8")])
        .output()
        .expect("run lgsp dev");
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("backup.encrypt") && stderr(&o).contains("lgsp backup keygen"), "{}", stderr(&o));

    let ops = tmp.path().join("ops.toml");
    std::fs::write(&ops, format!("[backup]\nrecipients = [\"{recipient}\"]\nencrypt = true\n")).expect("ops");
    let gw = gateway_support::Gw::on(Node::start_with(&["--ops-config", ops.to_str().expect("utf-8")]));
    let cred = gw.credential("stp-hotich", "production", false);
    let token = gw.token(&cred);
    let before = gw.bearer(&token, "GET", "/dancu/v1/citizens/1", None);
    let b = create(&gw.node, "encrypted");
    let file = PathBuf::from(b["file"].as_str().expect("file"));
    let bytes = std::fs::read(&file).expect("read");
    // The registry (agencies, systems, services), the audit log and the configuration are not
    // readable in the file; only the outer manifest is.
    let text = String::from_utf8_lossy(&bytes);
    for clear in ["stp-hotich", "dancu", "registry.json", "audit-", "[backup]"] {
        assert!(!text.contains(clear), "{clear:?} is readable in the encrypted backup");
    }
    assert!(!member(&bytes, "backup.lgspbak.age").is_empty());

    // Listed like any other backup.
    let o = gw.node.cli(&["--json", "backup", "list"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(b["id"].as_str().expect("id")), "{}", stdout(&o));

    // Without the identity: the container and the encrypted part's SHA-256, and it says so.
    let o = verify(&gw.node, &file);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("pass --identity"), "{}", stdout(&o));
    let mut flipped = bytes.clone();
    let r = member(&bytes, "backup.lgspbak.age");
    flipped[r.start + r.len() / 2] ^= 0x20;
    let o = verify(&gw.node, &damaged_copy(tmp.path(), "flipped.lgspbak", &flipped));
    assert!(!o.status.success() && stderr(&o).contains("backup.lgspbak.age"), "{}", stderr(&o));

    // With it: every part inside, and the registry digest.
    let with = |id: &Path| {
        gw.node.cli(&["--json", "backup", "verify", file.to_str().expect("utf-8"), "--identity", id.to_str().expect("utf-8")], None)
    };
    let o = with(&identity);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("verify json");
    assert_eq!((v["encrypted"].as_bool(), v["contents_checked"].as_bool()), (Some(true), Some(true)), "{v}");
    let digest = v["registry_digest"].as_str().expect("digest").to_owned();
    assert!(v["parts"].as_array().expect("parts").iter().any(|p| p["name"] == "registry.json"), "{v}");
    let o = with(&other);
    assert!(!o.status.success() && stderr(&o).contains("cannot be decrypted"), "{}", stderr(&o));

    // Restore needs the identity, and gives back the same registry and keys.
    let restore = |dir: &Path, id: Option<&Path>| {
        let mut args = vec!["--json", "backup", "restore", file.to_str().expect("utf-8"), "--data-dir", dir.to_str().expect("utf-8")];
        if let Some(id) = id {
            args.extend(["--identity", id.to_str().expect("utf-8")]);
        }
        common::cli_in(tmp.path(), &args, None)
    };
    let o = restore(&tmp.path().join("without"), None);
    assert!(!o.status.success() && stderr(&o).contains("is encrypted; pass --identity"), "{}", stderr(&o));
    assert!(!tmp.path().join("without").exists(), "a refused restore created its directory");
    let dir = tmp.path().join("restored");
    let o = restore(&dir, Some(&identity));
    assert!(o.status.success(), "restore: {}{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).expect("restore json");
    assert_eq!(r["registry_digest"].as_str(), Some(digest.as_str()));
    assert_restored_gateway_answers_like_before(&gw.node, &dir, &token, before.status);
}
