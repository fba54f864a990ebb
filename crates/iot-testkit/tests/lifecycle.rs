//! Every service starts against the real components, answers gRPC health
//! checks, and stops cleanly when told to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use iot_runtime::CancellationToken;
use iot_testkit as kit;
use iot_testkit::Platform;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health(addr: SocketAddr) -> Option<i32> {
    let channel = iot_proto::connect(
        &iot_testkit::pki::operator(),
        "the service under test",
        &format!("http://{addr}"),
    )
    .await
    .ok()?;
    let mut c = HealthClient::new(channel);
    c.check(HealthCheckRequest {
        service: String::new(),
    })
    .await
    .ok()
    .map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_answer_health_checks_and_stop_cleanly() {
    // Registry, writer and gateway, plus the two services the platform
    // fixture does not start.
    let p = Platform::start().await;
    let alerts = p.start_alert_engine(|_| {}).await;
    // Started by hand: its readiness is what this test watches.
    let graphql = graphql_gateway::start(p.graphql_config(&alerts), p.shutdown.clone())
        .await
        .unwrap();

    for addr in [p.registry, p.telemetry, alerts.grpc_addr, p.gateway_grpc] {
        assert_eq!(
            health(addr).await,
            Some(ServingStatus::Serving as i32),
            "{addr}"
        );
    }
    // The GraphQL gateway reports serving once all its upstreams do.
    let gql = graphql.grpc_addr;
    kit::eventually(
        "graphql-gateway serving",
        Duration::from_secs(20),
        || async move { (health(gql).await == Some(ServingStatus::Serving as i32)).then_some(()) },
    )
    .await;
    assert_eq!(kit::http_get(graphql.admin_addr, "/readyz").await, "ready");
    assert_eq!(
        kit::metric(p.writer_admin, "iot_writer_rows_written_total").await,
        Some(0)
    );

    p.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(40), async {
        alerts.wait().await.unwrap();
        graphql.wait().await.unwrap();
    })
    .await;
    assert!(stopped.is_ok(), "services did not stop within 40s");
    // The fixture's services stop within their grace period too.
    p.stop().await;
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(gql).await.is_err());
}

#[tokio::test]
async fn a_service_refuses_an_unmigrated_database() {
    let db = kit::empty_database().await;
    let err = device_registry::start(
        kit::platform::registry_config(&db, "unmigrated"),
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("start must fail");
    assert!(err.to_string().contains("iotctl migrate"), "{err}");
}

/// `/readyz` checks the dependencies on every probe: a writer whose Kafka
/// is unreachable (it starts anyway, and catches up once Kafka is there)
/// is not ready and says why; the platform's own writer is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_names_an_unreachable_dependency() {
    let p = Platform::start().await;
    assert_eq!(kit::http_get(p.writer_admin, "/readyz").await, "ready");
    let dead_port = kit::free_port();
    let writer = p
        .start_writer(|c| c.kafka.brokers = format!("127.0.0.1:{dead_port}"))
        .await;
    let body = kit::eventually("the writer serves", Duration::from_secs(20), || async {
        let body = kit::http_get(writer.admin_addr, "/readyz").await;
        (!body.contains("not serving yet")).then_some(body)
    })
    .await;
    assert!(body.starts_with("not ready: kafka:"), "{body}");
    assert!(
        !body.contains("database"),
        "the database is reachable: {body}"
    );
    p.stop().await;
}

/// The operating metrics: consumer lag (librdkafka's statistics, every
/// 5 s), batch sizes, pool usage and gRPC calls (the GraphQL gateway's
/// readiness checks called every backend's health).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_report_their_operating_metrics() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let _graphql = p.start_graphql(&engine, |_| {}).await;
    // One reading, so that the writer has written a batch.
    let id = format!("metered-{}", kit::unique());
    p.create_device(&id, "active").await;
    kit::publish_all(&[(
        format!("{}/{id}/temperature", p.prefix),
        br#"{"value": 21}"#.to_vec(),
    )])
    .await;
    // One name per metric across services; the `service` label tells them
    // apart.
    let writer_wants = [
        "iot_kafka_consumer_lag{",
        "iot_writer_batch_rows_bucket",
        "iot_db_pool_connections{pool=\"main\",state=\"idle\",service=\"ingest-writer\"}",
        "iot_db_pool_connections{pool=\"queries\",state=\"idle\",service=\"ingest-writer\"}",
        "iot_grpc_server_requests_total{code=\"OK\",method=\"grpc.health.v1.Health/Check\",service=\"ingest-writer\"}",
        "iot_grpc_server_request_duration_seconds_bucket",
        "process_resident_memory_bytes{service=\"ingest-writer\"}",
        "iot_build_info{version=",
    ];
    let engine_wants = [
        "iot_kafka_consumer_lag{",
        "iot_db_pool_max_connections{pool=\"main\",service=\"alert-engine\"}",
        "iot_grpc_server_requests_total{",
    ];
    // The gateway's calls to the registry (its device lookup), by method.
    let gateway_wants = [
        "iot_grpc_client_requests_total{code=\"OK\",method=\"GetDevice\",upstream=\"device-registry\",service=\"mqtt-gateway\"}",
        "iot_grpc_client_request_duration_seconds_bucket{method=\"GetDevice\",upstream=\"device-registry\",service=\"mqtt-gateway\",",
    ];
    let missing = kit::eventually("operating metrics", Duration::from_secs(30), || async {
        let w = kit::http_get(p.writer_admin, "/metrics").await;
        let a = kit::http_get(engine.admin_addr, "/metrics").await;
        let g = kit::http_get(p.gateway_admin, "/metrics").await;
        let missing: Vec<&str> = writer_wants
            .iter()
            .filter(|m| !w.contains(*m))
            .chain(engine_wants.iter().filter(|m| !a.contains(*m)))
            .chain(gateway_wants.iter().filter(|m| !g.contains(*m)))
            .copied()
            .collect();
        if !missing.is_empty() {
            eprintln!("not yet: {missing:?}");
        }
        missing.is_empty().then_some(missing)
    })
    .await;
    assert!(missing.is_empty());
    p.stop().await;
}
