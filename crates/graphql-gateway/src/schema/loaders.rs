//! DataLoaders: the items of many devices in one backend call, so that a
//! page of devices costs a fixed number of calls whatever its size.

use std::collections::HashMap;

use async_graphql::Result;
use async_graphql::dataloader::Loader;
use iot_proto::v1;

use crate::upstream::{ALERTS, Answer as _, REGISTRY, TELEMETRY, Upstreams};

/// Fetches the items of many devices with one `fetch` per 1000 device
/// UUIDs (the backends' limit per call) and groups them by device.
async fn per_device<T, F, Fut>(
    keys: &[String],
    device: fn(&T) -> &String,
    mut fetch: F,
) -> Result<HashMap<String, Vec<T>>>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut out: HashMap<String, Vec<T>> = HashMap::new();
    for chunk in keys.chunks(1000) {
        for item in fetch(chunk.to_vec()).await? {
            out.entry(device(&item).clone()).or_default().push(item);
        }
    }
    Ok(out)
}

/// The latest readings of many devices in one LatestReadings call.
pub struct LatestLoader {
    pub(super) up: Upstreams,
    pub(super) scope: iot_proto::Scope,
}

impl Loader<String> for LatestLoader {
    type Value = Vec<v1::SensorReading>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        per_device(
            keys,
            |r: &v1::SensorReading| &r.device_uuid,
            |chunk| async move {
                let got = self
                    .up
                    .telemetry(self.scope.clone())
                    .latest_readings(v1::LatestReadingsRequest {
                        device_uuids: chunk,
                    })
                    .await
                    .answer(TELEMETRY)?;
                Ok(got.readings)
            },
        )
        .await
    }
}

/// Open alerts of many devices in one ListAlerts call (paged if needed).
pub struct OpenAlertsLoader {
    pub(super) up: Upstreams,
    pub(super) scope: iot_proto::Scope,
}

impl Loader<String> for OpenAlertsLoader {
    type Value = Vec<v1::Alert>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        per_device(
            keys,
            |a: &v1::Alert| &a.device_uuid,
            |chunk| async move {
                let mut alerts = Vec::new();
                let mut cursor = String::new();
                loop {
                    let got = self
                        .up
                        .alerts(self.scope.clone())
                        .list_alerts(v1::ListAlertsRequest {
                            device_uuids: chunk.clone(),
                            only_open: true,
                            limit: 1000,
                            cursor,
                            ..Default::default()
                        })
                        .await
                        .answer(ALERTS)?;
                    alerts.extend(got.alerts);
                    if got.next_cursor.is_empty() {
                        return Ok(alerts);
                    }
                    cursor = got.next_cursor;
                }
            },
        )
        .await
    }
}

/// Devices by UUID, in the caller's scope (absent when not theirs).
pub struct DeviceLoader {
    pub(super) up: Upstreams,
    pub(super) scope: iot_proto::Scope,
}

impl Loader<String> for DeviceLoader {
    type Value = v1::Device;
    type Error = async_graphql::Error;

    /// Device UUIDs (alerts name their devices so) in one ListDevices call
    /// per 1000; a key that is not a UUID names no device.
    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let uuids: Vec<(&String, uuid::Uuid)> = keys
            .iter()
            .filter_map(|k| Some((k, uuid::Uuid::parse_str(k).ok()?)))
            .collect();
        let mut found = HashMap::new();
        for chunk in uuids.chunks(1000) {
            let mut c = self.up.registry(self.scope.clone());
            let got = c
                .list_devices(v1::ListDevicesRequest {
                    ids: chunk.iter().map(|(_, u)| u.to_string()).collect(),
                    limit: chunk.len() as u32,
                    ..Default::default()
                })
                .await
                .answer(REGISTRY)?;
            let by_id: HashMap<uuid::Uuid, v1::Device> = got
                .devices
                .into_iter()
                .filter_map(|d| Some((uuid::Uuid::parse_str(&d.id).ok()?, d)))
                .collect();
            for (k, u) in chunk {
                if let Some(d) = by_id.get(u) {
                    found.insert((*k).clone(), d.clone());
                }
            }
        }
        Ok(found)
    }
}

/// The sensors of devices, by UUID.
pub struct SensorLoader {
    pub(super) up: Upstreams,
    pub(super) scope: iot_proto::Scope,
}

impl Loader<String> for SensorLoader {
    type Value = Vec<v1::Sensor>;
    type Error = async_graphql::Error;

    /// One ListSensorsOfDevices call per 1000 devices; a device with no
    /// sensors (or not the caller's) has none.
    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        per_device(
            keys,
            |s: &v1::Sensor| &s.device_uuid,
            |chunk| async move {
                let got = self
                    .up
                    .registry(self.scope.clone())
                    .list_sensors_of_devices(v1::ListSensorsOfDevicesRequest {
                        device_uuids: chunk,
                    })
                    .await
                    .answer(REGISTRY)?;
                Ok(got.sensors)
            },
        )
        .await
    }
}
