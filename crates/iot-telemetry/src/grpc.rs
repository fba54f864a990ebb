//! Request metrics of gRPC calls, as tower layers. The names are the same
//! in every service; the registry's `service` label tells them apart.
//!
//! Server side ([`GrpcMetrics`], for tonic's `Server::builder().layer(...)`):
//! `iot_grpc_server_requests_total` by method and status code, and
//! `iot_grpc_server_request_duration_seconds` by method (for a streaming
//! call, the time to its response headers).
//!
//! Client side ([`GrpcClientMetrics`], one [`GrpcClientLayer`] per upstream
//! wrapped once around its `Channel`): `iot_grpc_client_requests_total` by
//! upstream (the called service's name), method and status code, and
//! `iot_grpc_client_request_duration_seconds` by upstream and method (the
//! time to the call's final status: for a unary call its whole answer, for
//! a stream its end). The method is read from the request path, so call
//! sites name nothing. The layer also carries the caller's trace
//! (`traceparent`) to the service it calls.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use futures::future::BoxFuture;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Latency buckets of both sides, in seconds.
const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Clone)]
pub struct GrpcMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl GrpcMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "iot_grpc_server_requests_total",
                "gRPC calls served, by method and status code",
            ),
            &["method", "code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "iot_grpc_server_request_duration_seconds",
                "Time to answer a gRPC call (streams: to the response headers)",
            )
            .buckets(BUCKETS.to_vec()),
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
    match status {
        None => "OK",
        Some(s) => s.parse::<i32>().map_or("UNKNOWN", code_name),
    }
}

/// The name of gRPC status code `n` (`UNKNOWN` for a code gRPC does not
/// define).
fn code_name(n: i32) -> &'static str {
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
    usize::try_from(n)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
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

/// Any error a gRPC client's channel ends a call with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One finished client call, as [`GrpcClientMetrics::on_call`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct ClientCall<'a> {
    /// The upstream's name (the layer's `service` label).
    pub service: &'a str,
    /// The method, e.g. `GetDevice`.
    pub method: &'a str,
    /// The status code's name, e.g. `OK`, `NOT_FOUND`, `CANCELLED` (also
    /// for a call the caller dropped before it ended).
    pub code: &'static str,
    /// From the request to the final status.
    pub elapsed: Duration,
}

type Observer = Arc<dyn Fn(&ClientCall<'_>) + Send + Sync>;

/// The client-side request metrics of a service: one set of series for
/// every upstream it calls; [`GrpcClientMetrics::layer`] makes the layer
/// of one upstream.
#[derive(Clone)]
pub struct GrpcClientMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    observer: Option<Observer>,
}

impl GrpcClientMetrics {
    /// `iot_grpc_client_requests_total{upstream,method,code}` and
    /// `iot_grpc_client_request_duration_seconds{upstream,method}`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "iot_grpc_client_requests_total",
                "gRPC calls to other services, by upstream, method and status code",
            ),
            &["upstream", "method", "code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "iot_grpc_client_request_duration_seconds",
                "Time from a gRPC call to its final status (streams: to their end)",
            )
            .buckets(BUCKETS.to_vec()),
            &["upstream", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self {
            requests,
            seconds,
            observer: None,
        })
    }

    /// Also hands every finished call to `observer` (for figures of the
    /// service's own, such as a recent mean). Layers made before this call
    /// do not.
    #[must_use]
    pub fn on_call(mut self, observer: impl Fn(&ClientCall<'_>) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The layer of the upstream `service` (its `upstream` label): wrap its
    /// channel once, `tower::ServiceBuilder::new().layer(..).service(channel)`.
    pub fn layer(&self, service: &'static str) -> GrpcClientLayer {
        GrpcClientLayer {
            metrics: Some(self.clone()),
            service,
        }
    }

    fn record(&self, service: &str, method: &str, code: &'static str, elapsed: Duration) {
        self.requests
            .with_label_values(&[service, method, code])
            .inc();
        self.seconds
            .with_label_values(&[service, method])
            .observe(elapsed.as_secs_f64());
        if let Some(observe) = &self.observer {
            observe(&ClientCall {
                service,
                method,
                code,
                elapsed,
            });
        }
    }
}

/// The client layer of one upstream: request metrics (when made by
/// [`GrpcClientMetrics::layer`]) and the caller's `traceparent` on every
/// call that does not carry one yet.
#[derive(Clone)]
pub struct GrpcClientLayer {
    metrics: Option<GrpcClientMetrics>,
    service: &'static str,
}

impl GrpcClientLayer {
    /// Only the `traceparent`: for clients of a process that keeps no
    /// metrics (the CLI, tests, benchmarks).
    pub fn unmeasured() -> Self {
        Self {
            metrics: None,
            service: "",
        }
    }
}

impl std::fmt::Debug for GrpcClientLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClientLayer")
            .field("service", &self.service)
            .field("measured", &self.metrics.is_some())
            .finish()
    }
}

impl<S> tower::Layer<S> for GrpcClientLayer {
    type Service = MeasuredClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MeasuredClient {
            inner,
            layer: self.clone(),
        }
    }
}

/// A channel wearing a [`GrpcClientLayer`]; tonic's generated clients take
/// it as they take a `Channel`.
#[derive(Clone, Debug)]
pub struct MeasuredClient<S> {
    inner: S,
    layer: GrpcClientLayer,
}

/// The method label of a client call: the last segment of a
/// `/package.Service/Method` path ("other" for anything else).
fn client_method(path: &str) -> &str {
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method))
            if !service.is_empty()
                && !method.is_empty()
                && method
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            method
        }
        _ => "other",
    }
}

/// A call being measured; recorded once, as `CANCELLED` if it is dropped
/// before its final status.
struct Pending {
    call: Option<(GrpcClientMetrics, &'static str, String, Instant)>,
}

impl Pending {
    fn finish(&mut self, code: &'static str) {
        if let Some((metrics, service, method, started)) = self.call.take() {
            metrics.record(service, &method, code, started.elapsed());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// The code of a call that failed before any answer, as tonic reports it
/// (a timeout is CANCELLED, a refused connection UNAVAILABLE); the error
/// goes on as that status, as tonic would turn it anyway.
fn failed(e: BoxError) -> (&'static str, BoxError) {
    let status = tonic::Status::from_error(e);
    (code_name(i32::from(status.code())), Box::new(status))
}

/// The code a response's headers (or trailers) give, if they end the
/// call: a `grpc-status`, or an HTTP status that is not 200 (mapped as
/// gRPC maps it).
fn final_code(headers: &HeaderMap, http: StatusCode) -> Option<&'static str> {
    if let Some(s) = headers.get("grpc-status") {
        return Some(code(Some(s.to_str().unwrap_or_default())));
    }
    let mapped = match http {
        StatusCode::OK => return None,
        StatusCode::BAD_REQUEST => "INTERNAL",
        StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
        StatusCode::FORBIDDEN => "PERMISSION_DENIED",
        StatusCode::NOT_FOUND => "UNIMPLEMENTED",
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    Some(mapped)
}

impl<S, B, RB> tower::Service<Request<B>> for MeasuredClient<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: http_body::Body + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<MeasuredBody<RB>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let headers = req.headers_mut();
        if !headers.contains_key(crate::trace::TRACEPARENT)
            && let Some(tp) = crate::trace::traceparent()
            && let Ok(v) = HeaderValue::from_str(&tp)
        {
            headers.insert(crate::trace::TRACEPARENT, v);
        }
        let mut pending = Pending {
            call: self.layer.metrics.as_ref().map(|m| {
                (
                    m.clone(),
                    self.layer.service,
                    client_method(req.uri().path()).to_owned(),
                    Instant::now(),
                )
            }),
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            match answer.await {
                Ok(res) => {
                    if let Some(code) = final_code(res.headers(), res.status()) {
                        pending.finish(code);
                    }
                    let http = res.status();
                    Ok(res.map(|body| MeasuredBody {
                        inner: body,
                        pending,
                        http,
                    }))
                }
                Err(e) => {
                    let (code, e) = failed(e.into());
                    pending.finish(code);
                    Err(e)
                }
            }
        })
    }
}

/// A response body whose call is recorded when its final status arrives
/// (the trailers), when it fails, or when it is dropped before either.
pub struct MeasuredBody<B> {
    inner: B,
    pending: Pending,
    http: StatusCode,
}

// tonic's generated `with_interceptor` asks for it.
impl<B: Default> Default for MeasuredBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            pending: Pending { call: None },
            http: StatusCode::OK,
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for MeasuredBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeasuredBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for MeasuredBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = final_code(trailers, this.http).unwrap_or("UNKNOWN");
                    this.pending.finish(code);
                }
                Some(Ok(frame))
            }
            Some(Err(e)) => {
                let (code, e) = failed(e.into());
                this.pending.finish(code);
                Some(Err(e))
            }
            None => {
                // Ended without trailers: a protocol error, unless the
                // headers held the status.
                this.pending.finish("UNKNOWN");
                None
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
        assert_eq!(code(Some("-1")), "UNKNOWN");
        assert_eq!(
            client_method("/iot.v1.Telemetry/QueryMetrics"),
            "QueryMetrics"
        );
        assert_eq!(client_method("/iot.v1.Telemetry/"), "other");
        assert_eq!(client_method("/x/{evil}"), "other");
        assert_eq!(client_method("nothing"), "other");
    }

    /// A response body of the given frames.
    #[derive(Debug)]
    struct Frames(std::collections::VecDeque<http_body::Frame<axum::body::Bytes>>);

    impl http_body::Body for Frames {
        type Data = axum::body::Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// Answers every call with `answer`'s response, or fails it.
    #[derive(Clone)]
    struct Upstream(fn() -> Result<Response<Frames>, std::io::Error>);

    impl tower::Service<Request<()>> for Upstream {
        type Response = Response<Frames>;
        type Error = std::io::Error;
        type Future = futures::future::Ready<Result<Response<Frames>, std::io::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            futures::future::ready((self.0)())
        }
    }

    fn ok_answer() -> Result<Response<Frames>, std::io::Error> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Ok(Response::new(Frames(
            [
                http_body::Frame::data(axum::body::Bytes::from_static(b"\0\0\0\0\0")),
                http_body::Frame::trailers(trailers),
            ]
            .into(),
        )))
    }

    fn not_found() -> Result<Response<Frames>, std::io::Error> {
        let mut res = Response::new(Frames(Default::default()));
        res.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("5"));
        Ok(res)
    }

    fn refused() -> Result<Response<Frames>, std::io::Error> {
        Err(std::io::Error::other("connection refused"))
    }

    async fn drain<B: http_body::Body + Unpin>(mut body: B) {
        while futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .is_some()
        {}
    }

    #[tokio::test]
    async fn client_calls_are_counted_by_method_and_final_status() {
        use tower::{Layer as _, Service as _};
        let registry = crate::service_registry("graphql-gateway").unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let metrics = GrpcClientMetrics::register(&registry).unwrap().on_call({
            let seen = seen.clone();
            move |c| {
                seen.lock()
                    .unwrap()
                    .push(format!("{} {} {}", c.service, c.method, c.code));
            }
        });
        let request = || {
            Request::builder()
                .uri("http://x/iot.v1.DeviceRegistry/GetDevice")
                .body(())
                .unwrap()
        };
        // A whole answer: recorded at its trailers.
        let mut ok = metrics.layer("device-registry").layer(Upstream(ok_answer));
        let res = ok.call(request()).await.unwrap();
        assert!(seen.lock().unwrap().is_empty());
        drain(res.into_body()).await;
        // A status in the headers; a call that fails before any answer.
        let mut missing = metrics.layer("device-registry").layer(Upstream(not_found));
        let _ = missing.call(request()).await.unwrap();
        let mut down = metrics.layer("device-registry").layer(Upstream(refused));
        let err = down.call(request()).await.unwrap_err();
        assert!(err.to_string().contains("connection refused"), "{err}");
        // A body dropped before its status: the caller gave up.
        drop(ok.call(request()).await.unwrap());
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "device-registry GetDevice OK",
                "device-registry GetDevice NOT_FOUND",
                "device-registry GetDevice UNKNOWN",
                "device-registry GetDevice CANCELLED",
            ]
        );
        let text = {
            use prometheus::Encoder as _;
            let mut out = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        let sample = |name: &str, labels: &[&str]| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!("{name}{{"))
                        && labels.iter().all(|want| l.contains(want))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        let caller = "service=\"graphql-gateway\"";
        let upstream = "upstream=\"device-registry\"";
        assert_eq!(
            sample(
                "iot_grpc_client_requests_total",
                &[caller, upstream, "code=\"OK\"", "method=\"GetDevice\""]
            )
            .as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            sample(
                "iot_grpc_client_request_duration_seconds_count",
                &[caller, upstream, "method=\"GetDevice\""]
            )
            .as_deref(),
            Some("4"),
            "{text}"
        );
        // Unmeasured: nothing recorded, the call goes through.
        let mut plain = GrpcClientLayer::unmeasured().layer(Upstream(ok_answer));
        drain(plain.call(request()).await.unwrap().into_body()).await;
        assert_eq!(seen.lock().unwrap().len(), 4);
    }

    /// Records the `traceparent` of the request it gets.
    #[derive(Clone, Default)]
    struct Echo(Arc<std::sync::Mutex<Option<String>>>);

    impl tower::Service<Request<()>> for Echo {
        type Response = Response<Frames>;
        type Error = std::io::Error;
        type Future = futures::future::Ready<Result<Response<Frames>, std::io::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            *self.0.lock().unwrap() = req
                .headers()
                .get(crate::trace::TRACEPARENT)
                .map(|v| v.to_str().unwrap().to_owned());
            futures::future::ready(not_found())
        }
    }

    #[test]
    fn client_calls_carry_the_callers_trace() {
        use opentelemetry::trace::TracerProvider as _;
        use tower::{Layer as _, Service as _};
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let echo = Echo::default();
        let mut client = GrpcClientLayer::unmeasured().layer(echo.clone());
        let request = |tp: Option<&'static str>| {
            let mut b = Request::builder().uri("http://x/iot.v1.Ingest/IngestReadings");
            if let Some(tp) = tp {
                b = b.header(crate::trace::TRACEPARENT, tp);
            }
            b.body(()).unwrap()
        };
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("caller");
            let _in = span.enter();
            let expected = crate::trace::traceparent().unwrap();
            drop(client.call(request(None)));
            assert_eq!(echo.0.lock().unwrap().as_deref(), Some(expected.as_str()));
            // One the caller set (an interceptor's) is kept.
            let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            drop(client.call(request(Some(theirs))));
            assert_eq!(echo.0.lock().unwrap().as_deref(), Some(theirs));
        });
        // Outside any trace nothing is added.
        drop(client.call(request(None)));
        assert_eq!(*echo.0.lock().unwrap(), None);
    }
}
