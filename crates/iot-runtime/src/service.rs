//! The skeleton every service is built on: one metrics registry, one
//! readiness, the admin endpoint, the gRPC server with its layers (a span
//! and request metrics per call, health, reflection), an optional public
//! HTTP door, and one drain order.
//!
//! A service creates a [`Skeleton`], registers its own metrics and
//! readiness checks on it, binds its doors, then hands its main work to
//! [`Skeleton::run`]. When that work ends (or `shutdown` is cancelled) the
//! skeleton cancels everything, stops reporting ready and waits for every
//! door to close. A new gRPC method needs nothing here: it is a method on
//! the service's `iot.v1` server, which the service passes in its routes.

use std::future::Future;
use std::net::SocketAddr;

use iot_telemetry::Readiness;
use iot_telemetry::grpc::GrpcMetrics;
use iot_telemetry::prometheus::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

/// Any error a service's work ends with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a skeleton could not start or a service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("metrics: {0}")]
    Metrics(#[from] iot_telemetry::prometheus::Error),
    #[error("cannot bind: {0}")]
    Bind(#[from] std::io::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] iot_proto::TlsError),
    #[error("a task of the service panicked or was aborted: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Failed(BoxError),
}

/// A started service: its bound addresses, and the task that ends when it
/// has drained. `H` is the address of its public HTTP door, where it has
/// one (`()` otherwise).
pub struct Running<H = ()> {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub http_addr: H,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl<H> Running<H> {
    /// Waits until the service has stopped.
    pub async fn wait(self) -> Result<(), ServiceError> {
        self.task.await?
    }
}

/// See the module documentation.
pub struct Skeleton {
    name: &'static str,
    /// Every metric of the service, each series labelled with its name
    /// ([`iot_telemetry::service_registry`]).
    pub registry: Registry,
    /// What `/readyz` reports; the service adds checks of its dependencies.
    pub ready: Readiness,
    /// Cancelled when the service is to stop.
    pub shutdown: CancellationToken,
    health: HealthReporter,
    grpc_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    doors: Vec<JoinHandle<Result<(), ServiceError>>>,
}

impl Skeleton {
    /// `name` names the service in logs and in its metrics' `service` label.
    pub fn new(name: &'static str, shutdown: CancellationToken) -> Result<Self, ServiceError> {
        let registry = iot_telemetry::service_registry(name)?;
        let (health, _) = tonic_health::server::health_reporter();
        Ok(Self {
            name,
            registry,
            ready: Readiness::default(),
            shutdown,
            health,
            grpc_addr: None,
            admin_addr: None,
            doors: Vec::new(),
        })
    }

    /// The service's database pool, wired the one way: at most `max_size`
    /// connections to `url`, refused unless migration `min_version` (the
    /// newest whose tables or views the service uses) is applied, its usage
    /// in the service's metrics and a `database` check in its readiness.
    pub async fn database(
        &self,
        url: &str,
        max_size: usize,
        min_version: i32,
    ) -> Result<deadpool_postgres::Pool, iot_db::SchemaError> {
        iot_db::service_pool(url, max_size, min_version, &self.registry, &self.ready).await
    }

    /// A second pool to the service's database, for work that must not
    /// take the main pool's connections (API queries beside batch writes):
    /// its own `limits`, its usage in the metrics as `pool="queries"`.
    pub fn query_pool(
        &self,
        url: &str,
        max_size: usize,
        limits: iot_db::PoolLimits,
    ) -> Result<deadpool_postgres::Pool, iot_db::SchemaError> {
        let pool = iot_db::pool_with(url, max_size, limits)?;
        self.registry
            .register(Box::new(iot_db::PoolMetrics::new(pool.clone(), "queries")?))?;
        Ok(pool)
    }

    /// The gRPC health reporter (`grpc.health.v1.Health`), for services
    /// whose serving status follows their dependencies.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// Binds the admin endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub async fn serve_admin(&mut self, addr: SocketAddr) -> Result<SocketAddr, ServiceError> {
        let router = iot_telemetry::admin_router(self.registry.clone(), self.ready.clone());
        let bound = self.serve_http(addr, router).await?;
        self.admin_addr = Some(bound);
        Ok(bound)
    }

    /// Binds an HTTP door of the service (its public API, say).
    pub async fn serve_http(
        &mut self,
        addr: SocketAddr,
        router: axum::Router,
    ) -> Result<SocketAddr, ServiceError> {
        let (bound, task) = iot_telemetry::serve_admin(addr, router, self.shutdown.clone()).await?;
        self.doors
            .push(tokio::spawn(async move { Ok(task.await?) }));
        Ok(bound)
    }

    /// Binds and serves gRPC: `routes` (the service's `iot.v1` servers),
    /// the health service and server reflection (so `grpcurl` works without
    /// the proto files), behind a span and request metrics per call.
    /// Services in `serving` are reported SERVING to health checks at once.
    /// With `tls` on, only callers with a certificate from its CA get in,
    /// and each request carries who they are
    /// ([`iot_proto::caller_of`]).
    pub async fn serve_grpc(
        &mut self,
        addr: SocketAddr,
        tls: &iot_proto::GrpcTls,
        routes: Routes,
        serving: &[&str],
    ) -> Result<SocketAddr, ServiceError> {
        let metrics = GrpcMetrics::register(&self.registry)?;
        let (health, health_svc) = tonic_health::server::health_reporter();
        for name in serving {
            health
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        self.health = health;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(iot_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let routes = routes.add_service(health_svc).add_service(reflection);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let mut builder = tonic::transport::Server::builder();
        let policy = match tls.server()? {
            Some((config, policy)) => {
                builder = builder.tls_config(config)?;
                Some(policy)
            }
            None => {
                tracing::warn!(
                    service = self.name,
                    %bound,
                    "gRPC without TLS: every caller that reaches this port is trusted \
                     as the platform (set grpc_tls where anything else can reach it)"
                );
                None
            }
        };
        let server = builder
            .trace_fn(iot_telemetry::trace::grpc_server_span)
            .layer(metrics)
            .layer(tower::util::MapRequestLayer::new(
                move |mut req: axum::http::Request<tonic::body::Body>| {
                    if let Some(p) = &policy {
                        req.extensions_mut().insert(p.clone());
                    }
                    req
                },
            ))
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                crate::grpc_incoming(listener),
                self.shutdown.clone().cancelled_owned(),
            );
        self.doors
            .push(tokio::spawn(async move { Ok(server.await?) }));
        self.grpc_addr = Some(bound);
        Ok(bound)
    }

    /// Runs `work` (the service's main loop; for a service with nothing
    /// but its doors, `shutdown.cancelled()`), then drains: cancels
    /// `shutdown`, stops reporting ready and waits for every door to close.
    /// The admin endpoint and the gRPC server must be bound first.
    pub fn run<H, F, E>(self, http_addr: H, work: F) -> Result<Running<H>, ServiceError>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let unbound = || std::io::Error::other("the admin endpoint and gRPC are bound first");
        let grpc_addr = self.grpc_addr.ok_or_else(unbound)?;
        let admin_addr = self.admin_addr.ok_or_else(unbound)?;
        let Self {
            name,
            ready,
            shutdown,
            doors,
            ..
        } = self;
        let task = tokio::spawn(async move {
            tracing::info!(service = name, %grpc_addr, %admin_addr, "serving");
            let result = work.await.map_err(|e| ServiceError::Failed(e.into()));
            shutdown.cancel();
            ready.set(false);
            for door in doors {
                door.await??;
            }
            tracing::info!(service = name, "stopped");
            result
        });
        Ok(Running {
            grpc_addr,
            admin_addr,
            http_addr,
            task,
        })
    }
}

/// The `main` of a service binary: tracing, config (defaults < `--config`
/// file < environment), the service until SIGTERM/SIGINT with a grace
/// period to drain, and the last spans exported before exiting.
pub fn main<C, F, Fut, E>(
    name: &'static str,
    grace: std::time::Duration,
    run: F,
) -> Result<(), BoxError>
where
    C: crate::ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            iot_telemetry::init_tracing(name);
            let config = C::load(crate::config_path_from_args().as_deref())?;
            let result = crate::run_until_signal(|shutdown| run(config, shutdown), grace).await;
            iot_telemetry::trace::shutdown().await;
            result.map_err(Into::into)
        })
}
