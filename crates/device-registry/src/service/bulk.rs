//! `CreateDevices`: many devices in one call, each created or refused on
//! its own, for imports and large fleets.
//!
//! Without credentials, a call's devices go in with three statements in one
//! transaction, so a million devices take a thousand calls rather than a
//! million round trips. With credentials, each device is created as
//! `CreateDevice` creates it (its broker account is one broker call anyway).

use std::collections::BTreeMap;

use iot_proto::v1;
use tonic::Status;
use uuid::Uuid;

use super::RegistryService;
use crate::RegistryError;
use crate::store::{self, NewDevice};
use crate::validate::validate_create;

/// The most devices one call creates: its rows share one transaction,
/// which stays short.
pub(crate) const MAX_PER_CALL: usize = 1000;

impl RegistryService {
    /// One result per requested device, in request order. Refusals that
    /// concern a device (invalid, taken, over its owner's quota) are its
    /// result; a failure of the database fails the whole call, and then
    /// nothing of it was created.
    pub(super) async fn create_many(
        &self,
        owner: Option<Uuid>,
        req: v1::CreateDevicesRequest,
    ) -> Result<Vec<v1::CreateDeviceResult>, Status> {
        if req.devices.len() > MAX_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "devices: {} given, at most {MAX_PER_CALL} per call",
                req.devices.len()
            )));
        }
        if req.issue_credentials {
            self.broker()?;
        }
        let mut results: Vec<v1::CreateDeviceResult> = req
            .devices
            .iter()
            .map(|d| v1::CreateDeviceResult {
                device_id: d.device_id.clone(),
                ..Default::default()
            })
            .collect();
        let mut valid = Vec::with_capacity(results.len());
        for (i, d) in req.devices.into_iter().enumerate() {
            match validate_create(d, owner, self.limits.max_retention_days) {
                Ok(new) => valid.push((i, new)),
                Err(e) => refuse(&mut results[i], e),
            }
        }
        if req.issue_credentials {
            for (i, new) in valid {
                match self.create_one(&new).await {
                    Ok((id, credentials)) => {
                        results[i].id = id.to_string();
                        results[i].credentials = credentials;
                    }
                    Err(e) => refuse(&mut results[i], e),
                }
            }
        } else {
            self.insert_without_credentials(valid, &mut results).await?;
        }
        Ok(results)
    }

    async fn insert_without_credentials(
        &self,
        valid: Vec<(usize, NewDevice)>,
        results: &mut [v1::CreateDeviceResult],
    ) -> Result<(), RegistryError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Each owner's room under its quota, owners in one order so that
        // concurrent calls take their locks alike. A device given twice in
        // the call counts twice here: the quota is never exceeded.
        let mut room = BTreeMap::new();
        for (_, new) in &valid {
            room.insert(new.owner_id, 0u32);
        }
        for (owner, left) in room.iter_mut() {
            *left = store::device_quota_room(&tx, *owner, self.limits.devices_per_owner).await?;
        }
        let mut admitted = Vec::with_capacity(valid.len());
        for (i, new) in &valid {
            match room.get_mut(&new.owner_id) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    admitted.push((*i, new));
                }
                _ => refuse(
                    &mut results[*i],
                    RegistryError::QuotaExceeded {
                        quota: "devices_per_owner",
                        limit: self.limits.devices_per_owner,
                    },
                ),
            }
        }
        let rows: Vec<&NewDevice> = admitted.iter().map(|(_, d)| *d).collect();
        let mut ids = store::insert_many(&tx, &rows).await?;
        let mut created = Vec::with_capacity(ids.len());
        for (i, new) in admitted {
            // The first row of a device_id takes its UUID; a later row of
            // the same id, like one taken before, was not inserted.
            match ids.remove(&new.device_id) {
                Some(id) => {
                    store::insert_sensors(&tx, id, &new.sensors).await?;
                    results[i].id = id.to_string();
                    created.push((id, new.device_id.clone()));
                }
                None => refuse(
                    &mut results[i],
                    RegistryError::AlreadyExists(new.device_id.clone()),
                ),
            }
        }
        store::record_changes(&tx, &created, "created").await?;
        tx.commit().await?;
        tracing::info!(created = created.len(), "devices registered in bulk");
        Ok(())
    }
}

fn refuse(result: &mut v1::CreateDeviceResult, e: RegistryError) {
    let status = Status::from(e);
    result.error_code = format!("{:?}", status.code())
        .chars()
        .fold(String::new(), |mut out, c| {
            if c.is_uppercase() && !out.is_empty() {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
            out
        });
    result.error = status.message().to_owned();
}
