//! MQTT over TLS on the real broker (the local stack's Mosquitto, its TLS
//! listener serving a certificate of the local CA): the same end-to-end
//! path over either listener, device-registry's admin session issuing
//! accounts over TLS, and clients that trust another CA refused with an
//! error naming the MQTT link.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use iot_mqtt::{Link, TlsConfig};
use iot_proto::Message as _;
use iot_proto::v1::{self, CreateDeviceRequest};
use iot_testkit as kit;
use iot_testkit::{MqttListener, Platform};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// A device's own MQTT 5 session on `listener`: publishes one reading and
/// returns the broker's PUBACK reason.
async fn publish_as_device(
    listener: MqttListener,
    user: &str,
    password: &str,
    topic: &str,
    payload: String,
) -> PubAckReason {
    let (host, port) = listener.addr();
    let mut opts = MqttOptions::new(format!("dev-{}", kit::unique()), host, port);
    opts.set_transport(listener.transport());
    opts.set_credentials(user, password)
        .set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => return ack.reason,
                Ok(_) => {}
                Err(e) => panic!("{}", Link::new("device", 0).error(&e)),
            }
        }
    })
    .await
    .expect("PUBACK within 15 s");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    reason
}

/// The whole path on `listener`: the registry creates a device (its
/// account made over the admin session on that listener), the device
/// publishes with its own credentials on it, the gateway (subscribed on
/// it) takes the reading to Kafka and the writer to PostgreSQL.
async fn a_device_reading_reaches_storage_over(listener: MqttListener) {
    let p = Platform::start_on(listener).await;
    assert_eq!(
        p.gateway_config.mqtt.tls.enabled,
        listener == MqttListener::Tls
    );
    let device_id = format!("dev-{}", kit::unique());
    let device = p
        .registry_client(iot_proto::Scope::Admin)
        .await
        .create_device(CreateDeviceRequest {
            device_id: device_id.clone(),
            name: "TLS device".into(),
            device_type: "boiler".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let creds = device.credentials.clone().expect("credentials on create");
    let time = chrono::DateTime::from_timestamp_millis(
        (chrono::Utc::now() - chrono::Duration::seconds(5)).timestamp_millis(),
    )
    .unwrap();
    let reason = publish_as_device(
        listener,
        &creds.username,
        &creds.password,
        &format!("{}/{device_id}/temperature", p.prefix),
        format!(
            r#"{{"value": 21.25, "timestamp": "{}"}}"#,
            time.to_rfc3339()
        ),
    )
    .await;
    assert_eq!(reason, PubAckReason::Success);

    let db = kit::connect(&p.db).await;
    let uuid = uuid::Uuid::parse_str(&device.id).unwrap();
    let row = kit::eventually("the reading stored", Duration::from_secs(30), || async {
        db.query_opt(
            "SELECT time, sensor_name, value FROM sensor_readings WHERE device_id = $1",
            &[&uuid],
        )
        .await
        .unwrap()
    })
    .await;
    assert_eq!(row.get::<_, chrono::DateTime<chrono::Utc>>(0), time);
    assert_eq!(row.get::<_, String>(1), "temperature");
    assert_eq!(
        row.get::<_, rust_decimal::Decimal>(2),
        rust_decimal::Decimal::new(2125, 2)
    );
    let records = kit::read_topic(&p.kafka.readings_topic, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0.as_deref(), Some(device.id.as_bytes()));
    let env = v1::ReadingEnvelope::decode(records[0].1.as_slice()).unwrap();
    assert_eq!(env.device_id, device_id);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_reading_reaches_storage_over_the_plain_listener() {
    a_device_reading_reaches_storage_over(MqttListener::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_reading_reaches_storage_over_tls() {
    a_device_reading_reaches_storage_over(MqttListener::Tls).await;
}

/// A CA of the test's own, which never signed the broker's certificate.
struct OtherCa(PathBuf);

impl OtherCa {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("other-ca-{}", kit::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "1"])
            .args(["-subj", "/CN=another CA"])
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(made.status.success(), "{made:?}");
        Self(dir)
    }

    fn tls(&self) -> TlsConfig {
        TlsConfig {
            enabled: true,
            ca_file: Some(self.0.join("ca.pem").to_string_lossy().into_owned()),
            ..Default::default()
        }
    }
}

impl Drop for OtherCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a client trusting only `tls` hears from the TLS listener.
async fn first_error(tls: &TlsConfig) -> String {
    let (host, port) = kit::mqtt_tls_addr();
    let link = Link::new(&host, port);
    let mut opts = MqttOptions::new(format!("probe-{}", kit::unique()), host, port);
    opts.set_transport(tls.transport().unwrap());
    let (user, password) = kit::mqtt_account("publisher");
    opts.set_credentials(user, password);
    let (_client, mut events) = AsyncClient::new(opts, 16);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return "connected".to_owned(),
                Ok(_) => {}
                Err(e) => return link.error(&e).to_string(),
            }
        }
    })
    .await
    .expect("an answer within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_trusting_another_ca_are_refused_naming_the_link() {
    let (host, port) = kit::mqtt_tls_addr();
    let refusal =
        format!("MQTT broker {host}:{port}: TLS: invalid peer certificate: UnknownIssuer");
    let other = OtherCa::new();

    // The client the services share, trusting the right CA and then
    // another.
    assert_eq!(first_error(&MqttListener::Tls.tls()).await, "connected");
    assert_eq!(first_error(&other.tls()).await, refusal);

    // device-registry: its admin session cannot come up, and a create
    // says why instead of timing out in silence.
    let db = kit::migrated_database().await;
    let root = format!("t{}", kit::unique());
    let mut config = kit::platform::registry_config_on(&db, &root, MqttListener::Tls);
    config.broker.tls = other.tls();
    let shutdown = iot_runtime::CancellationToken::new();
    let registry = device_registry::start(config, shutdown.clone())
        .await
        .unwrap();
    let mut client = iot_proto::registry_client(
        format!("http://{}", registry.grpc_addr),
        iot_proto::Scope::Admin,
        &iot_testkit::pki::operator(),
    )
    .await
    .unwrap();
    let refused = client
        .create_device(CreateDeviceRequest {
            device_id: format!("d-{}", kit::unique()),
            name: "never".into(),
            device_type: "boiler".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains(&refusal),
        "{}",
        refused.message()
    );
    shutdown.cancel();
    registry.wait().await.unwrap();

    // iotctl simulate: the run ends with the same words.
    let platform_registry = kit::platform::Registry::start().await;
    let (user, password) = kit::mqtt_account("publisher");
    let root = &platform_registry.root;
    let mut args = iotctl::simulate::Args::from_flags([
        "--registry-url",
        &platform_registry.url(),
        "--mqtt-host",
        &host,
        "--mqtt-port",
        &port.to_string(),
        "--mqtt-username",
        &user,
        "--mqtt-password",
        &password,
        "--mqtt-ca-file",
        other.tls().ca_file.as_deref().unwrap(),
        "--topic-prefix",
        &format!("{root}/sensors"),
        "--devices",
        "1",
        "--device-prefix",
        &format!("sim-{}", kit::unique()),
        "--count",
        "1",
        "--connections",
        "1",
        "--quiet",
    ])
    .unwrap();
    assert!(args.mqtt_tls.config().enabled);
    // Its registry calls go over the platform's gRPC mTLS.
    let grpc = kit::pki::operator();
    args.grpc_tls = iotctl::grpc_tls::GrpcTlsArgs {
        grpc_cert: grpc.cert,
        grpc_key: grpc.key,
        grpc_ca: grpc.ca,
    };
    let failed = tokio::time::timeout(Duration::from_secs(30), iotctl::simulate::simulate(args))
        .await
        .expect("simulate ends")
        .unwrap_err();
    assert_eq!(failed.to_string(), refusal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_whose_ca_file_is_unusable_stops_naming_the_link() {
    let (host, port) = kit::mqtt_tls_addr();
    let config = mqtt_gateway::Config {
        mqtt: mqtt_gateway::MqttConfig {
            host: host.clone(),
            port,
            client_id: format!("gw-{}", kit::unique()),
            tls: TlsConfig {
                enabled: true,
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            },
            ..Default::default()
        },
        kafka: kit::kafka_config(),
        // Never called: the gateway stops before its first message.
        registry_url: format!("http://127.0.0.1:{}", kit::free_port()),
        http_addr: kit::ANY,
        grpc_addr: kit::ANY,
        admin_addr: kit::ANY,
        ..Default::default()
    };
    let gateway = mqtt_gateway::start(config, iot_runtime::CancellationToken::new())
        .await
        .unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), gateway.wait())
        .await
        .expect("the gateway stops")
        .unwrap_err()
        .to_string();
    assert!(
        stopped.starts_with(&format!(
            "MQTT broker {host}:{port}: ca_file \"/nonexistent/ca.pem\": "
        )),
        "{stopped}"
    );
}
