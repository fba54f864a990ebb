//! Talking back to devices on the real broker (Mosquitto with the
//! dynamic-security plugin): commands to MQTT 5 and MQTT 3.1.1 devices and
//! their lifecycle, an offline device served when it reconnects, an
//! expired command never delivered, devices confined to their own
//! commands, desired state retained and versioned, and owners apart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use iot_proto::v1::{self, CommandStatus, CreateDeviceRequest};
use iot_proto::{CommandsClient, Scope};
use iot_testkit as kit;
use iot_testkit::platform::Registry;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop};

const WAIT: Duration = Duration::from_secs(20);

async fn commands(r: &Registry, scope: Scope) -> CommandsClient {
    iot_proto::commands_client(r.url(), scope, &kit::pki::operator())
        .await
        .unwrap()
}

/// A device of `owner` (empty: the nil owner): its id and credentials.
async fn device(r: &Registry, owner: &str) -> (v1::Device, v1::MqttCredentials) {
    let id = format!("cmd-{}", kit::unique());
    let d = r
        .client(Scope::Admin)
        .await
        .create_device(CreateDeviceRequest {
            device_id: id.clone(),
            name: id,
            device_type: "valve".into(),
            owner_id: owner.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let c = d.credentials.clone().unwrap();
    (d, c)
}

/// An MQTT 5 device session that outlives disconnects (persistent, with
/// `client_id`), subscribed to its commands; None when the subscription
/// is refused.
struct Device5 {
    client: AsyncClient,
    events: EventLoop,
}

impl Device5 {
    async fn connect(c: &v1::MqttCredentials, client_id: &str) -> Self {
        let mut opts = kit::mqtt5_options(client_id);
        opts.set_credentials(&c.username, &c.password)
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_manual_acks(true);
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
        Self { client, events }
    }

    /// Subscribes to `filter`; whether the broker granted it.
    async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                if let Event::Incoming(Packet::SubAck(ack)) = self.events.poll().await.unwrap() {
                    return matches!(ack.return_codes[0], SubscribeReasonCode::Success(_));
                }
            }
        })
        .await
        .expect("SUBACK")
    }

    /// The next message within `wait`, acknowledged.
    async fn next(&mut self, wait: Duration) -> Option<Publish> {
        tokio::time::timeout(wait, async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = self.events.poll().await.unwrap() {
                    self.client.ack(&p).await.unwrap();
                    return p;
                }
            }
        })
        .await
        .ok()
    }

    /// Publishes at QoS 1; the broker's PUBACK reason (panics if the
    /// broker closes the connection instead).
    async fn publish(&mut self, topic: &str, body: &str, retain: bool) -> PubAckReason {
        self.try_publish(topic, body, retain)
            .await
            .unwrap_or_else(|e| panic!("connection lost: {e}"))
    }

    /// Publishes at QoS 1; the broker's PUBACK reason, or Err when it
    /// closed the connection.
    async fn try_publish(
        &mut self,
        topic: &str,
        body: &str,
        retain: bool,
    ) -> Result<PubAckReason, String> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, body.to_owned())
            .await
            .unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                match self.events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(a))) => return Ok(a.reason),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await
        .expect("PUBACK")
    }

    /// Disconnects, keeping the session at the broker.
    async fn leave(mut self) {
        self.client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.events.poll().await.is_ok() {}
        })
        .await;
    }
}

async fn send(c: &mut CommandsClient, device: &str, name: &str, timeout_secs: u32) -> v1::Command {
    c.send_command(v1::SendCommandRequest {
        device_id: device.into(),
        name: name.into(),
        payload_json: r#"{"position": 40}"#.into(),
        timeout_secs,
    })
    .await
    .unwrap()
    .into_inner()
}

/// Waits for the command to reach `status`.
async fn reaches(c: &CommandsClient, id: &str, status: CommandStatus) -> v1::Command {
    kit::eventually(&format!("command {status:?}"), WAIT, || {
        let mut c = c.clone();
        async move {
            let got = c
                .get_command(v1::GetCommandRequest { id: id.into() })
                .await
                .unwrap()
                .into_inner();
            (got.status() == status).then_some(got)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mqtt5_device_receives_a_command_and_answers_it() {
    let r = Registry::start().await;
    let mut api = commands(&r, Scope::Admin).await;
    let (d, creds) = device(&r, "").await;
    let mut dev = Device5::connect(&creds, &format!("c-{}", kit::unique())).await;
    assert!(
        dev.subscribe(&format!("{}/commands/{}/+", r.root, creds.username))
            .await
    );

    let sent = send(&mut api, &d.id, "open-valve", 60).await;
    assert_eq!(sent.status_code, "queued");
    assert_eq!(sent.device_id, d.id);
    let msg = dev
        .next(WAIT)
        .await
        .expect("the command reaches the device");
    let topic = String::from_utf8(msg.topic.to_vec()).unwrap();
    assert_eq!(
        topic,
        format!("{}/commands/{}/{}", r.root, creds.username, sent.id)
    );
    let props = msg.properties.clone().unwrap();
    let response = props.response_topic.unwrap();
    assert_eq!(response, format!("{topic}/result"));
    assert_eq!(props.correlation_data.unwrap(), sent.id.as_bytes());
    assert!(props.message_expiry_interval.unwrap() <= 60);
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["name"], "open-valve");
    assert_eq!(body["payload"]["position"], 40);
    assert_eq!(body["id"], sent.id.as_str());

    // The broker took it (sent), the device acknowledges receipt
    // (delivered), then answers.
    reaches(&api, &sent.id, CommandStatus::Sent).await;
    assert_eq!(
        dev.publish(&response, r#"{"status": "received"}"#, false)
            .await,
        PubAckReason::Success
    );
    let delivered = reaches(&api, &sent.id, CommandStatus::Delivered).await;
    assert!(delivered.delivered_at.is_some() && delivered.finished_at.is_none());
    dev.publish(
        &response,
        r#"{"status": "ok", "body": {"position": 40}}"#,
        false,
    )
    .await;
    let done = reaches(&api, &sent.id, CommandStatus::Succeeded).await;
    assert_eq!(done.status_code, "succeeded");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&done.result_json).unwrap(),
        serde_json::json!({"position": 40})
    );
    assert!(done.finished_at.is_some() && done.sent_at.is_some());

    // A second answer changes nothing.
    dev.publish(&response, r#"{"status": "error", "body": {}}"#, false)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    reaches(&api, &sent.id, CommandStatus::Succeeded).await;

    // Listed newest first, with paging.
    let second = send(&mut api, &creds.username, "close-valve", 60).await;
    let page = api
        .list_commands(v1::ListCommandsRequest {
            device_id: d.id.clone(),
            limit: 1,
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.commands.len(), 1);
    assert_eq!(page.commands[0].id, second.id);
    let rest = api
        .list_commands(v1::ListCommandsRequest {
            device_id: d.id.clone(),
            limit: 10,
            cursor: page.next_cursor,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.commands
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        [sent.id.as_str()]
    );
    assert!(rest.next_cursor.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mqtt311_device_answers_by_the_topic_convention() {
    let r = Registry::start().await;
    let mut api = commands(&r, Scope::Admin).await;
    let (d, creds) = device(&r, "").await;
    let mut opts = kit::mqtt_options(format!("c3-{}", kit::unique()));
    opts.set_credentials(&creds.username, &creds.password)
        .set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
    client
        .subscribe(
            format!("{}/commands/{}/+", r.root, creds.username),
            rumqttc::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) =
                events.poll().await.unwrap()
            {
                assert!(matches!(
                    a.return_codes[0],
                    rumqttc::SubscribeReasonCode::Success(_)
                ));
                return;
            }
        }
    })
    .await
    .unwrap();
    // A watcher sees every change from now on.
    let mut watch = api
        .watch_commands(v1::WatchCommandsRequest {
            device_id: d.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    let sent = send(&mut api, &d.id, "reboot", 60).await;
    let msg = tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                events.poll().await.unwrap()
            {
                return p;
            }
        }
    })
    .await
    .expect("the command reaches the 3.1.1 device");
    assert_eq!(
        msg.topic,
        format!("{}/commands/{}/{}", r.root, creds.username, sent.id)
    );
    client
        .publish(
            format!("{}/result", msg.topic),
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"status": "error", "body": {"reason": "busy"}}"#,
        )
        .await
        .unwrap();
    let _poll = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let failed = reaches(&api, &sent.id, CommandStatus::Failed).await;
    assert_eq!(failed.result_json, r#"{"reason":"busy"}"#);

    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(c) = watch.message().await.unwrap() {
            assert_eq!(c.id, sent.id);
            seen.push(c.status_code.clone());
            if c.status_code == "failed" {
                return;
            }
        }
    })
    .await
    .expect("the watcher sees the command fail");
    // Each message is the command as it then was, in lifecycle order (a
    // status passed between two looks at the table may not be seen; the
    // final one always is).
    let order = ["queued", "sent", "delivered", "failed"];
    let ranks: Vec<usize> = seen
        .iter()
        .map(|s| order.iter().position(|o| o == s).unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_device_gets_its_command_on_reconnect_and_an_expired_one_never() {
    let r = Registry::start().await;
    let mut api = commands(&r, Scope::Admin).await;
    let (d, creds) = device(&r, "").await;
    let client_id = format!("c-{}", kit::unique());
    let mut dev = Device5::connect(&creds, &client_id).await;
    assert!(
        dev.subscribe(&format!("{}/commands/{}/+", r.root, creds.username))
            .await
    );
    dev.leave().await;

    // Offline: the broker holds both for the device's session.
    let waits = send(&mut api, &d.id, "waits", 120).await;
    let expires = send(&mut api, &d.id, "expires", 2).await;
    reaches(&api, &waits.id, CommandStatus::Sent).await;
    // The deadline passes undelivered: expired, and the broker drops it.
    reaches(&api, &expires.id, CommandStatus::Expired).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut dev = Device5::connect(&creds, &client_id).await;
    let msg = dev.next(WAIT).await.expect("the waiting command arrives");
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["id"], waits.id.as_str());
    let response = msg.properties.unwrap().response_topic.unwrap();
    dev.publish(&response, r#"{"status": "ok"}"#, false).await;
    let done = reaches(&api, &waits.id, CommandStatus::Succeeded).await;
    assert_eq!(done.result_json, "null");
    assert!(
        dev.next(Duration::from_secs(3)).await.is_none(),
        "the expired command is never delivered"
    );
    // An answer to it now is too late: it stays expired.
    let late = format!(
        "{}/commands/{}/{}/result",
        r.root, creds.username, expires.id
    );
    dev.publish(&late, r#"{"status": "ok"}"#, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    reaches(&api, &expires.id, CommandStatus::Expired).await;
}

/// The value of a registry counter.
async fn counter(r: &Registry, series: &str) -> f64 {
    let text = kit::http_get(r.admin_addr, "/metrics").await;
    iot_telemetry::samples(&text, series).iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_neither_reads_nor_answers_another_devices_commands() {
    let r = Registry::start().await;
    let mut api = commands(&r, Scope::Admin).await;
    let (_, a) = device(&r, "").await;
    let (b_dev, b) = device(&r, "").await;
    let mut dev_a = Device5::connect(&a, &format!("c-{}", kit::unique())).await;
    assert!(
        !dev_a
            .subscribe(&format!("{}/commands/{}/+", r.root, b.username))
            .await
    );
    assert!(!dev_a.subscribe(&format!("{}/commands/+/+", r.root)).await);
    assert!(
        !dev_a
            .subscribe(&format!("{}/state/{}/desired", r.root, b.username))
            .await
    );

    let cmd = send(&mut api, &b_dev.id, "unlock", 60).await;
    reaches(&api, &cmd.id, CommandStatus::Sent).await;
    // On B's answer topic: the broker refuses it (Mosquitto answers "not
    // authorized" and may close the connection).
    let theirs = format!("{}/commands/{}/{}/result", r.root, b.username, cmd.id);
    let r_theirs = dev_a
        .try_publish(&theirs, r#"{"status": "ok"}"#, false)
        .await;
    assert!(
        matches!(r_theirs, Ok(PubAckReason::NotAuthorized) | Err(_)),
        "{r_theirs:?}"
    );
    // On its own topic with B's command id: the registry refuses and
    // counts it.
    let refused = r#"iot_registry_command_answers_refused_total{reason="not_its_command"}"#;
    let before = counter(&r, refused).await;
    let mut dev_a = Device5::connect(&a, &format!("c-{}", kit::unique())).await;
    let own = format!("{}/commands/{}/{}/result", r.root, a.username, cmd.id);
    assert_eq!(
        dev_a.publish(&own, r#"{"status": "ok"}"#, false).await,
        PubAckReason::Success
    );
    kit::eventually("the refusal counted", WAIT, || async {
        (counter(&r, refused).await >= before + 1.0).then_some(())
    })
    .await;
    let still = api
        .get_command(v1::GetCommandRequest { id: cmd.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.status_code, "sent");
    assert!(still.result_json.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn desired_state_is_versioned_retained_and_reported_back() {
    let r = Registry::start().await;
    let mut api = commands(&r, Scope::Admin).await;
    let (d, creds) = device(&r, "").await;
    let set = |version: u64, json: &str| v1::SetDesiredStateRequest {
        device_id: d.id.clone(),
        desired_json: json.into(),
        expected_version: version,
    };
    let first = api
        .set_desired_state(set(0, r#"{"read_interval": 30}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.desired_version, 1);
    let second = api
        .set_desired_state(set(1, r#"{"read_interval": 10, "max_temp": 80}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.desired_version, 2);
    // A writer that read version 1 is refused.
    let stale = api
        .set_desired_state(set(1, r#"{"read_interval": 99}"#))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");
    let not_object = api.set_desired_state(set(2, "[1]")).await.unwrap_err();
    assert_eq!(not_object.code(), tonic::Code::InvalidArgument);

    kit::eventually("the broker holds version 2", WAIT, || {
        let mut api = api.clone();
        let id = d.id.clone();
        async move {
            let s = api
                .get_device_state(v1::GetDeviceStateRequest { device_id: id })
                .await
                .unwrap()
                .into_inner();
            (s.published_version == 2).then_some(())
        }
    })
    .await;
    // A device connecting later gets it at once: retained.
    let mut dev = Device5::connect(&creds, &format!("c-{}", kit::unique())).await;
    let topic = format!("{}/state/{}/desired", r.root, creds.username);
    assert!(dev.subscribe(&topic).await);
    let msg = dev.next(WAIT).await.expect("the retained desired state");
    assert!(msg.retain);
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"version": 2, "state": {"read_interval": 10, "max_temp": 80}})
    );

    let reported = format!("{}/state/{}/reported", r.root, creds.username);
    assert_eq!(
        dev.publish(&reported, r#"{"read_interval": 10}"#, false)
            .await,
        PubAckReason::Success
    );
    let state = kit::eventually("the reported state", WAIT, || {
        let mut api = api.clone();
        let id = d.id.clone();
        async move {
            let s = api
                .get_device_state(v1::GetDeviceStateRequest { device_id: id })
                .await
                .unwrap()
                .into_inner();
            (!s.reported_json.is_empty()).then_some(s)
        }
    })
    .await;
    assert_eq!(state.reported_json, r#"{"read_interval":10}"#);
    assert!(state.reported_at.is_some() && state.desired_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_owner_sees_none_of_it() {
    let r = Registry::start().await;
    let (owner, other) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let mut mine = commands(&r, Scope::Owner(owner.clone())).await;
    let mut theirs = commands(&r, Scope::Owner(other)).await;
    let (d, _) = device(&r, &owner).await;
    let cmd = send(&mut mine, &d.id, "reboot", 60).await;
    mine.set_desired_state(v1::SetDesiredStateRequest {
        device_id: d.id.clone(),
        desired_json: r#"{"a": 1}"#.into(),
        expected_version: 0,
    })
    .await
    .unwrap();
    let nf = |s: tonic::Status| assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");
    nf(theirs
        .get_command(v1::GetCommandRequest { id: cmd.id.clone() })
        .await
        .unwrap_err());
    nf(theirs
        .list_commands(v1::ListCommandsRequest {
            device_id: d.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err());
    nf(theirs
        .send_command(v1::SendCommandRequest {
            device_id: d.id.clone(),
            name: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err());
    nf(theirs
        .get_device_state(v1::GetDeviceStateRequest {
            device_id: d.id.clone(),
        })
        .await
        .unwrap_err());
    nf(theirs
        .set_desired_state(v1::SetDesiredStateRequest {
            device_id: d.id.clone(),
            desired_json: "{}".into(),
            expected_version: 1,
        })
        .await
        .unwrap_err());
    nf(theirs
        .watch_commands(v1::WatchCommandsRequest {
            device_id: d.id.clone(),
        })
        .await
        .unwrap_err());
    // The owner sees its own.
    let got = mine
        .get_command(v1::GetCommandRequest { id: cmd.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.name, "reboot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulated_devices_answer_commands() {
    let r = Registry::start().await;
    let mut api = commands(&r, Scope::Admin).await;
    let (host, port) = kit::mqtt_addr();
    let (user, password) = kit::mqtt_account("publisher");
    let tls = kit::pki::operator();
    let prefix = format!("sim-{}", kit::unique());
    let args = iotctl::simulate::Args {
        registry_url: r.url(),
        mqtt_host: host,
        mqtt_port: port,
        mqtt_username: Some(user),
        mqtt_password: Some(password),
        mqtt_tls: Default::default(),
        grpc_tls: iotctl::grpc_tls::GrpcTlsArgs {
            grpc_cert: tls.cert,
            grpc_key: tls.key,
            grpc_ca: tls.ca,
        },
        topic_prefix: format!("{}/sensors", r.root),
        batch_prefix: format!("{}/batches", r.root),
        senml_prefix: format!("{}/senml", r.root),
        devices: 3,
        sensors: 1,
        device_prefix: prefix.clone(),
        rate: 2.0,
        rate_per_device: None,
        qos: 1,
        form: iotctl::simulate::Form::Single,
        batch_size: 1,
        duration: 15,
        count: 0,
        spike_ratio: 0.0,
        connections: 1,
        max_in_flight: 10,
        quiet: true,
        answer_commands: true,
        registered: false,
        commands_root: format!("{}/commands", r.root),
    };
    // The simulator publishes readings only once its responders are
    // subscribed: the first reading at the broker says they are.
    let (host, port) = kit::mqtt_addr();
    let (gw_user, gw_password) = kit::mqtt_account("gateway");
    let mut opts = rumqttc::MqttOptions::new(format!("watch-{}", kit::unique()), host, port);
    opts.set_credentials(gw_user, gw_password);
    let (watcher, mut events) = rumqttc::AsyncClient::new(opts, 16);
    watcher
        .subscribe(format!("{}/sensors/#", r.root), rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    let subscribed = tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) =
                events.poll().await.unwrap()
            {
                return;
            }
        }
    });
    subscribed.await.unwrap();
    let run = tokio::spawn(iotctl::simulate::simulate(args));
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)) =
                events.poll().await.unwrap()
            {
                return;
            }
        }
    })
    .await
    .expect("the simulator publishes");
    let sent = send(&mut api, &format!("{prefix}-0002"), "blink", 30).await;
    let done = reaches(&api, &sent.id, CommandStatus::Succeeded).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&done.result_json).unwrap(),
        serde_json::json!({"name": "blink", "echo": {"position": 40}})
    );
    assert!(done.delivered_at.is_some());
    let summary = run.await.unwrap().unwrap();
    assert!(summary.messages > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_accepted_while_the_broker_is_unreachable_is_published_after_a_restart() {
    let db = kit::migrated_database().await;
    let root = format!("t{}", kit::unique());
    let start = |port: Option<u16>| {
        let mut config = kit::platform::registry_config(&db, &root);
        if let Some(port) = port {
            config.broker.port = port;
        }
        let shutdown = iot_runtime::CancellationToken::new();
        async move {
            let running = device_registry::start(config, shutdown.clone())
                .await
                .unwrap();
            (running, shutdown)
        }
    };
    let client = |addr: std::net::SocketAddr| async move {
        iot_proto::commands_client(
            format!("http://{addr}"),
            Scope::Admin,
            &kit::pki::operator(),
        )
        .await
        .unwrap()
    };
    // A device, with its account, subscribed on a persistent session.
    let (first, stop) = start(None).await;
    let d = iot_proto::registry_client(
        format!("http://{}", first.grpc_addr),
        Scope::Admin,
        &kit::pki::operator(),
    )
    .await
    .unwrap()
    .create_device(CreateDeviceRequest {
        device_id: format!("cmd-{}", kit::unique()),
        name: "valve".into(),
        device_type: "valve".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    let creds = d.credentials.clone().unwrap();
    let client_id = format!("c-{}", kit::unique());
    let mut dev = Device5::connect(&creds, &client_id).await;
    assert!(
        dev.subscribe(&format!("{root}/commands/{}/+", creds.username))
            .await
    );
    dev.leave().await;
    stop.cancel();
    first.wait().await.unwrap();

    // A registry that cannot reach the broker still accepts the command:
    // stored, queued, and it stays so.
    let (second, stop) = start(Some(kit::free_port())).await;
    let mut api = client(second.grpc_addr).await;
    let sent = send(&mut api, &d.id, "close", 120).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = api
        .get_command(v1::GetCommandRequest {
            id: sent.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.status_code, "queued");
    stop.cancel();
    second.wait().await.unwrap();

    // Restarted with the broker back: the command goes out and round trips.
    let (third, stop) = start(None).await;
    let api = client(third.grpc_addr).await;
    let mut dev = Device5::connect(&creds, &client_id).await;
    let msg = dev.next(WAIT).await.expect("the queued command arrives");
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["id"], sent.id.as_str());
    let response = msg.properties.unwrap().response_topic.unwrap();
    dev.publish(&response, r#"{"status": "ok"}"#, false).await;
    reaches(&api, &sent.id, CommandStatus::Succeeded).await;
    stop.cancel();
    third.wait().await.unwrap();
}
