//! Reconciliation (G9) through the CLI: after real traffic, `lgsp audit reconcile --date` gives
//! per consumer × service × outcome counts as CSV; `lgsp audit compare` accepts a provider's
//! matching CSV and names every difference in one that disagrees (exit 1).
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use common::upstream::Upstream;
use gateway_support::*;

#[test]
fn daily_counts_export_and_compare_with_a_provider() {
    let gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &format!("{}/api", up.url()), &format!("{}/test", up.url()));
    let cred = gw.credential("stp-hotich", "production", false);
    gw.sync();
    let token = gw.token(&cred);
    for _ in 0..3 {
        assert_eq!(gw.bearer(&token, "GET", "/dancu/v1/x", None).status, 200);
    }
    assert_eq!(gw.bearer(&token, "GET", "/dancu/v1/status/500", None).status, 500);
    let today = chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(7 * 3600).expect("offset")).date_naive().to_string();

    let out = gw.node.cli(&["audit", "reconcile", "--date", &today], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).expect("utf-8");
    let row =
        |outcome: &str| csv.lines().find(|l| l.contains(",stp-hotich,dancu,v1,") && l.contains(&format!(",{outcome},"))).map(str::to_owned);
    assert!(row("OK").is_some_and(|l| l.ends_with(",3")), "three successful calls counted:\n{csv}");
    assert!(row("UPSTREAM_ERROR_STATUS").is_some_and(|l| l.ends_with(",1")), "the provider's 500 counted:\n{csv}");

    // The provider's own CSV, identical: matches.
    let dir = tempfile::tempdir().expect("tmp");
    let theirs = dir.path().join("provider.csv");
    std::fs::write(&theirs, &csv).expect("write");
    let out = gw.node.cli(&["audit", "compare", "--date", &today, theirs.to_str().expect("path")], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("matches"));

    // A provider that counted 2 successes instead of 3: the difference is named, exit 1.
    let mut lines: Vec<String> = csv.lines().map(str::to_owned).collect();
    for l in lines.iter_mut() {
        if l.contains(",stp-hotich,dancu,v1,OK,") {
            *l = l.trim_end_matches(",3").to_owned() + ",2";
        }
    }
    std::fs::write(&theirs, lines.join("\n") + "\n").expect("write");
    let out = gw.node.cli(&["audit", "compare", "--date", &today, theirs.to_str().expect("path")], None);
    assert!(!out.status.success(), "a disagreeing CSV must fail");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("stp-hotich") && text.contains("OK"), "the differing row is named:\n{text}");
}
