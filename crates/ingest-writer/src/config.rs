//! ingest-writer configuration (env prefix `INGEST_WRITER__`).

use std::net::SocketAddr;
use std::time::Duration;

use iot_kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

use crate::retention::RetentionConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database_url: String,
    /// Connections for batch writes and maintenance.
    pub pool_size: usize,
    /// API queries: a pool of their own, so that slow queries never hold
    /// the connections the writer needs (Kafka lag would grow for every
    /// owner).
    pub queries: QueryLimits,
    pub kafka: KafkaConfig,
    /// Consumer group; replicas in one group split the partitions.
    pub group_id: String,
    /// Static group membership: a stable name of this replica's own (a
    /// StatefulSet's pod name). Restarted under the same name, after a crash
    /// say, it takes its partitions back at once. Unset: a dynamic member,
    /// whose partitions wait until the group gives up on a crashed one.
    pub instance_id: Option<String>,
    /// A batch is written when it holds this many readings...
    pub batch_max_rows: usize,
    /// ...or when its first reading has waited this long.
    pub batch_max_wait_ms: u64,
    /// Batches written at once, each in a transaction of its own: while
    /// one commits the next is already copying. Their offsets are still
    /// stored in order.
    pub batch_writes_in_flight: usize,
    /// gRPC API (Telemetry + grpc.health.v1).
    pub grpc_addr: SocketAddr,
    /// mTLS on its gRPC server and on its calls to other services
    /// (`iot_proto::GrpcTls`); off when unset.
    pub grpc_tls: iot_proto::GrpcTls,
    pub admin_addr: SocketAddr,
    /// Raw and rollup retention, and how often it is applied.
    pub retention: RetentionConfig,
    /// An hour's on-time readings reach the rollups this long after it
    /// ends, aggregated from the raw rows; a reading of a sealed hour is
    /// upserted with its batch (`seal`).
    pub seal_grace_secs: u64,
    /// How often a replica checks for an hour to seal.
    pub seal_interval_secs: u64,
}

/// What API queries may take of the database.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueryLimits {
    /// Connections of the query pool.
    pub pool_size: usize,
    /// The database cancels a query running longer (RESOURCE_EXHAUSTED).
    pub statement_timeout_ms: u64,
    /// The most a query waits for its owner's turn, and then for a free
    /// connection (RESOURCE_EXHAUSTED).
    pub wait_ms: u64,
    /// Queries of one owner running at once, so one owner cannot take the
    /// whole pool; more wait their turn up to `wait_ms`, then are refused
    /// (RESOURCE_EXHAUSTED).
    pub per_owner: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            pool_size: 8,
            statement_timeout_ms: 10_000,
            wait_ms: 2_000,
            per_owner: 4,
        }
    }
}

impl QueryLimits {
    pub fn pool_limits(&self) -> iot_db::PoolLimits {
        iot_db::PoolLimits {
            wait: Some(Duration::from_millis(self.wait_ms)),
            statement_timeout: Some(Duration::from_millis(self.statement_timeout_ms)),
        }
    }

    fn problems(&self, section: &str) -> Vec<String> {
        let mut p = Vec::new();
        for (key, v) in [
            ("pool_size", self.pool_size as u64),
            ("statement_timeout_ms", self.statement_timeout_ms),
            ("wait_ms", self.wait_ms),
            ("per_owner", self.per_owner as u64),
        ] {
            if v == 0 {
                p.push(format!("{section}.{key} must be positive"));
            }
        }
        p
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres:postgres@127.0.0.1:5432/iot".into(),
            pool_size: 8,
            queries: QueryLimits::default(),
            kafka: KafkaConfig::default(),
            group_id: "ingest-writer".into(),
            instance_id: None,
            batch_max_rows: 10_000,
            batch_max_wait_ms: 100,
            batch_writes_in_flight: 2,
            grpc_addr: ([127, 0, 0, 1], 50052).into(),
            grpc_tls: iot_proto::GrpcTls::default(),
            admin_addr: ([127, 0, 0, 1], 9102).into(),
            retention: RetentionConfig::default(),
            seal_grace_secs: 300,
            seal_interval_secs: 60,
        }
    }
}

impl iot_runtime::Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut p = self.kafka.problems("kafka");
        p.extend(self.grpc_tls.problems());
        p.extend(self.retention.problems("retention"));
        p.extend(self.queries.problems("queries"));
        p.extend(iot_db::pool::settings_problems(
            &self.database_url,
            self.pool_size,
        ));
        p.extend(iot_kafka::member_problems(
            &self.group_id,
            self.instance_id.as_deref(),
        ));
        if self.batch_max_rows == 0 || self.batch_max_rows > 100_000 {
            p.push("batch_max_rows must be in 1..=100000".into());
        }
        if self.batch_max_wait_ms == 0 {
            p.push("batch_max_wait_ms must be positive".into());
        }
        if self.seal_grace_secs > 86_400 {
            p.push("seal_grace_secs must be at most 86400".into());
        }
        if self.seal_interval_secs == 0 || self.seal_interval_secs > 3_600 {
            p.push("seal_interval_secs must be in 1..=3600".into());
        }
        if !(1..=8).contains(&self.batch_writes_in_flight) {
            p.push("batch_writes_in_flight must be in 1..=8".into());
        } else if self.batch_writes_in_flight > self.pool_size {
            p.push("batch_writes_in_flight must not exceed pool_size".into());
        }
        p
    }
}

impl iot_runtime::ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "INGEST_WRITER";
}

iot_runtime::service_config_tests!(super::Config, "ingest-writer.toml", 9102);
