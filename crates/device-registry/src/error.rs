//! Registry errors and their one conversion to gRPC status.

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid request: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("device {0:?} not found")]
    NotFound(String),
    #[error("device_id {0:?} is already registered")]
    AlreadyExists(String),
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("MQTT broker: {0}")]
    Broker(#[from] crate::broker::BrokerError),
    /// The service could not start, or stopped with an error.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Why device-registry could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] iot_db::DbError),
    #[error(transparent)]
    Schema(#[from] iot_db::SchemaError),
    #[error("metrics: {0}")]
    Metrics(#[from] iot_telemetry::prometheus::Error),
    #[error(transparent)]
    Service(#[from] iot_runtime::ServiceError),
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::Invalid(p) => iot_proto::invalid_argument(p),
            RegistryError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            RegistryError::AlreadyExists(_) => tonic::Status::already_exists(e.to_string()),
            RegistryError::Pool(p) => iot_runtime::status::pool_failed(p),
            RegistryError::Db(q) => iot_runtime::status::query_failed(q),
            RegistryError::Broker(_) => tonic::Status::unavailable(e.to_string()),
            // Not an answer to a call: the service's own start or stop.
            RegistryError::Start(_) => {
                tracing::error!(error = %e, "registry failure");
                tonic::Status::internal("registry failure")
            }
        }
    }
}
