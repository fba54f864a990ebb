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
    /// Static group membership: a stable name of this replica's own (a
    /// StatefulSet's pod name). Restarted under the same name, after a crash
    /// say, it takes its partitions back at once. Unset: a dynamic member,
    /// whose partitions wait until the group gives up on a crashed one.
    pub instance_id: Option<String>,
    pub grpc_addr: SocketAddr,
    /// mTLS on its gRPC server and on its calls to other services
    /// (`iot_proto::GrpcTls`); off when unset.
    pub grpc_tls: iot_proto::GrpcTls,
    pub admin_addr: SocketAddr,
    /// device-registry, for each device's thresholds (and their changes).
    pub registry_url: String,
    /// When a silent device counts as offline.
    pub offline: OfflineConfig,
    /// Every alert change is published here (key: device UUID).
    pub alerts_topic: String,
    /// How webhooks are sent and retried.
    pub webhooks: crate::webhooks::WebhookConfig,
    /// What one owner may hold.
    pub limits: Limits,
}

/// Bounds on what one owner's rules and webhooks cost the platform: each
/// rule is evaluated on every reading of the owner's devices, each
/// webhook gets a delivery per alert event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Alert rules one owner may have; creating one more answers
    /// RESOURCE_EXHAUSTED. Platform-wide rules (no owner) count as one
    /// owner's.
    pub rules_per_owner: u32,
    /// Webhooks one owner may have; creating one more answers
    /// RESOURCE_EXHAUSTED.
    pub webhooks_per_owner: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rules_per_owner: 1_000,
            webhooks_per_owner: 100,
        }
    }
}

/// How often silent devices are checked. When a device counts as offline
/// is the platform's one definition, `iot_domain::presence::PLATFORM`
/// (disconnected, or silent past its read_interval times 5; 5 minutes
/// without one), which `online` and the status summary use too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineConfig {
    pub check_secs: u64,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self { check_secs: 5 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres:postgres@127.0.0.1:5432/iot".into(),
            pool_size: 4,
            kafka: KafkaConfig::default(),
            group_id: "alert-engine".into(),
            instance_id: None,
            grpc_addr: ([127, 0, 0, 1], 50053).into(),
            grpc_tls: iot_proto::GrpcTls::default(),
            admin_addr: ([127, 0, 0, 1], 9103).into(),
            registry_url: "http://127.0.0.1:50051".into(),
            offline: OfflineConfig::default(),
            alerts_topic: "iot.alerts.v1".into(),
            webhooks: Default::default(),
            limits: Limits::default(),
        }
    }
}

impl iot_runtime::Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut p = self.kafka.problems("kafka");
        p.extend(self.grpc_tls.problems());
        p.extend(iot_db::pool::settings_problems(
            &self.database_url,
            self.pool_size,
        ));
        p.extend(iot_kafka::member_problems(
            &self.group_id,
            self.instance_id.as_deref(),
        ));
        if self.alerts_topic.is_empty() {
            p.push("alerts_topic is empty".into());
        }
        if self.offline.check_secs == 0 {
            p.push("offline.check_secs must be positive".into());
        }
        for (name, v) in [
            ("rules_per_owner", self.limits.rules_per_owner),
            ("webhooks_per_owner", self.limits.webhooks_per_owner),
        ] {
            if v == 0 {
                p.push(format!("limits.{name} must be positive"));
            }
        }
        p
    }
}

impl iot_runtime::ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "ALERT_ENGINE";
}

iot_runtime::service_config_tests!(super::Config, "alert-engine.toml", 9103);

#[cfg(test)]
mod limit_tests {
    use super::*;
    use iot_runtime::Validate;

    #[test]
    fn limits_are_finite_and_checked() {
        let mut c = Config::default();
        assert_eq!(
            (c.limits.rules_per_owner, c.limits.webhooks_per_owner),
            (1000, 100)
        );
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.limits = Limits {
            rules_per_owner: 0,
            webhooks_per_owner: 0,
        };
        assert_eq!(
            c.problems(),
            [
                "limits.rules_per_owner must be positive",
                "limits.webhooks_per_owner must be positive"
            ]
        );
    }
}
