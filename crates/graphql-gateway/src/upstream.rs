//! The services the gateway calls: one lazily connected channel each,
//! with a deadline on every call, wearing the client layer
//! ([`iot_telemetry::grpc::GrpcClientLayer`]) that counts and times every
//! call by method (`iot_grpc_client_requests_total`,
//! `iot_grpc_client_request_duration_seconds`) and carries the caller's
//! trace. Resolvers call the generated clients' methods and turn a failure
//! into a GraphQL error with [`Answer`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_graphql::ErrorExtensions;
use iot_proto::Scope;
use iot_proto::v1::{
    self, alerts_client::AlertsClient, device_commands_service_client::DeviceCommandsServiceClient,
    device_registry_client::DeviceRegistryClient, ingest_client::IngestClient,
    telemetry_client::TelemetryClient,
};
use iot_telemetry::grpc::GrpcClientMetrics;
use prometheus::Registry;
use prost::bytes::Bytes;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::StartError;
use crate::config::Config;

/// The backends' names: the `service` label of their calls' metrics and
/// of the GraphQL errors they cause.
pub const REGISTRY: &str = "device-registry";
pub const TELEMETRY: &str = "ingest-writer";
pub const ALERTS: &str = "alert-engine";
pub const INGEST: &str = "mqtt-gateway";

/// A backend's channel, wearing the client layer.
pub type Upstream = iot_proto::ClientChannel;
pub type RegistryApi = DeviceRegistryClient<InterceptedService<Upstream, Scope>>;
pub type Alerts = AlertsClient<InterceptedService<Upstream, Scope>>;
pub type Commands = DeviceCommandsServiceClient<InterceptedService<Upstream, Scope>>;
pub type Telemetry = TelemetryClient<InterceptedService<Upstream, Scope>>;
pub type Ingest = IngestClient<Upstream>;

/// Channels to the backends, and the gateway's view of how they answer.
#[derive(Clone)]
pub struct Upstreams {
    registry: Upstream,
    telemetry: Upstream,
    alerts: Upstream,
    ingest: Upstream,
    /// The same connections without the layer: readiness checks every
    /// backend's health every 2 s, which are probes, not calls of the API.
    probes: [(&'static str, Channel); 4],
    /// Recent call latencies (the status summary's mean).
    pub times: Arc<ResponseTimes>,
}

fn channel(
    service: &'static str,
    url: &str,
    tls: &iot_proto::GrpcTls,
    timeout: Duration,
) -> Result<Channel, StartError> {
    let endpoint = tls
        .endpoint(service, url)?
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .timeout(timeout);
    Ok(iot_proto::tls::lazy(&endpoint))
}

impl Upstreams {
    /// One channel per backend, each call with the configured deadline;
    /// their calls' metrics go to `registry`.
    pub fn connect(config: &Config, registry: &Registry) -> Result<Self, StartError> {
        let times = Arc::new(ResponseTimes::new());
        let calls = GrpcClientMetrics::register(registry)?.on_call({
            let times = times.clone();
            move |call| {
                // The alert stream lasts as long as its connection: not a
                // response time.
                if call.method != "SubscribeAlerts" {
                    times.observe(call.elapsed);
                }
            }
        });
        let t = Duration::from_millis(config.limits.upstream_timeout_ms);
        let registry = channel(REGISTRY, &config.registry_url, &config.grpc_tls, t)?;
        let telemetry = channel(TELEMETRY, &config.telemetry_url, &config.grpc_tls, t)?;
        let alerts = channel(ALERTS, &config.alerts_url, &config.grpc_tls, t)?;
        let ingest = channel(INGEST, &config.ingest_url, &config.grpc_tls, t)?;
        let layered = |service, ch: &Channel| {
            tower::ServiceBuilder::new()
                .layer(calls.layer(service))
                .service(ch.clone())
        };
        Ok(Self {
            registry: layered(REGISTRY, &registry),
            telemetry: layered(TELEMETRY, &telemetry),
            alerts: layered(ALERTS, &alerts),
            ingest: layered(INGEST, &ingest),
            probes: [
                (REGISTRY, registry),
                (TELEMETRY, telemetry),
                (ALERTS, alerts),
                (INGEST, ingest),
            ],
            times,
        })
    }

    pub fn registry(&self, scope: Scope) -> RegistryApi {
        DeviceRegistryClient::with_interceptor(self.registry.clone(), scope)
    }

    /// device-registry's commands and desired state.
    pub fn commands(&self, scope: Scope) -> Commands {
        DeviceCommandsServiceClient::with_interceptor(self.registry.clone(), scope)
    }

    pub fn alerts(&self, scope: Scope) -> Alerts {
        AlertsClient::with_interceptor(self.alerts.clone(), scope)
    }

    /// ingest-writer's `Telemetry`, which answers only about `scope`'s
    /// devices.
    pub fn telemetry(&self, scope: Scope) -> Telemetry {
        TelemetryClient::with_interceptor(self.telemetry.clone(), scope)
    }

    pub fn ingest(&self) -> Ingest {
        IngestClient::new(self.ingest.clone())
    }

    /// ingest-writer's `QueryMetrics`, its answer as the encoded bytes
    /// that arrived ([`crate::metrics_json`] renders them).
    pub async fn query_metrics_wire(
        &self,
        scope: &Scope,
        req: v1::QueryMetricsRequest,
    ) -> Result<tonic::Response<Bytes>, tonic::Status> {
        let (mut grpc, req) = self.wire_call(scope, req, "QueryMetrics").await?;
        let path = PathAndQuery::from_static("/iot.v1.Telemetry/QueryMetrics");
        grpc.unary(req, path, iot_proto::WireCodec::default()).await
    }

    /// ingest-writer's `StreamMetrics`, each part as the encoded bytes
    /// that arrived.
    pub async fn stream_metrics_wire(
        &self,
        scope: &Scope,
        req: v1::QueryMetricsRequest,
    ) -> Result<tonic::Response<tonic::Streaming<Bytes>>, tonic::Status> {
        let (mut grpc, req) = self.wire_call(scope, req, "StreamMetrics").await?;
        let path = PathAndQuery::from_static("/iot.v1.Telemetry/StreamMetrics");
        grpc.server_streaming(req, path, iot_proto::WireCodec::default())
            .await
    }

    /// A ready client of ingest-writer's `Telemetry` for `method`, whose
    /// answers stay encoded, and the request to send it.
    async fn wire_call(
        &self,
        scope: &Scope,
        req: v1::QueryMetricsRequest,
        method: &'static str,
    ) -> Result<
        (
            tonic::client::Grpc<Upstream>,
            tonic::Request<v1::QueryMetricsRequest>,
        ),
        tonic::Status,
    > {
        let mut grpc = tonic::client::Grpc::new(self.telemetry.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        let mut req = tonic::Request::new(req);
        scope.apply(req.metadata_mut())?;
        req.extensions_mut()
            .insert(tonic::GrpcMethod::new("iot.v1.Telemetry", method));
        Ok((grpc, req))
    }

    /// Names of backends that are not serving.
    pub async fn unhealthy(&self) -> Vec<&'static str> {
        let mut bad = Vec::new();
        for (name, ch) in &self.probes {
            let serving = HealthClient::new(ch.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
                .unwrap_or(false);
            if !serving {
                bad.push(*name);
            }
        }
        bad
    }
}

/// A backend's answer, or its failure as a GraphQL error.
pub trait Answer<T> {
    /// The answer's message, or the status as a GraphQL error that names
    /// the backend `service` ([`status_error`]).
    fn answer(self, service: &str) -> async_graphql::Result<T>;
}

impl<T> Answer<T> for Result<tonic::Response<T>, tonic::Status> {
    fn answer(self, service: &str) -> async_graphql::Result<T> {
        self.map(tonic::Response::into_inner)
            .map_err(|s| status_error(service, &s))
    }
}

/// A backend's answer as a GraphQL error: its message, and a code clients
/// can act on in `extensions.code`.
/// Whether a locally made status comes from a timeout (an I/O error of
/// kind TimedOut among its causes, as a connect timeout gives).
fn timed_out(s: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
            || c.to_string().contains("deadline has elapsed")
        {
            return true;
        }
        cause = c.source();
    }
    false
}

pub fn status_error(service: &str, s: &tonic::Status) -> async_graphql::Error {
    use tonic::Code;
    let (code, message) = match s.code() {
        Code::InvalidArgument => ("BAD_USER_INPUT", s.message().to_owned()),
        Code::NotFound => ("NOT_FOUND", s.message().to_owned()),
        Code::AlreadyExists => ("ALREADY_EXISTS", s.message().to_owned()),
        Code::FailedPrecondition => ("FAILED_PRECONDITION", s.message().to_owned()),
        // An optimistic-concurrency check (a desired state's version).
        Code::Aborted => ("CONFLICT", s.message().to_owned()),
        // An owner's quota (devices, alert rules, webhooks): retrying will
        // not help; deleting some, or a higher limit, will.
        Code::ResourceExhausted if s.metadata().contains_key(iot_proto::QUOTA_METADATA) => {
            ("QUOTA_EXCEEDED", s.message().to_owned())
        }
        // The backend is busy for this caller now (its queries or the
        // database's connections): worth a retry after a pause.
        Code::ResourceExhausted => ("BACKEND_BUSY", s.message().to_owned()),
        Code::Unauthenticated | Code::PermissionDenied => ("FORBIDDEN", "not allowed".to_owned()),
        // tonic answers its own request timeout with CANCELLED.
        Code::DeadlineExceeded | Code::Cancelled => (
            "BACKEND_TIMEOUT",
            format!("{service} did not answer in time"),
        ),
        Code::Unavailable => ("BACKEND_UNAVAILABLE", format!("{service} is unavailable")),
        // A status with a source error was made here, by the transport,
        // not answered by the backend: a connection (or its TLS handshake)
        // that timed out or failed.
        _ if timed_out(s) => (
            "BACKEND_TIMEOUT",
            format!("{service} did not answer in time"),
        ),
        _ if std::error::Error::source(s).is_some() => {
            ("BACKEND_UNAVAILABLE", format!("{service} is unavailable"))
        }
        _ => ("INTERNAL", format!("{service} failed")),
    };
    if matches!(code, "BACKEND_UNAVAILABLE" | "BACKEND_TIMEOUT" | "INTERNAL") {
        tracing::warn!(service, status = %s, "backend call failed");
    }
    let quota = (code == "QUOTA_EXCEEDED").then(|| {
        let text = |key| s.metadata().get(key).and_then(|v| v.to_str().ok());
        (
            text(iot_proto::QUOTA_METADATA)
                .unwrap_or_default()
                .to_owned(),
            text(iot_proto::QUOTA_LIMIT_METADATA).and_then(|v| v.parse::<u64>().ok()),
        )
    });
    async_graphql::Error::new(message).extend_with(|_, e| {
        e.set("code", code);
        e.set("service", service.to_owned());
        if let Some((name, limit)) = &quota {
            e.set("quota", name.as_str());
            if let Some(limit) = limit {
                e.set("limit", *limit);
            }
        }
        // The backend's field violations, for a client that shows each
        // problem at its field.
        let fields = iot_proto::field_violations(s);
        if !fields.is_empty() {
            let fields = fields.into_iter().map(|(field, message)| {
                let mut v = async_graphql::indexmap::IndexMap::new();
                v.insert(async_graphql::Name::new("field"), field.into());
                v.insert(async_graphql::Name::new("message"), message.into());
                async_graphql::Value::Object(v)
            });
            e.set("fields", async_graphql::Value::List(fields.collect()));
        }
    })
}

/// A GraphQL error with a code.
pub fn error(code: &'static str, message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// Backend call latencies over the last minute (the status summary's
/// `average_response_time_ms`); the layer's metrics feed it.
pub struct ResponseTimes {
    /// (second, sum of ms, calls) for the last 60 seconds.
    window: Mutex<Vec<(u64, f64, u64)>>,
    epoch: Instant,
}

impl ResponseTimes {
    fn new() -> Self {
        Self {
            window: Mutex::new(Vec::new()),
            epoch: Instant::now(),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let now = self.epoch.elapsed().as_secs();
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|(s, _, _)| now.saturating_sub(*s) < 60);
        match w.last_mut() {
            Some((s, sum, n)) if *s == now => {
                *sum += elapsed.as_secs_f64() * 1000.0;
                *n += 1;
            }
            _ => w.push((now, elapsed.as_secs_f64() * 1000.0, 1)),
        }
    }

    /// Mean backend call latency over the last minute, in milliseconds
    /// (0 when there were none).
    pub fn mean_ms_last_minute(&self) -> f64 {
        let now = self.epoch.elapsed().as_secs();
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (sum, n) = w
            .iter()
            .filter(|(s, _, _)| now.saturating_sub(*s) < 60)
            .fold((0.0, 0), |(a, b), (_, s, n)| (a + s, b + n));
        if n == 0 { 0.0 } else { sum / n as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_is_quota_exceeded_naming_the_quota_and_its_limit() {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert(
            iot_proto::QUOTA_METADATA,
            "rules_per_owner".parse().unwrap(),
        );
        md.insert(iot_proto::QUOTA_LIMIT_METADATA, "1000".parse().unwrap());
        let s = tonic::Status::with_metadata(
            tonic::Code::ResourceExhausted,
            "quota exceeded: limits.rules_per_owner is 1000",
            md,
        );
        let e = status_error("alert-engine", &s);
        assert_eq!(e.message, "quota exceeded: limits.rules_per_owner is 1000");
        let ext = e.extensions.unwrap();
        assert_eq!(ext.get("code"), Some(&"QUOTA_EXCEEDED".into()));
        assert_eq!(ext.get("quota"), Some(&"rules_per_owner".into()));
        assert_eq!(ext.get("limit"), Some(&1000u64.into()));
        // Other RESOURCE_EXHAUSTED answers (a busy pool, say) are not quotas.
        let busy = tonic::Status::resource_exhausted("every database connection is busy");
        let e = status_error("ingest-writer", &busy);
        assert_eq!(e.message, "every database connection is busy");
        assert_eq!(
            e.extensions.unwrap().get("code"),
            Some(&"BACKEND_BUSY".into())
        );
    }
}
