//! Device credentials that the real broker enforces (Mosquitto with the
//! dynamic-security plugin, as `cargo xtask` runs it): a device publishes
//! with its own account and only to its own topics; rotated and revoked
//! credentials stop working at once; a failed create leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use iot_proto::v1::{self, CreateDeviceRequest, GetDeviceRequest};
use iot_runtime::CancellationToken;
use iot_testkit as kit;
use iot_testkit::Platform;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, EventLoop};

/// An MQTT 5 session as `user`; Err when the broker refuses it.
async fn session(user: &str, password: &str) -> Result<(AsyncClient, EventLoop), String> {
    let mut opts = kit::mqtt5_options(format!("dev-{}", kit::unique()));
    opts.set_credentials(user, password)
        .set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(Some(1 << 20));
    let (client, mut events) = AsyncClient::new(opts, 16);
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no CONNACK".to_owned())?;
    connected.map(|()| (client, events))
}

/// Publishes one QoS 1 message and returns the broker's PUBACK reason, or
/// Err when the broker closed the connection instead.
async fn publish(
    (client, events): &mut (AsyncClient, EventLoop),
    topic: &str,
    payload: &str,
) -> Result<PubAckReason, String> {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_owned())
        .await
        .unwrap();
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(ack))) => return Ok(ack.reason),
            Ok(_) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Whether the broker refuses `user`'s publish to `topic`: Mosquitto 2.0
/// answers PUBACK "not authorized" and then closes the connection.
async fn refused(user: &str, password: &str, topic: &str) -> bool {
    let mut s = session(user, password).await.unwrap();
    let r = publish(&mut s, topic, r#"{"value": 99}"#).await;
    !matches!(
        r,
        Ok(PubAckReason::Success | PubAckReason::NoMatchingSubscribers)
    )
}

async fn create(
    registry: &mut iot_proto::RegistryClient,
    device_id: &str,
) -> Result<v1::Device, tonic::Status> {
    registry
        .create_device(CreateDeviceRequest {
            device_id: device_id.into(),
            name: device_id.into(),
            device_type: "boiler".into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_publish_only_as_themselves_and_lose_access_when_revoked() {
    let p = Platform::start().await;
    let mut registry = p.registry_client(iot_proto::Scope::Admin).await;
    let (a_id, b_id) = (
        format!("a-{}", kit::unique()),
        format!("b-{}", kit::unique()),
    );
    let a = create(&mut registry, &a_id).await.unwrap();
    let b = create(&mut registry, &b_id).await.unwrap();
    let creds = a
        .credentials
        .clone()
        .expect("credentials are issued on create");
    assert_eq!(creds.username, a_id);
    assert_eq!(
        creds.publish_topics[0],
        format!("{}/sensors/{a_id}/+", p.root)
    );
    // Returned once: reading the device back shows no password.
    let again = registry
        .get_device(GetDeviceRequest { id: a.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(again.credentials.is_none());
    // Only a salted hash is stored.
    let db = kit::connect(&p.db).await;
    let stored: String = db
        .query_one(
            "SELECT password_hash FROM device_credentials WHERE username = $1",
            &[&a_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("sha256$") && !stored.contains(&creds.password));

    // Its own topic: accepted by the broker, stored by the platform.
    let mut s = session(&creds.username, &creds.password).await.unwrap();
    let own = format!("{}/{a_id}/temperature", p.prefix);
    assert_eq!(
        publish(&mut s, &own, r#"{"value": 21.5}"#).await,
        Ok(PubAckReason::Success)
    );
    let a_uuid = uuid::Uuid::parse_str(&a.id).unwrap();
    kit::eventually("A's reading stored", Duration::from_secs(20), || async {
        (kit::device_rows(&db, a_uuid).await == 1).then_some(())
    })
    .await;
    // A's batch topic is its own too.
    let batch = format!("{}/{a_id}", p.batch_prefix);
    assert_eq!(
        publish(&mut s, &batch, r#"{"readings": []}"#).await,
        Ok(PubAckReason::Success)
    );
    // B's topics with A's credentials: refused by the broker, and nothing
    // reaches the platform as B.
    let (user, pw) = (&creds.username, &creds.password);
    let other = format!("{}/{b_id}/temperature", p.prefix);
    assert!(refused(user, pw, &other).await);
    assert!(refused(user, pw, &format!("{}/{b_id}", p.batch_prefix)).await);
    assert!(refused(user, pw, &format!("{}/{b_id}", p.senml_prefix)).await);
    assert!(refused(user, pw, &format!("elsewhere/{a_id}")).await);

    // No anonymous access, no wrong passwords.
    assert!(session("", "").await.is_err());
    assert!(session(&creds.username, "guess").await.is_err());

    // Rotation: the new password works, the old one no longer does.
    let rotated = registry
        .rotate_credentials(GetDeviceRequest { id: a_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.password, creds.password);
    assert!(session(&a_id, &creds.password).await.is_err());
    let mut s2 = session(&a_id, &rotated.password).await.unwrap();
    assert_eq!(
        publish(&mut s2, &own, r#"{"value": 22.5}"#).await,
        Ok(PubAckReason::Success)
    );
    kit::eventually(
        "A's second reading stored",
        Duration::from_secs(20),
        || async { (kit::device_rows(&db, a_uuid).await == 2).then_some(()) },
    )
    .await;
    let b_uuid = uuid::Uuid::parse_str(&b.id).unwrap();
    assert_eq!(kit::device_rows(&db, b_uuid).await, 0);

    // Revocation: the connected session is closed and cannot come back.
    registry
        .revoke_credentials(GetDeviceRequest { id: a.id.clone() })
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s2.1.poll().await {
                Ok(Event::Incoming(Packet::Disconnect(_))) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "revoked session still open");
    assert!(session(&a_id, &rotated.password).await.is_err());
    // B is untouched.
    let b_creds = b.credentials.unwrap();
    assert!(session(&b_creds.username, &b_creds.password).await.is_ok());
    p.stop().await;
}

#[tokio::test]
async fn a_failed_create_leaves_no_device_and_no_account() {
    let p = Platform::start().await;
    let mut registry = p.registry_client(iot_proto::Scope::Admin).await;
    // A duplicate device_id: AlreadyExists, and the first device's account
    // still works.
    let id = format!("dup-{}", kit::unique());
    let first = create(&mut registry, &id)
        .await
        .unwrap()
        .credentials
        .unwrap();
    let err = create(&mut registry, &id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(session(&first.username, &first.password).await.is_ok());

    // A registry whose broker refuses it: the create fails as Unavailable
    // and the database holds no trace of the device.
    let shutdown = CancellationToken::new();
    let mut config = p.registry_config();
    config.broker.password = "wrong".into();
    config.broker.timeout_ms = 1_000;
    let broken = device_registry::start(config, shutdown.clone())
        .await
        .unwrap();
    let mut broken_client = iot_proto::registry_client(
        format!("http://{}", broken.grpc_addr),
        iot_proto::Scope::Admin,
        &iot_testkit::pki::operator(),
    )
    .await
    .unwrap();
    let lost = format!("lost-{}", kit::unique());
    let err = create(&mut broken_client, &lost).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let err = registry
        .get_device(GetDeviceRequest { id: lost.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let db = kit::connect(&p.db).await;
    let creds: i64 = db
        .query_one(
            "SELECT count(*) FROM device_credentials WHERE username = $1",
            &[&lost],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(creds, 0);
    shutdown.cancel();
    broken.wait().await.unwrap();
    p.stop().await;
}
