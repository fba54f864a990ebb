//! Generated protobuf and gRPC code for the platform.
//!
//! API Boundary: this is the only crate that knows the wire format. Services
//! convert between these types and `iot_domain` types at their edges.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("iot.v1");
}

pub use prost::Message;
pub use prost_types::Timestamp;

/// Converts a chrono time to a protobuf timestamp.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf timestamp to chrono; `None` when out of range.
pub fn from_timestamp(t: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    chrono::DateTime::from_timestamp(t.seconds, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 123_000_000).unwrap();
        let env = v1::ReadingEnvelope {
            device_uuid: "3f1c".into(),
            device_id: "dev-1".into(),
            sensor_name: "temperature".into(),
            value: "23.5".into(),
            time: Some(timestamp(t)),
            unit: Some("C".into()),
            quality: None,
            received_at: Some(timestamp(t)),
            source: "mqtt".into(),
        };
        let bytes = env.encode_to_vec();
        let back = v1::ReadingEnvelope::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, env);
        assert_eq!(from_timestamp(back.time.as_ref().unwrap()), Some(t));
    }
}
