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
    /// the web console on `/console/` (and `/` in development mode),
    /// `/healthz` and `/readyz`.
    pub http_addr: SocketAddr,
    /// gRPC health endpoint of the gateway itself.
    pub grpc_addr: SocketAddr,
    /// mTLS on its gRPC server and on its calls to other services
    /// (`iot_proto::GrpcTls`); off when unset.
    pub grpc_tls: iot_proto::GrpcTls,
    pub admin_addr: SocketAddr,
    /// Development mode: `/` opens the console's query page, and the schema
    /// answers introspection.
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
    /// Schema introspection (`__schema`), off unless set (always on in
    /// `dev_mode`, where schema explorers need it).
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
            introspection: false,
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
            grpc_tls: iot_proto::GrpcTls::default(),
            admin_addr: ([127, 0, 0, 1], 9105).into(),
            dev_mode: false,
            auth: AuthConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// SHA-256 of the local development key (`local-dev-api-key`), which the
/// repository publishes: accepted only in `dev_mode`.
pub const LOCAL_DEV_KEY_SHA256: &str =
    "2bcd99491790f5324dd084241b713b576a92b12c497f3b553230d49cc72e15c2";

/// The shortest HS256 secret accepted outside `dev_mode` (RFC 7518: a key
/// as long as the hash output).
pub const MIN_HS256_BYTES: usize = 32;

impl Config {
    /// What a production gateway must not run with: the published
    /// development key, a placeholder or short JWT secret, or JWTs whose
    /// audience is not checked (a token issued for another service would
    /// pass). `dev_mode` lifts these checks, for trying the API locally.
    fn weak_secrets(&self) -> Vec<String> {
        let mut p = Vec::new();
        for k in &self.auth.api_keys {
            if k.sha256.eq_ignore_ascii_case(LOCAL_DEV_KEY_SHA256) {
                p.push(format!(
                    "auth.api_keys {:?}: the local development key, published with the code, \
                     is refused outside dev_mode: make a key of your own",
                    k.name
                ));
            }
        }
        if let Some(j) = &self.auth.jwt {
            if let Some(secret) = &j.hs256_secret {
                if let Some(placeholder) =
                    iot_runtime::config::placeholder_problem("auth.jwt.hs256_secret", secret)
                {
                    p.push(placeholder);
                } else if secret.len() < MIN_HS256_BYTES {
                    p.push(format!(
                        "auth.jwt.hs256_secret has {} bytes, fewer than {MIN_HS256_BYTES} \
                         (outside dev_mode)",
                        secret.len()
                    ));
                }
            }
            if j.audience.is_none() {
                p.push(
                    "auth.jwt.audience is required outside dev_mode: without it a token issued \
                     for another service would pass"
                        .into(),
                );
            }
        }
        p
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
        p.extend(self.grpc_tls.problems());
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
        if !self.dev_mode {
            p.extend(self.weak_secrets());
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

#[cfg(test)]
mod secret_tests {
    use super::*;
    use iot_runtime::Validate as _;

    fn with_jwt(secret: &str, audience: Option<&str>) -> Config {
        Config {
            auth: AuthConfig {
                api_keys: Vec::new(),
                jwt: Some(JwtConfig {
                    hs256_secret: Some(secret.into()),
                    audience: audience.map(Into::into),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }
    }

    #[test]
    fn weak_secrets_are_refused_outside_dev_mode_only() {
        let strong = "0123456789abcdef0123456789abcdef";
        let cases = [
            (
                with_jwt("change-me-jwt-secret-change-me-please", Some("iot")),
                "placeholder",
            ),
            (with_jwt("short", Some("iot")), "fewer than 32"),
            (with_jwt(strong, None), "audience is required"),
            (
                Config {
                    auth: AuthConfig {
                        api_keys: vec![ApiKey {
                            name: "dev".into(),
                            sha256: LOCAL_DEV_KEY_SHA256.into(),
                            owner: "*".into(),
                        }],
                        jwt: None,
                    },
                    ..Default::default()
                },
                "local development key",
            ),
        ];
        for (mut config, why) in cases {
            let p = config.problems();
            assert!(p.iter().any(|m| m.contains(why)), "{why}: {p:?}");
            config.dev_mode = true;
            assert!(config.problems().is_empty(), "{why} in dev_mode");
        }
        assert!(with_jwt(strong, Some("iot")).problems().is_empty());
    }
}
