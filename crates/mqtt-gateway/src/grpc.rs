//! The gRPC door (`iot.v1.Ingest`), which the GraphQL `recordReading`
//! mutation calls. Same validation as MQTT and HTTP.

use std::sync::Arc;

use iot_domain::{ReadingInput, RejectReason};
use iot_proto::Message as _;
use iot_proto::v1::{self, ingest_server::Ingest};
use tonic::{Request, Response, Status};

use crate::GatewayError;
use crate::pipeline::{Door, Pipeline};

pub struct IngestService {
    pipeline: Arc<Pipeline>,
}

impl IngestService {
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Self { pipeline }
    }
}

fn entry(r: v1::IngestReading) -> iot_domain::Entry {
    let value = iot_domain::validate::parse_decimal(&r.value)?;
    let time = match &r.time {
        None => None,
        Some(t) => Some(iot_proto::from_timestamp(t).ok_or_else(|| {
            iot_domain::Rejection::new(RejectReason::BadTimestamp, "time is out of range")
        })?),
    };
    Ok(ReadingInput {
        sensor_name: r.sensor_name,
        value,
        time,
        unit: r.unit,
        quality: r.quality,
    })
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn ingest_readings(
        &self,
        request: Request<v1::IngestReadingsRequest>,
    ) -> Result<Response<v1::IngestReadingsResponse>, Status> {
        // Readings for any owner's device: the platform's own callers only.
        iot_proto::require_platform(&request)?;
        let req = request.into_inner();
        let invalid = |problem: String| Err(GatewayError::Invalid(vec![problem]).into());
        if req.device.is_empty() {
            return invalid("device: is required".into());
        }
        if req.readings.is_empty() {
            return invalid("readings: is empty".into());
        }
        if req.readings.len() > iot_domain::payload::MAX_ENTRIES {
            return invalid(format!(
                "readings: at most {} per call",
                iot_domain::payload::MAX_ENTRIES
            ));
        }
        // Dead letters keep the request as it was sent.
        let payload = req.encode_to_vec();
        let origin = format!("grpc:iot.v1.Ingest/{}", req.device);
        let entries = req.readings.into_iter().map(entry).collect();
        let delivery = self
            .pipeline
            .ingest(Door::Grpc, &req.device, entries, true, &origin, &payload)
            .await
            .map_err(|e| {
                self.pipeline.metrics.transient(e.kind(), &e);
                GatewayError::from(e)
            })?;
        if let Some(r) = delivery.refused() {
            return Err(GatewayError::Refused(r.clone()).into());
        }
        Ok(Response::new(v1::IngestReadingsResponse {
            accepted: u32::try_from(delivery.accepted).unwrap_or(u32::MAX),
            rejected: delivery
                .rejected
                .into_iter()
                .map(|(i, r)| v1::RejectedReading {
                    index: i.and_then(|i| u32::try_from(i).ok()).unwrap_or(0),
                    reason: r.reason.code().to_owned(),
                    detail: r.detail,
                })
                .collect(),
        }))
    }
}
