//! A platform of in-process services on the real components, with names of
//! its own (database, topics, MQTT prefixes, consumer groups).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use iot_proto::v1::{self, CreateDeviceRequest};
use iot_runtime::CancellationToken;
use iot_testkit as kit;

pub const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

pub struct Platform {
    pub db: kit::TestDb,
    /// Every MQTT topic of this platform is under `{root}/`.
    pub root: String,
    pub kafka: iot_kafka::KafkaConfig,
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
    pub shutdown: CancellationToken,
    /// The gateway's own token (a child of `shutdown`), to stop it alone.
    pub gateway_shutdown: CancellationToken,
    /// The writer's own token (a child of `shutdown`), to stop it alone.
    pub writer_shutdown: CancellationToken,
    /// The gateway's config, to start it again with the same MQTT session.
    pub gateway_config: mqtt_gateway::Config,
    pub tasks: Vec<tokio::task::JoinHandle<Result<(), iot_runtime::ServiceError>>>,
}

impl Platform {
    pub async fn start() -> Self {
        Self::start_with(kit::kafka_config()).await
    }

    /// A platform on the given Kafka settings (e.g. a broker of the test's own).
    pub async fn start_with(kafka: iot_kafka::KafkaConfig) -> Self {
        Self::start_tuned(kafka, |_| {}).await
    }

    /// A platform whose gateway config is adjusted by `tune` first.
    pub async fn start_tuned(
        kafka: iot_kafka::KafkaConfig,
        tune: impl FnOnce(&mut mqtt_gateway::Config),
    ) -> Self {
        // Service logs show up in a failing test's output.
        iot_telemetry::init_tracing("test");
        let db = kit::migrated_database().await;
        let root = format!("t{}", kit::unique());
        let (prefix, batch_prefix, senml_prefix) = (
            format!("{root}/sensors"),
            format!("{root}/batches"),
            format!("{root}/senml"),
        );
        let shutdown = CancellationToken::new();

        let registry = device_registry::start(
            device_registry::Config {
                database_url: db.clone(),
                grpc_addr: ANY,
                admin_addr: ANY,
                broker: kit::broker_config(&root),
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let writer_shutdown = shutdown.child_token();
        let writer = ingest_writer::start(
            ingest_writer::Config {
                database_url: db.clone(),
                kafka: kafka.clone(),
                group_id: format!("writer-{}", kit::unique()),
                batch_max_wait_ms: 50,
                grpc_addr: ANY,
                admin_addr: ANY,
                ..Default::default()
            },
            writer_shutdown.clone(),
        )
        .await
        .unwrap();
        let (host, port) = kit::mqtt_addr();
        let (username, password) = kit::mqtt_account("gateway");
        let mut gateway_config = mqtt_gateway::Config {
            mqtt: mqtt_gateway::MqttConfig {
                host,
                port,
                username: Some(username),
                password: Some(password),
                client_id: format!("gw-{}", kit::unique()),
                topic_prefix: prefix.clone(),
                batch_topic_prefix: batch_prefix.clone(),
                senml_topic_prefix: senml_prefix.clone(),
                share_group: format!("g{}", kit::unique()),
                ..Default::default()
            },
            kafka: kafka.clone(),
            registry_url: format!("http://{}", registry.grpc_addr),
            http_addr: ANY,
            grpc_addr: ANY,
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
        kit::eventually("gateway ready", Duration::from_secs(30), || async {
            let body = kit::http_get(p.gateway_admin, "/readyz").await;
            (body == "ready").then_some(())
        })
        .await;
        p
    }

    /// A device-registry client of this platform with `scope`.
    pub async fn registry_client(&self, scope: iot_proto::Scope) -> iot_proto::RegistryClient {
        iot_proto::registry_client(format!("http://{}", self.registry), scope)
            .await
            .unwrap()
    }

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
        let mut config = alert_engine::Config {
            database_url: self.db.clone(),
            kafka: self.kafka.clone(),
            group_id: format!("alerts-{}", kit::unique()),
            grpc_addr: ANY,
            admin_addr: ANY,
            registry_url: format!("http://{}", self.registry),
            alerts_topic: format!("test.alerts.{}", kit::unique()),
            ..Default::default()
        };
        tune(&mut config);
        alert_engine::start(config, shutdown).await.unwrap()
    }

    /// Stops the platform's writer (its task is the second).
    pub async fn stop_writer(&mut self) {
        self.writer_shutdown.cancel();
        let task = self.tasks.remove(1);
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("writer stops")
            .unwrap()
            .unwrap();
    }

    /// Starts a graphql-gateway on this platform's services (alerts from
    /// `alerts`), its config adjusted by `tune` first; returns once it is
    /// ready (every backend serving).
    pub async fn start_graphql(
        &self,
        alerts: &alert_engine::Running,
        tune: impl FnOnce(&mut graphql_gateway::Config),
    ) -> graphql_gateway::Running {
        let mut config = graphql_gateway::Config {
            registry_url: format!("http://{}", self.registry),
            telemetry_url: format!("http://{}", self.telemetry),
            alerts_url: format!("http://{}", alerts.grpc_addr),
            ingest_url: format!("http://{}", self.gateway_grpc),
            http_addr: ANY,
            grpc_addr: ANY,
            admin_addr: ANY,
            ..Default::default()
        };
        config.limits.poll_ms = 200;
        tune(&mut config);
        let g = graphql_gateway::start(config, self.shutdown.clone())
            .await
            .unwrap();
        kit::eventually("graphql-gateway ready", Duration::from_secs(30), || async {
            (kit::http_get(g.http_addr, "/readyz").await == "ready").then_some(())
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
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("gateway stops within its drain timeout")
            .unwrap()
            .unwrap();
        self.gateway_shutdown = self.shutdown.child_token();
        let g = mqtt_gateway::start(self.gateway_config.clone(), self.gateway_shutdown.clone())
            .await
            .unwrap();
        self.gateway_admin = g.admin_addr;
        self.gateway_http = g.http_addr;
        self.gateway_grpc = g.grpc_addr;
        self.tasks.push(tokio::spawn(g.wait()));
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(40), t)
                .await
                .expect("service stops within its grace period")
                .unwrap()
                .unwrap();
        }
    }
}
