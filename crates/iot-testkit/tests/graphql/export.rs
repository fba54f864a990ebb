//! `GET /v1/export` on the real stack: an owner downloads a range that
//! spans a day retention archived (and dropped from the database) and live
//! rows, and gets exactly them in time order; another owner's key is told
//! the device does not exist; a bad range is refused with its parameter
//! named.

use std::net::SocketAddr;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, SubsecRound as _, TimeDelta, Utc};
use ingest_writer::archive::ArchiveConfig;
use ingest_writer::archive::export::{csv_line, json_line};
use ingest_writer::retention::{RetentionConfig, maintain};
use ingest_writer::store::Row;
use iot_testkit as kit;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Client, Tenants, create_device};

/// A GET of `path` as `auth` ("Header: value"); status, head and body.
async fn get(addr: SocketAddr, auth: &str, path: &str) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.0\r\nHost: test\r\n{auth}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, buf[split + 4..].to_vec())
}

fn reading(device: Uuid, sensor: &str, time: DateTime<Utc>, value: &str) -> Row {
    Row {
        time,
        device_id: device,
        sensor_name: sensor.into(),
        value: Decimal::from_str(value).unwrap(),
        unit: (sensor == "temperature").then(|| "C".into()),
        quality: (sensor == "humidity").then(|| "good, \"checked\"".into()),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owners_download_archived_and_live_rows_in_time_order() {
    let p = kit::Platform::start().await;
    let dir = std::env::temp_dir().join(format!("iot-export-{}", Uuid::new_v4().simple()));
    let archive = ArchiveConfig {
        enabled: true,
        dir: dir.clone(),
        ..Default::default()
    };
    // A writer whose exports read this test's archive; the gateway asks it.
    let writer = p
        .start_writer(|c| c.retention.archive = archive.clone())
        .await;
    let engine = p.start_alert_engine(|_| {}).await;
    let t = Tenants::new();
    let g = p
        .start_graphql(&engine, |c| {
            t.configure(c);
            c.telemetry_url = format!("http://{}", writer.grpc_addr);
        })
        .await;
    let a = Client::key(g.http_addr, "key-a");
    let id = create_device(&a, &format!("export-{}", kit::unique()), Value::Null).await["id"]
        .as_str()
        .unwrap()
        .parse::<Uuid>()
        .unwrap();
    let other = create_device(&a, &format!("export-o-{}", kit::unique()), Value::Null).await["id"]
        .as_str()
        .unwrap()
        .parse::<Uuid>()
        .unwrap();

    let url: &str = &p.db;
    let db = kit::connect(url).await;
    let backend: iot_db::Backend = iot_db::storage_backend(&db)
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    if backend == iot_db::Backend::Postgres {
        // Daily partitions back to the old day, so that retention drops it.
        db.execute("SELECT iot_ensure_partitions(60, 14)", &[])
            .await
            .unwrap();
    }
    // Microseconds, as PostgreSQL keeps them.
    let now = Utc::now().trunc_subsecs(6);
    let old = ingest_writer::archive::midnight((now - TimeDelta::days(40)).date_naive());
    let recent = now - TimeDelta::hours(1);
    let mut rows = vec![
        reading(id, "temperature", old + TimeDelta::hours(3), "21.5000"),
        reading(id, "humidity", old + TimeDelta::hours(3), "40.1250"),
        reading(id, "temperature", old + TimeDelta::hours(1), "-3.0001"),
        reading(id, "temperature", recent, "22.0000"),
        reading(id, "humidity", recent - TimeDelta::minutes(5), "41.0000"),
        // Outside the range asked for, and another device's: not exported.
        reading(id, "temperature", old - TimeDelta::days(1), "1.0000"),
        reading(other, "temperature", old + TimeDelta::hours(2), "9.0000"),
    ];
    let store = ingest_writer::Store::new(iot_db::pool(url, 2).unwrap());
    store.write_batch(&rows).await.unwrap();

    let cfg = RetentionConfig {
        default_days: 30,
        archive,
        ..Default::default()
    };
    // The writers' own maintenance may hold the lock for a moment.
    let report = kit::eventually("retention runs", crate::support::WAIT, || {
        let (pool, cfg) = (store.pool().clone(), cfg.clone());
        async move { maintain(&pool, backend, &cfg, now).await.unwrap() }
    })
    .await
    .1;
    assert!(report.files_archived >= 1, "{report:?}");
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM sensor_readings WHERE device_id = $1 AND time < $2",
            &[&id, &(now - TimeDelta::days(30))],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the old days are in the archive only");

    // [old day - 12 h, now): the archived day and the live rows.
    let (from, to) = (old - TimeDelta::hours(12), now);
    rows.retain(|r| r.device_id == id && r.time >= from && r.time < to);
    rows.sort_by(|x, y| (x.time, &x.sensor_name).cmp(&(y.time, &y.sensor_name)));
    let query = |format: &str| {
        format!(
            "/v1/export?device={id}&from={}&to={}&format={format}",
            rfc3339(from),
            rfc3339(to)
        )
    };

    let (status, head, body) = get(g.http_addr, "X-Api-Key: key-a", &query("csv")).await;
    assert_eq!(status, 200, "{head}\n{}", String::from_utf8_lossy(&body));
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/csv"),
        "{head}"
    );
    let mut expected = String::from("time,device_id,sensor_name,value,unit,quality\n");
    for r in &rows {
        csv_line(&mut expected, r);
    }
    assert_eq!(String::from_utf8(body).unwrap(), expected);

    // The same through a JWT, as JSON lines.
    let jwt = format!("Authorization: Bearer {}", t.jwt_a("exporter"));
    let (status, _, body) = get(g.http_addr, &jwt, &query("jsonl")).await;
    assert_eq!(status, 200);
    let mut expected = String::new();
    for r in &rows {
        json_line(&mut expected, r);
    }
    assert_eq!(String::from_utf8(body).unwrap(), expected);

    // Parquet: a whole file (magic at both ends) of the same rows.
    let (status, head, body) = get(g.http_addr, "X-Api-Key: key-a", &query("parquet")).await;
    assert_eq!(status, 200, "{head}");
    assert!(body.len() > 8 && body.starts_with(b"PAR1") && body.ends_with(b"PAR1"));
    let file = std::env::temp_dir().join(format!("iot-export-{}.parquet", Uuid::new_v4()));
    std::fs::write(&file, &body).unwrap();
    let read: Vec<Row> = ingest_writer::archive::format::FileRows::open(&file)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let _ = std::fs::remove_file(&file);
    assert_eq!(read, rows);

    // Another owner: the device does not exist for them.
    let (status, _, body) = get(g.http_addr, "X-Api-Key: key-b", &query("csv")).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], json!("NOT_FOUND"));

    // No credentials.
    let (status, _, body) = get(g.http_addr, "X-Nothing: 1", &query("csv")).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        json!("UNAUTHENTICATED")
    );

    // A range that ends before it starts.
    let backwards = format!(
        "/v1/export?device={id}&from={}&to={}",
        rfc3339(to),
        rfc3339(from)
    );
    let (status, _, body) = get(g.http_addr, "X-Api-Key: key-a", &backwards).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        json!("BAD_USER_INPUT")
    );
    assert_eq!(
        body["errors"][0]["message"],
        json!("to: must be after from")
    );

    p.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
