//! alert-engine's gRPC API (`iot.v1.Alerts`) on the real database, served
//! on its own, without Kafka or the registry: alerts are written straight
//! into `device_alerts`, as the engine would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_proto::v1::{self, AlertState, Severity};
use iot_proto::{AlertsClient, Message as _, Scope};
use iot_runtime::CancellationToken;
use iot_testkit as kit;
use tonic::Code;
use uuid::Uuid;

/// The Alerts service on a migrated database of its own.
struct Served {
    db: kit::TestDb,
    url: String,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn served() -> Served {
    served_with(alert_engine::Limits::default()).await
}

/// The Alerts service with `limits`, on a migrated database of its own.
async fn served_with(limits: alert_engine::Limits) -> Served {
    let db = kit::migrated_database().await;
    let pool = iot_db::pool(&db, 8).unwrap();
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let service = v1::alerts_server::AlertsServer::new(alert_engine::AlertsService::new(
        pool,
        limits,
        stop.clone(),
    ));
    let until = stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { until.cancelled().await },
            ),
    );
    Served { db, url, stop }
}

impl Served {
    async fn client(&self) -> AlertsClient {
        self.client_as(Scope::Admin).await
    }

    async fn client_as(&self, scope: Scope) -> AlertsClient {
        iot_proto::alerts_client(self.url.clone(), scope, &iot_proto::GrpcTls::default())
            .await
            .unwrap()
    }
}

/// INVALID_ARGUMENT whose one field violation is `field`.
fn names_only(e: &tonic::Status, field: &str) {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let fields = iot_proto::field_violations(e);
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert_eq!(fields[0].0, field, "{fields:?}");
}

/// A rule's severity given as the enum (`severity_code`, beside the text
/// form of release 0.1.0) reads back in both forms; the text alone still
/// works; the two disagreeing is a bad argument naming the enum field.
#[tokio::test]
async fn rule_severity_as_enum_or_text() {
    let s = served().await;
    let mut c = s.client().await;
    let rule = |name: &str| v1::Rule {
        name: name.into(),
        condition: "value > 30".into(),
        owner_id: Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let forms = |r: &v1::Rule| (r.severity.clone(), r.severity_code());

    let created = c
        .create_rule(v1::Rule {
            severity_code: Severity::Critical.into(),
            ..rule("too_hot")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forms(&created), ("critical".into(), Severity::Critical));
    let listed = c
        .list_rules(v1::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(listed.len(), 1);
    assert_eq!(forms(&listed[0]), ("critical".into(), Severity::Critical));

    // The text alone (release 0.1.0's callers).
    let updated = c
        .update_rule(v1::Rule {
            id: created.id.clone(),
            severity: "warning".into(),
            owner_id: created.owner_id.clone(),
            ..rule("too_hot")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forms(&updated), ("warning".into(), Severity::Warning));

    let e = c
        .create_rule(v1::Rule {
            severity: "info".into(),
            severity_code: Severity::Critical.into(),
            ..rule("disagrees")
        })
        .await
        .unwrap_err();
    names_only(&e, "severity_code");
    assert!(e.message().contains("SEVERITY_CRITICAL"), "{e:?}");
    let e = c.create_rule(rule("says_nothing")).await.unwrap_err();
    names_only(&e, "severity");
    let e = c
        .create_rule(v1::Rule {
            severity_code: 42,
            ..rule("out_of_range")
        })
        .await
        .unwrap_err();
    names_only(&e, "severity_code");
    assert_eq!(
        c.list_rules(v1::ListRulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .rules
            .len(),
        1,
        "nothing was written"
    );
}

/// Alerts carry severity and state in both forms, listings filter by
/// either, and an alert event stored by release 0.1.0 (text only) reaches
/// a subscriber in both forms too.
#[tokio::test]
async fn alerts_carry_both_forms() {
    let s = served().await;
    let mut c = s.client().await;
    let db = kit::connect(&s.db).await;
    let owner = Uuid::new_v4();
    let device: Uuid = db
        .query_one(
            "INSERT INTO devices (device_id, name, device_type, owner_id)
             VALUES ('boiler-1', 'Boiler', 'boiler', $1) RETURNING id",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);
    let alert: Uuid = db
        .query_one(
            "INSERT INTO device_alerts (device_id, alert_type, severity, sensor_name, owner_id)
             VALUES ($1, 'threshold_max', 'warning', 'temperature', $2) RETURNING id",
            &[&device, &owner],
        )
        .await
        .unwrap()
        .get(0);
    let forms = |a: &v1::Alert| {
        (
            a.severity.clone(),
            a.severity_code(),
            a.state.clone(),
            a.state_code(),
        )
    };

    let lister = c.clone();
    let list = move |req: v1::ListAlertsRequest| {
        let mut c = lister.clone();
        async move { c.list_alerts(req).await.map(|l| l.into_inner().alerts) }
    };
    let all = list(v1::ListAlertsRequest::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        forms(&all[0]),
        (
            "warning".into(),
            Severity::Warning,
            "open".into(),
            AlertState::Open
        )
    );

    let acked = c
        .acknowledge_alert(v1::AlertActionRequest {
            id: alert.to_string(),
            by: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        forms(&acked),
        (
            "warning".into(),
            Severity::Warning,
            "acknowledged".into(),
            AlertState::Acknowledged
        )
    );

    // Filters by the enum, the text, or both agreeing.
    let count = |severity_code: Option<Severity>, state_code: Option<AlertState>| {
        list(v1::ListAlertsRequest {
            severity_code: severity_code.map(Into::into),
            state_code: state_code.map(Into::into),
            ..Default::default()
        })
    };
    assert_eq!(count(Some(Severity::Warning), None).await.unwrap().len(), 1);
    assert_eq!(
        count(Some(Severity::Critical), None).await.unwrap().len(),
        0
    );
    assert_eq!(
        count(Some(Severity::Warning), Some(AlertState::Acknowledged))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(count(None, Some(AlertState::Open)).await.unwrap().len(), 0);
    let n = c
        .count_alerts(v1::ListAlertsRequest {
            state: Some("acknowledged".into()),
            state_code: Some(AlertState::Acknowledged.into()),
            severity: Some("warning".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 1);
    let e = list(v1::ListAlertsRequest {
        state: Some("open".into()),
        state_code: Some(AlertState::Resolved.into()),
        ..Default::default()
    })
    .await
    .unwrap_err();
    names_only(&e, "state_code");
    let e = list(v1::ListAlertsRequest {
        severity: Some("info".into()),
        severity_code: Some(Severity::Critical.into()),
        ..Default::default()
    })
    .await
    .unwrap_err();
    names_only(&e, "severity_code");

    // An event as release 0.1.0 stored it: text only.
    let mut old = acked.clone();
    old.severity_code = 0;
    old.state_code = 0;
    old.state = "resolved".into();
    let seq: i64 = db
        .query_one(
            "INSERT INTO alert_events (alert_id, device_id, kind, alert)
             VALUES ($1, $2, 'resolved', $3) RETURNING seq",
            &[&alert, &device, &old.encode_to_vec()],
        )
        .await
        .unwrap()
        .get(0);
    let mut events = c
        .subscribe_alerts(v1::SubscribeAlertsRequest {
            device_uuid: None,
            resume_after: u64::try_from(seq - 1).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let sync = events.message().await.unwrap().unwrap();
    assert_eq!(sync.kind, "sync");
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.message())
        .await
        .expect("the stored event is replayed")
        .unwrap()
        .unwrap();
    assert_eq!(event.kind, "resolved");
    assert_eq!(
        forms(&event.alert.unwrap()),
        (
            "warning".into(),
            Severity::Warning,
            "resolved".into(),
            AlertState::Resolved
        )
    );
}

/// RESOURCE_EXHAUSTED naming `quota` (a `limits` setting) and its value,
/// in the message and in the trailers graphql-gateway reads.
fn over_quota(e: &tonic::Status, quota: &str, limit: u32) {
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains(&format!("limits.{quota} is {limit}")),
        "{e:?}"
    );
    assert_eq!(e.metadata().get("iot-quota").unwrap(), quota);
    assert_eq!(
        e.metadata().get("iot-quota-limit").unwrap(),
        limit.to_string().as_str()
    );
}

fn hot(name: &str) -> v1::Rule {
    v1::Rule {
        name: name.into(),
        condition: "value > 30".into(),
        severity: "warning".into(),
        ..Default::default()
    }
}

/// Each owner has its own quota of rules: past it, creating answers
/// RESOURCE_EXHAUSTED; another owner is not affected; deleting one makes
/// room again; an admin creating for an owner meets that owner's quota,
/// and platform-wide rules (no owner) have one quota of their own.
#[tokio::test]
async fn rules_per_owner_are_limited() {
    let s = served_with(alert_engine::Limits {
        rules_per_owner: 3,
        ..Default::default()
    })
    .await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = s.client_as(Scope::Owner(alice.to_string())).await;
    let mut b = s.client_as(Scope::Owner(bob.to_string())).await;
    let mut admin = s.client().await;
    let mut first = None;
    for i in 0..3 {
        let r = a.create_rule(hot(&format!("r{i}"))).await.unwrap();
        first.get_or_insert(r.into_inner().id);
    }
    over_quota(
        &a.create_rule(hot("r3")).await.unwrap_err(),
        "rules_per_owner",
        3,
    );
    // The admin scope creating for Alice counts against Alice's quota.
    let for_alice = v1::Rule {
        owner_id: alice.to_string(),
        ..hot("by_admin")
    };
    over_quota(
        &admin.create_rule(for_alice.clone()).await.unwrap_err(),
        "rules_per_owner",
        3,
    );
    // Bob has a quota of his own; so have platform-wide rules.
    b.create_rule(hot("r0")).await.unwrap();
    for i in 0..3 {
        admin.create_rule(hot(&format!("p{i}"))).await.unwrap();
    }
    over_quota(
        &admin.create_rule(hot("p3")).await.unwrap_err(),
        "rules_per_owner",
        3,
    );
    // Room again after a delete.
    a.delete_rule(v1::DeleteRuleRequest { id: first.unwrap() })
        .await
        .unwrap();
    admin.create_rule(for_alice).await.unwrap();
    let count = |owner: Option<Uuid>| {
        let db = &s.db;
        async move {
            let c = kit::connect(db).await;
            c.query_one(
                "SELECT count(*) FROM alert_rules WHERE owner_id IS NOT DISTINCT FROM $1",
                &[&owner],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    assert_eq!(
        (
            count(Some(alice)).await,
            count(Some(bob)).await,
            count(None).await
        ),
        (3, 1, 3)
    );
}

/// Many concurrent creations for one owner stop at the quota: the count
/// and the insert are one step per owner.
#[tokio::test]
async fn concurrent_creations_do_not_pass_the_quota() {
    let s = served_with(alert_engine::Limits {
        rules_per_owner: 5,
        webhooks_per_owner: 5,
    })
    .await;
    let owner = Uuid::new_v4();
    let c = s.client_as(Scope::Owner(owner.to_string())).await;
    let tries = (0..40).map(|i| {
        let (mut r, mut w) = (c.clone(), c.clone());
        async move {
            let rule = r.create_rule(hot(&format!("c{i}"))).await;
            let hook = w
                .create_webhook(v1::Webhook {
                    url: format!("https://hooks.example.com/{i}"),
                    ..Default::default()
                })
                .await;
            (rule.map(|_| ()), hook.map(|_| ()))
        }
    });
    let results = futures::future::join_all(tries).await;
    let rules = results.iter().filter(|r| r.0.is_ok()).count();
    let hooks = results.iter().filter(|r| r.1.is_ok()).count();
    assert_eq!((rules, hooks), (5, 5));
    for r in &results {
        for e in [&r.0, &r.1].into_iter().filter_map(|x| x.as_ref().err()) {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        }
    }
}

/// Webhooks: each owner's quota; the admin scope names the owner and meets
/// that owner's quota.
#[tokio::test]
async fn webhooks_per_owner_are_limited() {
    let s = served_with(alert_engine::Limits {
        webhooks_per_owner: 2,
        ..Default::default()
    })
    .await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = s.client_as(Scope::Owner(alice.to_string())).await;
    let mut admin = s.client().await;
    let hook = |owner: Option<Uuid>| v1::Webhook {
        url: "https://hooks.example.com/x".into(),
        owner_id: owner.map(|o| o.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    a.create_webhook(hook(None)).await.unwrap();
    admin.create_webhook(hook(Some(alice))).await.unwrap();
    over_quota(
        &a.create_webhook(hook(None)).await.unwrap_err(),
        "webhooks_per_owner",
        2,
    );
    over_quota(
        &admin.create_webhook(hook(Some(alice))).await.unwrap_err(),
        "webhooks_per_owner",
        2,
    );
    admin.create_webhook(hook(Some(bob))).await.unwrap();
    let listed = admin
        .list_webhooks(v1::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(listed.len(), 3);
}
