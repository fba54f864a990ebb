//! device-registry: owns `devices`, `device_config` and `sensors`, and serves
//! them over gRPC (`iot.v1.DeviceRegistry`).
//!
//! Architecture Invariant: no other service writes these tables; they ask
//! this service.

mod broker;
mod config;
mod error;
mod service;
mod store;

use std::net::SocketAddr;

use iot_proto::v1::device_registry_server::DeviceRegistryServer;
use iot_runtime::CancellationToken;
use iot_telemetry::Readiness;
use tokio::task::JoinHandle;

pub use broker::BrokerConfig;
pub use config::Config;
pub use error::RegistryError;
pub use service::RegistryService;

/// A started device-registry.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the service has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Connects, binds and starts serving; returns once the ports are bound.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let pool = iot_db::pool(&config.database_url, config.pool_size)?;
    // Fail fast when the database is unreachable or not migrated.
    let client = pool.get().await?;
    client
        .query_one("SELECT 1 FROM schema_migrations WHERE version = 7", &[])
        .await
        .map_err(|e| anyhow::anyhow!("database is not migrated (run `iotctl migrate`): {e}"))?;
    drop(client);

    let registry = prometheus_registry();
    let grpc_metrics = iot_telemetry::grpc::GrpcMetrics::register(&registry)?;
    registry.register(Box::new(iot_db::PoolMetrics::new(pool.clone())?))?;
    let ready = Readiness::default();
    {
        let pool = pool.clone();
        ready.check("database", move || iot_db::ping(pool.clone()));
    }
    let (admin_addr, admin_task) = iot_telemetry::serve_admin(
        config.admin_addr,
        iot_telemetry::admin_router(registry, ready.clone()),
        shutdown.clone(),
    )
    .await?;

    let (health, health_svc) = iot_runtime::grpc_health();
    health
        .set_serving::<DeviceRegistryServer<RegistryService>>()
        .await;
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let grpc_addr = listener.local_addr()?;
    let broker = config
        .broker
        .enabled
        .then(|| broker::Dynsec::start(&config.broker, shutdown.clone()));
    {
        // The change log only has to cover a watcher's reconnect.
        let (pool, shutdown) = (pool.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = store::trim_changes(&pool).await {
                    tracing::warn!(error = %e, "cannot trim the device change log");
                }
            }
        });
    }
    let svc = RegistryService::new(pool, broker, shutdown.clone());
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        ready.set(true);
        tracing::info!(%grpc_addr, %admin_addr, "device-registry serving");
        tonic::transport::Server::builder()
            .trace_fn(iot_telemetry::trace::grpc_server_span)
            .layer(grpc_metrics)
            .add_service(health_svc)
            .add_service(DeviceRegistryServer::new(svc))
            .serve_with_incoming_shutdown(iot_runtime::grpc_incoming(listener), token.cancelled())
            .await?;
        ready.set(false);
        admin_task.await?;
        tracing::info!("device-registry stopped");
        Ok(())
    });
    Ok(Running {
        grpc_addr,
        admin_addr,
        task,
    })
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

fn prometheus_registry() -> iot_telemetry::prometheus::Registry {
    iot_telemetry::prometheus::Registry::new_custom(Some("iot_registry".into()), None)
        .unwrap_or_default()
}
