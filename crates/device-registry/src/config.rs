//! device-registry configuration (env prefix `DEVICE_REGISTRY__`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::broker::BrokerConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    /// gRPC API (DeviceRegistry + grpc.health.v1).
    pub grpc_addr: SocketAddr,
    /// mTLS on its gRPC server and on its calls to other services
    /// (`iot_proto::GrpcTls`); off when unset.
    pub grpc_tls: iot_proto::GrpcTls,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// The MQTT broker where devices get their accounts.
    pub broker: BrokerConfig,
    /// What one owner may hold and ask for.
    pub limits: Limits,
}

/// Bounds on what one owner's devices cost the platform.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Devices one owner may have; creating one more answers
    /// RESOURCE_EXHAUSTED. Devices created without an owner (the nil
    /// owner) count as one owner's.
    pub devices_per_owner: u32,
    /// The longest `data_retention_days` a device may ask for. Keep it
    /// equal to ingest-writer's `retention.max_days`, which caps what the
    /// writer keeps whatever a device asks for.
    pub max_retention_days: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            devices_per_owner: 100_000,
            max_retention_days: 3_650,
        }
    }
}

impl Limits {
    fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.devices_per_owner == 0 {
            p.push(format!("{prefix}.devices_per_owner must be positive"));
        }
        if !(1..=36_500).contains(&self.max_retention_days) {
            p.push(format!("{prefix}.max_retention_days must be in 1..=36500"));
        }
        p
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres:postgres@127.0.0.1:5432/iot".into(),
            pool_size: 8,
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            grpc_tls: iot_proto::GrpcTls::default(),
            admin_addr: ([127, 0, 0, 1], 9101).into(),
            broker: BrokerConfig::default(),
            limits: Limits::default(),
        }
    }
}

impl iot_runtime::Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut p = self.broker.problems("broker");
        p.extend(self.grpc_tls.problems());
        p.extend(self.limits.problems("limits"));
        p.extend(iot_db::pool::settings_problems(
            &self.database_url,
            self.pool_size,
        ));
        p
    }
}

impl iot_runtime::ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "DEVICE_REGISTRY";
}

iot_runtime::service_config_tests!(super::Config, "device-registry.toml", 9101);

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn limits_are_finite_and_checked() {
        assert!(Limits::default().problems("limits").is_empty());
        let p = Limits {
            devices_per_owner: 0,
            max_retention_days: 40_000,
        }
        .problems("limits");
        assert!(
            p.iter().any(|m| m.starts_with("limits.devices_per_owner")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.starts_with("limits.max_retention_days")),
            "{p:?}"
        );
    }
}
