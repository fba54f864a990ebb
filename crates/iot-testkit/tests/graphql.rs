//! The public GraphQL API on the real stack: the spec's three tests and
//! three queries, subscriptions over real GraphQL-over-WebSocket clients
//! (both protocols), tenant isolation at every entry point, limits, a
//! backend down, and bounded gRPC calls for a page of devices.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures::{SinkExt, StreamExt};
use iot_testkit as kit;
use iot_testkit::Platform;
use serde_json::{Value, json};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(30);

fn sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two owners with an API key each, and a JWT secret.
struct Tenants {
    a: uuid::Uuid,
    b: uuid::Uuid,
    secret: String,
}

impl Tenants {
    fn new() -> Self {
        Self {
            a: uuid::Uuid::new_v4(),
            b: uuid::Uuid::new_v4(),
            secret: format!("secret-{}", kit::unique()),
        }
    }

    fn configure(&self, c: &mut graphql_gateway::Config) {
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
            ..Default::default()
        });
    }

    /// A bearer token for owner A, subject `sub`.
    fn jwt_a(&self, sub: &str) -> String {
        let claims = json!({
            "sub": sub,
            "owner": self.a.to_string(),
            "exp": Utc::now().timestamp() + 600,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .unwrap()
    }
}

/// ingest-writer's Telemetry service on `db` as a writer that predates
/// StreamMetrics serves it: that method answers UNIMPLEMENTED.
async fn older_writer(db: &str) -> SocketAddr {
    use iot_proto::v1::telemetry_server::TelemetryServer;
    let pool = iot_db::pool(db, 2).unwrap();
    let store = ingest_writer::Store::new(pool);
    let (_, health) = tonic_health::server::health_reporter();
    let router = tonic::service::Routes::new(health)
        .add_service(TelemetryServer::new(ingest_writer::TelemetryService::new(
            store,
        )))
        .into_axum_router()
        .route(
            "/iot.v1.Telemetry/StreamMetrics",
            axum::routing::post(|| async {
                tonic::Status::unimplemented("unknown method").into_http::<axum::body::Body>()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(router.into())
            .serve_with_incoming(iot_runtime::grpc_incoming(listener)),
    );
    addr
}

/// A GraphQL-over-HTTP client with one set of credentials.
#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    /// A header line, e.g. "X-Api-Key: key-a".
    auth: String,
}

impl Client {
    fn key(addr: SocketAddr, key: &str) -> Self {
        Self {
            addr,
            auth: format!("X-Api-Key: {key}"),
        }
    }

    fn bearer(addr: SocketAddr, token: &str) -> Self {
        Self {
            addr,
            auth: format!("Authorization: Bearer {token}"),
        }
    }

    /// POSTs a raw body; the status and the JSON answer.
    async fn post(&self, body: &[u8]) -> (u16, Value) {
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
    async fn run(&self, query: &str, variables: Value) -> Value {
        let body = json!({"query": query, "variables": variables}).to_string();
        let (status, v) = self.post(body.as_bytes()).await;
        assert!(status == 200, "status {status}: {v}");
        v
    }

    /// Runs a query that must succeed; its `data`.
    async fn data(&self, query: &str, variables: Value) -> Value {
        let v = self.run(query, variables).await;
        assert!(v.get("errors").is_none(), "{v}");
        v["data"].clone()
    }

    /// Runs a query that must fail; the first error's `extensions.code`.
    async fn error_code(&self, query: &str, variables: Value) -> String {
        let v = self.run(query, variables).await;
        v["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error with a code: {v}"))
            .to_owned()
    }
}

/// A WebSocket to the gateway speaking `protocol`, with `connection_init`
/// (carrying `init`) sent.
async fn ws_init(
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
struct Subscription {
    rx: tokio::sync::mpsc::Receiver<Value>,
}

impl Subscription {
    /// Connects with `protocol` ("graphql-transport-ws" or "graphql-ws"),
    /// authenticates with `init` and subscribes to `query`.
    async fn start(
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
    async fn connect(
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

    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a subscription message")
            .expect("subscription open")
    }

    /// Nothing arrives for `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(Some(v)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected subscription message: {v}");
        }
    }
}

const CREATE: &str = "mutation($deviceId: String!, $t: JSON) {
  createDevice(deviceId: $deviceId, name: \"Boiler\", deviceType: \"temperature_sensor\", alertThreshold: $t) {
    id device_id status credentials { username password }
  }
}";

const RECORD: &str = "mutation($deviceId: ID!, $v: Float!, $ts: String) {
  recordReading(deviceId: $deviceId, sensorName: \"temperature\", value: $v, timestamp: $ts) {
    sensor_name value time
  }
}";

const GET_READINGS: &str = "query($deviceId: ID!, $sensorName: String!, $startTime: String!, $endTime: String!) {
  sensorReadings(deviceId: $deviceId, sensorName: $sensorName, startTime: $startTime, endTime: $endTime) {
    time sensor_name value
  }
}";

// The spec's queries, verbatim.
const DEVICE_DASHBOARD: &str = "query DeviceDashboard($deviceId: ID!) {
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

const TEMPERATURE_TREND: &str = "query TemperatureTrend(
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

const CLUSTER_HEALTH: &str = "query ClusterHealth {
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

const ALERTS_SUB: &str =
    "subscription { alerts { id severity alert_type state device { device_id } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_specs_tests_and_queries_with_tenants_kept_apart() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let t = Tenants::new();
    let g = p.start_graphql(&engine, |c| t.configure(c)).await;
    let a = Client::key(g.http_addr, "key-a");
    let b = Client::key(g.http_addr, "key-b");
    let a_jwt = Client::bearer(g.http_addr, &t.jwt_a("alice"));

    // Live alert streams: A over graphql-transport-ws, B over graphql-ws.
    let mut a_alerts = Subscription::start(
        g.http_addr,
        "graphql-transport-ws",
        json!({"apiKey": "key-a"}),
        ALERTS_SUB,
        json!({}),
    )
    .await;
    // A bad token: the connection is refused, not served.
    let refused = Subscription::connect(
        g.http_addr,
        "graphql-ws",
        json!({"Authorization": "Bearer not-a-token"}),
        ALERTS_SUB,
        json!({}),
    )
    .await
    .err()
    .expect("refused");
    assert!(refused.to_string().contains("invalid token"), "{refused}");
    let mut b_alerts = Subscription::start(
        g.http_addr,
        "graphql-ws",
        json!({"apiKey": "key-b"}),
        ALERTS_SUB,
        json!({}),
    )
    .await;

    // createDevice with the spec's threshold, as owner A (a JWT caller).
    let device_id = format!("device_123_{}", kit::unique());
    let created = a_jwt
        .data(
            CREATE,
            json!({"deviceId": device_id, "t": {"temperature": {"max": 30}}}),
        )
        .await["createDevice"]
        .clone();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "active");
    assert!(
        !created["credentials"]["password"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    // Spec test 1: record a reading, then query it.
    let reading_time = Utc::now() - TimeDelta::seconds(5);
    let rec = a
        .data(
            RECORD,
            json!({"deviceId": device_id, "v": 23.5, "ts": reading_time.to_rfc3339()}),
        )
        .await;
    assert_eq!(rec["recordReading"]["value"], 23.5);
    let vars = json!({
        "deviceId": device_id,
        "sensorName": "temperature",
        "startTime": (reading_time - TimeDelta::seconds(1)).to_rfc3339(),
        "endTime": Utc::now().to_rfc3339(),
    });
    let readings = kit::eventually("the reading is queryable", WAIT, || {
        let (a, vars) = (a.clone(), vars.clone());
        async move {
            let d = a.data(GET_READINGS, vars).await;
            let r = d["sensorReadings"].as_array().unwrap().clone();
            (!r.is_empty()).then_some(r)
        }
    })
    .await;
    assert_eq!(readings.len(), 1);
    assert_eq!(readings[0]["value"], 23.5);
    // By the device's UUID (checked and fetched at once) the same.
    let mut by_uuid = vars.clone();
    by_uuid["deviceId"] = json!(id);
    assert_eq!(
        a.data(GET_READINGS, by_uuid).await["sensorReadings"],
        json!(readings)
    );

    // Spec test 2: 35 exceeds the max of 30: exactly one warning alert,
    // and A's live stream hears of it.
    a.data(RECORD, json!({"deviceId": id, "v": 35})).await;
    let alerts = kit::eventually("the alert is raised", WAIT, || {
        let a = a.clone();
        async move {
            let d = a
                .data(
                    "{ activeAlerts { id severity alert_type value device { id } } }",
                    json!({}),
                )
                .await;
            let r = d["activeAlerts"].as_array().unwrap().clone();
            (!r.is_empty()).then_some(r)
        }
    })
    .await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["severity"], "warning");
    assert_eq!(alerts[0]["value"], 35.0, "{alerts:?}");
    assert_eq!(alerts[0]["device"]["id"], id.as_str());
    let alert_id = alerts[0]["id"].as_str().unwrap().to_owned();
    let live = a_alerts.next().await;
    assert_eq!(live["data"]["alerts"]["id"], alert_id.as_str(), "{live}");
    assert_eq!(live["data"]["alerts"]["state"], "open");
    assert_eq!(
        live["data"]["alerts"]["device"]["device_id"],
        device_id.as_str()
    );

    // The spec's DeviceDashboard, verbatim. The writer and the alert-engine
    // consume the readings independently: the alert can be out before the
    // writer has stored the 35 as the latest reading.
    let dash = kit::eventually("the dashboard shows the latest reading", WAIT, || {
        let (a, id) = (a.clone(), id.clone());
        async move {
            let d = a.data(DEVICE_DASHBOARD, json!({"deviceId": id})).await["device"].clone();
            (d["current_readings"][0]["value"] == 35.0).then_some(d)
        }
    })
    .await;
    assert_eq!(dash["name"], "Boiler");
    assert_eq!(dash["current_readings"][0]["sensor_name"], "temperature");
    assert_eq!(dash["current_readings"][0]["value"], 35.0);
    assert_eq!(dash["alerts"][0]["id"], alert_id.as_str());

    // Spec test 3: aggregation, over the spec's TemperatureTrend, verbatim.
    // Five readings inside one hour (yesterday 10:01..10:05 UTC).
    let hour = (Utc::now() - TimeDelta::days(1))
        .date_naive()
        .and_hms_opt(10, 0, 0)
        .unwrap()
        .and_utc();
    let trend_device = format!("trend_{}", kit::unique());
    a.data(CREATE, json!({"deviceId": trend_device})).await;
    let readings: Vec<Value> = [20, 22, 21, 23, 24]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"sensorName": "temperature", "value": v,
                   "timestamp": (hour + TimeDelta::minutes(i as i64 + 1)).to_rfc3339()})
        })
        .collect();
    let rec = a
        .data(
            "mutation($d: ID!, $r: [ReadingInput!]!) { recordReadings(deviceId: $d, readings: $r) { accepted rejected { reason } } }",
            json!({"d": trend_device, "r": readings}),
        )
        .await;
    assert_eq!(rec["recordReadings"]["accepted"], 5, "{rec}");
    let trend_vars = json!({
        "deviceId": trend_device,
        "startTime": (hour - TimeDelta::hours(2)).to_rfc3339(),
        "endTime": (hour + TimeDelta::hours(2)).to_rfc3339(),
    });
    let metrics = kit::eventually("all five readings aggregated", WAIT, || {
        let (a, v) = (a.clone(), trend_vars.clone());
        async move {
            let d = a.data(TEMPERATURE_TREND, v).await;
            let m = d["sensorMetrics"].as_array().unwrap().clone();
            (m.len() == 1 && m[0]["avg_value"] == 22.0).then_some(m)
        }
    })
    .await;
    assert_eq!(metrics[0]["time"], hour.to_rfc3339());
    assert_eq!(metrics[0]["min_value"], 20.0);
    assert_eq!(metrics[0]["max_value"], 24.0);
    // Plain selections are rendered by a fast path; fragments take the
    // general one. Both give the same answer, aliases and __typename too.
    let general = a
        .data(
            "query($deviceId: ID!, $startTime: String!, $endTime: String!) {
               sensorMetrics(deviceId: $deviceId, sensorName: \"temperature\", startTime: $startTime, endTime: $endTime) { ...M }
             }
             fragment M on SensorMetric { when: time avg_value min_value max_value reading_count sum_value sensor_name __typename }",
            trend_vars.clone(),
        )
        .await;
    let fast = a
        .data(
            "query($deviceId: ID!, $startTime: String!, $endTime: String!) {
               sensorMetrics(deviceId: $deviceId, sensorName: \"temperature\", startTime: $startTime, endTime: $endTime) {
                 when: time avg_value min_value max_value reading_count sum_value sensor_name __typename
               }
             }",
            trend_vars.clone(),
        )
        .await;
    assert_eq!(fast, general);
    assert_eq!(fast["sensorMetrics"][0]["__typename"], "SensorMetric");
    assert_eq!(fast["sensorMetrics"][0]["sum_value"], 110.0);
    assert_eq!(fast["sensorMetrics"][0]["reading_count"], 5);
    // A writer older than the gateway, without StreamMetrics (as during a
    // rolling upgrade): the same answer, through QueryMetrics.
    let older = older_writer(&p.db).await;
    let g_older = p
        .start_graphql(&engine, |c| {
            t.configure(c);
            c.telemetry_url = format!("http://{older}");
        })
        .await;
    let through_older = Client::key(g_older.http_addr, "key-a")
        .data(TEMPERATURE_TREND, trend_vars.clone())
        .await;
    assert_eq!(
        through_older,
        a.data(TEMPERATURE_TREND, trend_vars.clone()).await
    );

    // The spec's ClusterHealth, verbatim, for owner A.
    let health = a.data(CLUSTER_HEALTH, json!({})).await["deviceStatusSummary"].clone();
    assert_eq!(health["total_devices"], 2, "{health}");
    assert_eq!(health["error_devices"], 0);
    assert_eq!(health["critical_alerts_count"], 0);
    assert!(health["average_response_time_ms"].as_f64().unwrap() > 0.0);
    assert!(health["readings_per_second"].as_f64().is_some());

    // Alert rules in the rule language, managed through GraphQL.
    let rule = a
        .data(
            "mutation { createAlertRule(rule: {name: \"low_battery\", condition: \"sensor_name == 'battery' AND value < 20\", severity: \"critical\"}) { id name owner_id enabled } }",
            json!({}),
        )
        .await["createAlertRule"]
        .clone();
    assert_eq!(rule["owner_id"], t.a.to_string());
    assert_eq!(rule["enabled"], true);
    let rule_id = rule["id"].as_str().unwrap().to_owned();
    let bad = a
        .run(
            "mutation { createAlertRule(rule: {name: \"x\", condition: \"value >\", severity: \"info\"}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(
        bad["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{bad}"
    );
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("condition: column 8"),
        "{bad}"
    );
    // The backend's google.rpc.BadRequest field violation reaches the client.
    assert_eq!(
        bad["errors"][0]["extensions"]["fields"][0]["field"], "condition",
        "{bad}"
    );
    let listed = a.data("{ alertRules { id } }", json!({})).await;
    assert_eq!(listed["alertRules"][0]["id"], rule_id.as_str());
    assert_eq!(
        b.data("{ alertRules { id } }", json!({})).await["alertRules"],
        json!([])
    );

    // A webhook for A's alerts: its secret is shown once.
    let hook = a
        .data(
            "mutation { createAlertWebhook(url: \"https://hooks.example/iot\", minSeverity: \"critical\") { id secret min_severity } }",
            json!({}),
        )
        .await["createAlertWebhook"]
        .clone();
    assert_eq!(hook["secret"].as_str().unwrap().len(), 64);
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let hooks = a
        .data("{ alertWebhooks { id secret pending } }", json!({}))
        .await;
    assert_eq!(hooks["alertWebhooks"][0]["secret"], Value::Null);
    assert_eq!(
        b.data("{ alertWebhooks { id } }", json!({})).await["alertWebhooks"],
        json!([])
    );

    // Tenant B sees, changes and hears nothing of A's.
    let b_sees = b.data("{ devices { id } activeAlerts { id } deviceStatusSummary { total_devices critical_alerts_count } }", json!({})).await;
    assert_eq!(b_sees["devices"], json!([]));
    assert_eq!(b_sees["activeAlerts"], json!([]));
    assert_eq!(b_sees["deviceStatusSummary"]["total_devices"], 0);
    assert_eq!(
        b.data(DEVICE_DASHBOARD, json!({"deviceId": id})).await["device"],
        Value::Null
    );
    assert_eq!(
        b.data(DEVICE_DASHBOARD, json!({"deviceId": device_id}))
            .await["device"],
        Value::Null
    );
    let mut readings_by_uuid = vars.clone();
    readings_by_uuid["deviceId"] = json!(id);
    let mut trend_by_uuid = trend_vars.clone();
    trend_by_uuid["deviceId"] = json!(id);
    // A's device, once found in A's scope, is not looked up again for A's
    // telemetry queries (B's attempts below still are, and fail).
    a.data(TEMPERATURE_TREND, trend_by_uuid.clone()).await;
    let checks = upstream_calls_of(g.admin_addr, "GetDevice").await;
    a.data(TEMPERATURE_TREND, trend_by_uuid.clone()).await;
    a.data(GET_READINGS, readings_by_uuid.clone()).await;
    assert_eq!(upstream_calls_of(g.admin_addr, "GetDevice").await, checks);
    for (q, v) in [
        (GET_READINGS, vars.clone()),
        (TEMPERATURE_TREND, trend_vars.clone()),
        (GET_READINGS, readings_by_uuid),
        (TEMPERATURE_TREND, trend_by_uuid.clone()),
        (RECORD, json!({"deviceId": id, "v": 1})),
        (
            "mutation($id: ID!) { acknowledgeAlert(alertId: $id) { id } }",
            json!({"id": alert_id}),
        ),
        (
            "mutation($id: ID!) { resolveAlert(alertId: $id) { id } }",
            json!({"id": alert_id}),
        ),
        (
            "mutation($id: ID!) { deleteDevice(id: $id) }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { updateDevice(id: $id, name: \"mine\") { id } }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { updateDeviceConfig(id: $id, config: {readInterval: 5}) { read_interval } }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { rotateDeviceCredentials(id: $id) { password } }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { deleteAlertRule(id: $id) }",
            json!({"id": rule_id}),
        ),
        (
            "mutation($id: ID!) { updateAlertRule(id: $id, rule: {name: \"x\", condition: \"value > 1\", severity: \"info\"}) { id } }",
            json!({"id": rule_id}),
        ),
        (
            "mutation($id: ID!) { deleteAlertWebhook(id: $id) }",
            json!({"id": hook_id}),
        ),
        (
            "mutation($id: ID!) { revokeDeviceCredentials(id: $id) }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { recordReadings(deviceId: $id, readings: [{sensorName: \"temperature\", value: 1}]) { accepted } }",
            json!({"id": id}),
        ),
        ("{ alerts(state: open) { id } }", json!({})),
    ] {
        let got = b.run(q, v).await;
        let code = got["errors"][0]["extensions"]["code"].as_str();
        let empty = got["data"]["alerts"] == json!([]);
        assert!(
            code == Some("NOT_FOUND") || empty,
            "B reached A's data with {q}: {got}"
        );
    }
    let sub = Subscription::start(
        g.http_addr,
        "graphql-transport-ws",
        json!({"apiKey": "key-b"}),
        "subscription($d: ID) { alerts(deviceId: $d) { id } }",
        json!({"d": id}),
    )
    .await;
    let mut sub = sub;
    let refused = sub.next().await;
    assert!(refused.to_string().contains("NOT_FOUND"), "{refused}");
    for q in [
        "subscription($d: ID!) { deviceStatus(deviceId: $d) { status } }",
        "subscription($d: ID!) { metrics(deviceId: $d) { avg_value } }",
    ] {
        let mut sub = Subscription::start(
            g.http_addr,
            "graphql-transport-ws",
            json!({"apiKey": "key-b"}),
            q,
            json!({"d": id}),
        )
        .await;
        let refused = sub.next().await;
        assert!(refused.to_string().contains("NOT_FOUND"), "{q}: {refused}");
    }

    // A acknowledges (the JWT's subject is recorded); A hears of it, B
    // heard nothing of A's alert. B's own alert reaches B alone.
    let acked = a_jwt
        .data(
            "mutation($id: ID!) { acknowledgeAlert(alertId: $id) { acknowledged acknowledged_by state } }",
            json!({"id": alert_id}),
        )
        .await["acknowledgeAlert"]
        .clone();
    assert_eq!(acked["acknowledged"], true);
    assert_eq!(acked["state"], "acknowledged");
    assert!(acked["acknowledged_by"].as_str().is_some());
    let live = a_alerts.next().await;
    assert_eq!(live["data"]["alerts"]["state"], "acknowledged", "{live}");
    let b_device = format!("b_{}", kit::unique());
    b.data(
        CREATE,
        json!({"deviceId": b_device, "t": {"temperature": {"max": 1}}}),
    )
    .await;
    b.data(RECORD, json!({"deviceId": b_device, "v": 99})).await;
    let live = b_alerts.next().await;
    assert_eq!(
        live["data"]["alerts"]["device"]["device_id"],
        b_device.as_str(),
        "{live}"
    );
    a_alerts.quiet_for(Duration::from_secs(1)).await;

    // deviceStatus: the device as it is now, then as it changes.
    let mut status = Subscription::start(
        g.http_addr,
        "graphql-transport-ws",
        json!({"apiKey": "key-a"}),
        "subscription($d: ID!) { deviceStatus(deviceId: $d) { status online } }",
        json!({"d": id}),
    )
    .await;
    let first = status.next().await;
    assert_eq!(first["data"]["deviceStatus"]["status"], "active", "{first}");
    a.data(
        "mutation($id: ID!) { updateDevice(id: $id, status: \"error\") { status } }",
        json!({"id": id}),
    )
    .await;
    let changed = status.next().await;
    assert_eq!(
        changed["data"]["deviceStatus"]["status"], "error",
        "{changed}"
    );
    // (Readings of a device not active are refused: back to active.)
    a.data(
        "mutation($id: ID!) { updateDevice(id: $id, status: \"active\") { status } }",
        json!({"id": id}),
    )
    .await;

    // metrics: the current minute's aggregates as readings arrive.
    let mut live_metrics = Subscription::start(
        g.http_addr,
        "graphql-transport-ws",
        json!({"apiKey": "key-a"}),
        "subscription($d: ID!) { metrics(deviceId: $d, sensorName: \"temperature\") { sensor_name reading_count max_value } }",
        json!({"d": id}),
    )
    .await;
    a.data(RECORD, json!({"deviceId": id, "v": 41})).await;
    let m = loop {
        let m = live_metrics.next().await;
        if m["data"]["metrics"]["max_value"] == 41.0 {
            break m;
        }
    };
    assert_eq!(m["data"]["metrics"]["sensor_name"], "temperature");

    // Once the device is gone, both live streams end: each checks at every
    // poll that the device is still the caller's.
    a.data(
        "mutation($id: ID!) { deleteDevice(id: $id) }",
        json!({"id": id}),
    )
    .await;
    for (name, sub) in [
        ("metrics", &mut live_metrics),
        ("deviceStatus", &mut status),
    ] {
        let end = loop {
            let v = sub.next().await;
            if v.get("complete").is_some() {
                break v;
            }
        };
        assert_eq!(end, json!({"complete": true}), "{name}");
    }
    // Nor does the gateway answer for it from what it knew.
    assert_eq!(
        a.error_code(TEMPERATURE_TREND, trend_by_uuid).await,
        "NOT_FOUND"
    );

    p.stop().await;
}

/// Sum of the gateway's backend calls so far.
async fn upstream_calls(admin: SocketAddr) -> u64 {
    upstream_calls_of(admin, "").await
}

/// The gateway's backend calls so far of the methods whose names contain
/// `method`.
async fn upstream_calls_of(admin: SocketAddr, method: &str) -> u64 {
    kit::http_get(admin, "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("iot_graphql_upstream_calls_total{"))
        .filter(|l| l.contains(&format!("method=\"{method}")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_errors_and_a_bounded_number_of_backend_calls() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let t = Tenants::new();
    let g = p
        .start_graphql(&engine, |c| {
            t.configure(c);
            c.limits.max_body_bytes = 4096;
            c.limits.introspection = false;
        })
        .await;
    let a = Client::key(g.http_addr, "key-a");

    // No credentials, an unknown key, a forged token: 401 with a code.
    for c in [
        Client {
            addr: g.http_addr,
            auth: "X-Nothing: 1".into(),
        },
        Client::key(g.http_addr, "key-zzz"),
        Client::bearer(g.http_addr, "eyJhbGciOiJIUzI1NiJ9.e30.x"),
    ] {
        let (status, v) = c.post(br#"{"query": "{ devices { id } }"}"#).await;
        assert_eq!(status, 401, "{v}");
        assert_eq!(v["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }

    // N+1: a page of 100 devices with their readings and alerts costs one
    // call each for the page, the latest readings and the open alerts.
    // Two through the registry (they get readings); 98 more straight into
    // its table, which spares the broker 98 accounts this test does not
    // need.
    let mut registry = p
        .registry_client(iot_proto::Scope::Owner(t.a.to_string()))
        .await;
    let mut uuids = Vec::new();
    for i in 0..2 {
        let d = registry
            .create_device(iot_proto::v1::CreateDeviceRequest {
                device_id: format!("n1-{i}-{}", kit::unique()),
                name: "n".into(),
                device_type: "temperature_sensor".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        uuids.push(d.id);
    }
    let db = kit::connect(&p.db).await;
    let prefix = kit::unique();
    db.execute(
        "INSERT INTO devices (device_id, name, device_type, owner_id)
         SELECT 'n1-' || $2 || '-' || i, 'n', 'temperature_sensor', $1
         FROM generate_series(2, 99) i",
        &[&t.a, &prefix],
    )
    .await
    .unwrap();
    // Readings for two of them, so some current_readings are not empty.
    for u in &uuids[..2] {
        a.data(RECORD, json!({"deviceId": u, "v": 20})).await;
    }
    kit::eventually("readings stored", WAIT, || {
        let a = a.clone();
        async move {
            let d = a
                .data(
                    "{ devices(limit: 100) { current_readings { value } } }",
                    json!({}),
                )
                .await;
            let n = d["devices"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["current_readings"] != json!([]))
                .count();
            (n == 2).then_some(())
        }
    })
    .await;
    let before = upstream_calls(g.admin_addr).await;
    let page = a
        .data(
            "{ devices(limit: 100) { id current_readings { value } alerts { id } } }",
            json!({}),
        )
        .await;
    let calls = upstream_calls(g.admin_addr).await - before;
    assert_eq!(page["devices"].as_array().unwrap().len(), 100);
    assert_eq!(calls, 3, "ListDevices, LatestReadings, ListAlerts");
    // Their sensors: one call for the whole page too.
    db.execute(
        "INSERT INTO sensors (device_id, sensor_name)
         SELECT id, s FROM devices, unnest(ARRAY['humidity', 'temperature']) s
         WHERE owner_id = $1 AND device_id LIKE 'n1-' || $2 || '-%'",
        &[&t.a, &prefix],
    )
    .await
    .unwrap();
    let before = upstream_calls(g.admin_addr).await;
    let page = a
        .data(
            "{ devices(limit: 100) { device_id sensors { sensor_name } } }",
            json!({}),
        )
        .await;
    let calls = upstream_calls(g.admin_addr).await - before;
    let inserted: Vec<&Value> = page["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["device_id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("n1-{prefix}-"))
        })
        .collect();
    assert_eq!(inserted.len(), 98);
    for d in inserted {
        assert_eq!(
            d["sensors"],
            json!([{"sensor_name": "humidity"}, {"sensor_name": "temperature"}]),
            "{d}"
        );
    }
    assert_eq!(calls, 2, "ListDevices, ListSensorsOfDevices");
    // And open alerts of 30 devices with their devices: one call for the
    // alerts, one for all their devices.
    db.execute(
        "INSERT INTO device_alerts (device_id, alert_type, severity, owner_id)
         SELECT id, 'threshold', 'warning', owner_id FROM devices
         WHERE owner_id = $1 AND device_id LIKE 'n1-' || $2 || '-%' LIMIT 30",
        &[&t.a, &prefix],
    )
    .await
    .unwrap();
    let before = upstream_calls(g.admin_addr).await;
    let alerts = a
        .data("{ activeAlerts { id device { id } } }", json!({}))
        .await;
    let calls = upstream_calls(g.admin_addr).await - before;
    let alerts = alerts["activeAlerts"].as_array().unwrap().clone();
    assert_eq!(alerts.len(), 30);
    assert!(alerts.iter().all(|a| a["device"]["id"].is_string()));
    assert_eq!(calls, 2, "ListAlerts, ListDevices");

    // Limits, each a clear error with a code.
    let deep = "{ devices { alerts { device { alerts { device { alerts { device { alerts { device { alerts { id } } } } } } } } } } }";
    let v = a.run(deep, json!({})).await;
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{v}"
    );
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "QUERY_TOO_DEEP",
        "{v}"
    );
    // Each page is allowed, together they are too costly: 2 x 1000 devices
    // x 3 fields against a complexity limit of 5000.
    let costly =
        "{ a: devices(limit: 1000) { id name status } b: devices(limit: 1000) { id name status } }";
    let v = a.run(costly, json!({})).await;
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too complex"),
        "{v}"
    );
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{v}"
    );
    assert!(v["data"].is_null(), "refused before it ran: {v}");
    assert_eq!(
        a.error_code("{ devices(limit: 5000) { id } }", json!({}))
            .await,
        "BAD_USER_INPUT"
    );
    let long = json!({
        "deviceId": uuids[0], "sensorName": "temperature",
        "startTime": "2020-01-01T00:00:00Z", "endTime": "2026-01-01T00:00:00Z",
    });
    assert_eq!(a.error_code(GET_READINGS, long).await, "BAD_USER_INPUT");
    let bad_time = json!({
        "deviceId": uuids[0], "sensorName": "temperature",
        "startTime": "yesterday", "endTime": "2026-01-01T00:00:00Z",
    });
    let v = a.run(GET_READINGS, bad_time).await;
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("startTime:"),
        "{v}"
    );
    let rejected = a
        .run(
            "mutation($d: ID!) { recordReading(deviceId: $d, sensorName: \"bad name!\", value: 1) { value } }",
            json!({"d": uuids[0]}),
        )
        .await;
    assert_eq!(
        rejected["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{rejected}"
    );
    assert_eq!(
        rejected["errors"][0]["extensions"]["reason"],
        "bad_sensor_name"
    );
    let v = a.run("{ __schema { types { name } } }", json!({})).await;
    assert!(v["data"]["__schema"].is_null(), "introspection is off: {v}");
    let big = format!(
        r#"{{"query": "{{ devices {{ id }} }}", "pad": "{}"}}"#,
        "x".repeat(8000)
    );
    let (status, _) = a.post(big.as_bytes()).await;
    assert_eq!(status, 413);

    // A backend down: an error naming it, soon, not a hang.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    // And one that takes connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let broken = graphql_gateway::start(
        {
            let mut c = graphql_gateway::Config {
                registry_url: format!("http://{}", p.registry),
                telemetry_url: format!("http://{dead_addr}"),
                alerts_url: format!("http://{hung_addr}"),
                ingest_url: format!("http://{}", p.gateway_grpc),
                http_addr: kit::ANY,
                grpc_addr: kit::ANY,
                admin_addr: kit::ANY,
                ..Default::default()
            };
            t.configure(&mut c);
            c.limits.upstream_timeout_ms = 1000;
            c.limits.rate_burst = 3.0;
            c.limits.rate_per_sec = 0.5;
            c
        },
        p.shutdown.clone(),
    )
    .await
    .unwrap();
    let down = Client::key(broken.http_addr, "key-a");
    let v = tokio::time::timeout(
        Duration::from_secs(10),
        down.run(DEVICE_DASHBOARD, json!({"deviceId": uuids[0]})),
    )
    .await
    .expect("an answer, not a hang");
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "BACKEND_UNAVAILABLE",
        "{v}"
    );
    assert_eq!(v["errors"][0]["extensions"]["service"], "ingest-writer");
    // The device itself still comes back: only its readings are missing.
    assert_eq!(v["data"]["device"]["id"], uuids[0].as_str(), "{v}");
    let started = std::time::Instant::now();
    let v = tokio::time::timeout(
        Duration::from_secs(10),
        down.run("{ activeAlerts { id } }", json!({})),
    )
    .await
    .expect("an answer, not a hang");
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "BACKEND_TIMEOUT",
        "{v}"
    );
    assert_eq!(v["errors"][0]["extensions"]["service"], "alert-engine");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "a timeout, not a refusal: {v}"
    );
    // A subscriber to alerts hears that the alert stream is down (and the
    // subscription stays open for the changes that follow).
    let mut alerts = Subscription::start(
        broken.http_addr,
        "graphql-transport-ws",
        json!({"apiKey": "key-a"}),
        "subscription { alerts { id } }",
        json!({}),
    )
    .await;
    let told = alerts.next().await;
    assert_eq!(
        told["errors"][0]["extensions"]["code"], "BACKEND_UNAVAILABLE",
        "{told}"
    );
    assert_eq!(told["errors"][0]["extensions"]["service"], "alert-engine");
    assert_eq!(
        kit::http_get(broken.http_addr, "/readyz").await,
        "not ready"
    );

    // Rate limit: a burst of 3, then 429 with a code and Retry-After.
    let mut limited = None;
    for _ in 0..6 {
        let (status, v) = down
            .post(br#"{"query": "{ devices(limit: 1) { id } }"}"#)
            .await;
        if status == 429 {
            limited = Some(v);
            break;
        }
        assert!(v["errors"].is_null(), "{v}");
    }
    let v = limited.expect("a 429 within a burst of 3");
    assert_eq!(v["errors"][0]["extensions"]["code"], "RATE_LIMITED");

    // Over WebSocket, every operation on one connection is charged to the
    // same bucket (another caller's: key-b's is still full): the
    // connection takes one token, so of six queries at most two run.
    let mut ws = ws_init(
        broken.http_addr,
        "graphql-transport-ws",
        json!({"apiKey": "key-b"}),
    )
    .await;
    let send = |v: Value| Message::Text(v.to_string().into());
    for i in 0..6 {
        ws.send(send(json!({"id": i.to_string(), "type": "subscribe",
            "payload": {"query": "{ devices(limit: 1) { id } }"}})))
            .await
            .unwrap();
    }
    let (mut answered, mut limited) = (0, 0);
    while answered + limited < 6 {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer to every operation")
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        let errors = match v["type"].as_str() {
            Some("next") => v["payload"]["errors"].clone(),
            Some("error") => v["payload"].clone(),
            _ => continue,
        };
        if errors.is_null() {
            answered += 1;
        } else {
            assert_eq!(errors[0]["extensions"]["code"], "RATE_LIMITED", "{v}");
            limited += 1;
        }
    }
    assert!(
        answered <= 2 && limited >= 4,
        "{answered} answered, {limited} limited"
    );

    p.stop().await;
}
