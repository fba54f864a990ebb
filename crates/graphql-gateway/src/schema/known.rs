//! The per-scope memory of devices the registry has found lately
//! ([`KnownDevices`]), which spares telemetry queries a lookup.

use std::time::Duration;

/// Devices the registry has lately found in a scope, so that telemetry
/// queries about them (`sensorMetrics`, `sensorReadings`) skip its check.
/// A device's owner is set when the registry creates it (with a UUID of
/// its own making) and never changes, so a device found in a scope stays in
/// it until deleted: an entry is trusted for [`KNOWN_FOR`], and this
/// gateway forgets a device it deletes at once. A device deleted through
/// another replica can still answer its own owner's telemetry queries for
/// that long; it never becomes visible to anyone else. Entries are per
/// scope: another caller's lookup is never taken as one's own.
///
/// Kept in a moka cache (as `registry_client::DeviceCache` is): at most
/// [`KNOWN_MAX`] entries, past which the least likely to be asked for again
/// go, not all of them.
pub struct KnownDevices(moka::sync::Cache<(String, String), ()>);

/// How long a device found in a scope is taken as still there.
pub const KNOWN_FOR: Duration = Duration::from_secs(10);
/// Most entries kept.
const KNOWN_MAX: u64 = 100_000;

impl Default for KnownDevices {
    fn default() -> Self {
        Self::trusted_for(KNOWN_FOR)
    }
}

impl KnownDevices {
    /// Entries trusted for `ttl`.
    fn trusted_for(ttl: Duration) -> Self {
        Self(
            moka::sync::Cache::builder()
                .name("known_devices")
                .max_capacity(KNOWN_MAX)
                .time_to_live(ttl)
                // `forget` drops a device from every scope.
                .support_invalidation_closures()
                .build(),
        )
    }

    fn key(scope: &iot_proto::Scope, uuid: &str) -> (String, String) {
        let scope = match scope {
            iot_proto::Scope::Admin => "*".to_owned(),
            iot_proto::Scope::Owner(o) => o.clone(),
        };
        (scope, uuid.to_owned())
    }

    /// Whether device `uuid` was found in `scope` within [`KNOWN_FOR`].
    pub fn knows(&self, scope: &iot_proto::Scope, uuid: &str) -> bool {
        self.0.get(&Self::key(scope, uuid)).is_some()
    }

    /// The registry found device `uuid` in `scope` just now.
    pub fn found(&self, scope: &iot_proto::Scope, uuid: &str) {
        self.0.insert(Self::key(scope, uuid), ());
    }

    /// Device `id` (a UUID or an external id) is gone, for every scope.
    pub fn forget(&self, id: &str) {
        let id = uuid::Uuid::parse_str(id).map_or_else(|_| id.to_owned(), |u| u.to_string());
        // Entries matching are never answered again, and are removed in
        // the background.
        if let Err(e) = self
            .0
            .invalidate_entries_if(move |(_, uuid), ()| *uuid == id)
        {
            tracing::warn!(error = %e, "cannot forget one device; forgetting all");
            self.0.invalidate_all();
        }
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
    }

    #[test]
    fn known_devices_expire() {
        let known = KnownDevices::trusted_for(Duration::from_millis(50));
        let a = iot_proto::Scope::Owner("a".into());
        let d = "0b6f7f4e-1f2a-4c3b-9d4e-5f6a7b8c9d0e";
        known.found(&a, d);
        assert!(known.knows(&a, d));
        // Expired entries are not trusted.
        std::thread::sleep(Duration::from_millis(100));
        assert!(!known.knows(&a, d));
    }

    #[test]
    fn a_full_memory_keeps_most_entries() {
        let known = KnownDevices::default();
        let a = iot_proto::Scope::Owner("a".into());
        for i in 0..KNOWN_MAX + 1000 {
            known.found(&a, &i.to_string());
        }
        known.0.run_pending_tasks();
        let kept = known.0.entry_count();
        assert!(kept <= KNOWN_MAX && kept > KNOWN_MAX / 2, "{kept}");
    }
}
