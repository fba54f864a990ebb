//! Traces exported over OTLP/HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL =
//! "http/protobuf"`) reach a real OTLP/HTTP receiver in this process. A
//! test binary of its own (see `otlp`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otlp;

use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1::CreateDeviceRequest;
use iot_testkit as kit;
use iot_testkit::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_are_exported_over_otlp_http() {
    let receiver = otlp::Receiver::default();
    let endpoint = receiver.start_http().await;
    iot_telemetry::init_tracing_exporting_over(
        "iot-platform-test",
        &endpoint,
        iot_telemetry::trace::Protocol::HttpProtobuf,
    );
    let p = Platform::start().await;
    let id = format!("traced-{}", kit::unique());
    p.registry_client(Scope::Admin)
        .await
        .create_device(CreateDeviceRequest {
            device_id: id.clone(),
            name: id,
            device_type: "temperature_sensor".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    kit::eventually(
        "the call's span over HTTP",
        Duration::from_secs(15),
        || async {
            receiver
                .spans()
                .iter()
                .any(|s| {
                    s.name == "grpc.server"
                        && otlp::attr(s, "rpc.method").is_some_and(|m| m.ends_with("/CreateDevice"))
                })
                .then_some(())
        },
    )
    .await;
    p.stop().await;
}
