//! The period a report covers: a calendar month or year in Vietnam time (UTC+7), parsed from
//! what an operator types (`2026-11`, `2026`) and checked against today.
//!
//! Invariants: a period is whole local days `[first, end)`; a period that has not started yet
//! is refused; the current period is allowed and marked partial (figures up to now).

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use super::ReportError;

/// A calendar month or year (local dates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Period {
    Month { year: i32, month: u32 },
    Year { year: i32 },
}

/// Oldest year a report may ask for (the appliance did not exist before).
const MIN_YEAR: i32 = 2000;

impl Period {
    /// `YYYY-MM`.
    pub fn parse_month(s: &str) -> Result<Period, ReportError> {
        let bad = || ReportError::Period(format!("month {s:?} is not YYYY-MM with a month from 01 to 12, e.g. 2026-11"));
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let (year, month) = (y.parse::<i32>().map_err(|_| bad())?, m.parse::<u32>().map_err(|_| bad())?);
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Self::checked(Period::Month { year, month })
    }

    /// `YYYY`.
    pub fn parse_year(s: &str) -> Result<Period, ReportError> {
        let s = s.trim();
        if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReportError::Period(format!("year {s:?} is not four digits, e.g. 2026")));
        }
        let year = s.parse::<i32>().map_err(|_| ReportError::Period(format!("year {s:?} is not a number")))?;
        Self::checked(Period::Year { year })
    }

    fn checked(p: Period) -> Result<Period, ReportError> {
        let y = match p {
            Period::Month { year, .. } | Period::Year { year } => year,
        };
        if y < MIN_YEAR {
            return Err(ReportError::Period(format!("{y} is before {MIN_YEAR}; there is nothing to report")));
        }
        Ok(p)
    }

    /// Refuses a period that starts after `today` (local date).
    pub fn not_future(self, today: NaiveDate) -> Result<Period, ReportError> {
        if self.first() > today {
            return Err(ReportError::Period(format!(
                "{} has not started yet (today is {today} in Vietnam); ask for a past or the current period",
                self.label()
            )));
        }
        Ok(self)
    }

    /// First local day.
    pub fn first(self) -> NaiveDate {
        match self {
            Period::Month { year, month } => ymd(year, month, 1),
            Period::Year { year } => ymd(year, 1, 1),
        }
    }

    /// The local day after the last one.
    pub fn end(self) -> NaiveDate {
        match self {
            Period::Month { year, month: 12 } | Period::Year { year } => ymd(year + 1, 1, 1),
            Period::Month { year, month } => ymd(year, month + 1, 1),
        }
    }

    /// `2026-11` or `2026`.
    pub fn label(self) -> String {
        match self {
            Period::Month { year, month } => format!("{year:04}-{month:02}"),
            Period::Year { year } => format!("{year:04}"),
        }
    }

    pub fn is_year(self) -> bool {
        matches!(self, Period::Year { .. })
    }

    /// Every local day of the period.
    pub fn days(self) -> impl Iterator<Item = NaiveDate> {
        let end = self.end();
        self.first().iter_days().take_while(move |d| *d < end)
    }

    /// The months of the period (one for a monthly report).
    pub fn months(self) -> Vec<Period> {
        match self {
            Period::Month { .. } => vec![self],
            Period::Year { year } => (1..=12).map(|month| Period::Month { year, month }).collect(),
        }
    }

    /// The month of a day.
    pub fn month_of(d: NaiveDate) -> Period {
        Period::Month { year: d.year(), month: d.month() }
    }
}

fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    // Months 1..=12 and day 1 always exist for the years we accept.
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or(NaiveDate::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn months_and_years_parse_and_bound() {
        let m = Period::parse_month("2026-11").unwrap();
        assert_eq!((m.first(), m.end(), m.days().count()), (d("2026-11-01"), d("2026-12-01"), 30));
        let dec = Period::parse_month("2026-12").unwrap();
        assert_eq!(dec.end(), d("2027-01-01"));
        let feb = Period::parse_month("2028-02").unwrap();
        assert_eq!(feb.days().count(), 29);
        let y = Period::parse_year("2026").unwrap();
        assert_eq!((y.first(), y.end(), y.days().count(), y.months().len()), (d("2026-01-01"), d("2027-01-01"), 365, 12));
        assert_eq!(y.label(), "2026");
        assert_eq!(m.label(), "2026-11");
    }

    #[test]
    fn bad_periods_say_why() {
        for bad in ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "november", "", "2026-11-01", "1999-12"] {
            let e = Period::parse_month(bad).unwrap_err().to_string();
            assert!(e.contains("YYYY-MM") || e.contains("before"), "{bad}: {e}");
        }
        for bad in ["26", "20266", "two", "1999"] {
            assert!(Period::parse_year(bad).is_err(), "{bad}");
        }
        let today = d("2026-11-15");
        assert!(Period::parse_month("2026-11").unwrap().not_future(today).is_ok());
        assert!(Period::parse_year("2026").unwrap().not_future(today).is_ok());
        let e = Period::parse_month("2026-12").unwrap().not_future(today).unwrap_err().to_string();
        assert!(e.contains("has not started"), "{e}");
        assert!(Period::parse_year("2027").unwrap().not_future(today).is_err());
    }
}
