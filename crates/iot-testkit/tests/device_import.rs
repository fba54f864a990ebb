//! Bulk registration: `CreateDevices` and `iotctl devices import` against
//! the real registry, database and broker. Every row is created or reported
//! with its line and reason; no row costs another.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use iot_proto::v1::{CreateDeviceRequest, CreateDevicesRequest, GetDeviceRequest};
use iot_testkit as kit;
use iot_testkit::platform::Registry;
use iotctl::import::{ImportArgs, Outcome, run};

fn args(file: &std::path::Path, errors: &std::path::Path) -> ImportArgs {
    ImportArgs {
        file: file.to_owned(),
        format: None,
        owner: None,
        credentials_out: None,
        errors: Some(errors.to_owned()),
    }
}

/// A folder of the test's own under the system's temporary folder,
/// removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("iot-import-{}", kit::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn report(path: &std::path::Path) -> Vec<(u64, String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["device_id"].as_str().unwrap().to_owned(),
                v["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_import_creates_every_good_row_and_reports_every_other() {
    let r = Registry::start().await;
    let mut client = r.client(iot_proto::Scope::Admin).await;
    let u = kit::unique();
    let taken = format!("taken-{u}");
    client
        .create_device(CreateDeviceRequest {
            device_id: taken.clone(),
            name: "already here".into(),
            device_type: "meter".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let owner = uuid::Uuid::new_v4();
    let dir = Scratch::new();
    let file = dir.path().join("fleet.csv");
    std::fs::write(
        &file,
        format!(
            "device_id,name,device_type,location,latitude,longitude,owner_id,read_interval,alert_threshold\n\
             a-{u},Boiler A,boiler,\"Hall 1, east\",52.52,13.405,{owner},30,\"{{\"\"temperature\"\": {{\"\"max\"\": 90}}}}\"\n\
             b-{u},,meter,,,,,,\n\
             bad/{u},Bad,meter,,,,,,\n\
             a-{u},Twice,meter,,,,,,\n\
             {taken},Taken,meter,,,,,,\n\
             c-{u},Slow,meter,,,,,every minute,\n\
             d-{u},Far,meter,,95,0,,,\n\
             e-{u},Last,meter,,,,,,\n"
        ),
    )
    .unwrap();
    let errors = dir.path().join("errors.jsonl");
    let outcome = run(&mut client, args(&file, &errors)).await.unwrap();
    assert_eq!(
        outcome,
        Outcome {
            created: 3,
            refused: BTreeMap::from([
                ("ALREADY_EXISTS".into(), 2),
                ("INVALID_ARGUMENT".into(), 2),
                ("unreadable".into(), 1),
            ]),
        }
    );
    // Each refusal names the row's line in the file (the header is line 1).
    let mut got = report(&errors);
    got.sort();
    assert_eq!(
        got,
        vec![
            (4, format!("bad/{u}"), "INVALID_ARGUMENT".into()),
            (5, format!("a-{u}"), "ALREADY_EXISTS".into()),
            (6, taken.clone(), "ALREADY_EXISTS".into()),
            (7, String::new(), "unreadable".into()),
            (8, format!("d-{u}"), "INVALID_ARGUMENT".into()),
        ]
    );
    // The created rows hold what the file said; an empty field is the
    // default.
    let a = client
        .get_device(GetDeviceRequest {
            id: format!("a-{u}"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            a.name.as_str(),
            a.device_type.as_str(),
            a.location.as_deref(),
            a.owner_id.as_str()
        ),
        (
            "Boiler A",
            "boiler",
            Some("Hall 1, east"),
            owner.to_string().as_str()
        )
    );
    assert_eq!(
        a.latitude.as_deref().map(str::parse::<f64>),
        Some(Ok(52.52))
    );
    let config = a.config.unwrap();
    assert_eq!(config.read_interval, 30);
    let threshold: serde_json::Value =
        serde_json::from_str(config.alert_threshold_json.as_deref().unwrap()).unwrap();
    assert_eq!(threshold, serde_json::json!({"temperature": {"max": 90}}));
    let b = client
        .get_device(GetDeviceRequest {
            id: format!("b-{u}"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.name, format!("b-{u}"));
    assert_eq!(b.config.unwrap().read_interval, 60);
    assert_eq!(b.owner_id, uuid::Uuid::nil().to_string());
    // Imported without credentials: no broker account, until a rotation.
    assert!(b.credentials.is_none());
    let taken_device = client
        .get_device(GetDeviceRequest { id: taken })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(taken_device.name, "already here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_scoped_json_lines_import_with_credentials_stops_at_the_quota() {
    let r = Registry::start().await;
    // A registry on the same database with a quota of 3 devices per owner,
    // so that reaching it takes a few rows.
    let mut config = iot_testkit::platform::registry_config(&r.db, &r.root);
    config.limits.devices_per_owner = 3;
    let shutdown = iot_runtime::CancellationToken::new();
    let small = device_registry::start(config, shutdown.clone())
        .await
        .unwrap();
    let owner = uuid::Uuid::new_v4();
    let mut client = iot_proto::registry_client(
        format!("http://{}", small.grpc_addr),
        iot_proto::Scope::Owner(owner.to_string()),
        &kit::pki::operator(),
    )
    .await
    .unwrap();
    let u = kit::unique();
    let dir = Scratch::new();
    let file = dir.path().join("fleet.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| {
            serde_json::json!({
                "device_id": format!("j{i}-{u}"),
                "device_type": "meter",
                "alert_threshold": {"power": {"max": 10 + i}},
            })
            .to_string()
        })
        .chain(["{not json".to_owned()])
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let errors = dir.path().join("errors.jsonl");
    let credentials = dir.path().join("credentials.csv");
    let outcome = run(
        &mut client,
        ImportArgs {
            credentials_out: Some(credentials.clone()),
            ..args(&file, &errors)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        outcome,
        Outcome {
            created: 3,
            refused: BTreeMap::from([("RESOURCE_EXHAUSTED".into(), 2), ("unreadable".into(), 1),]),
        }
    );
    let mut got = report(&errors);
    got.sort();
    assert_eq!(
        got,
        vec![
            (4, format!("j3-{u}"), "RESOURCE_EXHAUSTED".into()),
            (5, format!("j4-{u}"), "RESOURCE_EXHAUSTED".into()),
            (6, String::new(), "unreadable".into()),
        ]
    );
    // Each created device has its own password, written once to the file,
    // which the registry (and so the broker's accounts) accepts.
    let written = std::fs::read_to_string(&credentials).unwrap();
    let rows: Vec<Vec<&str>> = written
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 3);
    let mut admin = r.client(iot_proto::Scope::Admin).await;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], format!("j{i}-{u}"));
        let verified = admin
            .verify_device_credentials(iot_proto::v1::VerifyDeviceCredentialsRequest {
                username: row[1].to_owned(),
                password: row[2].to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(verified.ok, "{row:?}");
        let d = admin
            .get_device(GetDeviceRequest {
                id: row[0].to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.owner_id, owner.to_string());
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_of_more_than_a_thousand_is_refused_whole() {
    let r = Registry::start().await;
    let mut client = r.client(iot_proto::Scope::Admin).await;
    let u = kit::unique();
    let devices = (0..1001)
        .map(|i| CreateDeviceRequest {
            device_id: format!("m{i}-{u}"),
            name: "m".into(),
            device_type: "meter".into(),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let err = client
        .create_devices(CreateDevicesRequest {
            devices: devices.clone(),
            issue_credentials: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // A thousand go in, in one call.
    let results = client
        .create_devices(CreateDevicesRequest {
            devices: devices[..1000].to_vec(),
            issue_credentials: false,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 1000);
    assert!(
        results
            .iter()
            .all(|r| r.error_code.is_empty() && !r.id.is_empty())
    );
    let page = client
        .list_devices(iot_proto::v1::ListDevicesRequest {
            limit: 1000,
            device_type: Some("meter".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.devices
            .iter()
            .filter(|d| d.device_id.ends_with(&format!("-{u}")))
            .count(),
        1000
    );
}
