//! mqtt-gateway: subscribes to the MQTT broker, validates readings with
//! `iot_domain`, produces them to Kafka keyed by device, and writes every
//! rejected message to the dead-letter topic with its reason.
//!
//! Architecture Invariant: a QoS 1 message is acknowledged only after Kafka's
//! delivery report for the reading or its dead letter.

mod config;
pub mod directory;
mod metrics;
mod mqtt;
pub mod pipeline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iot_kafka::DeadLetters;
use iot_runtime::CancellationToken;
use iot_telemetry::Readiness;
use tokio::task::JoinHandle;

pub use config::{Config, LimitsConfig, MqttConfig};

pub const SERVICE: &str = "mqtt-gateway";

pub struct Running {
    pub admin_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    config.kafka.ensure_topics().await?;
    let producer = config.kafka.producer(&config.mqtt.client_id)?;
    let dead_letters = DeadLetters::new(
        producer.clone(),
        config.kafka.dead_letter_topic.clone(),
        SERVICE,
    );
    let registry =
        iot_telemetry::prometheus::Registry::new_custom(Some("iot_gateway".into()), None)?;
    let metrics = metrics::Metrics::register(&registry)?;
    let pipeline = Arc::new(pipeline::Pipeline {
        directory: directory::Directory::new(
            &config.registry_url,
            Duration::from_secs(config.device_cache_ttl_secs),
            Duration::from_secs(config.unknown_device_ttl_secs),
        )?,
        producer: producer.clone(),
        readings_topic: config.kafka.readings_topic.clone(),
        dead_letters,
        limits: config.limits.limits(),
        topic_prefix: config.mqtt.topic_prefix.clone(),
        metrics,
    });
    let ready = Readiness::default();
    let (admin_addr, admin_task) = iot_telemetry::serve_admin(
        config.admin_addr,
        iot_telemetry::admin_router(registry, ready.clone()),
        shutdown.clone(),
    )
    .await?;
    let task = tokio::spawn(async move {
        tracing::info!(%admin_addr, "mqtt-gateway starting");
        let result = mqtt::run_subscriber(
            config.mqtt,
            pipeline,
            config.max_in_flight,
            ready,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        // Deliver what is still queued in the producer.
        let flushed = tokio::task::spawn_blocking(move || {
            use iot_kafka::rdkafka::producer::Producer as _;
            producer.flush(Duration::from_secs(10))
        })
        .await?;
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
        admin_task.await?;
        tracing::info!("mqtt-gateway stopped");
        result
    });
    Ok(Running { admin_addr, task })
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}
