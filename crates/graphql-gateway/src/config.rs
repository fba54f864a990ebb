//! graphql-gateway configuration (env prefix `GRAPHQL_GATEWAY__`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub registry_url: String,
    pub telemetry_url: String,
    pub alerts_url: String,
    /// gRPC health endpoint of the gateway itself.
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            registry_url: "http://127.0.0.1:50051".into(),
            telemetry_url: "http://127.0.0.1:50052".into(),
            alerts_url: "http://127.0.0.1:50053".into(),
            grpc_addr: ([127, 0, 0, 1], 50055).into(),
            admin_addr: ([127, 0, 0, 1], 9105).into(),
        }
    }
}

impl iot_runtime::Validate for Config {
    fn problems(&self) -> Vec<String> {
        [
            ("registry_url", &self.registry_url),
            ("telemetry_url", &self.telemetry_url),
            ("alerts_url", &self.alerts_url),
        ]
        .into_iter()
        .filter(|(_, url)| !(url.starts_with("http://") || url.starts_with("https://")))
        .map(|(name, url)| format!("{name} {url:?} must start with http:// or https://"))
        .collect()
    }
}

impl iot_runtime::ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "GRAPHQL_GATEWAY";
}

iot_runtime::service_config_tests!(super::Config, "graphql-gateway.toml", 9105);
