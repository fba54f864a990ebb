//! The HTTP door on the real components: a device authenticates with its
//! MQTT username and password (HTTP Basic), posts only its own readings,
//! and loses access at once when its credentials are rotated or revoked;
//! every refusal is counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1::{self, GetDeviceRequest, VerifyDeviceCredentialsRequest};
use iot_testkit as kit;
use iot_testkit::Platform;
use uuid::Uuid;

/// What the door answered: status, `WWW-Authenticate`, body as JSON.
struct Answer {
    status: u16,
    challenge: Option<String>,
    body: serde_json::Value,
}

/// POSTs one reading of `value` to `device`'s path with `auth` as the
/// `Authorization` header (none for `None`).
async fn post(p: &Platform, device: &str, auth: Option<&str>, value: u32) -> Answer {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut request = client
        .post(format!(
            "http://{}/v1/devices/{device}/readings",
            p.gateway_http
        ))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(format!(r#"{{"sensor": "temperature", "value": {value}}}"#));
    if let Some(auth) = auth {
        request = request.header(reqwest::header::AUTHORIZATION, auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    Answer {
        status,
        challenge,
        body: serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    }
}

/// The `Authorization` header of HTTP Basic credentials.
fn basic(username: &str, password: &str) -> String {
    reqwest::Client::new()
        .post("http://unused.invalid/")
        .basic_auth(username, Some(password))
        .build()
        .unwrap()
        .headers()[reqwest::header::AUTHORIZATION]
        .to_str()
        .unwrap()
        .to_owned()
}

/// A device and the `Authorization` header of its issued credentials.
async fn device(p: &Platform) -> (v1::Device, String) {
    let d = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let c = d
        .credentials
        .clone()
        .expect("the registry issues credentials");
    assert_eq!(
        c.username, d.device_id,
        "the MQTT username is the device_id"
    );
    let auth = basic(&c.username, &c.password);
    (d, auth)
}

fn assert_unauthenticated(a: &Answer, what: &str) {
    assert_eq!(a.status, 401, "{what}: {}", a.body);
    assert_eq!(a.body["error"], "unauthenticated", "{what}: {}", a.body);
    let challenge = a.challenge.as_deref().unwrap_or_default();
    assert!(
        challenge.starts_with(r#"Basic realm="iot""#),
        "{what}: {challenge:?}"
    );
}

async fn metric(p: &Platform, series: &str) -> u64 {
    kit::metric(p.gateway_admin, series).await.unwrap_or(0)
}

async fn refusals(p: &Platform, reason: &str) -> u64 {
    metric(
        p,
        &format!("iot_gateway_http_auth_refusals_total{{reason=\"{reason}\"}}"),
    )
    .await
}

async fn verifications(p: &Platform, result: &str) -> u64 {
    metric(
        p,
        &format!("iot_gateway_http_auth_verifications_total{{result=\"{result}\"}}"),
    )
    .await
}

/// Rows stored for the device.
async fn stored(p: &Platform, device: &v1::Device, n: i64) {
    let db = kit::connect(&p.db).await;
    let uuid = Uuid::parse_str(&device.id).unwrap();
    kit::eventually("readings stored", Duration::from_secs(30), || async {
        (kit::device_rows(&db, uuid).await == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_posts_its_own_readings_with_its_own_credentials() {
    let p = Platform::start().await;
    let (a, a_auth) = device(&p).await;
    let (b, b_auth) = device(&p).await;

    // Its own path, by device_id and by platform UUID.
    let ok = post(&p, &a.device_id, Some(&a_auth), 1).await;
    assert_eq!(
        (ok.status, &ok.body["accepted"]),
        (200, &1.into()),
        "{}",
        ok.body
    );
    let ok = post(&p, &a.id, Some(&a_auth), 2).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ok = post(&p, &b.device_id, Some(&b_auth), 3).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // One registry call per device: the second post was answered from the
    // cache.
    assert_eq!(verifications(&p, "valid").await, 2);
    stored(&p, &a, 2).await;
    stored(&p, &b, 1).await;

    // Another device's path, by device_id or UUID.
    for path in [&b.device_id, &b.id] {
        let no = post(&p, path, Some(&a_auth), 4).await;
        assert_eq!(no.status, 403, "{}", no.body);
        assert_eq!(no.body["error"], "forbidden");
        assert!(
            no.body["detail"].as_str().unwrap().contains(&a.device_id),
            "{}",
            no.body
        );
    }
    // Nothing of it was taken.
    stored(&p, &b, 1).await;
    assert_eq!(refusals(&p, "forbidden").await, 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_malformed_and_wrong_credentials_are_refused_alike() {
    let p = Platform::start().await;
    let (a, a_auth) = device(&p).await;
    let password = a.credentials.clone().unwrap().password;

    let none = post(&p, &a.device_id, None, 1).await;
    assert_unauthenticated(&none, "no credentials");
    assert!(
        none.body["detail"].as_str().unwrap().contains("HTTP Basic"),
        "{}",
        none.body
    );
    let bearer = post(&p, &a.device_id, Some("Bearer abc"), 1).await;
    assert_unauthenticated(&bearer, "a bearer token");
    assert!(
        bearer.body["detail"].as_str().unwrap().contains("Basic"),
        "{}",
        bearer.body
    );

    // A wrong password and an unknown device get the very same answer.
    let wrong = post(&p, &a.device_id, Some(&basic(&a.device_id, "guess")), 1).await;
    assert_unauthenticated(&wrong, "a wrong password");
    let unknown = post(&p, &a.device_id, Some(&basic("nobody", &password)), 1).await;
    assert_unauthenticated(&unknown, "an unknown device");
    assert_eq!(wrong.body, unknown.body);
    // Another device's credentials authenticate that device, which may
    // not post here.
    let (_, b_auth) = device(&p).await;
    let other = post(&p, &a.device_id, Some(&b_auth), 1).await;
    assert_eq!(other.status, 403, "{}", other.body);

    // The same wrong credentials again are refused without asking the
    // registry.
    assert_eq!(verifications(&p, "invalid").await, 2);
    let again = post(&p, &a.device_id, Some(&basic(&a.device_id, "guess")), 1).await;
    assert_unauthenticated(&again, "a wrong password again");
    assert_eq!(verifications(&p, "invalid").await, 2);

    assert_eq!(refusals(&p, "missing").await, 1);
    assert_eq!(refusals(&p, "malformed").await, 1);
    assert_eq!(refusals(&p, "wrong").await, 3);
    // The device's own credentials still work; none of the refused posts
    // was stored.
    let ok = post(&p, &a.device_id, Some(&a_auth), 7).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    stored(&p, &a, 1).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_and_revoked_credentials_stop_working_before_the_cache_ttl() {
    // A TTL far past the test's waits: only the change stream can end
    // cached verifications in time.
    let p = Platform::start_tuned(kit::kafka_config(), |c| c.http_auth.cache_ttl_secs = 3600).await;
    let (a, old_auth) = device(&p).await;
    let (b, b_auth) = device(&p).await;
    for (d, auth) in [(&a, &old_auth), (&b, &b_auth)] {
        let ok = post(&p, &d.device_id, Some(auth), 1).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
    }

    let mut registry = p.registry_client(Scope::Admin).await;
    let fresh = registry
        .rotate_credentials(GetDeviceRequest { id: a.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let new_auth = basic(&fresh.username, &fresh.password);
    let mut value = 10;
    kit::eventually("the old password refused", Duration::from_secs(15), || {
        value += 1;
        let v = value;
        let (p, a, old) = (&p, &a, &old_auth);
        async move { (post(p, &a.device_id, Some(old), v).await.status == 401).then_some(()) }
    })
    .await;
    let ok = post(&p, &a.device_id, Some(&new_auth), 2).await;
    assert_eq!(ok.status, 200, "the new password: {}", ok.body);

    registry
        .revoke_credentials(GetDeviceRequest { id: b.id.clone() })
        .await
        .unwrap();
    kit::eventually(
        "revoked credentials refused",
        Duration::from_secs(15),
        || {
            value += 1;
            let v = value;
            let (p, b, auth) = (&p, &b, &b_auth);
            async move { (post(p, &b.device_id, Some(auth), v).await.status == 401).then_some(()) }
        },
    )
    .await;

    // A deleted device's credentials go the same way.
    let (c, c_auth) = device(&p).await;
    let ok = post(&p, &c.device_id, Some(&c_auth), 1).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    registry
        .delete_device(GetDeviceRequest { id: c.id.clone() })
        .await
        .unwrap();
    kit::eventually(
        "a deleted device's credentials refused",
        Duration::from_secs(15),
        || {
            let (p, c, auth) = (&p, &c, &c_auth);
            async move { (post(p, &c.device_id, Some(auth), 5).await.status == 401).then_some(()) }
        },
    )
    .await;
    assert!(refusals(&p, "wrong").await >= 3);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_registry_verifies_credentials_for_platform_services_only() {
    let p = Platform::start().await;
    let (a, _) = device(&p).await;
    let password = a.credentials.clone().unwrap().password;
    let ask = |username: &str, password: &str| VerifyDeviceCredentialsRequest {
        username: username.into(),
        password: password.into(),
    };
    let mut admin = p.registry_client(Scope::Admin).await;
    let yes = admin
        .verify_device_credentials(ask(&a.device_id, &password))
        .await
        .unwrap()
        .into_inner();
    assert!(yes.ok);
    assert_eq!(
        (yes.device_uuid, yes.device_id),
        (a.id.clone(), a.device_id.clone())
    );
    for (user, pw) in [
        (a.device_id.as_str(), "guess"),
        ("nobody", password.as_str()),
    ] {
        let no = admin
            .verify_device_credentials(ask(user, pw))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(no, Default::default(), "{user}");
    }
    let bad = admin
        .verify_device_credentials(ask("", &"x".repeat(300)))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        iot_proto::field_violations(&bad),
        [
            ("username".to_owned(), "is required".to_owned()),
            (
                "password".to_owned(),
                "is longer than 256 characters".to_owned()
            )
        ]
    );
    let mut owner = p
        .registry_client(Scope::Owner(Uuid::nil().to_string()))
        .await;
    let denied = owner
        .verify_device_credentials(ask(&a.device_id, &password))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    p.stop().await;
}
