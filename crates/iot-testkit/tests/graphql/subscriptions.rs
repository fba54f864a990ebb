//! Subscriptions over real GraphQL-over-WebSocket clients, both
//! protocols: who may subscribe, who hears what, and when a stream ends.

use std::time::Duration;

use iot_testkit as kit;
use serde_json::{Value, json};

use crate::support::*;

/// A bad token is refused at connection; over either protocol each
/// tenant hears its own alerts and nothing of another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_token_is_refused_and_each_tenant_hears_only_its_own_alerts() {
    let s = Stack::start().await;
    let (a, b) = (s.a(), s.b());
    let addr = s.g.http_addr;
    // Live alert streams: A over graphql-transport-ws, B over graphql-ws.
    let mut a_alerts = s.subscribe("key-a", ALERTS_SUB, json!({})).await;
    // A bad token: the connection is refused, not served.
    let refused = Subscription::connect(
        addr,
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
        addr,
        "graphql-ws",
        json!({"apiKey": "key-b"}),
        ALERTS_SUB,
        json!({}),
    )
    .await;

    // A's alert reaches A.
    let a_device = format!("device_123_{}", kit::unique());
    let id = device_with_max_30(&a, &a_device).await;
    let alerts = raise_alert(&a, &id).await;
    let live = a_alerts.next().await;
    assert_eq!(live["data"]["alerts"]["id"], alerts[0]["id"], "{live}");
    assert_eq!(
        live["data"]["alerts"]["device"]["device_id"],
        a_device.as_str()
    );
    // B heard nothing of A's alert: B's own alert is the first B hears,
    // and it reaches B alone.
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
    s.stop().await;
}

/// deviceStatus and metrics follow the device as it changes, and end
/// once it is deleted: each checks at every poll that the device is
/// still the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_status_and_metrics_stream_changes_and_end_when_the_device_goes() {
    let s = Stack::start().await;
    let a = s.a();
    let created = create_device(&a, &format!("device_{}", kit::unique()), Value::Null).await;
    let id = created["id"].as_str().unwrap().to_owned();

    // deviceStatus: the device as it is now, then as it changes.
    let mut status = s
        .subscribe(
            "key-a",
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
    let mut live_metrics = s
        .subscribe(
            "key-a",
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
    s.stop().await;
}
