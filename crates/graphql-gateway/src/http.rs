//! The HTTP side: `POST /graphql`, GraphQL over WebSocket on `GET /graphql`
//! (graphql-transport-ws and the legacy graphql-ws), the web console on
//! `/console/` (`crate::console`; in development mode `/` leads to its
//! query page), `/healthz` and `/readyz`. Authentication and the
//! per-caller rate limit happen here, before a query runs.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, InsufficientCapacity, Quota};
use iot_telemetry::Readiness;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

use crate::auth::Authenticator;
use crate::schema::{self, ApiSchema};
use crate::upstream::Upstreams;

#[derive(Clone)]
pub struct AppState {
    pub schema: ApiSchema,
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<RateLimiter>,
    pub ws: crate::ws::WsLimits,
    pub ready: Readiness,
    pub up: Upstreams,
    pub metrics: HttpMetrics,
}

pub fn router(state: AppState, dev_mode: bool, max_body_bytes: usize) -> Router {
    let mut r = Router::new()
        .route("/graphql", get(crate::ws::upgrade).post(graphql))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/export", get(crate::export::download))
        .merge(crate::console::routes());
    if dev_mode {
        // The console's query page, which replaces GraphiQL: GraphiQL's
        // page loads its scripts from a CDN, so it never starts offline.
        r = r.route(
            "/",
            get(|| async { Redirect::temporary("/console/#/query") }),
        );
    }
    r.layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ready.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// A GraphQL-shaped error response outside of query execution.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "errors": [{"message": message, "extensions": {"code": code}}]
    });
    (status, Json(body)).into_response()
}

async fn graphql(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let who = match s.auth.from_headers(&headers) {
        Ok(p) => p,
        Err(e) => {
            s.metrics
                .requests
                .with_label_values(&["unauthenticated"])
                .inc();
            return refuse(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", &e.to_string());
        }
    };
    let batch: async_graphql::BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            s.metrics.requests.with_label_values(&["bad_request"]).inc();
            return refuse(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("the body is not a GraphQL request: {e}"),
            );
        }
    };
    let n = match &batch {
        async_graphql::BatchRequest::Single(_) => 1,
        async_graphql::BatchRequest::Batch(v) => u32::try_from(v.len()).unwrap_or(u32::MAX),
    };
    if let Err(wait) = s.limiter.take(&who.name, n) {
        s.metrics
            .requests
            .with_label_values(&["rate_limited"])
            .inc();
        let mut r = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "too many requests; slow down",
        );
        if let Ok(v) = wait.as_secs_f64().ceil().max(1.0).to_string().parse() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    // Large lists are rendered to JSON text by their resolvers and put in
    // place after serialization (`crate::raw`).
    let raw = crate::raw::RawJson::new();
    let with_caller = |mut req: async_graphql::Request| {
        req.data = schema::request_data(&s.up, who.clone());
        req.data.insert(raw.clone());
        req
    };
    let batch = match batch {
        async_graphql::BatchRequest::Single(r) => {
            async_graphql::BatchRequest::Single(with_caller(r))
        }
        async_graphql::BatchRequest::Batch(v) => {
            async_graphql::BatchRequest::Batch(v.into_iter().map(with_caller).collect())
        }
    };
    // Every backend call the request makes is a child of its span (and of
    // the caller's trace, when it sends `traceparent`).
    let span = tracing::info_span!("graphql.request", otel.kind = "server", caller = %who.name);
    iot_telemetry::trace::set_remote_parent(
        &span,
        headers
            .get(iot_telemetry::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let resp = s.schema.execute_batch(batch).instrument(span).await;
    let outcome = if resp.is_ok() { "ok" } else { "error" };
    // Serialized here, so the latency metric includes it.
    let pieces = match serde_json::to_vec(&resp) {
        Ok(b) => raw.pieces(b),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a GraphQL response");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error",
            );
        }
    };
    s.metrics.requests.with_label_values(&[outcome]).inc();
    s.metrics
        .seconds
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    // The pieces go out one after another under one Content-Length,
    // without being copied into one buffer first.
    let length: usize = pieces.iter().map(Bytes::len).sum();
    let body = match <[Bytes; 1]>::try_from(pieces) {
        Ok([one]) => axum::body::Body::from(one),
        Err(pieces) => axum::body::Body::from_stream(futures::stream::iter(
            pieces.into_iter().map(Ok::<_, std::convert::Infallible>),
        )),
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(length)),
        ],
        body,
    )
        .into_response()
}

/// Per-caller token buckets (GCRA, as `governor` does it): `per_sec`
/// tokens a second, at most `burst` at once.
pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    /// The time one token takes to come back.
    period: Duration,
    burst: u32,
}

impl RateLimiter {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        // The configuration is checked (`per_sec` > 0, `burst` >= 1);
        // whatever it holds, the quota stays one governor can keep (a
        // bucket's whole capacity in nanoseconds fits in a u64).
        let burst = (burst.clamp(1.0, f64::from(u32::MAX)) as u32).max(1);
        let longest = Duration::from_nanos(u64::MAX / 2 / u64::from(burst));
        let period = Duration::try_from_secs_f64(per_sec.recip())
            .unwrap_or(longest)
            .clamp(Duration::from_nanos(1), longest);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            period,
            burst,
        }
    }

    /// Takes `n` tokens of `who`'s bucket, or says how long until there
    /// are enough. `n` above the burst never fits; the wait told then is
    /// for the tokens a full bucket lacks.
    pub fn take(&self, who: &str, n: u32) -> Result<(), Duration> {
        let Some(cells) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match self.limiter.check_key_n(&who.to_owned(), cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.limiter.clock().now())),
            Err(InsufficientCapacity(_)) => {
                Err(self.period.saturating_mul(n.saturating_sub(self.burst)))
            }
        }
    }

    /// Forgets callers whose buckets are full again (as good as new), so
    /// that the map holds only recent callers.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Callers remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Calls [`Self::forget_idle`] every `every` until `shutdown`.
    pub async fn forget_idle_every(
        self: Arc<Self>,
        every: Duration,
        shutdown: iot_runtime::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.forget_idle(),
            }
        }
    }
}

/// Request counts and latencies.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl HttpMetrics {
    pub fn new(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "iot_graphql_requests_total",
                "GraphQL HTTP requests by outcome (ok, error, unauthenticated, rate_limited, bad_request)",
            ),
            &["outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "iot_graphql_request_duration_seconds",
                "GraphQL request latency",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
            &["outcome"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self { requests, seconds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_buckets_refill_at_their_rate() {
        let l = RateLimiter::new(10.0, 3.0);
        for _ in 0..3 {
            assert!(l.take("a", 1).is_ok());
        }
        let wait = l.take("a", 1).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another caller has its own bucket.
        assert!(l.take("b", 3).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(l.take("a", 1).is_ok());
    }

    #[test]
    fn batches_take_one_token_each_and_never_more_than_the_burst() {
        let l = RateLimiter::new(10.0, 3.0);
        assert!(l.take("a", 0).is_ok());
        assert!(l.take("a", 2).is_ok());
        // One token left: a batch of two waits for one more.
        let wait = l.take("a", 2).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(l.take("a", 1).is_ok());
        // More than a full bucket never fits.
        let wait = l.take("b", 5).unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        assert!(l.take("b", 3).is_ok(), "the refused batch took nothing");
    }

    #[test]
    fn callers_with_full_buckets_are_forgotten() {
        let l = RateLimiter::new(1000.0, 2.0);
        assert!(l.take("a", 1).is_ok());
        assert!(l.take("b", 2).is_ok());
        assert_eq!(l.len(), 2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        l.forget_idle();
        assert_eq!(l.len(), 0);
        // Forgotten is as good as full.
        assert!(l.take("b", 2).is_ok());
    }
}
