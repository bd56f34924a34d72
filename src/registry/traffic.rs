//! Replicated traffic rollups (O6): what each node's gateway carried on one Vietnam-time day,
//! summed per consumer × service version × outcome, with a latency histogram that merges
//! exactly across nodes and days.
//!
//! Each node computes its own rollups from its transaction audit log and publishes them with
//! `Command::PublishTrafficRollup`; the periodic report reads only these replicated rows, so any
//! node can produce it, including while the node that proxied the traffic is down.
//!
//! Invariants: pure data and arithmetic (no I/O, no clock); a rollup is keyed `{day}/{node}` and
//! replaces the previous one for that key only if it is at least as recent (`as_of`), so
//! republishing is idempotent and a delayed older copy never wins; latency bucket boundaries are
//! part of the log format and never change (see [`bucket_of`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

/// Buckets of a [`LatencyHistogram`]: exact below 8 µs, then 8 linear sub-buckets per power of
/// two (bucket `8(e-2)+m` holds `[(8+m)·2^(e-3), (9+m)·2^(e-3))` µs for `e ≥ 3`). 256 buckets
/// reach past 2^33 µs (2.4 hours), beyond any gateway timeout.
pub const BUCKETS: u16 = 256;

/// Bucket of a latency in microseconds.
pub fn bucket_of(us: u64) -> u16 {
    if us < 8 {
        return us as u16;
    }
    let e = 63 - us.leading_zeros() as u64; // ≥ 3
    let m = (us >> (e - 3)) & 7;
    (8 * (e - 2) + m).min(u64::from(BUCKETS - 1)) as u16
}

/// Lowest latency (µs) of bucket `b`.
pub fn bucket_low(b: u16) -> u64 {
    let b = u64::from(b);
    if b < 8 {
        return b;
    }
    let (e, m) = (b / 8 + 2, b % 8);
    (8 + m) << (e - 3)
}

/// The value reported for a bucket: its midpoint. For any latency `v` in the bucket,
/// `|midpoint − v| ≤ v / 16` (6.25 %): a bucket at `2^e` is `2^(e-3)` wide.
pub fn bucket_mid(b: u16) -> u64 {
    let lo = bucket_low(b);
    let width = bucket_low(b + 1).saturating_sub(lo).max(1);
    lo + width / 2
}

/// Counts per latency bucket, sparse: `[bucket, count]` pairs sorted by bucket, counts > 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LatencyHistogram(pub Vec<[u64; 2]>);

impl LatencyHistogram {
    /// Counts one latency.
    pub fn record(&mut self, us: u64) {
        self.add_bucket(bucket_of(us), 1);
    }

    fn add_bucket(&mut self, b: u16, n: u64) {
        let b = u64::from(b);
        match self.0.binary_search_by_key(&b, |p| p[0]) {
            Ok(i) => self.0[i][1] += n,
            Err(i) => self.0.insert(i, [b, n]),
        }
    }

    /// Adds another histogram (another node's, another day's): exact.
    pub fn merge(&mut self, o: &LatencyHistogram) {
        for [b, n] in &o.0 {
            if *n > 0 {
                self.add_bucket((*b).min(u64::from(BUCKETS - 1)) as u16, *n);
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|p| p[1]).sum()
    }

    /// The nearest-rank `q`-quantile (0 < q ≤ 1) in microseconds, as its bucket's midpoint:
    /// within 6.25 % of the exact nearest-rank value. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for [b, c] in &self.0 {
            seen += c;
            if seen >= rank {
                return Some(bucket_mid((*b).min(u64::from(BUCKETS - 1)) as u16));
            }
        }
        None
    }
}

/// How a transaction ended, for success rates (HN App. 01 §3.1.1: `00` success, `01` failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// `OK`: the provider answered with a success status and it reached the consumer.
    Success,
    /// Not admitted, or ended by the consumer: authentication, subscription, limits,
    /// maintenance, malformed requests, aborted by the consumer.
    Refused,
    /// Admitted but the exchange failed: the provider was unreachable, timed out, answered
    /// with an error status, or a stream broke; or the gateway failed internally.
    Failed,
}

impl OutcomeClass {
    /// The class of a gateway outcome code.
    pub fn of(outcome: &str) -> OutcomeClass {
        match outcome {
            "OK" => OutcomeClass::Success,
            o if o.starts_with("UPSTREAM_") => OutcomeClass::Failed,
            "BODY_STREAM_FAILED" | "INTERNAL_ERROR" | "SIGNATURE_SIGNING_FAILED" | "REVOCATION_UNAVAILABLE" => OutcomeClass::Failed,
            _ => OutcomeClass::Refused,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Success => "success",
            OutcomeClass::Refused => "refused",
            OutcomeClass::Failed => "failed",
        }
    }
}

/// One line of a rollup: a consumer system's calls to one service version ending with one
/// outcome code. Keys that do not apply (refused before authentication or routing) are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrafficRow {
    pub consumer_agency: String,
    pub consumer_system: String,
    pub service: String,
    pub version: String,
    /// The gateway's outcome code (`OK`, `SUBSCRIPTION_REQUIRED`, `UPSTREAM_TIMEOUT`, ...).
    pub outcome: String,
    pub count: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Total time in the gateway (including the provider), microseconds.
    pub latency: LatencyHistogram,
}

impl TrafficRow {
    pub fn class(&self) -> OutcomeClass {
        OutcomeClass::of(&self.outcome)
    }
}

/// One node's traffic on one local day (Asia/Ho_Chi_Minh), as far as its audit log knew at
/// `as_of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficRollup {
    /// `{day}/{node}` (the table key).
    pub id: String,
    pub node: String,
    pub day: NaiveDate,
    /// The instant up to which the node's audit log was read.
    pub as_of: DateTime<Utc>,
    /// `as_of` is after the day ended: nothing more will be added.
    pub complete: bool,
    /// Transactions the audit writer could not log that day (`gap` entries): known missing.
    #[serde(default)]
    pub unlogged: u64,
    /// Sorted by (consumer agency, system, service, version, outcome), keys unique.
    pub rows: Vec<TrafficRow>,
}

impl TrafficRollup {
    pub fn key_of(day: NaiveDate, node: &str) -> String {
        format!("{day}/{node}")
    }
}

/// The UTC instants at which local (UTC+7) date `day` starts and ends.
pub fn local_day_bounds(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let from = day.and_time(NaiveTime::MIN).and_utc() - Duration::hours(7);
    (from, from + Duration::days(1))
}

/// The local (UTC+7) date of an instant.
pub fn local_date(t: DateTime<Utc>) -> NaiveDate {
    (t + Duration::hours(7)).date_naive()
}

/// Sums rows with equal keys (merging histograms); sorted by key.
pub fn merge_rows<'a>(rows: impl IntoIterator<Item = &'a TrafficRow>) -> Vec<TrafficRow> {
    let mut m: BTreeMap<(&str, &str, &str, &str, &str), TrafficRow> = BTreeMap::new();
    for r in rows {
        let e = m.entry((&r.consumer_agency, &r.consumer_system, &r.service, &r.version, &r.outcome)).or_insert_with(|| TrafficRow {
            latency: LatencyHistogram::default(),
            count: 0,
            request_bytes: 0,
            response_bytes: 0,
            ..r.clone()
        });
        e.count += r.count;
        e.request_bytes = e.request_bytes.saturating_add(r.request_bytes);
        e.response_bytes = e.response_bytes.saturating_add(r.response_bytes);
        e.latency.merge(&r.latency);
    }
    m.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_within_a_sixteenth() {
        for b in 0..BUCKETS - 1 {
            assert!(bucket_low(b) < bucket_low(b + 1), "bucket {b}");
            assert_eq!(bucket_of(bucket_low(b)), b);
            assert_eq!(bucket_of(bucket_low(b + 1) - 1), b);
        }
        for v in [0u64, 1, 7, 8, 9, 15, 16, 17, 100, 999, 1_000, 12_345, 250_000, 1_000_000, 30_000_000, 600_000_000] {
            let mid = bucket_mid(bucket_of(v));
            assert!(mid.abs_diff(v) * 16 <= v.max(1), "{v} -> {mid}");
        }
    }

    #[test]
    fn quantiles_merge_across_nodes_exactly() {
        // Node A: 90 fast calls (1 ms); node B: 10 slow calls (100 ms).
        let (mut a, mut b) = (LatencyHistogram::default(), LatencyHistogram::default());
        (0..90).for_each(|_| a.record(1_000));
        (0..10).for_each(|_| b.record(100_000));
        let mut all = a.clone();
        all.merge(&b);
        assert_eq!(all.count(), 100);
        let within = |got: Option<u64>, want: u64| got.is_some_and(|g| g.abs_diff(want) * 16 <= want);
        assert!(within(all.quantile(0.5), 1_000), "{:?}", all.quantile(0.5));
        assert!(within(all.quantile(0.9), 1_000));
        assert!(within(all.quantile(0.91), 100_000));
        assert!(within(all.quantile(0.99), 100_000));
        // Order of merging does not matter.
        let mut other = b.clone();
        other.merge(&a);
        assert_eq!(other, all);
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
        // The serialised form is compact pairs.
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("[[{},90]]", bucket_of(1_000)));
    }

    #[test]
    fn outcome_classes() {
        assert_eq!(OutcomeClass::of("OK"), OutcomeClass::Success);
        assert_eq!(OutcomeClass::of("UPSTREAM_TIMEOUT"), OutcomeClass::Failed);
        assert_eq!(OutcomeClass::of("UPSTREAM_ERROR_STATUS"), OutcomeClass::Failed);
        assert_eq!(OutcomeClass::of("SUBSCRIPTION_REQUIRED"), OutcomeClass::Refused);
        assert_eq!(OutcomeClass::of("MAINTENANCE"), OutcomeClass::Refused);
    }

    #[test]
    fn local_days_are_utc_plus_seven() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let (from, to) = local_day_bounds(d);
        assert_eq!(from.to_rfc3339(), "2026-10-31T17:00:00+00:00");
        assert_eq!(to.to_rfc3339(), "2026-11-01T17:00:00+00:00");
        assert_eq!(local_date(from), d);
        assert_eq!(local_date(to - Duration::seconds(1)), d);
    }
}
