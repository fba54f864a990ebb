//! Logs, metrics and the admin endpoint (`/metrics`, `/healthz`, `/readyz`)
//! that every service exposes in the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

pub use prometheus;

pub mod grpc;
pub mod trace;

/// The metrics registry of one service. Every series carries a `service`
/// label with its name, so that one metric name (`iot_grpc_server_...`,
/// `iot_db_pool_...`, `process_...`) serves every service. It starts with
/// the process's own figures (`process_*`: CPU, memory, open files) and
/// `iot_build_info{version}`.
pub fn service_registry(service: &str) -> prometheus::Result<Registry> {
    let labels = [("service".to_owned(), service.to_owned())].into();
    let registry = Registry::new_custom(None, Some(labels))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let build = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("iot_build_info", "The running build: always 1"),
        &["version"],
    )?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(build))?;
    Ok(registry)
}

/// The values of the samples of `series` in Prometheus text `text`:
/// `series` is a metric name, optionally with some of its labels
/// (`iot_gateway_readings_rejected_total{reason="x"}`); labels it does not
/// name (every series has `service`) may be anything, in any order. For
/// tests and benchmarks that read a service's `/metrics`.
pub fn samples(text: &str, series: &str) -> Vec<f64> {
    let (name, wanted) = match series.split_once('{') {
        Some((n, l)) => (n, l.trim_end_matches('}')),
        None => (series, ""),
    };
    let wanted: Vec<&str> = wanted.split(',').filter(|l| !l.is_empty()).collect();
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let have: Vec<&str> = labels.split(',').collect();
            wanted.iter().all(|w| have.contains(w)).then_some(value)
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .collect()
}

/// Installs the global tracing subscriber. `RUST_LOG` filters; `LOG_FORMAT=json`
/// switches to JSON lines; the standard `OTEL_*` variables turn on trace
/// export (`trace`). Calling it twice is harmless (tests do).
pub fn init_tracing(service: &'static str) {
    init(service, None);
}

/// `init_tracing`, exporting traces to the OTLP/gRPC `endpoint` whatever
/// the environment says (tests with a receiver of their own).
pub fn init_tracing_exporting_to(service: &'static str, endpoint: &str) {
    init(service, Some((endpoint, trace::Protocol::Grpc)));
}

/// `init_tracing_exporting_to` over `protocol`.
pub fn init_tracing_exporting_over(
    service: &'static str,
    endpoint: &str,
    protocol: trace::Protocol,
) {
    init(service, Some((endpoint, protocol)));
}

fn init(service: &'static str, endpoint: Option<(&str, trace::Protocol)>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,rumqttc=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(trace::WithTraceIds(
                        tracing_subscriber::fmt::format().json(),
                    )),
            )
            .with(trace::layer(service, endpoint))
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
            .with(trace::layer(service, endpoint))
            .try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "tracing initialised");
    }
}

/// A check of one dependency: resolves to an error naming what is wrong.
pub type Check =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Readiness shared between a service and its admin endpoint: a flag the
/// service sets once it serves, and checks of its dependencies (database,
/// Kafka, ...) that `/readyz` runs on every probe.
#[derive(Clone, Default)]
pub struct Readiness {
    serving: Arc<AtomicBool>,
    checks: Arc<std::sync::Mutex<Vec<(&'static str, Check)>>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.serving.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Adds a dependency `/readyz` checks (each probe, 2 s at most).
    pub fn check<F, Fut>(&self, name: &'static str, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(f()));
        self.checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name, check));
    }

    /// What keeps the service from being ready, if anything.
    pub async fn problems(&self) -> Vec<String> {
        if !self.is_ready() {
            return vec!["not serving yet".into()];
        }
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let results = futures::future::join_all(checks.into_iter().map(|(name, c)| async move {
            match tokio::time::timeout(std::time::Duration::from_secs(2), c()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{name}: {e}")),
                Err(_) => Some(format!("{name}: no answer within 2 s")),
            }
        }))
        .await;
        results.into_iter().flatten().collect()
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    ready: Readiness,
}

/// The admin router: Prometheus text format on `/metrics`, liveness on
/// `/healthz`, readiness on `/readyz`.
pub fn admin_router(registry: Registry, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { registry, ready })
}

async fn metrics(State(s): State<AdminState>) -> (StatusCode, String) {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, String::from_utf8_lossy(&buf).into_owned()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    let problems = s.ready.problems().await;
    if problems.is_empty() {
        (StatusCode::OK, "ready".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", problems.join("; ")),
        )
    }
}

/// Binds the admin endpoint and serves it until `shutdown` is cancelled.
/// Returns the bound address (port 0 picks a free one).
pub async fn serve_admin(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    // Answers go out as soon as they are written: with Nagle's algorithm a
    // response's last small piece waits for the peer's ACK of the rest.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin endpoint failed");
        }
    });
    Ok((bound, handle))
}
