//! The one validation behind every door (MQTT, HTTP, gRPC).

use chrono::{DateTime, Duration, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use uuid::Uuid;

#[cfg(test)]
use crate::payload::parse_single as parse_mqtt_payload;
use crate::{Reading, ReadingInput, RejectReason, Rejection};

/// Configurable bounds applied to every reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_payload_bytes: usize,
    /// How far ahead of the receive time a timestamp may be.
    pub max_future: Duration,
    /// How far behind the receive time a timestamp may be.
    pub max_past: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
            max_future: Duration::minutes(5),
            max_past: Duration::days(365),
        }
    }
}

/// Largest absolute value NUMERIC(10,4) holds: 999999.9999.
fn numeric_10_4_max() -> Decimal {
    Decimal::new(9_999_999_999, 4)
}

const MAX_FIELD_LEN: usize = 20;
const MAX_QUALITY_LEN: usize = 50;

/// Splits `{prefix}/{device_id}/{sensor_name}` into its two names.
pub fn parse_topic<'a>(prefix: &str, topic: &'a str) -> Result<(&'a str, &'a str), Rejection> {
    let bad = || {
        Rejection::new(
            RejectReason::BadTopic,
            format!("topic {topic:?} is not {prefix}/{{device_id}}/{{sensor_name}}"),
        )
    };
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(bad)?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(device), Some(sensor), None) if !device.is_empty() && !sensor.is_empty() => {
            Ok((device, sensor))
        }
        _ => Err(bad()),
    }
}

/// Reads the device of `{prefix}/{device_id}` (the batch and SenML topics).
pub fn parse_device_topic<'a>(prefix: &str, topic: &'a str) -> Result<&'a str, Rejection> {
    topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .filter(|d| !d.is_empty() && !d.contains('/'))
        .ok_or_else(|| {
            Rejection::new(
                RejectReason::BadTopic,
                format!("topic {topic:?} is not {prefix}/{{device_id}}"),
            )
        })
}

/// Parses a decimal written as a JSON number (plain or scientific).
pub fn parse_decimal(text: &str) -> Result<Decimal, Rejection> {
    let parsed = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text)
    } else {
        text.parse::<Decimal>()
    };
    parsed.map_err(|e| {
        Rejection::new(
            RejectReason::BadValue,
            format!("value {text} is not a finite number that fits NUMERIC(10,4): {e}"),
        )
    })
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, Rejection> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            Rejection::new(
                RejectReason::BadTimestamp,
                format!("timestamp {text:?} is not RFC 3339: {e}"),
            )
        })
}

/// True when `name` matches `[A-Za-z0-9_.-]{1,100}`.
pub fn is_valid_sensor_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a parsed reading for a known device and turns it into a [`Reading`].
/// The device's existence and status are checked by the caller, which owns
/// the registry lookup.
pub fn validate_reading(
    device_uuid: Uuid,
    device_id: &str,
    input: ReadingInput,
    received_at: DateTime<Utc>,
    limits: &Limits,
) -> Result<Reading, Rejection> {
    check_sensor_name(&input.sensor_name)?;
    let value = storable_value(input.value)?;
    let time = input.time.unwrap_or(received_at);
    if time > received_at + limits.max_future {
        return Err(Rejection::new(
            RejectReason::TimestampOutOfRange,
            format!(
                "timestamp {time} is more than {} s in the future",
                limits.max_future.num_seconds()
            ),
        ));
    }
    if time < received_at - limits.max_past {
        return Err(Rejection::new(
            RejectReason::TimestampOutOfRange,
            format!(
                "timestamp {time} is more than {} s in the past",
                limits.max_past.num_seconds()
            ),
        ));
    }
    check_fields(input.unit.as_deref(), input.quality.as_deref())?;
    Ok(Reading {
        device_uuid,
        device_id: device_id.to_owned(),
        sensor_name: input.sensor_name,
        value,
        time,
        unit: input.unit,
        quality: input.quality,
        received_at,
    })
}

/// What the database's columns hold, whoever produced the reading: the
/// sensor name's pattern, NUMERIC(10,4), and the lengths of `unit` and
/// `quality`. Returns the value rounded to the column's 4 places. (The
/// time window is the gateway's policy, not a limit of the columns.)
pub fn check_storable(
    sensor_name: &str,
    value: Decimal,
    unit: Option<&str>,
    quality: Option<&str>,
) -> Result<Decimal, Rejection> {
    check_sensor_name(sensor_name)?;
    let value = storable_value(value)?;
    check_fields(unit, quality)?;
    Ok(value)
}

fn check_sensor_name(name: &str) -> Result<(), Rejection> {
    if is_valid_sensor_name(name) {
        return Ok(());
    }
    Err(Rejection::new(
        RejectReason::BadSensorName,
        format!("sensor name {name:?} must match [A-Za-z0-9_.-]{{1,100}}"),
    ))
}

/// `value` rounded as NUMERIC(10,4) stores it, if it fits.
fn storable_value(value: Decimal) -> Result<Decimal, Rejection> {
    let rounded = value.round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero);
    if rounded.abs() > numeric_10_4_max() {
        return Err(Rejection::new(
            RejectReason::BadValue,
            format!("value {value} is outside NUMERIC(10,4) (|v| <= 999999.9999)"),
        ));
    }
    Ok(rounded)
}

fn check_fields(unit: Option<&str>, quality: Option<&str>) -> Result<(), Rejection> {
    check_field("unit", unit, MAX_FIELD_LEN)?;
    check_field("quality", quality, MAX_QUALITY_LEN)
}

fn check_field(name: &str, value: Option<&str>, max: usize) -> Result<(), Rejection> {
    match value {
        Some(v) if v.chars().count() > max => Err(Rejection::new(
            RejectReason::BadField,
            format!("{name} is longer than {max} characters"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        parse_time("2026-11-27T10:00:30Z").unwrap()
    }

    #[test]
    fn topic_shapes() {
        assert_eq!(
            parse_topic("sensors", "sensors/d1/temperature").unwrap(),
            ("d1", "temperature")
        );
        assert_eq!(parse_topic("a/b", "a/b/d1/t").unwrap(), ("d1", "t"));
        assert_eq!(parse_device_topic("batches", "batches/d1").unwrap(), "d1");
        for bad in ["batches/d1/x", "batches/", "batches", "other/d1"] {
            assert_eq!(
                parse_device_topic("batches", bad).unwrap_err().reason,
                RejectReason::BadTopic
            );
        }
        for bad in [
            "sensors/d1",
            "sensors/d1/t/x",
            "other/d1/t",
            "sensors//t",
            "sensorsX/d1/t",
        ] {
            assert_eq!(
                parse_topic("sensors", bad).unwrap_err().reason,
                RejectReason::BadTopic,
                "{bad}"
            );
        }
    }

    #[test]
    fn seed_payload_parses() {
        let r = parse_mqtt_payload(
            "temperature",
            br#"{"value": 23.5, "timestamp": "2026-11-27T10:00:00Z", "unit": "C"}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(r.value, Decimal::new(235, 1));
        assert_eq!(r.time, Some(parse_time("2026-11-27T10:00:00Z").unwrap()));
        assert_eq!(r.unit.as_deref(), Some("C"));
    }

    #[test]
    fn bad_payloads_have_specific_reasons() {
        let l = Limits::default();
        let cases: [(&[u8], RejectReason); 7] = [
            (b"not json", RejectReason::BadJson),
            (b"[1,2]", RejectReason::BadJson),
            (
                br#"{"timestamp":"2026-11-27T10:00:00Z"}"#,
                RejectReason::BadJson,
            ),
            (br#"{"value":"23.5"}"#, RejectReason::BadValue),
            // Valid JSON, but not a finite number.
            (br#"{"value":1e400}"#, RejectReason::BadValue),
            (
                br#"{"value":1,"timestamp":"yesterday"}"#,
                RejectReason::BadTimestamp,
            ),
            (br#"{"value":1,"unit":5}"#, RejectReason::BadField),
        ];
        for (payload, reason) in cases {
            let got = parse_mqtt_payload("t", payload, &l).unwrap_err();
            assert_eq!(got.reason, reason, "{}", String::from_utf8_lossy(payload));
        }
        let big = vec![b' '; l.max_payload_bytes + 1];
        assert_eq!(
            parse_mqtt_payload("t", &big, &l).unwrap_err().reason,
            RejectReason::PayloadTooLarge
        );
    }

    #[test]
    fn validation_bounds() {
        let l = Limits::default();
        let id = Uuid::nil();
        let input = |name: &str, v: Decimal, t: Option<&str>| ReadingInput {
            sensor_name: name.into(),
            value: v,
            time: t.map(|t| parse_time(t).unwrap()),
            unit: None,
            quality: None,
        };
        let ok = validate_reading(
            id,
            "d",
            input("t", Decimal::new(123_456_789, 5), None),
            now(),
            &l,
        )
        .unwrap();
        assert_eq!(ok.value, Decimal::new(12_345_679, 4));
        assert_eq!(ok.time, now());
        let err = |i| validate_reading(id, "d", i, now(), &l).unwrap_err().reason;
        assert_eq!(
            err(input("bad name", Decimal::ONE, None)),
            RejectReason::BadSensorName
        );
        assert_eq!(
            err(input("t", Decimal::new(10_000_000, 1), None)),
            RejectReason::BadValue
        );
        assert_eq!(
            err(input("t", Decimal::ONE, Some("2026-11-28T10:00:00Z"))),
            RejectReason::TimestampOutOfRange
        );
        assert_eq!(
            err(input("t", Decimal::ONE, Some("2020-01-01T00:00:00Z"))),
            RejectReason::TimestampOutOfRange
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_mqtt_payload("t", &bytes, &Limits::default());
        }

        #[test]
        fn sensor_name_rule(name in "[A-Za-z0-9_.-]{1,100}") {
            prop_assert!(is_valid_sensor_name(&name));
        }

        #[test]
        fn accepted_values_fit_numeric(v in -1.0e7f64..1.0e7f64) {
            let payload = format!("{{\"value\": {v}}}");
            let limits = Limits::default();
            let input = parse_mqtt_payload("t", payload.as_bytes(), &limits);
            if let Ok(r) = input.and_then(|i| validate_reading(Uuid::nil(), "d", i, now(), &limits)) {
                prop_assert!(r.value.abs() <= numeric_10_4_max());
                prop_assert!(r.value.scale() <= 4);
            }
        }
    }
}
