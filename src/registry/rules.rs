//! Field rules and calendar rules shared by `apply`, the importer and the admin API's early checks.
//!
//! Invariants: pure functions of their arguments; each failure names the field and says what a
//! valid value looks like.

use chrono::{Datelike, Duration, FixedOffset, NaiveDate, Weekday};

use super::error::RegistryError;
use super::model::Timestamp;

/// Days a newer version must have been published before an old one may retire (R7).
pub const OVERLAP_DAYS: i64 = 180;
/// Notice days before a version is decommissioned (R7).
pub const NOTICE_DAYS: i64 = 60;
/// Working days a provider has to decide on a subscription request (R5).
pub const DECISION_WORKING_DAYS: u32 = 5;

fn invalid(field: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Invalid { field: field.to_owned(), reason: reason.into() }
}

/// QĐ 20/2020 electronic identifier: `NNN.NN.NN.ANN`, e.g. `000.00.00.H31`.
pub fn agency_code(field: &str, code: &str) -> Result<(), RegistryError> {
    let b = code.as_bytes();
    let ok = b.len() == 13
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'.'
        && b[4..6].iter().all(u8::is_ascii_digit)
        && b[6] == b'.'
        && b[7..9].iter().all(u8::is_ascii_digit)
        && b[9] == b'.'
        && b[10].is_ascii_uppercase()
        && b[11..13].iter().all(u8::is_ascii_digit);
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{code:?} is not an identifier code of shape NNN.NN.NN.ANN (QĐ 20/2020), e.g. 000.00.00.H31")))
    }
}

/// Lower-case slug: `[a-z0-9][a-z0-9-]{0,62}`, used for system ids, service contexts, catalog codes.
pub fn slug(field: &str, s: &str) -> Result<(), RegistryError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{s:?} must be 1-63 characters of a-z, 0-9 and '-', not starting with '-'")))
    }
}

/// Version labels as used in URLs: `v1`, `v2.1`.
pub fn version_label(field: &str, v: &str) -> Result<(), RegistryError> {
    let rest = v.strip_prefix('v').unwrap_or("");
    let ok = !rest.is_empty() && v.len() <= 16 && rest.split('.').all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{v:?} is not a version label like v1 or v2.1")))
    }
}

/// Non-empty, trimmed, bounded human text (names, reasons).
pub fn text(field: &str, s: &str, max: usize) -> Result<(), RegistryError> {
    if s.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if s.chars().count() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    Ok(())
}

/// Upstream URLs: absolute http(s) with a host.
pub fn upstream_url(field: &str, url: &str) -> Result<(), RegistryError> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => Ok(()),
        _ => Err(invalid(field, format!("{url:?} must be an absolute http:// or https:// URL with a host"))),
    }
}

/// NĐ 85/2016 security levels 1..=5.
pub fn security_level(field: &str, level: u8) -> Result<(), RegistryError> {
    if (1..=5).contains(&level) {
        Ok(())
    } else {
        Err(invalid(field, format!("{level} is not a security level; use 1 to 5 (NĐ 85/2016)")))
    }
}

/// Vietnam's civil time: UTC+7, no daylight saving.
pub fn vietnam() -> FixedOffset {
    // 7 hours is always a valid offset.
    FixedOffset::east_opt(7 * 3600).unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"))
}

pub fn local_date(t: Timestamp) -> NaiveDate {
    t.with_timezone(&vietnam()).date_naive()
}

fn is_working_day(d: NaiveDate, holidays: &[NaiveDate]) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) && !holidays.contains(&d)
}

/// The local date `n` working days after the local date of `from` (weekends and holidays skipped).
pub fn add_working_days(from: Timestamp, n: u32, holidays: &[NaiveDate]) -> NaiveDate {
    let mut d = local_date(from);
    let mut left = n;
    while left > 0 {
        d += Duration::days(1);
        if is_working_day(d, holidays) {
            left -= 1;
        }
    }
    d
}

/// Office hours in Vietnam (O3 prefers maintenance outside them): Monday to Friday,
/// 07:30 to 17:00 local time, public holidays excepted.
pub const OFFICE_OPEN: (u32, u32) = (7, 30);
pub const OFFICE_CLOSE: (u32, u32) = (17, 0);

/// Whether `[start, end)` overlaps office hours on some working day.
pub fn touches_office_hours(start: Timestamp, end: Timestamp, holidays: &[NaiveDate]) -> bool {
    let tz = vietnam();
    let mut day = local_date(start);
    let last = local_date(end);
    // Bounded by the window's length (windows are at most a few weeks long).
    while day <= last {
        if is_working_day(day, holidays) {
            let at = |(h, m): (u32, u32)| day.and_hms_opt(h, m, 0).and_then(|n| n.and_local_timezone(tz).single()).map(|t| t.to_utc());
            if let (Some(open), Some(close)) = (at(OFFICE_OPEN), at(OFFICE_CLOSE)) {
                if start < close && open < end {
                    return true;
                }
            }
        }
        day += Duration::days(1);
    }
    false
}

/// A local (Vietnam) rendering of an instant for notices: `2026-11-30 22:00 (UTC+7)`.
pub fn local_time(t: Timestamp) -> String {
    t.with_timezone(&vietnam()).format("%Y-%m-%d %H:%M (UTC+7)").to_string()
}

/// `"7d"`, `"24h"`, `"30m"`, `"45s"` (or a sum like `"1d12h"`) as seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !num.is_empty() {
        return None;
    }
    Some(total)
}

/// Seconds as the shortest `7d`, `24h`, `90m` or `45s` form that is exact.
pub fn format_duration(secs: u64) -> String {
    for (unit, name) in [(86_400, "d"), (3_600, "h"), (60, "m")] {
        if secs >= unit && secs % unit == 0 {
            return format!("{}{name}", secs / unit);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn agency_codes() {
        assert!(agency_code("c", "000.00.00.H31").is_ok());
        assert!(agency_code("c", "123.45.67.A01").is_ok());
        for bad in ["", "000.00.00.h31", "000.00.00H31", "00.00.00.H31", "000.00.00.H3", "000-00-00-H31"] {
            assert!(agency_code("c", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slugs_and_versions() {
        assert!(slug("s", "hp-dancu").is_ok());
        assert!(slug("s", "-x").is_err());
        assert!(slug("s", "Bad").is_err());
        assert!(version_label("v", "v1").is_ok());
        assert!(version_label("v", "v2.10").is_ok());
        assert!(version_label("v", "1").is_err());
        assert!(version_label("v", "v1.").is_err());
    }

    #[test]
    fn office_hours_are_weekdays_0730_to_1700_local_without_holidays() {
        let utc = |d, h, m| chrono::Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
        // Monday 2026-11-23: 07:30 local = 00:30 UTC, 17:00 local = 10:00 UTC.
        assert!(touches_office_hours(utc(23, 2, 0), utc(23, 3, 0), &[]));
        assert!(!touches_office_hours(utc(23, 10, 0), utc(23, 23, 0), &[]), "17:00 to 06:00 local is outside");
        assert!(touches_office_hours(utc(23, 9, 59), utc(23, 11, 0), &[]), "ends after 16:59 local");
        assert!(!touches_office_hours(utc(23, 0, 0), utc(23, 0, 30), &[]), "07:00-07:30 local is before opening");
        // Saturday 2026-11-28 all day.
        assert!(!touches_office_hours(utc(27, 17, 0), utc(29, 17, 0), &[]));
        let hol = [NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()];
        assert!(!touches_office_hours(utc(23, 2, 0), utc(23, 3, 0), &hol), "a public holiday has no office hours");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Some(7 * 86_400));
        assert_eq!(parse_duration("24h"), Some(86_400));
        assert_eq!(parse_duration("1d12h"), Some(129_600));
        assert_eq!(parse_duration("0s"), Some(0));
        for bad in ["", "7", "d", "7x", "-1d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(7 * 86_400), "7d");
        assert_eq!(format_duration(86_400), "1d");
        assert_eq!(format_duration(90), "90s");
    }

    #[test]
    fn five_working_days_skip_weekend_and_holidays() {
        // Friday 2026-11-20 10:00 local = 03:00 UTC
        let fri = chrono::Utc.with_ymd_and_hms(2026, 11, 20, 3, 0, 0).unwrap();
        assert_eq!(add_working_days(fri, 5, &[]), NaiveDate::from_ymd_opt(2026, 11, 27).unwrap());
        let hol = [NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()];
        assert_eq!(add_working_days(fri, 5, &hol), NaiveDate::from_ymd_opt(2026, 11, 30).unwrap());
        // 20:00 UTC Sunday is already Monday in Vietnam.
        let sun_utc = chrono::Utc.with_ymd_and_hms(2026, 11, 22, 20, 0, 0).unwrap();
        assert_eq!(local_date(sun_utc), NaiveDate::from_ymd_opt(2026, 11, 23).unwrap());
    }
}
