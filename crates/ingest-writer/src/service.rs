//! The gRPC telemetry query API.

use deadpool_postgres::Pool;
use iot_proto::v1::{self, telemetry_server::Telemetry};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::store::{self, StoreError};

const MAX_LIMIT: u32 = 10_000;

#[derive(Clone)]
pub struct TelemetryService {
    pool: Pool,
}

impl TelemetryService {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Pool(_) => Status::unavailable(e.to_string()),
            StoreError::Db(_) => {
                tracing::error!(error = %e, "telemetry query failed");
                Status::internal("database error")
            }
        }
    }
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    async fn query_readings(
        &self,
        request: Request<v1::QueryReadingsRequest>,
    ) -> Result<Response<v1::QueryReadingsResponse>, Status> {
        let req = request.into_inner();
        let mut problems = Vec::new();
        let device = Uuid::parse_str(&req.device_uuid).map_err(|_| {
            problems.push(format!("device_uuid {:?} is not a UUID", req.device_uuid));
        });
        if !iot_domain::validate::is_valid_sensor_name(&req.sensor_name) {
            problems.push(format!("sensor_name {:?} is invalid", req.sensor_name));
        }
        let start = req.start.as_ref().and_then(iot_proto::from_timestamp);
        let end = req.end.as_ref().and_then(iot_proto::from_timestamp);
        if start.is_none() || end.is_none() {
            problems.push("start and end are required timestamps".into());
        }
        if let (Some(s), Some(e)) = (start, end)
            && s >= e
        {
            problems.push("start must be before end".into());
        }
        let (Ok(device), Some(start), Some(end), true) = (device, start, end, problems.is_empty())
        else {
            return Err(Status::invalid_argument(problems.join("; ")));
        };
        let limit = match req.limit {
            0 => 1000,
            n => n.min(MAX_LIMIT),
        };
        let rows = store::query_readings(
            &self.pool,
            device,
            &req.sensor_name,
            start,
            end,
            i64::from(limit),
        )
        .await?;
        let readings = rows
            .into_iter()
            .map(|r| v1::SensorReading {
                time: Some(iot_proto::timestamp(r.time)),
                device_uuid: r.device_id.to_string(),
                sensor_name: r.sensor_name,
                value: r.value.normalize().to_string(),
                unit: r.unit,
                quality: r.quality,
            })
            .collect();
        Ok(Response::new(v1::QueryReadingsResponse { readings }))
    }
}
