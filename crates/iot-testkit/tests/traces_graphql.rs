//! A GraphQL request's trace, received by a real OTLP/gRPC receiver in
//! this process: it continues the caller's `traceparent`, and the gRPC
//! call it makes is its child. A test binary of its own (see `otlp`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otlp;

use std::collections::HashMap;
use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1::CreateDeviceRequest;
use iot_testkit as kit;
use iot_testkit::Platform;
use opentelemetry_proto::tonic::trace::v1::Span;
use otlp::{export_to_receiver, hex, sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graphql_requests_trace_continues_the_callers_and_holds_its_backend_call() {
    let receiver = export_to_receiver().await;
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let id = format!("traced-{}", kit::unique());
    let device = p
        .registry_client(Scope::Admin)
        .await
        .create_device(CreateDeviceRequest {
            device_id: id.clone(),
            name: id.clone(),
            device_type: "temperature_sensor".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

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
    // The one backend call is counted by service and method.
    let counted = kit::http_get(gql.admin_addr, "/metrics").await;
    assert!(
        counted.contains(
            "iot_grpc_client_requests_total{code=\"OK\",method=\"GetDevice\",upstream=\"device-registry\",service=\"graphql-gateway\"} 1"
        ),
        "{counted}"
    );

    p.stop().await;
}
