//! Kafka unavailable for a while during publishing: the gateway acknowledges
//! nothing Kafka did not take (so Mosquitto keeps it), and the broker's
//! redeliveries get through once Kafka is back. Uses a Tansu broker of its
//! own, so other tests keep theirs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use iot_testkit as kit;
use iot_testkit::Platform;

/// A broker of the test's own, killed when dropped (also on panic).
async fn start_broker(port: u16) -> kit::Process {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = kit::Process::spawn(
        Command::new(kit::tansu_bin())
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("start tansu (set IOT_TEST_TANSU_BIN or run `cargo xtask stack`)");
    kit::eventually("broker listening", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_acknowledged_while_kafka_is_down_and_nothing_is_lost() {
    let port = kit::free_port();
    let mut broker = start_broker(port).await;
    let mut kafka = kit::kafka_config();
    kafka.brokers = format!("127.0.0.1:{port}");
    let mut p = Platform::start_with(kafka.clone()).await;
    let dev = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let topic = format!("{}/{}/temperature", p.prefix, dev.device_id);
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(1);
    let payload = |i: i64| {
        format!(
            r#"{{"value": {i}, "timestamp": "{}"}}"#,
            (t0 + chrono::Duration::seconds(i)).to_rfc3339()
        )
        .into_bytes()
    };

    // Before the outage: the writer has caught up.
    kit::publish_all(
        &(0..10)
            .map(|i| (topic.clone(), payload(i)))
            .collect::<Vec<_>>(),
    )
    .await;
    let db = kit::connect(&p.db).await;
    let uuid = uuid::Uuid::parse_str(&dev.id).unwrap();
    let count = || kit::device_rows(&db, uuid);
    kit::eventually("first ten stored", Duration::from_secs(30), || async {
        (count().await == 10).then_some(())
    })
    .await;

    // The platform's writer leaves first: librdkafka 2.12's consumer crashes
    // (SIGSEGV in rd_kafka_metadata_update_op) on the metadata a restarted
    // memory broker sends for a topic it knew by id: no topic name. A real
    // Kafka keeps its topics (see docs/operations.md, known issues). A new writer reads
    // the recreated topic below.
    p.stop_writer().await;
    // Kafka goes away; the device keeps publishing (Mosquitto takes the
    // messages; the gateway must not acknowledge them to Mosquitto).
    broker.kill();
    kit::publish_all(
        &(10..20)
            .map(|i| (topic.clone(), payload(i)))
            .collect::<Vec<_>>(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let accepted = |admin| {
        kit::metric(
            admin,
            "iot_gateway_readings_accepted_total{source=\"mqtt\"}",
        )
    };
    assert_eq!(
        accepted(p.gateway_admin).await,
        Some(10),
        "nothing new reached Kafka"
    );
    assert_eq!(count().await, 10);

    // The gateway is redeployed while Kafka is still down: its in-flight
    // messages were never acknowledged, so the broker keeps them for the
    // session and hands them to the new gateway.
    p.restart_gateway().await;
    let mut broker = start_broker(port).await;
    // Memory storage forgot the topics; a real Kafka keeps them.
    kafka.ensure_topics().await.unwrap();
    // Kafka holds exactly the ten readings published during the outage.
    let records = kit::read_topic_from(
        &kafka.brokers,
        &kafka.readings_topic,
        10,
        Duration::from_secs(30),
    )
    .await;
    let mut produced: Vec<i64> = records
        .iter()
        .map(|(_, b)| {
            use iot_proto::Message as _;
            let env = iot_proto::v1::ReadingEnvelope::decode(b.as_slice()).unwrap();
            env.value.parse().unwrap()
        })
        .collect();
    produced.sort_unstable();
    assert_eq!(produced, (10..20).collect::<Vec<_>>());

    // A writer in a fresh group reads the recreated topic (the memory broker
    // forgot topics and offsets; a real Kafka keeps them) and stores the ten.
    let writer = p.start_writer(|_| {}).await;
    kit::eventually("all twenty stored", Duration::from_secs(60), || async {
        (count().await >= 20).then_some(())
    })
    .await;
    assert_eq!(
        accepted(p.gateway_admin).await,
        Some(10),
        "the new gateway got the ten redeliveries"
    );
    let values: Vec<rust_decimal::Decimal> = db
        .query(
            "SELECT value FROM sensor_readings WHERE device_id = $1 ORDER BY time",
            &[&uuid],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        values,
        (0..20).map(rust_decimal::Decimal::from).collect::<Vec<_>>()
    );
    p.stop().await;
    writer.wait().await.unwrap();
    broker.kill();
}
