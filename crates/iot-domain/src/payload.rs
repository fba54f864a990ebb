//! The three payload forms a device may send, parsed into [`ReadingInput`]s.
//!
//! - single: the seed's `{"value": 23.5, "timestamp": "...", "unit": .., "quality": ..}`
//!   for the sensor named by the topic;
//! - batch: many readings of one device, `[{"sensor": "temperature", "value": 23.5, ...}, ...]`
//!   or `{"readings": [...]}`;
//! - SenML JSON (RFC 8428): `[{"bn": "...", "bt": 1.8e9, "n": "temperature", "u": "Cel", "v": 23.5}, ...]`.
//!
//! A payload that cannot be read at all is one [`Rejection`]; in a batch or a
//! SenML pack each entry is accepted or rejected on its own, so one bad entry
//! never costs the good ones.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::validate::{parse_decimal, parse_time};
use crate::{Limits, ReadingInput, RejectReason, Rejection};

/// One entry of a multi-reading payload: its reading, or why it was refused.
pub type Entry = Result<ReadingInput, Rejection>;

/// Most entries one batch or SenML pack may carry.
pub const MAX_ENTRIES: usize = 10_000;

/// SenML times below 2**28 are relative to now (RFC 8428 section 4.5.3).
const SENML_RELATIVE_LIMIT: f64 = 268_435_456.0;

fn check_size(payload: &[u8], limits: &Limits) -> Result<(), Rejection> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Rejection::new(
            RejectReason::PayloadTooLarge,
            format!(
                "payload is {} bytes, limit is {}",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    Ok(())
}

fn parse_json(payload: &[u8], limits: &Limits) -> Result<Value, Rejection> {
    check_size(payload, limits)?;
    serde_json::from_slice(payload).map_err(|e| {
        // JSON puts no bound on numbers; serde_json refuses those beyond
        // f64 (1e400). Such a value is not a finite number: a bad value,
        // not bad JSON.
        if e.to_string().starts_with("number out of range") {
            Rejection::new(
                RejectReason::BadValue,
                format!("a number in the payload is not finite: {e}"),
            )
        } else {
            Rejection::new(RejectReason::BadJson, format!("payload is not JSON: {e}"))
        }
    })
}

/// The single-reading form, for the sensor named by the topic.
pub fn parse_single(
    sensor_name: &str,
    payload: &[u8],
    limits: &Limits,
) -> Result<ReadingInput, Rejection> {
    let Value::Object(obj) = parse_json(payload, limits)? else {
        return Err(Rejection::new(
            RejectReason::BadJson,
            "payload must be a JSON object with a \"value\" field",
        ));
    };
    entry_from_object(&obj, sensor_name.to_owned())
}

/// The batch form: a JSON array of readings, or `{"readings": [...]}`, or one
/// reading object; each reading names its sensor with `"sensor"` (or
/// `"sensor_name"`).
pub fn parse_batch(payload: &[u8], limits: &Limits) -> Result<Vec<Entry>, Rejection> {
    let items = match parse_json(payload, limits)? {
        Value::Array(items) => items,
        // One reading that names its sensor is a batch of one.
        Value::Object(obj) if obj.contains_key("sensor") || obj.contains_key("sensor_name") => {
            return Ok(vec![batch_entry(&Value::Object(obj))]);
        }
        Value::Object(mut obj) => match obj.remove("readings") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(Rejection::new(
                    RejectReason::BadJson,
                    "a batch is a JSON array of readings or an object with a \"readings\" array",
                ));
            }
        },
        _ => {
            return Err(Rejection::new(
                RejectReason::BadJson,
                "a batch is a JSON array of readings or an object with a \"readings\" array",
            ));
        }
    };
    check_entries(items.len())?;
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, item)| batch_entry(item).map_err(|r| at_index(i, r)))
        .collect())
}

fn check_entries(n: usize) -> Result<(), Rejection> {
    if n == 0 {
        return Err(Rejection::new(
            RejectReason::BadJson,
            "the payload holds no readings",
        ));
    }
    if n > MAX_ENTRIES {
        return Err(Rejection::new(
            RejectReason::PayloadTooLarge,
            format!("{n} readings in one message, limit is {MAX_ENTRIES}"),
        ));
    }
    Ok(())
}

fn at_index(i: usize, r: Rejection) -> Rejection {
    Rejection::new(r.reason, format!("readings[{i}]: {}", r.detail))
}

fn batch_entry(item: &Value) -> Entry {
    let Value::Object(obj) = item else {
        return Err(Rejection::new(
            RejectReason::BadJson,
            "a reading must be a JSON object",
        ));
    };
    let sensor = match obj.get("sensor").or_else(|| obj.get("sensor_name")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::BadSensorName,
                format!("\"sensor\" must be a string, got {other}"),
            ));
        }
        None => return Err(Rejection::new(RejectReason::BadJson, "missing \"sensor\"")),
    };
    entry_from_object(obj, sensor)
}

/// Reads value, timestamp, unit and quality of a single or batch reading.
fn entry_from_object(obj: &Map<String, Value>, sensor_name: String) -> Entry {
    let value = match obj.get("value") {
        Some(Value::Number(n)) => parse_decimal(&n.to_string())?,
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::BadValue,
                format!("\"value\" must be a JSON number, got {other}"),
            ));
        }
        None => return Err(Rejection::new(RejectReason::BadJson, "missing \"value\"")),
    };
    let time = match obj.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_time(s)?),
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::BadTimestamp,
                format!("\"timestamp\" must be an RFC 3339 string, got {other}"),
            ));
        }
    };
    Ok(ReadingInput {
        sensor_name,
        value,
        time,
        unit: optional_string(obj, "unit")?,
        quality: optional_string(obj, "quality")?,
    })
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Rejection> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Rejection::new(
            RejectReason::BadField,
            format!("{key:?} must be a string, got {other}"),
        )),
    }
}

/// SenML JSON (RFC 8428) for one device (named by the topic or URL).
///
/// Base fields (`bn`, `bt`, `bu`, `bv`) carry forward to later records as
/// the RFC says. A record's sensor name is its resolved name `bn + n` when
/// that is a valid sensor name, otherwise `n` alone (so a device URN in `bn`,
/// such as `urn:dev:mac:0024befffe804ff1:`, names the device, not the sensor).
/// Only numeric values (`v`, plus `bv`) are readings: `vs`, `vb` and `vd`
/// records are rejected as `bad_value`. Times are seconds since the epoch;
/// below 2**28 they are relative to `now`.
pub fn parse_senml(
    payload: &[u8],
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Vec<Entry>, Rejection> {
    let Value::Array(records) = parse_json(payload, limits)? else {
        return Err(Rejection::new(
            RejectReason::BadJson,
            "a SenML pack is a JSON array of records",
        ));
    };
    check_entries(records.len())?;
    check_senml_support(&records)?;
    let mut base = SenmlBase::default();
    Ok(records
        .iter()
        .enumerate()
        .map(|(i, rec)| senml_record(rec, &mut base, now).map_err(|r| at_index(i, r)))
        .collect())
}

/// The SenML version this parser implements (RFC 8428's, the default
/// when a pack names none).
const SENML_VERSION: u64 = 10;

/// RFC 8428 section 4.4: a pack of a version the receiver does not know, or
/// with a must-understand field (a name ending in `_`) it does not
/// implement, must not be read at all; none of its records is a reading.
/// This parser implements no must-understand extension.
fn check_senml_support(records: &[Value]) -> Result<(), Rejection> {
    let unsupported = |detail: String| Rejection::new(RejectReason::UnsupportedSenml, detail);
    for (i, rec) in records.iter().enumerate() {
        let Value::Object(obj) = rec else { continue };
        if let Some(bver) = obj.get("bver")
            && bver.as_u64() != Some(SENML_VERSION)
        {
            return Err(unsupported(format!(
                "[{i}]: SenML version (\"bver\") {bver} is not supported; this platform reads version {SENML_VERSION}"
            )));
        }
        if let Some(field) = obj.keys().find(|k| k.ends_with('_')) {
            return Err(unsupported(format!(
                "[{i}]: must-understand SenML field {field:?} is not supported"
            )));
        }
    }
    Ok(())
}

#[derive(Default)]
struct SenmlBase {
    name: String,
    time: f64,
    unit: Option<String>,
    value: f64,
}

fn senml_number(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, Rejection> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| {
                Rejection::new(
                    RejectReason::BadValue,
                    format!("{key:?} is not a finite number"),
                )
            }),
        Some(other) => Err(Rejection::new(
            if key.ends_with('t') {
                RejectReason::BadTimestamp
            } else {
                RejectReason::BadValue
            },
            format!("{key:?} must be a number, got {other}"),
        )),
    }
}

fn senml_record(rec: &Value, base: &mut SenmlBase, now: DateTime<Utc>) -> Entry {
    let Value::Object(obj) = rec else {
        return Err(Rejection::new(
            RejectReason::BadJson,
            "a SenML record must be a JSON object",
        ));
    };
    // Base fields apply to this record and the ones after it.
    if let Some(bn) = obj.get("bn") {
        base.name = bn
            .as_str()
            .ok_or_else(|| Rejection::new(RejectReason::BadSensorName, "\"bn\" must be a string"))?
            .to_owned();
    }
    if let Some(bt) = senml_number(obj, "bt")? {
        base.time = bt;
    }
    if let Some(bu) = obj.get("bu") {
        base.unit = Some(
            bu.as_str()
                .ok_or_else(|| Rejection::new(RejectReason::BadField, "\"bu\" must be a string"))?
                .to_owned(),
        );
    }
    if let Some(bv) = senml_number(obj, "bv")? {
        base.value = bv;
    }
    let n = match obj.get("n") {
        None => "",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::BadSensorName,
                format!("\"n\" must be a string, got {other}"),
            ));
        }
    };
    let resolved = format!("{}{n}", base.name);
    let sensor_name = if crate::validate::is_valid_sensor_name(&resolved) || n.is_empty() {
        resolved
    } else {
        n.to_owned()
    };
    let v = match senml_number(obj, "v")? {
        Some(v) => v + base.value,
        None if ["vs", "vb", "vd"].iter().any(|k| obj.contains_key(*k)) => {
            return Err(Rejection::new(
                RejectReason::BadValue,
                "only numeric SenML values (\"v\") are readings",
            ));
        }
        None if obj.contains_key("s") => {
            return Err(Rejection::new(
                RejectReason::BadValue,
                "SenML sums (\"s\") are not readings",
            ));
        }
        None => {
            // A record with only base fields is legal SenML and carries no reading.
            if obj.keys().all(|k| k.starts_with('b') || k == "n") && n.is_empty() {
                return Err(Rejection::new(
                    RejectReason::BadJson,
                    "record has base fields only and no value",
                ));
            }
            return Err(Rejection::new(RejectReason::BadJson, "record has no \"v\""));
        }
    };
    let value = parse_decimal(&format_f64(v))?;
    let t = base.time + senml_number(obj, "t")?.unwrap_or(0.0);
    let time = if t == 0.0 {
        None
    } else if t.abs() < SENML_RELATIVE_LIMIT {
        Some(now + chrono::Duration::milliseconds((t * 1000.0).round() as i64))
    } else {
        let ms = (t * 1000.0).round();
        if !(ms.is_finite() && ms.abs() < 1e16) {
            return Err(Rejection::new(
                RejectReason::BadTimestamp,
                format!("time {t} is out of range"),
            ));
        }
        Some(DateTime::from_timestamp_millis(ms as i64).ok_or_else(|| {
            Rejection::new(
                RejectReason::BadTimestamp,
                format!("time {t} is out of range"),
            )
        })?)
    };
    let unit = match obj.get("u") {
        None => base.unit.clone(),
        Some(Value::String(u)) => Some(u.clone()),
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::BadField,
                format!("\"u\" must be a string, got {other}"),
            ));
        }
    };
    Ok(ReadingInput {
        sensor_name,
        value,
        time,
        unit,
        quality: None,
    })
}

/// Shortest decimal text of an f64 (Rust's `Display` round-trips).
fn format_f64(v: f64) -> String {
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    fn now() -> DateTime<Utc> {
        parse_time("2026-11-27T10:00:30Z").unwrap()
    }

    #[test]
    fn batch_accepts_good_entries_and_names_bad_ones() {
        let payload = br#"{"readings": [
            {"sensor": "temperature", "value": 21.5, "timestamp": "2026-11-27T10:00:00Z"},
            {"sensor": "humidity", "value": "wet"},
            {"sensor_name": "pressure", "value": 1013, "unit": "hPa"},
            {"value": 1}
        ]}"#;
        let entries = parse_batch(payload, &Limits::default()).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].as_ref().unwrap().value, Decimal::new(215, 1));
        let e1 = entries[1].as_ref().unwrap_err();
        assert_eq!(e1.reason, RejectReason::BadValue);
        assert!(e1.detail.starts_with("readings[1]:"), "{}", e1.detail);
        assert_eq!(entries[2].as_ref().unwrap().unit.as_deref(), Some("hPa"));
        assert_eq!(
            entries[3].as_ref().unwrap_err().reason,
            RejectReason::BadJson
        );
        // The bare-array form is the same.
        let arr = parse_batch(br#"[{"sensor": "t", "value": 1}]"#, &Limits::default()).unwrap();
        assert_eq!(arr.len(), 1);
    }

    #[test]
    fn numbers_beyond_f64_are_bad_values() {
        let l = Limits::default();
        let single = parse_single("t", br#"{"value": 1e400}"#, &l).unwrap_err();
        assert_eq!(single.reason, RejectReason::BadValue, "{}", single.detail);
        let senml = parse_senml(br#"[{"n": "t", "v": 1e400}]"#, &l, chrono::Utc::now());
        assert_eq!(senml.unwrap_err().reason, RejectReason::BadValue);
    }

    #[test]
    fn batch_shape_errors() {
        let l = Limits::default();
        for (payload, reason) in [
            (&br#"{"value": 1e400}"#[..], RejectReason::BadValue),
            (br#"{"value": -1e400}"#, RejectReason::BadValue),
            (b"{}", RejectReason::BadJson),
            (b"[]", RejectReason::BadJson),
            (b"42", RejectReason::BadJson),
            (b"[", RejectReason::BadJson),
        ] {
            assert_eq!(parse_batch(payload, &l).unwrap_err().reason, reason);
        }
        let many = format!(
            "[{}]",
            vec![r#"{"sensor":"t","value":1}"#; MAX_ENTRIES + 1].join(",")
        );
        let big = Limits {
            max_payload_bytes: 1 << 30,
            ..l
        };
        assert_eq!(
            parse_batch(many.as_bytes(), &big).unwrap_err().reason,
            RejectReason::PayloadTooLarge
        );
    }

    #[test]
    fn senml_rfc8428_example() {
        // RFC 8428 section 5.1.2, with base name, base time and base unit.
        let payload = br#"[
            {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e+09, "bu": "%RH", "v": 20},
            {"u": "lon", "v": 24.30621},
            {"u": "lat", "v": 60.07965},
            {"t": 60, "v": 20.3},
            {"n": "temperature", "u": "Cel", "t": 120, "v": 23.5},
            {"n": "status", "vs": "ok"}
        ]"#;
        let e = parse_senml(payload, &Limits::default(), now()).unwrap();
        let first = e[0].as_ref().unwrap();
        // bn is a device URN, not a valid sensor name: with no "n" the
        // record's name is the (invalid) base name and is refused later.
        assert_eq!(first.sensor_name, "urn:dev:ow:10e2073a01080063:");
        assert_eq!(first.unit.as_deref(), Some("%RH"));
        assert_eq!(
            first.time,
            Some(DateTime::from_timestamp(1_320_067_464, 0).unwrap())
        );
        let t = e[4].as_ref().unwrap();
        assert_eq!(t.sensor_name, "temperature");
        assert_eq!(t.unit.as_deref(), Some("Cel"));
        assert_eq!(t.value, Decimal::new(235, 1));
        assert_eq!(
            t.time,
            Some(DateTime::from_timestamp(1_320_067_584, 0).unwrap())
        );
        assert_eq!(e[5].as_ref().unwrap_err().reason, RejectReason::BadValue);
    }

    #[test]
    fn senml_of_another_version_or_with_must_understand_fields_is_refused_whole() {
        for (payload, names) in [
            (
                &br#"[{"n": "t", "v": 1}, {"bver": 11, "n": "t", "v": 2}]"#[..],
                "\"bver\") 11",
            ),
            (br#"[{"bver": "10", "n": "t", "v": 1}]"#, "\"bver\") \"10\""),
            (
                br#"[{"n": "t", "v": 1}, {"n": "t", "v": 2, "rollover_": 5}]"#,
                "\"rollover_\"",
            ),
        ] {
            let r = parse_senml(payload, &Limits::default(), now()).unwrap_err();
            assert_eq!(r.reason, RejectReason::UnsupportedSenml);
            assert!(r.detail.contains(names), "{}", r.detail);
        }
        // Version 10, named or not, is read.
        let e = parse_senml(
            br#"[{"bver": 10, "n": "t", "v": 1}, {"n": "t", "v": 2, "t": -1}]"#,
            &Limits::default(),
            now(),
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(Result::is_ok));
    }

    #[test]
    fn senml_record_named_by_its_base_name_alone() {
        let e = parse_senml(
            br#"[{"bn": "temperature", "v": 23.5}, {"bn": "humidity", "bu": "%RH", "v": 40}]"#,
            &Limits::default(),
            now(),
        )
        .unwrap();
        let got: Vec<_> = e
            .iter()
            .map(|r| {
                let r = r.as_ref().unwrap();
                (r.sensor_name.as_str(), r.value, r.unit.as_deref())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("temperature", Decimal::new(235, 1), None),
                ("humidity", Decimal::new(40, 0), Some("%RH")),
            ]
        );
    }

    #[test]
    fn senml_names_times_and_base_values() {
        let payload = br#"[
            {"bn": "boiler.", "n": "temp", "v": 1, "bv": 100},
            {"n": "temp", "v": 2, "t": -5},
            {"n": "flow"}
        ]"#;
        let e = parse_senml(payload, &Limits::default(), now()).unwrap();
        let a = e[0].as_ref().unwrap();
        assert_eq!(a.sensor_name, "boiler.temp");
        assert_eq!(a.value, Decimal::from(101));
        assert_eq!(a.time, None, "no time: the receive time applies");
        let b = e[1].as_ref().unwrap();
        assert_eq!(b.value, Decimal::from(102));
        assert_eq!(b.time, Some(now() - chrono::Duration::seconds(5)));
        assert_eq!(e[2].as_ref().unwrap_err().reason, RejectReason::BadJson);
        assert_eq!(
            parse_senml(br#"{"v": 1}"#, &Limits::default(), now())
                .unwrap_err()
                .reason,
            RejectReason::BadJson
        );
    }

    proptest! {
        #[test]
        fn batch_and_senml_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_batch(&bytes, &Limits::default());
            let _ = parse_senml(&bytes, &Limits::default(), now());
        }

        #[test]
        fn batch_round_trips_values(values in proptest::collection::vec(-999_999.999_9f64..999_999.999_9, 1..50)) {
            let items: Vec<String> = values.iter().enumerate()
                .map(|(i, v)| format!(r#"{{"sensor": "s{i}", "value": {v}}}"#))
                .collect();
            let payload = format!("[{}]", items.join(","));
            let entries = parse_batch(payload.as_bytes(), &Limits { max_payload_bytes: 1 << 20, ..Limits::default() }).unwrap();
            prop_assert_eq!(entries.len(), values.len());
            for (e, v) in entries.iter().zip(&values) {
                let got = e.as_ref().unwrap().value;
                prop_assert_eq!(got, parse_decimal(&format!("{v}")).unwrap());
            }
        }

        #[test]
        fn senml_values_match_batch_values(v in -999_999.999_9f64..999_999.999_9) {
            let senml = format!(r#"[{{"n": "t", "v": {v}}}]"#);
            let batch = format!(r#"[{{"sensor": "t", "value": {v}}}]"#);
            let a = parse_senml(senml.as_bytes(), &Limits::default(), now()).unwrap().remove(0).unwrap();
            let b = parse_batch(batch.as_bytes(), &Limits::default()).unwrap().remove(0).unwrap();
            prop_assert_eq!(a.value, b.value);
        }
    }
}
