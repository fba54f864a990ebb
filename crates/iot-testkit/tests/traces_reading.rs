//! A reading's trace, received by a real OTLP/gRPC receiver in this
//! process: from its MQTT message through the gateway, Kafka (the
//! `traceparent` record header), the writer's batch (a link) and the alert
//! it raised. A test binary of its own (see `otlp`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otlp;

use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1::{self, CreateDeviceRequest};
use iot_testkit as kit;
use iot_testkit::Platform;
use opentelemetry_proto::tonic::trace::v1::Span;
use otlp::{attr, dump, export_to_receiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_readings_trace_follows_it_through_every_service() {
    let receiver = export_to_receiver().await;
    let p = Platform::start().await;
    let _engine = p.start_alert_engine(|_| {}).await;
    let mut registry = p.registry_client(Scope::Admin).await;
    let id = format!("traced-{}", kit::unique());
    registry
        .create_device(CreateDeviceRequest {
            device_id: id.clone(),
            name: id.clone(),
            device_type: "temperature_sensor".into(),
            config: Some(v1::DeviceConfig {
                alert_threshold_json: Some(r#"{"temperature": {"max": 30}}"#.into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // One reading over MQTT that raises an alert.
    kit::publish_all(&[(
        format!("{}/{id}/temperature", p.prefix),
        br#"{"value": 35}"#.to_vec(),
    )])
    .await;

    // The gateway's message span starts the trace; its ingest span is the
    // parent the Kafka header names.
    let (message, ingest) = kit::eventually(
        "the gateway's spans exported",
        Duration::from_secs(30),
        || async {
            let spans = receiver.spans();
            let message = spans.iter().find(|s| {
                s.name == "mqtt.message"
                    && attr(s, "mqtt.topic")
                        .is_some_and(|t| t.ends_with(&format!("/{id}/temperature")))
            })?;
            let ingest = spans
                .iter()
                .find(|s| s.name == "gateway.ingest" && s.parent_span_id == message.span_id)?;
            Some((message.clone(), ingest.clone()))
        },
    )
    .await;
    assert!(
        message.parent_span_id.is_empty(),
        "the message starts the trace"
    );
    let trace = message.trace_id.clone();

    // alert-engine's evaluation is a child of the gateway's ingest span
    // (across Kafka), and the alert it raised a child of the evaluation.
    let of_trace = || {
        let spans = receiver.spans();
        let mine: Vec<Span> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
        mine
    };
    let (evaluate, change) = kit::eventually(
        "alert-engine's spans in the reading's trace",
        Duration::from_secs(30),
        || async {
            let spans = of_trace();
            let evaluate = spans
                .iter()
                .find(|s| s.name == "alerts.evaluate" && s.parent_span_id == ingest.span_id)?;
            let change = spans.iter().find(|s| {
                s.name == "alert.change"
                    && s.parent_span_id == evaluate.span_id
                    && attr(s, "kind").as_deref() == Some("raised")
            })?;
            Some((evaluate.clone(), change.clone()))
        },
    )
    .await;
    assert_ne!(evaluate.span_id, change.span_id);

    // The device lookup the gateway made (a registry gRPC call) is a child
    // of the ingest span on the registry's side.
    let spans = of_trace();
    assert!(
        spans.iter().any(|s| s.name == "grpc.server"
            && s.parent_span_id == ingest.span_id
            && attr(s, "rpc.method").is_some_and(|m| m.contains("DeviceRegistry"))),
        "registry call in the reading's trace:\n{}",
        dump(&spans)
    );

    // The writer's batch is in a trace of its own and links to the ingest
    // span of the reading it stored.
    kit::eventually(
        "the writer's batch span links to the reading",
        Duration::from_secs(30),
        || async {
            receiver
                .spans()
                .iter()
                .any(|s| {
                    s.name == "writer.batch"
                        && s.links
                            .iter()
                            .any(|l| l.trace_id == trace && l.span_id == ingest.span_id)
                })
                .then_some(())
        },
    )
    .await;
    p.stop().await;
}
