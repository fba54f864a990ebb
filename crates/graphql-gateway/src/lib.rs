//! graphql-gateway: the public GraphQL API. It holds no data and never
//! opens a database connection; it calls device-registry, ingest-writer,
//! alert-engine and mqtt-gateway over gRPC, acting for the authenticated
//! caller's owner.

mod auth;
mod codes;
mod config;
mod console;
mod device_hub;
mod error;
mod export;
mod http;
mod hub;
mod limits;
mod metrics_hub;
mod metrics_json;
mod raw;
mod schema;
mod upstream;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iot_runtime::{CancellationToken, Skeleton};

pub use auth::{AuthError, Authenticator, Principal};
pub use config::{ApiKey, AuthConfig, Config, JwtConfig, Limits};
pub use error::StartError;
pub use limits::{metrics_cost, readings_cost};
pub use schema::sdl;

/// A started gateway; `http_addr` is the GraphQL endpoint.
pub type Running = iot_runtime::Running<SocketAddr>;

/// The service's name: in its logs and metrics, and its gRPC identity.
pub const SERVICE: &str = "graphql-gateway";

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    let mut skeleton = Skeleton::new(SERVICE, shutdown.clone())?;
    let up = upstream::Upstreams::connect(&config, &skeleton.registry)?;
    let subscribers = prometheus::IntGauge::new(
        "iot_graphql_alert_subscribers",
        "GraphQL subscriptions to alerts right now",
    )?;
    skeleton.registry.register(Box::new(subscribers.clone()))?;
    let hub = hub::AlertHub::new(4096, subscribers);
    let device_subscribers = prometheus::IntGauge::new(
        "iot_graphql_device_status_subscribers",
        "GraphQL deviceStatus subscriptions right now",
    )?;
    skeleton
        .registry
        .register(Box::new(device_subscribers.clone()))?;
    let devices = device_hub::DeviceHub::new(64, device_subscribers);
    let metric_subscribers = prometheus::IntGauge::new(
        "iot_graphql_metrics_subscribers",
        "GraphQL metrics subscriptions right now",
    )?;
    skeleton
        .registry
        .register(Box::new(metric_subscribers.clone()))?;
    let metrics = metrics_hub::MetricsHub::new(256, metric_subscribers);
    let limiter = Arc::new(http::RateLimiter::new(
        config.limits.rate_per_sec,
        config.limits.rate_burst,
    ));
    let schema = schema::build(
        schema::Shared {
            up: up.clone(),
            limits: config.limits.clone(),
            hub: hub.clone(),
            devices: devices.clone(),
            metrics: metrics.clone(),
            known: Default::default(),
        },
        limiter.clone(),
        config.dev_mode,
    );
    // Callers idle long enough to have full buckets are forgotten, so the
    // limiter holds only recent callers.
    tokio::spawn(
        limiter
            .clone()
            .forget_idle_every(Duration::from_secs(60), shutdown.clone()),
    );
    let state = http::AppState {
        schema,
        auth: Arc::new(Authenticator::new(&config.auth)?),
        limiter,
        ws: ws::WsLimits {
            max_message_bytes: config.limits.ws_max_message_bytes,
            init_timeout: Duration::from_millis(config.limits.ws_init_timeout_ms),
        },
        ready: skeleton.ready.clone(),
        up: up.clone(),
        metrics: http::HttpMetrics::new(&skeleton.registry)?,
    };
    skeleton.serve_admin(config.admin_addr).await?;
    let http_addr = skeleton
        .serve_http(
            config.http_addr,
            http::router(state, config.dev_mode, config.limits.max_body_bytes),
        )
        .await?;
    // Not serving until every upstream answers its health check.
    skeleton
        .serve_grpc(
            config.grpc_addr,
            &config.grpc_tls,
            tonic::service::Routes::default(),
            &[],
        )
        .await?;
    let health = skeleton.health().clone();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let hub_task = tokio::spawn(hub.run(up.clone(), shutdown.clone()));
    let device_task = tokio::spawn(devices.run(up.clone(), shutdown.clone()));
    let metrics_task = tokio::spawn(metrics.run(up.clone(), shutdown.clone()));
    let ready = skeleton.ready.clone();
    let work = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut was_ready = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let bad = up.unhealthy().await;
            let now_ready = bad.is_empty();
            ready.set(now_ready);
            if now_ready != was_ready {
                let status = if now_ready {
                    tracing::info!("all upstreams serving");
                    tonic_health::ServingStatus::Serving
                } else {
                    tracing::warn!(?bad, "upstreams not serving");
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status("", status).await;
                was_ready = now_ready;
            }
        }
        let _ = device_task.await;
        let _ = metrics_task.await;
        hub_task.await
    };
    Ok(skeleton.run(http_addr, work)?)
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    Ok(start(config, shutdown).await?.wait().await?)
}

#[cfg(test)]
mod tests {
    /// The committed SDL (`schema.graphql`) is the schema the code serves.
    /// `UPDATE_SCHEMA=1 cargo test -p graphql-gateway` rewrites it.
    #[test]
    fn committed_sdl_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
        let sdl = super::sdl();
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &sdl).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == sdl,
            "schema.graphql differs from the code's schema; run UPDATE_SCHEMA=1 cargo test -p graphql-gateway"
        );
    }
}
