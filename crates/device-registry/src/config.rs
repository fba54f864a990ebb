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
        if self.database_url.parse::<tokio_postgres::Config>().is_err() {
            p.push(format!(
                "database_url {:?} is not a PostgreSQL URL",
                self.database_url
            ));
        }
        if self.pool_size == 0 {
            p.push("pool_size must be at least 1".into());
        }
        p
    }
}

impl iot_runtime::ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "DEVICE_REGISTRY";
}

iot_runtime::service_config_tests!(super::Config, "device-registry.toml", 9101);
