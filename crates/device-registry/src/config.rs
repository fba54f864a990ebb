//! device-registry configuration (env prefix `DEVICE_REGISTRY__`).

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    /// gRPC API (DeviceRegistry + grpc.health.v1).
    pub grpc_addr: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres:postgres@127.0.0.1:5432/iot".into(),
            pool_size: 8,
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            admin_addr: ([127, 0, 0, 1], 9101).into(),
        }
    }
}

impl iot_runtime::Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
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

impl Config {
    pub const ENV_PREFIX: &'static str = "DEVICE_REGISTRY";

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
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/device-registry.toml");
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.admin_addr.port(), 9101);
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
