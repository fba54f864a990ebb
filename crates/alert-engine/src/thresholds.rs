//! A device's `alert_threshold` config (per sensor `min` and/or `max`) and
//! what a reading against it means. No I/O.

use std::collections::HashMap;

use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;

/// Limits of one sensor.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub min: Option<Decimal>,
    pub max: Option<Decimal>,
}

/// A device's limits by sensor name.
pub type Thresholds = HashMap<String, Limits>;

/// Parses the registry's `alert_threshold_json`; entries that are not
/// `{min?, max?}` numbers are skipped (the registry refuses them anyway).
pub fn parse(json: Option<&str>) -> Thresholds {
    let Some(value) = json.and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok()) else {
        return Thresholds::new();
    };
    let Some(sensors) = value.as_object() else {
        return Thresholds::new();
    };
    let num = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_f64)
            .and_then(Decimal::from_f64)
    };
    sensors
        .iter()
        .filter_map(|(sensor, l)| {
            let l = l.as_object()?;
            Some((
                sensor.clone(),
                Limits {
                    min: num(l.get("min")),
                    max: num(l.get("max")),
                },
            ))
        })
        .collect()
}

/// The alert condition a reading shows, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub alert_type: &'static str,
    pub threshold: Decimal,
    pub message: String,
}

/// The conditions a threshold check can raise (and clear): the seed's
/// `threshold_exceeded` above a sensor's max, and `threshold_below` under
/// its min (migration 0018 renamed the earlier `threshold_max` and
/// `threshold_min`).
pub const KINDS: [&str; 2] = ["threshold_exceeded", "threshold_below"];

/// Checks `value` of `sensor` against its limits.
pub fn check(limits: &Limits, sensor: &str, value: Decimal) -> Option<Violation> {
    if let Some(max) = limits.max
        && value > max
    {
        return Some(Violation {
            alert_type: KINDS[0],
            threshold: max,
            message: format!("{sensor} {value} is above its maximum {max}"),
        });
    }
    if let Some(min) = limits.min
        && value < min
    {
        return Some(Violation {
            alert_type: KINDS[1],
            threshold: min,
            message: format!("{sensor} {value} is below its minimum {min}"),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_of_thirty_raises_above_thirty() {
        let t = parse(Some(
            r#"{"temperature": {"max": 30}, "battery": {"min": 15.5}}"#,
        ));
        let temp = t["temperature"];
        let v = check(&temp, "temperature", Decimal::from(35)).unwrap();
        assert_eq!(v.alert_type, "threshold_exceeded");
        assert_eq!(v.threshold, Decimal::from(30));
        assert!(check(&temp, "temperature", Decimal::from(30)).is_none());
        let low = check(&t["battery"], "battery", Decimal::new(150, 1)).unwrap();
        assert_eq!(low.alert_type, "threshold_below");
        assert!(parse(Some("[1]")).is_empty());
        assert!(parse(None).is_empty());
    }
}
