//! alert-engine configuration (env prefix `ALERT_ENGINE__`).

use std::net::SocketAddr;

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
    /// device-registry, for each device's thresholds (and their changes).
    pub registry_url: String,
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
            registry_url: "http://127.0.0.1:50051".into(),
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

impl iot_runtime::ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "ALERT_ENGINE";
}

iot_runtime::service_config_tests!(super::Config, "alert-engine.toml", 9103);
