//! API queries cannot starve the writer or one another: they run on a pool
//! of their own, at most `queries.per_owner` of one owner at once, each
//! waiting at most `queries.wait_ms` for its turn and for a connection and
//! running at most `queries.statement_timeout_ms`; every refusal is
//! RESOURCE_EXHAUSTED.
//! All on ingest-writer's shipped query limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use iot_proto::v1::FleetStatsRequest;
use iot_proto::v1::telemetry_client::TelemetryClient;
use iot_testkit as kit;
use tonic::Code;

async fn fleet_stats(
    url: String,
    owner: uuid::Uuid,
) -> Result<iot_proto::v1::FleetStatsResponse, tonic::Status> {
    let mut api = TelemetryClient::new(kit::pki::channel(&url).await);
    let mut req = tonic::Request::new(FleetStatsRequest {
        owner_id: Some(owner.to_string()),
    });
    req.metadata_mut().insert(
        iot_proto::SCOPE_METADATA,
        owner.to_string().parse().unwrap(),
    );
    api.fleet_stats(req).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_are_bounded_and_never_hold_up_writes() {
    let limits = ingest_writer::QueryLimits::default();
    let p = kit::Platform::start().await;
    let url = format!("http://{}", p.telemetry);
    // Owner-scoped fleet figures read the registry's `device_owners` view:
    // with `devices` locked by another session they wait in the database,
    // holding their query connections, while batch writes (which never
    // read `devices`) go on.
    // A device with readings stored: the gateway has it in its cache and
    // needs the registry (which reads `devices`) no more.
    let id = format!("bounded-{}", kit::unique());
    let device = p.create_device(&id, "active").await;
    let device_uuid: uuid::Uuid = device.id.parse().unwrap();
    let topic = format!("{}/{id}/temperature", p.prefix);
    let watcher = kit::connect(p.db.url()).await;
    for n in 1..=2 {
        let body = format!(r#"{{"value": {n}}}"#).into_bytes();
        kit::publish_all(&[(topic.clone(), body)]).await;
        kit::eventually("a reading stored", Duration::from_secs(30), || async {
            (kit::device_rows(&watcher, device_uuid).await == n).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let db = kit::connect(p.db.url()).await;
    db.batch_execute("BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (a, b, c) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    let mut blocked = Vec::new();
    for owner in [a, b] {
        for _ in 0..limits.per_owner {
            blocked.push(tokio::spawn(fleet_stats(url.clone(), owner)));
        }
    }
    let started = Instant::now();
    // Both owners' queries hold a connection each...
    assert_eq!(2 * limits.per_owner, limits.pool_size, "they fill the pool");
    kit::eventually(
        "every query holds a connection",
        Duration::from_secs(10),
        || async {
            let text = kit::http_get(p.writer_admin, "/metrics").await;
            text.lines()
                .any(|l| {
                    l.starts_with("iot_db_pool_connections{")
                        && l.contains("pool=\"queries\"")
                        && l.contains("state=\"in_use\"")
                        && l.ends_with(&format!(" {}", limits.pool_size))
                })
                .then_some(())
        },
    )
    .await;
    // ...so one owner's next query waits for one of its own to end, and
    // is refused when none does within `wait_ms`...
    let t = Instant::now();
    let refused = fleet_stats(url.clone(), a).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("queries.per_owner"),
        "{refused:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(limits.wait_ms));
    // ...and a third owner finds the pool full: it waits `wait_ms`, then
    // is told to back off.
    let t = Instant::now();
    let busy = fleet_stats(url.clone(), c).await.unwrap_err();
    assert_eq!(busy.code(), Code::ResourceExhausted, "{busy:?}");
    assert!(busy.message().contains("busy"), "{busy:?}");
    assert!(t.elapsed() >= Duration::from_millis(limits.wait_ms));

    // Meanwhile readings are stored: writes have connections of their own.
    kit::publish_all(&[(topic, br#"{"value": 3}"#.to_vec())]).await;
    kit::eventually(
        "a reading stored while queries fill their pool",
        Duration::from_secs(5),
        || async { (kit::device_rows(&watcher, device_uuid).await == 3).then_some(()) },
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(limits.statement_timeout_ms));

    // The blocked queries end at the statement timeout, told why.
    for q in blocked {
        let e = q.await.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("statement timeout"), "{e:?}");
    }
    assert!(started.elapsed() >= Duration::from_millis(limits.statement_timeout_ms));
    db.batch_execute("ROLLBACK").await.unwrap();
    // And the pool serves again.
    let s = fleet_stats(url, a).await.unwrap();
    assert_eq!(s.devices_reporting, 0);
    p.stop().await;
}
