//! The per-scope memory of devices the registry has found lately
//! ([`KnownDevices`]), which spares telemetry queries a lookup.

use std::collections::HashMap;

/// Devices the registry has lately found in a scope, so that telemetry
/// queries about them (`sensorMetrics`, `sensorReadings`) skip its check.
/// A device's owner is set when the registry creates it (with a UUID of
/// its own making) and never changes, so a device found in a scope stays in
/// it until deleted: an entry is trusted for [`KNOWN_FOR`], and this
/// gateway forgets a device it deletes at once. A device deleted through
/// another replica can still answer its own owner's telemetry queries for
/// that long; it never becomes visible to anyone else. Entries are per
/// scope: another caller's lookup is never taken as one's own.
#[derive(Default)]
pub struct KnownDevices(std::sync::Mutex<HashMap<(String, String), std::time::Instant>>);

/// How long a device found in a scope is taken as still there.
pub const KNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// Most entries kept; past it, expired ones go, then all.
const KNOWN_MAX: usize = 100_000;

impl KnownDevices {
    fn key(scope: &iot_proto::Scope, uuid: &str) -> (String, String) {
        let scope = match scope {
            iot_proto::Scope::Admin => "*".to_owned(),
            iot_proto::Scope::Owner(o) => o.clone(),
        };
        (scope, uuid.to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), std::time::Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether device `uuid` was found in `scope` within [`KNOWN_FOR`].
    pub fn knows(&self, scope: &iot_proto::Scope, uuid: &str) -> bool {
        self.lock()
            .get(&Self::key(scope, uuid))
            .is_some_and(|seen| seen.elapsed() < KNOWN_FOR)
    }

    /// The registry found device `uuid` in `scope` just now.
    pub fn found(&self, scope: &iot_proto::Scope, uuid: &str) {
        let mut known = self.lock();
        if known.len() >= KNOWN_MAX {
            known.retain(|_, seen| seen.elapsed() < KNOWN_FOR);
            if known.len() >= KNOWN_MAX {
                known.clear();
            }
        }
        known.insert(Self::key(scope, uuid), std::time::Instant::now());
    }

    /// Device `id` (a UUID or an external id) is gone, for every scope.
    pub fn forget(&self, id: &str) {
        let id = uuid::Uuid::parse_str(id).map_or_else(|_| id.to_owned(), |u| u.to_string());
        self.lock().retain(|(_, uuid), _| *uuid != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_devices_are_per_scope_and_forgotten_when_deleted() {
        let known = KnownDevices::default();
        let (a, b) = (
            iot_proto::Scope::Owner("a".into()),
            iot_proto::Scope::Owner("b".into()),
        );
        let d = "0b6f7f4e-1f2a-4c3b-9d4e-5f6a7b8c9d0e";
        assert!(!known.knows(&a, d));
        known.found(&a, d);
        assert!(known.knows(&a, d));
        assert!(!known.knows(&b, d), "another owner's lookup is not b's");
        assert!(!known.knows(&iot_proto::Scope::Admin, d));
        known.found(&b, "other");
        known.forget(&d.to_uppercase());
        assert!(!known.knows(&a, d));
        assert!(known.knows(&b, "other"));
        // Expired entries are not trusted.
        known.lock().insert(
            KnownDevices::key(&a, d),
            std::time::Instant::now() - KNOWN_FOR,
        );
        assert!(!known.knows(&a, d));
    }
}
