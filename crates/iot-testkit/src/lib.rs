//! Test support for integration and end-to-end tests. Everything here talks
//! to the real components; every test makes its own names (database, topics,
//! MQTT prefix, device ids) so tests run in parallel without seeing each other.
//!
//! The addresses come from `IOT_TEST_DATABASE_URL`, `IOT_TEST_MQTT` (and
//! `IOT_TEST_MQTT_TLS` with `IOT_TEST_MQTT_CA`, the broker's TLS listener)
//! and `IOT_TEST_KAFKA` (set by `cargo xtask test`), defaulting to the
//! local stack. `IOT_TEST_MQTT_LISTENER=tls` runs [`Platform`] and
//! [`publish_all`] over TLS ([`MqttListener`]).
//!
//! [`Platform`] (in [`platform`]) is the platform of in-process services
//! that the end-to-end tests of every crate start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod moto;
pub mod pki;
pub mod platform;

pub use platform::{ANY, Platform};

use std::time::Duration;

use iot_kafka::KafkaConfig;
use iot_kafka::rdkafka::ClientConfig;
use iot_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use iot_kafka::rdkafka::message::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Maintenance database URL of the test server.
pub fn admin_database_url() -> String {
    std::env::var("IOT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// Whether the suite runs in its TLS-required mode (`IOT_TEST_TLS=1`, as
/// `cargo xtask test` runs the end-to-end tests a second time): test
/// databases are reached as `IOT_TEST_DATABASE_URL` says (there with
/// `sslmode=verify-full`, as a role the server takes over TLS only), Kafka over TLS at
/// `IOT_TEST_KAFKA_TLS`, MQTT on the broker's TLS listener
/// (`IOT_TEST_MQTT_LISTENER=tls`); gRPC is mTLS in every mode.
pub fn tls_required() -> bool {
    std::env::var("IOT_TEST_TLS").is_ok_and(|v| v == "1")
}

/// The CA of the test PostgreSQL and Kafka-API broker (`IOT_TEST_PG_CA`).
pub fn test_ca_file() -> String {
    std::env::var("IOT_TEST_PG_CA").unwrap_or_else(|_| "/var/lib/iot-platform/tls/ca.pem".into())
}

/// The test broker's address: its TLS one in the TLS-required mode.
pub fn kafka_brokers() -> String {
    if tls_required() {
        return std::env::var("IOT_TEST_KAFKA_TLS").expect("IOT_TEST_KAFKA_TLS with IOT_TEST_TLS");
    }
    std::env::var("IOT_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// librdkafka properties of every test client: TLS, verified against the
/// test CA, in the TLS-required mode.
pub fn kafka_properties() -> std::collections::BTreeMap<String, String> {
    let mut p = std::collections::BTreeMap::new();
    if tls_required() {
        p.insert("security.protocol".to_owned(), "ssl".to_owned());
        p.insert("ssl.ca.location".to_owned(), test_ca_file());
    }
    p
}

pub fn mqtt_addr() -> (String, u16) {
    let v = std::env::var("IOT_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:11883".into());
    let (h, p) = v.rsplit_once(':').expect("IOT_TEST_MQTT is host:port");
    (h.to_owned(), p.parse().expect("IOT_TEST_MQTT port"))
}

/// The test broker's TLS listener (`IOT_TEST_MQTT_TLS`, host:port); its
/// certificate names `localhost` and 127.0.0.1.
pub fn mqtt_tls_addr() -> (String, u16) {
    let v = std::env::var("IOT_TEST_MQTT_TLS").unwrap_or_else(|_| "127.0.0.1:18883".into());
    let (h, p) = v.rsplit_once(':').expect("IOT_TEST_MQTT_TLS is host:port");
    (h.to_owned(), p.parse().expect("IOT_TEST_MQTT_TLS port"))
}

/// The CA that signed the test broker's certificate (`IOT_TEST_MQTT_CA`;
/// the local stack's, which `cargo xtask` makes).
pub fn mqtt_ca_file() -> String {
    std::env::var("IOT_TEST_MQTT_CA").unwrap_or_else(|_| "/var/lib/iot-platform/tls/ca.pem".into())
}

/// Which of the test broker's listeners a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttListener {
    /// Plain TCP (`IOT_TEST_MQTT`).
    Plain,
    /// TLS (`IOT_TEST_MQTT_TLS`), trusting [`mqtt_ca_file`].
    Tls,
}

impl MqttListener {
    /// Both, for a test body that runs over each.
    pub const ALL: [MqttListener; 2] = [MqttListener::Plain, MqttListener::Tls];

    /// The one [`Platform`] and [`publish_all`] use unless told:
    /// `IOT_TEST_MQTT_LISTENER` (`plain`, the default, or `tls`), so that
    /// the end-to-end suite runs over either.
    pub fn from_env() -> Self {
        match std::env::var("IOT_TEST_MQTT_LISTENER").as_deref() {
            Ok("tls") => Self::Tls,
            Ok("plain") | Err(_) => Self::Plain,
            Ok(other) => panic!("IOT_TEST_MQTT_LISTENER={other:?}: use plain or tls"),
        }
    }

    /// Its host and port.
    pub fn addr(self) -> (String, u16) {
        match self {
            Self::Plain => mqtt_addr(),
            Self::Tls => mqtt_tls_addr(),
        }
    }

    /// A client's TLS settings for it.
    pub fn tls(self) -> iot_mqtt::TlsConfig {
        match self {
            Self::Plain => iot_mqtt::TlsConfig::default(),
            Self::Tls => iot_mqtt::TlsConfig {
                enabled: true,
                ca_file: Some(mqtt_ca_file()),
                ..Default::default()
            },
        }
    }

    /// rumqttc's transport for it.
    pub fn transport(self) -> rumqttc::Transport {
        self.tls().transport().expect("the test broker's CA file")
    }
}

/// A platform account on the test broker: `admin` (dynamic-security
/// control), `gateway` (subscribes) or `publisher` (publishes for many
/// devices). Passwords come from `IOT_TEST_MQTT_<NAME>_PASSWORD`, by default
/// those `cargo xtask` provisions (`crates/xtask/src/stack.rs`, `ACCOUNTS`).
pub fn mqtt_account(name: &str) -> (String, String) {
    let password = std::env::var(format!("IOT_TEST_MQTT_{}_PASSWORD", name.to_uppercase()))
        .unwrap_or_else(|_| format!("local-{name}-password"));
    (format!("platform.{name}"), password)
}

/// device-registry's broker settings for the test broker, with devices'
/// topics under `root` (each test has its own).
pub fn broker_config(root: &str) -> device_registry::BrokerConfig {
    broker_config_on(root, MqttListener::from_env())
}

/// [`broker_config`] on the given listener.
pub fn broker_config_on(root: &str, listener: MqttListener) -> device_registry::BrokerConfig {
    let (host, port) = listener.addr();
    let (username, password) = mqtt_account("admin");
    device_registry::BrokerConfig {
        host,
        port,
        tls: listener.tls(),
        username,
        password,
        client_id: format!("registry-{}", unique()),
        device_topics: vec![
            format!("{root}/sensors/{{device_id}}/+"),
            format!("{root}/batches/{{device_id}}"),
            format!("{root}/senml/{{device_id}}"),
            format!("{root}/devices/{{device_id}}/presence"),
        ],
        // The whole suite shares one broker on two cores, and every test's
        // devices add accounts its dynamic-security plugin rewrites to disk
        // on each change: under that load an answer can take over the
        // production default of 5 s.
        timeout_ms: 20_000,
        commands_root: format!("{root}/commands"),
        state_root: format!("{root}/state"),
        ..Default::default()
    }
}

/// A short unique suffix for names.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A database of one test, dropped when the test is done with it: a passing
/// run of the suite leaves no database behind. A failing test (one that
/// panics) keeps its database for a look, and says which it is.
pub struct TestDb {
    url: String,
    name: String,
}

impl TestDb {
    /// Its connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl std::ops::Deref for TestDb {
    type Target = String;
    fn deref(&self) -> &String {
        &self.url
    }
}

impl std::fmt::Display for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping the failed test's database {}", self.name);
            return;
        }
        // On a thread of its own: Drop may run inside the test's runtime,
        // which cannot block on another future.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = iot_db::connect(&admin_database_url())
                    .await
                    .map_err(std::io::Error::other)?;
                // FORCE: services of the test may still hold connections.
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(std::io::Error::other)
            })
            .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("cannot drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Creates an empty database of its own for one test.
pub async fn empty_database() -> TestDb {
    let admin = admin_database_url();
    let name = format!("iot_test_{}", unique());
    // The admin URL's parameters (its sslmode, say) hold for the test's
    // database too.
    let (path, query) = admin.split_once('?').unwrap_or((&admin, ""));
    let base = path.rsplit_once('/').expect("database URL has a path").0;
    let url = if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    };
    assert!(
        iot_db::ensure_database(&url)
            .await
            .expect("create test database")
    );
    TestDb { url, name }
}

/// A migrated database of its own for one test.
pub async fn migrated_database() -> TestDb {
    let db = empty_database().await;
    iot_db::migrate(&db, iot_db::BackendChoice::Auto)
        .await
        .expect("migrate test database");
    db
}

/// The storage backends the test server can run: plain PostgreSQL always,
/// TimescaleDB where the extension is installed and preloaded. A storage test runs its one
/// body on each.
pub async fn backends() -> Vec<iot_db::Backend> {
    let db = connect(&admin_database_url()).await;
    let timescale = iot_db::migrate::timescaledb_usable(&db).await.unwrap();
    let mut out = vec![iot_db::Backend::Postgres];
    if timescale {
        out.push(iot_db::Backend::TimescaleDb);
    }
    out
}

/// A database of its own migrated with the given backend.
pub async fn migrated_database_with(backend: iot_db::Backend) -> TestDb {
    let db = empty_database().await;
    let report = iot_db::migrate(&db, iot_db::BackendChoice::Force(backend))
        .await
        .expect("migrate test database");
    assert_eq!(report.backend, backend);
    db
}

/// Kafka settings with topics of the test's own.
pub fn kafka_config() -> KafkaConfig {
    let id = unique();
    KafkaConfig {
        brokers: kafka_brokers(),
        properties: kafka_properties(),
        readings_topic: format!("test.readings.{id}"),
        dead_letter_topic: format!("test.dead-letter.{id}"),
        partitions: 3,
        ..KafkaConfig::default()
    }
}

/// Reads `n` records from `topic` on the test broker (from the beginning),
/// or fewer on timeout.
pub async fn read_topic(
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    read_topic_from(&kafka_brokers(), topic, n, timeout).await
}

/// Like [`read_topic`], on the given brokers.
pub async fn read_topic_from(
    brokers: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut config = ClientConfig::new();
    for (k, v) in kafka_properties() {
        config.set(k, v);
    }
    let consumer: StreamConsumer = config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", unique()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Ok(Err(e)) => eprintln!("test consumer: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// MQTT 3.1.1 options for a client of the test broker (a device's own
/// session, say) on the listener of [`MqttListener::from_env`], so that the
/// TLS-required run, whose broker has no plain listener, covers it too.
pub fn mqtt_options(client_id: impl Into<String>) -> MqttOptions {
    let listener = MqttListener::from_env();
    let (host, port) = listener.addr();
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_transport(listener.transport());
    opts
}

/// Sends dynamic-security commands to the test broker as the platform's
/// admin account, on a session of their own, and returns the broker's
/// answers (one per command, each with its `error` if it failed).
pub async fn dynsec(commands: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    const CONTROL: &str = "$CONTROL/dynamic-security/v1";
    let response = format!("{CONTROL}/response");
    let mut opts = mqtt_options(format!("test-dynsec-{}", unique()));
    let (user, password) = mqtt_account("admin");
    opts.set_credentials(user, password);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 8);
    client
        .subscribe(&response, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let body = serde_json::json!({ "commands": commands }).to_string();
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.poll().await.unwrap() {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    client
                        .publish(CONTROL, rumqttc::QoS::AtLeastOnce, false, body.clone())
                        .await
                        .unwrap();
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) if p.topic == response => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    return v["responses"].as_array().cloned().unwrap_or_default();
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the dynamic-security plugin answers within 30 s");
    let _ = client.disconnect().await;
    answer
}

/// [`mqtt_options`] for an MQTT 5 client.
pub fn mqtt5_options(client_id: impl Into<String>) -> rumqttc::v5::MqttOptions {
    let listener = MqttListener::from_env();
    let (host, port) = listener.addr();
    let mut opts = rumqttc::v5::MqttOptions::new(client_id, host, port);
    opts.set_transport(listener.transport());
    opts
}

/// Publishes QoS 1 messages and waits for every PUBACK, on the listener
/// of [`MqttListener::from_env`].
pub async fn publish_all(messages: &[(String, Vec<u8>)]) {
    publish_all_on(MqttListener::from_env(), messages).await;
}

/// [`publish_all`] on the given listener.
pub async fn publish_all_on(listener: MqttListener, messages: &[(String, Vec<u8>)]) {
    let (host, port) = listener.addr();
    let mut opts = MqttOptions::new(format!("test-pub-{}", unique()), host, port);
    let (user, password) = mqtt_account("publisher");
    opts.set_transport(listener.transport());
    opts.set_credentials(user, password)
        .set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let total = messages.len();
    // The event loop runs beside the publisher so a long list never fills
    // the request queue.
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("mqtt: {e}"),
            }
        }
        eventloop
    });
    for (topic, payload) in messages {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    let mut eventloop = tokio::time::timeout(Duration::from_secs(60), acks)
        .await
        .expect("PUBACKs within 60s")
        .expect("publisher event loop");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Tansu binary, for a test that runs a Kafka-API broker of its own
/// (`IOT_TEST_TANSU_BIN`, or where `cargo xtask stack` builds it).
pub fn tansu_bin() -> std::path::PathBuf {
    std::env::var_os("IOT_TEST_TANSU_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "/root".into());
            home.join(".cache/iot-platform/tansu/bin/tansu")
        })
}

/// A port free on loopback now (for a listener a test starts later, or an
/// address where nothing listens).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process of a test, killed when dropped (also when the test
/// panics).
pub struct Process(std::process::Child);

impl Process {
    /// Spawns `command`.
    pub fn spawn(command: &mut std::process::Command) -> std::io::Result<Self> {
        command.spawn().map(Self)
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain client to the test database.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    // TLS as the URL's sslmode says, as the services connect.
    iot_db::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to test database: {e}"))
}

/// POSTs `body` and returns the status code and the response body.
pub async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    http_post_with(addr, path, content_type, &[], body).await
}

/// `http_post` with extra request headers.
pub async fn http_post_with(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut request = http_client()
        .post(format!("http://{addr}{path}"))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body.to_vec());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("send http request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("read http answer"))
}

/// An HTTP client for one request to a test server: no proxy, and no
/// connection kept open afterwards (each test has its own runtime, and a
/// service under test must be free to stop).
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client")
}

/// Decodes every dead letter on `topic` (waiting for at least `n`).
pub async fn dead_letters(
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<iot_proto::v1::DeadLetter> {
    use iot_proto::Message as _;
    read_topic(topic, n, timeout)
        .await
        .iter()
        .map(|(_, b)| iot_proto::v1::DeadLetter::decode(b.as_slice()).expect("dead letter decodes"))
        .collect()
}

/// The value of one Prometheus series on a service's admin endpoint, e.g.
/// `metric(addr, "iot_writer_rows_written_total")` or, naming some of its
/// labels, `metric(addr, "iot_gateway_readings_rejected_total{reason=\"x\"}")`;
/// labels not named (every series has `service`) may be anything. `None`
/// when absent.
pub async fn metric(admin: std::net::SocketAddr, series: &str) -> Option<u64> {
    let body = http_get(admin, "/metrics").await;
    iot_telemetry::samples(&body, series)
        .first()
        .map(|v| *v as u64)
}

/// Rows stored for one device.
pub async fn device_rows(db: &tokio_postgres::Client, device: uuid::Uuid) -> i64 {
    db.query_one(
        "SELECT count(*) FROM sensor_readings WHERE device_id = $1",
        &[&device],
    )
    .await
    .expect("count rows")
    .get(0)
}

/// GETs an admin endpoint path (e.g. `/metrics`) and returns the body,
/// whatever the status.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    http_client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("connect admin")
        .text()
        .await
        .expect("read admin answer")
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};

    #[tokio::test]
    async fn http_helpers_give_the_status_and_the_body() {
        let header = |h: &HeaderMap, name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let app = axum::Router::new()
            .route("/readyz", get(|| async { "ready" }))
            .route(
                "/down",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }),
            )
            .route(
                "/echo",
                post(move |h: HeaderMap, body: String| async move {
                    let answer = format!(
                        "{} {} {body}",
                        header(&h, "content-type"),
                        header(&h, "x-extra")
                    );
                    (StatusCode::ACCEPTED, answer)
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        assert_eq!(super::http_get(addr, "/readyz").await, "ready");
        assert_eq!(super::http_get(addr, "/down").await, "not ready");
        assert_eq!(
            super::http_post(addr, "/echo", "application/json", b"{}").await,
            (202, "application/json - {}".to_owned())
        );
        assert_eq!(
            super::http_post_with(addr, "/echo", "text/plain", &[("X-Extra", "yes")], b"hi").await,
            (202, "text/plain yes hi".to_owned())
        );
        let (status, _) = super::http_post(addr, "/nowhere", "text/plain", b"").await;
        assert_eq!(status, 404);
    }
}
