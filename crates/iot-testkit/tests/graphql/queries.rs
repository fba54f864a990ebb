//! The three documented example tests and queries (DeviceDashboard,
//! TemperatureTrend, ClusterHealth), verbatim as docs/graphql.md shows them.

use std::net::SocketAddr;

use chrono::{TimeDelta, Utc};
use iot_testkit as kit;
use serde_json::{Value, json};

use crate::support::*;

/// ingest-writer's Telemetry service on `db` as a writer that predates
/// StreamMetrics serves it: that method answers UNIMPLEMENTED.
async fn older_writer(db: &str) -> SocketAddr {
    use iot_proto::v1::telemetry_server::TelemetryServer;
    let pool = iot_db::pool(db, 2).unwrap();
    let store = ingest_writer::Store::new(pool);
    let (_, health) = tonic_health::server::health_reporter();
    let router = tonic::service::Routes::new(health)
        .add_service(TelemetryServer::new(ingest_writer::TelemetryService::new(
            store,
            &ingest_writer::QueryLimits::default(),
        )))
        .into_axum_router()
        .route(
            "/iot.v1.Telemetry/StreamMetrics",
            axum::routing::post(|| async {
                tonic::Status::unimplemented("unknown method").into_http::<axum::body::Body>()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // mTLS with the writer's identity, as the platform's writer serves.
    let (tls, _) = kit::pki::grpc_tls(ingest_writer::SERVICE)
        .server()
        .unwrap()
        .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_routes(router.into())
            .serve_with_incoming(iot_runtime::grpc_incoming(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorded_reading_is_queried_by_device_id_and_by_uuid() {
    let s = Stack::start().await;
    let a = s.a();
    // createDevice with a max-30 threshold, as owner A (a JWT caller).
    let device_id = format!("device_123_{}", kit::unique());
    let created = create_device(
        &s.a_jwt("alice"),
        &device_id,
        json!({"temperature": {"max": 30}}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "active");
    assert!(
        !created["credentials"]["password"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    // Record a reading, then query it.
    let reading_time = Utc::now() - TimeDelta::seconds(5);
    let rec = a
        .data(
            RECORD,
            json!({"deviceId": device_id, "v": 23.5, "ts": reading_time.to_rfc3339()}),
        )
        .await;
    assert_eq!(rec["recordReading"]["value"], 23.5);
    let vars = json!({
        "deviceId": device_id,
        "sensorName": "temperature",
        "startTime": (reading_time - TimeDelta::seconds(1)).to_rfc3339(),
        "endTime": Utc::now().to_rfc3339(),
    });
    let readings = kit::eventually("the reading is queryable", WAIT, || {
        let (a, vars) = (a.clone(), vars.clone());
        async move {
            let d = a.data(GET_READINGS, vars).await;
            let r = d["sensorReadings"].as_array().unwrap().clone();
            (!r.is_empty()).then_some(r)
        }
    })
    .await;
    assert_eq!(readings.len(), 1);
    assert_eq!(readings[0]["value"], 23.5);
    // By the device's UUID (checked and fetched at once) the same.
    let mut by_uuid = vars.clone();
    by_uuid["deviceId"] = json!(id);
    assert_eq!(
        a.data(GET_READINGS, by_uuid).await["sensorReadings"],
        json!(readings)
    );
    s.stop().await;
}

/// A threshold alert through the API: the alert is listed, on the
/// DeviceDashboard and in the owner's live stream, and counted (or not)
/// by ClusterHealth; acknowledging it records who did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_threshold_alert_is_listed_shown_streamed_and_acknowledged() {
    let s = Stack::start().await;
    let a = s.a();
    let a_jwt = s.a_jwt("alice");
    let mut a_alerts = s.subscribe("key-a", ALERTS_SUB, json!({})).await;
    let device_id = format!("device_123_{}", kit::unique());
    let id = device_with_max_30(&a_jwt, &device_id).await;

    // 35 exceeds the max of 30: exactly one warning alert, and A's live
    // stream hears of it.
    let alerts = raise_alert(&a, &id).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["severity"], "warning");
    assert_eq!(alerts[0]["value"], 35.0, "{alerts:?}");
    assert_eq!(alerts[0]["device"]["id"], id.as_str());
    let alert_id = alerts[0]["id"].as_str().unwrap().to_owned();
    let live = a_alerts.next().await;
    assert_eq!(live["data"]["alerts"]["id"], alert_id.as_str(), "{live}");
    assert_eq!(live["data"]["alerts"]["state"], "open");
    assert_eq!(
        live["data"]["alerts"]["device"]["device_id"],
        device_id.as_str()
    );

    // The DeviceDashboard example, verbatim. The writer and the alert-engine
    // consume the readings independently: the alert can be out before the
    // writer has stored the 35 as the latest reading.
    let dash = kit::eventually("the dashboard shows the latest reading", WAIT, || {
        let (a, id) = (a.clone(), id.clone());
        async move {
            let d = a.data(DEVICE_DASHBOARD, json!({"deviceId": id})).await["device"].clone();
            (d["current_readings"][0]["value"] == 35.0).then_some(d)
        }
    })
    .await;
    assert_eq!(dash["name"], "Boiler");
    assert_eq!(dash["current_readings"][0]["sensor_name"], "temperature");
    assert_eq!(dash["current_readings"][0]["value"], 35.0);
    assert_eq!(dash["alerts"][0]["id"], alert_id.as_str());

    // The ClusterHealth example, verbatim, for owner A: one device, its
    // open alert a warning, not critical.
    let health = a.data(CLUSTER_HEALTH, json!({})).await["deviceStatusSummary"].clone();
    assert_eq!(health["total_devices"], 1, "{health}");
    assert_eq!(health["error_devices"], 0);
    assert_eq!(health["critical_alerts_count"], 0);
    assert!(health["average_response_time_ms"].as_f64().unwrap() > 0.0);
    assert!(health["readings_per_second"].as_f64().is_some());

    // A acknowledges (the JWT's subject is recorded); A hears of it.
    let acked = a_jwt
        .data(
            "mutation($id: ID!) { acknowledgeAlert(alertId: $id) { acknowledged acknowledged_by state } }",
            json!({"id": alert_id}),
        )
        .await["acknowledgeAlert"]
        .clone();
    assert_eq!(acked["acknowledged"], true);
    assert_eq!(acked["state"], "acknowledged");
    assert!(acked["acknowledged_by"].as_str().is_some());
    let live = a_alerts.next().await;
    assert_eq!(live["data"]["alerts"]["state"], "acknowledged", "{live}");
    s.stop().await;
}

/// Five readings inside one hour aggregate to one bucket,
/// over the TemperatureTrend example; the fast and the general rendering
/// and a writer older than the gateway all give the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn temperature_trend_aggregates_an_hour_alike_on_every_path() {
    let s = Stack::start().await;
    let a = s.a();
    // Five readings inside one hour (yesterday 10:01..10:05 UTC).
    let hour = (Utc::now() - TimeDelta::days(1))
        .date_naive()
        .and_hms_opt(10, 0, 0)
        .unwrap()
        .and_utc();
    let trend_device = format!("trend_{}", kit::unique());
    a.data(CREATE, json!({"deviceId": trend_device})).await;
    let readings: Vec<Value> = [20, 22, 21, 23, 24]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"sensorName": "temperature", "value": v,
                   "timestamp": (hour + TimeDelta::minutes(i as i64 + 1)).to_rfc3339()})
        })
        .collect();
    let rec = a
        .data(
            "mutation($d: ID!, $r: [ReadingInput!]!) { recordReadings(deviceId: $d, readings: $r) { accepted rejected { reason } } }",
            json!({"d": trend_device, "r": readings}),
        )
        .await;
    assert_eq!(rec["recordReadings"]["accepted"], 5, "{rec}");
    let trend_vars = json!({
        "deviceId": trend_device,
        "startTime": (hour - TimeDelta::hours(2)).to_rfc3339(),
        "endTime": (hour + TimeDelta::hours(2)).to_rfc3339(),
    });
    let metrics = kit::eventually("all five readings aggregated", WAIT, || {
        let (a, v) = (a.clone(), trend_vars.clone());
        async move {
            let d = a.data(TEMPERATURE_TREND, v).await;
            let m = d["sensorMetrics"].as_array().unwrap().clone();
            (m.len() == 1 && m[0]["avg_value"] == 22.0).then_some(m)
        }
    })
    .await;
    assert_eq!(metrics[0]["time"], hour.to_rfc3339());
    assert_eq!(metrics[0]["min_value"], 20.0);
    assert_eq!(metrics[0]["max_value"], 24.0);
    // Plain selections are rendered by a fast path; fragments take the
    // general one. Both give the same answer, aliases and __typename too.
    let general = a
        .data(
            "query($deviceId: ID!, $startTime: String!, $endTime: String!) {
               sensorMetrics(deviceId: $deviceId, sensorName: \"temperature\", startTime: $startTime, endTime: $endTime) { ...M }
             }
             fragment M on SensorMetric { when: time avg_value min_value max_value reading_count sum_value sensor_name __typename }",
            trend_vars.clone(),
        )
        .await;
    let fast = a
        .data(
            "query($deviceId: ID!, $startTime: String!, $endTime: String!) {
               sensorMetrics(deviceId: $deviceId, sensorName: \"temperature\", startTime: $startTime, endTime: $endTime) {
                 when: time avg_value min_value max_value reading_count sum_value sensor_name __typename
               }
             }",
            trend_vars.clone(),
        )
        .await;
    assert_eq!(fast, general);
    assert_eq!(fast["sensorMetrics"][0]["__typename"], "SensorMetric");
    assert_eq!(fast["sensorMetrics"][0]["sum_value"], 110.0);
    assert_eq!(fast["sensorMetrics"][0]["reading_count"], 5);
    // A writer older than the gateway, without StreamMetrics (as during a
    // rolling upgrade): the same answer, through QueryMetrics.
    let older = older_writer(&s.p.db).await;
    let g_older =
        s.p.start_graphql(&s.engine, |c| {
            s.t.configure(c);
            c.telemetry_url = format!("http://{older}");
        })
        .await;
    let through_older = Client::key(g_older.http_addr, "key-a")
        .data(TEMPERATURE_TREND, trend_vars.clone())
        .await;
    assert_eq!(
        through_older,
        a.data(TEMPERATURE_TREND, trend_vars.clone()).await
    );
    s.stop().await;
}
