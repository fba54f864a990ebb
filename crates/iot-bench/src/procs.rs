//! Service processes started from the release binaries in `IOT_BENCH_BIN_DIR`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Service {
    child: Child,
    grpc_port: u16,
    /// The GraphQL port (graphql-gateway only).
    pub http_port: u16,
    /// Metrics and health.
    pub admin_port: u16,
}

pub fn bin(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("IOT_BENCH_BIN_DIR").unwrap_or_else(|_| "target/release".into()))
        .join(name)
}

/// A platform account on the broker (`admin`, `gateway`, `publisher`);
/// passwords from `IOT_BENCH_MQTT_<NAME>_PASSWORD`, by default the local
/// stack's (`cargo xtask`, `ACCOUNTS`).
pub fn account(name: &str) -> (String, String) {
    let password = std::env::var(format!("IOT_BENCH_MQTT_{}_PASSWORD", name.to_uppercase()))
        .unwrap_or_else(|_| format!("local-{name}-password"));
    (format!("platform.{name}"), password)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A command that runs `bin` and dies with this program: through
/// util-linux's `setpriv --pdeathsig KILL` where there is one, so that a
/// benchmark stopped by a signal (which skips `Drop`) leaves no services
/// running. The signal follows the spawning thread, which lives as long as
/// the runtime's workers.
pub fn command(bin: &std::path::Path) -> Command {
    const SETPRIV: &str = "/usr/bin/setpriv";
    if std::path::Path::new(SETPRIV).exists() {
        let mut c = Command::new(SETPRIV);
        c.args(["--pdeathsig", "KILL", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Service {
    fn spawn(name: &str, prefix: &str, vars: &[(&str, String)]) -> Self {
        let (grpc_port, admin_port) = (free_port(), free_port());
        let mut cmd = command(&bin(name));
        cmd.env(
            format!("{prefix}__GRPC_ADDR"),
            format!("127.0.0.1:{grpc_port}"),
        )
        .env(
            format!("{prefix}__ADMIN_ADDR"),
            format!("127.0.0.1:{admin_port}"),
        )
        // Warnings stay in the run's output (the services log to stdout): a
        // reconnect or a failed call under load explains a figure.
        .env("RUST_LOG", "warn")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
        for (k, v) in vars {
            cmd.env(format!("{prefix}__{k}"), v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            child,
            grpc_port,
            http_port: 0,
            admin_port,
        }
    }

    pub fn registry(db: &str, mqtt_port: u16) -> Self {
        Self::registry_with(db, mqtt_port, Vec::new())
    }

    /// A registry with further settings `vars` (TLS, say).
    pub fn registry_with(db: &str, mqtt_port: u16, mut vars: Vec<(&str, String)>) -> Self {
        vars.extend([
            ("DATABASE_URL", db.into()),
            ("BROKER__PORT", mqtt_port.to_string()),
            ("BROKER__USERNAME", account("admin").0),
            ("BROKER__PASSWORD", account("admin").1),
            (
                "BROKER__CLIENT_ID",
                format!("bench-registry-{}", std::process::id()),
            ),
        ]);
        Self::spawn("device-registry", "DEVICE_REGISTRY", &vars)
    }

    pub fn writer(db: &str, kafka: &iot_kafka::KafkaConfig, group: &str) -> Self {
        Self::writer_with(db, kafka, group, Vec::new())
    }

    /// A writer with further settings `vars` (TLS, say).
    pub fn writer_with(
        db: &str,
        kafka: &iot_kafka::KafkaConfig,
        group: &str,
        mut vars: Vec<(&str, String)>,
    ) -> Self {
        vars.extend([
            ("DATABASE_URL", db.into()),
            ("GROUP_ID", group.into()),
            ("KAFKA__BROKERS", kafka.brokers.clone()),
            ("KAFKA__READINGS_TOPIC", kafka.readings_topic.clone()),
            ("KAFKA__DEAD_LETTER_TOPIC", kafka.dead_letter_topic.clone()),
        ]);
        vars.extend(kafka_properties(kafka));
        Self::spawn("ingest-writer", "INGEST_WRITER", &vars)
    }

    pub fn gateway(
        kafka: &iot_kafka::KafkaConfig,
        root: &str,
        mqtt_port: u16,
        registry: &str,
    ) -> Self {
        Self::gateway_with(kafka, root, mqtt_port, registry, Vec::new())
    }

    /// A gateway with further settings `vars` (TLS, say).
    /// A gateway with further settings `vars`, which win over the ones
    /// made here (a replica's own client id and index, say).
    pub fn gateway_with(
        kafka: &iot_kafka::KafkaConfig,
        root: &str,
        mqtt_port: u16,
        registry: &str,
        vars: Vec<(&str, String)>,
    ) -> Self {
        let mut all: Vec<(&str, String)> = kafka_properties(kafka).into_iter().collect();
        all.extend([
            ("HTTP_ADDR", "127.0.0.1:0".into()),
            ("REGISTRY_URL", registry.into()),
            ("MQTT__USERNAME", account("gateway").0),
            ("MQTT__PASSWORD", account("gateway").1),
            ("KAFKA__BROKERS", kafka.brokers.clone()),
            ("KAFKA__READINGS_TOPIC", kafka.readings_topic.clone()),
            ("KAFKA__DEAD_LETTER_TOPIC", kafka.dead_letter_topic.clone()),
            ("MQTT__PORT", mqtt_port.to_string()),
            ("MQTT__CLIENT_ID", format!("{root}-gw")),
            ("MQTT__TOPIC_PREFIX", format!("{root}/sensors")),
            ("MQTT__BATCH_TOPIC_PREFIX", format!("{root}/batches")),
            ("MQTT__SENML_TOPIC_PREFIX", format!("{root}/senml")),
            ("MQTT__SHARE_GROUP", root.into()),
        ]);
        all.extend(vars);
        Self::spawn("mqtt-gateway", "MQTT_GATEWAY", &all)
    }

    /// An alert-engine on `kafka`'s readings, in a consumer group of that
    /// topic's: replicas on one topic share it, and an engine started on a
    /// new topic never waits for a group whose member is gone with the old.
    pub fn alerts(db: &str, kafka: &iot_kafka::KafkaConfig, registry: &str) -> Self {
        Self::spawn(
            "alert-engine",
            "ALERT_ENGINE",
            &[
                ("DATABASE_URL", db.into()),
                ("GROUP_ID", format!("bench-alerts-{}", kafka.readings_topic)),
                ("REGISTRY_URL", registry.into()),
                ("KAFKA__BROKERS", kafka.brokers.clone()),
                ("KAFKA__READINGS_TOPIC", kafka.readings_topic.clone()),
                ("KAFKA__DEAD_LETTER_TOPIC", kafka.dead_letter_topic.clone()),
                ("ALERTS_TOPIC", crate::alerts_topic(kafka)),
            ],
        )
    }

    /// A graphql-gateway on these backends accepting one API key (its
    /// SHA-256) for `owner`, with the per-caller limits out of the way: the
    /// benchmark's one key stands for many callers (its 1000 subscribers
    /// are 1000 people, each under the per-caller limits).
    pub fn graphql(backends: [&str; 3], key_sha256: &str, owner: &str) -> Self {
        Self::graphql_with(
            backends,
            &format!(r#"[{{name="bench", sha256="{key_sha256}", owner="{owner}"}}]"#),
            &[
                ("LIMITS__RATE_PER_SEC", "1000000".into()),
                ("LIMITS__RATE_BURST", "1000000".into()),
                ("LIMITS__MAX_SUBSCRIPTIONS", "1000000".into()),
            ],
        )
    }

    /// A graphql-gateway on these backends with `api_keys` (a TOML array)
    /// and further settings `vars`; every other limit as shipped.
    pub fn graphql_with(
        [registry, telemetry, alerts]: [&str; 3],
        api_keys: &str,
        vars: &[(&str, String)],
    ) -> Self {
        let http_port = free_port();
        let mut all = vec![
            ("REGISTRY_URL", registry.into()),
            ("TELEMETRY_URL", telemetry.into()),
            ("ALERTS_URL", alerts.into()),
            ("HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("AUTH__API_KEYS", api_keys.to_owned()),
        ];
        all.extend(vars.iter().cloned());
        let mut s = Self::spawn("graphql-gateway", "GRAPHQL_GATEWAY", &all);
        s.http_port = http_port;
        s
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// CPU time (user + system) the process has used, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.child.id()).unwrap_or(0.0)
    }

    /// Stops the service as an orchestrator would (SIGTERM, which lets a
    /// consumer leave its group) and waits up to 30 s for it to exit.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kafka.properties` (librdkafka's, TLS say) as a service takes them
/// from its environment: one inline table, `KAFKA__PROPERTIES`.
fn kafka_properties(kafka: &iot_kafka::KafkaConfig) -> Option<(&'static str, String)> {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    (!kafka.properties.is_empty()).then(|| {
        let pairs: Vec<String> = kafka
            .properties
            .iter()
            .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
            .collect();
        ("KAFKA__PROPERTIES", format!("{{{}}}", pairs.join(", ")))
    })
}

/// CPU time (user + system) process `pid` has used, in seconds.
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    // Fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100/s on
    // Linux); the command name (field 2) may hold spaces, so count from
    // its closing parenthesis.
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU time this program has used, in seconds.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds_of(std::process::id()).unwrap_or(0.0)
}

/// CPU seconds used by every running process whose command name is
/// `comm` (e.g. all of PostgreSQL's backends), keyed by pid, so that a
/// phase's share is the difference of two snapshots.
pub fn cpu_by_command(comm: &str) -> std::collections::HashMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .filter_map(|pid| Some((pid, cpu_seconds_of(pid)?)))
        .collect()
}

/// CPU seconds `comm` processes used between two snapshots (processes
/// that started in between count from zero; ones that ended are lost).
pub fn cpu_between(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, t)| t - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// Waits until the service on admin port `port` answers `/readyz` with 200.
pub async fn wait_ready(port: u16, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    while admin_get(port, "/readyz").await.map(|(c, _)| c) != Some(200) {
        assert!(
            start.elapsed() < limit,
            "service on admin port {port} not ready after {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `GET path` on a service's admin port: the status code and body, or
/// `None` while the port does not answer yet (services start in parallel).
pub async fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf))
}

/// The Prometheus text a service serves on its admin port.
pub async fn admin_metrics(port: u16) -> String {
    admin_get(port, "/metrics")
        .await
        .unwrap_or_else(|| panic!("no answer on admin port {port}"))
        .1
}

/// The sum of the samples of series `name` in Prometheus `text` that carry
/// every label of `labels` (e.g. `method="GetDevice",code="OK"`; empty:
/// any), in whatever order the series lists its labels.
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    iot_telemetry::samples(text, &format!("{name}{{{labels}}}"))
        .iter()
        .sum()
}

/// Readings mqtt-gateway accepted so far (`iot_gateway_readings_accepted_total`).
pub async fn gateway_accepted(gateway: &Service) -> u64 {
    let text = admin_metrics(gateway.admin_port).await;
    metric_sum(&text, "iot_gateway_readings_accepted_total", "") as u64
}

/// The upgrade request of a GraphQL WebSocket (graphql-transport-ws) to
/// the gateway on `port`.
pub fn graphql_ws_request(port: u16) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = format!("ws://127.0.0.1:{port}/graphql")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    req
}

#[cfg(test)]
mod tests {
    #[test]
    fn kafka_properties_are_one_inline_table() {
        let mut kafka = iot_kafka::KafkaConfig::default();
        assert_eq!(super::kafka_properties(&kafka), None);
        kafka
            .properties
            .insert("security.protocol".into(), "ssl".into());
        kafka
            .properties
            .insert("ssl.ca.location".into(), "/tmp/x/ca.pem".into());
        assert_eq!(
            super::kafka_properties(&kafka),
            Some((
                "KAFKA__PROPERTIES",
                r#"{"security.protocol"="ssl", "ssl.ca.location"="/tmp/x/ca.pem"}"#.to_owned()
            ))
        );
    }

    #[test]
    fn metric_sums_match_whole_names_and_label_prefixes() {
        let text = "# HELP x\nx_sum 1.5\nx_sum_other 100\nx_count{method=\"A\",code=\"0\"} 2\nx_count{method=\"A\",code=\"1\"} 3\nx_count{method=\"B\"} 7\n";
        assert_eq!(super::metric_sum(text, "x_sum", ""), 1.5);
        assert_eq!(super::metric_sum(text, "x_count", ""), 12.0);
        assert_eq!(super::metric_sum(text, "x_count", "method=\"A\""), 5.0);
        assert_eq!(
            super::metric_sum(text, "x_count", "code=\"1\",method=\"A\""),
            3.0
        );
        assert_eq!(super::metric_sum(text, "x_missing", ""), 0.0);
    }
}
