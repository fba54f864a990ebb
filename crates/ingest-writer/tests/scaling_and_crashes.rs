//! ingest-writer against the real PostgreSQL and Kafka-API broker: replicas
//! split partitions, and a SIGKILL mid-stream loses and duplicates nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use iot_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use iot_proto::Message as _;
use iot_proto::v1::ReadingEnvelope;
use iot_runtime::CancellationToken;
use iot_testkit as kit;
use uuid::Uuid;

/// `n` distinct readings over `devices` devices, one second apart per device.
fn readings(devices: usize, n: usize) -> Vec<ReadingEnvelope> {
    let ids: Vec<Uuid> = (0..devices).map(|_| Uuid::new_v4()).collect();
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    (0..n)
        .map(|i| {
            let t = t0 + chrono::Duration::seconds((i / devices) as i64);
            ReadingEnvelope {
                device_uuid: ids[i % devices].to_string(),
                device_id: format!("d{}", i % devices),
                sensor_name: "temperature".into(),
                value: format!("{}.5", i % 1000),
                time: Some(iot_proto::timestamp(t)),
                received_at: Some(iot_proto::timestamp(t)),
                source: "test".into(),
                ..Default::default()
            }
        })
        .collect()
}

async fn produce(producer: &FutureProducer, topic: &str, envs: &[ReadingEnvelope]) {
    for chunk in envs.chunks(1000) {
        let sends = chunk.iter().map(|e| {
            let bytes = e.encode_to_vec();
            let key = e.device_uuid.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&bytes),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        });
        futures::future::join_all(sends).await;
    }
}

async fn count(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM sensor_readings", &[])
        .await
        .unwrap()
        .get(0)
}

async fn stored_keys(db: &tokio_postgres::Client) -> BTreeSet<(String, i64)> {
    db.query(
        "SELECT device_id::text, (extract(epoch FROM time) * 1000000)::bigint FROM sensor_readings",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Compares two key sets, reporting only the differences.
fn assert_same(stored: &BTreeSet<(String, i64)>, expected: &BTreeSet<(String, i64)>) {
    let missing: Vec<_> = expected.difference(stored).take(5).collect();
    let extra: Vec<_> = stored.difference(expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing (first 5): {missing:?}; unexpected (first 5): {extra:?}"
    );
}

fn expected_keys(envs: &[ReadingEnvelope]) -> BTreeSet<(String, i64)> {
    envs.iter()
        .map(|e| {
            let t = iot_proto::from_timestamp(e.time.as_ref().unwrap()).unwrap();
            (e.device_uuid.clone(), t.timestamp_micros())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_in_one_group_split_the_partitions() {
    let db_url = kit::migrated_database().await;
    let kafka = kit::kafka_config();
    kafka.ensure_topics().await.unwrap();
    let group = format!("writers-{}", kit::unique());
    let shutdown = CancellationToken::new();
    let mut admins = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let w = ingest_writer::start(
            ingest_writer::Config {
                group_id: group.clone(),
                batch_max_rows: 200,
                batch_max_wait_ms: 20,
                ..kit::platform::writer_config(&db_url, &kafka)
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        admins.push(w.admin_addr);
        tasks.push(tokio::spawn(w.wait()));
    }
    // Let the group settle so both members hold partitions.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let envs = readings(60, 6000);
    produce(
        &kafka.producer("test").unwrap(),
        &kafka.readings_topic,
        &envs,
    )
    .await;

    let db = kit::connect(&db_url).await;
    kit::eventually("all rows", Duration::from_secs(60), || async {
        (count(&db).await == 6000).then_some(())
    })
    .await;
    let mut per_replica = Vec::new();
    for a in &admins {
        let n = kit::metric(*a, "iot_writer_rows_written_total")
            .await
            .unwrap();
        per_replica.push(n);
    }
    assert_eq!(per_replica.iter().sum::<u64>(), 6000, "{per_replica:?}");
    assert!(
        per_replica.iter().all(|n| *n > 0),
        "both replicas wrote: {per_replica:?}"
    );
    assert_same(&stored_keys(&db).await, &expected_keys(&envs));
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// A writer process on the shipped local config (`deploy/local`), static
/// group membership and session timeout included; only what must be the
/// test's own (database, topics, group, ports, batch size) is overridden.
/// A real process, not the in-process writer: the test kills it with
/// SIGKILL. Killed when dropped (also when the test panics).
fn spawn_writer(db_url: &str, kafka: &iot_kafka::KafkaConfig, group: &str) -> kit::Process {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/local/ingest-writer.toml");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingest-writer"));
    command
        .arg("--config")
        .arg(&config)
        .env("INGEST_WRITER__DATABASE_URL", db_url)
        .env("INGEST_WRITER__KAFKA__BROKERS", &kafka.brokers)
        .env(
            "INGEST_WRITER__KAFKA__READINGS_TOPIC",
            &kafka.readings_topic,
        )
        .env(
            "INGEST_WRITER__KAFKA__DEAD_LETTER_TOPIC",
            &kafka.dead_letter_topic,
        )
        .env("INGEST_WRITER__GROUP_ID", group)
        .env("INGEST_WRITER__BATCH_MAX_ROWS", "500")
        .env("INGEST_WRITER__BATCH_MAX_WAIT_MS", "20")
        .env("INGEST_WRITER__GRPC_ADDR", "127.0.0.1:0")
        .env("INGEST_WRITER__ADMIN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    kit::Process::spawn(&mut command).expect("start ingest-writer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing_and_duplicates_nothing() {
    let db_url = kit::migrated_database().await;
    let kafka = kit::kafka_config();
    kafka.ensure_topics().await.unwrap();
    let group = format!("crash-{}", kit::unique());
    let envs = readings(50, 20_000);
    // Duplicates sent on purpose: every tenth reading twice.
    let mut sent = envs.clone();
    sent.extend(envs.iter().step_by(10).cloned());
    produce(
        &kafka.producer("test").unwrap(),
        &kafka.readings_topic,
        &sent,
    )
    .await;

    let db = kit::connect(&db_url).await;
    let mut first = spawn_writer(&db_url, &kafka, &group);
    kit::eventually("writer mid-stream", Duration::from_secs(60), || async {
        (count(&db).await > 2_000).then_some(())
    })
    .await;
    first.kill(); // SIGKILL
    let at_kill = count(&db).await;
    assert!(
        at_kill < 20_000,
        "the kill came too late to prove anything ({at_kill} rows)"
    );

    // Killed again soon after it starts: the third incarnation must still
    // get the partitions back.
    let mut second = spawn_writer(&db_url, &kafka, &group);
    tokio::time::sleep(Duration::from_secs(5)).await;
    second.kill();
    let mut third = spawn_writer(&db_url, &kafka, &group);
    // Generous against a slow machine, far below the minutes a restarted
    // dynamic member waits for the group to drop its crashed predecessor.
    kit::eventually("every reading stored", Duration::from_secs(60), || async {
        (count(&db).await >= 20_000).then_some(())
    })
    .await;
    // Give a late duplicate the chance to show up before checking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&db).await, 20_000);
    assert_same(&stored_keys(&db).await, &expected_keys(&envs));
    third.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_errors_are_retried_and_no_batch_is_skipped() {
    let db_url = kit::migrated_database().await;
    let admin = kit::connect(&db_url).await;
    // The writer runs as a role of its own whose INSERT right we can take away.
    let role = format!("writer_{}", kit::unique());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'writer';
             GRANT USAGE, CREATE ON SCHEMA public TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role};
             REVOKE INSERT ON sensor_readings FROM {role};"
        ))
        .await
        .unwrap();
    let (_, rest) = db_url.split_once("://").unwrap();
    let (_, host_db) = rest.split_once('@').unwrap();
    let writer_url = format!("postgres://{role}:writer@{host_db}");

    let kafka = kit::kafka_config();
    kafka.ensure_topics().await.unwrap();
    let shutdown = CancellationToken::new();
    let w = ingest_writer::start(
        ingest_writer::Config {
            batch_max_rows: 100,
            batch_max_wait_ms: 20,
            ..kit::platform::writer_config(&writer_url, &kafka)
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let admin_addr = w.admin_addr;
    let task = tokio::spawn(w.wait());
    let envs = readings(10, 1000);
    produce(
        &kafka.producer("test").unwrap(),
        &kafka.readings_topic,
        &envs,
    )
    .await;

    // Writes fail while the right is missing: the writer retries, nothing lands.
    kit::eventually("failed writes counted", Duration::from_secs(30), || async {
        let errors = kit::metric(admin_addr, "iot_writer_db_errors_total")
            .await
            .unwrap_or(0);
        (errors >= 2).then_some(())
    })
    .await;
    assert_eq!(count(&admin).await, 0);

    // The database recovers: every reading arrives, none twice.
    admin
        .batch_execute(&format!("GRANT INSERT ON sensor_readings TO {role}"))
        .await
        .unwrap();
    kit::eventually(
        "all rows after recovery",
        Duration::from_secs(60),
        || async { (count(&admin).await >= 1000).then_some(()) },
    )
    .await;
    assert_same(&stored_keys(&admin).await, &expected_keys(&envs));
    shutdown.cancel();
    task.await.unwrap().unwrap();
    // Roles are server-wide: leave none behind.
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}
