//! Rules in the rule language: per owner, with durations and
//! hysteresis, across an engine restart and over replicas.

use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1;
use iot_testkit as kit;
use iot_testkit::Platform;

use crate::support::*;

/// The documented low-battery rule, in the rule language.
fn low_battery() -> v1::Rule {
    v1::Rule {
        name: "low_battery".into(),
        condition: "sensor_name == \"battery\" AND value < 20".into(),
        severity: "critical".into(),
        message: Some("battery low".into()),
        ..Default::default()
    }
}

/// Above 100 for 2 s, clear below 95.
fn too_hot() -> v1::Rule {
    v1::Rule {
        name: "too_hot".into(),
        condition: "sensor_name == \"temperature\" AND value > 100".into(),
        clear_condition: Some("value < 95".into()),
        for_secs: 2,
        severity: "warning".into(),
        ..Default::default()
    }
}

/// A platform with an alert-engine, one device of the nil owner (devices
/// created without an owner are its), and that owner's low-battery rule.
struct LowBattery {
    p: Platform,
    _engine: alert_engine::Running,
    url: String,
    api: iot_proto::AlertsClient,
    dev: v1::Device,
    low: v1::Rule,
    /// Readings are timed from here (five minutes ago).
    t0: chrono::DateTime<chrono::Utc>,
}

impl LowBattery {
    async fn start() -> Self {
        let p = Platform::start().await;
        let engine = p.start_alert_engine(|_| {}).await;
        let url = format!("http://{}", engine.grpc_addr);
        let owner = uuid::Uuid::nil().to_string();
        let mut api = iot_proto::alerts_client(
            url.clone(),
            Scope::Owner(owner.clone()),
            &iot_testkit::pki::operator(),
        )
        .await
        .unwrap();
        let dev = p
            .create_device(&format!("rules-{}", kit::unique()), "active")
            .await;
        let low = api.create_rule(low_battery()).await.unwrap().into_inner();
        assert_eq!(low.owner_id, owner);
        Self {
            p,
            _engine: engine,
            url,
            api,
            dev,
            low,
            t0: chrono::Utc::now() - chrono::TimeDelta::seconds(300),
        }
    }

    /// `s` seconds after `t0`.
    fn at(&self, s: i64) -> String {
        (self.t0 + chrono::TimeDelta::seconds(s)).to_rfc3339()
    }

    /// Publishes the device's reading of `sensor` taken at `t`.
    async fn publish(&self, sensor: &str, v: f64, t: String) {
        let topic = format!("{}/{}/{sensor}", self.p.prefix, self.dev.device_id);
        kit::publish_all(&[(
            topic,
            format!(r#"{{"value": {v}, "timestamp": "{t}"}}"#).into_bytes(),
        )])
        .await;
    }

    /// The engine picks rules up within 2 s: publishes a low battery
    /// reading until the alert appears.
    async fn raised(&self) -> v1::Alert {
        let mut k = 0;
        kit::eventually("low battery raised", Duration::from_secs(30), || {
            k += 1;
            let t = self.at(k);
            async move {
                self.publish("battery", 15.0, t).await;
                let a = alerts(&self.url, &self.dev.id).await;
                a.into_iter().find(|a| a.alert_type == "low_battery")
            }
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_are_checked_unique_by_name_and_hidden_from_other_owners() {
    let p = Platform::start().await;
    let engine = p.start_alert_engine(|_| {}).await;
    let url = format!("http://{}", engine.grpc_addr);
    // Devices created without an owner belong to the nil owner.
    let owner = uuid::Uuid::nil().to_string();
    let mut api = iot_proto::alerts_client(
        url.clone(),
        Scope::Owner(owner.clone()),
        &iot_testkit::pki::operator(),
    )
    .await
    .unwrap();
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

    // The documented low-battery rule; and "above 100 for
    // 2 s, clear below 95".
    let low = api.create_rule(low_battery()).await.unwrap().into_inner();
    assert_eq!(low.owner_id, owner);
    api.create_rule(too_hot()).await.unwrap();
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
    let mut other = iot_proto::alerts_client(
        url.clone(),
        Scope::Owner(uuid::Uuid::new_v4().to_string()),
        &iot_testkit::pki::operator(),
    )
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
    p.stop().await;
}

/// The documented low-battery rule: its alert carries the
/// rule's severity and message, and deleting the rule resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rule_raises_its_alert_with_its_message_and_deleting_it_resolves_it() {
    let r = LowBattery::start().await;
    let low_alert = r.raised().await;
    assert_eq!(low_alert.severity, "critical");
    assert_eq!(low_alert.rule_id, r.low.id);
    assert_eq!(low_alert.message.as_deref(), Some("battery low"));
    // Deleting a rule resolves its open alerts.
    r.api
        .clone()
        .delete_rule(v1::DeleteRuleRequest {
            id: r.low.id.clone(),
        })
        .await
        .unwrap();
    let of_low: Vec<_> = alerts(&r.url, &r.dev.id)
        .await
        .into_iter()
        .filter(|a| a.alert_type == "low_battery")
        .collect();
    assert!(!of_low.is_empty() && of_low.iter().all(|a| a.state == "resolved"));
    r.p.stop().await;
}

/// "Above 100 for 2 s, clear below 95": not raised before the condition
/// held for 2 s, kept open inside the hysteresis band, resolved below it,
/// one alert for the whole episode. Low-battery alerts show how far the
/// engine has read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duration_rule_waits_out_its_duration_and_clears_below_its_hysteresis() {
    let r = LowBattery::start().await;
    let hot = r
        .api
        .clone()
        .create_rule(too_hot())
        .await
        .unwrap()
        .into_inner();
    r.raised().await;
    let (url, dev) = (&r.url, &r.dev);
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
    r.publish("temperature", 101.0, r.at(100)).await;
    r.publish("temperature", 101.0, r.at(101)).await;
    // The battery reading after them tells when the engine got that far.
    r.publish("battery", 14.0, r.at(101)).await;
    caught_up("14").await;
    assert_eq!(open_hot().await, 0, "held 1 s of 2: not raised yet");
    r.publish("temperature", 101.0, r.at(103)).await;
    kit::eventually(
        "too_hot raised after 2 s",
        Duration::from_secs(30),
        || async { (open_hot().await == 1).then_some(()) },
    )
    .await;
    // Hysteresis: 97 is not above 100 but not below 95: it stays open.
    r.publish("temperature", 97.0, r.at(104)).await;
    r.publish("battery", 13.0, r.at(104)).await;
    caught_up("13").await;
    assert_eq!(open_hot().await, 1, "97 is inside the hysteresis band");
    r.publish("temperature", 94.0, r.at(105)).await;
    kit::eventually(
        "too_hot resolved below 95",
        Duration::from_secs(30),
        || async { (open_hot().await == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        alerts(url, &dev.id)
            .await
            .iter()
            .filter(|a| a.rule_id == hot.id)
            .count(),
        1,
        "one alert for the whole episode"
    );
    r.p.stop().await;
}

/// A duration rule's episode survives a restart: the restarted engine
/// goes on counting from where the condition began to hold, and does not
/// take a condition that stopped holding for held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duration_rules_episode_survives_an_engine_restart() {
    let p = Platform::start().await;
    let group = format!("alerts-{}", kit::unique());
    let first = p.shutdown.child_token();
    let engine = p
        .start_alert_engine_until(first.clone(), |c| c.group_id = group.clone())
        .await;
    let mut api = iot_proto::alerts_client(
        format!("http://{}", engine.grpc_addr),
        Scope::Admin,
        &iot_testkit::pki::operator(),
    )
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
    p.stop().await;
}

/// Two replicas in one consumer group split the readings and still raise
/// one alert per condition, redelivered readings included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engine_replicas_raise_one_alert_per_condition() {
    let p = Platform::start().await;
    let group = format!("alerts-{}", kit::unique());
    let first = p.start_alert_engine(|c| c.group_id = group.clone()).await;
    let url = format!("http://{}", first.grpc_addr);
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
    // A second replica joins the group; the partitions are split.
    let second = p.start_alert_engine(|c| c.group_id = group.clone()).await;
    let mut api =
        iot_proto::alerts_client(url.clone(), Scope::Admin, &iot_testkit::pki::operator())
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
    let second_before = evaluated(&second).await;
    // Both replicas pick the rule up within 2 s and the group settles
    // (the second gets its partitions): publish every device's reading
    // again, which is what a redelivery looks like, until every device
    // has its alert and the second replica has evaluated some of them.
    kit::eventually(
        "every device raised, by both replicas",
        Duration::from_secs(60),
        || {
            let (fleet, overpressure, publish) = (&fleet, &overpressure, &publish);
            let (evaluated, second) = (&evaluated, &second);
            async move {
                for d in fleet {
                    publish(d, "pressure", 10.0, 20).await;
                }
                let mut all = true;
                for d in fleet {
                    all &= !overpressure(d).await.is_empty();
                }
                (all && evaluated(second).await > second_before).then_some(())
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
