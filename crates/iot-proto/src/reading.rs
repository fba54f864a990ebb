//! The reading contract: the one conversion between a validated
//! [`iot_domain::Reading`] and its record on the readings topic
//! (`iot.v1.ReadingEnvelope`). The gateway encodes with it; ingest-writer,
//! alert-engine and the benchmarks decode with it.

use std::str::FromStr as _;

use iot_domain::{Reading, RejectReason, Rejection};
use prost::Message as _;
use rust_decimal::Decimal;

use crate::v1::ReadingEnvelope;

/// The record of `reading`, which came in through `source` ("mqtt",
/// "http", "grpc"). The record's key is [`key`].
pub fn encode(reading: &Reading, source: &str) -> Vec<u8> {
    ReadingEnvelope {
        device_uuid: reading.device_uuid.to_string(),
        device_id: reading.device_id.clone(),
        sensor_name: reading.sensor_name.clone(),
        value: reading.value.to_string(),
        time: Some(crate::timestamp(reading.time)),
        unit: reading.unit.clone(),
        quality: reading.quality.clone(),
        received_at: Some(crate::timestamp(reading.received_at)),
        source: source.to_owned(),
    }
    .encode_to_vec()
}

/// The record key of `reading`: its device, so that one device's readings
/// stay on one partition, in order.
pub fn key(reading: &Reading) -> String {
    reading.device_uuid.to_string()
}

/// The reading a record holds. `Err` (reason `undecodable`) for a record
/// that is not a reading envelope or lacks what every reading has (a
/// device UUID, a decimal value, a time); the topic may have producers
/// other than the gateway. The values are not re-validated here: a
/// consumer that stores them checks what its table can hold. A record
/// without `received_at` counts as received at its reading's time.
pub fn decode(payload: &[u8]) -> Result<Reading, Rejection> {
    let bad = |what: String| Rejection::new(RejectReason::Undecodable, what);
    let env =
        ReadingEnvelope::decode(payload).map_err(|e| bad(format!("not a ReadingEnvelope: {e}")))?;
    let device_uuid = uuid::Uuid::parse_str(&env.device_uuid)
        .map_err(|e| bad(format!("device_uuid {:?}: {e}", env.device_uuid)))?;
    let value =
        Decimal::from_str(&env.value).map_err(|e| bad(format!("value {:?}: {e}", env.value)))?;
    let time = env
        .time
        .as_ref()
        .and_then(crate::from_timestamp)
        .ok_or_else(|| bad("missing or invalid time".into()))?;
    let received_at = env
        .received_at
        .as_ref()
        .and_then(crate::from_timestamp)
        .unwrap_or(time);
    Ok(Reading {
        device_uuid,
        device_id: env.device_id,
        sensor_name: env.sensor_name,
        value,
        time,
        unit: env.unit,
        quality: env.quality,
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 123_000_000).unwrap();
        Reading {
            device_uuid: uuid::Uuid::new_v4(),
            device_id: "dev-1".into(),
            sensor_name: "temperature".into(),
            value: Decimal::new(235, 1),
            time: t,
            unit: Some("C".into()),
            quality: None,
            received_at: t + chrono::Duration::milliseconds(5),
        }
    }

    #[test]
    fn readings_round_trip() {
        let r = reading();
        assert_eq!(decode(&encode(&r, "mqtt")).unwrap(), r);
        assert_eq!(key(&r), r.device_uuid.to_string());
    }

    #[test]
    fn records_missing_what_every_reading_has_are_undecodable() {
        let r = reading();
        let mut env = ReadingEnvelope::decode(encode(&r, "mqtt").as_slice()).unwrap();
        env.value = "23,5".into();
        let e = decode(&env.encode_to_vec()).unwrap_err();
        assert_eq!(e.reason, RejectReason::Undecodable);
        assert!(e.detail.contains("value"), "{e:?}");
        env.value = "23.5".into();
        env.time = None;
        assert!(decode(&env.encode_to_vec()).is_err());
        env.time = Some(crate::timestamp(r.time));
        env.device_uuid = "nope".into();
        assert!(decode(&env.encode_to_vec()).is_err());
        assert!(decode(b"\xff\xff").is_err());
    }
}
