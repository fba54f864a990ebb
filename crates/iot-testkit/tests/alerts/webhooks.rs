//! Webhooks for alerts: registered per owner, signed, retried, never
//! slowing evaluation nor one owner's deliveries another's; old
//! deliveries trimmed.

use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1;
use iot_testkit as kit;
use iot_testkit::Platform;

use crate::support::*;

/// Registers, as `api`'s owner, a webhook to `signed` with the secret
/// "s3cret" and one to `generated` with a secret the engine makes, and as
/// the admin one of another owner to `other`; the first two as created.
async fn register(
    url: &str,
    api: &mut iot_proto::AlertsClient,
    signed: &str,
    generated: &str,
    other: &str,
) -> (v1::Webhook, v1::Webhook) {
    let created = api
        .create_webhook(v1::Webhook {
            url: signed.into(),
            secret: "s3cret".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.secret, "s3cret");
    let generated = api
        .create_webhook(v1::Webhook {
            url: generated.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(generated.secret.len(), 64);
    let mut admin =
        iot_proto::alerts_client(url.to_owned(), Scope::Admin, &iot_testkit::pki::operator())
            .await
            .unwrap();
    admin
        .create_webhook(v1::Webhook {
            url: other.into(),
            owner_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    (created, generated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_is_checked_its_secret_shown_once_and_listed_to_its_owner() {
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
    register(
        &url,
        &mut api,
        "https://hooks.example/iot",
        "https://hooks.example/iot2",
        "https://hooks.example/other",
    )
    .await;
    let listed = api
        .list_webhooks(v1::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(listed.len(), 2, "an owner lists only its own webhooks");
    assert!(
        listed.iter().all(|w| w.secret.is_empty()),
        "secrets are shown once"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_deliveries_are_signed_retried_and_never_slow_evaluation() {
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
    let mut api = iot_proto::alerts_client(
        url.clone(),
        Scope::Owner(owner.clone()),
        &iot_testkit::pki::operator(),
    )
    .await
    .unwrap();
    // A receiver that fails twice, one that never answers, and another
    // owner's receiver that must hear nothing of this owner's alerts.
    let (good_url, good) = receiver(2).await;
    let hang_url = hanging_receiver().await;
    let (other_url, other) = receiver(0).await;

    let (created, generated) = register(&url, &mut api, &good_url, &hang_url, &other_url).await;

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

/// An owner changes its webhook's URL, minimum severity and secret: the
/// next events go to the new receiver, signed with the new secret. A bad
/// value is refused naming its field, and another owner's update answers
/// NOT_FOUND; neither changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_updated_webhook_delivers_to_its_new_url_and_only_its_owner_may_update_it() {
    let p = Platform::start().await;
    let engine = p
        .start_alert_engine(|c| {
            c.webhooks.retry_base_ms = 100;
            // The receivers here are on loopback.
            c.webhooks.allow_private_addresses = true;
        })
        .await;
    let url = format!("http://{}", engine.grpc_addr);
    let client = |owner: String| {
        let url = url.clone();
        async move {
            iot_proto::alerts_client(url, Scope::Owner(owner), &iot_testkit::pki::operator())
                .await
                .unwrap()
        }
    };
    let mut api = client(uuid::Uuid::nil().to_string()).await;
    let (old_url, old) = receiver(0).await;
    let (new_url, new) = receiver(0).await;
    // Critical only: the warning raised below would not go to it.
    let created = api
        .create_webhook(v1::Webhook {
            url: old_url.clone(),
            secret: "before".into(),
            min_severity: "critical".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let update = |url: &str| v1::UpdateWebhookRequest {
        id: created.id.clone(),
        url: url.into(),
        min_severity: "warning".into(),
        ..Default::default()
    };

    let bad = api
        .update_webhook(update("ftp://hooks.example/iot"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let fields = iot_proto::field_violations(&bad);
    assert_eq!(fields.len(), 1, "{bad:?}");
    assert_eq!(fields[0].0, "url");
    assert!(fields[0].1.contains("not an http(s) URL"), "{bad:?}");
    let bad = api
        .update_webhook(v1::UpdateWebhookRequest {
            min_severity: "loud".into(),
            ..update(&new_url)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let named: Vec<String> = iot_proto::field_violations(&bad)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(named, ["min_severity"], "{bad:?}");

    let mut other = client(uuid::Uuid::new_v4().to_string()).await;
    let refused = other
        .update_webhook(v1::UpdateWebhookRequest {
            rotate_secret: true,
            ..update(&new_url)
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let missing = api
        .update_webhook(v1::UpdateWebhookRequest {
            id: uuid::Uuid::new_v4().to_string(),
            ..update(&new_url)
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let listed = api
        .list_webhooks(v1::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].url.as_str(), listed[0].min_severity.as_str()),
        (old_url.as_str(), "critical"),
        "refused updates changed nothing"
    );

    let rotated = api
        .update_webhook(v1::UpdateWebhookRequest {
            rotate_secret: true,
            ..update(&new_url)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.id, created.id);
    assert_eq!(rotated.url, new_url);
    assert_eq!(rotated.min_severity, "warning");
    assert_eq!(rotated.min_severity_code, v1::Severity::Warning as i32);
    assert_eq!(rotated.created_at, created.created_at);
    assert_eq!(rotated.secret.len(), 64, "the new secret, shown once");
    assert_ne!(rotated.secret, "before");
    // Without a rotation the secret stays, and is not shown.
    let kept = api
        .update_webhook(update(&new_url))
        .await
        .unwrap()
        .into_inner();
    assert!(kept.secret.is_empty());

    let mut registry = p.registry_client(Scope::Admin).await;
    let id = format!("hook-upd-{}", kit::unique());
    let dev = registry
        .create_device(with_max_30(&id, "boiler"))
        .await
        .unwrap()
        .into_inner();
    let topic = format!("{}/{id}/temperature", p.prefix);
    kit::publish_all(&[(topic, br#"{"value": 35}"#.to_vec())]).await;
    let got = kit::eventually(
        "the new URL gets the warning",
        Duration::from_secs(30),
        || async {
            let g = new.lock().unwrap().clone();
            (!g.is_empty()).then_some(g)
        },
    )
    .await;
    let (sig, event, body) = &got[0];
    assert_eq!(event, "raised");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["alert"]["device_uuid"], dev.id.as_str());
    assert_eq!(v["alert"]["severity"], "warning");
    assert_eq!(
        *sig,
        format!(
            "sha256={}",
            alert_engine::webhooks::signature(rotated.secret.as_bytes(), body.as_bytes())
        ),
        "signed with the rotated secret"
    );
    assert!(old.lock().unwrap().is_empty(), "the old URL heard nothing");
    p.stop().await;
}
