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
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::Invalid(p) => iot_proto::invalid_argument(p),
            RegistryError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            RegistryError::AlreadyExists(_) => tonic::Status::already_exists(e.to_string()),
            RegistryError::Pool(_) | RegistryError::Broker(_) => {
                tonic::Status::unavailable(e.to_string())
            }
            RegistryError::Db(_) => {
                tracing::error!(error = %e, "registry database error");
                tonic::Status::internal("database error")
            }
        }
    }
}
