//! What the gateway refuses and how it fails: credentials, limits on a
//! query, a backend down or hung, the rate limit; and a page of devices
//! that costs a bounded number of backend calls.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use iot_testkit as kit;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Each refusal is a clear error with a code, before the query runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_and_queries_over_a_limit_are_refused_with_a_code() {
    let s = Stack::start_tuned(|c| {
        c.limits.max_body_bytes = 4096;
        c.limits.introspection = false;
    })
    .await;
    let a = s.a();
    // No credentials, an unknown key, a forged token: 401 with a code.
    for c in [
        Client {
            addr: s.g.http_addr,
            auth: "X-Nothing: 1".into(),
        },
        Client::key(s.g.http_addr, "key-zzz"),
        Client::bearer(s.g.http_addr, "eyJhbGciOiJIUzI1NiJ9.e30.x"),
    ] {
        let (status, v) = c.post(br#"{"query": "{ devices { id } }"}"#).await;
        assert_eq!(status, 401, "{v}");
        assert_eq!(v["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }

    let created = create_device(&a, &format!("device_{}", kit::unique()), Value::Null).await;
    let id = created["id"].as_str().unwrap().to_owned();

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
        "deviceId": id, "sensorName": "temperature",
        "startTime": "2020-01-01T00:00:00Z", "endTime": "2026-01-01T00:00:00Z",
    });
    assert_eq!(a.error_code(GET_READINGS, long).await, "BAD_USER_INPUT");
    let bad_time = json!({
        "deviceId": id, "sensorName": "temperature",
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
            json!({"d": id}),
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
    s.stop().await;
}

/// N+1 avoided: the backend calls of a page do not grow with its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_of_devices_costs_a_bounded_number_of_backend_calls() {
    let s = Stack::start().await;
    let a = s.a();
    // N+1: a page of 100 devices with their readings and alerts costs one
    // call each for the page, the latest readings and the open alerts.
    // Two through the registry (they get readings); 98 more straight into
    // its table, which spares the broker 98 accounts this test does not
    // need.
    let mut registry =
        s.p.registry_client(iot_proto::Scope::Owner(s.t.a.to_string()))
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
    let db = kit::connect(&s.p.db).await;
    let prefix = kit::unique();
    db.execute(
        "INSERT INTO devices (device_id, name, device_type, owner_id)
         SELECT 'n1-' || $2 || '-' || i, 'n', 'temperature_sensor', $1
         FROM generate_series(2, 99) i",
        &[&s.t.a, &prefix],
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
    let before = upstream_calls(s.g.admin_addr).await;
    let page = a
        .data(
            "{ devices(limit: 100) { id current_readings { value } alerts { id } } }",
            json!({}),
        )
        .await;
    let calls = upstream_calls(s.g.admin_addr).await - before;
    assert_eq!(page["devices"].as_array().unwrap().len(), 100);
    assert_eq!(calls, 3, "ListDevices, LatestReadings, ListAlerts");
    // Their sensors: one call for the whole page too.
    db.execute(
        "INSERT INTO sensors (device_id, sensor_name)
         SELECT id, s FROM devices, unnest(ARRAY['humidity', 'temperature']) s
         WHERE owner_id = $1 AND device_id LIKE 'n1-' || $2 || '-%'",
        &[&s.t.a, &prefix],
    )
    .await
    .unwrap();
    let before = upstream_calls(s.g.admin_addr).await;
    let page = a
        .data(
            "{ devices(limit: 100) { device_id sensors { sensor_name } } }",
            json!({}),
        )
        .await;
    let calls = upstream_calls(s.g.admin_addr).await - before;
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
        &[&s.t.a, &prefix],
    )
    .await
    .unwrap();
    let before = upstream_calls(s.g.admin_addr).await;
    let alerts = a
        .data("{ activeAlerts { id device { id } } }", json!({}))
        .await;
    let calls = upstream_calls(s.g.admin_addr).await - before;
    let alerts = alerts["activeAlerts"].as_array().unwrap().clone();
    assert_eq!(alerts.len(), 30);
    assert!(alerts.iter().all(|a| a["device"]["id"].is_string()));
    assert_eq!(calls, 2, "ListAlerts, ListDevices");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_down_or_hung_is_named_soon_and_not_waited_for() {
    let s = Stack::start().await;
    let created = create_device(&s.a(), &format!("device_{}", kit::unique()), Value::Null).await;
    let id = created["id"].as_str().unwrap().to_owned();
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
            let mut c = s.p.graphql_config(&s.engine);
            c.telemetry_url = format!("http://{dead_addr}");
            c.alerts_url = format!("http://{hung_addr}");
            s.t.configure(&mut c);
            c.limits.upstream_timeout_ms = 1000;
            c
        },
        s.p.shutdown.clone(),
    )
    .await
    .unwrap();
    let down = Client::key(broken.http_addr, "key-a");
    let v = tokio::time::timeout(
        Duration::from_secs(10),
        down.run(DEVICE_DASHBOARD, json!({"deviceId": id})),
    )
    .await
    .expect("an answer, not a hang");
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "BACKEND_UNAVAILABLE",
        "{v}"
    );
    assert_eq!(v["errors"][0]["extensions"]["service"], "ingest-writer");
    // The device itself still comes back: only its readings are missing.
    assert_eq!(v["data"]["device"]["id"], id.as_str(), "{v}");
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
    s.stop().await;
}

/// Over HTTP each key has a bucket; over WebSocket every operation on one
/// connection is charged to the connection's caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_are_rate_limited_over_http_and_over_one_websocket() {
    let s = Stack::start_tuned(|c| {
        c.limits.rate_burst = 3.0;
        c.limits.rate_per_sec = 0.5;
    })
    .await;
    let a = s.a();
    // Rate limit: a burst of 3, then 429 with a code and Retry-After.
    let mut limited = None;
    for _ in 0..6 {
        let (status, v) = a
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
        s.g.http_addr,
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
    s.stop().await;
}
