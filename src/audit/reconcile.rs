//! Reconciliation ("đối soát", G9): per local day, how many transactions each consumer system
//! made to each service version with each outcome; the RFC 4180 CSV exchanged with providers;
//! and the comparison of ours with theirs.
//!
//! Invariants: a day is a local date in Asia/Ho_Chi_Minh (UTC+7, no daylight saving) and a
//! record belongs to the day its request arrived; records known to be missing (`gap` entries
//! that day) appear as one `AUDIT_GAP` row with empty keys, so an incomplete count never looks
//! exact; rows are sorted by key and keys are unique in what we produce and what we accept.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::record::Body;
use super::search::{scan, windows};
use super::AuditError;

/// The outcome of the row that counts records the writer could not log.
pub const GAP_OUTCOME: &str = "AUDIT_GAP";

const COLUMNS: [&str; 7] = ["date", "consumer_agency", "consumer_system", "service", "version", "outcome", "count"];

/// One line of the reconciliation: consumer × service version × outcome on one day.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CountRow {
    pub date: NaiveDate,
    pub consumer_agency: String,
    pub consumer_system: String,
    pub service: String,
    pub version: String,
    pub outcome: String,
    pub count: u64,
}

type Key = (NaiveDate, String, String, String, String, String);

impl CountRow {
    fn key(&self) -> Key {
        (
            self.date,
            self.consumer_agency.clone(),
            self.consumer_system.clone(),
            self.service.clone(),
            self.version.clone(),
            self.outcome.clone(),
        )
    }
}

/// Which side a difference is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// We counted transactions the other side has no row for.
    MissingInTheirs,
    /// They counted transactions we have no row for.
    MissingInOurs,
    /// Both have the row with different counts.
    CountMismatch,
}

impl DifferenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::MissingInTheirs => "missing_in_theirs",
            DifferenceKind::MissingInOurs => "missing_in_ours",
            DifferenceKind::CountMismatch => "count_mismatch",
        }
    }
}

/// One row on which the two sides disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub kind: DifferenceKind,
    pub date: NaiveDate,
    pub consumer_agency: String,
    pub consumer_system: String,
    pub service: String,
    pub version: String,
    pub outcome: String,
    /// 0 when we have no such row.
    pub ours: u64,
    /// 0 when they have no such row.
    pub theirs: u64,
}

/// Counts for the local date `date` over every node's segments in `dir`.
pub fn daily_counts(dir: &Path, date: NaiveDate) -> Result<Vec<CountRow>, AuditError> {
    let (from, to) = day_bounds(date);
    let mut counts: BTreeMap<Key, u64> = BTreeMap::new();
    for w in windows(dir, None)?.into_iter().filter(|w| w.overlaps(Some(from), Some(to))) {
        scan(&w.seg.path, |_, body| match body {
            Body::Rec(r) if r.at >= from && r.at < to => {
                let k = (date, r.consumer_agency, r.consumer_system, r.service, r.version, r.outcome);
                *counts.entry(k).or_default() += 1;
            }
            Body::Gap(g) if g.at >= from && g.at < to => {
                let e = String::new;
                *counts.entry((date, e(), e(), e(), e(), GAP_OUTCOME.to_owned())).or_default() += g.dropped;
            }
            _ => {}
        })?;
    }
    Ok(counts.into_iter().map(|(k, count)| row(k, count)).collect())
}

/// The UTC instants at which local date `date` starts and ends.
pub(crate) fn day_bounds(date: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    crate::registry::traffic::local_day_bounds(date)
}

fn row(k: Key, count: u64) -> CountRow {
    let (date, consumer_agency, consumer_system, service, version, outcome) = k;
    CountRow { date, consumer_agency, consumer_system, service, version, outcome, count }
}

/// RFC 4180: the header `date,consumer_agency,consumer_system,service,version,outcome,count`,
/// then one row per line, CRLF line ends, fields quoted when they hold `,` `"` CR or LF.
pub fn to_csv(rows: &[CountRow]) -> String {
    let mut out = COLUMNS.join(",") + "\r\n";
    for r in rows {
        let date = r.date.to_string();
        let count = r.count.to_string();
        write_csv_row(&mut out, &[&date, &r.consumer_agency, &r.consumer_system, &r.service, &r.version, &r.outcome, &count]);
    }
    out
}

/// The differences as CSV: the key columns, then `kind,ours,theirs`.
pub fn differences_to_csv(diffs: &[Difference]) -> String {
    let mut out = COLUMNS[..6].join(",") + ",kind,ours,theirs\r\n";
    for d in diffs {
        let (date, ours, theirs) = (d.date.to_string(), d.ours.to_string(), d.theirs.to_string());
        let fields = [&date, &d.consumer_agency, &d.consumer_system, &d.service, &d.version, &d.outcome, d.kind.as_str(), &ours, &theirs];
        write_csv_row(&mut out, &fields);
    }
    out
}

/// Appends one RFC 4180 record (CRLF), quoting fields that hold `,` `"` CR or LF.
pub fn write_csv_row(out: &mut String, fields: &[&str]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if f.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(f);
        }
    }
    out.push_str("\r\n");
}

/// Reads a reconciliation CSV (ours or a provider's): RFC 4180, CRLF or LF, an optional UTF-8
/// BOM, the seven columns in any order (names case-insensitive; extra columns ignored), blank
/// lines ignored. Fields are trimmed. A key that appears twice is an error.
pub fn parse_csv(text: &str) -> Result<Vec<CountRow>, AuditError> {
    let mut records = records(text)?.into_iter();
    let Some((hline, header)) = records.next() else {
        return Err(AuditError::Csv { line: 1, reason: "the file is empty".into() });
    };
    let names: Vec<String> = header.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    let mut idx = [0usize; 7];
    for (slot, col) in idx.iter_mut().zip(COLUMNS) {
        *slot = names.iter().position(|n| n == col).ok_or_else(|| AuditError::Csv { line: hline, reason: format!("no column {col:?}") })?;
    }
    let mut seen: BTreeMap<Key, usize> = BTreeMap::new();
    let mut rows = Vec::new();
    for (line, rec) in records {
        let field = |i: usize| rec.get(idx[i]).map(|s| s.trim().to_owned());
        let (Some(date), Some(count)) = (field(0), field(6)) else {
            return Err(AuditError::Csv { line, reason: format!("{} fields, the header has {}", rec.len(), header.len()) });
        };
        let date = NaiveDate::parse_from_str(&date, "%Y-%m-%d")
            .map_err(|_| AuditError::Csv { line, reason: format!("date {date:?} is not YYYY-MM-DD") })?;
        let count = count.parse::<u64>().map_err(|_| AuditError::Csv { line, reason: format!("count {count:?} is not a whole number") })?;
        let text = |i: usize| field(i).unwrap_or_default();
        let r = CountRow {
            date,
            consumer_agency: text(1),
            consumer_system: text(2),
            service: text(3),
            version: text(4),
            outcome: text(5),
            count,
        };
        if let Some(first) = seen.insert(r.key(), line) {
            return Err(AuditError::Csv { line, reason: format!("the same date, consumer, service, version and outcome as line {first}") });
        }
        rows.push(r);
    }
    rows.sort();
    Ok(rows)
}

/// Splits RFC 4180 text into records, each with the line it starts on; skips blank lines.
fn records(text: &str) -> Result<Vec<(usize, Vec<String>)>, AuditError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let (mut line, mut row_line) = (1usize, 1usize);
    let (mut quoted, mut closed) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    quoted = false;
                    closed = true;
                }
                c => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !closed => quoted = true,
            '"' => {
                return Err(AuditError::Csv {
                    line,
                    reason: "a quote inside an unquoted field (quote the field and double the quote)".into(),
                })
            }
            ',' => {
                row.push(std::mem::take(&mut field));
                closed = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                let r = std::mem::take(&mut row);
                if !(r.len() == 1 && r[0].is_empty() && !closed) {
                    out.push((row_line, r));
                }
                closed = false;
                line += 1;
                row_line = line;
            }
            c if closed => return Err(AuditError::Csv { line, reason: format!("{c:?} after a closing quote") }),
            c => field.push(c),
        }
    }
    if quoted {
        return Err(AuditError::Csv { line: row_line, reason: "a quoted field is never closed".into() });
    }
    if !field.is_empty() || !row.is_empty() || closed {
        row.push(field);
        out.push((row_line, row));
    }
    Ok(out)
}

/// Rows on which `ours` and `theirs` disagree, sorted by key. A row absent on one side counts
/// as 0 there; equal counts are not differences. Duplicate keys on one side are summed.
pub fn compare(ours: &[CountRow], theirs: &[CountRow]) -> Vec<Difference> {
    let mut both: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for r in ours {
        both.entry(r.key()).or_default().0 += r.count;
    }
    for r in theirs {
        both.entry(r.key()).or_default().1 += r.count;
    }
    let mut out = Vec::new();
    for (k, (o, t)) in both {
        let kind = match (o, t) {
            _ if o == t => continue,
            (_, 0) => DifferenceKind::MissingInTheirs,
            (0, _) => DifferenceKind::MissingInOurs,
            _ => DifferenceKind::CountMismatch,
        };
        let (date, consumer_agency, consumer_system, service, version, outcome) = k;
        out.push(Difference { kind, date, consumer_agency, consumer_system, service, version, outcome, ours: o, theirs: t });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::log::tests::{key, rec, small_cfg, TestClock};
    use crate::audit::{AuditConfig, AuditLog};

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[tokio::test]
    async fn daily_counts_use_the_vietnam_day() {
        let dir = tempfile::tempdir().unwrap();
        // 16:30 UTC on 30 June is 23:30 on 30 June in Hanoi; 17:30 UTC is 00:30 on 1 July.
        let clock = TestClock::start("2025-06-30T16:30:00Z");
        let (log, task) =
            AuditLog::open_with_clock(dir.path(), "node-1", key(1), AuditConfig { queue_capacity: 2, ..small_cfg() }, clock.clock())
                .unwrap();
        let h = tokio::spawn(task.run(std::future::pending()));
        for i in 1..=20u64 {
            log.record(rec(i, clock.now()));
            log.flush().await.unwrap();
        }
        clock.advance(chrono::Duration::hours(1));
        for i in 21..=27u64 {
            log.record(rec(i, clock.now()));
        }
        log.flush().await.unwrap();
        drop(log);
        h.await.unwrap().unwrap();

        let june = daily_counts(dir.path(), d("2025-06-30")).unwrap();
        assert_eq!(june.iter().map(|r| r.count).sum::<u64>(), 20);
        let ok = june.iter().filter(|r| r.consumer_system == "sys-1" && r.service == "hotich" && r.outcome == "OK");
        // i in 1..=20, i % 3 == 1, i % 5 != 0, i % 7 != 0: 1, 4, 13, 16, 19 (two agencies by parity)
        assert_eq!(ok.map(|r| r.count).collect::<Vec<_>>(), [2, 3]);
        assert!(june.windows(2).all(|w| w[0] < w[1]));

        // On 1 July the queue of 2 was overrun before the writer caught up: counted as a gap.
        let july = daily_counts(dir.path(), d("2025-07-01")).unwrap();
        let gap = july.iter().find(|r| r.outcome == GAP_OUTCOME);
        let logged: u64 = july.iter().filter(|r| r.outcome != GAP_OUTCOME).map(|r| r.count).sum();
        assert_eq!(logged + gap.map_or(0, |g| g.count), 7, "{july:?}");
        assert!(daily_counts(dir.path(), d("2025-07-02")).unwrap().is_empty());
    }

    #[test]
    fn csv_round_trip_with_quoting() {
        let rows = vec![
            CountRow {
                date: d("2025-07-01"),
                consumer_agency: "000.00.00.H31".into(),
                consumer_system: "stp, \"hộ tịch\"".into(),
                service: "dancu".into(),
                version: "v1".into(),
                outcome: "OK".into(),
                count: 12,
            },
            CountRow {
                date: d("2025-07-01"),
                consumer_agency: "000.00.00.H31".into(),
                consumer_system: "line\nbreak".into(),
                service: "dancu".into(),
                version: "v1".into(),
                outcome: "UPSTREAM_TIMEOUT".into(),
                count: 1,
            },
        ];
        let csv = to_csv(&rows);
        assert!(csv.starts_with("date,consumer_agency,consumer_system,service,version,outcome,count\r\n"));
        assert!(csv.contains(",\"stp, \"\"hộ tịch\"\"\",dancu,"), "{csv}");
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(parse_csv(&csv).unwrap(), sorted);
        // LF line ends, a BOM, columns in another order, an extra column, blank lines.
        let provider = "\u{feff}Count,date,consumer_agency,consumer_system,service,version,outcome,note\n\
                        12,2025-07-01,000.00.00.H31,\"stp, \"\"hộ tịch\"\"\",dancu,v1,OK,x\n\n";
        assert_eq!(parse_csv(provider).unwrap(), vec![rows[0].clone()]);
    }

    #[test]
    fn csv_errors_say_where() {
        let h = "date,consumer_agency,consumer_system,service,version,outcome,count\n";
        for (text, line, what) in [
            ("", 1, "empty"),
            ("date,count\n", 1, "consumer_agency"),
            (&*format!("{h}2025-07-01,a,b,c,v1,OK,many\n"), 2, "count"),
            (&*format!("{h}2025-13-01,a,b,c,v1,OK,1\n"), 2, "date"),
            (&*format!("{h}2025-07-01,a,b,c,v1,OK,1\n2025-07-01,a,b,c,v1,OK,2\n"), 3, "line 2"),
            (&*format!("{h}2025-07-01,a,b,c,v1\n"), 2, "fields"),
            (&*format!("{h}2025-07-01,a\"b,b,c,v1,OK,1\n"), 2, "quote"),
            (&*format!("{h}2025-07-01,\"a,b,c,v1,OK,1\n"), 2, "never closed"),
        ] {
            let e = parse_csv(text).unwrap_err();
            let AuditError::Csv { line: l, reason } = &e else { panic!("{e}") };
            assert_eq!(*l, line, "{text:?}: {e}");
            assert!(reason.contains(what) || e.to_string().contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn compare_finds_each_kind() {
        let r = |sys: &str, outcome: &str, count: u64| CountRow {
            date: d("2025-07-01"),
            consumer_agency: "000.00.00.H31".into(),
            consumer_system: sys.into(),
            service: "dancu".into(),
            version: "v1".into(),
            outcome: outcome.into(),
            count,
        };
        let ours = vec![r("a", "OK", 10), r("b", "OK", 5), r("c", "SUBSCRIPTION_REQUIRED", 2), r("e", "OK", 1)];
        let theirs = vec![r("a", "OK", 10), r("b", "OK", 4), r("d", "OK", 3), r("e", "OK", 0)];
        let diffs = compare(&ours, &theirs);
        let got: Vec<(&str, DifferenceKind, u64, u64)> =
            diffs.iter().map(|x| (x.consumer_system.as_str(), x.kind, x.ours, x.theirs)).collect();
        assert_eq!(
            got,
            [
                ("b", DifferenceKind::CountMismatch, 5, 4),
                ("c", DifferenceKind::MissingInTheirs, 2, 0),
                ("d", DifferenceKind::MissingInOurs, 0, 3),
                ("e", DifferenceKind::MissingInTheirs, 1, 0),
            ]
        );
        let csv = differences_to_csv(&diffs);
        assert!(csv.starts_with("date,consumer_agency,consumer_system,service,version,outcome,kind,ours,theirs\r\n"));
        assert!(csv.contains("2025-07-01,000.00.00.H31,b,dancu,v1,OK,count_mismatch,5,4\r\n"), "{csv}");
        // Our own export compared with itself after a round trip: no differences.
        assert!(compare(&ours, &parse_csv(&to_csv(&ours)).unwrap()).is_empty());
    }
}
