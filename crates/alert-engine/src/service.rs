//! The gRPC alerts API.

use deadpool_postgres::Pool;
use iot_proto::v1::{self, alerts_server::Alerts};
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};
use uuid::Uuid;

const LIST_ALERTS: &str =
    "SELECT id, device_id, alert_type, severity, value, threshold, acknowledged,
       created_at, sensor_name, message, last_seen_at, occurrences, resolved_at
FROM device_alerts
WHERE ($1::uuid IS NULL OR device_id = $1) AND (NOT $2 OR NOT acknowledged)
  AND (NOT $4 OR resolved_at IS NULL)
ORDER BY created_at DESC, id
LIMIT $3";

#[derive(Clone)]
pub struct AlertsService {
    pool: Pool,
}

impl AlertsService {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

fn db_status(e: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %e, "alerts query failed");
    Status::unavailable("database unavailable")
}

#[tonic::async_trait]
impl Alerts for AlertsService {
    async fn list_alerts(
        &self,
        request: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        let req = request.into_inner();
        let device = match req.device_uuid.as_deref() {
            None => None,
            Some(s) => Some(Uuid::parse_str(s).map_err(|_| {
                Status::invalid_argument(format!("device_uuid {s:?} is not a UUID"))
            })?),
        };
        let limit = i64::from(match req.limit {
            0 => 100,
            n => n.min(1000),
        });
        let client = self.pool.get().await.map_err(|e| db_status(&e))?;
        let stmt = client
            .prepare_cached(LIST_ALERTS)
            .await
            .map_err(|e| db_status(&e))?;
        let rows = client
            .query(
                &stmt,
                &[&device, &req.only_unacknowledged, &limit, &req.only_open],
            )
            .await
            .map_err(|e| db_status(&e))?;
        let alerts = rows
            .iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                let device: Uuid = r.get(1);
                let value: Option<Decimal> = r.get(4);
                let threshold: Option<Decimal> = r.get(5);
                v1::Alert {
                    id: id.to_string(),
                    device_uuid: device.to_string(),
                    alert_type: r.get(2),
                    severity: r.get(3),
                    value: value.map(|v| v.normalize().to_string()),
                    threshold: threshold.map(|v| v.normalize().to_string()),
                    acknowledged: r.get(6),
                    created_at: Some(iot_proto::timestamp(r.get(7))),
                    sensor_name: r.get(8),
                    message: r.get(9),
                    last_seen_at: r
                        .get::<_, Option<chrono::DateTime<chrono::Utc>>>(10)
                        .map(iot_proto::timestamp),
                    occurrences: u64::try_from(r.get::<_, i64>(11)).unwrap_or(0),
                    resolved_at: r
                        .get::<_, Option<chrono::DateTime<chrono::Utc>>>(12)
                        .map(iot_proto::timestamp),
                }
            })
            .collect();
        Ok(Response::new(v1::ListAlertsResponse { alerts }))
    }
}
