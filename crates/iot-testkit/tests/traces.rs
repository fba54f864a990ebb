//! Traces across the whole path, received by a real OTLP/gRPC receiver in
//! this process (the collector's TraceService, from opentelemetry-proto):
//! one reading from its MQTT message through the gateway, Kafka (the
//! `traceparent` record header), the writer's batch (a link) and the alert
//! it raised; and one GraphQL request through the gRPC call it makes.
//! (The operating metrics beside them: `lifecycle.rs`.)
//!
//! A test binary of its own, with one test: the tracing subscriber is
//! process-wide, and this one exports to the receiver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1::{self, CreateDeviceRequest};
use iot_testkit as kit;
use iot_testkit::Platform;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

/// Every span received, as sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves on a free port; returns the endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(v) => Some(v.clone()),
            other => Some(format!("{other:?}")),
        }
    })
}

/// The spans, one per line, for failure messages.
fn dump(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} trace={} span={} parent={} links={:?} attrs={:?}\n",
                s.name,
                hex(&s.trace_id),
                hex(&s.span_id),
                hex(&s.parent_span_id),
                s.links.iter().map(|l| hex(&l.span_id)).collect::<Vec<_>>(),
                s.attributes
                    .iter()
                    .map(|a| a.key.as_str())
                    .collect::<Vec<_>>()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_readings_trace_and_a_graphql_requests_trace_follow_every_hop() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    iot_telemetry::init_tracing_exporting_to("iot-platform-test", &endpoint);
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let mut registry = p.registry_client(Scope::Admin).await;
    let id = format!("traced-{}", kit::unique());
    let device = registry
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

    // A GraphQL request continues the caller's trace, and its backend call
    // is its child on the registry's side.
    let gql = p
        .start_graphql(&engine, |c| {
            c.auth.api_keys = vec![graphql_gateway::ApiKey {
                name: "ops".into(),
                sha256: sha256("trace-key"),
                owner: "*".into(),
            }];
        })
        .await;
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let body = serde_json::json!({
        "query": "query($id: ID!) { device(id: $id) { name } }",
        "variables": {"id": device.id},
    })
    .to_string();
    let (status, answer) = kit::http_post_with(
        gql.http_addr,
        "/graphql",
        "application/json",
        &[
            ("X-Api-Key", "trace-key"),
            (
                "traceparent",
                &format!("00-{caller_trace}-b7ad6b7169203331-01"),
            ),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(&id), "{answer}");
    let by_id = kit::eventually(
        "the GraphQL request's spans",
        Duration::from_secs(30),
        || async {
            let spans: HashMap<String, Span> = receiver
                .spans()
                .into_iter()
                .filter(|s| hex(&s.trace_id) == caller_trace)
                .map(|s| (s.name.clone(), s))
                .collect();
            (spans.contains_key("graphql.request") && spans.contains_key("grpc.server"))
                .then_some(spans)
        },
    )
    .await;
    let request = &by_id["graphql.request"];
    assert_eq!(hex(&request.parent_span_id), "b7ad6b7169203331");
    assert_eq!(by_id["grpc.server"].parent_span_id, request.span_id);

    p.stop().await;
}

fn sha256(s: &str) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(s.as_bytes()))
}
