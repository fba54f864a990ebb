//! graphql-gateway: the public GraphQL API. It holds no data; it calls
//! device-registry, ingest-writer and alert-engine over gRPC.
//!
//! Today it connects to its upstreams, reports ready only while all of them
//! answer their gRPC health checks, and answers health checks itself. The
//! GraphQL schema comes with the graphql-gateway issue.

mod config;

use std::net::SocketAddr;
use std::time::Duration;

use iot_runtime::CancellationToken;
use iot_telemetry::Readiness;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use config::Config;

pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// The services the gateway calls.
struct Upstreams(Vec<(&'static str, HealthClient<Channel>)>);

impl Upstreams {
    fn connect(config: &Config) -> anyhow::Result<Self> {
        let mut v = Vec::new();
        for (name, url) in [
            ("device-registry", &config.registry_url),
            ("ingest-writer", &config.telemetry_url),
            ("alert-engine", &config.alerts_url),
        ] {
            let channel = Channel::from_shared(url.clone())?
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            v.push((name, HealthClient::new(channel)));
        }
        Ok(Self(v))
    }

    /// Names of upstreams that are not serving.
    async fn unhealthy(&self) -> Vec<&'static str> {
        let mut bad = Vec::new();
        for (name, client) in &self.0 {
            let serving = client
                .clone()
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

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let upstreams = Upstreams::connect(&config)?;
    let registry =
        iot_telemetry::prometheus::Registry::new_custom(Some("iot_graphql".into()), None)?;
    let ready = Readiness::default();
    let (admin_addr, admin_task) = iot_telemetry::serve_admin(
        config.admin_addr,
        iot_telemetry::admin_router(registry, ready.clone()),
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
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        tracing::info!(%grpc_addr, %admin_addr, "graphql-gateway serving");
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
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
            let bad = upstreams.unhealthy().await;
            let now_ready = bad.is_empty();
            ready.set(now_ready);
            if now_ready != was_ready {
                if now_ready {
                    tracing::info!("all upstreams serving");
                    health
                        .set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                } else {
                    tracing::warn!(?bad, "upstreams not serving");
                    health
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                }
                was_ready = now_ready;
            }
        }
        ready.set(false);
        grpc.await??;
        admin_task.await?;
        tracing::info!("graphql-gateway stopped");
        Ok(())
    });
    Ok(Running {
        grpc_addr,
        admin_addr,
        task,
    })
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}
