//! Request checks of the registry: each reports every problem it finds as
//! `"field: problem"`, so that one answer names them all (and each becomes a
//! `google.rpc.BadRequest` field violation).

use std::str::FromStr;

use iot_proto::codes::{either, given};
use iot_proto::v1;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::RegistryError;
use crate::service::MAX_LIST;
use crate::store::{self, NewDevice};

/// A device's `data_retention_days`, if given, must be in 1..=`max`
/// (`limits.max_retention_days`): the writer drops whole partitions only
/// past the longest retention any device asks for, so one device's must
/// not hold every owner's old readings.
pub(crate) fn check_retention(problems: &mut Vec<String>, days: Option<i32>, max: i32) {
    if days.is_some_and(|d| !(1..=max).contains(&d)) {
        problems.push(format!(
            "config.data_retention_days: must be in 1..={max} (limits.max_retention_days)"
        ));
    }
}

pub(crate) fn check_len(
    problems: &mut Vec<String>,
    field: &str,
    value: &str,
    max: usize,
    required: bool,
) {
    if required && value.trim().is_empty() {
        problems.push(format!("{field}: is required"));
    } else if value.chars().count() > max {
        problems.push(format!("{field}: is longer than {max} characters"));
    }
}

pub(crate) fn parse_coord(
    problems: &mut Vec<String>,
    field: &str,
    v: Option<&str>,
    limit: i64,
) -> Option<Decimal> {
    let v = v?;
    match Decimal::from_str(v) {
        Ok(d) if d.abs() <= Decimal::from(limit) => Some(d),
        Ok(_) => {
            problems.push(format!("{field}: {v} is outside [-{limit}, {limit}]"));
            None
        }
        Err(_) => {
            problems.push(format!("{field}: {v:?} is not a decimal number"));
            None
        }
    }
}

pub(crate) fn parse_json(
    problems: &mut Vec<String>,
    field: &str,
    v: Option<&str>,
) -> Option<serde_json::Value> {
    let v = v?;
    match serde_json::from_str(v) {
        Ok(json) => Some(json),
        Err(e) => {
            problems.push(format!("{field}: is not valid JSON: {e}"));
            None
        }
    }
}

/// A request's status, given as text (`status`) or enum (`status_code`);
/// None when neither is given or there is a problem (pushed to `problems`).
pub(crate) fn status_of(
    problems: &mut Vec<String>,
    text: Option<&str>,
    code: Option<i32>,
) -> Option<v1::DeviceStatus> {
    either(problems, ("status", text), ("status_code", code))
}

/// A device's `alert_threshold`: an object of sensor name to
/// `{"min": number?, "max": number?}` with min <= max.
pub(crate) fn parse_thresholds(
    problems: &mut Vec<String>,
    field: &str,
    v: Option<&str>,
) -> Option<serde_json::Value> {
    let json = parse_json(problems, field, v)?;
    let before = problems.len();
    match json.as_object() {
        None => problems.push(format!(
            "{field}: must be an object of sensor name to {{min?, max?}}"
        )),
        Some(sensors) => {
            for (sensor, limits) in sensors {
                let at = format!("{field}.{sensor}");
                if !iot_domain::validate::is_valid_sensor_name(sensor) {
                    problems.push(format!("{at}: {sensor:?} is not a valid sensor name"));
                }
                let Some(limits) = limits.as_object() else {
                    problems.push(format!("{at}: must be an object {{min?, max?}}"));
                    continue;
                };
                for key in limits.keys().filter(|k| *k != "min" && *k != "max") {
                    problems.push(format!("{at}.{key}: is not min or max"));
                }
                let num = |k: &str| match limits.get(k) {
                    None => Ok(None),
                    Some(v) => v.as_f64().map(Some).ok_or(k.to_owned()),
                };
                match (num("min"), num("max")) {
                    (Ok(Some(lo)), Ok(Some(hi))) if lo > hi => {
                        problems.push(format!("{at}: min {lo} is greater than max {hi}"));
                    }
                    (Ok(None), Ok(None)) => problems.push(format!("{at}: needs min or max")),
                    (Err(k), _) | (_, Err(k)) => {
                        problems.push(format!("{at}.{k}: must be a number"));
                    }
                    _ => {}
                }
            }
        }
    }
    (problems.len() == before).then_some(json)
}

pub(crate) fn validate_sensors(
    problems: &mut Vec<String>,
    sensors: Vec<v1::Sensor>,
) -> Vec<store::NewSensor> {
    let mut seen = std::collections::HashSet::new();
    sensors
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let at = format!("sensors[{i}]");
            if !iot_domain::validate::is_valid_sensor_name(&s.sensor_name) {
                problems.push(format!(
                    "{at}.sensor_name: {:?} is not 1-100 of [A-Za-z0-9_.-]",
                    s.sensor_name
                ));
            }
            if !seen.insert(s.sensor_name.clone()) {
                problems.push(format!(
                    "{at}.sensor_name: {:?} is declared twice",
                    s.sensor_name
                ));
            }
            if let Some(u) = &s.unit {
                check_len(problems, &format!("{at}.unit"), u, 20, false);
            }
            if let Some(t) = &s.sensor_type {
                check_len(problems, &format!("{at}.sensor_type"), t, 50, false);
            }
            let accuracy = s
                .accuracy
                .as_deref()
                .and_then(|a| match Decimal::from_str(a) {
                    Ok(d) if d.abs() < Decimal::from(1000) && d.scale() <= 2 => Some(d),
                    _ => {
                        problems.push(format!("{at}.accuracy: {a:?} does not fit NUMERIC(5,2)"));
                        None
                    }
                });
            store::NewSensor {
                name: s.sensor_name,
                unit: s.unit,
                sensor_type: s.sensor_type,
                accuracy,
            }
        })
        .collect()
}

/// Checks a create request and reports every problem at once. In an owner
/// scope the device belongs to the caller.
pub(crate) fn validate_create(
    req: v1::CreateDeviceRequest,
    caller: Option<Uuid>,
    max_retention_days: i32,
) -> Result<NewDevice, RegistryError> {
    let mut p = Vec::new();
    check_len(&mut p, "device_id", &req.device_id, 100, true);
    if req.device_id.contains(['/', '+', '#']) {
        p.push("device_id: must not contain '/', '+' or '#' (it is an MQTT topic level)".into());
    }
    if Uuid::parse_str(&req.device_id).is_ok() {
        // A topic names a device by device_id or platform UUID; a device_id
        // shaped like a UUID could publish as another owner's device.
        p.push("device_id: must not be a UUID (platform ids are UUIDs)".into());
    }
    if req.device_id.starts_with("platform.") {
        p.push(
            "device_id: must not start with \"platform.\" (reserved for platform accounts)".into(),
        );
    }
    check_len(&mut p, "name", &req.name, 255, true);
    check_len(&mut p, "device_type", &req.device_type, 50, true);
    if let Some(l) = &req.location {
        check_len(&mut p, "location", l, 255, false);
    }
    let latitude = parse_coord(&mut p, "latitude", req.latitude.as_deref(), 90);
    let longitude = parse_coord(&mut p, "longitude", req.longitude.as_deref(), 180);
    let requested = if req.owner_id.is_empty() {
        None
    } else {
        Uuid::parse_str(&req.owner_id)
            .map(Some)
            .unwrap_or_else(|_| {
                p.push(format!("owner_id: {:?} is not a UUID", req.owner_id));
                None
            })
    };
    let owner_id = match (caller, requested) {
        (Some(c), Some(r)) if c != r => {
            p.push("owner_id: is not the caller's owner".into());
            c
        }
        (Some(c), _) => c,
        (None, r) => r.unwrap_or(Uuid::nil()),
    };
    let status = status_of(&mut p, given(&req.status), Some(req.status_code))
        .unwrap_or(v1::DeviceStatus::Active)
        .as_text()
        .to_owned();
    let cfg = req.config.unwrap_or_default();
    let read_interval = if cfg.read_interval == 0 {
        60
    } else {
        cfg.read_interval
    };
    if read_interval < 0 {
        p.push("config.read_interval: must be positive".into());
    }
    check_retention(&mut p, cfg.data_retention_days, max_retention_days);
    let alert_threshold = parse_thresholds(
        &mut p,
        "config.alert_threshold_json",
        cfg.alert_threshold_json.as_deref(),
    );
    let custom_fields = parse_json(
        &mut p,
        "config.custom_fields_json",
        cfg.custom_fields_json.as_deref(),
    );
    let sensors = validate_sensors(&mut p, req.sensors);
    if !p.is_empty() {
        return Err(RegistryError::Invalid(p));
    }
    Ok(NewDevice {
        device_id: req.device_id,
        name: req.name,
        device_type: req.device_type,
        location: req.location,
        latitude,
        longitude,
        owner_id,
        status,
        read_interval,
        alert_threshold,
        // None: the platform's default retention applies.
        data_retention_days: cfg.data_retention_days,
        custom_fields,
        sensors,
    })
}

/// A request's list of platform ids (at most [`MAX_LIST`]) as UUIDs; each
/// problem is added to `problems`, naming `field`.
pub(crate) fn uuid_list(field: &str, ids: &[String], problems: &mut Vec<String>) -> Vec<Uuid> {
    if ids.len() > MAX_LIST as usize {
        problems.push(format!("{field}: {} is more than {MAX_LIST}", ids.len()));
    }
    ids.iter()
        .filter_map(|id| match Uuid::parse_str(id) {
            Ok(u) => Some(u),
            Err(_) => {
                problems.push(format!("{field}: {id:?} is not a UUID"));
                None
            }
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    /// `limits.max_retention_days` in these tests.
    const MAX: i32 = 3_650;

    fn threshold_problems(json: &str) -> Vec<String> {
        let mut p = Vec::new();
        parse_thresholds(&mut p, "t", Some(json));
        p
    }

    #[test]
    fn thresholds_are_sensor_name_to_min_and_max() {
        assert!(threshold_problems(r#"{"temperature": {"max": 30}}"#).is_empty());
        assert!(
            threshold_problems(
                r#"{"temperature": {"min": -5, "max": 30.5}, "battery": {"min": 15}}"#
            )
            .is_empty()
        );
        for bad in [
            "[1]",
            r#"{"temperature": 30}"#,
            r#"{"temperature": {"min": 40, "max": 30}}"#,
            r#"{"temperature": {"max": "hot"}}"#,
            r#"{"temperature": {}}"#,
            r#"{"temperature": {"maximum": 3}}"#,
            r#"{"bad name": {"max": 3}}"#,
            "{not json",
        ] {
            let p = threshold_problems(bad);
            assert!(!p.is_empty(), "{bad}");
            assert!(p.iter().all(|m| m.starts_with('t')), "{p:?}");
        }
    }

    #[test]
    fn an_owner_creates_only_its_own_devices() {
        let me = Uuid::new_v4();
        let req = |owner: String| v1::CreateDeviceRequest {
            device_id: "d".into(),
            name: "D".into(),
            device_type: "t".into(),
            owner_id: owner,
            ..Default::default()
        };
        assert_eq!(
            validate_create(req(String::new()), Some(me), MAX)
                .unwrap()
                .owner_id,
            me
        );
        assert!(validate_create(req(Uuid::new_v4().to_string()), Some(me), MAX).is_err());
        let other = Uuid::new_v4();
        assert_eq!(
            validate_create(req(other.to_string()), None, MAX)
                .unwrap()
                .owner_id,
            other
        );
    }

    #[test]
    fn create_reports_every_problem() {
        let err = validate_create(
            v1::CreateDeviceRequest {
                device_id: "a/b".into(),
                name: String::new(),
                device_type: "x".repeat(51),
                latitude: Some("91".into()),
                longitude: Some("east".into()),
                owner_id: "nope".into(),
                status: "broken".into(),
                ..Default::default()
            },
            None,
            MAX,
        )
        .err()
        .unwrap();
        let RegistryError::Invalid(p) = err else {
            panic!("{err}")
        };
        assert_eq!(p.len(), 7, "{p:?}");
    }

    #[test]
    fn defaults_apply() {
        let d = validate_create(
            v1::CreateDeviceRequest {
                device_id: "dev-1".into(),
                name: "Dev".into(),
                device_type: "temperature_sensor".into(),
                ..Default::default()
            },
            None,
            MAX,
        )
        .unwrap();
        assert_eq!(d.status, "active");
        assert_eq!(d.read_interval, 60);
        assert_eq!(d.owner_id, Uuid::nil());
    }

    #[test]
    fn retention_is_bounded_by_the_configured_maximum() {
        let req = |days: i32| v1::CreateDeviceRequest {
            device_id: "d".into(),
            name: "D".into(),
            device_type: "t".into(),
            config: Some(v1::DeviceConfig {
                data_retention_days: Some(days),
                ..Default::default()
            }),
            ..Default::default()
        };
        for ok in [1, 365, MAX] {
            let d = validate_create(req(ok), None, MAX).unwrap();
            assert_eq!(d.data_retention_days, Some(ok));
        }
        for bad in [0, -1, MAX + 1, 36_500] {
            let Err(RegistryError::Invalid(p)) = validate_create(req(bad), None, MAX) else {
                panic!("{bad} days accepted");
            };
            assert_eq!(
                p,
                ["config.data_retention_days: must be in 1..=3650 (limits.max_retention_days)"]
            );
        }
        // A platform that allows longer allows longer.
        assert!(validate_create(req(36_500), None, 36_500).is_ok());
    }
}
