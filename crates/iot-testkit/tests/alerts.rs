//! Threshold alerts over the real components: MQTT → gateway → Kafka →
//! alert-engine (its own consumer group) → device_alerts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1::{self, CreateDeviceRequest, ListAlertsRequest};
use iot_testkit as kit;
use iot_testkit::Platform;

async fn alerts(url: &str, device: &str) -> Vec<v1::Alert> {
    let mut c = iot_proto::alerts_client(url.to_owned(), Scope::Admin)
        .await
        .unwrap();
    c.list_alerts(ListAlertsRequest {
        device_uuid: Some(device.to_owned()),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .alerts
}

/// A device whose temperature may be at most 30 (the spec's threshold).
fn with_max_30(id: &str, device_type: &str) -> CreateDeviceRequest {
    CreateDeviceRequest {
        device_id: id.into(),
        name: id.into(),
        device_type: device_type.into(),
        config: Some(v1::DeviceConfig {
            alert_threshold_json: Some(r#"{"temperature": {"max": 30}}"#.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_specs_threshold_test_and_a_config_change_without_restart() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let url = format!("http://{}", engine.grpc_addr);
    let mut registry = p.registry_client(Scope::Admin).await;
    let create = |id: &str| with_max_30(id, "temperature_sensor");

    // The spec: threshold max 30, a reading of 35 gives exactly one alert of
    // severity warning for that device.
    let hot_id = format!("hot-{}", kit::unique());
    let hot = registry
        .create_device(create(&hot_id))
        .await
        .unwrap()
        .into_inner();
    let topic = format!("{}/{hot_id}/temperature", p.prefix);
    kit::publish_all(&[(topic.clone(), br#"{"value": 35}"#.to_vec())]).await;
    let raised = kit::eventually("alert raised", Duration::from_secs(30), || async {
        let a = alerts(&url, &hot.id).await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].severity, "warning");
    assert_eq!(raised[0].alert_type, "threshold_max");
    assert_eq!(raised[0].value.as_deref(), Some("35"));
    assert_eq!(raised[0].threshold.as_deref(), Some("30"));
    assert_eq!(raised[0].device_uuid, hot.id);

    // Still too hot: the same alert, seen again; back to normal: resolved.
    // (One message at a time: the gateway handles a client's in-flight
    // messages in parallel, so their order on Kafka is not guaranteed.)
    kit::publish_all(&[(topic.clone(), br#"{"value": 36}"#.to_vec())]).await;
    kit::eventually("seen again", Duration::from_secs(30), || async {
        let a = alerts(&url, &hot.id).await;
        (a.len() == 1 && a[0].occurrences == 2).then_some(())
    })
    .await;
    kit::publish_all(&[(topic.clone(), br#"{"value": 25}"#.to_vec())]).await;
    let resolved = kit::eventually("alert resolved", Duration::from_secs(30), || async {
        let a = alerts(&url, &hot.id).await;
        (a.len() == 1 && a[0].resolved_at.is_some()).then_some(a)
    })
    .await;
    assert_eq!(resolved[0].occurrences, 2);

    // The threshold is lowered while everything runs: the next reading of
    // 25 raises an alert, no restart.
    let cool_id = format!("cool-{}", kit::unique());
    let cool = registry
        .create_device(create(&cool_id))
        .await
        .unwrap()
        .into_inner();
    let cool_topic = format!("{}/{cool_id}/temperature", p.prefix);
    kit::publish_all(&[(cool_topic.clone(), br#"{"value": 25}"#.to_vec())]).await;
    let db = kit::connect(&p.db).await;
    let uuid = uuid::Uuid::parse_str(&cool.id).unwrap();
    kit::eventually("first reading through", Duration::from_secs(30), || async {
        (kit::device_rows(&db, uuid).await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(alerts(&url, &cool.id).await.is_empty());
    registry
        .update_device_config(v1::UpdateDeviceConfigRequest {
            id: cool.id.clone(),
            alert_threshold_json: Some(r#"{"temperature": {"max": 20}}"#.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    kit::publish_all(&[(cool_topic, br#"{"value": 25}"#.to_vec())]).await;
    let a = kit::eventually(
        "alert after the change",
        Duration::from_secs(30),
        || async {
            let a = alerts(&url, &cool.id).await;
            (!a.is_empty()).then_some(a)
        },
    )
    .await;
    assert_eq!(a[0].threshold.as_deref(), Some("20"));
    assert_eq!(a[0].state, "open");

    // Scoped to an owner: the device's owner (nil: created without one)
    // sees the alert; another owner neither sees, counts nor acts on it.
    let nil = uuid::Uuid::nil().to_string();
    assert_eq!(a[0].owner_id, nil);
    let only_open = || ListAlertsRequest {
        only_open: true,
        device_uuids: vec![cool.id.clone()],
        ..Default::default()
    };
    for (owner, expect) in [(nil, 1), (uuid::Uuid::new_v4().to_string(), 0)] {
        let mut c = iot_proto::alerts_client(url.clone(), Scope::Owner(owner))
            .await
            .unwrap();
        let listed = c.list_alerts(only_open()).await.unwrap().into_inner();
        assert_eq!(listed.alerts.len(), expect);
        let counted = c.count_alerts(only_open()).await.unwrap().into_inner();
        assert_eq!(counted.count, expect as u64);
        if expect == 0 {
            let err = c
                .acknowledge_alert(v1::AlertActionRequest {
                    id: a[0].id.clone(),
                    by: uuid::Uuid::new_v4().to_string(),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound);
        }
    }
    let mut unscoped = v1::alerts_client::AlertsClient::connect(url.clone())
        .await
        .unwrap();
    let err = unscoped.list_alerts(only_open()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Open → acknowledged (by whom, when) → resolved by hand.
    let mut api = iot_proto::alerts_client(url.clone(), Scope::Admin)
        .await
        .unwrap();
    let (alice, bob) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let ack = |by: uuid::Uuid| v1::AlertActionRequest {
        id: a[0].id.clone(),
        by: by.to_string(),
    };
    let acked = api
        .acknowledge_alert(ack(alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.state, "acknowledged");
    assert_eq!(acked.acknowledged_by, Some(alice.to_string()));
    assert!(acked.acknowledged_at.is_some());
    let again = api.acknowledge_alert(ack(bob)).await.unwrap().into_inner();
    assert_eq!(
        again.acknowledged_by,
        Some(alice.to_string()),
        "the first one stays"
    );
    let listed = api
        .list_alerts(ListAlertsRequest {
            device_uuid: Some(cool.id.clone()),
            state: Some("acknowledged".into()),
            severity: Some("warning".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(listed.len(), 1);
    let resolved = api
        .resolve_alert(v1::AlertActionRequest {
            id: a[0].id.clone(),
            by: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.state, "resolved");
    let open = api
        .list_alerts(ListAlertsRequest {
            device_uuid: Some(cool.id.clone()),
            only_open: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert!(open.is_empty());

    // Bad arguments name their field; an unknown alert is NotFound.
    let e = api
        .acknowledge_alert(v1::AlertActionRequest {
            id: "nope".into(),
            by: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("id:") && e.message().contains("by:"),
        "{e:?}"
    );
    let e = api
        .resolve_alert(v1::AlertActionRequest {
            id: uuid::Uuid::new_v4().to_string(),
            by: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = api
        .list_alerts(ListAlertsRequest {
            state: Some("sleeping".into()),
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("state:") && e.message().contains("limit:"),
        "{e:?}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_device_goes_offline_and_its_next_reading_resolves_it() {
    let p = Platform::start_tuned(kit::kafka_config(), |c| c.activity_flush_secs = 1).await;
    // Offline after two missed 2-second intervals.
    let engine = p
        .start_alert_engine(|c| {
            c.offline = alert_engine::OfflineConfig {
                missed_intervals: 2,
                min_secs: 1,
                check_secs: 1,
                ..Default::default()
            };
        })
        .await;
    let url = format!("http://{}", engine.grpc_addr);
    let mut registry = p.registry_client(Scope::Admin).await;
    let id = format!("quiet-{}", kit::unique());
    let dev = registry
        .create_device(CreateDeviceRequest {
            device_id: id.clone(),
            name: id.clone(),
            device_type: "temperature_sensor".into(),
            config: Some(v1::DeviceConfig {
                read_interval: 2,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let topic = format!("{}/{id}/temperature", p.prefix);
    let started = std::time::Instant::now();
    kit::publish_all(&[(topic.clone(), br#"{"value": 20}"#.to_vec())]).await;
    let offline = kit::eventually("offline raised", Duration::from_secs(30), || async {
        let a = alerts(&url, &dev.id).await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "not before 2 x 2 s"
    );
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].alert_type, "device_offline");
    assert_eq!(offline[0].state, "open");
    // Silence goes on: still one alert.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alerts(&url, &dev.id).await.len(), 1);

    kit::publish_all(&[(topic, br#"{"value": 21}"#.to_vec())]).await;
    kit::eventually("offline resolved", Duration::from_secs(30), || async {
        let a = alerts(&url, &dev.id).await;
        (a.len() == 1 && a[0].state == "resolved").then_some(())
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_alert_change_reaches_the_stream_and_the_alerts_topic() {
    let p = Platform::start().await;
    let alerts_topic = format!("test.alerts.{}", kit::unique());
    let engine = p
        .start_alert_engine(|c| c.alerts_topic = alerts_topic.clone())
        .await;
    let url = format!("http://{}", engine.grpc_addr);
    let mut registry = p.registry_client(Scope::Admin).await;
    let id = format!("hot-{}", kit::unique());
    let dev = registry
        .create_device(with_max_30(&id, "temperature_sensor"))
        .await
        .unwrap()
        .into_inner();
    // A subscriber of this device's alerts, from now on.
    let mut api = iot_proto::alerts_client(url.clone(), Scope::Admin)
        .await
        .unwrap();
    let mut stream = api
        .subscribe_alerts(v1::SubscribeAlertsRequest {
            device_uuid: Some(dev.id.clone()),
            resume_after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let topic = format!("{}/{id}/temperature", p.prefix);
    async fn next(s: &mut tonic::Streaming<v1::AlertEvent>) -> v1::AlertEvent {
        tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .unwrap()
    }
    let sync = next(&mut stream).await;
    assert_eq!((sync.kind.as_str(), sync.alert), ("sync", None));
    kit::publish_all(&[(topic.clone(), br#"{"value": 35}"#.to_vec())]).await;
    let raised = next(&mut stream).await;
    assert!(raised.resume_after > sync.resume_after);
    assert_eq!(raised.kind, "raised");
    let alert = raised.alert.unwrap();
    assert_eq!(
        (alert.device_uuid.as_str(), alert.state.as_str()),
        (dev.id.as_str(), "open")
    );

    api.acknowledge_alert(v1::AlertActionRequest {
        id: alert.id.clone(),
        by: uuid::Uuid::new_v4().to_string(),
    })
    .await
    .unwrap();
    let acked = next(&mut stream).await;
    assert_eq!(acked.kind, "acknowledged");
    assert!(acked.resume_after > raised.resume_after);

    kit::publish_all(&[(topic, br#"{"value": 25}"#.to_vec())]).await;
    let resolved = next(&mut stream).await;
    assert_eq!(resolved.kind, "resolved");
    assert_eq!(resolved.alert.unwrap().state, "resolved");

    // The same three changes, in order, on the alerts topic.
    let records = kit::read_topic(&alerts_topic, 3, Duration::from_secs(30)).await;
    let kinds: Vec<String> = records
        .iter()
        .map(|(key, b)| {
            use iot_proto::Message as _;
            assert_eq!(key.as_deref(), Some(dev.id.as_bytes()));
            v1::AlertEvent::decode(b.as_slice()).unwrap().kind
        })
        .collect();
    assert_eq!(kinds, ["raised", "acknowledged", "resolved"]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_in_the_rule_language_with_durations_hysteresis_and_owners() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let url = format!("http://{}", engine.grpc_addr);
    // Devices created without an owner belong to the nil owner.
    let owner = uuid::Uuid::nil().to_string();
    let mut api = iot_proto::alerts_client(url.clone(), Scope::Owner(owner.clone()))
        .await
        .unwrap();
    let id = format!("rules-{}", kit::unique());
    let dev = p.create_device(&id, "active").await;

    // A rule that does not parse says where.
    let err = api
        .create_rule(v1::Rule {
            name: "broken".into(),
            condition: "sensor_name == \"battery\" AND value <".into(),
            severity: "critical".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("condition: column 37"),
        "{}",
        err.message()
    );

    // The spec's low battery, from the rule language; and "above 100 for
    // 2 s, clear below 95".
    let low = api
        .create_rule(v1::Rule {
            name: "low_battery".into(),
            condition: "sensor_name == \"battery\" AND value < 20".into(),
            severity: "critical".into(),
            message: Some("battery low".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(low.owner_id, owner);
    let hot = api
        .create_rule(v1::Rule {
            name: "too_hot".into(),
            condition: "sensor_name == \"temperature\" AND value > 100".into(),
            clear_condition: Some("value < 95".into()),
            for_secs: 2,
            severity: "warning".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let dup = api
        .create_rule(v1::Rule {
            name: "too_hot".into(),
            condition: "value > 1".into(),
            severity: "info".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);

    // Another owner neither sees nor changes them.
    let mut other =
        iot_proto::alerts_client(url.clone(), Scope::Owner(uuid::Uuid::new_v4().to_string()))
            .await
            .unwrap();
    let theirs = other
        .list_rules(v1::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.rules.is_empty());
    let e = other
        .delete_rule(v1::DeleteRuleRequest { id: low.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    let t0 = chrono::Utc::now() - chrono::TimeDelta::seconds(300);
    let at = |s: i64| (t0 + chrono::TimeDelta::seconds(s)).to_rfc3339();
    let publish = |sensor: &str, v: f64, t: String| {
        let topic = format!("{}/{id}/{sensor}", p.prefix);
        async move {
            kit::publish_all(&[(
                topic,
                format!(r#"{{"value": {v}, "timestamp": "{t}"}}"#).into_bytes(),
            )])
            .await;
        }
    };
    // The engine picks rules up within 2 s: publish until the battery
    // alert appears.
    let mut k = 0;
    let low_alert = kit::eventually("low battery raised", Duration::from_secs(30), || {
        k += 1;
        let (url, dev) = (url.clone(), dev.id.clone());
        let t = at(k);
        async move {
            publish("battery", 15.0, t).await;
            let a = alerts(&url, &dev).await;
            a.into_iter().find(|a| a.alert_type == "low_battery")
        }
    })
    .await;
    assert_eq!(low_alert.severity, "critical");
    assert_eq!(low_alert.rule_id, low.id);
    assert_eq!(low_alert.message.as_deref(), Some("battery low"));

    // 101 at 100 s and 101 s: held 1 s, not yet; 101 at 103 s: held 3 s.
    let open_hot = || {
        let (url, dev) = (url.clone(), dev.id.clone());
        async move {
            alerts(&url, &dev)
                .await
                .into_iter()
                .filter(|a| a.alert_type == "too_hot" && a.state == "open")
                .count()
        }
    };
    // The engine has evaluated everything published before a battery
    // reading of `v` once the low-battery alert shows that value.
    let caught_up = |v: &'static str| {
        let (url, dev) = (url.clone(), dev.id.clone());
        kit::eventually("the engine caught up", Duration::from_secs(30), move || {
            let (url, dev) = (url.clone(), dev.clone());
            async move {
                let a = alerts(&url, &dev).await;
                a.iter()
                    .any(|a| a.alert_type == "low_battery" && a.value.as_deref() == Some(v))
                    .then_some(())
            }
        })
    };
    publish("temperature", 101.0, at(100)).await;
    publish("temperature", 101.0, at(101)).await;
    // The battery reading after them tells when the engine got that far.
    publish("battery", 14.0, at(101)).await;
    caught_up("14").await;
    assert_eq!(open_hot().await, 0, "held 1 s of 2: not raised yet");
    publish("temperature", 101.0, at(103)).await;
    kit::eventually(
        "too_hot raised after 2 s",
        Duration::from_secs(30),
        || async { (open_hot().await == 1).then_some(()) },
    )
    .await;
    // Hysteresis: 97 is not above 100 but not below 95: it stays open.
    publish("temperature", 97.0, at(104)).await;
    publish("battery", 13.0, at(104)).await;
    caught_up("13").await;
    assert_eq!(open_hot().await, 1, "97 is inside the hysteresis band");
    publish("temperature", 94.0, at(105)).await;
    kit::eventually(
        "too_hot resolved below 95",
        Duration::from_secs(30),
        || async { (open_hot().await == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        alerts(&url, &dev.id)
            .await
            .iter()
            .filter(|a| a.rule_id == hot.id)
            .count(),
        1,
        "one alert for the whole episode"
    );
    // Deleting a rule resolves its open alerts.
    api.delete_rule(v1::DeleteRuleRequest { id: low.id.clone() })
        .await
        .unwrap();
    let of_low: Vec<_> = alerts(&url, &dev.id)
        .await
        .into_iter()
        .filter(|a| a.alert_type == "low_battery")
        .collect();
    assert!(!of_low.is_empty() && of_low.iter().all(|a| a.state == "resolved"));
    p.stop().await;
}

/// A duration rule's episode survives a restart: the restarted engine
/// goes on counting from where the condition began to hold, and does not
/// take a condition that stopped holding for held. Then two replicas in
/// one consumer group split the readings and still raise one alert per
/// condition, redelivered readings included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn episodes_survive_a_restart_and_two_replicas_raise_once() {
    let p = Platform::start().await;
    let group = format!("alerts-{}", kit::unique());
    let first = p.shutdown.child_token();
    let engine = p
        .start_alert_engine_until(first.clone(), |c| c.group_id = group.clone())
        .await;
    let mut api = iot_proto::alerts_client(format!("http://{}", engine.grpc_addr), Scope::Admin)
        .await
        .unwrap();
    let hot = api
        .create_rule(v1::Rule {
            name: "hot_for_10s".into(),
            condition: "sensor_name == \"temperature\" AND value > 100".into(),
            for_secs: 10,
            severity: "warning".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let db = kit::connect(&p.db).await;
    let keep = p
        .create_device(&format!("keep-{}", kit::unique()), "active")
        .await;
    let dip = p
        .create_device(&format!("dip-{}", kit::unique()), "active")
        .await;
    // Whole seconds: the database keeps microseconds.
    let t0 = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() - 300, 0).unwrap();
    let at = |s: i64| t0 + chrono::TimeDelta::seconds(s);
    let publish = |d: &v1::Device, sensor: &str, v: f64, s: i64| {
        let topic = format!("{}/{}/{sensor}", p.prefix, d.device_id);
        let t = at(s).to_rfc3339();
        async move {
            kit::publish_all(&[(
                topic,
                format!(r#"{{"value": {v}, "timestamp": "{t}"}}"#).into_bytes(),
            )])
            .await;
        }
    };
    let episode = |d: &v1::Device| {
        let (db, id) = (&db, uuid::Uuid::parse_str(&d.id).unwrap());
        async move {
            db.query_opt(
                "SELECT since FROM alert_rule_episodes WHERE device_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, chrono::DateTime<chrono::Utc>>(0))
        }
    };
    // The engine picks the rule up within 2 s: publish until recorded.
    kit::eventually(
        "keep's episode recorded",
        Duration::from_secs(30),
        || async {
            publish(&keep, "temperature", 101.0, 0).await;
            episode(&keep).await
        },
    )
    .await;
    publish(&dip, "temperature", 101.0, 0).await;
    kit::eventually(
        "dip's episode recorded",
        Duration::from_secs(30),
        || async { episode(&dip).await },
    )
    .await;
    publish(&dip, "temperature", 99.0, 5).await;
    kit::eventually("dip's episode ended", Duration::from_secs(30), || async {
        episode(&dip).await.is_none().then_some(())
    })
    .await;
    assert_eq!(episode(&keep).await, Some(at(0)));

    // Restart: the same group, a new process's memory. Offsets are
    // committed every second: after 2 s the new engine does not read the
    // readings above again, so only the recorded episode can carry the
    // clock over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.cancel();
    engine.wait().await.unwrap();
    let second = p
        .start_alert_engine_until(p.shutdown.child_token(), |c| c.group_id = group.clone())
        .await;
    let url = format!("http://{}", second.grpc_addr);
    publish(&keep, "temperature", 101.0, 10).await;
    publish(&dip, "temperature", 101.0, 12).await;
    let raised = kit::eventually(
        "keep raised: held from 0 s to 10 s across the restart",
        Duration::from_secs(30),
        || async {
            alerts(&url, &keep.id)
                .await
                .into_iter()
                .find(|a| a.rule_id == hot.id)
        },
    )
    .await;
    assert_eq!(raised.state, "open");
    kit::eventually(
        "dip's new episode recorded",
        Duration::from_secs(30),
        || async { (episode(&dip).await == Some(at(12))).then_some(()) },
    )
    .await;
    assert!(
        alerts(&url, &dip.id).await.is_empty(),
        "dip held only since 12 s: no alert"
    );

    // A second replica joins the group; the partitions are split.
    let third = p
        .start_alert_engine_until(p.shutdown.child_token(), |c| c.group_id = group.clone())
        .await;
    let mut api = iot_proto::alerts_client(url.clone(), Scope::Admin)
        .await
        .unwrap();
    api.create_rule(v1::Rule {
        name: "overpressure".into(),
        condition: "sensor_name == \"pressure\" AND value > 5".into(),
        severity: "critical".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut fleet = Vec::new();
    for i in 0..12 {
        fleet.push(
            p.create_device(&format!("fleet{i}-{}", kit::unique()), "active")
                .await,
        );
    }
    let overpressure = |d: &v1::Device| {
        let (url, id) = (url.clone(), d.id.clone());
        async move {
            alerts(&url, &id)
                .await
                .into_iter()
                .filter(|a| a.alert_type == "overpressure")
                .collect::<Vec<_>>()
        }
    };
    let evaluated = |r: &alert_engine::Running| {
        let admin = r.admin_addr;
        async move {
            kit::metric(admin, "iot_alerts_readings_evaluated_total")
                .await
                .unwrap_or(0)
        }
    };
    let third_before = evaluated(&third).await;
    // Both replicas pick the rule up within 2 s and the group settles
    // (the third gets its partitions): publish every device's reading
    // again, which is what a redelivery looks like, until every device
    // has its alert and the third replica has evaluated some of them.
    kit::eventually(
        "every device raised, by both replicas",
        Duration::from_secs(60),
        || {
            let (fleet, overpressure, publish) = (&fleet, &overpressure, &publish);
            let (evaluated, third) = (&evaluated, &third);
            async move {
                for d in fleet {
                    publish(d, "pressure", 10.0, 20).await;
                }
                let mut all = true;
                for d in fleet {
                    all &= !overpressure(d).await.is_empty();
                }
                (all && evaluated(third).await > third_before).then_some(())
            }
        },
    )
    .await;
    // Two more deliveries of the same readings; once each device's alert
    // has counted them, there is still one alert per device.
    let mut counted = Vec::new();
    for d in &fleet {
        counted.push(overpressure(d).await[0].occurrences);
    }
    for _ in 0..2 {
        for d in &fleet {
            publish(d, "pressure", 10.0, 20).await;
        }
    }
    for (d, before) in fleet.iter().zip(counted) {
        let a = kit::eventually(
            "the redeliveries counted",
            Duration::from_secs(30),
            || async {
                let a = overpressure(d).await;
                a.iter()
                    .map(|a| a.occurrences)
                    .sum::<u64>()
                    .ge(&(before + 2))
                    .then_some(a)
            },
        )
        .await;
        assert_eq!(a.len(), 1, "one alert per condition: {a:?}");
        assert_eq!(a[0].state, "open");
    }
    p.stop().await;
}

/// A local HTTP receiver that answers 500 to its first `fail_first`
/// requests and 200 after; records (signature, event, body) of each.
async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let s = s.clone();
            async move {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut seen = s.lock().unwrap();
                seen.push((h("x-iot-signature"), h("x-iot-event"), body));
                if seen.len() <= fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

/// A webhook receiver that accepts connections and never answers.
async fn hanging_receiver() -> String {
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", hang.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_retry_sign_and_never_slow_evaluation() {
    let p = Platform::start().await;
    let engine = p
        .start_alert_engine(|c| {
            c.webhooks.retry_base_ms = 100;
            c.webhooks.timeout_ms = 1000;
            c.webhooks.max_attempts = 3;
            // The receivers here are on loopback.
            c.webhooks.allow_private_addresses = true;
        })
        .await;
    let url = format!("http://{}", engine.grpc_addr);
    let owner = uuid::Uuid::nil().to_string();
    let mut api = iot_proto::alerts_client(url.clone(), Scope::Owner(owner.clone()))
        .await
        .unwrap();
    // A receiver that fails twice, one that never answers, and another
    // owner's receiver that must hear nothing of this owner's alerts.
    let (good_url, good) = receiver(2).await;
    let hang_url = hanging_receiver().await;
    let (other_url, other) = receiver(0).await;

    let bad = api
        .create_webhook(v1::Webhook {
            url: "ftp://example".into(),
            min_severity: "loud".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("url:") && bad.message().contains("min_severity:"));
    let created = api
        .create_webhook(v1::Webhook {
            url: good_url,
            secret: "s3cret".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.secret, "s3cret");
    let generated = api
        .create_webhook(v1::Webhook {
            url: hang_url,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(generated.secret.len(), 64);
    let mut admin = iot_proto::alerts_client(url.clone(), Scope::Admin)
        .await
        .unwrap();
    admin
        .create_webhook(v1::Webhook {
            url: other_url,
            owner_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut registry = p.registry_client(Scope::Admin).await;
    let id = format!("hook-{}", kit::unique());
    let dev = registry
        .create_device(with_max_30(&id, "boiler"))
        .await
        .unwrap()
        .into_inner();
    let topic = format!("{}/{id}/temperature", p.prefix);
    kit::publish_all(&[(topic.clone(), br#"{"value": 35}"#.to_vec())]).await;
    // Evaluation goes on while one receiver hangs and another fails: the
    // reading back in range resolves the alert at once.
    kit::eventually("alert raised", Duration::from_secs(30), || async {
        (!alerts(&url, &dev.id).await.is_empty()).then_some(())
    })
    .await;
    kit::publish_all(&[(topic, br#"{"value": 25}"#.to_vec())]).await;
    kit::eventually("alert resolved", Duration::from_secs(30), || async {
        let a = alerts(&url, &dev.id).await;
        (a.first().is_some_and(|a| a.state == "resolved")).then_some(())
    })
    .await;

    // The failing receiver gets "raised" (after two 500s) and "resolved".
    let got = kit::eventually("both events delivered", Duration::from_secs(30), || async {
        let g = good.lock().unwrap().clone();
        let events: Vec<&str> = g.iter().skip(2).map(|(_, e, _)| e.as_str()).collect();
        (events.contains(&"raised") && events.contains(&"resolved")).then_some(g)
    })
    .await;
    assert!(got.len() >= 4, "{got:?}");
    // Each body refused with a 500 was sent again, unchanged.
    for (_, _, refused) in &got[..2] {
        assert!(
            got[2..].iter().any(|(_, _, b)| b == refused),
            "not retried: {refused}"
        );
    }
    for (sig, event, body) in &got {
        let want = format!(
            "sha256={}",
            alert_engine::webhooks::signature(b"s3cret", body.as_bytes())
        );
        assert_eq!(*sig, want);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["event"], event.as_str());
        assert_eq!(v["alert"]["device_uuid"], dev.id.as_str());
        assert_eq!(v["alert"]["severity"], "warning");
    }

    // The hanging receiver's deliveries time out, retry and are given up;
    // the listing tells.
    let listed = kit::eventually(
        "hanging deliveries given up",
        Duration::from_secs(60),
        || {
            let mut api = api.clone();
            async move {
                let l = api
                    .list_webhooks(v1::ListWebhooksRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .webhooks;
                l.iter()
                    .any(|w| w.failed == 2 && w.pending == 0)
                    .then_some(l)
            }
        },
    )
    .await;
    assert_eq!(listed.len(), 2, "an owner lists only its own webhooks");
    let hung = listed.iter().find(|w| w.id == generated.id).unwrap();
    assert!(hung.last_error.is_some());
    assert!(hung.secret.is_empty(), "secrets are shown once");
    let ok = listed.iter().find(|w| w.id == created.id).unwrap();
    assert_eq!((ok.delivered, ok.failed, ok.pending), (2, 0, 0));
    assert!(
        other.lock().unwrap().is_empty(),
        "another owner heard nothing"
    );
    assert!(
        kit::metric(
            engine.admin_addr,
            "iot_alerts_webhook_deliveries_total{outcome=\"given_up\"}"
        )
        .await
        .is_some_and(|n| n >= 2)
    );
    p.stop().await;
}

#[tokio::test]
async fn old_webhook_deliveries_are_deleted_pending_ones_kept() {
    let url = kit::migrated_database().await;
    let db = kit::connect(&url).await;
    let hook: uuid::Uuid = db
        .query_one(
            "INSERT INTO alert_webhooks (owner_id, url, secret) VALUES ($1, 'https://example.com/h', 's')
             RETURNING id",
            &[&uuid::Uuid::new_v4()],
        )
        .await
        .unwrap()
        .get(0);
    // (sequence, delivered, given up, created): ages in days.
    for (seq, delivered, failed, created) in [
        (1_i64, Some(40.0_f64), None, 41.0_f64), // delivered long ago: deleted
        (2, None, Some(31.0), 35.0),             // given up long ago: deleted
        (3, Some(2.0), None, 2.0),               // delivered lately: kept
        (4, None, Some(1.0), 3.0),               // given up lately: kept
        (5, None, None, 90.0),                   // still pending: kept
    ] {
        db.execute(
            "INSERT INTO webhook_deliveries (webhook_id, event_seq, body, delivered_at, failed_at, created_at)
             VALUES ($1, $2, '{}', now() - make_interval(days => $3::float8::int),
                     now() - make_interval(days => $4::float8::int),
                     now() - make_interval(days => $5::float8::int))",
            &[&hook, &seq, &delivered, &failed, &created],
        )
        .await
        .unwrap();
    }
    let pool = iot_db::pool(&url, 2).unwrap();
    let keep = Duration::from_secs(30 * 86_400);
    assert_eq!(alert_engine::webhooks::trim(&pool, keep).await.unwrap(), 2);
    let left: Vec<i64> = db
        .query(
            "SELECT event_seq FROM webhook_deliveries ORDER BY event_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [3, 4, 5]);
    assert_eq!(alert_engine::webhooks::trim(&pool, keep).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_owners_hanging_receivers_do_not_hold_up_another_owner() {
    let p = Platform::start().await;
    let db = kit::connect(&p.db).await;
    // Owner A: a receiver that accepts and never answers, with more due
    // deliveries than the engine sends at once. Owner B: one that answers.
    let hang_url = hanging_receiver().await;
    let (good_url, good) = receiver(0).await;
    let webhook = |url: String| {
        let db = &db;
        async move {
            let id: uuid::Uuid = db
                .query_one(
                    "INSERT INTO alert_webhooks (owner_id, url, secret) VALUES ($1, $2, 's') RETURNING id",
                    &[&uuid::Uuid::new_v4(), &url],
                )
                .await
                .unwrap()
                .get(0);
            id
        }
    };
    let (a, b) = (webhook(hang_url).await, webhook(good_url).await);
    // A's deliveries are older, so oldest-first alone would send them all
    // before B's.
    db.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_seq, body, next_attempt_at)
         SELECT $1, i, '{\"event\": \"raised\"}', now() - INTERVAL '1 hour' FROM generate_series(1, 100) i",
        &[&a],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_seq, body) VALUES ($1, 1, '{\"event\": \"raised\"}')",
        &[&b],
    )
    .await
    .unwrap();
    let _engine = p
        .start_alert_engine(|c| {
            c.webhooks.timeout_ms = 60_000;
            c.webhooks.allow_private_addresses = true;
        })
        .await;
    // B's delivery goes out while A's hang (they would for a minute).
    kit::eventually(
        "the other owner's delivery",
        Duration::from_secs(20),
        || async { (!good.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
    let sending: i64 = db
        .query_one(
            "SELECT count(*) FROM webhook_deliveries
             WHERE webhook_id = $1 AND next_attempt_at > now() AND attempts = 0",
            &[&a],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        sending <= 8,
        "{sending} of one owner's deliveries in flight"
    );
}
