//! CSV renderings of a report (RFC 4180, CRLF, UTF-8 with no BOM): one table per call, chosen
//! by [`Table`]; the columns of each are listed in [`columns`] and in README.md.
//!
//! Invariants: numbers are plain (`.` decimal point, no thousands separator, empty when
//! unknown); text fields are quoted when they hold `,` `"` CR or LF, and a text field starting
//! with `=`, `+`, `-`, `@`, tab or CR gets a leading `'` so that a spreadsheet never runs a
//! registry name as a formula.

use std::fmt::Write;

use super::model::{Counts, Report};
use super::ReportError;

/// The tables a report can be exported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Totals, the daily (monthly) series, services, consumer agencies and exchanges, in long form.
    Traffic,
    Outcomes,
    Uptime,
    Maintenance,
    Subscriptions,
    Sla,
    Coverage,
}

impl Table {
    pub const ALL: [&'static str; 7] = ["traffic", "outcomes", "uptime", "maintenance", "subscriptions", "sla", "coverage"];

    pub fn parse(s: &str) -> Result<Table, ReportError> {
        Ok(match s {
            "traffic" => Table::Traffic,
            "outcomes" => Table::Outcomes,
            "uptime" => Table::Uptime,
            "maintenance" => Table::Maintenance,
            "subscriptions" => Table::Subscriptions,
            "sla" => Table::Sla,
            "coverage" => Table::Coverage,
            other => return Err(ReportError::Format(format!("table {other:?} is not one of {}", Table::ALL.join(", ")))),
        })
    }
}

const COUNT_COLS: [&str; 11] = [
    "transactions",
    "success",
    "refused",
    "failed",
    "success_rate_pct",
    "delivery_rate_pct",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "request_bytes",
    "response_bytes",
];

/// The header of a table.
pub fn columns(t: Table) -> Vec<&'static str> {
    let mut c = match t {
        Table::Traffic => vec!["period", "section", "key", "consumer_agency", "consumer_system", "service", "version"],
        Table::Outcomes => return vec!["period", "outcome", "class", "count"],
        Table::Uptime => {
            return vec![
                "period",
                "target",
                "system",
                "agency",
                "checks",
                "up",
                "degraded",
                "down",
                "uptime_pct",
                "history_coverage_pct",
                "history_incomplete",
            ]
        }
        Table::Maintenance => {
            return vec![
                "period",
                "id",
                "scope",
                "start",
                "end",
                "minutes",
                "status",
                "emergency",
                "office_hours",
                "notice_hours",
                "reason_vi",
                "reason_en",
            ]
        }
        Table::Subscriptions => {
            return vec![
                "period",
                "id",
                "consumer_system",
                "service",
                "version",
                "environment",
                "requested_at",
                "decision_due",
                "state",
                "decided_at",
                "on_time",
            ]
        }
        Table::Sla => return vec!["period", "subject", "metric", "target", "actual", "met"],
        Table::Coverage => return vec!["period", "node", "days_published", "days_complete", "last_as_of", "missing_days", "unlogged"],
    };
    c.extend(COUNT_COLS);
    c
}

/// Appends one record. `text[i]` says whether field `i` is free text (formula-guarded).
fn row(out: &mut String, fields: &[String], text: &[bool]) {
    let guarded: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if text.get(i).copied().unwrap_or(false) && f.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{f}")
            } else {
                f.clone()
            }
        })
        .collect();
    let refs: Vec<&str> = guarded.iter().map(String::as_str).collect();
    crate::audit::write_csv_row(out, &refs);
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn counts(c: &Counts) -> Vec<String> {
    vec![
        c.transactions.to_string(),
        c.success.to_string(),
        c.refused.to_string(),
        c.failed.to_string(),
        opt(c.success_rate_pct),
        opt(c.delivery_rate_pct),
        opt(c.latency_p50_ms),
        opt(c.latency_p95_ms),
        opt(c.latency_p99_ms),
        c.request_bytes.to_string(),
        c.response_bytes.to_string(),
    ]
}

/// One table of the report as CSV.
pub fn render(r: &Report, t: Table) -> String {
    let mut out = String::new();
    let cols = columns(t);
    let _ = write!(out, "{}\r\n", cols.join(","));
    let p = r.period.clone();
    let s = |x: &str| x.to_owned();
    match t {
        Table::Traffic => {
            let text = [false, false, false, true, true, true, true];
            let mut line = |section: &str, key: &str, keys: [&str; 4], c: &Counts| {
                let mut f = vec![p.clone(), s(section), s(key), s(keys[0]), s(keys[1]), s(keys[2]), s(keys[3])];
                f.extend(counts(c));
                row(&mut out, &f, &text);
            };
            line("total", "", ["", "", "", ""], &r.totals);
            for x in &r.series {
                line(r.granularity, &x.label, ["", "", "", ""], &x.counts);
            }
            for x in &r.services {
                line("service", "", ["", "", &x.service, &x.version], &x.counts);
            }
            for x in &r.agencies {
                line("agency", "", [&x.agency, "", "", ""], &x.counts);
            }
            for x in &r.exchanges {
                line("exchange", "", [&x.consumer_agency, &x.consumer_system, &x.service, &x.version], &x.counts);
            }
        }
        Table::Outcomes => {
            for x in &r.outcomes {
                row(&mut out, &[p.clone(), x.outcome.clone(), s(x.class.as_str()), x.count.to_string()], &[false, true]);
            }
        }
        Table::Uptime => {
            for x in &r.uptime {
                let f = [
                    p.clone(),
                    x.target.clone(),
                    x.system.clone(),
                    x.agency.clone(),
                    x.checks.to_string(),
                    x.up.to_string(),
                    x.degraded.to_string(),
                    x.down.to_string(),
                    opt(x.uptime_pct),
                    opt(x.history_coverage_pct),
                    x.history_incomplete.to_string(),
                ];
                row(&mut out, &f, &[false, true, true, true]);
            }
        }
        Table::Maintenance => {
            for x in &r.maintenance {
                let f = [
                    p.clone(),
                    x.id.clone(),
                    x.scope.clone(),
                    x.start.to_rfc3339(),
                    x.end.to_rfc3339(),
                    x.minutes.to_string(),
                    s(x.status),
                    x.emergency.to_string(),
                    x.office_hours.to_string(),
                    x.notice_hours.to_string(),
                    x.reason_vi.clone(),
                    x.reason_en.clone(),
                ];
                let mut text = [false; 12];
                for i in [1, 2, 10, 11] {
                    text[i] = true;
                }
                row(&mut out, &f, &text);
            }
        }
        Table::Subscriptions => {
            for x in &r.subscriptions.items {
                let f = [
                    p.clone(),
                    x.id.clone(),
                    x.consumer_system.clone(),
                    x.service.clone(),
                    x.version.clone(),
                    s(x.environment),
                    x.requested_at.to_rfc3339(),
                    x.decision_due.to_string(),
                    s(x.state),
                    opt(x.decided_at.map(|d| d.to_rfc3339())),
                    opt(x.on_time),
                ];
                row(&mut out, &f, &[false, true, true, true, true]);
            }
        }
        Table::Sla => {
            for x in &r.sla {
                row(&mut out, &[p.clone(), x.subject.clone(), s(x.metric), x.target.clone(), x.actual.clone(), opt(x.met)], &[false, true]);
            }
        }
        Table::Coverage => {
            for x in &r.coverage.nodes {
                let missing: Vec<String> = x.missing_days.iter().map(|d| d.to_string()).collect();
                let f = [
                    p.clone(),
                    x.node.clone(),
                    x.days_published.to_string(),
                    x.days_complete.to_string(),
                    opt(x.last_as_of.map(|t| t.to_rfc3339())),
                    missing.join(" "),
                    x.unlogged.to_string(),
                ];
                row(&mut out, &f, &[false, true]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_and_formulas_guarded() {
        let mut out = String::new();
        let f = ["a,b", "say \"hi\"", "line\nbreak", "=SUM(A1)", "-12", "plain", "+x"].map(String::from);
        row(&mut out, &f, &[true, true, true, true, false, true, true]);
        assert_eq!(out, "\"a,b\",\"say \"\"hi\"\"\",\"line\nbreak\",'=SUM(A1),-12,plain,'+x\r\n");
        // A guarded field that also needs quoting.
        let mut out = String::new();
        row(&mut out, &["=1,2".to_owned()], &[true]);
        assert_eq!(out, "\"'=1,2\"\r\n");
    }

    #[test]
    fn every_table_parses_by_name() {
        for name in Table::ALL {
            let t = Table::parse(name).unwrap();
            assert!(columns(t)[0] == "period", "{name}");
        }
        assert!(Table::parse("payloads").is_err());
    }
}
