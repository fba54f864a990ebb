//! graphql-gateway configuration (env prefix `GRAPHQL_GATEWAY__`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub registry_url: String,
    pub telemetry_url: String,
    pub alerts_url: String,
    /// mqtt-gateway's `Ingest` gRPC (the `recordReading` mutation).
    pub ingest_url: String,
    /// The GraphQL endpoint: `POST /graphql`, WebSocket on `GET /graphql`,
    /// GraphiQL on `/` in development mode, `/healthz` and `/readyz`.
    pub http_addr: SocketAddr,
    /// gRPC health endpoint of the gateway itself.
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Development mode: GraphiQL at `/`.
    pub dev_mode: bool,
    pub auth: AuthConfig,
    pub limits: Limits,
}

/// Who may call. Every caller carries an owner (tenant) and sees only that
/// owner's devices, readings and alerts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys, sent as `X-Api-Key: <key>` or `Authorization: ApiKey <key>`.
    pub api_keys: Vec<ApiKey>,
    /// JWT bearer tokens (`Authorization: Bearer <jwt>`); off when unset.
    pub jwt: Option<JwtConfig>,
}

/// One API key. Only its SHA-256 is configured, never the key itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Shown in logs and metrics instead of the key.
    pub name: String,
    /// Lower-case hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The owner UUID the key acts for, or `*` for an operator key that
    /// sees every owner.
    pub owner: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<String>,
    /// PEM public key for RS256 tokens.
    pub rs256_public_key_pem: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// The claim holding the owner UUID.
    pub owner_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            rs256_public_key_pem: None,
            issuer: None,
            audience: None,
            owner_claim: "owner".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_depth: usize,
    pub max_complexity: usize,
    /// Largest `limit` of a device or alert listing.
    pub max_page: u32,
    /// Largest `limit` of `sensorReadings`.
    pub max_readings: u32,
    /// Longest `[startTime, endTime)` of a telemetry query, in days.
    pub max_range_days: u32,
    pub introspection: bool,
    pub max_body_bytes: usize,
    /// Per-caller token bucket: sustained requests per second and burst.
    pub rate_per_sec: f64,
    pub rate_burst: f64,
    /// Every gRPC call to a backend gives up after this long.
    pub upstream_timeout_ms: u64,
    /// How often `deviceStatus` and `metrics` subscriptions look again.
    pub poll_ms: u64,
    /// Root fields of one operation (TOO_MANY_ROOT_FIELDS).
    pub max_root_fields: usize,
    /// Aliased fields of one operation (TOO_MANY_ALIASES).
    pub max_aliases: usize,
    /// An operation takes one more token of its caller's rate limit per
    /// this many complexity points (RATE_LIMITED when the bucket is short).
    pub cost_per_token: usize,
    /// Subscriptions one caller holds open at once, over all its
    /// connections (TOO_MANY_SUBSCRIPTIONS).
    pub max_subscriptions: usize,
    /// The largest WebSocket message (and frame) read, before and after
    /// authentication; a larger one closes the connection.
    pub ws_max_message_bytes: usize,
    /// A WebSocket that has not sent `connection_init` within this long
    /// is closed (4408, as graphql-transport-ws says).
    pub ws_init_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_complexity: 5000,
            max_page: 1000,
            max_readings: 10_000,
            max_range_days: 400,
            introspection: true,
            max_body_bytes: 64 * 1024,
            rate_per_sec: 50.0,
            rate_burst: 200.0,
            upstream_timeout_ms: 5000,
            poll_ms: 2000,
            max_root_fields: 20,
            max_aliases: 30,
            cost_per_token: 100,
            max_subscriptions: 100,
            ws_max_message_bytes: 64 * 1024,
            ws_init_timeout_ms: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            registry_url: "http://127.0.0.1:50051".into(),
            telemetry_url: "http://127.0.0.1:50052".into(),
            alerts_url: "http://127.0.0.1:50053".into(),
            ingest_url: "http://127.0.0.1:50054".into(),
            http_addr: ([127, 0, 0, 1], 8080).into(),
            grpc_addr: ([127, 0, 0, 1], 50055).into(),
            admin_addr: ([127, 0, 0, 1], 9105).into(),
            dev_mode: false,
            auth: AuthConfig::default(),
            limits: Limits::default(),
        }
    }
}

impl iot_runtime::Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = [
            ("registry_url", &self.registry_url),
            ("telemetry_url", &self.telemetry_url),
            ("alerts_url", &self.alerts_url),
            ("ingest_url", &self.ingest_url),
        ]
        .into_iter()
        .filter(|(_, url)| !(url.starts_with("http://") || url.starts_with("https://")))
        .map(|(name, url)| format!("{name} {url:?} must start with http:// or https://"))
        .collect();
        for k in &self.auth.api_keys {
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                p.push(format!(
                    "auth.api_keys {:?}: sha256 must be 64 hex digits",
                    k.name
                ));
            }
            if k.owner != "*" && uuid::Uuid::parse_str(&k.owner).is_err() {
                p.push(format!(
                    "auth.api_keys {:?}: owner {:?} is neither a UUID nor *",
                    k.name, k.owner
                ));
            }
        }
        if let Some(j) = &self.auth.jwt
            && j.hs256_secret.is_none()
            && j.rs256_public_key_pem.is_none()
        {
            p.push("auth.jwt: set hs256_secret or rs256_public_key_pem".into());
        }
        let l = &self.limits;
        if l.rate_per_sec <= 0.0 || l.rate_burst < 1.0 {
            p.push("limits: rate_per_sec must be > 0 and rate_burst >= 1".into());
        }
        if l.max_page == 0 || l.max_readings == 0 || l.max_range_days == 0 {
            p.push("limits: max_page, max_readings and max_range_days must be > 0".into());
        }
        if l.max_root_fields == 0
            || l.cost_per_token == 0
            || l.max_subscriptions == 0
            || l.ws_max_message_bytes < 1024
            || l.ws_init_timeout_ms == 0
        {
            p.push(
                "limits: max_root_fields, cost_per_token, max_subscriptions and ws_init_timeout_ms must be > 0, \
                 ws_max_message_bytes at least 1024"
                    .into(),
            );
        }
        p
    }
}

impl iot_runtime::ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "GRAPHQL_GATEWAY";
}

iot_runtime::service_config_tests!(super::Config, "graphql-gateway.toml", 9105);
