//! The report model and [`build`]: a pure function from the period, the replicated registry
//! (traffic rollups, maintenance windows, subscriptions), this node's probe history and the
//! incident log to every figure the renderers show.
//!
//! Invariants: no I/O and no clock (`now` comes in); every figure is derived from the inputs
//! only, so two nodes with the same registry and probe history produce the same report;
//! whatever is known to be missing (a node's day not published, a partial day, unlogged
//! transactions, thin probe history) is listed in `coverage` rather than silently absent.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;

use crate::probes::history::Aggregate;
use crate::registry::traffic::{local_date, local_day_bounds, merge_rows, LatencyHistogram, OutcomeClass, TrafficRow};
use crate::registry::{MaintenanceScope, State, SubscriptionState};

use super::incidents::Incident;
use super::period::Period;

/// Service levels the report checks (`[report]` in lgsp.toml).
#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    pub availability_pct: f64,
    pub success_rate_pct: f64,
    pub latency_p95_ms: u64,
    /// Working days for a subscription decision (R5, HN App. 01 §3.3): fixed by regulation.
    pub subscription_decision_working_days: u32,
    /// Hours to fix an incident (HN Art. 16.10): fixed by regulation.
    pub incident_fix_hours: u32,
}

/// One probe target's daily history as this node holds it (UTC days).
#[derive(Debug, Clone)]
pub struct ProbeHistory {
    pub target: String,
    pub system: String,
    pub agency: String,
    pub interval_s: u32,
    /// (UTC day start, unix seconds; sums of that day)
    pub days: Vec<(i64, Aggregate)>,
}

/// Everything [`build`] reads.
pub struct Inputs<'a> {
    pub period: Period,
    pub now: DateTime<Utc>,
    /// The node producing the report.
    pub node: String,
    /// Names of the cluster's current members (nodes expected to publish rollups).
    pub members: Vec<String>,
    pub state: &'a State,
    pub probes: Vec<ProbeHistory>,
    pub incidents: Vec<Incident>,
    pub targets: Targets,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Counts {
    pub transactions: u64,
    pub success: u64,
    pub refused: u64,
    pub failed: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// success / transactions, percent (`None` without transactions).
    pub success_rate_pct: Option<f64>,
    /// success / (success + failed), percent: how often an admitted call was delivered.
    pub delivery_rate_pct: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

#[derive(Default)]
struct Acc {
    c: Counts,
    hist: LatencyHistogram,
}

impl Acc {
    fn add(&mut self, r: &TrafficRow) {
        self.c.transactions += r.count;
        match r.class() {
            OutcomeClass::Success => self.c.success += r.count,
            OutcomeClass::Refused => self.c.refused += r.count,
            OutcomeClass::Failed => self.c.failed += r.count,
        }
        self.c.request_bytes = self.c.request_bytes.saturating_add(r.request_bytes);
        self.c.response_bytes = self.c.response_bytes.saturating_add(r.response_bytes);
        self.hist.merge(&r.latency);
    }

    fn finish(mut self) -> Counts {
        let pct = |a: u64, b: u64| (b > 0).then(|| round2(100.0 * a as f64 / b as f64));
        self.c.success_rate_pct = pct(self.c.success, self.c.transactions);
        self.c.delivery_rate_pct = pct(self.c.success, self.c.success + self.c.failed);
        let ms = |q: f64| self.hist.quantile(q).map(|us| round2(us as f64 / 1000.0));
        (self.c.latency_p50_ms, self.c.latency_p95_ms, self.c.latency_p99_ms) = (ms(0.50), ms(0.95), ms(0.99));
        self.c
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A day or a month of the period.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// `2026-11-05` or `2026-11`.
    pub label: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceLine {
    pub service: String,
    pub version: String,
    pub name: String,
    pub provider_agency: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgencyLine {
    pub agency: String,
    pub name: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// Consumer system × service version: the finest grain of the exchange table.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeLine {
    pub consumer_agency: String,
    pub consumer_system: String,
    pub service: String,
    pub version: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutcomeLine {
    pub outcome: String,
    pub class: OutcomeClass,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UptimeLine {
    pub target: String,
    pub system: String,
    pub agency: String,
    pub checks: u64,
    pub up: u64,
    pub degraded: u64,
    pub down: u64,
    /// Checks not `down`, percent.
    pub uptime_pct: Option<f64>,
    /// Checks held here against those the agreed interval implies over the period so far,
    /// percent (capped at 100).
    pub history_coverage_pct: Option<f64>,
    /// Coverage below 90 %: this node missed results (it was down, or the probe is new).
    pub history_incomplete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceLine {
    pub id: String,
    pub scope: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub minutes: i64,
    pub status: &'static str,
    pub emergency: bool,
    pub office_hours: bool,
    /// Hours between the announcement and the start.
    pub notice_hours: i64,
    pub reason_vi: String,
    pub reason_en: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionLine {
    pub id: String,
    pub consumer_system: String,
    pub service: String,
    pub version: String,
    pub environment: &'static str,
    pub requested_at: DateTime<Utc>,
    pub decision_due: NaiveDate,
    pub state: &'static str,
    /// When it became active or was rejected, if it did.
    pub decided_at: Option<DateTime<Utc>>,
    /// Decided by the due date, or `None` while still open and not yet due.
    pub on_time: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SubscriptionSummary {
    pub requested: usize,
    pub decided: usize,
    pub decided_on_time: usize,
    pub open_overdue: usize,
    pub items: Vec<SubscriptionLine>,
}

/// One service-level check.
#[derive(Debug, Clone, Serialize)]
pub struct SlaLine {
    /// `system:…`, `service:…:…`, `service:…` or `platform`.
    pub subject: String,
    /// `availability`, `delivery_rate`, `latency_p95`, `subscription_decisions`, `incident_fix`.
    pub metric: &'static str,
    pub target: String,
    pub actual: String,
    /// `None`: nothing to measure in the period.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeCoverage {
    pub node: String,
    pub days_published: usize,
    pub days_complete: usize,
    pub last_as_of: Option<DateTime<Utc>>,
    /// Days of the period up to today this node has no rollup for (after its first one).
    pub missing_days: Vec<NaiveDate>,
    pub unlogged: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// The period has not ended: figures run up to the rollups' `as_of`.
    pub partial: bool,
    /// The current (unfinished) day is included, from the rollups the nodes published so far.
    pub today_included: bool,
    pub nodes: Vec<NodeCoverage>,
    /// Transactions the audit writers could not log (known missing from every figure).
    pub unlogged: u64,
    /// Plain-language caveats, English (the HTML repeats them in Vietnamese).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub agencies: usize,
    pub systems: usize,
    pub services: usize,
    pub subscriptions_active: usize,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub period: String,
    pub kind: &'static str,
    pub from: NaiveDate,
    /// The last day covered (inclusive).
    pub to: NaiveDate,
    pub generated_at: DateTime<Utc>,
    pub generated_by: String,
    pub targets: Targets,
    pub coverage: Coverage,
    pub connections: Connections,
    pub totals: Counts,
    /// Per day (monthly report) or per month (yearly report).
    pub granularity: &'static str,
    pub series: Vec<SeriesPoint>,
    pub services: Vec<ServiceLine>,
    pub agencies: Vec<AgencyLine>,
    pub exchanges: Vec<ExchangeLine>,
    pub outcomes: Vec<OutcomeLine>,
    pub uptime: Vec<UptimeLine>,
    pub maintenance: Vec<MaintenanceLine>,
    pub subscriptions: SubscriptionSummary,
    pub incidents: Vec<Incident>,
    pub sla: Vec<SlaLine>,
}

/// Share of a probe's expected checks below which its history is called incomplete.
const HISTORY_MIN_COVERAGE: f64 = 90.0;

/// Builds the report. `inputs.period` must not be in the future (see `Period::not_future`).
pub fn build(inputs: &Inputs) -> Report {
    let Inputs { period, now, state, .. } = inputs;
    let period = *period;
    let today = local_date(*now);
    let last = (period.end() - Duration::days(1)).min(today);
    let partial = period.end() > today;
    let (from_key, to_key) = (period.first().to_string(), period.end().to_string());
    let rollups: Vec<_> = state.traffic_rollups.range(&from_key, &to_key).filter(|r| r.day <= last).collect();

    // Coverage: which node published which day.
    let mut nodes: BTreeSet<String> = inputs.members.iter().cloned().collect();
    nodes.extend(rollups.iter().map(|r| r.node.clone()));
    let mut first_day: BTreeMap<&str, NaiveDate> = BTreeMap::new();
    for r in state.traffic_rollups.values() {
        let e = first_day.entry(r.node.as_str()).or_insert(r.day);
        *e = (*e).min(r.day);
    }
    let mut cov_nodes = Vec::new();
    let mut notes = Vec::new();
    for n in &nodes {
        let mine: Vec<_> = rollups.iter().filter(|r| &r.node == n).collect();
        let have: BTreeSet<NaiveDate> = mine.iter().map(|r| r.day).collect();
        let start = first_day.get(n.as_str()).copied();
        let missing: Vec<NaiveDate> = match start {
            Some(s) => period.days().filter(|d| *d <= last && *d >= s && !have.contains(d)).collect(),
            None => Vec::new(),
        };
        if start.is_none() {
            notes.push(format!("node {n} has published no traffic rollup yet: its traffic is not counted"));
        } else if !missing.is_empty() {
            notes.push(format!(
                "node {n} has not published {} day(s) of this period (it may be down): their traffic is not counted",
                missing.len()
            ));
        }
        let stale: Vec<_> = mine.iter().filter(|r| r.day < today && !r.complete).map(|r| r.day).collect();
        if !stale.is_empty() {
            notes.push(format!("node {n}: {} past day(s) were published before the day ended (counted as far as known)", stale.len()));
        }
        cov_nodes.push(NodeCoverage {
            node: n.clone(),
            days_published: mine.len(),
            days_complete: mine.iter().filter(|r| r.complete).count(),
            last_as_of: mine.iter().map(|r| r.as_of).max(),
            missing_days: missing,
            unlogged: mine.iter().map(|r| r.unlogged).sum(),
        });
    }
    let unlogged: u64 = cov_nodes.iter().map(|n| n.unlogged).sum();
    if unlogged > 0 {
        notes.push(format!("{unlogged} transaction(s) could not be written to an audit log and are missing from every figure"));
    }
    let today_included = rollups.iter().any(|r| r.day == today);
    if partial {
        notes.push(format!("the period has not ended: figures run up to {} (the nodes' last rollups)", last));
    }

    // Traffic.
    let mut totals = Acc::default();
    let mut series: BTreeMap<String, Acc> = BTreeMap::new();
    let granularity = if period.is_year() { "month" } else { "day" };
    for p in period.months() {
        if period.is_year() {
            series.insert(p.label(), Acc::default());
        }
    }
    if !period.is_year() {
        for d in period.days().filter(|d| *d <= last) {
            series.insert(d.to_string(), Acc::default());
        }
    }
    let mut all_rows: Vec<&TrafficRow> = Vec::new();
    for r in &rollups {
        let label = if period.is_year() { Period::month_of(r.day).label() } else { r.day.to_string() };
        let acc = series.entry(label).or_default();
        for row in &r.rows {
            acc.add(row);
            totals.add(row);
            all_rows.push(row);
        }
    }
    let merged = merge_rows(all_rows);

    let mut by_service: BTreeMap<(String, String), Acc> = BTreeMap::new();
    let mut by_agency: BTreeMap<String, Acc> = BTreeMap::new();
    let mut by_pair: BTreeMap<(String, String, String, String), Acc> = BTreeMap::new();
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    for r in &merged {
        by_service.entry((r.service.clone(), r.version.clone())).or_default().add(r);
        by_agency.entry(r.consumer_agency.clone()).or_default().add(r);
        by_pair.entry((r.consumer_agency.clone(), r.consumer_system.clone(), r.service.clone(), r.version.clone())).or_default().add(r);
        *by_outcome.entry(r.outcome.clone()).or_default() += r.count;
    }
    let services: Vec<ServiceLine> = by_service
        .into_iter()
        .map(|((service, version), acc)| {
            let svc = state.services.get(&service);
            ServiceLine {
                name: svc.map(|s| s.name.clone()).unwrap_or_default(),
                provider_agency: state.provider_agency(&service).unwrap_or_default().to_owned(),
                service,
                version,
                counts: acc.finish(),
            }
        })
        .collect();
    let agencies = by_agency
        .into_iter()
        .map(|(agency, acc)| AgencyLine {
            name: state.agencies.get(&agency).map(|a| a.name.clone()).unwrap_or_default(),
            agency,
            counts: acc.finish(),
        })
        .collect();
    let exchanges = by_pair
        .into_iter()
        .map(|((consumer_agency, consumer_system, service, version), acc)| ExchangeLine {
            consumer_agency,
            consumer_system,
            service,
            version,
            counts: acc.finish(),
        })
        .collect();
    let mut outcomes: Vec<OutcomeLine> =
        by_outcome.into_iter().map(|(outcome, count)| OutcomeLine { class: OutcomeClass::of(&outcome), outcome, count }).collect();
    outcomes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.outcome.cmp(&b.outcome)));
    let series = series.into_iter().map(|(label, acc)| SeriesPoint { label, counts: acc.finish() }).collect();

    let uptime = uptime_lines(inputs, last);
    let maintenance = maintenance_lines(inputs);
    let subscriptions = subscription_summary(inputs, today);
    let connections = Connections {
        agencies: state.agencies.len(),
        systems: state.systems.len(),
        services: state.services.len(),
        subscriptions_active: state.subscriptions.values().filter(|s| s.state == SubscriptionState::Active).count(),
    };
    if uptime.iter().any(|u| u.history_incomplete) {
        notes.push(format!(
            "some probe histories on {} are incomplete (see the uptime table); ask another node for its report",
            inputs.node
        ));
    }
    let totals = totals.finish();
    let sla = sla_lines(inputs, &services, &uptime, &subscriptions);
    Report {
        period: period.label(),
        kind: if period.is_year() { "yearly" } else { "monthly" },
        from: period.first(),
        to: last,
        generated_at: *now,
        generated_by: inputs.node.clone(),
        targets: inputs.targets.clone(),
        coverage: Coverage { partial, today_included, nodes: cov_nodes, unlogged, notes },
        connections,
        totals,
        granularity,
        series,
        services,
        agencies,
        exchanges,
        outcomes,
        uptime,
        maintenance,
        subscriptions,
        incidents: inputs.incidents.clone(),
        sla,
    }
}

/// Probe daily rows are UTC days: the period's uptime sums the UTC days from its first to its
/// last local date (7 hours earlier than the local days; the history keeps no finer rows for
/// more than a week).
fn uptime_lines(inputs: &Inputs, last: NaiveDate) -> Vec<UptimeLine> {
    let first = inputs.period.first().and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp());
    let end = (last + Duration::days(1)).and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp());
    let mut out = Vec::new();
    for p in &inputs.probes {
        let mut a = Aggregate::default();
        let mut first_seen = None;
        for (start, day) in p.days.iter().filter(|(s, _)| *s >= first && *s < end) {
            a.merge(day);
            first_seen = Some(first_seen.map_or(*start, |f: i64| f.min(*start)));
        }
        let until = end.min(inputs.now.timestamp());
        let coverage = first_seen.map(|f| {
            let expected = ((until - f).max(1) as f64 / f64::from(p.interval_s.max(1))).max(1.0);
            round2((100.0 * a.checks as f64 / expected).min(100.0))
        });
        out.push(UptimeLine {
            target: p.target.clone(),
            system: p.system.clone(),
            agency: p.agency.clone(),
            checks: a.checks,
            up: a.up,
            degraded: a.degraded,
            down: a.down,
            uptime_pct: a.uptime().map(|u| round2(100.0 * u)),
            history_coverage_pct: coverage,
            history_incomplete: coverage.is_none_or(|c| c < HISTORY_MIN_COVERAGE),
        });
    }
    out.sort_by(|a, b| a.system.cmp(&b.system).then_with(|| a.target.cmp(&b.target)));
    out
}

fn maintenance_lines(inputs: &Inputs) -> Vec<MaintenanceLine> {
    let (from, _) = local_day_bounds(inputs.period.first());
    let (to, _) = local_day_bounds(inputs.period.end());
    let mut out: Vec<MaintenanceLine> = inputs
        .state
        .maintenance
        .values()
        .filter(|w| w.start < to && w.end > from)
        .map(|w| MaintenanceLine {
            id: w.id.clone(),
            scope: match &w.scope {
                MaintenanceScope::Platform => "platform".into(),
                MaintenanceScope::Nodes { nodes } => format!("nodes: {}", nodes.join(" ")),
                MaintenanceScope::Services { services } => format!("services: {}", services.join(" ")),
            },
            start: w.start,
            end: w.end,
            minutes: (w.end - w.start).num_minutes(),
            status: w.status_at(inputs.now),
            emergency: w.emergency,
            office_hours: w.office_hours,
            notice_hours: (w.start - w.announced_at).num_hours(),
            reason_vi: w.reason.vi.clone(),
            reason_en: w.reason.en.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
    out
}

fn subscription_summary(inputs: &Inputs, today: NaiveDate) -> SubscriptionSummary {
    let (from, _) = local_day_bounds(inputs.period.first());
    let (to, _) = local_day_bounds(inputs.period.end());
    let mut s = SubscriptionSummary::default();
    for sub in inputs.state.subscriptions.values().filter(|x| x.requested_at >= from && x.requested_at < to) {
        let decided_at = sub
            .history
            .iter()
            .find(|e| matches!(e.to, SubscriptionState::Active | SubscriptionState::Rejected | SubscriptionState::Revoked))
            .map(|e| e.at);
        let on_time = match decided_at {
            Some(t) => Some(local_date(t) <= sub.decision_due),
            None if sub.decision_due < today => Some(false),
            None => None,
        };
        s.requested += 1;
        if decided_at.is_some() {
            s.decided += 1;
            if on_time == Some(true) {
                s.decided_on_time += 1;
            }
        } else if on_time == Some(false) {
            s.open_overdue += 1;
        }
        s.items.push(SubscriptionLine {
            id: sub.id.clone(),
            consumer_system: sub.consumer_system.clone(),
            service: sub.service.clone(),
            version: sub.version.clone(),
            environment: sub.environment.as_str(),
            requested_at: sub.requested_at,
            decision_due: sub.decision_due,
            state: sub.state.as_str(),
            decided_at,
            on_time,
        });
    }
    s.items.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then_with(|| a.id.cmp(&b.id)));
    s
}

fn sla_lines(inputs: &Inputs, services: &[ServiceLine], uptime: &[UptimeLine], subs: &SubscriptionSummary) -> Vec<SlaLine> {
    let t = &inputs.targets;
    let pct = |x: Option<f64>| x.map_or("—".to_owned(), |v| format!("{v:.2} %"));
    let mut out = Vec::new();
    for u in uptime {
        out.push(SlaLine {
            subject: u.target.clone(),
            metric: "availability",
            target: format!("≥ {:.2} %", t.availability_pct),
            actual: pct(u.uptime_pct),
            met: u.uptime_pct.map(|v| v >= t.availability_pct),
        });
    }
    for s in services {
        let subject = if s.service.is_empty() { "(unrouted)".to_owned() } else { format!("service:{}:{}", s.service, s.version) };
        if s.service.is_empty() {
            continue;
        }
        out.push(SlaLine {
            subject: subject.clone(),
            metric: "delivery_rate",
            target: format!("≥ {:.2} %", t.success_rate_pct),
            actual: pct(s.counts.delivery_rate_pct),
            met: s.counts.delivery_rate_pct.map(|v| v >= t.success_rate_pct),
        });
        out.push(SlaLine {
            subject,
            metric: "latency_p95",
            target: format!("≤ {} ms", t.latency_p95_ms),
            actual: s.counts.latency_p95_ms.map_or("—".into(), |v| format!("{v:.1} ms")),
            met: s.counts.latency_p95_ms.map(|v| v <= t.latency_p95_ms as f64),
        });
    }
    let judged = subs.decided + subs.open_overdue;
    out.push(SlaLine {
        subject: "platform".into(),
        metric: "subscription_decisions",
        target: format!("within {} working days", t.subscription_decision_working_days),
        actual: format!("{} of {} on time", subs.decided_on_time, judged),
        met: (judged > 0).then_some(subs.decided_on_time == judged),
    });
    // Resolved incidents, and open ones already past the limit (late whatever happens next).
    let judged: Vec<bool> = inputs.incidents.iter().filter_map(|i| i.fixed_within(t.incident_fix_hours, inputs.now)).collect();
    out.push(SlaLine {
        subject: "platform".into(),
        metric: "incident_fix",
        target: format!("within {} hours", t.incident_fix_hours),
        actual: format!("{} of {} fixed in time", judged.iter().filter(|ok| **ok).count(), judged.len()),
        met: (!judged.is_empty()).then(|| judged.iter().all(|ok| *ok)),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::traffic::TrafficRollup;
    use crate::registry::Entity;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn rollup(node: &str, day: &str, ok: u64, failed: u64, us: u64) -> TrafficRollup {
        let row = |outcome: &str, count: u64| {
            let mut latency = LatencyHistogram::default();
            (0..count).for_each(|_| latency.record(us));
            TrafficRow {
                consumer_agency: "A".into(),
                consumer_system: "s".into(),
                service: "dancu".into(),
                version: "v1".into(),
                outcome: outcome.into(),
                count,
                latency,
                ..TrafficRow::default()
            }
        };
        let day = d(day);
        TrafficRollup {
            id: TrafficRollup::key_of(day, node),
            node: node.into(),
            day,
            as_of: local_day_bounds(day).1 + Duration::minutes(20),
            complete: true,
            unlogged: 0,
            rows: vec![row("OK", ok), row("UPSTREAM_TIMEOUT", failed)],
        }
    }

    fn inputs(state: &State, period: Period, now: &str) -> Report {
        build(&Inputs {
            period,
            now: DateTime::parse_from_rfc3339(now).unwrap().with_timezone(&Utc),
            node: "n3".into(),
            members: vec!["n1".into(), "n2".into(), "n3".into()],
            state,
            probes: vec![],
            incidents: vec![],
            targets: Targets {
                availability_pct: 99.5,
                success_rate_pct: 99.0,
                latency_p95_ms: 1000,
                subscription_decision_working_days: 5,
                incident_fix_hours: 24,
            },
        })
    }

    #[test]
    fn nodes_merge_gaps_are_named_and_years_sum_months() {
        let mut s = State::default();
        for r in [
            rollup("n1", "2026-11-01", 90, 0, 1_000),
            rollup("n2", "2026-11-01", 0, 10, 100_000),
            rollup("n1", "2026-11-03", 5, 0, 1_000),
            rollup("n2", "2026-10-31", 7, 0, 1_000),
        ] {
            s.traffic_rollups.load(r);
        }
        assert_eq!(TrafficRollup::TABLE, "traffic_rollups");
        let m = inputs(&s, Period::parse_month("2026-11").unwrap(), "2026-11-03T10:00:00Z");
        assert_eq!((m.totals.transactions, m.totals.success, m.totals.failed), (105, 95, 10));
        // The percentiles of the merged histograms: 10 slow calls of 105 are above p90.
        let p50 = m.totals.latency_p50_ms.unwrap();
        let p99 = m.totals.latency_p99_ms.unwrap();
        assert!((p50 - 1.0).abs() <= 1.0 / 16.0 && (p99 - 100.0).abs() <= 100.0 / 16.0, "{:?}", m.totals);
        assert_eq!(m.series.len(), 3, "1 to 3 November");
        assert!(m.coverage.partial && m.coverage.today_included);
        // n1 did not publish 2 November; n2 published nothing after 1 November; n3 nothing at all.
        let n = |name: &str| m.coverage.nodes.iter().find(|x| x.node == name).unwrap().clone();
        assert_eq!(n("n1").missing_days, vec![d("2026-11-02")]);
        assert_eq!(n("n2").missing_days, vec![d("2026-11-02"), d("2026-11-03")]);
        assert!(m.coverage.notes.iter().any(|x| x.contains("node n3 has published no traffic rollup")), "{:?}", m.coverage.notes);
        let sla: Vec<_> = m.sla.iter().filter(|l| l.metric == "delivery_rate").collect();
        assert_eq!(sla[0].met, Some(false), "95 of 105 admitted");
        // The year: October and November each in their month.
        let y = inputs(&s, Period::parse_year("2026").unwrap(), "2026-11-03T10:00:00Z");
        assert_eq!(y.series.len(), 12);
        let month = |l: &str| y.series.iter().find(|p| p.label == l).unwrap().counts.transactions;
        assert_eq!((month("2026-10"), month("2026-11"), month("2026-12")), (7, 105, 0));
        assert_eq!(y.totals.transactions, 112);
    }
}
