//! PostgreSQL plumbing shared by the services that own tables.
//!
//! Architecture Invariant: schema changes happen only through
//! [`migrate::migrate`]; services never create or alter tables at run time
//! (the partition-maintenance function the migrations install is the one
//! exception, and it only adds partitions).

pub mod migrate;
pub mod ownership;
pub mod pool;
pub mod tail;
pub mod tls;

pub use migrate::{
    Backend, BackendChoice, MigrateError, MigrationReport, SchemaError, migrate, require_version,
    storage_backend,
};
pub use pool::{
    DbError, PoolLimits, PoolMetrics, connect, ensure_database, is_statement_timeout,
    is_unreachable, ping, pool, pool_with, service_pool,
};
