//! Alert rules: stored in `alert_rules` as text, checked with the rule
//! language's parser when written (`check`), compiled into ASTs by the
//! engine (`RuleSet`) and evaluated per reading (`Evaluator`), with a
//! duration a condition must hold and a clear condition for hysteresis.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use iot_proto::v1;
use tonic::Status;
use uuid::Uuid;

use crate::expr::{self, Expr};

/// Names a rule may not take: the built-in conditions' alert types.
const RESERVED: [&str; 3] = ["threshold_max", "threshold_min", "device_offline"];
const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];
const MAX_FOR_SECS: u32 = 86_400;

pub const COLUMNS: &str = "id, owner_id, name, condition, clear_condition, severity, message,
       for_secs, device_type, enabled, created_at, updated_at";

pub fn rule_from_row(r: &tokio_postgres::Row) -> v1::Rule {
    let ts = |i: usize| {
        r.get::<_, Option<DateTime<Utc>>>(i)
            .map(iot_proto::timestamp)
    };
    v1::Rule {
        id: r.get::<_, Uuid>(0).to_string(),
        owner_id: r
            .get::<_, Option<Uuid>>(1)
            .map(|u| u.to_string())
            .unwrap_or_default(),
        name: r.get(2),
        condition: r.get(3),
        clear_condition: r.get(4),
        severity: r.get(5),
        message: r.get(6),
        for_secs: u32::try_from(r.get::<_, i32>(7)).unwrap_or(0),
        device_type: r.get(8),
        enabled: Some(r.get(9)),
        created_at: ts(10),
        updated_at: ts(11),
    }
}

/// A rule's writable fields as SQL parameters, in the order name,
/// condition, clear_condition, severity, message, for_secs, device_type,
/// enabled (`CreateRule` and `UpdateRule` write the same columns).
pub struct Fields<'r> {
    rule: &'r v1::Rule,
    for_secs: i32,
    enabled: bool,
}

impl<'r> Fields<'r> {
    pub fn of(rule: &'r v1::Rule) -> Self {
        Self {
            rule,
            for_secs: i32::try_from(rule.for_secs).unwrap_or(i32::MAX),
            enabled: rule.enabled.unwrap_or(true),
        }
    }

    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 8] {
        let r = self.rule;
        [
            &r.name,
            &r.condition,
            &r.clear_condition,
            &r.severity,
            &r.message,
            &self.for_secs,
            &r.device_type,
            &self.enabled,
        ]
    }
}

/// A rule as written, checked: INVALID_ARGUMENT naming every bad field
/// (a condition's error gives its column). `scope` is the caller's owner
/// (None: admin); returns the owner the rule belongs to.
pub fn check(rule: &v1::Rule, scope: Option<Uuid>) -> Result<Option<Uuid>, Status> {
    let mut p = Vec::new();
    let name_ok = !rule.name.is_empty()
        && rule.name.len() <= 50
        && rule
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        p.push(format!(
            "name: {:?} must match [a-z0-9_]{{1,50}}",
            rule.name
        ));
    } else if RESERVED.contains(&rule.name.as_str()) {
        p.push(format!("name: {:?} is a built-in alert type", rule.name));
    }
    if let Err(e) = expr::parse(&rule.condition) {
        p.push(format!("condition: {e}"));
    }
    if let Some(c) = &rule.clear_condition
        && let Err(e) = expr::parse(c)
    {
        p.push(format!("clear_condition: {e}"));
    }
    if !SEVERITIES.contains(&rule.severity.as_str()) {
        p.push(format!(
            "severity: {:?} is not one of {SEVERITIES:?}",
            rule.severity
        ));
    }
    if rule.for_secs > MAX_FOR_SECS {
        p.push(format!("for_secs: at most {MAX_FOR_SECS}"));
    }
    if rule.message.as_ref().is_some_and(|m| m.len() > 1000) {
        p.push("message: at most 1000 characters".into());
    }
    if rule.device_type.as_ref().is_some_and(|t| t.len() > 50) {
        p.push("device_type: at most 50 characters".into());
    }
    let owner = match (scope, rule.owner_id.as_str()) {
        (None, "") => None,
        (None, o) => match Uuid::parse_str(o) {
            Ok(u) => Some(u),
            Err(_) => {
                p.push(format!("owner_id: {o:?} is not a UUID"));
                None
            }
        },
        (Some(s), "") => Some(s),
        (Some(s), o) if o == s.to_string() => Some(s),
        (Some(_), _) => {
            p.push("owner_id: an owner's rules belong to that owner".into());
            None
        }
    };
    if p.is_empty() {
        Ok(owner)
    } else {
        Err(Status::invalid_argument(p.join("; ")))
    }
}

/// A rule ready to evaluate.
#[derive(Debug)]
pub struct Compiled {
    pub id: Uuid,
    pub owner: Option<Uuid>,
    pub name: String,
    pub condition: Expr,
    pub clear: Option<Expr>,
    pub severity: String,
    pub message: Option<String>,
    pub for_secs: i64,
    pub device_type: Option<String>,
}

/// The enabled rules, compiled.
pub async fn load(pool: &Pool) -> anyhow::Result<Vec<Compiled>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM alert_rules WHERE enabled"),
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let rule = rule_from_row(&r);
        let compiled = expr::parse(&rule.condition).and_then(|c| {
            let clear = rule
                .clear_condition
                .as_deref()
                .map(expr::parse)
                .transpose()?;
            Ok((c, clear))
        });
        match compiled {
            Ok((condition, clear)) => out.push(Compiled {
                id: r.get(0),
                owner: r.get(1),
                name: rule.name,
                condition,
                clear,
                severity: rule.severity,
                message: rule.message,
                for_secs: i64::from(rule.for_secs),
                device_type: rule.device_type,
            }),
            // Rules are checked when written; one that no longer parses
            // (an older language) is skipped, loudly.
            Err(e) => tracing::error!(rule = %rule.id, error = %e, "rule does not parse; skipped"),
        }
    }
    Ok(out)
}

/// The device facts a rule can see.
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    pub owner: Option<Uuid>,
    pub device_id: String,
    pub device_type: String,
    pub location: String,
}

/// (rule, device, sensor).
type SeriesKey = (Uuid, Uuid, String);

/// What to do about one rule and one reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Raise,
    Resolve,
}

/// Per-series state of the rules: since when each condition has held (for
/// durations) and which alerts are open (for hysteresis). The open set is
/// reloaded from the database; the durations live in memory (after a
/// restart a condition must hold for its duration again).
#[derive(Debug, Default)]
pub struct Evaluator {
    /// The earliest and latest reading times of the current episode (the
    /// condition holding on every reading); readings may arrive out of
    /// order.
    since: HashMap<SeriesKey, (DateTime<Utc>, DateTime<Utc>)>,
    pub open: HashSet<SeriesKey>,
}

impl Evaluator {
    /// An evaluator that knows these alerts are open.
    pub fn with_open(open: HashSet<SeriesKey>) -> Self {
        Self {
            open,
            ..Self::default()
        }
    }

    /// Records that rule `rule`'s alert on (device, sensor) is resolved.
    pub fn resolved(&mut self, rule: Uuid, device: Uuid, sensor: &str) {
        self.open.remove(&(rule, device, sensor.to_owned()));
    }

    /// What each applicable rule asks for, given reading `r` taken at
    /// `time` on device `device`.
    pub fn decide<'r>(
        &mut self,
        rules: &'r [Compiled],
        device: Uuid,
        facts: &DeviceFacts,
        r: &expr::Reading<'_>,
        time: DateTime<Utc>,
    ) -> Vec<(&'r Compiled, Action)> {
        let mut out = Vec::new();
        for rule in rules {
            if rule.owner.is_some() && rule.owner != facts.owner {
                continue;
            }
            if rule
                .device_type
                .as_ref()
                .is_some_and(|t| *t != facts.device_type)
            {
                continue;
            }
            let key = (rule.id, device, r.sensor_name.to_owned());
            if expr::eval(&rule.condition, r) {
                let (first, last) = self.since.entry(key.clone()).or_insert((time, time));
                *first = (*first).min(time);
                *last = (*last).max(time);
                if (*last - *first).num_seconds() >= rule.for_secs {
                    self.open.insert(key);
                    out.push((rule, Action::Raise));
                }
            } else {
                self.since.remove(&key);
                let cleared = rule.clear.as_ref().is_none_or(|c| expr::eval(c, r));
                // Forgotten only once the resolution is written
                // (`resolved`), so a failed write is decided again.
                if cleared && self.open.contains(&key) {
                    out.push((rule, Action::Resolve));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(condition: &str, clear: Option<&str>, for_secs: i64) -> Compiled {
        Compiled {
            id: Uuid::new_v4(),
            owner: None,
            name: "hot".into(),
            condition: expr::parse(condition).unwrap(),
            clear: clear.map(|c| expr::parse(c).unwrap()),
            severity: "critical".into(),
            message: None,
            for_secs,
            device_type: None,
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn run(e: &mut Evaluator, rules: &[Compiled], values: &[(i64, f64)]) -> Vec<(i64, Action)> {
        let d = Uuid::nil();
        let facts = DeviceFacts::default();
        let mut out = Vec::new();
        for (t, v) in values {
            let r = expr::Reading {
                value: *v,
                sensor_name: "temperature",
                ..Default::default()
            };
            let decided: Vec<(Uuid, Action)> = e
                .decide(rules, d, &facts, &r, at(*t))
                .into_iter()
                .map(|(rule, a)| (rule.id, a))
                .collect();
            for (rule, a) in decided {
                if a == Action::Resolve {
                    e.resolved(rule, d, "temperature");
                }
                out.push((*t, a));
            }
        }
        out
    }

    #[test]
    fn durations_and_hysteresis() {
        // Above 100 for 120 s; resolves only below 95.
        let rules = [rule("value > 100", Some("value < 95"), 120)];
        let mut e = Evaluator::default();
        let got = run(
            &mut e,
            &rules,
            &[
                (0, 101.0),
                (60, 102.0),
                (90, 99.0),
                (100, 101.0),
                (219, 101.0),
                (220, 101.0),
            ],
        );
        // The dip at 90 s restarts the clock: raised at 220 s, not 120 s.
        assert_eq!(got, [(220, Action::Raise)]);
        // Hovering between 95 and 100 does not resolve; below 95 does.
        let got = run(
            &mut e,
            &rules,
            &[(230, 99.0), (240, 100.5), (250, 97.0), (260, 94.0)],
        );
        assert_eq!(got, [(260, Action::Resolve)]);
    }

    #[test]
    fn a_late_reading_counts_towards_its_episode() {
        let rules = [rule("value > 100", None, 60)];
        let mut e = Evaluator::default();
        // 0 s arrives after 60 s: the condition has held for 60 s.
        assert_eq!(
            run(&mut e, &rules, &[(60, 101.0), (0, 101.0)]),
            [(0, Action::Raise)]
        );
        let instant = [rule("value > 100", None, 0)];
        let mut e = Evaluator::default();
        assert_eq!(
            run(&mut e, &instant, &[(60, 101.0), (0, 102.0)]),
            [(60, Action::Raise), (0, Action::Raise)]
        );
    }

    #[test]
    fn rules_apply_to_their_owner_and_device_type() {
        let mut r = rule("value > 1", None, 0);
        let owner = Uuid::new_v4();
        r.owner = Some(owner);
        r.device_type = Some("boiler".into());
        let mut e = Evaluator::default();
        let reading = expr::Reading {
            value: 2.0,
            sensor_name: "t",
            ..Default::default()
        };
        for (o, t, fires) in [
            (Some(owner), "boiler", true),
            (Some(Uuid::new_v4()), "boiler", false),
            (Some(owner), "fridge", false),
        ] {
            let facts = DeviceFacts {
                owner: o,
                device_type: t.into(),
                ..Default::default()
            };
            let got = e.decide(
                std::slice::from_ref(&r),
                Uuid::new_v4(),
                &facts,
                &reading,
                at(0),
            );
            assert_eq!(!got.is_empty(), fires);
        }
    }

    #[test]
    fn written_rules_are_checked() {
        let good = v1::Rule {
            name: "low_battery".into(),
            condition: r#"sensor_name == "battery" AND value < 20"#.into(),
            severity: "critical".into(),
            ..Default::default()
        };
        let owner = Uuid::new_v4();
        assert_eq!(check(&good, Some(owner)).unwrap(), Some(owner));
        assert_eq!(check(&good, None).unwrap(), None);
        let bad = v1::Rule {
            name: "Bad Name".into(),
            condition: "value >".into(),
            clear_condition: Some("value <".into()),
            severity: "urgent".into(),
            for_secs: 100_000,
            owner_id: Uuid::new_v4().to_string(),
            ..Default::default()
        };
        let msg = check(&bad, Some(owner)).unwrap_err().message().to_owned();
        for field in [
            "name:",
            "condition: column 8",
            "clear_condition: column 8",
            "severity:",
            "for_secs:",
            "owner_id:",
        ] {
            assert!(msg.contains(field), "{field} in {msg}");
        }
        let reserved = v1::Rule {
            name: "device_offline".into(),
            ..good
        };
        assert!(check(&reserved, None).is_err());
    }
}
