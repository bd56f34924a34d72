//! Periodic reports (O6), black-box: traffic sent through the real gateway to a real upstream
//! comes out of `GET /api/v1/reports` and `lgsp report` with the exact counts per service,
//! agency and exchange, success rates and ordered latency percentiles; the HTML page parses
//! with a spec-conforming HTML5 parser (html5lib, from the compat venv) and carries SVG charts;
//! bad periods and agency-admins are refused; and, the heart of the design, a report made on a
//! third node counts the traffic two other nodes proxied (their rollups are replicated), even
//! with one of them stopped.
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use std::path::{Path, PathBuf};

use chrono::{Duration as CDuration, SecondsFormat, Utc};
use common::cluster::Cluster;
use common::upstream::Upstream;
use common::{wait_for, Api, Node};
use gateway_support::{h, Gw};
use serde_json::{json, Value};

/// Nodes republish today's rollup every second; probes run fast; maintenance needs 1 h notice.
fn ops_config(dir: &Path) -> PathBuf {
    let p = dir.join("ops.toml");
    std::fs::write(&p, "[maintenance]\nmin_notice = '1h'\n[report]\npublish_interval = '1s'\navailability_target = 99.9\n")
        .expect("ops config");
    p
}

/// The current month and year in Vietnam time.
fn this_month() -> (String, String) {
    let local = Utc::now() + CDuration::hours(7);
    (local.format("%Y-%m").to_string(), local.format("%Y").to_string())
}

/// GET returning status and raw text.
fn get_text(api: &Api, path: &str) -> (u16, String, String) {
    let mut r = api.http.get(format!("{}{path}", api.base));
    if let Some(t) = &api.token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().expect("admin API reachable");
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (status, ct, resp.text().expect("text"))
}

fn find(list: &Value, pred: impl Fn(&Value) -> bool) -> &Value {
    list.as_array().and_then(|a| a.iter().find(|x| pred(x))).unwrap_or(&Value::Null)
}

/// Simple CSV rows (the fields used here hold no quotes or commas).
fn csv_rows(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let head: Vec<String> = lines.next().expect("header").split(',').map(str::to_owned).collect();
    lines.map(|l| head.iter().cloned().zip(l.split(',').map(str::to_owned)).collect()).collect()
}

#[test]
fn monthly_and_yearly_reports_count_what_the_gateway_carried() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = ops_config(tmp.path());
    let node = Node::start_in_with(
        &tmp.path().join("data"),
        &["--ops-config", cfg.to_str().expect("utf-8")],
        &[("LGSP_TEST_PROBE_INTERVAL_MS", "300")],
    );
    let gw = Gw::on(node);
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &format!("{}/api", up.url()), &format!("{}/test", up.url()));

    // A probe of the provider system, and an emergency maintenance window later today.
    let (s, b) =
        gw.op.put("/api/v1/systems/hp-dancu/probe", json!({"kind": "http", "target": format!("{}/status", up.url()), "interval_s": 30}));
    assert_eq!(s, 200, "{b}");
    let start = Utc::now() + CDuration::minutes(2);
    let (s, b) = gw.op.post(
        "/api/v1/maintenance",
        json!({"id": "nang-cap", "scope": {"kind": "services", "services": ["dancu"]},
               "start": start.to_rfc3339_opts(SecondsFormat::Secs, true), "end": (start + CDuration::minutes(30)).to_rfc3339_opts(SecondsFormat::Secs, true),
               "reason": {"vi": "Nâng cấp", "en": "Upgrade"}, "emergency": true, "emergency_reason": "lỗi bảo mật / security fix"}),
    );
    assert_eq!(s, 201, "{b}");

    // 7 successes and 2 provider errors from stp-hotich; 3 refusals of a system without a
    // subscription (same agency).
    let cred = gw.credential("stp-hotich", "production", false);
    let token = gw.token(&cred);
    for i in 0..7 {
        assert_eq!(gw.bearer(&token, "GET", &format!("/dancu/v1/congdan/{i}"), None).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(gw.bearer(&token, "GET", "/dancu/v1/status/500", None).status, 500);
    }
    gw.system("stp-khac", "000.00.01.H31");
    let other = gw.credential("stp-khac", "production", false);
    let other_token = gw.token(&other);
    for _ in 0..3 {
        assert_eq!(gw.bearer(&other_token, "GET", "/dancu/v1/congdan/1", None).status, 403);
    }

    let (month, year) = this_month();
    let report = wait_for("the report to count all 12 transactions and some probe checks", 60, || {
        let (s, r) = gw.op.get(&format!("/api/v1/reports?month={month}"));
        assert_eq!(s, 200, "{r}");
        let checks = find(&r["uptime"], |u| u["target"] == "system:hp-dancu")["checks"].as_u64().unwrap_or(0);
        let dancu = find(&r["services"], |s| s["service"] == "dancu")["transactions"] == 12;
        (dancu && checks > 0).then_some(r)
    });
    // Token requests (`POST /token`) are gateway transactions too, without a service: the
    // service's line holds exactly what was sent to it.
    assert!(report["totals"]["transactions"].as_u64() > Some(12), "{}", report["totals"]);
    let t = find(&report["services"], |s| s["service"] == "dancu" && s["version"] == "v1");
    assert_eq!((t["success"].as_u64(), t["refused"].as_u64(), t["failed"].as_u64()), (Some(7), Some(3), Some(2)), "{t}");
    assert_eq!(t["success_rate_pct"], 58.33, "7 of 12");
    assert_eq!(t["delivery_rate_pct"], 77.78, "7 of the 9 admitted");
    let (p50, p95, p99) = (t["latency_p50_ms"].as_f64(), t["latency_p95_ms"].as_f64(), t["latency_p99_ms"].as_f64());
    assert!(p50.is_some_and(|a| a > 0.0) && p50 <= p95 && p95 <= p99, "percentiles present and ordered: {t}");
    assert_eq!(t["provider_agency"], "000.00.00.H31", "{t}");
    let agency = find(&report["agencies"], |a| a["agency"] == "000.00.01.H31");
    assert!(agency["transactions"].as_u64() >= Some(12), "{agency}");
    assert_eq!(agency["name"], "Sở Tư pháp Hải Phòng");
    let ex = |sys: &str| find(&report["exchanges"], |e| e["consumer_system"] == sys && e["service"] == "dancu").clone();
    assert_eq!((ex("stp-hotich")["success"].as_u64(), ex("stp-hotich")["failed"].as_u64()), (Some(7), Some(2)));
    assert_eq!(ex("stp-khac")["refused"].as_u64(), Some(3));
    assert_eq!(find(&report["outcomes"], |o| o["outcome"] == "SUBSCRIPTION_REQUIRED")["count"], 3);
    assert_eq!(find(&report["outcomes"], |o| o["outcome"] == "UPSTREAM_ERROR_STATUS")["class"], "failed");
    let today = find(&report["series"], |p| p["transactions"].as_u64() > Some(0));
    assert_eq!(today["transactions"], report["totals"]["transactions"], "one day of traffic: {}", report["series"]);
    assert_eq!(report["coverage"]["today_included"], true);
    assert_eq!(report["coverage"]["partial"], true);
    assert_eq!(find(&report["coverage"]["nodes"], |n| n["node"] == "dev")["days_published"].as_u64().map(|d| d >= 1), Some(true));
    // Maintenance, subscriptions, uptime and service levels.
    let m = find(&report["maintenance"], |m| m["id"] == "nang-cap");
    assert_eq!((m["emergency"].as_bool(), m["minutes"].as_i64(), m["reason_vi"].as_str()), (Some(true), Some(30), Some("Nâng cấp")), "{m}");
    assert!(report["subscriptions"]["requested"].as_u64() >= Some(1), "{}", report["subscriptions"]);
    assert_eq!(find(&report["subscriptions"]["items"], |s| s["consumer_system"] == "stp-hotich")["on_time"], true);
    let u = find(&report["uptime"], |u| u["target"] == "system:hp-dancu");
    assert_eq!((u["system"].as_str(), u["uptime_pct"].as_f64()), (Some("hp-dancu"), Some(100.0)), "{u}");
    assert_eq!(report["targets"]["availability_pct"], 99.9, "[report] targets apply");
    let sla = |subject: &str, metric: &str| find(&report["sla"], |l| l["subject"] == subject && l["metric"] == metric).clone();
    assert_eq!(sla("system:hp-dancu", "availability")["met"], true);
    assert_eq!(sla("service:dancu:v1", "delivery_rate")["met"], false, "77.78 % < 99 %");
    assert!(sla("service:dancu:v1", "latency_p95")["met"].is_boolean());

    // CSV: the same numbers in the traffic table.
    let (s, ct, csv) = get_text(&gw.op, &format!("/api/v1/reports?month={month}&format=csv"));
    assert_eq!(s, 200, "{csv}");
    assert!(ct.starts_with("text/csv"), "{ct}");
    let rows = csv_rows(&csv);
    let row = |section: &str, key: &str, val: &str| {
        rows.iter().find(|r| r["section"] == section && r[key] == val).cloned().unwrap_or_else(|| panic!("{section} {val} in {csv}"))
    };
    let s_row = row("service", "service", "dancu");
    assert_eq!(
        (s_row["transactions"].as_str(), s_row["success"].as_str(), s_row["refused"].as_str(), s_row["failed"].as_str()),
        ("12", "7", "3", "2")
    );
    assert_eq!(s_row["success_rate_pct"], "58.33");
    let khac = rows.iter().find(|r| r["section"] == "exchange" && r["consumer_system"] == "stp-khac" && r["service"] == "dancu");
    assert_eq!(khac.map(|r| r["refused"].as_str()), Some("3"), "{csv}");
    assert_eq!(row("total", "section", "total")["transactions"], report["totals"]["transactions"].to_string());
    let (s, _, csv) = get_text(&gw.op, &format!("/api/v1/reports?month={month}&format=csv&table=uptime"));
    assert_eq!(s, 200);
    assert!(csv.starts_with("period,target,system,agency,checks,"), "{csv}");
    assert!(csv.contains(",system:hp-dancu,hp-dancu,000.00.00.H31,"), "{csv}");

    // HTML: parses with html5lib in strict mode (any parse error fails), holds SVG charts and
    // the bilingual headings; no script.
    let (s, ct, html) = get_text(&gw.op, &format!("/api/v1/reports?month={month}&format=html"));
    assert_eq!(s, 200);
    assert!(ct.starts_with("text/html"), "{ct}");
    let file = tmp.path().join("report.html");
    std::fs::write(&file, &html).expect("write html");
    let parsed = common::compat::html5(
        &file,
        "{'svgs': len(doc.findall('.//' + svg + 'svg')), 'bars': len(doc.findall('.//' + svg + 'rect')), \
         'lines': len(doc.findall('.//' + svg + 'polyline')), 'h2': [''.join(h.itertext()) for h in doc.findall('.//h2')], \
         'scripts': len(doc.findall('.//script'))}",
    );
    assert!(parsed["svgs"].as_u64() >= Some(4), "transactions, success rate, latency and uptime charts: {parsed}");
    assert!(parsed["bars"].as_u64() >= Some(3) && parsed["lines"].as_u64() >= Some(2), "{parsed}");
    assert_eq!(parsed["scripts"], 0);
    let h2 = parsed["h2"].to_string();
    for heading in ["Tổng quan / Overview", "Bảo trì / Maintenance", "Sự cố / Incidents", "Cam kết chất lượng dịch vụ / Service levels"]
    {
        assert!(h2.contains(heading), "{heading} in {h2}");
    }

    // Yearly: twelve months, this one holding the traffic.
    let (s, y) = gw.op.get(&format!("/api/v1/reports?year={year}"));
    assert_eq!(s, 200, "{y}");
    assert_eq!(
        (y["kind"].as_str(), y["granularity"].as_str(), y["series"].as_array().map(Vec::len)),
        (Some("yearly"), Some("month"), Some(12))
    );
    assert_eq!(find(&y["series"], |p| p["label"] == month.as_str())["transactions"], report["totals"]["transactions"]);
    assert_eq!(find(&y["services"], |s| s["service"] == "dancu")["transactions"], 12);

    // Bad periods are refused, saying what is expected.
    let next_year = (year.parse::<i32>().expect("year") + 1).to_string();
    for (q, says) in [
        ("month=2026-13".to_owned(), "YYYY-MM"),
        ("month=2026-1".to_owned(), "YYYY-MM"),
        ("month=nov".to_owned(), "YYYY-MM"),
        (format!("month={next_year}-01"), "has not started"),
        (format!("year={next_year}"), "has not started"),
        ("year=26".to_owned(), "four digits"),
        (format!("month={month}&year={year}"), "exactly one"),
        (String::new(), "exactly one"),
        (format!("month={month}&format=pdf"), "json, html or csv"),
        (format!("month={month}&format=csv&table=payloads"), "traffic"),
    ] {
        let (s, b) = gw.op.get(&format!("/api/v1/reports?{q}"));
        assert_eq!(s, 400, "{q}: {b}");
        assert!(b["message"].as_str().is_some_and(|m| m.contains(says)), "{q}: {b}");
    }

    // Roles: an auditor reads it; an agency-admin is told why not.
    let auditor = gw.node.user("kiemtoan", "auditor", None);
    assert_eq!(auditor.get(&format!("/api/v1/reports?month={month}")).0, 200);
    let admin = gw.node.user("stp-admin", "agency-admin", Some("000.00.01.H31"));
    let (s, b) = admin.get(&format!("/api/v1/reports?month={month}"));
    assert_eq!(s, 403, "{b}");
    assert!(b["message"].as_str().is_some_and(|m| m.contains("operator or auditor") && m.contains("reconciliation")), "{b}");

    // The CLI writes the same report.
    let out_csv = tmp.path().join("r.csv");
    let out = gw.node.cli(&["report", "--month", &month, "--format", "csv", "--output", out_csv.to_str().expect("utf-8")], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&out_csv).expect("csv file").contains(",service,,,,dancu,v1,12,7,3,2,"));
    let out = gw.node.cli(&["report", "--year", &year, "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(find(&v["services"], |s| s["service"] == "dancu")["success"], 7);
    let out = gw.node.cli(&["report", "--month", "2026-13"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = gw.node.cli(&["report"], None);
    assert_eq!(out.status.code(), Some(64), "a period is required");
}

/// Calls `n` times through the gateway of node `k` with a fresh token; all must succeed.
fn traffic(c: &Cluster, k: usize, key: &str, secret: &str, n: usize) {
    let url = c.node(k).info["gateway_url"].as_str().expect("gateway_url").to_owned();
    let http = gateway_support::gateway_client();
    let token = wait_for(&format!("node {k}'s gateway issues a token"), 30, || {
        let r = gateway_support::token_request_to(&http, &url, key, secret);
        (r.status == 200).then(|| r.json()["access_token"].as_str().expect("token").to_owned())
    });
    let auth = [h("authorization", &format!("Bearer {token}"))];
    for i in 0..n {
        let r = wait_for(&format!("node {k}'s gateway routes to the upstream"), 30, || {
            let r = gateway_support::send_to(&http, &url, "GET", &format!("/dancu/v1/congdan/{i}"), &auth, None);
            (r.status == 200).then_some(r)
        });
        assert_eq!(r.status, 200);
    }
}

#[test]
fn a_third_node_reports_what_two_other_nodes_proxied() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = ops_config(tmp.path());
    let mut c = Cluster::start(3, &["--ops-config", cfg.to_str().expect("utf-8")]);
    let op = c.api(1);
    common::seed(&op);
    let up = Upstream::start();
    let (s, b) = op.patch(
        "/api/v1/services/dancu/versions/v1",
        json!({"upstream": {"production": format!("{}/api", up.url()), "test": format!("{}/test", up.url())}}),
    );
    assert_eq!(s, 200, "{b}");
    let (s, cred) = op.post("/api/v1/credentials", json!({"system": "stp-hotich", "environment": "production"}));
    assert_eq!(s, 201, "{cred}");
    let (key, secret) = (cred["consumer_key"].as_str().expect("key"), cred["consumer_secret"].as_str().expect("secret"));

    traffic(&c, 1, key, secret, 3);
    traffic(&c, 2, key, secret, 4);

    let (month, _) = this_month();
    let path = format!("/api/v1/reports?month={month}");
    let r = wait_for("node 3's report to count the traffic of nodes 1 and 2", 60, || {
        let (s, r) = c.api(3).get(&path);
        assert_eq!(s, 200, "{r}");
        (find(&r["services"], |s| s["service"] == "dancu")["transactions"] == 7).then_some(r)
    });
    assert_eq!(r["generated_by"], "node-3");
    assert_eq!(find(&r["services"], |s| s["service"] == "dancu")["success"], 7);
    let nodes: Vec<&str> = r["coverage"]["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["node"].as_str()).collect();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"], "{}", r["coverage"]);

    // Node 1 stops: its rollups are in every node's registry, so node 3 still counts its calls.
    c.kill(1);
    let r = wait_for("node 3 answers once a leader is elected without node 1", 60, || {
        let (s, r) = c.api(3).get(&path);
        (s == 200).then_some(r)
    });
    assert_eq!(find(&r["services"], |s| s["service"] == "dancu")["transactions"], 7, "{}", r["services"]);
    assert_eq!(find(&r["exchanges"], |e| e["consumer_system"] == "stp-hotich" && e["service"] == "dancu")["success"], 7);
}
