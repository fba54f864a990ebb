//! Devices at the HTTP door authenticate with HTTP Basic: their MQTT
//! username (the device_id) and password. device-registry verifies them
//! (`VerifyDeviceCredentials`, which compares against the stored hash);
//! the gateway keeps what it verified for `http_auth.cache_ttl_secs`, and
//! what was refused for `http_auth.failure_ttl_secs`, both keyed by a
//! SHA-256 of the credentials, so that a device posting every second costs
//! the registry one call a minute and a client repeating wrong credentials
//! costs it one call per failure TTL.
//!
//! A change of the device's credentials on the registry's change stream
//! (rotated or revoked, or the device deleted) drops both at once; a
//! verification under way while such a change arrives is answered but not
//! kept, since it may predate the change. At most
//! `http_auth.max_concurrent_verifications` registry calls are under way:
//! past that, uncached credentials answer 503, so that guessing passwords
//! cannot load the registry beyond that bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use iot_proto::v1::{self, DeviceChange};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use uuid::Uuid;

use crate::metrics::Metrics;

/// `[http_auth]`: how the HTTP door keeps device authentications.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// How long verified credentials are trusted without asking the
    /// registry again. A rotation, revocation or deletion drops them at
    /// once through the change stream; this bounds how long they outlive
    /// one while the stream is cut off.
    pub cache_ttl_secs: u64,
    /// How long refused credentials are answered 401 without asking the
    /// registry again.
    pub failure_ttl_secs: u64,
    /// Most verified credentials kept, and most refused ones.
    pub max_cached: u64,
    /// Registry verifications under way at once.
    pub max_concurrent_verifications: usize,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        Self {
            cache_ttl_secs: 60,
            failure_ttl_secs: 5,
            max_cached: 100_000,
            max_concurrent_verifications: 32,
        }
    }
}

/// The longest a verification may be trusted: a revoked password works
/// at most this long while the change stream is cut off.
const MAX_CACHE_TTL_SECS: u64 = 3600;

impl HttpAuthConfig {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.cache_ttl_secs > MAX_CACHE_TTL_SECS {
            p.push(format!(
                "{prefix}.cache_ttl_secs must be at most {MAX_CACHE_TTL_SECS}"
            ));
        }
        if self.failure_ttl_secs > MAX_CACHE_TTL_SECS {
            p.push(format!(
                "{prefix}.failure_ttl_secs must be at most {MAX_CACHE_TTL_SECS}"
            ));
        }
        if self.max_cached == 0 {
            p.push(format!("{prefix}.max_cached must be positive"));
        }
        if self.max_concurrent_verifications == 0 {
            p.push(format!(
                "{prefix}.max_concurrent_verifications must be positive"
            ));
        }
        p
    }
}

/// The longest username and password the door takes: the registry's
/// (`device_credentials.username` is 100 characters; issued passwords 43).
const MAX_USERNAME: usize = 100;
const MAX_PASSWORD: usize = 256;

/// The device whose credentials a request carried.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub uuid: Uuid,
    pub device_id: String,
}

impl Verified {
    /// Whether `device` (a path's: external id or platform UUID) names
    /// this device.
    pub fn is(&self, device: &str) -> bool {
        device == self.device_id || Uuid::parse_str(device).is_ok_and(|u| u == self.uuid)
    }
}

/// Why a request is not let through.
#[derive(Debug)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not HTTP Basic credentials.
    Malformed(&'static str),
    /// No device has these credentials (unknown username, wrong password,
    /// or revoked): one answer for all, so that none is told apart.
    Wrong,
    /// Authenticated as `as_device`, for another device's path.
    Forbidden { as_device: String },
    /// Uncached credentials while the registry is asked as often as it
    /// may be.
    Busy,
    /// The registry did not answer (nothing is kept).
    Unavailable(tonic::Status),
}

impl Refusal {
    /// Its `reason` label in `iot_gateway_http_auth_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Wrong => "wrong",
            Self::Forbidden { .. } => "forbidden",
            Self::Busy => "busy",
            Self::Unavailable(_) => "unavailable",
        }
    }

    pub const REASONS: [&'static str; 6] = [
        "missing",
        "malformed",
        "wrong",
        "forbidden",
        "busy",
        "unavailable",
    ];
}

/// A SHA-256 of the credentials: what the caches are keyed by, so that
/// they hold no password.
type Key = [u8; 32];

pub struct DeviceAuth {
    client: iot_proto::RegistryClient,
    verified: moka::future::Cache<Key, Arc<Verified>>,
    /// Refused credentials, with their username.
    refused: moka::future::Cache<Key, Arc<str>>,
    verifying: tokio::sync::Semaphore,
    /// Bumped by every change applied: a verification that started before
    /// a bump may predate the change and is not kept.
    epoch: AtomicU64,
    metrics: Metrics,
}

impl DeviceAuth {
    /// Verifies with `client` (admin scope); counts in `metrics`.
    pub fn new(
        client: iot_proto::RegistryClient,
        config: &HttpAuthConfig,
        metrics: Metrics,
    ) -> Self {
        fn cache<V: Clone + Send + Sync + 'static>(
            max: u64,
            ttl_secs: u64,
        ) -> moka::future::Cache<Key, V> {
            moka::future::Cache::builder()
                .max_capacity(max)
                .time_to_live(Duration::from_secs(ttl_secs))
                .support_invalidation_closures()
                .build()
        }
        Self {
            client,
            verified: cache(config.max_cached, config.cache_ttl_secs),
            refused: cache(config.max_cached, config.failure_ttl_secs),
            verifying: tokio::sync::Semaphore::new(config.max_concurrent_verifications),
            epoch: AtomicU64::new(0),
            metrics,
        }
    }

    /// The device whose credentials `headers` carry.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Verified>, Refusal> {
        let (username, password) = basic_credentials(headers)?;
        let key: Key = sha2::Sha256::new()
            .chain_update(username.as_bytes())
            .chain_update(b":")
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if let Some(v) = self.verified.get(&key).await {
            return Ok(v);
        }
        if self.refused.contains_key(&key) {
            return Err(Refusal::Wrong);
        }
        let Ok(_permit) = self.verifying.try_acquire() else {
            return Err(Refusal::Busy);
        };
        let before = self.epoch.load(Ordering::SeqCst);
        let answer = self
            .client
            .clone()
            .verify_device_credentials(v1::VerifyDeviceCredentialsRequest {
                username: username.clone(),
                password,
            })
            .await
            .map_err(Refusal::Unavailable)?
            .into_inner();
        self.metrics.http_auth_verified(answer.ok);
        if !answer.ok {
            self.refused.insert(key, username.into()).await;
            return Err(Refusal::Wrong);
        }
        let uuid = Uuid::parse_str(&answer.device_uuid).map_err(|e| {
            Refusal::Unavailable(tonic::Status::internal(format!(
                "registry sent a bad device UUID: {e}"
            )))
        })?;
        let verified = Arc::new(Verified {
            uuid,
            device_id: answer.device_id,
        });
        self.verified.insert(key, verified.clone()).await;
        // Checked after the insert: a change applied between a check and
        // the insert would find nothing to drop.
        if self.epoch.load(Ordering::SeqCst) != before {
            self.verified.invalidate(&key).await;
        }
        Ok(verified)
    }

    /// Applies one message of the registry's change stream: "reset" drops
    /// everything; "credentials", "deleted" and kinds this code does not
    /// know drop what is kept of the device's credentials. The others
    /// leave credentials as they were ("created": a new device's password
    /// is one no one can have tried; "updated", "config": the pipeline
    /// checks the device's status itself; "presence": a device heard from
    /// or gone keeps its password).
    pub fn apply(&self, change: &DeviceChange) {
        match change.kind.as_str() {
            "sync" | "created" | "updated" | "config" | "presence" => {}
            "reset" => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.verified.invalidate_all();
                self.refused.invalidate_all();
            }
            _ => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                let uuid = Uuid::parse_str(&change.device_uuid).ok();
                let id: Arc<str> = change.device_id.as_str().into();
                let of_device = {
                    let id = id.clone();
                    move |_: &Key, v: &Arc<Verified>| Some(v.uuid) == uuid || *v.device_id == *id
                };
                let dropped = self
                    .verified
                    .invalidate_entries_if(of_device)
                    .and_then(|_| {
                        self.refused
                            .invalidate_entries_if(move |_, user: &Arc<str>| *user == id)
                    });
                if let Err(e) = dropped {
                    // Unreachable: both caches support invalidation
                    // closures. Dropping everything keeps the promise.
                    tracing::error!(error = %e, "cannot drop one device's credentials; dropping all");
                    self.verified.invalidate_all();
                    self.refused.invalidate_all();
                }
            }
        }
    }
}

/// The username and password of an HTTP Basic `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Result<(String, String), Refusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Refusal::Missing)?
        .to_str()
        .map_err(|_| Refusal::Malformed("the Authorization header is not ASCII"))?;
    let (scheme, encoded) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Refusal::Malformed(
            "the Authorization scheme must be Basic (the device's MQTT username and password)",
        ));
    }
    if encoded.trim().is_empty() {
        return Err(Refusal::Malformed(
            "the Basic scheme carries no credentials",
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| Refusal::Malformed("the Basic credentials are not base64"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| Refusal::Malformed("the Basic credentials are not UTF-8"))?;
    let (username, password) = text.split_once(':').ok_or(Refusal::Malformed(
        "the Basic credentials lack the ':' between username and password",
    ))?;
    if username.is_empty() || password.is_empty() {
        return Err(Refusal::Malformed(
            "the Basic credentials need a username and a password",
        ));
    }
    if username.chars().count() > MAX_USERNAME || password.chars().count() > MAX_PASSWORD {
        return Err(Refusal::Malformed(
            "the Basic username or password is longer than any device's",
        ));
    }
    Ok((username.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(text: &str) -> HeaderMap {
        with(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(text)
        ))
    }

    fn malformed(h: &HeaderMap) -> &'static str {
        match basic_credentials(h) {
            Err(Refusal::Malformed(why)) => why,
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn basic_credentials_are_read_and_bad_ones_named() {
        let (u, p) = basic_credentials(&basic("boiler-7:s3cret:with:colons")).unwrap();
        assert_eq!((u.as_str(), p.as_str()), ("boiler-7", "s3cret:with:colons"));
        // The scheme is case-insensitive (RFC 9110).
        let h = with(&format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("a:b")
        ));
        assert!(basic_credentials(&h).is_ok());

        assert!(matches!(
            basic_credentials(&HeaderMap::new()),
            Err(Refusal::Missing)
        ));
        assert!(malformed(&with("Bearer abc")).contains("must be Basic"));
        assert!(malformed(&with("Basic")).contains("no credentials"));
        assert!(malformed(&with("Basic !!!")).contains("not base64"));
        assert!(malformed(&basic("no-colon")).contains("':'"));
        assert!(malformed(&basic(":password")).contains("need a username"));
        assert!(malformed(&basic("user:")).contains("need a username"));
        let long = "x".repeat(MAX_USERNAME + 1);
        assert!(malformed(&basic(&format!("{long}:p"))).contains("longer"));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Basic \xff").unwrap(),
        );
        assert!(malformed(&h).contains("not ASCII"));
        let not_utf8 = base64::engine::general_purpose::STANDARD.encode(b"\xff:\xfe");
        assert!(malformed(&with(&format!("Basic {not_utf8}"))).contains("not UTF-8"));
    }

    #[test]
    fn a_path_names_the_device_by_id_or_uuid() {
        let uuid = Uuid::from_u128(7);
        let v = Verified {
            uuid,
            device_id: "boiler-7".into(),
        };
        assert!(v.is("boiler-7"));
        assert!(v.is(&uuid.to_string()));
        assert!(v.is(&uuid.to_string().to_uppercase()));
        assert!(!v.is("boiler-8"));
        assert!(!v.is(&Uuid::from_u128(8).to_string()));
    }

    /// A DeviceAuth whose registry is never called.
    fn unconnected() -> DeviceAuth {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let client = iot_proto::registry_client_on(
            iot_proto::client_channel(channel, iot_telemetry::grpc::GrpcClientLayer::unmeasured()),
            iot_proto::Scope::Admin,
        );
        let metrics = Metrics::register(&iot_telemetry::prometheus::Registry::new()).unwrap();
        DeviceAuth::new(client, &HttpAuthConfig::default(), metrics)
    }

    #[tokio::test]
    async fn only_credential_changes_drop_a_devices_entries() {
        let auth = unconnected();
        let uuid = Uuid::from_u128(1);
        let (a, b, a_wrong) = ([1; 32], [2; 32], [3; 32]);
        let verified = |n, id: &str| {
            Arc::new(Verified {
                uuid: Uuid::from_u128(n),
                device_id: id.into(),
            })
        };
        auth.verified.insert(a, verified(1, "dev-a")).await;
        auth.verified.insert(b, verified(2, "dev-b")).await;
        auth.refused.insert(a_wrong, "dev-a".into()).await;
        let change = |kind: &str| DeviceChange {
            kind: kind.into(),
            device_uuid: uuid.to_string(),
            device_id: "dev-a".into(),
            resume_after: 7,
        };
        for kind in ["sync", "created", "updated", "config"] {
            auth.apply(&change(kind));
            assert!(auth.verified.contains_key(&a), "{kind}");
            assert!(auth.refused.contains_key(&a_wrong), "{kind}");
        }
        auth.apply(&change("credentials"));
        assert!(!auth.verified.contains_key(&a));
        assert!(!auth.refused.contains_key(&a_wrong));
        assert!(auth.verified.contains_key(&b), "another device's stays");

        auth.verified.insert(a, verified(1, "dev-a")).await;
        auth.apply(&change("deleted"));
        assert!(!auth.verified.contains_key(&a));
        // A kind this code does not know drops the device too.
        auth.verified.insert(a, verified(1, "dev-a")).await;
        auth.apply(&change("renamed"));
        assert!(!auth.verified.contains_key(&a));
        assert!(auth.verified.contains_key(&b));
        auth.apply(&DeviceChange {
            kind: "reset".into(),
            ..Default::default()
        });
        assert!(!auth.verified.contains_key(&b));
    }

    #[test]
    fn settings_out_of_range_are_named() {
        assert!(HttpAuthConfig::default().problems("http_auth").is_empty());
        let bad = HttpAuthConfig {
            cache_ttl_secs: 7200,
            failure_ttl_secs: 7200,
            max_cached: 0,
            max_concurrent_verifications: 0,
        };
        let p = bad.problems("http_auth");
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].starts_with("http_auth.cache_ttl_secs"), "{p:?}");
    }
}
