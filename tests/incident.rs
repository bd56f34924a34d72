//! The incident log (O5; HP Art. 10, HN Art. 12) with the real binary: opening an incident
//! backs every node up first (HP Art. 10.5c: the backup file exists, verifies, its log index
//! precedes the incident's entry and its reason names the incident); timeline updates; the
//! expected fix time reaches those affected by email (a real SMTP server, aiosmtpd) at opening,
//! on change and at resolution; the incident report as JSON and as HTML parsed by html5lib;
//! roles (auditor reads, an agency-admin sees only incidents affecting its agency, others are
//! 404); bad input refused with a message and without a backup; the monthly report lists it.
//! A second node whose backup directory cannot be created records the incident anyway and says
//! loudly that there is no backup.
#![allow(clippy::disallowed_methods)]

mod common;

use chrono::{Duration as CDuration, FixedOffset, SecondsFormat, Utc};
use common::compat::{html5, Smtp};
use common::{wait_for, Api, Node};
use serde_json::{json, Value};

const P: &str = "000.00.00.H31";
const C: &str = "000.00.01.H31";
const OTHER: &str = "000.00.02.H31";

fn out(o: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `2026-12-07T10:00+07:00`: the shape operators type (no seconds).
fn local_minute(t: chrono::DateTime<Utc>) -> String {
    let tz = FixedOffset::east_opt(7 * 3600).expect("offset");
    t.with_timezone(&tz).format("%Y-%m-%dT%H:%M%:z").to_string()
}

/// How notices print an instant: `2026-12-07 10:00 (UTC+7)`.
fn notice_time(t: &str) -> String {
    let tz = FixedOffset::east_opt(7 * 3600).expect("offset");
    chrono::DateTime::parse_from_rfc3339(t).expect("rfc3339").with_timezone(&tz).format("%Y-%m-%d %H:%M (UTC+7)").to_string()
}

fn backups(op: &Api) -> Vec<Value> {
    let (s, b) = op.get("/api/v1/backups");
    assert_eq!(s, 200, "{b}");
    b["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn incident_log_backup_timeline_notices_report_and_roles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let smtp = Smtp::start(tmp.path());
    let ops = tmp.path().join("ops.toml");
    std::fs::write(
        &ops,
        format!(
            "[notify]\nsmtp_server = '127.0.0.1:{}'\nsmtp_security = 'plain'\nfrom = 'LGSP <lgsp@lgsp.test>'\noperator_emails = ['ops@lgsp.test']\nretry_base = '1s'\nmax_attempts = 2\n",
            smtp.port
        ),
    )
    .expect("ops config");
    let node = Node::start_with(&["--ops-config", ops.to_str().expect("utf-8")]);
    let op = node.operator();
    common::seed(&op);
    for (code, email) in [(P, "cntt@provider.test"), (C, "it@consumer.test")] {
        let (s, b) = op.patch(&format!("/api/v1/agencies/{code}"), json!({"contacts": [{"name": "CNTT", "email": email}]}));
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = op.post("/api/v1/agencies", json!({"code": OTHER, "name": "Sở Y tế"}));
    assert_eq!(s, 201, "{b}");

    // Bad input: 400 with a message naming the field, and no backup is made for it.
    let before = backups(&op).len();
    let title = json!({"vi": "Mất kết nối", "en": "Connection lost"});
    let now = Utc::now();
    let past = (now - CDuration::hours(2)).to_rfc3339_opts(SecondsFormat::Secs, true);
    for (body, says) in [
        (json!({"title": title, "severity": "serious", "services": ["ghost"]}), "services[0]"),
        (json!({"title": title, "severity": "catastrophic"}), "severity"),
        (json!({"title": title, "severity": "normal", "expected_fix_at": past}), "expected_fix_at"),
        (json!({"title": {"vi": " ", "en": "x"}, "severity": "normal"}), "title.vi"),
        (json!({"title": title, "severity": "normal", "agencies": ["999.99.99.H99"]}), "agencies[0]"),
    ] {
        let (s, b) = op.post("/api/v1/incidents", body.clone());
        assert_eq!(s, 400, "{body} → {b}");
        assert!(b["message"].as_str().is_some_and(|m| m.contains(says)), "{says} in {b}");
    }
    assert_eq!(backups(&op).len(), before, "bad input makes no backup");
    let o = node.cli(&["incident", "open", "--title", "x", "--severity", "normal", "--expected-fix", "tomorrow"], None);
    let (_, err) = out(&o);
    assert!(!o.status.success() && err.contains("--expected-fix") && !err.contains("panicked"), "{err}");

    // Open through the CLI: the pre-incident backup comes first.
    let fix1 = local_minute(now + CDuration::hours(3));
    let o = node.cli(
        &[
            "--json",
            "incident",
            "open",
            "--id",
            "db-down",
            "--title",
            "Mất kết nối CSDL dân cư",
            "--title-en",
            "Population DB unreachable",
            "--severity",
            "serious",
            "--service",
            "dancu",
            "--expected-fix",
            &fix1,
            "--description",
            "timeouts from the provider",
        ],
        None,
    );
    let (stdout, err) = out(&o);
    assert!(o.status.success(), "{stdout}{err}");
    let inc: Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!((inc["status"].as_str(), inc["severity"].as_str(), inc["serious"].as_bool()), (Some("open"), Some("serious"), Some(true)));
    assert_eq!(inc["affected_agencies"], json!([P, C]), "provider and subscribed consumer: {inc}");
    let backup = &inc["backup"];
    assert_eq!(backup["status"], "ok", "{inc}");
    let file = backup["file"].as_str().expect("file");
    assert!(std::path::Path::new(file).is_file(), "{file}");
    let listed = backups(&op);
    let manifest = listed.iter().find(|b| b["id"] == backup["id"]).expect("the backup is listed");
    assert_eq!(manifest["log_index"], backup["log_index"]);
    let reason = manifest["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("pre-incident: ") && reason.contains("Mất kết nối CSDL dân cư") && reason.contains("db-down"), "{reason}");
    let (s, trail) = op.get("/api/v1/audit/admin?action=open_incident");
    assert_eq!(s, 200, "{trail}");
    let entry = trail["items"].as_array().and_then(|i| i.iter().find(|e| e["target"] == "incident/db-down")).expect("audit entry");
    assert!(manifest["log_index"].as_u64() < entry["index"].as_u64(), "the backup point precedes the incident: {manifest} / {entry}");
    let o = node.cli(&["backup", "verify", file], None);
    assert!(o.status.success(), "{:?}", out(&o));

    // Timeline: a note with a status, then a new expected fix time; no going back.
    let (s, b) = op.post("/api/v1/incidents/db-down/updates", json!({"note": "provider link cut off", "status": "isolated"}));
    assert_eq!((s, b["status"].as_str()), (200, Some("isolated")), "{b}");
    let fix2 = (now + CDuration::hours(5)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let (s, b) = op.post("/api/v1/incidents/db-down/updates", json!({"expected_fix_at": fix2, "cause": "disk full"}));
    assert_eq!(s, 200, "{b}");
    let kinds: Vec<&str> = b["timeline"].as_array().expect("timeline").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["opened", "status", "cause", "expected_fix"], "{b}");
    let (s, b) = op.post("/api/v1/incidents/db-down/updates", json!({"status": "open"}));
    assert_eq!(s, 400, "{b}");
    assert!(b["message"].as_str().is_some_and(|m| m.contains("cannot go back")), "{b}");
    let (s, b) = op.post("/api/v1/incidents/db-down/updates", json!({}));
    assert_eq!(s, 400, "an empty update changes nothing: {b}");

    // Roles: the auditor reads; the provider's and consumer's admins see it; another agency's
    // admin gets the same 404 as for an incident that does not exist; no one but the operator writes.
    let aud = node.user("aud", "auditor", None);
    let prov = node.user("prov-admin", "agency-admin", Some(P));
    let other = node.user("yte-admin", "agency-admin", Some(OTHER));
    for api in [&aud, &prov] {
        let (s, b) = api.get("/api/v1/incidents/db-down");
        assert_eq!((s, b["id"].as_str()), (200, Some("db-down")), "{b}");
        let (s, b) = api.get("/api/v1/incidents");
        assert_eq!((s, b["total"].as_u64()), (200, Some(1)), "{b}");
        let (s, b) = api.post("/api/v1/incidents/db-down/updates", json!({"note": "x"}));
        assert_eq!(s, 403, "{b}");
    }
    for path in ["/api/v1/incidents/db-down", "/api/v1/incidents/db-down/report?format=json"] {
        let (s, hidden) = other.get(path);
        let (s2, ghost) = other.get(&path.replace("db-down", "no-such"));
        assert_eq!((s, s2), (404, 404), "{hidden} {ghost}");
        assert_eq!(hidden["message"].as_str().map(|m| m.replace("db-down", "no-such")), ghost["message"].as_str().map(str::to_owned));
    }
    let (s, b) = other.get("/api/v1/incidents");
    assert_eq!((s, b["total"].as_u64()), (200, Some(0)), "{b}");

    // Resolve through the CLI.
    let o = node.cli(&["incident", "resolve", "db-down", "--resolution", "freed the disk and restarted the service"], None);
    assert!(o.status.success(), "{:?}", out(&o));
    let (s, b) = op.get("/api/v1/incidents/db-down");
    assert_eq!((s, b["status"].as_str(), b["fixed_within_24h"].as_bool()), (200, Some("resolved"), Some(true)), "{b}");
    let (s, b) = op.post("/api/v1/incidents/db-down/resolve", json!({"resolution": "again"}));
    assert_eq!((s, b["code"].as_str()), (409, Some("INCIDENT_RESOLVED")), "{b}");
    let o = node.cli(&["--json", "incident", "list", "--open"], None);
    let listed: Value = serde_json::from_str(&out(&o).0).expect("json");
    assert_eq!(listed["total"], 0, "{listed}");

    // Emails: the opening with the first expected fix time, the change with the second, the
    // resolution, to the provider, the subscribed consumer and the operator.
    let (fix1_text, fix2_text) = (notice_time(inc["expected_fix_at"].as_str().expect("fix")), notice_time(&fix2));
    let mails = wait_for("incident emails", 60, || {
        let m = smtp.messages();
        let has = |to: &str, subject: &str, body: &str| {
            m.iter().any(|x| {
                x["to"].as_str().is_some_and(|t| t.contains(to))
                    && x["subject"].as_str().is_some_and(|s| s.contains(subject))
                    && x["body"].as_str().is_some_and(|b| b.contains(body))
            })
        };
        ["cntt@provider.test", "it@consumer.test", "ops@lgsp.test"]
            .iter()
            .all(|to| {
                has(to, "Population DB unreachable", &fix1_text)
                    && has(to, "Expected fix time changed", &fix2_text)
                    && has(to, "Incident resolved", "freed the disk")
            })
            .then_some(m)
    });
    let opened = mails.iter().find(|m| m["subject"].as_str().is_some_and(|s| s.contains("Thông báo sự cố"))).expect("opening mail");
    let body = opened["body"].as_str().unwrap_or("");
    assert!(body.contains("Thời gian dự kiến khắc phục xong") && body.contains("Expected fix time"), "bilingual: {body}");
    assert!(!mails.iter().any(|m| m["to"].as_str().is_some_and(|t| t.contains("yte"))), "the unaffected agency is not told");

    // The incident report: JSON and a self-contained bilingual HTML page.
    let (s, r) = aud.get("/api/v1/incidents/db-down/report?format=json");
    assert_eq!(s, 200, "{r}");
    assert_eq!((r["report_required"].as_bool(), r["fixed_within_24h"].as_bool()), (Some(true), Some(true)), "{r}");
    assert_eq!(r["incident"]["backup"]["id"], backup["id"]);
    assert!(r["agencies"].as_array().is_some_and(|a| a.iter().any(|x| x["name"] == "Sở Tư pháp Hải Phòng")), "{r}");
    let (s, b) = op.get("/api/v1/incidents/db-down/report?format=pdf");
    assert_eq!(s, 400, "{b}");
    let html_file = tmp.path().join("incident.html");
    let o = node.cli(&["incident", "report", "db-down", "--output", html_file.to_str().expect("utf-8")], None);
    assert!(o.status.success(), "{:?}", out(&o));
    let parsed = html5(
        &html_file,
        "{'h1': ''.join(doc.find('.//h1').itertext()), 'h2': [''.join(h.itertext()) for h in doc.findall('.//h2')], \
         'rows': len(doc.findall('.//tr')), 'scripts': len(doc.findall('.//script')), 'text': ''.join(doc.find('.//body').itertext())}",
    );
    assert!(parsed["h1"].as_str().is_some_and(|h| h.contains("Báo cáo sự cố") && h.contains("Incident report")), "{parsed}");
    let h2 = parsed["h2"].to_string();
    for heading in ["Diễn biến / Timeline", "Sao lưu trước khi xử lý / Pre-incident backup", "Phạm vi ảnh hưởng / Affected"]
    {
        assert!(h2.contains(heading), "{heading} in {h2}");
    }
    let text = parsed["text"].as_str().unwrap_or("");
    for want in [backup["id"].as_str().unwrap_or("?"), "disk full", "freed the disk", "provider link cut off", "Sở Tư pháp Hải Phòng"]
    {
        assert!(text.contains(want), "{want} in the report");
    }
    assert_eq!(parsed["scripts"], 0);

    // The monthly report lists it, and the 24-hour service level uses it.
    let month = (Utc::now() + CDuration::hours(7)).format("%Y-%m").to_string();
    let (s, rep) = op.get(&format!("/api/v1/reports?month={month}"));
    assert_eq!(s, 200, "{rep}");
    let listed = rep["incidents"].as_array().and_then(|i| i.iter().find(|x| x["id"] == "db-down")).expect("in the monthly report");
    assert_eq!((listed["status"].as_str(), listed["serious"].as_bool()), (Some("resolved"), Some(true)), "{listed}");
    let sla = rep["sla"].as_array().and_then(|l| l.iter().find(|x| x["metric"] == "incident_fix")).expect("incident_fix");
    assert_eq!((sla["actual"].as_str(), sla["met"].as_bool()), (Some("1 of 1 fixed in time"), Some(true)), "{sla}");
}

#[test]
fn a_failed_pre_incident_backup_still_records_the_incident_loudly() {
    let tmp = tempfile::tempdir().expect("tmp");
    // The backup directory's parent is a file: this node cannot write any backup file.
    let blocker = tmp.path().join("not-a-dir");
    std::fs::write(&blocker, "x").expect("blocker");
    let ops = tmp.path().join("ops.toml");
    std::fs::write(&ops, format!("[backup]\ndir = '{}'\n", blocker.join("backups").display())).expect("ops config");
    let node = Node::start_with(&["--ops-config", ops.to_str().expect("utf-8")]);
    let o = node.cli(&["--json", "incident", "open", "--id", "disk", "--title", "Hỏng ổ đĩa", "--severity", "normal"], None);
    let (stdout, err) = out(&o);
    assert!(o.status.success(), "the incident is recorded: {stdout}{err}");
    assert!(err.contains("NO PRE-INCIDENT BACKUP") && err.contains("lgsp backup create"), "says so loudly, with what to do: {err}");
    let inc: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(inc["backup"]["status"], "failed", "{inc}");
    assert!(inc["backup"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{inc}");
    let (s, b) = node.operator().get("/api/v1/incidents/disk");
    assert_eq!((s, b["backup"]["status"].as_str()), (200, Some("failed")), "{b}");
    assert!(b["timeline"][0]["text"].as_str().is_some_and(|t| t.contains("NO pre-incident backup")), "{b}");
}
