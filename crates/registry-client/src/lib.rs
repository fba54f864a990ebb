//! The client side of device-registry for platform services: an admin-scope
//! client ([`admin_client`], or [`measured_admin_client`] with request
//! metrics), its change stream ([`follow_device_changes`])
//! and [`DeviceCache`], the device lookups that mqtt-gateway and
//! alert-engine keep in front of `GetDevice`.
//!
//! Architecture Invariant: a cached device answer is dropped as soon as the
//! registry's change stream reports its device (or a "reset"), and an
//! answer fetched while a change arrived is never cached; TTLs only bound
//! how stale an answer can be while the stream is cut off.

mod cache;
mod changes;

use std::time::Duration;

use iot_telemetry::grpc::{GrpcClientLayer, GrpcClientMetrics};

pub use cache::{DEFAULT_MAX_CAPACITY, DeviceCache, MapDevice, Settings};
pub use changes::follow_device_changes;

/// The `service` label of device-registry calls in client metrics.
pub const SERVICE: &str = "device-registry";

/// A device-registry client for a platform service (admin scope: every
/// owner's devices, and the change stream), connecting on first use; 5 s
/// to connect, 10 s per call. Its calls carry the caller's trace; no
/// metrics (see [`measured_admin_client`]). Over mTLS when `tls` is on.
pub fn admin_client(
    url: &str,
    tls: &iot_proto::GrpcTls,
) -> Result<iot_proto::RegistryClient, iot_proto::TlsError> {
    admin_client_with(url, tls, GrpcClientLayer::unmeasured())
}

/// [`admin_client`] whose calls `metrics` counts and times
/// (`service="device-registry"`, by method and status code).
pub fn measured_admin_client(
    url: &str,
    tls: &iot_proto::GrpcTls,
    metrics: &GrpcClientMetrics,
) -> Result<iot_proto::RegistryClient, iot_proto::TlsError> {
    admin_client_with(url, tls, metrics.layer(SERVICE))
}

fn admin_client_with(
    url: &str,
    tls: &iot_proto::GrpcTls,
    layer: GrpcClientLayer,
) -> Result<iot_proto::RegistryClient, iot_proto::TlsError> {
    let endpoint = tls
        .endpoint(SERVICE, url)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let channel = iot_proto::tls::lazy(&endpoint);
    Ok(iot_proto::registry_client_on(
        iot_proto::client_channel(channel, layer),
        iot_proto::Scope::Admin,
    ))
}
