//! Request metrics of a gRPC server, as a tower layer for tonic's
//! `Server::builder().layer(...)`: `<prefix>_grpc_server_requests_total`
//! by method and status code, and `<prefix>_grpc_server_request_duration_seconds`
//! by method (for a streaming call, the time to its response headers).

use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{Request, Response};
use futures::future::BoxFuture;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct GrpcMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl GrpcMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "grpc_server_requests_total",
                "gRPC calls served, by method and status code",
            ),
            &["method", "code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_request_duration_seconds",
                "Time to answer a gRPC call (streams: to the response headers)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self { requests, seconds })
    }
}

/// The method label: the platform's own methods and the health check by
/// name, anything else (a caller can send any path) as "other".
fn method(path: &str) -> String {
    if path.starts_with("/iot.v1.") || path.starts_with("/grpc.health.v1.") {
        path.trim_start_matches('/').to_owned()
    } else {
        "other".to_owned()
    }
}

/// The name of a `grpc-status` code; a response without one in its headers
/// succeeded (the status then follows in the trailers, and errors are
/// sent as headers-only responses).
fn code(status: Option<&str>) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    match status {
        None => "OK",
        Some(s) => s
            .parse::<usize>()
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
            .unwrap_or("UNKNOWN"),
    }
}

impl<S> tower::Layer<S> for GrpcMetrics {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Measured {
            inner,
            metrics: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, B, RB> tower::Service<Request<B>> for Measured<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method(req.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(req);
        let m = self.metrics.clone();
        Box::pin(async move {
            let res = answer.await;
            let status = match &res {
                Ok(r) => code(r.headers().get("grpc-status").and_then(|v| v.to_str().ok())),
                Err(_) => "UNKNOWN",
            };
            m.requests.with_label_values(&[&method, status]).inc();
            m.seconds
                .with_label_values(&[&method])
                .observe(started.elapsed().as_secs_f64());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method("/iot.v1.Alerts/ListAlerts"),
            "iot.v1.Alerts/ListAlerts"
        );
        assert_eq!(method("/anything/else"), "other");
        assert_eq!(code(None), "OK");
        assert_eq!(code(Some("5")), "NOT_FOUND");
        assert_eq!(code(Some("16")), "UNAUTHENTICATED");
        assert_eq!(code(Some("99")), "UNKNOWN");
    }
}
