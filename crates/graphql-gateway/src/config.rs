//! graphql-gateway configuration (env prefix `GRAPHQL_GATEWAY__`).

use std::net::SocketAddr;
use std::path::Path;

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

impl Config {
    pub const ENV_PREFIX: &'static str = "GRAPHQL_GATEWAY";

    pub fn load(file: Option<&Path>) -> Result<Self, iot_runtime::ConfigError> {
        iot_runtime::load_config(Self::ENV_PREFIX, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_config_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/graphql-gateway.toml");
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.admin_addr.port(), 9105);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("cfg-{}-{}", std::process::id(), line!()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("no_such_setting"), "{err}");
    }
}
