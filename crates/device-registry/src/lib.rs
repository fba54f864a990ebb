//! device-registry: owns `devices`, `device_config` and `sensors`, and serves
//! them over gRPC (`iot.v1.DeviceRegistry`).
//!
//! Architecture Invariant: no other service writes these tables; they ask
//! this service.

mod broker;
mod commands;
mod config;
mod error;
mod service;
mod store;
mod validate;

use iot_proto::v1::device_commands_service_server::DeviceCommandsServiceServer;
use iot_proto::v1::device_registry_server::DeviceRegistryServer;
use iot_runtime::{CancellationToken, Skeleton};
use tonic::service::Routes;

pub use broker::BrokerConfig;
pub use commands::CommandsService;
pub use config::{Config, Limits};
pub use error::{RegistryError, StartError};
pub use service::RegistryService;

/// A started device-registry.
pub type Running = iot_runtime::Running;

/// Connects, binds and starts serving; returns once the ports are bound.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, RegistryError> {
    Ok(serve(config, shutdown).await?)
}

async fn serve(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    let mut skeleton = Skeleton::new(SERVICE, shutdown.clone())?;
    // Fails fast when the database is unreachable or not migrated (17, its
    // newest migration: desired state).
    let pool = skeleton
        .database(&config.database_url, config.pool_size, 17)
        .await?;
    skeleton.serve_admin(config.admin_addr).await?;
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
    let command_metrics = commands::CommandMetrics::register(&skeleton.registry)?;
    let publisher = broker.clone().map(|dynsec| {
        commands::session::start(
            &config.broker,
            dynsec,
            pool.clone(),
            command_metrics,
            shutdown.clone(),
        )
    });
    let commands = DeviceCommandsServiceServer::new(CommandsService::new(
        pool.clone(),
        publisher,
        shutdown.clone(),
    ));
    let svc = DeviceRegistryServer::new(RegistryService::new(
        pool,
        broker,
        config.limits.clone(),
        shutdown.clone(),
    ));
    skeleton
        .serve_grpc(
            config.grpc_addr,
            &config.grpc_tls,
            Routes::new(svc).add_service(commands),
            &[SERVICE_NAME, COMMANDS_SERVICE_NAME],
        )
        .await?;
    skeleton.ready.set(true);
    let work = async move {
        shutdown.cancelled().await;
        Ok::<_, std::convert::Infallible>(())
    };
    Ok(skeleton.run((), work)?)
}

const SERVICE_NAME: &str = "iot.v1.DeviceRegistry";
const COMMANDS_SERVICE_NAME: &str = "iot.v1.DeviceCommandsService";

/// The service's name: in its logs and metrics, and its gRPC identity.
pub const SERVICE: &str = "device-registry";

/// Runs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RegistryError> {
    let running = start(config, shutdown).await?;
    Ok(running.wait().await.map_err(StartError::from)?)
}
