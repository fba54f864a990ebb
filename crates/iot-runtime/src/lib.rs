//! The lifecycle every service binary shares: load config (defaults < file <
//! environment), validate it, build the service on one skeleton
//! (`service`), run until SIGTERM/SIGINT, drain under a grace period, then
//! abort what is left.

pub mod config;
pub mod lifecycle;
pub mod service;
pub mod status;

pub use config::{ConfigError, ServiceConfig, Validate, load_config};
pub use lifecycle::{config_path_from_args, grpc_incoming, run_until_signal};
pub use service::{BoxError, Running, ServiceError, Skeleton};
pub use tokio_util::sync::CancellationToken;
