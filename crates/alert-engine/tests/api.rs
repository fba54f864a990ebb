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
    let db = kit::migrated_database().await;
    let pool = iot_db::pool(&db, 4).unwrap();
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let service =
        v1::alerts_server::AlertsServer::new(alert_engine::AlertsService::new(pool, stop.clone()));
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
        iot_proto::alerts_client(self.url.clone(), Scope::Admin)
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
