//! Prometheus contract (SPEC §7) against the real tools: a scrape of a node that has handled
//! gateway traffic passes `promtool check metrics` without a complaint; the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`); every metric the rules,
//! their tests and the Grafana dashboard name exists in a real scrape, so renaming a metric
//! breaks this test rather than an operator's alerting.
//!
//! Needs `promtool` on PATH (Debian: `apt-get install prometheus`; scripts/test installs it).
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::upstream::Upstream;
use gateway_support::*;
use serde_json::Value;

fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool not found on PATH: install it (Debian 12: apt-get install --no-install-recommends prometheus; scripts/test does)"
    );
    Command::new("promtool")
}

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus")
}

/// Every `lgsp_*` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("lgsp_") {
        let start = i + pos;
        let preceded_by_word = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded_by_word {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Names of the samples in a Prometheus text exposition (`name{...} value` or `name value`).
fn scraped_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The PromQL expressions and variable queries of a Grafana dashboard.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// Starts a node and sends traffic that creates every labelled series the rules and the
/// dashboard use: a proxied call, a provider 5xx, an unreachable provider (gateway 502) and a
/// refused token. Returns the node and one scrape.
fn scrape_after_traffic() -> (Gw, String) {
    let gw = Gw::start();
    let cred = gw.credential("stp-hotich", "production", false);
    let token = gw.token(&cred);
    // The seed's upstream (127.0.0.1:9) refuses connections: the gateway answers 502.
    let r = gw.bearer(&token, "GET", "/dancu/v1/congdan/1", None);
    assert_refusal(&r, 502, "UPSTREAM_UNREACHABLE");
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &up.url(), &up.url());
    let r = gw.bearer(&token, "GET", "/dancu/v1/congdan/1", None);
    assert_eq!(r.status, 200, "proxied call: {}", r.text());
    let r = gw.bearer(&token, "GET", "/dancu/v1/status/500", None);
    assert_eq!(r.status, 500, "the provider's 500 is passed through: {}", r.text());
    let r = gw.bearer("not-a-token", "GET", "/dancu/v1/congdan/1", None);
    assert_eq!(r.status, 401, "{}", r.text());
    // Records and metrics are written when the response body ends: wait for all four.
    let scrape = eventually("all calls counted", || {
        let m = gw.metrics();
        let n = m
            .lines()
            .filter(|l| l.starts_with("lgsp_gateway_responses_total{") && l.contains("service=\"dancu\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
        (n >= 3 && m.contains("lgsp_gateway_auth_failures_total{")).then_some(m)
    });
    (gw, scrape)
}

#[test]
fn a_real_scrape_passes_promtool_and_names_every_metric_the_rules_and_dashboard_use() {
    let (_gw, scrape) = scrape_after_traffic();
    // Labelled series exist, so promtool sees more than empty families.
    for needle in [
        "lgsp_gateway_requests_total{consumer=\"000.00.01.H31\",outcome=\"OK\",service=\"dancu\"}",
        "lgsp_gateway_responses_total{service=\"dancu\",status_class=\"2xx\"} 1",
        "lgsp_gateway_responses_total{service=\"dancu\",status_class=\"5xx\"} 2",
        "lgsp_gateway_upstream_duration_seconds_bucket{service=\"dancu\",le=\"+Inf\"}",
        "lgsp_gateway_auth_failures_total{reason=",
        "lgsp_host_data_dir_free_bytes ",
        "lgsp_process_resident_memory_bytes ",
    ] {
        assert!(scrape.contains(needle), "scrape lacks {needle}:\n{scrape}");
    }

    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && complaints.trim().is_empty(), "promtool check metrics complains:\n{complaints}\n--- scrape:\n{scrape}");

    let exported = scraped_names(&scrape);
    let mut used: Vec<(String, String)> = Vec::new();
    for file in ["lgsp-alerts.yml", "lgsp-alerts.test.yml"] {
        let text = std::fs::read_to_string(prometheus_dir().join(file)).expect("read rules");
        used.extend(metric_names(&text).into_iter().map(|n| (file.to_owned(), n)));
    }
    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/lgsp-dashboard.json")).expect("read dashboard"),
    )
    .expect("dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() > 20, "the dashboard's queries were not found: {queries:?}");
    for q in &queries {
        used.extend(metric_names(q).into_iter().map(|n| ("lgsp-dashboard.json".to_owned(), n)));
    }
    assert!(used.len() > 30, "too few metric names found in the rules and dashboard: {used:?}");
    let missing: Vec<_> = used.iter().filter(|(_, n)| !exported.contains(n)).collect();
    assert!(missing.is_empty(), "metrics named but not exported by a node: {missing:?}\nexported: {exported:?}");
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let out = promtool().current_dir(prometheus_dir()).args(["check", "rules", "lgsp-alerts.yml"]).output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = promtool().current_dir(prometheus_dir()).args(["test", "rules", "lgsp-alerts.test.yml"]).output().expect("promtool");
    assert!(out.status.success(), "promtool test rules:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // Every alert has a unit test (and every tested alert exists).
    let rules = std::fs::read_to_string(prometheus_dir().join("lgsp-alerts.yml")).expect("rules");
    let tests = std::fs::read_to_string(prometheus_dir().join("lgsp-alerts.test.yml")).expect("tests");
    let names = |text: &str, key: &str| -> BTreeSet<String> {
        text.lines().filter_map(|l| l.trim().strip_prefix(key)).map(|s| s.trim().to_owned()).collect()
    };
    let alerts = names(&rules, "- alert:");
    let tested = names(&tests, "alertname:");
    assert!(alerts.len() >= 10, "{alerts:?}");
    assert_eq!(alerts, tested, "alerts without a unit test, or tests of unknown alerts");
    for a in &alerts {
        // Each `alertname: X` is followed by its `exp_alerts:` line.
        let expectations: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|chunk| chunk.lines().next().map(str::trim) == Some(a.as_str()))
            .filter_map(|chunk| chunk.lines().nth(1).map(str::trim))
            .collect();
        let fires = expectations.contains(&"exp_alerts:");
        let quiet = expectations.contains(&"exp_alerts: []");
        assert!(fires && quiet, "{a}: needs a test where it fires and one where it does not");
    }
}

#[test]
fn the_grafana_dashboard_is_importable() {
    let d: Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/lgsp-dashboard.json")).expect("read dashboard"),
    )
    .expect("dashboard is JSON");
    assert!(d["schemaVersion"].as_i64().is_some_and(|v| (36..=41).contains(&v)), "schemaVersion {}", d["schemaVersion"]);
    assert_eq!(d["uid"], "lgsp-appliance");
    let vars = d["templating"]["list"].as_array().expect("variables");
    assert!(vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"), "{vars:?}");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().expect("panel id")), "duplicate panel id {}", p["id"]);
        let g = &p["gridPos"];
        assert!(g["w"].as_i64().is_some_and(|w| w > 0 && g["x"].as_i64().unwrap_or(99) + w <= 24), "panel {} gridPos {g}", p["title"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {} must use the datasource variable", p["title"]);
            assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()), "panel {} has no query", p["title"]);
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for t in
        ["Requests by service", "Authentication failures by reason", "Quorum", "Replication lag", "CPU usage", "Data directory: free space"]
    {
        assert!(titles.iter().any(|x| x.starts_with(t)), "no panel {t:?} in {titles:?}");
    }
}
