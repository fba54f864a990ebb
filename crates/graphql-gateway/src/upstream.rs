//! The services the gateway calls: one lazily connected channel each, a
//! deadline on every call, and every call counted and timed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_graphql::ErrorExtensions;
use iot_proto::v1::{
    self, alerts_client::AlertsClient, device_registry_client::DeviceRegistryClient,
    ingest_client::IngestClient, telemetry_client::TelemetryClient,
};
use iot_proto::{Scope, Traced};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use prost::bytes::Bytes;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::StartError;
use crate::config::Config;

pub type RegistryApi = DeviceRegistryClient<InterceptedService<Channel, Scope>>;
pub type Alerts = AlertsClient<InterceptedService<Channel, Scope>>;

/// Channels to the backends, and the gateway's view of how they answer.
#[derive(Clone)]
pub struct Upstreams {
    registry: Channel,
    telemetry: Channel,
    alerts: Channel,
    ingest: Channel,
    pub metrics: Arc<UpstreamMetrics>,
}

fn channel(service: &'static str, url: &str, timeout: Duration) -> Result<Channel, StartError> {
    let endpoint =
        Channel::from_shared(url.to_owned()).map_err(|source| StartError::UpstreamAddress {
            service,
            url: url.to_owned(),
            source,
        })?;
    Ok(endpoint
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Upstreams {
    pub fn connect(config: &Config, registry: &Registry) -> Result<Self, StartError> {
        let t = Duration::from_millis(config.limits.upstream_timeout_ms);
        Ok(Self {
            registry: channel("device-registry", &config.registry_url, t)?,
            telemetry: channel("ingest-writer", &config.telemetry_url, t)?,
            alerts: channel("alert-engine", &config.alerts_url, t)?,
            ingest: channel("mqtt-gateway", &config.ingest_url, t)?,
            metrics: Arc::new(UpstreamMetrics::new(registry)?),
        })
    }

    pub fn registry(&self, scope: Scope) -> RegistryApi {
        DeviceRegistryClient::with_interceptor(self.registry.clone(), scope)
    }

    pub fn alerts(&self, scope: Scope) -> Alerts {
        AlertsClient::with_interceptor(self.alerts.clone(), scope)
    }

    pub fn telemetry(&self) -> TelemetryClient<InterceptedService<Channel, Traced>> {
        TelemetryClient::with_interceptor(self.telemetry.clone(), Traced)
    }

    pub fn ingest(&self) -> IngestClient<InterceptedService<Channel, Traced>> {
        IngestClient::with_interceptor(self.ingest.clone(), Traced)
    }

    /// ingest-writer's `QueryMetrics`, its answer as the encoded bytes
    /// that arrived ([`crate::metrics_json`] renders them).
    pub async fn query_metrics_wire(
        &self,
        req: v1::QueryMetricsRequest,
    ) -> Result<tonic::Response<Bytes>, tonic::Status> {
        let (mut grpc, req) = self.wire_call(req, "QueryMetrics").await?;
        let path = PathAndQuery::from_static("/iot.v1.Telemetry/QueryMetrics");
        grpc.unary(req, path, iot_proto::WireCodec::default()).await
    }

    /// ingest-writer's `StreamMetrics`, each part as the encoded bytes
    /// that arrived.
    pub async fn stream_metrics_wire(
        &self,
        req: v1::QueryMetricsRequest,
    ) -> Result<tonic::Response<tonic::Streaming<Bytes>>, tonic::Status> {
        let (mut grpc, req) = self.wire_call(req, "StreamMetrics").await?;
        let path = PathAndQuery::from_static("/iot.v1.Telemetry/StreamMetrics");
        grpc.server_streaming(req, path, iot_proto::WireCodec::default())
            .await
    }

    /// A ready client of ingest-writer's `Telemetry` for `method`, whose
    /// answers stay encoded, and the request to send it.
    async fn wire_call(
        &self,
        req: v1::QueryMetricsRequest,
        method: &'static str,
    ) -> Result<
        (
            tonic::client::Grpc<InterceptedService<Channel, Traced>>,
            tonic::Request<v1::QueryMetricsRequest>,
        ),
        tonic::Status,
    > {
        let mut grpc =
            tonic::client::Grpc::new(InterceptedService::new(self.telemetry.clone(), Traced));
        grpc.ready().await.map_err(|e| {
            let e: tonic::codegen::StdError = e.into();
            tonic::Status::unknown(format!("Service was not ready: {e}"))
        })?;
        let mut req = tonic::Request::new(req);
        req.extensions_mut()
            .insert(tonic::GrpcMethod::new("iot.v1.Telemetry", method));
        Ok((grpc, req))
    }

    /// Names of backends that are not serving.
    pub async fn unhealthy(&self) -> Vec<&'static str> {
        let mut bad = Vec::new();
        for (name, ch) in [
            ("device-registry", &self.registry),
            ("ingest-writer", &self.telemetry),
            ("alert-engine", &self.alerts),
            ("mqtt-gateway", &self.ingest),
        ] {
            let serving = HealthClient::new(ch.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
                .unwrap_or(false);
            if !serving {
                bad.push(name);
            }
        }
        bad
    }

    /// Runs one gRPC call to `service`'s `method`, counting and timing it;
    /// a failure becomes a GraphQL error with an `extensions.code`.
    pub async fn call<T, F>(
        &self,
        service: &'static str,
        method: &'static str,
        fut: F,
    ) -> async_graphql::Result<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let out = fut.await;
        let elapsed = started.elapsed();
        let code = match &out {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.metrics.observe(service, method, &code, elapsed);
        out.map(tonic::Response::into_inner)
            .map_err(|s| status_error(service, &s))
    }
}

/// A backend's answer as a GraphQL error: its message, and a code clients
/// can act on in `extensions.code`.
pub fn status_error(service: &str, s: &tonic::Status) -> async_graphql::Error {
    use tonic::Code;
    let (code, message) = match s.code() {
        Code::InvalidArgument => ("BAD_USER_INPUT", s.message().to_owned()),
        Code::NotFound => ("NOT_FOUND", s.message().to_owned()),
        Code::AlreadyExists => ("ALREADY_EXISTS", s.message().to_owned()),
        Code::FailedPrecondition => ("FAILED_PRECONDITION", s.message().to_owned()),
        Code::Unauthenticated | Code::PermissionDenied => ("FORBIDDEN", "not allowed".to_owned()),
        // tonic answers its own request timeout with CANCELLED.
        Code::DeadlineExceeded | Code::Cancelled => (
            "BACKEND_TIMEOUT",
            format!("{service} did not answer in time"),
        ),
        Code::Unavailable => ("BACKEND_UNAVAILABLE", format!("{service} is unavailable")),
        _ => ("INTERNAL", format!("{service} failed")),
    };
    if matches!(code, "BACKEND_UNAVAILABLE" | "BACKEND_TIMEOUT" | "INTERNAL") {
        tracing::warn!(service, status = %s, "backend call failed");
    }
    async_graphql::Error::new(message).extend_with(|_, e| {
        e.set("code", code);
        e.set("service", service.to_owned());
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

/// Backend call figures: Prometheus series, and the mean latency over the
/// last minute (the status summary's `average_response_time_ms`).
pub struct UpstreamMetrics {
    calls: IntCounterVec,
    seconds: HistogramVec,
    /// (second, sum of ms, calls) for the last 60 seconds.
    window: Mutex<Vec<(u64, f64, u64)>>,
    epoch: Instant,
}

impl UpstreamMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let calls = IntCounterVec::new(
            Opts::new(
                "upstream_calls_total",
                "gRPC calls to backends, by service, method and status code",
            ),
            &["service", "method", "code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("upstream_call_duration_seconds", "gRPC call latency").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ],
            ),
            &["service", "method"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self {
            calls,
            seconds,
            window: Mutex::new(Vec::new()),
            epoch: Instant::now(),
        })
    }

    fn observe(&self, service: &str, method: &str, code: &str, elapsed: Duration) {
        self.calls.with_label_values(&[service, method, code]).inc();
        self.seconds
            .with_label_values(&[service, method])
            .observe(elapsed.as_secs_f64());
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
