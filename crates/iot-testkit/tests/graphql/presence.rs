//! Presence on the real broker, pushed to `deviceStatus` subscribers: a
//! device's birth message and last will, silence past its interval, one
//! definition of offline everywhere (alerts, `online`, the summary, the
//! subscription), and owners kept apart.

use std::time::{Duration, Instant};

use iot_testkit as kit;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use serde_json::{Value, json};

use crate::support::*;

/// The bound: a device going offline reaches its subscribers
/// within 5 s of the moment; the margin is for a loaded two-core test
/// machine.
const OFFLINE_PUSHED_WITHIN: Duration = Duration::from_secs(5 + 5);

const STATUS_SUB: &str = "subscription($d: ID!) { deviceStatus(deviceId: $d) { online last_heartbeat disconnected_at } }";

const CREATE_WITH_INTERVAL: &str = "mutation($deviceId: String!, $i: Int) {
  createDevice(deviceId: $deviceId, name: \"Boiler\", deviceType: \"temperature_sensor\", config: {readInterval: $i}) {
    id device_id credentials { username password }
  }
}";

/// A stack with alert-engine as shipped (it checks silence every 5 s).
async fn stack() -> Stack {
    let p = iot_testkit::Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let t = Tenants::new();
    let g = p.start_graphql(&engine, |c| t.configure(c)).await;
    Stack { p, engine, g, t }
}

/// A device of `c`'s reporting every `interval` seconds: its UUID,
/// external id and MQTT password.
async fn device(c: &Client, interval: i32) -> (String, String, String) {
    let id = format!("pres_{}", kit::unique());
    let d = c
        .data(CREATE_WITH_INTERVAL, json!({"deviceId": id, "i": interval}))
        .await["createDevice"]
        .clone();
    (
        d["id"].as_str().unwrap().to_owned(),
        id,
        d["credentials"]["password"].as_str().unwrap().to_owned(),
    )
}

/// The device's own MQTT 5 session, with its last will ("lost", retained)
/// on its presence topic; its birth message ("online") is published once
/// connected.
async fn connect(s: &Stack, device_id: &str, password: &str) -> (AsyncClient, EventLoop) {
    let topic = format!("{}/devices/{device_id}/presence", s.p.root);
    // The run's listener (TLS in the TLS-required run).
    let mut opts = kit::mqtt5_options(format!("dev-{}", kit::unique()));
    opts.set_credentials(device_id, password)
        .set_keep_alive(Duration::from_secs(10))
        .set_last_will(LastWill::new(
            topic.clone(),
            "lost",
            QoS::AtLeastOnce,
            true,
            None,
        ));
    let (client, mut events) = AsyncClient::new(opts, 16);
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("CONNACK");
    client
        .publish(topic, QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    // The birth is acknowledged (the broker allowed the device's own
    // presence topic).
    tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await.unwrap() {
                Event::Incoming(Packet::PubAck(a)) => {
                    assert!(
                        matches!(
                            a.reason,
                            rumqttc::v5::mqttbytes::v5::PubAckReason::Success
                                | rumqttc::v5::mqttbytes::v5::PubAckReason::NoMatchingSubscribers
                        ),
                        "{a:?}"
                    );
                    return;
                }
                _ => continue,
            }
        }
    })
    .await
    .expect("PUBACK");
    (client, events)
}

/// Keeps a session's event loop turning (pings) until it is aborted: the
/// abort drops the connection without DISCONNECT, as a device losing power.
fn keep_alive(mut events: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.poll().await.is_ok() {} })
}

/// The next `deviceStatus` message whose `online` is `online`.
async fn until_online(sub: &mut Subscription, online: bool) -> Value {
    loop {
        let m = sub.next().await;
        assert!(m.get("errors").is_none(), "{m}");
        if m["data"]["deviceStatus"]["online"] == online {
            return m;
        }
    }
}

async fn online(c: &Client, id: &str) -> bool {
    c.data(
        "query($id: ID!) { device(id: $id) { online } }",
        json!({"id": id}),
    )
    .await["device"]["online"]
        .as_bool()
        .unwrap()
}

async fn offline_count(c: &Client) -> i64 {
    c.data("{ deviceStatusSummary { offline_devices } }", json!({}))
        .await["deviceStatusSummary"]["offline_devices"]
        .as_i64()
        .unwrap()
}

async fn open_offline_alerts(c: &Client, id: &str) -> usize {
    c.data(
        "query($id: ID!) { device(id: $id) { alerts { alert_type } } }",
        json!({"id": id}),
    )
    .await["device"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["alert_type"] == "device_offline")
        .count()
}

/// A birth message turns the device online for its subscriber; its last
/// will (the connection dropped) turns it offline, pushed within the
/// issue's 5 s, and everywhere: `online`, the summary and an offline alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_last_will_is_pushed_as_offline_and_seen_everywhere() {
    let s = stack().await;
    let a = s.a();
    // A long interval: only the will can make it offline in this test.
    let (id, device_id, password) = device(&a, 3600).await;
    let mut sub = s.subscribe("key-a", STATUS_SUB, json!({"d": id})).await;
    let first = sub.next().await;
    assert_eq!(first["data"]["deviceStatus"]["online"], false, "{first}");

    let (_client, events) = connect(&s, &device_id, &password).await;
    let session = keep_alive(events);
    let on = until_online(&mut sub, true).await;
    assert!(
        on["data"]["deviceStatus"]["disconnected_at"].is_null(),
        "{on}"
    );
    assert!(online(&a, &id).await);
    assert_eq!(offline_count(&a).await, 0);

    // The device loses its connection: the broker publishes its will.
    session.abort();
    let lost = Instant::now();
    let off = until_online(&mut sub, false).await;
    let took = lost.elapsed();
    assert!(
        took <= OFFLINE_PUSHED_WITHIN,
        "offline pushed after {took:?}"
    );
    assert!(
        off["data"]["deviceStatus"]["disconnected_at"].is_string(),
        "{off}"
    );
    assert!(!online(&a, &id).await);
    assert_eq!(offline_count(&a).await, 1);
    kit::eventually("the offline alert", WAIT, || {
        let (a, id) = (a.clone(), id.clone());
        async move { (open_offline_alerts(&a, &id).await == 1).then_some(()) }
    })
    .await;
    s.stop().await;
}

/// A device silent past its interval × 5 goes offline at one moment for
/// all: the subscriber hears it, `online` and the summary say so, and
/// alert-engine raises `device_offline`; reconnecting (a birth message)
/// turns it back online everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silence_goes_offline_everywhere_and_a_reconnect_comes_back_everywhere() {
    let s = stack().await;
    let a = s.a();
    // Every 2 s: offline after 10 s of silence (5 x 2 s).
    let (id, device_id, password) = device(&a, 2).await;
    let mut sub = s.subscribe("key-a", STATUS_SUB, json!({"d": id})).await;
    sub.next().await;
    let (client, events) = connect(&s, &device_id, &password).await;
    let session = keep_alive(events);
    let on = until_online(&mut sub, true).await;
    let heard = on["data"]["deviceStatus"]["last_heartbeat"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();

    // Silence (the session stays connected).
    let off = until_online(&mut sub, false).await;
    let pushed = chrono::Utc::now();
    let offline_at = heard + chrono::TimeDelta::seconds(10);
    assert!(pushed >= offline_at, "not before 10 s of silence: {off}");
    assert!(
        (pushed - offline_at).to_std().unwrap() <= OFFLINE_PUSHED_WITHIN,
        "offline pushed {:?} after the moment",
        pushed - offline_at
    );
    assert!(off["data"]["deviceStatus"]["disconnected_at"].is_null());
    // The same moment for the API and the summary.
    assert!(!online(&a, &id).await);
    assert_eq!(offline_count(&a).await, 1);
    // And for alert-engine, which checks every second.
    kit::eventually("the offline alert", WAIT, || {
        let (a, id) = (a.clone(), id.clone());
        async move { (open_offline_alerts(&a, &id).await == 1).then_some(()) }
    })
    .await;

    // A reconnect: its birth message again.
    client
        .publish(
            format!("{}/devices/{device_id}/presence", s.p.root),
            QoS::AtLeastOnce,
            true,
            "online",
        )
        .await
        .unwrap();
    until_online(&mut sub, true).await;
    assert!(online(&a, &id).await);
    assert_eq!(offline_count(&a).await, 0);
    kit::eventually("the offline alert resolved", WAIT, || {
        let (a, id) = (a.clone(), id.clone());
        async move { (open_offline_alerts(&a, &id).await == 0).then_some(()) }
    })
    .await;
    session.abort();
    s.stop().await;
}

/// Owner B can neither subscribe to A's device nor hear anything of it on
/// B's own device's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_never_sees_another_owners_device() {
    let s = stack().await;
    let (a, b) = (s.a(), s.b());
    let (a_id, a_device, a_password) = device(&a, 3600).await;
    let (b_id, _, _) = device(&b, 3600).await;

    let mut refused = s.subscribe("key-b", STATUS_SUB, json!({"d": a_id})).await;
    let m = refused.next().await;
    let text = m.to_string();
    assert!(m.get("data").is_none_or(Value::is_null), "{m}");
    assert!(text.contains("NOT_FOUND"), "{m}");
    assert!(!text.contains(&a_device), "{m}");

    let mut a_sub = s.subscribe("key-a", STATUS_SUB, json!({"d": a_id})).await;
    let mut b_sub = s.subscribe("key-b", STATUS_SUB, json!({"d": b_id})).await;
    a_sub.next().await;
    let b_first = b_sub.next().await;
    assert!(!b_first.to_string().contains(&a_id), "{b_first}");

    let (_client, events) = connect(&s, &a_device, &a_password).await;
    let session = keep_alive(events);
    until_online(&mut a_sub, true).await;
    session.abort();
    until_online(&mut a_sub, false).await;
    // B's stream carried nothing meanwhile.
    b_sub.quiet_for(Duration::from_secs(2)).await;
    s.stop().await;
}

/// `metrics` and `deviceStatus` are pushed: readings reach every
/// subscriber, and the gateway's backend calls while readings flow do not
/// grow with the number of subscribers (they follow series and changes,
/// not subscribers).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushed_streams_cost_the_same_backend_calls_for_one_or_many_subscribers() {
    let s = stack().await;
    let a = s.a();
    let (id, _, _) = device(&a, 60).await;

    // Calls of the gateway during 5 readings, with `subs` of each
    // subscription open; every metrics subscriber hears the last one.
    async fn calls_during(s: &Stack, a: &Client, id: &str, subs: usize, v0: f64) -> u64 {
        let metrics_sub = "subscription($d: ID!) { metrics(deviceId: $d, sensorName: \"temperature\") { reading_count max_value } }";
        let mut live = Vec::new();
        for _ in 0..subs {
            live.push(s.subscribe("key-a", metrics_sub, json!({"d": id})).await);
            let mut st = s.subscribe("key-a", STATUS_SUB, json!({"d": id})).await;
            st.next().await;
            live.push(st);
        }
        // Let the first reads of the series settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = upstream_calls(s.g.admin_addr).await;
        for i in 0..5 {
            a.data(RECORD, json!({"deviceId": id, "v": v0 + f64::from(i)}))
                .await;
        }
        let last = v0 + 4.0;
        for sub in live.iter_mut().step_by(2) {
            loop {
                let m = sub.next().await;
                assert!(m.get("errors").is_none(), "{m}");
                if m["data"]["metrics"]["max_value"] == last {
                    break;
                }
            }
        }
        upstream_calls(s.g.admin_addr).await - before
    }
    let one = calls_during(&s, &a, &id, 1, 100.0).await;
    let many = calls_during(&s, &a, &id, 20, 200.0).await;
    // recordReading itself calls the backends (5 each time); what the
    // subscriptions add does not grow twentyfold.
    assert!(many <= one + 5, "1 subscriber: {one} calls, 20: {many}");
    s.stop().await;
}
