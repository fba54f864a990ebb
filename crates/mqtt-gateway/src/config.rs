//! mqtt-gateway configuration (env prefix `MQTT_GATEWAY__`).

use std::net::SocketAddr;

use iot_kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub kafka: KafkaConfig,
    /// gRPC address of device-registry, e.g. `http://127.0.0.1:50051`.
    pub registry_url: String,
    /// How long a device lookup is cached. Changes evict at once through
    /// the registry's change stream, so this is a bound for a stream that
    /// fails unnoticed; it is longer than devices' reporting intervals, or
    /// every reading of a device reporting less often is a registry call.
    pub device_cache_ttl_secs: u64,
    /// How long an "unknown device" answer is cached.
    pub unknown_device_ttl_secs: u64,
    /// Devices the cache holds; past it the least likely to be asked for
    /// again go (TinyLFU). At least the devices this replica hears from
    /// within `device_cache_ttl_secs`, or lookups reach the registry.
    pub device_cache_max_entries: u64,
    pub limits: LimitsConfig,
    /// Messages processed at once (each waits for its Kafka delivery report).
    pub max_in_flight: usize,
    /// On shutdown, how long in-flight messages may take to reach Kafka and
    /// be acknowledged; the rest stay unacknowledged and are redelivered.
    pub drain_timeout_secs: u64,
    /// HTTP door: `POST /v1/devices/{device}/readings`.
    pub http_addr: SocketAddr,
    /// How the HTTP door keeps device authentications (`[http_auth]`).
    pub http_auth: crate::HttpAuthConfig,
    /// gRPC door (`iot.v1.Ingest`) and `grpc.health.v1`.
    pub grpc_addr: SocketAddr,
    /// mTLS on its gRPC server and on its calls to other services
    /// (`iot_proto::GrpcTls`); off when unset.
    pub grpc_tls: iot_proto::GrpcTls,
    pub admin_addr: SocketAddr,
    /// Device heartbeats and first-seen sensors go to the registry in one
    /// call this often.
    pub activity_flush_secs: u64,
    /// The longest the recorded heartbeat of a device heard without pause
    /// may trail it (always well inside the device's silence limit, so its
    /// last heartbeat is recorded before it would count as offline).
    /// 0 records every device heard at every flush.
    pub heartbeat_hold_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Client id; with a persistent session the broker keeps unacknowledged
    /// messages for it across reconnects. Give each replica its own.
    pub client_id: String,
    /// Single readings arrive on `{topic_prefix}/{device_id}/{sensor_name}`.
    pub topic_prefix: String,
    /// Batches of one device arrive on `{batch_topic_prefix}/{device_id}`.
    pub batch_topic_prefix: String,
    /// SenML packs of one device arrive on `{senml_topic_prefix}/{device_id}`.
    pub senml_topic_prefix: String,
    /// Devices announce their presence on
    /// `{presence_topic_prefix}/{device_id}/presence`: a birth message and
    /// their MQTT last will (docs/mqtt-devices.md).
    pub presence_topic_prefix: String,
    /// How replicas split the devices between them; see [`Split`].
    pub split: Split,
    /// With `split = "hashed"`: this replica's index (0-based; a
    /// StatefulSet pod's ordinal) and how many replicas there are.
    pub replica: u32,
    pub replicas: u32,
    /// Shared-subscription group, with `split = "shared"`.
    pub share_group: String,
    pub keep_alive_secs: u64,
    /// How long the broker keeps the session (and its unacknowledged
    /// messages) while the gateway is away.
    pub session_expiry_secs: u32,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to the broker (`[mqtt.tls]`: `enabled`, `ca_file`, and
    /// `cert_file` with `key_file` for a broker that wants a client
    /// certificate); `port` is then the broker's TLS listener, 8883.
    pub tls: iot_mqtt::TlsConfig,
    /// Largest MQTT packet the gateway takes (its Maximum Packet Size). It
    /// must be at least the broker's own limit on what it accepts from
    /// devices (Mosquitto's `max_packet_size`): a broker never delivers a
    /// packet above the subscriber's maximum and, by the MQTT 5
    /// specification, drops it for that subscriber without a word after
    /// acknowledging it to the device. Payloads above
    /// `limits.max_payload_bytes` but within this reach the gateway and are
    /// dead-lettered as `payload_too_large`. Also the HTTP door's body limit.
    pub max_packet_bytes: usize,
    /// The broker's count of PUBLISH packets it received, compared with
    /// what reached the gateway (`src/broker_check.rs`); empty: no check.
    pub broker_received_topic: String,
    /// Messages the broker received and the gateway did not, above which
    /// the alarm goes up...
    pub unreceived_alarm: u64,
    /// ...once the difference has stayed above it this long: a backlog the
    /// gateway works through comes down before.
    pub unreceived_alarm_after_secs: u64,
}

/// How gateway replicas split the devices between them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Every replica holds a durable subscription of its own to every
    /// device topic and handles the devices whose id hashes to its
    /// `replica` of `replicas`; it acknowledges the others' messages
    /// unprocessed (their owner's session holds them). Each message reaches
    /// every replica, and no broker needs shared subscriptions to be
    /// durable: Mosquitto 2.0 loses messages meant for a persistent shared
    /// subscriber that has not reconnected after a broker restart (see
    /// docs/design/mqtt-subscriptions.md).
    Hashed,
    /// One MQTT 5 shared subscription (`$share/{share_group}/...`): the
    /// broker hands each message to one replica. Only on brokers that keep
    /// messages for offline members of a shared subscription.
    Shared,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_payload_bytes: usize,
    pub max_future_secs: i64,
    pub max_past_secs: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mqtt: MqttConfig::default(),
            kafka: KafkaConfig::default(),
            registry_url: "http://127.0.0.1:50051".into(),
            device_cache_ttl_secs: 900,
            unknown_device_ttl_secs: 5,
            device_cache_max_entries: 100_000,
            limits: LimitsConfig::default(),
            max_in_flight: 512,
            drain_timeout_secs: 20,
            http_addr: ([127, 0, 0, 1], 8088).into(),
            http_auth: crate::HttpAuthConfig::default(),
            grpc_addr: ([127, 0, 0, 1], 50054).into(),
            grpc_tls: iot_proto::GrpcTls::default(),
            admin_addr: ([127, 0, 0, 1], 9104).into(),
            activity_flush_secs: 5,
            heartbeat_hold_secs: 60,
        }
    }
}

/// The shipped brokers' `max_packet_size` (deploy/*/mosquitto.conf).
pub const DEFAULT_MAX_PACKET_BYTES: usize = 256 * 1024;

/// MQTT's own ceiling on a packet (the Remaining Length field's).
const MQTT_MAX_PACKET: usize = 268_435_455;

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 11883,
            client_id: "mqtt-gateway-0".into(),
            topic_prefix: "sensors".into(),
            batch_topic_prefix: "batches".into(),
            senml_topic_prefix: "senml".into(),
            presence_topic_prefix: "devices".into(),
            split: Split::Hashed,
            replica: 0,
            replicas: 1,
            share_group: "iot-gateway".into(),
            keep_alive_secs: 30,
            session_expiry_secs: 86_400,
            username: None,
            password: None,
            tls: iot_mqtt::TlsConfig::default(),
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            broker_received_topic: "$SYS/broker/publish/messages/received".into(),
            unreceived_alarm: 1000,
            unreceived_alarm_after_secs: 120,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = iot_domain::Limits::default();
        Self {
            max_payload_bytes: d.max_payload_bytes,
            max_future_secs: d.max_future.num_seconds(),
            max_past_secs: d.max_past.num_seconds(),
        }
    }
}

impl LimitsConfig {
    pub fn limits(&self) -> iot_domain::Limits {
        iot_domain::Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_future: chrono::Duration::seconds(self.max_future_secs),
            max_past: chrono::Duration::seconds(self.max_past_secs),
        }
    }
}

impl iot_runtime::Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut p = self.kafka.problems("kafka");
        p.extend(self.http_auth.problems("http_auth"));
        p.extend(self.grpc_tls.problems());
        if let Some(pw) = &self.mqtt.password {
            p.extend(iot_runtime::config::placeholder_problem(
                "mqtt.password",
                pw,
            ));
        }
        p.extend(self.mqtt.tls.problems("mqtt.tls"));
        if self.mqtt.host.is_empty() {
            p.push("mqtt.host is empty".into());
        }
        if self.activity_flush_secs == 0 {
            p.push("activity_flush_secs must be positive".into());
        }
        if self.device_cache_max_entries == 0 {
            p.push("device_cache_max_entries must be positive".into());
        }
        if self.mqtt.port == 0 {
            p.push("mqtt.port must not be 0".into());
        }
        if self.mqtt.client_id.is_empty() {
            p.push("mqtt.client_id is empty".into());
        }
        let prefixes = [
            ("mqtt.topic_prefix", &self.mqtt.topic_prefix),
            ("mqtt.batch_topic_prefix", &self.mqtt.batch_topic_prefix),
            ("mqtt.senml_topic_prefix", &self.mqtt.senml_topic_prefix),
            (
                "mqtt.presence_topic_prefix",
                &self.mqtt.presence_topic_prefix,
            ),
        ];
        for (name, prefix) in prefixes {
            if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.ends_with('/') {
                p.push(format!(
                    "{name} must be non-empty, free of wildcards and not end in '/'"
                ));
            }
        }
        for (i, (a, pa)) in prefixes.iter().enumerate() {
            for (b, pb) in &prefixes[i + 1..] {
                let nested = |x: &str, y: &str| x == y || y.starts_with(&format!("{x}/"));
                if nested(pa, pb) || nested(pb, pa) {
                    p.push(format!(
                        "{a} and {b} overlap; each form needs a topic tree of its own"
                    ));
                }
            }
        }
        if self.mqtt.replicas == 0 || self.mqtt.replica >= self.mqtt.replicas {
            p.push(format!(
                "mqtt.replica {} must be below mqtt.replicas {} (and replicas at least 1)",
                self.mqtt.replica, self.mqtt.replicas
            ));
        }
        if self.mqtt.share_group.is_empty() || self.mqtt.share_group.contains(['/', '+', '#']) {
            p.push("mqtt.share_group must be one topic level without wildcards".into());
        }
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"))
        {
            p.push(format!(
                "registry_url {:?} must start with http:// or https://",
                self.registry_url
            ));
        }
        if self.mqtt.max_packet_bytes <= self.limits.max_payload_bytes
            || self.mqtt.max_packet_bytes > MQTT_MAX_PACKET
        {
            p.push(format!(
                "mqtt.max_packet_bytes must exceed limits.max_payload_bytes (room for the topic) \
                 and be at most {MQTT_MAX_PACKET}"
            ));
        }
        if self.limits.max_payload_bytes == 0 {
            p.push("limits.max_payload_bytes must be positive".into());
        }
        if self.limits.max_future_secs < 0 || self.limits.max_past_secs <= 0 {
            p.push("limits.max_future_secs must be >= 0 and limits.max_past_secs > 0".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight > usize::from(u16::MAX) {
            p.push("max_in_flight must be in 1..=65535 (it is the MQTT Receive Maximum)".into());
        }
        p
    }
}

impl iot_runtime::ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "MQTT_GATEWAY";
}

iot_runtime::service_config_tests!(super::Config, "mqtt-gateway.toml", 9104);
