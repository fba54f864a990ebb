//! graphql-gateway: the public GraphQL API. It holds no data and never
//! opens a database connection; it calls device-registry, ingest-writer,
//! alert-engine and mqtt-gateway over gRPC, acting for the authenticated
//! caller's owner.

mod auth;
mod codes;
mod config;
mod http;
mod hub;
mod metrics_json;
mod raw;
mod schema;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iot_runtime::CancellationToken;
use iot_telemetry::Readiness;
use tokio::task::JoinHandle;

pub use auth::{AuthError, Authenticator, Principal};
pub use config::{ApiKey, AuthConfig, Config, JwtConfig, Limits};
pub use schema::sdl;

pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let registry =
        iot_telemetry::prometheus::Registry::new_custom(Some("iot_graphql".into()), None)?;
    let up = upstream::Upstreams::connect(&config, &registry)?;
    let grpc_metrics = iot_telemetry::grpc::GrpcMetrics::register(&registry)?;
    let subscribers = prometheus::IntGauge::new(
        "alert_subscribers",
        "GraphQL subscriptions to alerts right now",
    )?;
    registry.register(Box::new(subscribers.clone()))?;
    let hub = hub::AlertHub::new(4096, subscribers);
    let schema = schema::build(schema::Shared {
        up: up.clone(),
        limits: config.limits.clone(),
        hub: hub.clone(),
        known: Default::default(),
    });
    let ready = Readiness::default();
    let state = http::AppState {
        schema,
        auth: Arc::new(Authenticator::new(&config.auth)?),
        limiter: Arc::new(http::RateLimiter::new(
            config.limits.rate_per_sec,
            config.limits.rate_burst,
        )),
        ready: ready.clone(),
        up: up.clone(),
        metrics: http::HttpMetrics::new(&registry)?,
    };
    let (admin_addr, admin_task) = iot_telemetry::serve_admin(
        config.admin_addr,
        iot_telemetry::admin_router(registry, ready.clone()),
        shutdown.clone(),
    )
    .await?;
    let (http_addr, http_task) = iot_telemetry::serve_admin(
        config.http_addr,
        http::router(state, config.dev_mode, config.limits.max_body_bytes),
        shutdown.clone(),
    )
    .await?;
    let (health, health_svc) = iot_runtime::grpc_health();
    // Not serving until every upstream answers its health check.
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let grpc_addr = listener.local_addr()?;
    let hub_task = tokio::spawn(hub.run(up.clone(), shutdown.clone()));
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        tracing::info!(%http_addr, %grpc_addr, %admin_addr, "graphql-gateway serving");
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .trace_fn(iot_telemetry::trace::grpc_server_span)
                .layer(grpc_metrics)
                .add_service(health_svc)
                .serve_with_incoming_shutdown(
                    iot_runtime::grpc_incoming(listener),
                    token.clone().cancelled_owned(),
                ),
        );
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut was_ready = false;
        loop {
            tokio::select! {
                () = token.cancelled() => break,
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
        ready.set(false);
        grpc.await??;
        hub_task.await?;
        http_task.await?;
        admin_task.await?;
        tracing::info!("graphql-gateway stopped");
        Ok(())
    });
    Ok(Running {
        http_addr,
        grpc_addr,
        admin_addr,
        task,
    })
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
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
