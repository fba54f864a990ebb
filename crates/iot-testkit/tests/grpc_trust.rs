//! Trust on the gRPC links (the testkit runs every service with mTLS, as
//! `grpc_tls` configures it): a caller without a certificate gets nothing;
//! a certified caller that is not a platform identity may act for one
//! owner but never for all, and not at the Ingest door; ingest-writer's
//! Telemetry answers only about the caller's owner's devices; a client
//! trusting another CA fails with an error that names the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_proto::Scope;
use iot_proto::v1::{
    self, CreateDeviceRequest, FleetStatsRequest, GetDeviceRequest, LatestReadingsRequest,
    ListDevicesRequest, QueryReadingsRequest, ingest_client::IngestClient,
    telemetry_client::TelemetryClient,
};
use iot_testkit as kit;
use iot_testkit::Platform;
use std::error::Error as _;

use tonic::Code;

/// A certified caller that config does not name a platform identity.
const TENANT_APP: &str = "tenant-app";

async fn device_of(p: &Platform, owner: uuid::Uuid) -> v1::Device {
    p.registry_client(Scope::Owner(owner.to_string()))
        .await
        .create_device(CreateDeviceRequest {
            device_id: format!("d-{}", kit::unique()),
            name: "Trust test".into(),
            device_type: "temperature_sensor".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_are_known_and_only_the_platform_asks_for_all_owners() {
    let p = Platform::start().await;
    let registry = format!("http://{}", p.registry);
    let (alice, bob) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let mine = device_of(&p, alice).await;
    let theirs = device_of(&p, bob).await;

    // No certificate: plain text is not spoken, and TLS without a client
    // certificate is refused in the handshake.
    let plain = tonic::transport::Endpoint::from_shared(registry.clone())
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let e = v1::device_registry_client::DeviceRegistryClient::new(channel)
            .get_device(GetDeviceRequest {
                id: mine.id.clone(),
            })
            .await
            .unwrap_err();
        // The server speaks TLS only: a plain HTTP/2 client's call fails
        // in the transport (how it fails depends on what it read).
        assert!(e.source().is_some(), "{e:?}");
    }
    let anonymous = iot_proto::GrpcTls {
        cert: None,
        key: None,
        ..kit::pki::operator()
    };
    let ca = std::fs::read(anonymous.ca.as_ref().unwrap()).unwrap();
    let no_cert = tonic::transport::Endpoint::from_shared(registry.replace("http:", "https:"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )
        .unwrap()
        .connect()
        .await;
    // TLS 1.3: the server's refusal (the CertificateRequired alert, or
    // the connection closed under it) arrives with the first call; the
    // call never reaches the service.
    if let Ok(channel) = no_cert {
        let mut c = iot_proto::registry_client_on(
            iot_proto::client_channel(channel, iot_telemetry::grpc::GrpcClientLayer::unmeasured()),
            Scope::Admin,
        );
        let e = c
            .get_device(GetDeviceRequest {
                id: mine.id.clone(),
            })
            .await
            .unwrap_err();
        assert!(e.source().is_some(), "refused in the transport: {e:?}");
    }

    // A certified caller that is not the platform's: one owner, yes ...
    let tenant = kit::pki::grpc_tls(TENANT_APP);
    let mut as_alice =
        iot_proto::registry_client(registry.clone(), Scope::Owner(alice.to_string()), &tenant)
            .await
            .unwrap();
    let listed = as_alice
        .list_devices(ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.devices.len(), 1);
    assert_eq!(listed.devices[0].id, mine.id);
    let e = as_alice
        .get_device(GetDeviceRequest {
            id: theirs.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // ... every owner, no.
    let mut as_all = iot_proto::registry_client(registry.clone(), Scope::Admin, &tenant)
        .await
        .unwrap();
    let e = as_all
        .list_devices(ListDevicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(TENANT_APP), "{e:?}");
    assert!(e.message().contains("platform_identities"), "{e:?}");

    // The Ingest door acts for any owner: platform identities only.
    let gateway = format!("http://{}", p.gateway_grpc);
    let mut ingest = IngestClient::new(
        iot_proto::connect(&tenant, "mqtt-gateway", &gateway)
            .await
            .unwrap(),
    );
    let e = ingest
        .ingest_readings(v1::IngestReadingsRequest {
            device: mine.device_id.clone(),
            readings: vec![v1::IngestReading {
                sensor_name: "temperature".into(),
                value: "21.5".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Telemetry: the caller's owner's devices only, whoever calls.
    let telemetry = format!("http://{}", p.telemetry);
    let mut t = TelemetryClient::with_interceptor(
        iot_proto::connect(&tenant, "ingest-writer", &telemetry)
            .await
            .unwrap(),
        Scope::Owner(alice.to_string()),
    );
    let range = |req: &mut QueryReadingsRequest| {
        let now = chrono::Utc::now();
        req.start = Some(iot_proto::timestamp(now - chrono::TimeDelta::hours(1)));
        req.end = Some(iot_proto::timestamp(now));
    };
    let mut own = QueryReadingsRequest {
        device_uuid: mine.id.clone(),
        sensor_name: "temperature".into(),
        ..Default::default()
    };
    range(&mut own);
    t.query_readings(own).await.unwrap();
    let mut other = QueryReadingsRequest {
        device_uuid: theirs.id.clone(),
        sensor_name: "temperature".into(),
        ..Default::default()
    };
    range(&mut other);
    let e = t.query_readings(other).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = t
        .latest_readings(LatestReadingsRequest {
            device_uuids: vec![mine.id.clone(), theirs.id.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains(&theirs.id), "{e:?}");
    let e = t
        .fleet_stats(FleetStatsRequest {
            owner_id: Some(bob.to_string()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    t.fleet_stats(FleetStatsRequest { owner_id: None })
        .await
        .unwrap();
    // A call without any scope is not the platform's either.
    let mut unscoped = TelemetryClient::new(kit::pki::channel(&telemetry).await);
    let e = unscoped
        .fleet_stats(FleetStatsRequest { owner_id: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_trusting_another_ca_names_the_upstream() {
    let p = Platform::start().await;
    let stranger = kit::pki::Pki::new("another CA").identity("iotctl");
    let url = format!("http://{}", p.registry);
    let e = iot_proto::registry_client(url.clone(), Scope::Admin, &stranger)
        .await
        .expect_err("a server certificate from another CA is refused")
        .to_string();
    assert!(
        e.starts_with(&format!("gRPC upstream device-registry ({url})")),
        "{e}"
    );
    assert!(e.contains("UnknownIssuer"), "{e}");
    p.stop().await;
}
