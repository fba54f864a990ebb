//! Buckets, rollup levels and the query plan that stitches them. No I/O.
//!
//! Buckets are aligned like TimescaleDB's `time_bucket`: to the origin
//! 2000-01-03 00:00 UTC (a Monday), so hours and days are UTC hours and days
//! and weeks start on Monday.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::store::Row;

pub use iot_domain::bucket::ORIGIN_SECS;

/// A rollup level: the tables `sensor_readings_1h`, `_1d`, `_1w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Hour,
    Day,
    Week,
}

impl Level {
    /// Coarsest first.
    pub const ALL: [Level; 3] = [Level::Week, Level::Day, Level::Hour];

    pub fn secs(self) -> i64 {
        match self {
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Week => 604_800,
        }
    }

    pub fn table(self) -> &'static str {
        match self {
            Self::Hour => "sensor_readings_1h",
            Self::Day => "sensor_readings_1d",
            Self::Week => "sensor_readings_1w",
        }
    }

    /// `sql` for this level: `{table}` its table, `{width}` its bucket as
    /// an interval (`INTERVAL '{width}'`).
    pub fn fill(self, sql: &str) -> String {
        sql.replace("{table}", self.table())
            .replace("{width}", &format!("{} seconds", self.secs()))
    }
}

pub use iot_domain::bucket::{Width, ceil, floor};

/// The rollup levels whose buckets nest in buckets of `width`, coarsest
/// first.
pub trait Levels {
    fn levels(self) -> Vec<Level>;
}

impl Levels for Width {
    fn levels(self) -> Vec<Level> {
        Level::ALL
            .into_iter()
            .filter(|l| self.secs() % l.secs() == 0)
            .collect()
    }
}

/// Where a part of a metrics query reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Rollup(Level),
    Raw,
}

/// A half-open time range `[start, end)` read from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub source: Source,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Splits `[start, end)` into segments: whole buckets of the coarsest level
/// in the middle, finer levels towards the edges, raw rows for what no
/// level covers whole. Segments are disjoint, in time order, and cover the
/// range exactly.
pub fn plan(start: DateTime<Utc>, end: DateTime<Utc>, levels: &[Level]) -> Vec<Segment> {
    let mut out = Vec::new();
    plan_into(start, end, levels, &mut out);
    out
}

fn plan_into(start: DateTime<Utc>, end: DateTime<Utc>, levels: &[Level], out: &mut Vec<Segment>) {
    if start >= end {
        return;
    }
    let Some((&level, finer)) = levels.split_first() else {
        out.push(Segment {
            source: Source::Raw,
            start,
            end,
        });
        return;
    };
    let (a, b) = (ceil(start, level.secs()), floor(end, level.secs()));
    if a >= b {
        return plan_into(start, end, finer, out);
    }
    plan_into(start, a, finer, out);
    out.push(Segment {
        source: Source::Rollup(level),
        start: a,
        end: b,
    });
    plan_into(b, end, finer, out);
}

/// [`plan`] for rollups complete only before `sealed` (`seal::Sealed`):
/// from the hour that holds it on, raw rows. At most two raw segments, as
/// in [`plan`].
pub fn plan_sealed(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    levels: &[Level],
    sealed: DateTime<Utc>,
) -> Vec<Segment> {
    let cut = floor(sealed, Level::Hour.secs()).clamp(start, end);
    let mut out = plan(start, cut, levels);
    if cut < end {
        match out.last_mut() {
            Some(last) if last.source == Source::Raw => last.end = end,
            _ => out.push(Segment {
                source: Source::Raw,
                start: cut,
                end,
            }),
        }
    }
    out
}

/// Count, sum, min and max of a set of readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agg {
    pub count: i64,
    pub sum: Decimal,
    pub min: Decimal,
    pub max: Decimal,
}

impl Agg {
    pub fn of(v: Decimal) -> Self {
        Self {
            count: 1,
            sum: v,
            min: v,
            max: v,
        }
    }

    pub fn merge(&mut self, o: &Agg) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Key of a rollup row.
pub type Key = (Uuid, String, DateTime<Utc>);

/// Rollup rows of a set of readings at each level, sorted by key (writers
/// upsert in key order, so two of them never wait on each other in a cycle).
pub fn rollups<'a>(rows: impl IntoIterator<Item = &'a Row>) -> [(Level, BTreeMap<Key, Agg>); 3] {
    let mut hourly: BTreeMap<Key, Agg> = BTreeMap::new();
    for r in rows {
        let key = (
            r.device_id,
            r.sensor_name.clone(),
            floor(r.time, Level::Hour.secs()),
        );
        hourly
            .entry(key)
            .and_modify(|a| a.merge(&Agg::of(r.value)))
            .or_insert_with(|| Agg::of(r.value));
    }
    let coarser = |from: &BTreeMap<Key, Agg>, level: Level| {
        let mut out: BTreeMap<Key, Agg> = BTreeMap::new();
        for ((d, s, t), a) in from {
            out.entry((*d, s.clone(), floor(*t, level.secs())))
                .and_modify(|x| x.merge(a))
                .or_insert(*a);
        }
        out
    };
    let daily = coarser(&hourly, Level::Day);
    let weekly = coarser(&daily, Level::Week);
    [
        (Level::Hour, hourly),
        (Level::Day, daily),
        (Level::Week, weekly),
    ]
}

/// The latest row of each series among `rows`, sorted by series.
pub fn latest(rows: &[Row]) -> Vec<&Row> {
    let mut by_series: BTreeMap<(Uuid, &str), &Row> = BTreeMap::new();
    for r in rows {
        let e = by_series
            .entry((r.device_id, r.sensor_name.as_str()))
            .or_insert(r);
        if r.time > e.time {
            *e = r;
        }
    }
    by_series.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn widths_parse_and_pick_levels() {
        assert_eq!("1h".parse::<Width>().unwrap().levels(), vec![Level::Hour]);
        assert_eq!(
            "1d".parse::<Width>().unwrap().levels(),
            vec![Level::Day, Level::Hour]
        );
        assert_eq!(
            "2w".parse::<Width>().unwrap().levels(),
            vec![Level::Week, Level::Day, Level::Hour]
        );
        assert!("5m".parse::<Width>().unwrap().levels().is_empty());
        assert_eq!("90s".parse::<Width>().unwrap().secs(), 90);
        for bad in ["", "h", "0h", "1y", "-1h", "1.5h", "99999999999999w", "53w"] {
            assert!(bad.parse::<Width>().is_err(), "{bad}");
        }
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-27 is a Friday; its week starts Monday 2026-11-23.
        assert_eq!(
            floor(t("2026-11-27T15:04:05Z"), Level::Week.secs()),
            t("2026-11-23T00:00:00Z")
        );
        assert_eq!(
            floor(t("2026-11-27T15:04:05Z"), Level::Day.secs()),
            t("2026-11-27T00:00:00Z")
        );
        assert_eq!(
            ceil(t("2026-11-27T15:00:00Z"), 3600),
            t("2026-11-27T15:00:00Z")
        );
        assert_eq!(
            ceil(t("2026-11-27T15:00:01Z"), 3600),
            t("2026-11-27T16:00:00Z")
        );
        // Before the origin too.
        assert_eq!(
            floor(t("1999-12-31T23:59:59Z"), 86_400),
            t("1999-12-31T00:00:00Z")
        );
    }

    #[test]
    fn plan_uses_the_coarsest_level_in_the_middle() {
        let p = plan(
            t("2026-01-01T10:30:00Z"),
            t("2026-01-20T05:15:00Z"),
            &Level::ALL,
        );
        let got: Vec<_> = p
            .iter()
            .map(|s| (s.source, s.start.to_rfc3339(), s.end.to_rfc3339()))
            .collect();
        let r = |l| Source::Rollup(l);
        assert_eq!(
            got,
            vec![
                (
                    Source::Raw,
                    "2026-01-01T10:30:00+00:00".into(),
                    "2026-01-01T11:00:00+00:00".into()
                ),
                (
                    r(Level::Hour),
                    "2026-01-01T11:00:00+00:00".into(),
                    "2026-01-02T00:00:00+00:00".into()
                ),
                (
                    r(Level::Day),
                    "2026-01-02T00:00:00+00:00".into(),
                    "2026-01-05T00:00:00+00:00".into()
                ),
                (
                    r(Level::Week),
                    "2026-01-05T00:00:00+00:00".into(),
                    "2026-01-19T00:00:00+00:00".into()
                ),
                (
                    r(Level::Day),
                    "2026-01-19T00:00:00+00:00".into(),
                    "2026-01-20T00:00:00+00:00".into()
                ),
                (
                    r(Level::Hour),
                    "2026-01-20T00:00:00+00:00".into(),
                    "2026-01-20T05:00:00+00:00".into()
                ),
                (
                    Source::Raw,
                    "2026-01-20T05:00:00+00:00".into(),
                    "2026-01-20T05:15:00+00:00".into()
                ),
            ]
        );
    }

    proptest! {
        #[test]
        fn plan_covers_the_range_exactly(
            start in 0i64..40_000_000,
            len in 0i64..40_000_000,
            mask in 0usize..8,
        ) {
            let s = DateTime::from_timestamp(1_700_000_000 + start, 0).unwrap();
            let e = s + TimeDelta::seconds(len);
            let levels: Vec<Level> = Level::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, l)| l)
                .collect();
            let p = plan(s, e, &levels);
            let mut at = s;
            for seg in &p {
                prop_assert_eq!(seg.start, at);
                prop_assert!(seg.end > seg.start);
                if let Source::Rollup(l) = seg.source {
                    prop_assert_eq!(floor(seg.start, l.secs()), seg.start);
                    prop_assert_eq!(floor(seg.end, l.secs()), seg.end);
                }
                at = seg.end;
            }
            prop_assert_eq!(at, if len == 0 { s } else { e });
        }
    }

    #[test]
    fn rollups_nest() {
        let dev = Uuid::nil();
        let row = |time: &str, v: i64| Row {
            time: t(time),
            device_id: dev,
            sensor_name: "t".into(),
            value: Decimal::new(v, 0),
            unit: None,
            quality: None,
        };
        let rows = [
            row("2026-11-27T10:59:00Z", 20),
            row("2026-11-27T11:00:00Z", 22),
            row("2026-11-27T11:30:00Z", 21),
            row("2026-11-28T00:00:00Z", 23),
        ];
        let [(_, h), (_, d), (_, w)] = rollups(&rows);
        assert_eq!(h.len(), 3);
        assert_eq!(d.len(), 2);
        assert_eq!(w.len(), 1);
        let week = w.values().next().unwrap();
        assert_eq!(
            (week.count, week.sum, week.min, week.max),
            (
                4,
                Decimal::new(86, 0),
                Decimal::new(20, 0),
                Decimal::new(23, 0)
            )
        );
        let l = latest(&rows);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].value, Decimal::new(23, 0));
    }
}
