//! The platform in process: the services started from their libraries on
//! the real components, each with names of the test's own (database,
//! topics, MQTT prefixes, consumer groups), for end-to-end tests in any
//! crate.
//!
//! [`Platform`] starts device-registry, ingest-writer and mqtt-gateway, and
//! starts alert-engine and graphql-gateway on request. [`Registry`] is
//! device-registry alone, for tests of its API. The `*_config` functions
//! give one service's test settings, for a test that starts it by hand
//! (several replicas, a broken dependency, ...).
//!
//! iot-bench does not use this: it measures release binaries as the
//! separate processes they are in production (CPU, memory, kills).

use std::net::SocketAddr;
use std::time::Duration;

use iot_kafka::KafkaConfig;
use iot_proto::v1::{self, CreateDeviceRequest};
use iot_runtime::{CancellationToken, ServiceError};
use tokio::task::JoinHandle;

use crate::{
    MqttListener, TestDb, broker_config, broker_config_on, eventually, http_get, migrated_database,
    unique,
};

/// A free port on loopback, for a service's listeners.
pub const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// How long a stopping service may take (its drain and grace periods).
const STOP: Duration = Duration::from_secs(40);

/// device-registry's test settings: `database_url`, devices' topics under
/// `root`, free ports.
pub fn registry_config(database_url: &str, root: &str) -> device_registry::Config {
    device_registry::Config {
        database_url: database_url.to_owned(),
        grpc_addr: ANY,
        grpc_tls: crate::pki::grpc_tls(device_registry::SERVICE),
        admin_addr: ANY,
        broker: broker_config(root),
        ..Default::default()
    }
}

/// [`registry_config`] with its admin session on the given listener.
pub fn registry_config_on(
    database_url: &str,
    root: &str,
    listener: MqttListener,
) -> device_registry::Config {
    device_registry::Config {
        broker: broker_config_on(root, listener),
        ..registry_config(database_url, root)
    }
}

/// ingest-writer's test settings: `database_url`, `kafka`, a consumer
/// group of its own, free ports, batches flushed after 50 ms.
pub fn writer_config(database_url: &str, kafka: &KafkaConfig) -> ingest_writer::Config {
    ingest_writer::Config {
        database_url: database_url.to_owned(),
        kafka: kafka.clone(),
        group_id: format!("writer-{}", unique()),
        batch_max_wait_ms: 50,
        grpc_addr: ANY,
        grpc_tls: crate::pki::grpc_tls(ingest_writer::SERVICE),
        admin_addr: ANY,
        ..Default::default()
    }
}

/// Waits for a service's task, which must end without an error within the
/// longest grace period.
async fn stopped(what: &str, task: JoinHandle<Result<(), ServiceError>>) {
    tokio::time::timeout(STOP, task)
        .await
        .unwrap_or_else(|_| panic!("{what} stops within its grace period"))
        .unwrap_or_else(|e| panic!("{what}'s task: {e}"))
        .unwrap_or_else(|e| panic!("{what} stops cleanly: {e}"));
}

/// device-registry, ingest-writer and mqtt-gateway on a database, Kafka
/// topics and MQTT topics of their own. Holds the database for the test's
/// whole life: it is dropped with the platform. Dropping the platform
/// also tells its services to stop; [`Platform::stop`] waits for them.
pub struct Platform {
    pub db: TestDb,
    /// Every MQTT topic of this platform is under `{root}/`.
    pub root: String,
    pub kafka: KafkaConfig,
    /// `{prefix}/{device_id}/{sensor}`
    pub prefix: String,
    /// `{batch_prefix}/{device_id}`
    pub batch_prefix: String,
    /// `{senml_prefix}/{device_id}`
    pub senml_prefix: String,
    pub registry: SocketAddr,
    pub telemetry: SocketAddr,
    pub writer_admin: SocketAddr,
    pub gateway_admin: SocketAddr,
    pub gateway_http: SocketAddr,
    pub gateway_grpc: SocketAddr,
    /// The broker listener the registry's admin session and the gateway
    /// use.
    pub listener: MqttListener,
    pub shutdown: CancellationToken,
    /// The gateway's own token (a child of `shutdown`), to stop it alone.
    pub gateway_shutdown: CancellationToken,
    /// The writer's own token (a child of `shutdown`), to stop it alone.
    pub writer_shutdown: CancellationToken,
    /// The gateway's config, to start it again with the same MQTT session.
    pub gateway_config: mqtt_gateway::Config,
    /// The services' tasks: registry, writer, gateway, then any a test adds.
    pub tasks: Vec<JoinHandle<Result<(), ServiceError>>>,
}

impl Platform {
    pub async fn start() -> Self {
        Self::start_with(crate::kafka_config()).await
    }

    /// A platform on the given Kafka settings (e.g. a broker of the test's own).
    pub async fn start_with(kafka: KafkaConfig) -> Self {
        Self::start_tuned(kafka, |_| {}).await
    }

    /// A platform whose registry and gateway reach the broker on
    /// `listener` (whatever `IOT_TEST_MQTT_LISTENER` says).
    pub async fn start_on(listener: MqttListener) -> Self {
        Self::start_tuned_on(crate::kafka_config(), listener, |_| {}).await
    }

    /// A platform whose gateway config is adjusted by `tune` first.
    pub async fn start_tuned(
        kafka: KafkaConfig,
        tune: impl FnOnce(&mut mqtt_gateway::Config),
    ) -> Self {
        Self::start_tuned_on(kafka, MqttListener::from_env(), tune).await
    }

    /// [`Platform::start_tuned`] on the given broker listener.
    pub async fn start_tuned_on(
        kafka: KafkaConfig,
        listener: MqttListener,
        tune: impl FnOnce(&mut mqtt_gateway::Config),
    ) -> Self {
        // Service logs show up in a failing test's output.
        iot_telemetry::init_tracing("test");
        let db = migrated_database().await;
        let root = format!("t{}", unique());
        let (prefix, batch_prefix, senml_prefix) = (
            format!("{root}/sensors"),
            format!("{root}/batches"),
            format!("{root}/senml"),
        );
        let shutdown = CancellationToken::new();

        let registry =
            device_registry::start(registry_config_on(&db, &root, listener), shutdown.clone())
                .await
                .unwrap();
        let writer_shutdown = shutdown.child_token();
        let writer = ingest_writer::start(writer_config(&db, &kafka), writer_shutdown.clone())
            .await
            .unwrap();
        let (host, port) = listener.addr();
        let (username, password) = crate::mqtt_account("gateway");
        let mut gateway_config = mqtt_gateway::Config {
            mqtt: mqtt_gateway::MqttConfig {
                host,
                port,
                tls: listener.tls(),
                username: Some(username),
                password: Some(password),
                client_id: format!("gw-{}", unique()),
                topic_prefix: prefix.clone(),
                batch_topic_prefix: batch_prefix.clone(),
                senml_topic_prefix: senml_prefix.clone(),
                presence_topic_prefix: format!("{root}/devices"),
                share_group: format!("g{}", unique()),
                ..Default::default()
            },
            kafka: kafka.clone(),
            registry_url: format!("http://{}", registry.grpc_addr),
            http_addr: ANY,
            grpc_addr: ANY,
            grpc_tls: crate::pki::grpc_tls(mqtt_gateway::SERVICE),
            admin_addr: ANY,
            drain_timeout_secs: 2,
            ..Default::default()
        };
        tune(&mut gateway_config);
        let gateway_shutdown = shutdown.child_token();
        let gateway = mqtt_gateway::start(gateway_config.clone(), gateway_shutdown.clone())
            .await
            .unwrap();
        let p = Platform {
            db,
            root,
            kafka,
            prefix,
            batch_prefix,
            senml_prefix,
            registry: registry.grpc_addr,
            telemetry: writer.grpc_addr,
            writer_admin: writer.admin_addr,
            gateway_admin: gateway.admin_addr,
            gateway_http: gateway.http_addr,
            gateway_grpc: gateway.grpc_addr,
            listener,
            shutdown,
            gateway_shutdown,
            writer_shutdown,
            gateway_config,
            tasks: vec![
                tokio::spawn(registry.wait()),
                tokio::spawn(writer.wait()),
                tokio::spawn(gateway.wait()),
            ],
        };
        // The gateway is ready once its subscription is acknowledged.
        eventually("gateway ready", Duration::from_secs(30), || async {
            (http_get(p.gateway_admin, "/readyz").await == "ready").then_some(())
        })
        .await;
        p
    }

    /// An alert-engine client of `engine` with `scope`, calling as the
    /// operator.
    pub async fn alerts_client(
        &self,
        engine: &alert_engine::Running,
        scope: iot_proto::Scope,
    ) -> iot_proto::AlertsClient {
        iot_proto::alerts_client(
            format!("http://{}", engine.grpc_addr),
            scope,
            &crate::pki::operator(),
        )
        .await
        .unwrap()
    }

    /// A device-registry client of this platform with `scope`.
    pub async fn registry_client(&self, scope: iot_proto::Scope) -> iot_proto::RegistryClient {
        iot_proto::registry_client(
            format!("http://{}", self.registry),
            scope,
            &crate::pki::operator(),
        )
        .await
        .unwrap()
    }

    /// Creates a device of no owner (the nil owner) through the registry.
    pub async fn create_device(&self, device_id: &str, status: &str) -> v1::Device {
        let mut c = self.registry_client(iot_proto::Scope::Admin).await;
        c.create_device(CreateDeviceRequest {
            device_id: device_id.into(),
            name: "Test device".into(),
            device_type: "temperature_sensor".into(),
            status: status.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    }

    /// device-registry's settings on this platform (a broker client id of
    /// its own), for another registry beside the platform's.
    pub fn registry_config(&self) -> device_registry::Config {
        registry_config_on(&self.db, &self.root, self.listener)
    }

    /// ingest-writer's settings on this platform, in a consumer group of
    /// its own, for another writer beside the platform's.
    pub fn writer_config(&self) -> ingest_writer::Config {
        writer_config(&self.db, &self.kafka)
    }

    /// Starts another writer on this platform (a consumer group of its
    /// own), its config adjusted by `tune` first; it stops with the
    /// platform.
    pub async fn start_writer(
        &self,
        tune: impl FnOnce(&mut ingest_writer::Config),
    ) -> ingest_writer::Running {
        let mut config = self.writer_config();
        tune(&mut config);
        ingest_writer::start(config, self.shutdown.clone())
            .await
            .unwrap()
    }

    /// Stops the platform's writer (its task is the second).
    pub async fn stop_writer(&mut self) {
        self.writer_shutdown.cancel();
        stopped("the writer", self.tasks.remove(1)).await;
    }

    /// alert-engine's settings on this platform: a consumer group and an
    /// alerts topic of its own.
    pub fn alert_engine_config(&self) -> alert_engine::Config {
        alert_engine::Config {
            database_url: self.db.to_string(),
            kafka: self.kafka.clone(),
            group_id: format!("alerts-{}", unique()),
            grpc_addr: ANY,
            grpc_tls: crate::pki::grpc_tls(alert_engine::SERVICE),
            admin_addr: ANY,
            registry_url: format!("http://{}", self.registry),
            alerts_topic: format!("test.alerts.{}", unique()),
            ..Default::default()
        }
    }

    /// Starts an alert-engine on this platform (a consumer group of its own),
    /// its config adjusted by `tune` first.
    pub async fn start_alert_engine(
        &self,
        tune: impl FnOnce(&mut alert_engine::Config),
    ) -> alert_engine::Running {
        self.start_alert_engine_until(self.shutdown.clone(), tune)
            .await
    }

    /// An alert-engine that stops when `shutdown` is cancelled (give it
    /// a child of the platform's token to stop it alone).
    pub async fn start_alert_engine_until(
        &self,
        shutdown: CancellationToken,
        tune: impl FnOnce(&mut alert_engine::Config),
    ) -> alert_engine::Running {
        let mut config = self.alert_engine_config();
        tune(&mut config);
        alert_engine::start(config, shutdown).await.unwrap()
    }

    /// graphql-gateway's settings on this platform's services (alerts from
    /// `alerts`), polling every 200 ms.
    pub fn graphql_config(&self, alerts: &alert_engine::Running) -> graphql_gateway::Config {
        let mut config = graphql_gateway::Config {
            registry_url: format!("http://{}", self.registry),
            telemetry_url: format!("http://{}", self.telemetry),
            alerts_url: format!("http://{}", alerts.grpc_addr),
            ingest_url: format!("http://{}", self.gateway_grpc),
            http_addr: ANY,
            grpc_addr: ANY,
            grpc_tls: crate::pki::grpc_tls(graphql_gateway::SERVICE),
            admin_addr: ANY,
            ..Default::default()
        };
        config.limits.poll_ms = 200;
        config
    }

    /// Starts a graphql-gateway on this platform's services (alerts from
    /// `alerts`), its config adjusted by `tune` first; returns once it is
    /// ready (every backend serving).
    pub async fn start_graphql(
        &self,
        alerts: &alert_engine::Running,
        tune: impl FnOnce(&mut graphql_gateway::Config),
    ) -> graphql_gateway::Running {
        let mut config = self.graphql_config(alerts);
        tune(&mut config);
        let g = graphql_gateway::start(config, self.shutdown.clone())
            .await
            .unwrap();
        eventually("graphql-gateway ready", Duration::from_secs(30), || async {
            (http_get(g.http_addr, "/readyz").await == "ready").then_some(())
        })
        .await;
        g
    }

    /// Stops the gateway alone and starts it again with the same MQTT
    /// session (client id), as a redeployed replica would.
    pub async fn restart_gateway(&mut self) {
        self.gateway_shutdown.cancel();
        // The gateway's task was pushed last.
        let task = self.tasks.pop().expect("gateway task");
        stopped("the gateway", task).await;
        self.gateway_shutdown = self.shutdown.child_token();
        let g = mqtt_gateway::start(self.gateway_config.clone(), self.gateway_shutdown.clone())
            .await
            .unwrap();
        self.gateway_admin = g.admin_addr;
        self.gateway_http = g.http_addr;
        self.gateway_grpc = g.grpc_addr;
        self.tasks.push(tokio::spawn(g.wait()));
    }

    /// Stops every service and waits until each has stopped cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.tasks) {
            stopped("a service of the platform", t).await;
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// device-registry alone on a database of its own (devices' topics under
/// a root of its own on the test broker). Stopped when dropped; the
/// database is dropped with it.
pub struct Registry {
    pub db: TestDb,
    /// Every device topic of this registry is under `{root}/`.
    pub root: String,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Registry {
    pub async fn start() -> Self {
        let db = migrated_database().await;
        let root = format!("t{}", unique());
        let shutdown = CancellationToken::new();
        let r = device_registry::start(registry_config(&db, &root), shutdown.clone())
            .await
            .unwrap();
        Registry {
            db,
            root,
            grpc_addr: r.grpc_addr,
            admin_addr: r.admin_addr,
            shutdown,
        }
    }

    /// Its gRPC URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// A client with `scope`.
    pub async fn client(&self, scope: iot_proto::Scope) -> iot_proto::RegistryClient {
        iot_proto::registry_client(self.url(), scope, &crate::pki::operator())
            .await
            .unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
