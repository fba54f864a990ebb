//! Time buckets aligned like TimescaleDB's `time_bucket`: to the origin
//! 2000-01-03 00:00 UTC (a Monday), so hours and days are UTC hours and days
//! and weeks start on Monday.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

/// Seconds from the Unix epoch to 2000-01-03T00:00:00Z.
pub const ORIGIN_SECS: i64 = 946_857_600;

/// A bucket width in whole seconds, parsed from "90s", "5m", "1h", "1d", "1w".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Width(i64);

impl Width {
    pub fn secs(self) -> i64 {
        self.0
    }
}

impl std::str::FromStr for Width {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a bucket width (a number and s, m, h, d or w: 5m, 1h)");
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = s.split_at(split);
        let n: i64 = n.parse().map_err(|_| bad())?;
        let unit = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(bad()),
        };
        match n.checked_mul(unit) {
            Some(secs) if n > 0 && secs <= 52 * 604_800 => Ok(Self(secs)),
            _ => Err(format!("{s:?} must be between 1s and 52w")),
        }
    }
}

impl fmt::Display for Width {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0)
    }
}

/// Start of the bucket of width `secs` holding `t`.
pub fn floor(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    let micros = secs * 1_000_000;
    let since = t.timestamp_micros() - ORIGIN_SECS * 1_000_000;
    let start = since.div_euclid(micros) * micros + ORIGIN_SECS * 1_000_000;
    DateTime::from_timestamp_micros(start).unwrap_or(t)
}

/// First bucket boundary at or after `t`.
pub fn ceil(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    let f = floor(t, secs);
    if f == t {
        t
    } else {
        f + TimeDelta::seconds(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_parse_and_buckets_align_to_monday() {
        assert_eq!("90s".parse::<Width>().unwrap().secs(), 90);
        assert_eq!("1w".parse::<Width>().unwrap().secs(), 604_800);
        assert!("1y".parse::<Width>().is_err());
        assert!("0m".parse::<Width>().is_err());
        let t = DateTime::parse_from_rfc3339("2026-11-27T10:17:05Z")
            .unwrap()
            .to_utc();
        let week = floor(t, 604_800);
        assert_eq!(week.to_rfc3339(), "2026-11-23T00:00:00+00:00");
        assert_eq!(ceil(t, 3600).to_rfc3339(), "2026-11-27T11:00:00+00:00");
    }
}
