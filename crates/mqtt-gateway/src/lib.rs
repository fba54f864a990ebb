//! mqtt-gateway: subscribes to the MQTT broker, validates readings with
//! `iot_domain`, produces them to Kafka keyed by device, and writes every
//! rejected message to the dead-letter topic with its reason.
//!
//! Architecture Invariant: a QoS 1 message is acknowledged only after Kafka's
//! delivery report for the reading or its dead letter.

mod broker_check;
mod config;
mod device_auth;
pub mod directory;
mod error;
mod grpc;
mod http;
mod metrics;
mod mqtt;
pub mod pipeline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iot_kafka::DeadLetters;
use iot_proto::v1::ingest_server::IngestServer;
use iot_runtime::{CancellationToken, Skeleton};
use tonic::service::Routes;

pub use config::{Config, LimitsConfig, MqttConfig, Split};
pub use device_auth::HttpAuthConfig;
pub use error::GatewayError;

pub const SERVICE: &str = "mqtt-gateway";

/// A started gateway; `http_addr` is its HTTP ingest door.
pub type Running = iot_runtime::Running<SocketAddr>;

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, GatewayError> {
    // Topics are created by ingest-writer (their consumer) or by operators;
    // until they exist, produces fail as transient errors and nothing is
    // acknowledged.
    let producer = config.kafka.producer(&config.mqtt.client_id)?;
    let dead_letters = DeadLetters::new(
        producer.clone(),
        config.kafka.dead_letter_topic.clone(),
        SERVICE,
    );
    let mut skeleton = Skeleton::new(SERVICE, shutdown.clone())?;
    let metrics = metrics::Metrics::register(&skeleton.registry)?;
    // Its registry calls counted and timed by method.
    let calls = iot_telemetry::grpc::GrpcClientMetrics::register(&skeleton.registry)?;
    let registry =
        registry_client::measured_admin_client(&config.registry_url, &config.grpc_tls, &calls)?;
    let directory = directory::Directory::with_client(
        registry.clone(),
        Duration::from_secs(config.device_cache_ttl_secs),
        Duration::from_secs(config.unknown_device_ttl_secs),
        config.device_cache_max_entries,
    )
    .holding_heartbeats(directory::HeartbeatHold {
        flush: Duration::from_secs(config.activity_flush_secs),
        max: Duration::from_secs(config.heartbeat_hold_secs),
    });
    directory.register_metrics(&skeleton.registry)?;
    let auth = Arc::new(device_auth::DeviceAuth::new(
        registry,
        &config.http_auth,
        metrics.clone(),
    ));
    let pipeline = Arc::new(pipeline::Pipeline {
        directory,
        producer: producer.clone(),
        readings_topic: config.kafka.readings_topic.clone(),
        dead_letters,
        limits: config.limits.limits(),
        topics: pipeline::Topics {
            single: config.mqtt.topic_prefix.clone(),
            batch: config.mqtt.batch_topic_prefix.clone(),
            senml: config.mqtt.senml_topic_prefix.clone(),
            presence: config.mqtt.presence_topic_prefix.clone(),
        },
        metrics,
    });
    skeleton
        .ready
        .check("kafka", iot_kafka::readiness_check(&config.kafka)?);
    skeleton.serve_admin(config.admin_addr).await?;
    let http_addr = skeleton
        .serve_http(
            config.http_addr,
            http::router(pipeline.clone(), auth.clone(), config.mqtt.max_packet_bytes),
        )
        .await?;
    let ingest = IngestServer::new(grpc::IngestService::new(pipeline.clone()));
    skeleton
        .serve_grpc(
            config.grpc_addr,
            &config.grpc_tls,
            Routes::new(ingest),
            &["iot.v1.Ingest"],
        )
        .await?;
    {
        // Cache entries of changed devices, and their verified HTTP
        // credentials, go at once, not at their TTL.
        let (p, stop) = (pipeline.clone(), shutdown.clone());
        tokio::spawn(async move {
            p.directory
                .follow_changes(stop, |change| auth.apply(change))
                .await;
        });
        // Heartbeats and first-seen sensors, coalesced.
        let (p, stop) = (pipeline.clone(), shutdown.clone());
        let every = Duration::from_secs(config.activity_flush_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                let last = tokio::select! {
                    () = stop.cancelled() => true,
                    _ = tick.tick() => false,
                };
                let flushed = if last {
                    p.directory.flush_all_activity().await
                } else {
                    p.directory.flush_activity().await
                };
                if let Err(e) = flushed {
                    tracing::warn!(error = %e, "cannot report device activity; keeping it");
                }
                if last {
                    return;
                }
            }
        });
    }
    let drain = Duration::from_secs(config.drain_timeout_secs);
    // Ready once the broker has acknowledged the subscription.
    let ready = skeleton.ready.clone();
    let work = async move {
        let result = mqtt::run_subscriber(
            config.mqtt,
            pipeline,
            config.max_in_flight,
            drain,
            ready,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        // Deliver what is still queued in the producer.
        let flushed = tokio::task::spawn_blocking(move || {
            use iot_kafka::rdkafka::producer::Producer as _;
            producer.flush(drain)
        })
        .await?;
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
        result
    };
    Ok(skeleton.run(http_addr, work)?)
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), GatewayError> {
    Ok(start(config, shutdown).await?.wait().await?)
}
