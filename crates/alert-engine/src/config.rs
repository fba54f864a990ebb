//! alert-engine configuration (env prefix `ALERT_ENGINE__`).

use std::net::SocketAddr;
use std::path::Path;

use iot_kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    pub kafka: KafkaConfig,
    /// Its own consumer group: it reads every reading independently of the writer.
    pub group_id: String,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres:postgres@127.0.0.1:5432/iot".into(),
            pool_size: 4,
            kafka: KafkaConfig::default(),
            group_id: "alert-engine".into(),
            grpc_addr: ([127, 0, 0, 1], 50053).into(),
            admin_addr: ([127, 0, 0, 1], 9103).into(),
        }
    }
}

impl iot_runtime::Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut p = self.kafka.problems("kafka");
        if self.database_url.parse::<tokio_postgres::Config>().is_err() {
            p.push(format!(
                "database_url {:?} is not a PostgreSQL URL",
                self.database_url
            ));
        }
        if self.pool_size == 0 {
            p.push("pool_size must be at least 1".into());
        }
        if self.group_id.is_empty() {
            p.push("group_id is empty".into());
        }
        p
    }
}

impl Config {
    pub const ENV_PREFIX: &'static str = "ALERT_ENGINE";

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
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/alert-engine.toml");
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.admin_addr.port(), 9103);
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
