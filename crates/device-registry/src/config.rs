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
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// The MQTT broker where devices get their accounts.
    pub broker: BrokerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres:postgres@127.0.0.1:5432/iot".into(),
            pool_size: 8,
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            admin_addr: ([127, 0, 0, 1], 9101).into(),
            broker: BrokerConfig::default(),
        }
    }
}

impl iot_runtime::Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut p = self.broker.problems("broker");
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
