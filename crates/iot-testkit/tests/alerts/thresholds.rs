//! Threshold alerts from device configs (MQTT → gateway → Kafka →
//! alert-engine → device_alerts), and what the alerts API lets whom do
//! with them.

use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1::{self, CreateDeviceRequest, ListAlertsRequest};
use iot_testkit as kit;
use iot_testkit::Platform;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_max_30_threshold_raises_one_warning_seen_again_until_resolved() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let url = format!("http://{}", engine.grpc_addr);
    let mut registry = p.registry_client(Scope::Admin).await;
    let create = |id: &str| with_max_30(id, "temperature_sensor");

    // Threshold max 30: a reading of 35 gives exactly one alert of
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
    assert_eq!(raised[0].alert_type, "threshold_exceeded");
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
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lowered_threshold_applies_to_the_next_reading_without_a_restart() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let url = format!("http://{}", engine.grpc_addr);
    let mut registry = p.registry_client(Scope::Admin).await;
    let create = |id: &str| with_max_30(id, "temperature_sensor");

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
    p.stop().await;
}

/// Scoped to an owner: the device's owner (nil: created without one)
/// sees the alert; another owner neither sees, counts nor acts on it; a
/// caller without a scope gets nothing; bad arguments name their field
/// and an unknown alert is NotFound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_alerts_api_refuses_other_owners_callers_without_scope_and_bad_arguments() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let url = format!("http://{}", engine.grpc_addr);
    let (dev, alert) = open_alert(&p, &url).await;
    let nil = uuid::Uuid::nil().to_string();
    assert_eq!(alert.owner_id, nil);
    let only_open = || ListAlertsRequest {
        only_open: true,
        device_uuids: vec![dev.id.clone()],
        ..Default::default()
    };
    for (owner, expect) in [(nil, 1), (uuid::Uuid::new_v4().to_string(), 0)] {
        let mut c = iot_proto::alerts_client(
            url.clone(),
            Scope::Owner(owner),
            &iot_testkit::pki::operator(),
        )
        .await
        .unwrap();
        let listed = c.list_alerts(only_open()).await.unwrap().into_inner();
        assert_eq!(listed.alerts.len(), expect);
        let counted = c.count_alerts(only_open()).await.unwrap().into_inner();
        assert_eq!(counted.count, expect as u64);
        if expect == 0 {
            let err = c
                .acknowledge_alert(v1::AlertActionRequest {
                    id: alert.id.clone(),
                    by: uuid::Uuid::new_v4().to_string(),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound);
        }
    }
    let mut unscoped = v1::alerts_client::AlertsClient::new(kit::pki::channel(&url).await);
    let err = unscoped.list_alerts(only_open()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let mut api =
        iot_proto::alerts_client(url.clone(), Scope::Admin, &iot_testkit::pki::operator())
            .await
            .unwrap();

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
async fn an_alert_is_acknowledged_once_and_then_resolved_by_hand() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let url = format!("http://{}", engine.grpc_addr);
    let (dev, alert) = open_alert(&p, &url).await;
    // Open → acknowledged (by whom, when) → resolved by hand.
    let mut api =
        iot_proto::alerts_client(url.clone(), Scope::Admin, &iot_testkit::pki::operator())
            .await
            .unwrap();
    let (alice, bob) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let ack = |by: uuid::Uuid| v1::AlertActionRequest {
        id: alert.id.clone(),
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
            device_uuid: Some(dev.id.clone()),
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
            id: alert.id.clone(),
            by: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.state, "resolved");
    let open = api
        .list_alerts(ListAlertsRequest {
            device_uuid: Some(dev.id.clone()),
            only_open: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert!(open.is_empty());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_device_goes_offline_and_its_next_reading_resolves_it() {
    // The gateway's shipped activity flush (every 5 s).
    let p = Platform::start().await;
    // Offline by the platform's definition: 5 missed 2-second intervals,
    // at least 10 s.
    // alert-engine as shipped: it checks silence every 5 s.
    let engine = p.start_alert_engine(|_| {}).await;
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
        started.elapsed() >= Duration::from_secs(10),
        "not before 5 x 2 s"
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
    let mut api =
        iot_proto::alerts_client(url.clone(), Scope::Admin, &iot_testkit::pki::operator())
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
