//! Commands and desired state through the public API: a command sent with
//! `sendCommand` reaches the device over MQTT, its answer shows in
//! `command` and in the `commandUpdates` subscription; desired state is
//! versioned and compared with what the device reports; another tenant
//! sees none of it.

use std::time::Duration;

use iot_testkit as kit;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event};
use serde_json::{Value, json};

use crate::support::*;

const SEND: &str = "mutation($d: ID!) {
  sendCommand(deviceId: $d, name: \"reboot\", payload: {delay: 5}, timeoutSecs: 60) {
    id status name payload
  }
}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_round_trip_and_desired_state_through_graphql() {
    let s = Stack::start().await;
    let (a, b) = (s.a(), s.b());
    let device_id = format!("gql-cmd-{}", kit::unique());
    let created = create_device(&a, &device_id, Value::Null).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let creds = &created["credentials"];

    // The device, subscribed to its commands.
    let mut opts = kit::mqtt5_options(format!("d-{}", kit::unique()));
    opts.set_credentials(
        creds["username"].as_str().unwrap(),
        creds["password"].as_str().unwrap(),
    );
    let (device, mut events) = AsyncClient::new(opts, 16);
    device
        .subscribe(
            format!("{}/commands/{device_id}/+", s.p.root),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while !matches!(events.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}
    })
    .await
    .unwrap();
    let mut updates = s
        .subscribe(
            "key-a",
            "subscription($d: ID!) { commandUpdates(deviceId: $d) { id status result } }",
            json!({"d": id}),
        )
        .await;
    // Let the subscription's stream start before the command exists.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sent = a.data(SEND, json!({"d": id})).await["sendCommand"].clone();
    assert_eq!(sent["status"], "queued");
    assert_eq!(sent["payload"], json!({"delay": 5}));
    let command_id = sent["id"].as_str().unwrap().to_owned();
    let msg = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                return p;
            }
        }
    })
    .await
    .expect("the command reaches the device");
    let response = msg.properties.unwrap().response_topic.unwrap();
    device
        .publish(
            response,
            QoS::AtLeastOnce,
            false,
            r#"{"status": "ok", "body": {"rebooted": true}}"#,
        )
        .await
        .unwrap();
    let _poll = tokio::spawn(async move { while events.poll().await.is_ok() {} });

    // The subscription follows it to its end.
    let mut seen = Vec::new();
    loop {
        let m = updates.next().await;
        let c = &m["data"]["commandUpdates"];
        assert_eq!(c["id"], command_id.as_str(), "{m}");
        seen.push(c["status"].as_str().unwrap().to_owned());
        if c["status"] == "succeeded" {
            assert_eq!(c["result"], json!({"rebooted": true}));
            break;
        }
    }
    // In lifecycle order; a status passed between two looks may be skipped.
    let order = ["queued", "sent", "delivered", "succeeded"];
    let ranks: Vec<usize> = seen
        .iter()
        .map(|s| order.iter().position(|o| o == s).unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let got = a
        .data(
            "query($c: ID!, $d: ID!) { command(id: $c) { status result delivered_at finished_at } commands(deviceId: $d) { commands { id } next_cursor } }",
            json!({"c": command_id, "d": id}),
        )
        .await;
    assert_eq!(got["command"]["status"], "succeeded");
    assert!(got["command"]["finished_at"].is_string());
    assert_eq!(got["commands"]["commands"][0]["id"], command_id.as_str());
    assert_eq!(got["commands"]["next_cursor"], Value::Null);

    // Desired state: versioned; a stale version is a conflict.
    let set = "mutation($d: ID!, $s: JSON!, $v: Int!) { setDesiredState(deviceId: $d, desired: $s, expectedVersion: $v) { desired_version desired } }";
    let v1 = a
        .data(set, json!({"d": id, "s": {"read_interval": 10}, "v": 0}))
        .await;
    assert_eq!(v1["setDesiredState"]["desired_version"], 1);
    assert_eq!(
        a.error_code(set, json!({"d": id, "s": {"read_interval": 5}, "v": 0}))
            .await,
        "CONFLICT"
    );
    let state = a
        .data(
            "query($d: ID!) { deviceState(deviceId: $d) { desired desired_version reported difference } }",
            json!({"d": id}),
        )
        .await;
    assert_eq!(state["deviceState"]["reported"], Value::Null);
    assert_eq!(
        state["deviceState"]["difference"],
        json!({"read_interval": {"desired": 10, "reported": null}})
    );

    // Tenant B: nothing.
    let none = b
        .data(
            "query($c: ID!) { command(id: $c) { id } }",
            json!({"c": command_id}),
        )
        .await;
    assert_eq!(none["command"], Value::Null);
    for (q, v) in [
        (
            "query($d: ID!) { commands(deviceId: $d) { next_cursor } }",
            json!({"d": id}),
        ),
        (
            "query($d: ID!) { deviceState(deviceId: $d) { desired_version } }",
            json!({"d": id}),
        ),
        (SEND, json!({"d": id})),
        (set, json!({"d": id, "s": {}, "v": 1})),
    ] {
        assert_eq!(b.error_code(q, v).await, "NOT_FOUND", "{q}");
    }
    s.stop().await;
}
