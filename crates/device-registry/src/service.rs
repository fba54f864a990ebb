//! The gRPC face of the registry.

use std::str::FromStr;

use deadpool_postgres::Pool;
use iot_proto::v1::{self, device_registry_server::DeviceRegistry};
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::RegistryError;
use crate::store::{self, NewDevice};

const STATUSES: [&str; 3] = ["active", "inactive", "error"];
const MAX_LIST: u32 = 1000;

#[derive(Clone)]
pub struct RegistryService {
    pool: Pool,
}

impl RegistryService {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl DeviceRegistry for RegistryService {
    async fn create_device(
        &self,
        request: Request<v1::CreateDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let new = validate_create(request.into_inner())?;
        let id = store::insert(&self.pool, &new).await?;
        tracing::info!(%id, device_id = %new.device_id, "device registered");
        let device = store::get(&self.pool, &id.to_string())
            .await?
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        Ok(Response::new(device))
    }

    async fn get_device(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(RegistryError::Invalid(vec!["id is empty".into()]).into());
        }
        let device = store::get(&self.pool, &id)
            .await?
            .ok_or(RegistryError::NotFound(id))?;
        Ok(Response::new(device))
    }

    async fn list_devices(
        &self,
        request: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => n.min(MAX_LIST),
        };
        let devices = store::list(&self.pool, req.device_type.as_deref(), i64::from(limit)).await?;
        Ok(Response::new(v1::ListDevicesResponse { devices }))
    }
}

fn check_len(problems: &mut Vec<String>, field: &str, value: &str, max: usize, required: bool) {
    if required && value.trim().is_empty() {
        problems.push(format!("{field} is required"));
    } else if value.chars().count() > max {
        problems.push(format!("{field} is longer than {max} characters"));
    }
}

fn parse_coord(
    problems: &mut Vec<String>,
    field: &str,
    v: Option<&str>,
    limit: i64,
) -> Option<Decimal> {
    let v = v?;
    match Decimal::from_str(v) {
        Ok(d) if d.abs() <= Decimal::from(limit) => Some(d),
        Ok(_) => {
            problems.push(format!("{field} {v} is outside [-{limit}, {limit}]"));
            None
        }
        Err(_) => {
            problems.push(format!("{field} {v:?} is not a decimal number"));
            None
        }
    }
}

fn parse_json(
    problems: &mut Vec<String>,
    field: &str,
    v: Option<&str>,
) -> Option<serde_json::Value> {
    let v = v?;
    match serde_json::from_str(v) {
        Ok(json) => Some(json),
        Err(e) => {
            problems.push(format!("{field} is not valid JSON: {e}"));
            None
        }
    }
}

/// Checks a create request and reports every problem at once.
fn validate_create(req: v1::CreateDeviceRequest) -> Result<NewDevice, RegistryError> {
    let mut p = Vec::new();
    check_len(&mut p, "device_id", &req.device_id, 100, true);
    if req.device_id.contains(['/', '+', '#']) {
        p.push("device_id must not contain '/', '+' or '#' (it is an MQTT topic level)".into());
    }
    check_len(&mut p, "name", &req.name, 255, true);
    check_len(&mut p, "device_type", &req.device_type, 50, true);
    if let Some(l) = &req.location {
        check_len(&mut p, "location", l, 255, false);
    }
    let latitude = parse_coord(&mut p, "latitude", req.latitude.as_deref(), 90);
    let longitude = parse_coord(&mut p, "longitude", req.longitude.as_deref(), 180);
    let owner_id = if req.owner_id.is_empty() {
        Uuid::nil()
    } else {
        Uuid::parse_str(&req.owner_id).unwrap_or_else(|_| {
            p.push(format!("owner_id {:?} is not a UUID", req.owner_id));
            Uuid::nil()
        })
    };
    let status = if req.status.is_empty() {
        "active".to_owned()
    } else {
        req.status
    };
    if !STATUSES.contains(&status.as_str()) {
        p.push(format!("status {status:?} must be one of {STATUSES:?}"));
    }
    let cfg = req.config.unwrap_or_default();
    let read_interval = if cfg.read_interval == 0 {
        60
    } else {
        cfg.read_interval
    };
    if read_interval < 0 {
        p.push("config.read_interval must be positive".into());
    }
    if cfg.data_retention_days.is_some_and(|d| d <= 0) {
        p.push("config.data_retention_days must be positive".into());
    }
    let alert_threshold = parse_json(
        &mut p,
        "config.alert_threshold_json",
        cfg.alert_threshold_json.as_deref(),
    );
    let custom_fields = parse_json(
        &mut p,
        "config.custom_fields_json",
        cfg.custom_fields_json.as_deref(),
    );
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
        data_retention_days: Some(cfg.data_retention_days.unwrap_or(365)),
        custom_fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_reports_every_problem() {
        let err = validate_create(v1::CreateDeviceRequest {
            device_id: "a/b".into(),
            name: String::new(),
            device_type: "x".repeat(51),
            latitude: Some("91".into()),
            longitude: Some("east".into()),
            owner_id: "nope".into(),
            status: "broken".into(),
            ..Default::default()
        })
        .err()
        .unwrap();
        let RegistryError::Invalid(p) = err else {
            panic!("{err}")
        };
        assert_eq!(p.len(), 7, "{p:?}");
    }

    #[test]
    fn defaults_apply() {
        let d = validate_create(v1::CreateDeviceRequest {
            device_id: "dev-1".into(),
            name: "Dev".into(),
            device_type: "temperature_sensor".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.status, "active");
        assert_eq!(d.read_interval, 60);
        assert_eq!(d.owner_id, Uuid::nil());
    }
}
