//! device-registry's gRPC API on the real database and broker: owner
//! isolation across every call, updates, deletion, sensors, the status
//! summary and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_proto::v1::{self, CreateDeviceRequest, GetDeviceRequest};
use iot_proto::{RegistryClient, Scope};
use iot_testkit as kit;
use kit::platform::Registry;
use tonic::Code;
use uuid::Uuid;

fn device(id: &str) -> CreateDeviceRequest {
    CreateDeviceRequest {
        device_id: id.into(),
        name: format!("Device {id}"),
        device_type: "temperature_sensor".into(),
        location: Some("Building A".into()),
        ..Default::default()
    }
}

/// Alice's device `alice-…` (humidity and temperature sensors) and Bob's
/// `bob-…` (pressure), each created by its owner, and a client of each
/// and of the admin. Device ids are unique: each names an account on the
/// shared broker.
struct TwoOwners {
    alice: Uuid,
    bob: Uuid,
    a: RegistryClient,
    b: RegistryClient,
    admin: RegistryClient,
    ad: v1::Device,
    bd: v1::Device,
}

impl TwoOwners {
    async fn create(r: &Registry) -> Self {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut a = r.client(Scope::Owner(alice.to_string())).await;
        let mut b = r.client(Scope::Owner(bob.to_string())).await;
        let admin = r.client(Scope::Admin).await;
        let with_sensors = |id: &str, names: &[&str]| CreateDeviceRequest {
            sensors: names
                .iter()
                .map(|n| v1::Sensor {
                    sensor_name: (*n).into(),
                    ..Default::default()
                })
                .collect(),
            ..device(id)
        };
        let ad = a
            .create_device(with_sensors(
                &format!("alice-{}", kit::unique()),
                &["humidity", "temperature"],
            ))
            .await
            .unwrap()
            .into_inner();
        let bd = b
            .create_device(with_sensors(
                &format!("bob-{}", kit::unique()),
                &["pressure"],
            ))
            .await
            .unwrap()
            .into_inner();
        Self {
            alice,
            bob,
            a,
            b,
            admin,
            ad,
            bd,
        }
    }
}

#[tokio::test]
async fn a_device_is_its_creators_and_creating_for_another_owner_is_refused() {
    let r = Registry::start().await;
    let TwoOwners {
        alice,
        bob,
        mut a,
        ad,
        ..
    } = TwoOwners::create(&r).await;
    assert_eq!(ad.owner_id, alice.to_string());
    // Creating for someone else is refused.
    let mut other = device(&format!("alice-{}", kit::unique()));
    other.owner_id = bob.to_string();
    let e = a.create_device(other).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("owner_id"), "{e:?}");
    // The problem is also a google.rpc.BadRequest field violation.
    let fields = iot_proto::field_violations(&e);
    assert!(fields.iter().any(|(f, _)| f == "owner_id"), "{fields:?}");
}

#[tokio::test]
async fn another_owner_can_neither_see_nor_change_a_device() {
    let r = Registry::start().await;
    let TwoOwners {
        mut a, mut b, ad, ..
    } = TwoOwners::create(&r).await;
    // Bob sees none of Alice's device, by UUID or external id, in any call.
    for id in [ad.id.clone(), ad.device_id.clone()] {
        let get = || GetDeviceRequest { id: id.clone() };
        let codes = [
            b.get_device(get()).await.map(|_| ()).unwrap_err().code(),
            b.update_device(v1::UpdateDeviceRequest {
                id: id.clone(),
                name: Some("stolen".into()),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            b.update_device_config(v1::UpdateDeviceConfigRequest {
                id: id.clone(),
                read_interval: Some(5),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            b.list_sensors(get()).await.map(|_| ()).unwrap_err().code(),
            b.rotate_credentials(get())
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            b.revoke_credentials(get())
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            b.delete_device(get()).await.map(|_| ()).unwrap_err().code(),
        ];
        assert!(codes.iter().all(|c| *c == Code::NotFound), "{codes:?}");
    }
    // Nothing changed.
    let still = a
        .get_device(GetDeviceRequest { id: ad.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.name, ad.name);
    assert_eq!(still.config.unwrap().read_interval, 60);
}

#[tokio::test]
async fn listings_sensors_and_counts_hold_only_the_callers_devices() {
    let r = Registry::start().await;
    let TwoOwners {
        alice,
        mut a,
        mut b,
        mut admin,
        ad,
        bd,
        ..
    } = TwoOwners::create(&r).await;
    // Listings and counts are per owner, even when asking for another's.
    let list = |owner: Option<String>| v1::ListDevicesRequest {
        owner_id: owner,
        ..Default::default()
    };
    let ids = |resp: v1::ListDevicesResponse| {
        resp.devices
            .into_iter()
            .map(|d| d.device_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(b.list_devices(list(None)).await.unwrap().into_inner()),
        vec![bd.device_id.clone()]
    );
    assert_eq!(
        ids(b
            .list_devices(list(Some(alice.to_string())))
            .await
            .unwrap()
            .into_inner()),
        vec![bd.device_id.clone()]
    );
    assert_eq!(
        ids(admin
            .list_devices(list(Some(alice.to_string())))
            .await
            .unwrap()
            .into_inner()),
        vec![ad.device_id.clone()]
    );
    assert_eq!(
        ids(admin.list_devices(list(None)).await.unwrap().into_inner()).len(),
        2
    );
    // By ids (one call for a page of alerts' devices): only the caller's.
    let by_ids = || v1::ListDevicesRequest {
        ids: vec![ad.id.clone(), bd.id.clone(), Uuid::new_v4().to_string()],
        ..Default::default()
    };
    assert_eq!(
        ids(b.list_devices(by_ids()).await.unwrap().into_inner()),
        vec![bd.device_id.clone()]
    );
    assert_eq!(
        ids(admin.list_devices(by_ids()).await.unwrap().into_inner()).len(),
        2
    );
    // Sensors of several devices in one call: only the caller's.
    let of_devices = |c: &mut RegistryClient| {
        let mut c = c.clone();
        let ids = vec![ad.id.clone(), bd.id.clone(), Uuid::new_v4().to_string()];
        async move {
            c.list_sensors_of_devices(v1::ListSensorsOfDevicesRequest { device_uuids: ids })
                .await
                .unwrap()
                .into_inner()
                .sensors
                .into_iter()
                .map(|s| (s.device_uuid, s.sensor_name))
                .collect::<Vec<_>>()
        }
    };
    let (a_id, b_id) = (ad.id.clone(), bd.id.clone());
    assert_eq!(
        of_devices(&mut b).await,
        vec![(b_id.clone(), "pressure".into())]
    );
    assert_eq!(
        of_devices(&mut a).await,
        vec![
            (a_id.clone(), "humidity".to_string()),
            (a_id.clone(), "temperature".into())
        ]
    );
    assert_eq!(of_devices(&mut admin).await.len(), 3);
    let bad = admin
        .list_sensors_of_devices(v1::ListSensorsOfDevicesRequest {
            device_uuids: vec!["boiler-7".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let bad = admin
        .list_devices(v1::ListDevicesRequest {
            ids: vec!["boiler-7".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let summary = |c: &mut RegistryClient| {
        let mut c = c.clone();
        async move {
            c.device_status_summary(v1::DeviceStatusSummaryRequest::default())
                .await
                .unwrap()
                .into_inner()
                .total
        }
    };
    assert_eq!(summary(&mut a).await, 1);
    assert_eq!(summary(&mut admin).await, 2);
}

#[tokio::test]
async fn a_call_without_a_scope_is_unauthenticated() {
    let r = Registry::start().await;
    let TwoOwners { ad, .. } = TwoOwners::create(&r).await;
    // No scope, no answer.
    let mut anonymous =
        v1::device_registry_client::DeviceRegistryClient::new(kit::pki::channel(&r.url()).await);
    let e = anonymous
        .get_device(GetDeviceRequest { id: ad.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn update_config_sensors_paging_and_delete() {
    let r = Registry::start().await;
    let mut c = r.client(Scope::Admin).await;
    let mut req = device("boiler-1");
    req.sensors = vec![v1::Sensor {
        sensor_name: "temperature".into(),
        unit: Some("C".into()),
        sensor_type: Some("thermistor".into()),
        accuracy: Some("0.5".into()),
        ..Default::default()
    }];
    req.config = Some(v1::DeviceConfig {
        alert_threshold_json: Some(r#"{"temperature": {"max": 30}}"#.into()),
        ..Default::default()
    });
    let d = c.create_device(req).await.unwrap().into_inner();
    let get = || GetDeviceRequest { id: d.id.clone() };

    let sensors = c.list_sensors(get()).await.unwrap().into_inner().sensors;
    assert_eq!(sensors.len(), 1);
    assert_eq!(sensors[0].accuracy.as_deref(), Some("0.5"));

    let updated = c
        .update_device(v1::UpdateDeviceRequest {
            id: "boiler-1".into(),
            status: Some("inactive".into()),
            latitude: Some("52.52".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.status, "inactive");
    assert_eq!(updated.latitude.as_deref(), Some("52.52"));
    assert_eq!(updated.name, d.name, "unset fields are kept");

    let cfg = c
        .update_device_config(v1::UpdateDeviceConfigRequest {
            id: d.id.clone(),
            alert_threshold_json: Some(r#"{"temperature": {"min": 5, "max": 35}}"#.into()),
            data_retention_days: Some(30),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cfg.read_interval, 60);
    assert_eq!(cfg.data_retention_days, Some(30));
    let t: serde_json::Value =
        serde_json::from_str(cfg.alert_threshold_json.as_deref().unwrap()).unwrap();
    assert_eq!(t["temperature"]["max"], 35);

    // Paging: 5 more devices, pages of 2, every device once.
    for i in 0..5 {
        c.create_device(device(&format!("page-{i}"))).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = c
            .list_devices(v1::ListDevicesRequest {
                limit: 2,
                cursor: cursor.clone(),
                location: Some("Building A".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.devices.into_iter().map(|d| d.device_id));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    let inactive = c
        .list_devices(v1::ListDevicesRequest {
            status: Some("inactive".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert_eq!(inactive.len(), 1);

    // Deleting removes the device, its config, sensors and credentials;
    // its readings are left to age out with the platform retention.
    let db = kit::connect(&r.db).await;
    let uuid = Uuid::parse_str(&d.id).unwrap();
    db.execute(
        "INSERT INTO sensor_readings (time, device_id, sensor_name, value) VALUES (now(), $1, 'temperature', 20)",
        &[&uuid],
    )
    .await
    .unwrap();
    c.delete_device(get()).await.unwrap();
    assert_eq!(
        c.get_device(get()).await.unwrap_err().code(),
        Code::NotFound
    );
    for table in ["device_config", "sensors", "device_credentials"] {
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE device_id = $1"),
                &[&uuid],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table}");
    }
    assert_eq!(kit::device_rows(&db, uuid).await, 1);
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let r = Registry::start().await;
    let mut c = r.client(Scope::Admin).await;
    c.create_device(device("dup")).await.unwrap();
    assert_eq!(
        c.create_device(device("dup")).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let mut bad = device("bad-1");
    bad.latitude = Some("91".into());
    bad.longitude = Some("-181".into());
    bad.status = "offline-ish".into();
    bad.name = "n".repeat(256);
    bad.config = Some(v1::DeviceConfig {
        alert_threshold_json: Some(r#"{"temperature": {"min": 40, "max": 30}}"#.into()),
        ..Default::default()
    });
    let e = c.create_device(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let violations = iot_proto::field_violations(&e);
    for field in [
        "latitude",
        "longitude",
        "status",
        "name",
        "config.alert_threshold_json.temperature",
    ] {
        assert!(e.message().contains(field), "{field}: {}", e.message());
        assert!(
            violations.iter().any(|(f, _)| f == field),
            "{field}: {violations:?}"
        );
    }
    assert_eq!(
        c.get_device(GetDeviceRequest { id: "bad-1".into() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // A device_id shaped like a UUID could publish as another owner's
    // device (topics accept either id); a retention past a century would
    // hold every device's data.
    let mut sneaky = device(&Uuid::new_v4().to_string());
    sneaky.config = Some(v1::DeviceConfig {
        data_retention_days: Some(40_000),
        ..Default::default()
    });
    let e = c.create_device(sneaky).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for field in [
        "device_id: must not be a UUID",
        "config.data_retention_days",
    ] {
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    let e = c
        .update_device_config(v1::UpdateDeviceConfigRequest {
            id: "dup".into(),
            alert_threshold_json: Some("[1, 2]".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("config.alert_threshold_json"), "{e:?}");
}

/// A status given as the enum (`status_code`, beside the text form of
/// release 0.1.0) reads back in both forms, listings filter by either, and
/// the two forms disagreeing is a bad argument naming the enum field.
#[tokio::test]
async fn status_as_enum_or_text() {
    use v1::DeviceStatus;

    let r = Registry::start().await;
    let mut c = r.client(Scope::Admin).await;
    let forms = |d: &v1::Device| (d.status.clone(), d.status_code());

    let mut quiet = device("quiet-1");
    quiet.status_code = DeviceStatus::Inactive.into();
    assert!(quiet.status.is_empty());
    let d = c.create_device(quiet).await.unwrap().into_inner();
    assert_eq!(forms(&d), ("inactive".into(), DeviceStatus::Inactive));
    let got = c
        .get_device(GetDeviceRequest { id: d.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forms(&got), ("inactive".into(), DeviceStatus::Inactive));
    // Neither form: active, in both forms; both forms agreeing: fine.
    let loud = c
        .create_device(device("loud-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forms(&loud), ("active".into(), DeviceStatus::Active));
    let mut both = device("quiet-2");
    both.status = "inactive".into();
    both.status_code = DeviceStatus::Inactive.into();
    c.create_device(both).await.unwrap();

    let lister = c.clone();
    let listed = move |status: Option<&str>, code: Option<DeviceStatus>| {
        let mut c = lister.clone();
        let req = v1::ListDevicesRequest {
            status: status.map(Into::into),
            status_code: code.map(Into::into),
            ..Default::default()
        };
        async move {
            c.list_devices(req).await.map(|l| {
                l.into_inner()
                    .devices
                    .iter()
                    .map(|d| (d.device_id.clone(), d.status_code()))
                    .collect::<Vec<_>>()
            })
        }
    };
    let inactive = vec![
        ("quiet-1".to_owned(), DeviceStatus::Inactive),
        ("quiet-2".to_owned(), DeviceStatus::Inactive),
    ];
    assert_eq!(
        listed(None, Some(DeviceStatus::Inactive)).await.unwrap(),
        inactive
    );
    assert_eq!(listed(Some("inactive"), None).await.unwrap(), inactive);
    assert_eq!(
        listed(Some("inactive"), Some(DeviceStatus::Inactive))
            .await
            .unwrap(),
        inactive
    );
    assert_eq!(
        listed(None, Some(DeviceStatus::Active)).await.unwrap(),
        [("loud-1".to_owned(), DeviceStatus::Active)]
    );
    // UNSPECIFIED is no filter.
    assert_eq!(
        listed(None, Some(DeviceStatus::Unspecified))
            .await
            .unwrap()
            .len(),
        3
    );

    let updated = c
        .update_device(v1::UpdateDeviceRequest {
            id: "loud-1".into(),
            status_code: Some(DeviceStatus::Error.into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forms(&updated), ("error".into(), DeviceStatus::Error));

    // Disagreeing forms, or an enum value that is none, in every request.
    let names_status_code = |e: tonic::Status| {
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("status_code: "), "{e:?}");
        let fields = iot_proto::field_violations(&e);
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert_eq!(fields[0].0, "status_code");
    };
    let mut odd = device("odd-1");
    odd.status = "active".into();
    odd.status_code = DeviceStatus::Inactive.into();
    names_status_code(c.create_device(odd).await.unwrap_err());
    let mut unknown = device("odd-2");
    unknown.status_code = 7;
    names_status_code(c.create_device(unknown).await.unwrap_err());
    names_status_code(
        c.update_device(v1::UpdateDeviceRequest {
            id: "loud-1".into(),
            status: Some("active".into()),
            status_code: Some(DeviceStatus::Inactive.into()),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    names_status_code(
        listed(Some("error"), Some(DeviceStatus::Active))
            .await
            .unwrap_err(),
    );
    // Nothing was written.
    for id in ["odd-1", "odd-2"] {
        let e = c
            .get_device(GetDeviceRequest { id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{id}");
    }
    let loud = c
        .get_device(GetDeviceRequest {
            id: "loud-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forms(&loud), ("error".into(), DeviceStatus::Error));
}

/// Server reflection answers which services the port serves, so `grpcurl`
/// needs no proto files; each service's own schema comes with it.
#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let r = Registry::start().await;
    let channel = kit::pki::channel(&r.url()).await;
    let mut client = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "iot.v1.DeviceRegistry".into(),
        )),
    ];
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["iot.v1.DeviceRegistry", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("no file for iot.v1.DeviceRegistry");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// A registry with `limits` on a migrated database of its own (and the
/// shared broker); stops when dropped.
struct Limited {
    url: String,
    db: kit::TestDb,
    stop: iot_runtime::CancellationToken,
}

impl Limited {
    async fn start(limits: device_registry::Limits) -> Self {
        let db = kit::migrated_database().await;
        let mut config = kit::platform::registry_config(&db, &format!("t{}", kit::unique()));
        config.limits = limits;
        let stop = iot_runtime::CancellationToken::new();
        let r = device_registry::start(config, stop.clone()).await.unwrap();
        Self {
            url: format!("http://{}", r.grpc_addr),
            db,
            stop,
        }
    }

    async fn client(&self, scope: Scope) -> RegistryClient {
        iot_proto::registry_client(self.url.clone(), scope, &kit::pki::operator())
            .await
            .unwrap()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// RESOURCE_EXHAUSTED naming the quota and its value, in the message and
/// in the trailers graphql-gateway reads.
fn over_device_quota(e: &tonic::Status, limit: u32) {
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("limits.devices_per_owner is {limit}")),
        "{e:?}"
    );
    assert_eq!(e.metadata().get("iot-quota").unwrap(), "devices_per_owner");
    assert_eq!(
        e.metadata().get("iot-quota-limit").unwrap(),
        limit.to_string().as_str()
    );
}

/// Each owner may have `limits.devices_per_owner` devices: one more is
/// refused (and nothing of it written), whoever creates it, also many at
/// once; another owner is not affected; deleting one makes room.
#[tokio::test]
async fn devices_per_owner_are_limited() {
    let r = Limited::start(device_registry::Limits {
        devices_per_owner: 3,
        ..Default::default()
    })
    .await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let a = r.client(Scope::Owner(alice.to_string())).await;
    let mut b = r.client(Scope::Owner(bob.to_string())).await;
    let mut admin = r.client(Scope::Admin).await;
    // Ten at once for Alice: three made, seven refused.
    let mut tries = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let mut a = a.clone();
        tries.spawn(async move {
            a.create_device(device(&format!("q-{}", kit::unique())))
                .await
        });
    }
    let (mut made, mut refused) = (Vec::new(), 0);
    while let Some(t) = tries.join_next().await {
        match t.unwrap() {
            Ok(d) => made.push(d.into_inner()),
            Err(e) => {
                over_device_quota(&e, 3);
                refused += 1;
            }
        }
    }
    assert_eq!((made.len(), refused), (3, 7));
    // The admin scope creating for Alice meets Alice's quota.
    let mut for_alice = device(&format!("q-{}", kit::unique()));
    for_alice.owner_id = alice.to_string();
    over_device_quota(
        &admin.create_device(for_alice.clone()).await.unwrap_err(),
        3,
    );
    assert_eq!(
        admin
            .get_device(GetDeviceRequest {
                id: for_alice.device_id.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "nothing of a refused device is written"
    );
    // Bob's quota is his own.
    b.create_device(device(&format!("q-{}", kit::unique())))
        .await
        .unwrap();
    // A delete makes room.
    admin
        .delete_device(GetDeviceRequest {
            id: made[0].id.clone(),
        })
        .await
        .unwrap();
    admin.create_device(for_alice).await.unwrap();
    let db = kit::connect(&r.db).await;
    let count = |owner: Uuid| {
        let db = &db;
        async move {
            db.query_one(
                "SELECT count(*) FROM devices WHERE owner_id = $1",
                &[&owner],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    assert_eq!((count(alice).await, count(bob).await), (3, 1));
}

/// Device ids are unique across the platform (each names an MQTT account
/// and topics), so a taken one cannot be given again; but the answer is
/// the same whether the caller or another owner holds it, and carries
/// nothing of the holder.
#[tokio::test]
async fn a_taken_device_id_does_not_tell_whose_it_is() {
    let r = Registry::start().await;
    let TwoOwners {
        mut a,
        mut b,
        ad,
        alice,
        ..
    } = TwoOwners::create(&r).await;
    let answer = |e: tonic::Status| (e.code(), e.message().to_owned(), e.details().to_vec());
    let theirs = answer(b.create_device(device(&ad.device_id)).await.unwrap_err());
    let mine = answer(a.create_device(device(&ad.device_id)).await.unwrap_err());
    assert_eq!(theirs, mine);
    assert_eq!(theirs.0, Code::AlreadyExists);
    assert_eq!(
        theirs.1,
        format!("device_id: {:?} is not available", ad.device_id)
    );
    for secret in [ad.id.clone(), alice.to_string()] {
        assert!(!theirs.1.contains(&secret), "{theirs:?}");
    }
    // Bob's device of that id does not exist; Alice's is as it was.
    let mut admin = r.client(Scope::Admin).await;
    let listed = admin
        .list_devices(v1::ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .devices;
    let holders: Vec<_> = listed
        .iter()
        .filter(|d| d.device_id == ad.device_id)
        .map(|d| d.owner_id.clone())
        .collect();
    assert_eq!(holders, [alice.to_string()]);
}

/// A device's retention is bounded by `limits.max_retention_days`, at
/// creation and in config updates.
#[tokio::test]
async fn retention_past_the_configured_maximum_is_refused() {
    let r = Limited::start(device_registry::Limits {
        max_retention_days: 400,
        ..Default::default()
    })
    .await;
    let mut c = r.client(Scope::Owner(Uuid::new_v4().to_string())).await;
    let with_days = |days: i32| {
        let mut d = device(&format!("ret-{}", kit::unique()));
        d.config = Some(v1::DeviceConfig {
            data_retention_days: Some(days),
            ..Default::default()
        });
        d
    };
    let e = c.create_device(with_days(401)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        iot_proto::field_violations(&e),
        [(
            "config.data_retention_days".to_owned(),
            "must be in 1..=400 (limits.max_retention_days)".to_owned()
        )]
    );
    let d = c.create_device(with_days(400)).await.unwrap().into_inner();
    assert_eq!(d.config.unwrap().data_retention_days, Some(400));
    let update = |days: i32| v1::UpdateDeviceConfigRequest {
        id: d.id.clone(),
        data_retention_days: Some(days),
        ..Default::default()
    };
    let e = c.update_device_config(update(36_500)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("1..=400"), "{e:?}");
    let cfg = c
        .update_device_config(update(30))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cfg.data_retention_days, Some(30));
}

/// The broker ends every session of an account whose roles change (as a
/// registry's own account does when it first gets its command role, and
/// so every replica's on one broker): a device created while its admin
/// session drops is still created, with an account that works. The
/// registry here has an admin account of its own, so that ending its
/// sessions disturbs no other test.
#[tokio::test]
async fn devices_are_created_while_the_admin_session_is_dropped() {
    use serde_json::json;
    let u = kit::unique();
    let (account, password, role) = (
        format!("platform.kicked-{u}"),
        kit::unique(),
        format!("kick-{u}"),
    );
    let made = kit::dynsec(vec![
        json!({"command": "createRole", "rolename": role}),
        json!({"command": "createClient", "username": account, "password": password,
               "roles": [{"rolename": "admin", "priority": 0}]}),
    ])
    .await;
    assert!(made.iter().all(|r| r.get("error").is_none()), "{made:?}");
    let db = kit::migrated_database().await;
    let mut config = kit::platform::registry_config(&db, &format!("t{u}"));
    config.broker.username = account.clone();
    config.broker.password = password;
    let stop = iot_runtime::CancellationToken::new();
    let r = device_registry::start(config, stop.clone()).await.unwrap();
    let url = format!("http://{}", r.grpc_addr);
    let owner = Scope::Owner(Uuid::new_v4().to_string());
    let mut client = iot_proto::registry_client(url, owner, &kit::pki::operator())
        .await
        .unwrap();

    // Each role change ends the account's sessions.
    let kicking = iot_runtime::CancellationToken::new();
    let kicker = {
        let (account, role, kicking) = (account.clone(), role.clone(), kicking.clone());
        tokio::spawn(async move {
            let mut kicks = 0u32;
            while !kicking.is_cancelled() {
                for command in ["addClientRole", "removeClientRole"] {
                    kit::dynsec(vec![
                        json!({"command": command, "username": account, "rolename": role}),
                    ])
                    .await;
                    kicks += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
                }
            }
            kicks
        })
    };
    let mut created = Vec::new();
    for i in 0..30 {
        let d = client
            .create_device(device(&format!("kicked-{u}-{i}")))
            .await
            .unwrap_or_else(|e| panic!("device {i}: {e:?}"))
            .into_inner();
        created.push(d);
    }
    kicking.cancel();
    let kicks = kicker.await.unwrap();
    assert!(kicks >= 4, "the session was ended {kicks} times");

    // Every device has its broker account, with the password it was given.
    for d in &created {
        let mut opts = kit::mqtt_options(format!("kicked-{}", kit::unique()));
        let c = d
            .credentials
            .as_ref()
            .expect("credentials issued on create");
        opts.set_credentials(&c.username, &c.password);
        let (_c, mut events) = rumqttc::AsyncClient::new(opts, 4);
        match tokio::time::timeout(std::time::Duration::from_secs(10), events.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => {
                assert_eq!(
                    ack.code,
                    rumqttc::ConnectReturnCode::Success,
                    "{}",
                    d.device_id
                );
            }
            other => panic!("{}: {other:?}", d.device_id),
        }
    }
    stop.cancel();
    let mut cleanup = vec![
        json!({"command": "deleteClient", "username": account}),
        json!({"command": "deleteRole", "rolename": role}),
    ];
    for d in &created {
        cleanup.push(json!({"command": "deleteClient", "username": d.device_id}));
        cleanup
            .push(json!({"command": "deleteRole", "rolename": format!("device:{}", d.device_id)}));
    }
    kit::dynsec(cleanup).await;
}

/// `device_online_until()`, which keeps `device_heartbeats.online_until` for the
/// counts the database makes, is the platform's one definition of offline
/// (`iot_domain::presence::PLATFORM`) in SQL: both name the same moment.
#[tokio::test]
async fn the_database_and_the_platform_agree_on_when_a_device_is_offline() {
    use chrono::{TimeDelta, Utc};
    use iot_domain::presence::{PLATFORM, Seen};
    let db = kit::migrated_database().await;
    let c = kit::connect(db.url()).await;
    // Microseconds: what the database keeps of a time.
    let t = chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros() - 1_000_000_000)
        .unwrap();
    let mut cases = Vec::new();
    for heartbeat in [None, Some(t)] {
        for disconnected in [
            None,
            Some(t - TimeDelta::seconds(5)),
            Some(t),
            Some(t + TimeDelta::seconds(5)),
        ] {
            for read_interval in [None, Some(0), Some(1), Some(2), Some(60), Some(3600)] {
                cases.push(Seen {
                    last_heartbeat: heartbeat,
                    disconnected_at: disconnected,
                    read_interval,
                });
            }
        }
    }
    for seen in cases {
        let r = c
            .query_one(
                "SELECT NULLIF(device_online_until($1, $2, $3), '-infinity')",
                &[
                    &seen.last_heartbeat,
                    &seen.disconnected_at,
                    &seen.read_interval,
                ],
            )
            .await
            .unwrap();
        let sql: Option<chrono::DateTime<Utc>> = r.get(0);
        let expected = match seen.last_heartbeat {
            None => None,
            Some(_) => PLATFORM.offline_at(&seen),
        };
        assert_eq!(sql, expected, "{seen:?}");
    }
}

/// Heartbeats live in `device_heartbeats`, beside `devices` (migration
/// 0024): every device has its row from its creation on, the row's owner
/// and status follow the device's however it changes, and the status
/// summary's online counts read it.
#[tokio::test]
async fn heartbeats_follow_their_devices_owner_and_status() {
    let r = Registry::start().await;
    let TwoOwners {
        bob,
        mut a,
        mut b,
        mut admin,
        ad,
        bd,
        ..
    } = TwoOwners::create(&r).await;
    let many = a
        .create_devices(v1::CreateDevicesRequest {
            devices: (0..3)
                .map(|_| device(&format!("alice-{}", kit::unique())))
                .collect(),
            issue_credentials: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        many.results.iter().all(|r| r.error_code.is_empty()),
        "{many:?}"
    );
    let db = kit::connect(&r.db).await;
    // Rows of `devices` without theirs, or theirs not as the device is.
    let astray = async || -> i64 {
        db.query_one(
            "SELECT count(*) FROM devices d FULL JOIN device_heartbeats h ON h.device_id = d.id
             WHERE d.id IS NULL OR h.device_id IS NULL
                OR h.owner_id <> d.owner_id OR h.active <> (d.status = 'active')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    let offline = |c: &mut RegistryClient| {
        let mut c = c.clone();
        async move {
            let s = c
                .device_status_summary(v1::DeviceStatusSummaryRequest::default())
                .await
                .unwrap()
                .into_inner();
            (s.active, s.offline)
        }
    };
    assert_eq!(astray().await, 0);
    assert_eq!(offline(&mut a).await, (4, 4));
    // Microseconds: what the database keeps of a time.
    let now = chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros());
    let now = iot_proto::timestamp(now.unwrap());
    admin
        .record_activity(v1::RecordActivityRequest {
            devices: [&ad, &bd]
                .iter()
                .map(|d| v1::DeviceActivity {
                    device_uuid: d.id.clone(),
                    last_seen: Some(now),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .unwrap();
    assert_eq!(offline(&mut a).await, (4, 3));
    assert_eq!(offline(&mut b).await, (1, 0));
    let heard = a
        .get_device(GetDeviceRequest { id: ad.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(heard.last_heartbeat, Some(now));
    // No call moves a device to another owner; the database's triggers
    // follow any writer of `devices`.
    db.execute(
        "UPDATE devices SET owner_id = $1 WHERE id = $2",
        &[&bob, &Uuid::parse_str(&ad.id).unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(offline(&mut a).await, (3, 3));
    assert_eq!(offline(&mut b).await, (2, 0));
    admin
        .update_device(v1::UpdateDeviceRequest {
            id: bd.id.clone(),
            status: Some("inactive".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(offline(&mut b).await, (1, 0));
    assert_eq!(astray().await, 0);
    admin
        .delete_device(GetDeviceRequest {
            id: many.results[0].id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(astray().await, 0);
    assert_eq!(offline(&mut a).await, (2, 2));
}
