//! Alert rules: stored in `alert_rules` as text, checked with the rule
//! language's parser when written (`check`), compiled into ASTs by the
//! engine (`RuleSet`) and evaluated per reading (`Evaluator`), with a
//! duration a condition must hold and a clear condition for hysteresis.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use iot_proto::{TextCode, v1};
use uuid::Uuid;

use crate::error::AlertError;
use crate::expr::{self, Expr};

/// Names a rule may not take: the built-in conditions' alert types (and
/// the threshold types before migration 0018, which old alerts may still
/// show in exports).
const RESERVED: [&str; 5] = [
    "threshold_exceeded",
    "threshold_below",
    "device_offline",
    "threshold_max",
    "threshold_min",
];
const MAX_FOR_SECS: u32 = 86_400;

/// A rule template: the seed's example rules (`ALERT_RULES`).
pub struct Template {
    pub name: &'static str,
    /// Empty for a built-in condition (nothing to create).
    pub condition: &'static str,
    pub severity: &'static str,
    pub message: &'static str,
}

/// The seed's three example rules. `device_offline` is the engine's own
/// offline alert (the platform's definition: 5 minutes of silence by
/// default), always on.
pub const TEMPLATES: [Template; 3] = [
    Template {
        name: "high_temp",
        condition: r#"sensor_name == "temperature" AND value > 100"#,
        severity: "critical",
        message: "High temperature detected",
    },
    Template {
        name: "low_battery",
        condition: r#"sensor_name == "battery_level" AND value < 10"#,
        severity: "warning",
        message: "Battery level low",
    },
    Template {
        name: "device_offline",
        condition: "",
        severity: "warning",
        message: "Device offline for 5+ minutes",
    },
];

impl Template {
    /// The rule to create.
    pub fn rule(&self) -> v1::Rule {
        v1::Rule {
            name: self.name.into(),
            condition: self.condition.into(),
            severity: self.severity.into(),
            message: Some(self.message.into()),
            ..Default::default()
        }
    }
}

pub const COLUMNS: &str = "id, owner_id, name, condition, clear_condition, severity, message,
       for_secs, device_type, enabled, created_at, updated_at";

pub fn rule_from_row(r: &tokio_postgres::Row) -> v1::Rule {
    let ts = |i: usize| {
        r.get::<_, Option<DateTime<Utc>>>(i)
            .map(iot_proto::timestamp)
    };
    let severity: String = r.get(5);
    v1::Rule {
        id: r.get::<_, Uuid>(0).to_string(),
        owner_id: r
            .get::<_, Option<Uuid>>(1)
            .map(|u| u.to_string())
            .unwrap_or_default(),
        name: r.get(2),
        condition: r.get(3),
        clear_condition: r.get(4),
        severity_code: v1::Severity::code_of_text(&severity),
        severity,
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
    severity: &'static str,
    for_secs: i32,
    enabled: bool,
}

impl<'r> Fields<'r> {
    /// The fields of `rule`, which [`check`] found to be `checked`.
    pub fn of(rule: &'r v1::Rule, checked: &Checked) -> Self {
        Self {
            rule,
            severity: checked.severity.as_text(),
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
            &self.severity,
            &r.message,
            &self.for_secs,
            &r.device_type,
            &self.enabled,
        ]
    }
}

/// What [`check`] makes of a rule as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The owner the rule belongs to (None: platform-wide).
    pub owner: Option<Uuid>,
    /// Its severity, given as text (`severity`) or enum (`severity_code`).
    pub severity: v1::Severity,
}

/// A rule as written, checked: INVALID_ARGUMENT naming every bad field
/// (a condition's error gives its column). `scope` is the caller's owner
/// (None: admin).
pub fn check(rule: &v1::Rule, scope: Option<Uuid>) -> Result<Checked, AlertError> {
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
    let severity = iot_proto::codes::either(
        &mut p,
        ("severity", iot_proto::codes::given(&rule.severity)),
        ("severity_code", Some(rule.severity_code)),
    );
    if rule.severity.is_empty() && rule.severity_code == 0 {
        p.push(format!(
            "severity: is required, one of {:?} (or severity_code)",
            v1::Severity::texts()
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
    match severity {
        Some(severity) if p.is_empty() => Ok(Checked { owner, severity }),
        _ => Err(AlertError::Invalid(p)),
    }
}

/// A rule ready to evaluate.
#[derive(Debug)]
pub struct Compiled {
    pub id: Uuid,
    /// The rule's `updated_at`: an episode counts only for the version it
    /// began under.
    pub version: DateTime<Utc>,
    pub owner: Option<Uuid>,
    pub name: String,
    pub condition: Expr,
    pub clear: Option<Expr>,
    pub severity: String,
    pub message: Option<String>,
    pub for_secs: i64,
    pub device_type: Option<String>,
}

/// The enabled rules, indexed by the sensor their condition requires
/// (`expr::required_sensor`): a reading is evaluated only against the
/// rules that can hold for its sensor.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Compiled>,
    /// Each rule's condition as evaluated: without its sensor conjunct when
    /// the index already guarantees it.
    conditions: Vec<Expr>,
    by_sensor: HashMap<String, Vec<usize>>,
    any_sensor: Vec<usize>,
}

impl RuleSet {
    pub fn new(rules: Vec<Compiled>) -> Self {
        let mut set = RuleSet::default();
        for (i, r) in rules.iter().enumerate() {
            match expr::required_sensor(&r.condition) {
                Some(s) => {
                    set.by_sensor.entry(s.to_owned()).or_default().push(i);
                    set.conditions
                        .push(expr::without_required_sensor(&r.condition));
                }
                None => {
                    set.any_sensor.push(i);
                    set.conditions.push(r.condition.clone());
                }
            }
        }
        set.rules = rules;
        set
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules that can hold for a reading of `sensor`, each with the
    /// condition to evaluate for it.
    fn for_sensor<'s>(
        &'s self,
        sensor: &str,
    ) -> impl Iterator<Item = (&'s Compiled, &'s Expr)> + 's {
        self.by_sensor
            .get(sensor)
            .into_iter()
            .flatten()
            .chain(&self.any_sensor)
            .map(|i| (&self.rules[*i], &self.conditions[*i]))
    }
}

/// The enabled rules, compiled.
pub async fn load(pool: &Pool) -> Result<RuleSet, AlertError> {
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
                version: r.get(11),
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
    Ok(RuleSet::new(out))
}

/// Episodes recorded in the database: (rule, rule version, device,
/// sensor, since). Those of rule versions that no longer exist are deleted
/// first.
pub async fn load_episodes(
    pool: &Pool,
) -> Result<Vec<(Uuid, DateTime<Utc>, Uuid, String, DateTime<Utc>)>, AlertError> {
    let client = pool.get().await?;
    client
        .execute(
            "DELETE FROM alert_rule_episodes e WHERE NOT EXISTS (
                 SELECT 1 FROM alert_rules r
                 WHERE r.id = e.rule_id AND r.updated_at = e.rule_version AND r.enabled)",
            &[],
        )
        .await?;
    Ok(client
        .query(
            "SELECT rule_id, rule_version, device_id, sensor_name, since FROM alert_rule_episodes",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect())
}

/// Records that an episode began at `since` (or earlier: a late reading).
pub const EPISODE_STARTED: &str = "INSERT INTO alert_rule_episodes
    (rule_id, rule_version, device_id, sensor_name, since) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (rule_id, device_id, sensor_name) DO UPDATE SET
    since = CASE WHEN alert_rule_episodes.rule_version = excluded.rule_version
                 THEN LEAST(alert_rule_episodes.since, excluded.since)
                 ELSE excluded.since END,
    rule_version = excluded.rule_version";

/// Records that an episode ended.
pub const EPISODE_ENDED: &str =
    "DELETE FROM alert_rule_episodes WHERE rule_id = $1 AND device_id = $2 AND sensor_name = $3";

/// The device facts a rule can see.
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    pub owner: Option<Uuid>,
    pub device_id: String,
    pub device_type: String,
    pub location: String,
}

/// What to do about one rule and one reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Raise,
    Resolve,
    /// A duration rule's episode began at this time (or began earlier than
    /// recorded): to be recorded before the reading counts as evaluated.
    EpisodeStarted(DateTime<Utc>),
    /// A duration rule's episode ended: to be recorded likewise.
    EpisodeEnded,
}

/// The earliest and latest reading times of an episode (the condition
/// holding on every reading; readings may arrive out of order).
#[derive(Debug, Clone, Copy)]
struct Episode {
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    version: DateTime<Utc>,
}

/// The rules' state of one (device, sensor).
#[derive(Debug, Default)]
struct Series {
    /// Episodes of duration rules, by rule.
    episodes: HashMap<Uuid, Episode>,
    /// Rules with an open alert here (for hysteresis).
    open: HashSet<Uuid>,
}

/// Per-series state of the rules: since when each duration rule's
/// condition has held, and which alerts are open. Both mirror the
/// database (`alert_rule_episodes`, `device_alerts`), which a restarted
/// engine or a replica taking over a partition reloads them from: an
/// episode goes on where it was, and a condition is never taken for held
/// longer than it did.
#[derive(Debug, Default)]
pub struct Evaluator {
    series: HashMap<(Uuid, String), Series>,
}

impl Evaluator {
    /// Replaces what is known of open alerts: (rule, device, sensor).
    pub fn set_open(&mut self, open: impl IntoIterator<Item = (Uuid, Uuid, String)>) {
        for s in self.series.values_mut() {
            s.open.clear();
        }
        for (rule, device, sensor) in open {
            self.series
                .entry((device, sensor))
                .or_default()
                .open
                .insert(rule);
        }
        self.series
            .retain(|_, s| !s.open.is_empty() || !s.episodes.is_empty());
    }

    /// Replaces the episodes: (rule, rule version, device, sensor, since).
    pub fn set_episodes(
        &mut self,
        episodes: impl IntoIterator<Item = (Uuid, DateTime<Utc>, Uuid, String, DateTime<Utc>)>,
    ) {
        for s in self.series.values_mut() {
            s.episodes.clear();
        }
        for (rule, version, device, sensor, since) in episodes {
            self.series
                .entry((device, sensor))
                .or_default()
                .episodes
                .insert(
                    rule,
                    Episode {
                        first: since,
                        last: since,
                        version,
                    },
                );
        }
        self.series
            .retain(|_, s| !s.open.is_empty() || !s.episodes.is_empty());
    }

    /// Records that rule `rule`'s alert on (device, sensor) is resolved.
    pub fn resolved(&mut self, rule: Uuid, device: Uuid, sensor: &str) {
        if let Some(s) = self.series.get_mut(&(device, sensor.to_owned())) {
            s.open.remove(&rule);
        }
    }

    /// What each applicable rule asks for, given reading `r` taken at
    /// `time` on device `device`.
    pub fn decide<'r>(
        &mut self,
        rules: &'r RuleSet,
        device: Uuid,
        facts: &DeviceFacts,
        r: &expr::Reading<'_>,
        time: DateTime<Utc>,
    ) -> Vec<(&'r Compiled, Action)> {
        let mut out = Vec::new();
        let mut applicable = rules
            .for_sensor(r.sensor_name)
            .filter(|(rule, _)| rule.owner.is_none() || rule.owner == facts.owner)
            .filter(|(rule, _)| {
                rule.device_type
                    .as_ref()
                    .is_none_or(|t| *t == facts.device_type)
            })
            .peekable();
        if applicable.peek().is_none() {
            return out;
        }
        let key = (device, r.sensor_name.to_owned());
        let mut s = self.series.remove(&key).unwrap_or_default();
        for (rule, condition) in applicable {
            if expr::eval(condition, r) {
                if rule.for_secs > 0 {
                    let held = match s.episodes.get_mut(&rule.id) {
                        Some(e) if e.version == rule.version => {
                            if time < e.first {
                                e.first = time;
                                out.push((rule, Action::EpisodeStarted(time)));
                            }
                            e.last = e.last.max(time);
                            e.last - e.first
                        }
                        _ => {
                            let e = Episode {
                                first: time,
                                last: time,
                                version: rule.version,
                            };
                            s.episodes.insert(rule.id, e);
                            out.push((rule, Action::EpisodeStarted(time)));
                            chrono::TimeDelta::zero()
                        }
                    };
                    if held.num_seconds() < rule.for_secs {
                        continue;
                    }
                }
                s.open.insert(rule.id);
                out.push((rule, Action::Raise));
            } else {
                // (Most series have no episode and no open alert: the
                // emptiness checks keep a normal reading cheap.)
                if !s.episodes.is_empty() && s.episodes.remove(&rule.id).is_some() {
                    out.push((rule, Action::EpisodeEnded));
                }
                // Forgotten only once the resolution is written
                // (`resolved`), so a failed write is decided again.
                if !s.open.is_empty()
                    && s.open.contains(&rule.id)
                    && rule.clear.as_ref().is_none_or(|c| expr::eval(c, r))
                {
                    out.push((rule, Action::Resolve));
                }
            }
        }
        if !s.open.is_empty() || !s.episodes.is_empty() {
            self.series.insert(key, s);
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
            version: at(0),
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

    /// Raises and resolutions decided for `values`, in order.
    fn run(e: &mut Evaluator, rules: &RuleSet, values: &[(i64, f64)]) -> Vec<(i64, Action)> {
        run_all(e, rules, values)
            .into_iter()
            .filter(|(_, a)| matches!(a, Action::Raise | Action::Resolve))
            .collect()
    }

    /// Every action decided for `values`, in order.
    fn run_all(e: &mut Evaluator, rules: &RuleSet, values: &[(i64, f64)]) -> Vec<(i64, Action)> {
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
        let rules = RuleSet::new(vec![rule("value > 100", Some("value < 95"), 120)]);
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
        let rules = RuleSet::new(vec![rule("value > 100", None, 60)]);
        let mut e = Evaluator::default();
        // 0 s arrives after 60 s: the condition has held for 60 s.
        assert_eq!(
            run(&mut e, &rules, &[(60, 101.0), (0, 101.0)]),
            [(0, Action::Raise)]
        );
        let instant = RuleSet::new(vec![rule("value > 100", None, 0)]);
        let mut e = Evaluator::default();
        assert_eq!(
            run(&mut e, &instant, &[(60, 101.0), (0, 102.0)]),
            [(60, Action::Raise), (0, Action::Raise)]
        );
    }

    #[test]
    fn episodes_are_recorded_at_their_edges_and_resume_after_a_reload() {
        let rules = RuleSet::new(vec![rule("value > 100", None, 60)]);
        let id = rules.rules[0].id;
        let mut e = Evaluator::default();
        // Started once, not once per reading; ended once.
        assert_eq!(
            run_all(&mut e, &rules, &[(0, 101.0), (10, 101.0), (20, 99.0)]),
            [
                (0, Action::EpisodeStarted(at(0))),
                (20, Action::EpisodeEnded)
            ]
        );
        // A restarted engine that loads "held since 100 s" raises at 160 s
        // on its first reading; without it, it would wait until 220 s.
        assert_eq!(
            run_all(&mut e, &rules, &[(100, 101.0)]),
            [(100, Action::EpisodeStarted(at(100)))]
        );
        let mut restarted = Evaluator::default();
        restarted.set_episodes([(id, at(0), Uuid::nil(), "temperature".into(), at(100))]);
        assert_eq!(
            run(&mut restarted, &rules, &[(160, 101.0)]),
            [(160, Action::Raise)]
        );
        // An episode recorded under another version of the rule starts
        // afresh.
        let mut changed = Evaluator::default();
        changed.set_episodes([(id, at(-1), Uuid::nil(), "temperature".into(), at(100))]);
        assert_eq!(
            run_all(&mut changed, &rules, &[(160, 101.0)]),
            [(160, Action::EpisodeStarted(at(160)))]
        );
        // A rule for another sensor is not evaluated at all.
        let humid = RuleSet::new(vec![rule(
            r#"sensor_name == "humidity" AND value > 1"#,
            None,
            0,
        )]);
        assert_eq!(humid.for_sensor("temperature").count(), 0);
        assert_eq!(humid.for_sensor("humidity").count(), 1);
        assert!(run_all(&mut Evaluator::default(), &humid, &[(0, 101.0)]).is_empty());
    }

    #[test]
    fn rules_apply_to_their_owner_and_device_type() {
        let mut r = rule("value > 1", None, 0);
        let owner = Uuid::new_v4();
        r.owner = Some(owner);
        r.device_type = Some("boiler".into());
        let rules = RuleSet::new(vec![r]);
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
            let got = e.decide(&rules, Uuid::new_v4(), &facts, &reading, at(0));
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
        assert_eq!(check(&good, Some(owner)).unwrap().owner, Some(owner));
        assert_eq!(check(&good, None).unwrap().owner, None);
        assert_eq!(check(&good, None).unwrap().severity, v1::Severity::Critical);
        let bad = v1::Rule {
            name: "Bad Name".into(),
            condition: "value >".into(),
            clear_condition: Some("value <".into()),
            severity: "urgent".into(),
            for_secs: 100_000,
            owner_id: Uuid::new_v4().to_string(),
            ..Default::default()
        };
        let err = tonic::Status::from(check(&bad, Some(owner)).unwrap_err());
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let msg = err.message().to_owned();
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

    #[test]
    fn severity_is_text_or_enum() {
        let rule = |severity: &str, code: v1::Severity| v1::Rule {
            name: "hot".into(),
            condition: "value > 1".into(),
            severity: severity.into(),
            severity_code: code.into(),
            ..Default::default()
        };
        let severity = |r: v1::Rule| check(&r, None).map(|c| c.severity);
        for (text, code, want) in [
            ("", v1::Severity::Critical, v1::Severity::Critical),
            ("info", v1::Severity::Unspecified, v1::Severity::Info),
            ("warning", v1::Severity::Warning, v1::Severity::Warning),
        ] {
            assert_eq!(severity(rule(text, code)).unwrap(), want);
        }
        let problems = |r: v1::Rule| match check(&r, None) {
            Err(AlertError::Invalid(p)) => p,
            other => panic!("{other:?}"),
        };
        let p = problems(rule("info", v1::Severity::Critical));
        assert_eq!(
            p,
            ["severity_code: SEVERITY_CRITICAL disagrees with severity \"info\""]
        );
        let p = problems(rule("", v1::Severity::Unspecified));
        assert!(
            p.len() == 1 && p[0].starts_with("severity: is required"),
            "{p:?}"
        );
    }
}
