//! What the GraphQL tests share: two tenants, an HTTP client, WebSocket
//! subscriptions, the documented example queries, and the platform they run on.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use futures::{SinkExt, StreamExt};
use iot_testkit as kit;
use iot_testkit::Platform;
use serde_json::{Value, json};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The audience of the tests' tokens.
pub const AUDIENCE: &str = "iot-platform-test";

/// Two owners with an API key each, and a JWT secret.
pub struct Tenants {
    pub a: uuid::Uuid,
    pub b: uuid::Uuid,
    pub secret: String,
}

impl Tenants {
    pub fn new() -> Self {
        Self {
            a: uuid::Uuid::new_v4(),
            b: uuid::Uuid::new_v4(),
            // At least 32 bytes: the gateway refuses shorter ones.
            secret: format!("secret-{}-{}", kit::unique(), uuid::Uuid::new_v4().simple()),
        }
    }

    pub fn configure(&self, c: &mut graphql_gateway::Config) {
        c.auth.api_keys = vec![
            graphql_gateway::ApiKey {
                name: "a".into(),
                sha256: sha256("key-a"),
                owner: self.a.to_string(),
            },
            graphql_gateway::ApiKey {
                name: "b".into(),
                sha256: sha256("key-b"),
                owner: self.b.to_string(),
            },
        ];
        c.auth.jwt = Some(graphql_gateway::JwtConfig {
            hs256_secret: Some(self.secret.clone()),
            audience: Some(AUDIENCE.into()),
            ..Default::default()
        });
    }

    /// A bearer token for owner A, subject `sub`.
    pub fn jwt_a(&self, sub: &str) -> String {
        self.jwt_a_expiring(sub, chrono::Duration::seconds(600))
    }

    /// A bearer token for owner A, subject `sub`, that expires in `valid`.
    pub fn jwt_a_expiring(&self, sub: &str, valid: chrono::Duration) -> String {
        let claims = json!({
            "sub": sub,
            "owner": self.a.to_string(),
            "exp": (Utc::now() + valid).timestamp(),
            "aud": AUDIENCE,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .unwrap()
    }
}

/// A GraphQL-over-HTTP client with one set of credentials.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    /// A header line, e.g. "X-Api-Key: key-a".
    pub auth: String,
}

impl Client {
    pub fn key(addr: SocketAddr, key: &str) -> Self {
        Self {
            addr,
            auth: format!("X-Api-Key: {key}"),
        }
    }

    pub fn bearer(addr: SocketAddr, token: &str) -> Self {
        Self {
            addr,
            auth: format!("Authorization: Bearer {token}"),
        }
    }

    /// POSTs a raw body; the status and the JSON answer.
    pub async fn post(&self, body: &[u8]) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let head = format!(
            "POST /graphql HTTP/1.0\r\nHost: test\r\nContent-Type: application/json\r\n{}\r\nContent-Length: {}\r\n\r\n",
            self.auth,
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // A refused body may be answered before it is all sent.
        let _ = s.write_all(body).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// Runs a query; the whole response (`data` and `errors`).
    pub async fn run(&self, query: &str, variables: Value) -> Value {
        let body = json!({"query": query, "variables": variables}).to_string();
        let (status, v) = self.post(body.as_bytes()).await;
        assert!(status == 200, "status {status}: {v}");
        v
    }

    /// Runs a query that must succeed; its `data`.
    pub async fn data(&self, query: &str, variables: Value) -> Value {
        let v = self.run(query, variables).await;
        assert!(v.get("errors").is_none(), "{v}");
        v["data"].clone()
    }

    /// Runs a query that must fail; the first error's `extensions.code`.
    pub async fn error_code(&self, query: &str, variables: Value) -> String {
        let v = self.run(query, variables).await;
        v["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error with a code: {v}"))
            .to_owned()
    }
}

/// A WebSocket to the gateway speaking `protocol`, with `connection_init`
/// (carrying `init`) sent.
pub async fn ws_init(
    addr: SocketAddr,
    protocol: &str,
    init: Value,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let init = json!({"type": "connection_init", "payload": init});
    ws.send(Message::Text(init.to_string().into()))
        .await
        .unwrap();
    ws
}

/// A live subscription over a real WebSocket client.
pub struct Subscription {
    rx: tokio::sync::mpsc::Receiver<Value>,
}

impl Subscription {
    /// Connects with `protocol` ("graphql-transport-ws" or "graphql-ws"),
    /// authenticates with `init` and subscribes to `query`.
    pub async fn start(
        addr: SocketAddr,
        protocol: &str,
        init: Value,
        query: &str,
        vars: Value,
    ) -> Self {
        Self::connect(addr, protocol, init, query, vars)
            .await
            .unwrap_or_else(|v| panic!("not acknowledged: {v}"))
    }

    /// As `start`; the server's refusal when it does not acknowledge.
    pub async fn connect(
        addr: SocketAddr,
        protocol: &str,
        init: Value,
        query: &str,
        vars: Value,
    ) -> Result<Self, Value> {
        let mut ws = ws_init(addr, protocol, init).await;
        let send = |v: Value| Message::Text(v.to_string().into());
        loop {
            let m = ws.next().await.unwrap().unwrap();
            let v: Value = match m {
                Message::Text(t) => serde_json::from_str(&t).unwrap(),
                _ => continue,
            };
            match v["type"].as_str() {
                Some("connection_ack") => break,
                Some("ka") => continue,
                _ => return Err(v),
            }
        }
        let kind = if protocol == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        ws.send(send(
            json!({"id": "1", "type": kind, "payload": {"query": query, "variables": vars}}),
        ))
        .await
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(100);
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                let kind = v["type"].as_str().unwrap_or_default();
                if kind == "ping" {
                    let _ = ws.send(send(json!({"type": "pong"}))).await;
                } else if ["next", "data", "error"].contains(&kind)
                    && tx.send(v["payload"].clone()).await.is_err()
                {
                    return;
                } else if kind == "complete" {
                    // The server ended the stream.
                    let _ = tx.send(json!({"complete": true})).await;
                    return;
                }
            }
        });
        Ok(Self { rx })
    }

    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a subscription message")
            .expect("subscription open")
    }

    /// Nothing arrives for `d`.
    pub async fn quiet_for(&mut self, d: Duration) {
        if let Ok(Some(v)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected subscription message: {v}");
        }
    }
}

pub const CREATE: &str = "mutation($deviceId: String!, $t: JSON) {
  createDevice(deviceId: $deviceId, name: \"Boiler\", deviceType: \"temperature_sensor\", alertThreshold: $t) {
    id device_id status credentials { username password }
  }
}";

pub const RECORD: &str = "mutation($deviceId: ID!, $v: Float!, $ts: String) {
  recordReading(deviceId: $deviceId, sensorName: \"temperature\", value: $v, timestamp: $ts) {
    sensor_name value time
  }
}";

pub const GET_READINGS: &str = "query($deviceId: ID!, $sensorName: String!, $startTime: String!, $endTime: String!) {
  sensorReadings(deviceId: $deviceId, sensorName: $sensorName, startTime: $startTime, endTime: $endTime) {
    time sensor_name value
  }
}";

// The documented example queries, verbatim.
pub const DEVICE_DASHBOARD: &str = "query DeviceDashboard($deviceId: ID!) {
  device(id: $deviceId) {
    id
    name
    status
    current_readings {
      sensor_name
      value
      unit
      time
    }
    alerts {
      id
      alert_type
      severity
      value
    }
  }
}";

pub const TEMPERATURE_TREND: &str = "query TemperatureTrend(
  $deviceId: ID!
  $startTime: String!
  $endTime: String!
) {
  sensorMetrics(
    deviceId: $deviceId
    sensorName: \"temperature\"
    startTime: $startTime
    endTime: $endTime
    granularity: \"1h\"
  ) {
    time
    avg_value
    min_value
    max_value
  }
}";

pub const CLUSTER_HEALTH: &str = "query ClusterHealth {
  deviceStatusSummary {
    total_devices
    active_devices
    offline_devices
    error_devices
    average_response_time_ms
    critical_alerts_count
    readings_per_second
  }
}";

pub const ALERTS_SUB: &str =
    "subscription { alerts { id severity alert_type state device { device_id } } }";

/// Sum of the gateway's backend calls so far.
pub async fn upstream_calls(admin: SocketAddr) -> u64 {
    upstream_calls_of(admin, "").await
}

/// The gateway's backend calls so far of the methods whose names contain
/// `method`.
pub async fn upstream_calls_of(admin: SocketAddr, method: &str) -> u64 {
    kit::http_get(admin, "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("iot_grpc_client_requests_total{"))
        .filter(|l| l.contains(&format!("method=\"{method}")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A platform with an alert-engine and a graphql-gateway that knows
/// tenants A (`key-a`, or a JWT) and B (`key-b`).
pub struct Stack {
    pub p: Platform,
    pub engine: alert_engine::Running,
    pub g: graphql_gateway::Running,
    pub t: Tenants,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_tuned(|_| {}).await
    }

    /// A stack whose gateway config is adjusted by `tune` after the
    /// tenants are set.
    pub async fn start_tuned(tune: impl FnOnce(&mut graphql_gateway::Config)) -> Self {
        let p = Platform::start().await;
        let engine = p.start_alert_engine(|_| {}).await;
        let t = Tenants::new();
        let g = p
            .start_graphql(&engine, |c| {
                t.configure(c);
                tune(c);
            })
            .await;
        Self { p, engine, g, t }
    }

    /// Owner A, by API key.
    pub fn a(&self) -> Client {
        Client::key(self.g.http_addr, "key-a")
    }

    /// Owner B, by API key.
    pub fn b(&self) -> Client {
        Client::key(self.g.http_addr, "key-b")
    }

    /// Owner A through a JWT of subject `sub`.
    pub fn a_jwt(&self, sub: &str) -> Client {
        Client::bearer(self.g.http_addr, &self.t.jwt_a(sub))
    }

    /// A subscription to `query` over graphql-transport-ws, as the holder
    /// of API key `key`.
    pub async fn subscribe(&self, key: &str, query: &str, vars: Value) -> Subscription {
        Subscription::start(
            self.g.http_addr,
            "graphql-transport-ws",
            json!({"apiKey": key}),
            query,
            vars,
        )
        .await
    }

    pub async fn stop(self) {
        self.p.stop().await;
    }
}

/// Creates a device as `c` with alert thresholds `t` (JSON null: none);
/// `createDevice`'s answer.
pub async fn create_device(c: &Client, device_id: &str, t: Value) -> Value {
    c.data(CREATE, json!({"deviceId": device_id, "t": t})).await["createDevice"].clone()
}

/// A device of `c`'s whose temperature may be at most 30 (the documented
/// threshold); its UUID.
pub async fn device_with_max_30(c: &Client, device_id: &str) -> String {
    let created = create_device(c, device_id, json!({"temperature": {"max": 30}})).await;
    created["id"].as_str().unwrap().to_owned()
}

/// Records 35 for device `id` (at most 30) and waits until `c` sees the
/// one alert it raises; the active alerts then.
pub async fn raise_alert(c: &Client, id: &str) -> Vec<Value> {
    c.data(RECORD, json!({"deviceId": id, "v": 35})).await;
    kit::eventually("the alert is raised", WAIT, || {
        let c = c.clone();
        async move {
            let d = c
                .data(
                    "{ activeAlerts { id severity alert_type value device { id } } }",
                    json!({}),
                )
                .await;
            let r = d["activeAlerts"].as_array().unwrap().clone();
            (!r.is_empty()).then_some(r)
        }
    })
    .await
}
