//! The services reach Kafka over TLS: librdkafka (built with OpenSSL)
//! takes `security.protocol` and `ssl.ca.location` from `kafka.properties`,
//! and a reading goes from MQTT through Kafka over TLS into PostgreSQL.
//!
//! Tansu 0.6 cannot serve TLS itself (its `--cert` and `--key` flags
//! conflict), so the test's own broker sits behind a TLS terminator that
//! advertises itself as the broker: every byte between the services and the
//! broker crosses a TLS connection that librdkafka verified against the
//! CA, and the broker behind it is the real one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use iot_testkit as kit;
use iot_testkit::Platform;
use tokio::net::{TcpListener, TcpStream};

/// Accepts TLS on `front` with the certificate of `tls` and relays each
/// connection to the broker on `back`.
async fn terminate_tls(tls: iot_proto::GrpcTls, front: TcpListener, back: u16) {
    let read = |p: &Option<PathBuf>| std::fs::read(p.as_ref().unwrap()).unwrap();
    let certs = rustls_pemfile::certs(&mut &*read(&tls.cert))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &*read(&tls.key))
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((socket, _)) = front.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut secure) = acceptor.accept(socket).await else {
                return;
            };
            let Ok(mut broker) = TcpStream::connect(("127.0.0.1", back)).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut secure, &mut broker).await;
        });
    }
}

/// A Tansu of the test's own behind [`terminate_tls`] (with the testkit
/// CA's `kafka-broker` certificate), advertising the terminator's port,
/// which is returned beside the broker process (killed when dropped).
async fn broker_behind_tls() -> (kit::Process, u16) {
    let (back, front) = (kit::free_port(), kit::free_port());
    let broker = kit::Process::spawn(
        Command::new(kit::tansu_bin())
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &format!("tcp://127.0.0.1:{back}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{front}"),
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("start tansu (set IOT_TEST_TANSU_BIN or run `cargo xtask stack`)");
    kit::eventually("broker listening", Duration::from_secs(20), || async {
        TcpStream::connect(("127.0.0.1", back))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let server = kit::pki::grpc_tls("kafka-broker");
    let listener = TcpListener::bind(("127.0.0.1", front)).await.unwrap();
    tokio::spawn(terminate_tls(server, listener, back));
    (broker, front)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readings_cross_kafka_over_tls() {
    let (_broker, front) = broker_behind_tls().await;
    let ca = kit::pki::grpc_tls("kafka-broker").ca.unwrap();

    // TLS to the broker exactly as an operator configures it.
    let mut kafka = kit::kafka_config();
    kafka.brokers = format!("127.0.0.1:{front}");
    kafka
        .properties
        .insert("security.protocol".into(), "ssl".into());
    kafka
        .properties
        .insert("ssl.ca.location".into(), ca.display().to_string());
    let p = Platform::start_with(kafka).await;
    let dev = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let time = chrono::Utc::now() - chrono::Duration::seconds(5);
    kit::publish_all(&[(
        format!("{}/{}/temperature", p.prefix, dev.device_id),
        format!(r#"{{"value": 21.5, "timestamp": "{}"}}"#, time.to_rfc3339()).into_bytes(),
    )])
    .await;
    let db = kit::connect(&p.db).await;
    let uuid = uuid::Uuid::parse_str(&dev.id).unwrap();
    kit::eventually(
        "the reading stored through Kafka over TLS",
        Duration::from_secs(60),
        || async { (kit::device_rows(&db, uuid).await == 1).then_some(()) },
    )
    .await;
    p.stop().await;
}

/// A service trusting another CA is not ready, and its readiness names
/// the Kafka link as down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_trusting_another_ca_reports_the_kafka_link_down() {
    let (_broker, front) = broker_behind_tls().await;
    let stranger = kit::pki::Pki::new("another CA").identity("nobody");
    let mut kafka = kit::kafka_config();
    kafka.brokers = format!("127.0.0.1:{front}");
    kafka
        .properties
        .insert("security.protocol".into(), "ssl".into());
    kafka.properties.insert(
        "ssl.ca.location".into(),
        stranger.ca.unwrap().display().to_string(),
    );
    let db = kit::migrated_database().await;
    let stop = iot_runtime::CancellationToken::new();
    let writer = ingest_writer::start(kit::platform::writer_config(&db, &kafka), stop.clone())
        .await
        .unwrap();
    // The handshake's own reason (certificate verify failed) is in
    // librdkafka's log; readiness names the link that is down.
    let why = kit::eventually(
        "the writer reports its Kafka link down",
        Duration::from_secs(30),
        || async {
            let ready = kit::http_get(writer.admin_addr, "/readyz").await;
            ready.contains("kafka: ").then_some(ready)
        },
    )
    .await;
    assert!(why.contains("BrokerTransportFailure"), "{why}");
    stop.cancel();
}
