//! The gRPC face of the registry.

use std::str::FromStr;

use deadpool_postgres::Pool;
use iot_proto::v1::{self, device_registry_server::DeviceRegistry};
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::RegistryError;
use crate::broker::{self, Dynsec};
use crate::store::{self, NewDevice};

const STATUSES: [&str; 3] = ["active", "inactive", "error"];
const MAX_LIST: u32 = 1000;

#[derive(Clone)]
pub struct RegistryService {
    pool: Pool,
    /// None when the broker authenticates devices some other way.
    broker: Option<Dynsec>,
}

impl RegistryService {
    pub fn new(pool: Pool, broker: Option<Dynsec>) -> Self {
        Self { pool, broker }
    }

    /// Issues a fresh password for `device` (creating its broker account if
    /// it has none) inside `tx`: the broker is told before the commit, and
    /// told to forget the account again if the commit fails, so the
    /// database and the broker never disagree about a device that exists.
    async fn issue(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        device: Uuid,
        device_id: &str,
        fresh_account: bool,
    ) -> Result<Option<v1::MqttCredentials>, RegistryError> {
        let Some(broker) = &self.broker else {
            tx.commit().await?;
            return Ok(None);
        };
        let password = broker::new_password();
        store::set_credentials(&tx, device, device_id, &broker::hash_password(&password)).await?;
        if fresh_account {
            broker.create_account(device_id, &password).await?;
        } else {
            broker.set_password(device_id, &password).await?;
        }
        if let Err(e) = tx.commit().await {
            if let Err(undo) = broker.delete_account(device_id).await {
                tracing::error!(error = %undo, device_id, "broker account left after a failed commit");
            }
            return Err(e.into());
        }
        Ok(Some(v1::MqttCredentials {
            username: device_id.to_owned(),
            password,
            publish_topics: broker.config().topics_of(device_id),
        }))
    }

    async fn find(&self, id: &str) -> Result<v1::Device, RegistryError> {
        if id.is_empty() {
            return Err(RegistryError::Invalid(vec!["id: is empty".into()]));
        }
        store::get(&self.pool, id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))
    }
}

#[tonic::async_trait]
impl DeviceRegistry for RegistryService {
    async fn create_device(
        &self,
        request: Request<v1::CreateDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let new = validate_create(request.into_inner())?;
        let mut client = self.pool.get().await.map_err(RegistryError::from)?;
        let tx = client.transaction().await.map_err(RegistryError::from)?;
        // Nothing is half-written: the device, its config, its credentials
        // and its broker account all come to be, or none does.
        let id = store::insert(&tx, &new).await?;
        let credentials = self.issue(tx, id, &new.device_id, true).await?;
        tracing::info!(%id, device_id = %new.device_id, "device registered");
        let mut device = self.find(&id.to_string()).await?;
        device.credentials = credentials;
        Ok(Response::new(device))
    }

    async fn get_device(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        Ok(Response::new(self.find(&request.into_inner().id).await?))
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

    async fn rotate_credentials(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::MqttCredentials>, Status> {
        let device = self.find(&request.into_inner().id).await?;
        if self.broker.is_none() {
            return Err(Status::failed_precondition(
                "this registry issues no broker credentials (broker.enabled = false)",
            ));
        }
        let id =
            Uuid::parse_str(&device.id).map_err(|_| RegistryError::NotFound(device.id.clone()))?;
        let mut client = self.pool.get().await.map_err(RegistryError::from)?;
        let tx = client.transaction().await.map_err(RegistryError::from)?;
        let had_account = store::revoke_credentials(&tx, id).await?;
        let credentials = self
            .issue(tx, id, &device.device_id, !had_account)
            .await?
            .ok_or_else(|| Status::internal("no credentials issued"))?;
        tracing::info!(device_id = %device.device_id, "device credentials rotated");
        Ok(Response::new(credentials))
    }

    async fn revoke_credentials(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::RevokeCredentialsResponse>, Status> {
        let device = self.find(&request.into_inner().id).await?;
        let Some(broker) = &self.broker else {
            return Err(Status::failed_precondition(
                "this registry issues no broker credentials (broker.enabled = false)",
            ));
        };
        let id =
            Uuid::parse_str(&device.id).map_err(|_| RegistryError::NotFound(device.id.clone()))?;
        let mut client = self.pool.get().await.map_err(RegistryError::from)?;
        let tx = client.transaction().await.map_err(RegistryError::from)?;
        store::revoke_credentials(&tx, id).await?;
        broker
            .delete_account(&device.device_id)
            .await
            .map_err(RegistryError::from)?;
        tx.commit().await.map_err(RegistryError::from)?;
        tracing::info!(device_id = %device.device_id, "device credentials revoked");
        Ok(Response::new(v1::RevokeCredentialsResponse {}))
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
    if req.device_id.starts_with("platform.") {
        p.push(
            "device_id must not start with \"platform.\" (reserved for platform accounts)".into(),
        );
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
