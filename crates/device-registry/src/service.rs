//! The gRPC face of the registry.

use deadpool_postgres::Pool;
use iot_proto::scope_of as scope;
use iot_proto::v1::{self, device_registry_server::DeviceRegistry};
use tonic::{Request, Response, Status};
use uuid::Uuid;

mod bulk;

use crate::broker::{self, Dynsec};
use crate::store;
use crate::validate::{
    check_len, check_retention, parse_coord, parse_json, parse_thresholds, status_of, uuid_list,
    validate_create,
};
use crate::{Limits, RegistryError};

/// The most items one listing call returns.
pub(crate) const MAX_LIST: u32 = 1000;

/// The longest username (`device_credentials.username`) and password
/// `VerifyDeviceCredentials` takes; issued passwords have 43 characters.
const MAX_USERNAME: usize = 100;
const MAX_PASSWORD: usize = 256;

/// A stored hash no password is known to match, compared against when the
/// username is unknown.
static UNKNOWN_USER_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| broker::hash_password(&broker::new_password()));

#[derive(Clone)]
pub struct RegistryService {
    pool: Pool,
    /// None when the broker authenticates devices some other way.
    broker: Option<Dynsec>,
    limits: Limits,
    /// Ends open change streams when the service stops.
    shutdown: iot_runtime::CancellationToken,
}

impl RegistryService {
    pub fn new(
        pool: Pool,
        broker: Option<Dynsec>,
        limits: Limits,
        shutdown: iot_runtime::CancellationToken,
    ) -> Self {
        Self {
            pool,
            broker,
            limits,
            shutdown,
        }
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
        change: Option<&str>,
    ) -> Result<Option<v1::MqttCredentials>, RegistryError> {
        // The change-log row goes in last, just before the commit, so that
        // its sequence number is not held open across broker calls (see
        // `iot_db::tail`).
        let Some(broker) = &self.broker else {
            if let Some(kind) = change {
                store::record_change(&tx, device, device_id, kind).await?;
            }
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
        if let Some(kind) = change {
            store::record_change(&tx, device, device_id, kind).await?;
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

    /// Creates one validated device with its config, sensors, credentials
    /// and broker account.
    async fn create_one(
        &self,
        new: &store::NewDevice,
    ) -> Result<(Uuid, Option<v1::MqttCredentials>), RegistryError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The quota is the device's owner's, whoever the caller is (an
        // admin-scope caller creating for an owner included).
        store::check_device_quota(&tx, new.owner_id, self.limits.devices_per_owner).await?;
        // Nothing is half-written: the device, its config, its credentials
        // and its broker account all come to be, or none does.
        let id = store::insert(&tx, new).await?;
        store::insert_sensors(&tx, id, &new.sensors).await?;
        let credentials = self
            .issue(tx, id, &new.device_id, true, Some("created"))
            .await?;
        tracing::info!(%id, device_id = %new.device_id, "device registered");
        Ok((id, credentials))
    }

    /// The device `id` (UUID or external id) if `owner` may see it.
    async fn find(&self, id: &str, owner: Option<Uuid>) -> Result<v1::Device, RegistryError> {
        if id.is_empty() {
            return Err(RegistryError::Invalid(vec!["id: is empty".into()]));
        }
        store::get(&self.pool, id, owner)
            .await?
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))
    }

    /// Runs `write` and logs it as a change of the device for watchers, in
    /// one transaction.
    async fn write_change(
        &self,
        id: Uuid,
        device_id: &str,
        kind: &str,
        write: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        write(&tx).await?;
        store::record_change(&tx, id, device_id, kind).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The broker session, for calls that need one.
    fn broker(&self) -> Result<&Dynsec, Status> {
        self.broker.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this registry issues no broker credentials (broker.enabled = false)",
            )
        })
    }

    /// `find`, returning the device's platform UUID too.
    async fn find_id(
        &self,
        id: &str,
        owner: Option<Uuid>,
    ) -> Result<(Uuid, v1::Device), RegistryError> {
        let d = self.find(id, owner).await?;
        let uuid = Uuid::parse_str(&d.id).map_err(|_| RegistryError::NotFound(d.id.clone()))?;
        Ok((uuid, d))
    }
}

#[tonic::async_trait]
impl DeviceRegistry for RegistryService {
    async fn create_device(
        &self,
        request: Request<v1::CreateDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let owner = scope(&request)?;
        let new = validate_create(request.into_inner(), owner, self.limits.max_retention_days)?;
        let (id, credentials) = self.create_one(&new).await?;
        let mut device = self.find(&id.to_string(), None).await?;
        device.credentials = credentials;
        Ok(Response::new(device))
    }

    async fn create_devices(
        &self,
        request: Request<v1::CreateDevicesRequest>,
    ) -> Result<Response<v1::CreateDevicesResponse>, Status> {
        let owner = scope(&request)?;
        let results = self.create_many(owner, request.into_inner()).await?;
        Ok(Response::new(v1::CreateDevicesResponse { results }))
    }

    async fn get_device(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let owner = scope(&request)?;
        Ok(Response::new(
            self.find(&request.into_inner().id, owner).await?,
        ))
    }

    async fn list_devices(
        &self,
        request: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        let caller = scope(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        let limit = match req.limit {
            0 => 100,
            n if n > MAX_LIST => {
                p.push(format!("limit: {n} is more than {MAX_LIST}"));
                n
            }
            n => n,
        };
        let owner = match (caller, req.owner_id.as_deref()) {
            (Some(own), _) => Some(own),
            (None, None) => None,
            (None, Some(o)) => Uuid::parse_str(o).map(Some).unwrap_or_else(|_| {
                p.push(format!("owner_id: {o:?} is not a UUID"));
                None
            }),
        };
        let status = status_of(&mut p, req.status.as_deref(), req.status_code);
        let ids: Option<Vec<Uuid>> =
            (!req.ids.is_empty()).then(|| uuid_list("ids", &req.ids, &mut p));
        let after = if req.cursor.is_empty() {
            None
        } else {
            let parsed = iot_proto::parse_keyset_cursor(&req.cursor);
            if parsed.is_none() {
                p.push("cursor: is not a cursor this API returned".into());
            }
            parsed
        };
        if !p.is_empty() {
            return Err(RegistryError::Invalid(p).into());
        }
        let devices = store::list(
            &self.pool,
            &store::ListFilter {
                device_type: req.device_type.as_deref(),
                status: status.map(v1::DeviceStatus::as_text),
                owner,
                location: req.location.as_deref(),
                ids: ids.as_deref(),
                after,
                limit: i64::from(limit),
            },
        )
        .await?;
        let next_cursor = match devices.last() {
            Some(d) if devices.len() == limit as usize => {
                iot_proto::keyset_cursor(d.created_at.as_ref(), &d.id)
            }
            _ => String::new(),
        };
        Ok(Response::new(v1::ListDevicesResponse {
            devices,
            next_cursor,
        }))
    }

    async fn update_device(
        &self,
        request: Request<v1::UpdateDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let owner = scope(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        for (field, v, max) in [
            ("name", &req.name, 255),
            ("device_type", &req.device_type, 50),
            ("location", &req.location, 255),
        ] {
            if let Some(v) = v {
                check_len(&mut p, field, v, max, field != "location");
            }
        }
        let change = store::DeviceChange {
            latitude: parse_coord(&mut p, "latitude", req.latitude.as_deref(), 90),
            longitude: parse_coord(&mut p, "longitude", req.longitude.as_deref(), 180),
            status: status_of(&mut p, req.status.as_deref(), req.status_code)
                .map(|s| s.as_text().to_owned()),
            name: req.name,
            device_type: req.device_type,
            location: req.location,
        };
        if !p.is_empty() {
            return Err(RegistryError::Invalid(p).into());
        }
        let (id, d) = self.find_id(&req.id, owner).await?;
        self.write_change(id, &d.device_id, "updated", async |tx| {
            store::update(tx, id, &change).await
        })
        .await?;
        Ok(Response::new(self.find(&id.to_string(), owner).await?))
    }

    async fn delete_device(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::DeleteDeviceResponse>, Status> {
        let owner = scope(&request)?;
        let (id, device) = self.find_id(&request.into_inner().id, owner).await?;
        let mut client = self.pool.get().await.map_err(RegistryError::from)?;
        let tx = client.transaction().await.map_err(RegistryError::from)?;
        store::delete(&tx, id).await?;
        if let Some(broker) = &self.broker {
            broker
                .delete_account(&device.device_id)
                .await
                .map_err(RegistryError::from)?;
        }
        store::record_change(&tx, id, &device.device_id, "deleted").await?;
        tx.commit().await.map_err(RegistryError::from)?;
        tracing::info!(%id, device_id = %device.device_id, "device deleted");
        Ok(Response::new(v1::DeleteDeviceResponse {}))
    }

    async fn update_device_config(
        &self,
        request: Request<v1::UpdateDeviceConfigRequest>,
    ) -> Result<Response<v1::DeviceConfig>, Status> {
        let owner = scope(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        check_retention(
            &mut p,
            req.data_retention_days,
            self.limits.max_retention_days,
        );
        let change = store::ConfigChange {
            read_interval: req.read_interval.inspect(|n| {
                if *n <= 0 {
                    p.push("config.read_interval: must be positive".into());
                }
            }),
            data_retention_days: req.data_retention_days,
            alert_threshold: parse_thresholds(
                &mut p,
                "config.alert_threshold_json",
                req.alert_threshold_json.as_deref(),
            ),
            custom_fields: parse_json(
                &mut p,
                "config.custom_fields_json",
                req.custom_fields_json.as_deref(),
            ),
        };
        if !p.is_empty() {
            return Err(RegistryError::Invalid(p).into());
        }
        let (id, d) = self.find_id(&req.id, owner).await?;
        self.write_change(id, &d.device_id, "config", async |tx| {
            store::update_config(tx, id, &change).await
        })
        .await?;
        let device = self.find(&id.to_string(), owner).await?;
        Ok(Response::new(device.config.unwrap_or_default()))
    }

    async fn list_sensors(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::ListSensorsResponse>, Status> {
        let owner = scope(&request)?;
        let (id, _) = self.find_id(&request.into_inner().id, owner).await?;
        let sensors = store::sensors(&self.pool, id).await?;
        Ok(Response::new(v1::ListSensorsResponse { sensors }))
    }

    async fn list_sensors_of_devices(
        &self,
        request: Request<v1::ListSensorsOfDevicesRequest>,
    ) -> Result<Response<v1::ListSensorsResponse>, Status> {
        let owner = scope(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        let ids = uuid_list("device_uuids", &req.device_uuids, &mut p);
        if !p.is_empty() {
            return Err(RegistryError::Invalid(p).into());
        }
        let sensors = store::sensors_of(&self.pool, &ids, owner).await?;
        Ok(Response::new(v1::ListSensorsResponse { sensors }))
    }

    async fn device_status_summary(
        &self,
        request: Request<v1::DeviceStatusSummaryRequest>,
    ) -> Result<Response<v1::DeviceStatusSummaryResponse>, Status> {
        let owner = scope(&request)?;
        let secs = match request.into_inner().offline_after_secs {
            0 => None,
            n => Some(f64::from(n)),
        };
        Ok(Response::new(
            store::status_summary(&self.pool, owner, secs).await?,
        ))
    }

    async fn record_activity(
        &self,
        request: Request<v1::RecordActivityRequest>,
    ) -> Result<Response<v1::RecordActivityResponse>, Status> {
        if scope(&request)?.is_some() {
            return Err(Status::permission_denied(
                "RecordActivity is for platform services",
            ));
        }
        let mut p = Vec::new();
        let mut seen = Vec::new();
        let mut presence = Vec::new();
        let mut sensors = Vec::new();
        for (i, a) in request.into_inner().devices.into_iter().enumerate() {
            let Ok(id) = Uuid::parse_str(&a.device_uuid) else {
                p.push(format!(
                    "devices[{i}].device_uuid: {:?} is not a UUID",
                    a.device_uuid
                ));
                continue;
            };
            let at = a.last_seen.as_ref().and_then(iot_proto::from_timestamp);
            if a.presence.is_empty() {
                seen.extend(at.map(|t| (id, t)));
            } else {
                match (
                    iot_domain::presence::PresenceEvent::from_text(&a.presence),
                    at,
                ) {
                    (Some(e), Some(t)) => presence.push((id, e, t)),
                    (None, _) => p.push(format!(
                        "devices[{i}].presence: {:?} is not connected, disconnected or lost",
                        a.presence
                    )),
                    (Some(_), None) => {
                        p.push(format!("devices[{i}].last_seen: required with presence"));
                    }
                }
            }
            for s in a.new_sensors {
                if iot_domain::validate::is_valid_sensor_name(&s) {
                    sensors.push((id, s));
                } else {
                    p.push(format!(
                        "devices[{i}].new_sensors: {s:?} is not a sensor name"
                    ));
                }
            }
        }
        if !p.is_empty() {
            return Err(RegistryError::Invalid(p).into());
        }
        store::record_activity(&self.pool, &seen, &presence, &sensors).await?;
        Ok(Response::new(v1::RecordActivityResponse {}))
    }

    type WatchDeviceChangesStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<v1::DeviceChange, Status>> + Send>,
    >;

    async fn watch_device_changes(
        &self,
        request: Request<v1::WatchDeviceChangesRequest>,
    ) -> Result<Response<Self::WatchDeviceChangesStream>, Status> {
        if scope(&request)?.is_some() {
            return Err(Status::permission_denied(
                "WatchDeviceChanges is for platform services",
            ));
        }
        let asked = i64::try_from(request.into_inner().resume_after).unwrap_or(i64::MAX);
        let (oldest, newest) = store::change_bounds(&self.pool).await?;
        let (first, from) = match asked {
            0 => ("sync", newest),
            n if n < oldest => ("reset", newest),
            n => ("sync", n.min(newest)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let pool = self.pool.clone();
        tokio::spawn(watch(pool, from, first, tx, self.shutdown.clone()));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn rotate_credentials(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::MqttCredentials>, Status> {
        let owner = scope(&request)?;
        let (id, device) = self.find_id(&request.into_inner().id, owner).await?;
        self.broker()?;
        let mut client = self.pool.get().await.map_err(RegistryError::from)?;
        let tx = client.transaction().await.map_err(RegistryError::from)?;
        let had_account = store::revoke_credentials(&tx, id).await?;
        let credentials = self
            .issue(tx, id, &device.device_id, !had_account, Some("credentials"))
            .await?
            .ok_or_else(|| Status::internal("no credentials issued"))?;
        tracing::info!(device_id = %device.device_id, "device credentials rotated");
        Ok(Response::new(credentials))
    }

    async fn revoke_credentials(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::RevokeCredentialsResponse>, Status> {
        let owner = scope(&request)?;
        let (id, device) = self.find_id(&request.into_inner().id, owner).await?;
        let broker = self.broker()?;
        let mut client = self.pool.get().await.map_err(RegistryError::from)?;
        let tx = client.transaction().await.map_err(RegistryError::from)?;
        store::revoke_credentials(&tx, id).await?;
        broker
            .delete_account(&device.device_id)
            .await
            .map_err(RegistryError::from)?;
        // Caches of verified credentials (the gateway's HTTP door) drop
        // them when this commits.
        store::record_change(&tx, id, &device.device_id, "credentials").await?;
        tx.commit().await.map_err(RegistryError::from)?;
        tracing::info!(device_id = %device.device_id, "device credentials revoked");
        Ok(Response::new(v1::RevokeCredentialsResponse {}))
    }

    async fn verify_device_credentials(
        &self,
        request: Request<v1::VerifyDeviceCredentialsRequest>,
    ) -> Result<Response<v1::VerifyDeviceCredentialsResponse>, Status> {
        if scope(&request)?.is_some() {
            return Err(Status::permission_denied(
                "VerifyDeviceCredentials is for platform services",
            ));
        }
        let req = request.into_inner();
        let mut p = Vec::new();
        check_len(&mut p, "username", &req.username, MAX_USERNAME, true);
        check_len(&mut p, "password", &req.password, MAX_PASSWORD, true);
        if !p.is_empty() {
            return Err(RegistryError::Invalid(p).into());
        }
        let stored = store::credentials_of(&self.pool, &req.username).await?;
        // An unknown username costs a hash as a known one does, so that the
        // time taken does not tell which usernames exist.
        let hash = stored
            .as_ref()
            .map_or(UNKNOWN_USER_HASH.as_str(), |c| &c.password_hash);
        let matches = broker::password_matches(&req.password, hash);
        Ok(Response::new(match stored {
            Some(c) if matches => v1::VerifyDeviceCredentialsResponse {
                ok: true,
                device_uuid: c.device.to_string(),
                device_id: c.device_id,
            },
            _ => v1::VerifyDeviceCredentialsResponse::default(),
        }))
    }
}

/// Streams changes after `from` to one watcher until it goes away (see
/// `iot_db::tail` for how the resume point passes gaps).
async fn watch(
    pool: Pool,
    from: i64,
    first: &'static str,
    tx: tokio::sync::mpsc::Sender<Result<v1::DeviceChange, Status>>,
    shutdown: iot_runtime::CancellationToken,
) {
    let hello = v1::DeviceChange {
        kind: first.into(),
        resume_after: u64::try_from(from).unwrap_or(0),
        ..Default::default()
    };
    if tx.send(Ok(hello)).await.is_err() {
        return;
    }
    let gone = tx.clone();
    let tail = iot_db::tail::tail(
        from,
        std::time::Duration::from_millis(200),
        |after| {
            let pool = pool.clone();
            async move { store::changes_after(&pool, after).await }
        },
        |c: store::Change, resume| {
            let tx = tx.clone();
            async move {
                let change = v1::DeviceChange {
                    kind: c.kind,
                    device_uuid: c.device.to_string(),
                    device_id: c.external_id,
                    resume_after: u64::try_from(resume).unwrap_or(0),
                };
                tx.send(Ok(change)).await.is_ok()
            }
        },
    );
    // Until the watcher goes away (even when nothing changes) or the
    // service stops (the watcher resumes elsewhere).
    tokio::select! {
        () = gone.closed() => {}
        () = shutdown.cancelled() => {}
        () = tail => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_issued_password_matches_its_hash() {
        let password = broker::new_password();
        let stored = broker::hash_password(&password);
        assert!(broker::password_matches(&password, &stored));
        assert!(!broker::password_matches(&broker::new_password(), &stored));
        assert!(!broker::password_matches("", &stored));
        // Stored values of another form, or damaged, match nothing.
        assert!(!broker::password_matches(&password, "sha256$bad"));
        assert!(!broker::password_matches(
            &password,
            &stored[..stored.len() - 2]
        ));
        assert!(!broker::password_matches(&password, &format!("{stored}$x")));
        assert!(!broker::password_matches(
            &password,
            &stored.replacen("sha256", "md5", 1)
        ));
        assert!(!broker::password_matches(&password, &UNKNOWN_USER_HASH));
    }
}
