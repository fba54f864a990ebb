//! Registry errors and their one conversion to gRPC status.

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid request: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("device {0:?} not found")]
    NotFound(String),
    /// The device_id is taken. Device ids are unique across the platform
    /// (each names an MQTT account and topics), so the answer is the same
    /// whether the caller or another owner holds it, and names neither.
    #[error("device_id: {0:?} is not available")]
    AlreadyExists(String),
    /// The owner already has `limit` of what `quota` counts.
    #[error(
        "quota exceeded: limits.{quota} is {limit} and the owner has reached it; \
         delete some, or ask the operator to raise it"
    )]
    QuotaExceeded { quota: &'static str, limit: u32 },
    /// An optimistic-concurrency check failed: the caller's version is
    /// not the current one.
    #[error("stale: {0}")]
    Stale(String),
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
            RegistryError::QuotaExceeded { quota, limit } => {
                iot_proto::quota_exceeded(quota, *limit, e.to_string())
            }
            RegistryError::Stale(_) => tonic::Status::aborted(e.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_names_itself_and_its_value() {
        let s = tonic::Status::from(RegistryError::QuotaExceeded {
            quota: "devices_per_owner",
            limit: 3,
        });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(
            s.message().contains("limits.devices_per_owner is 3"),
            "{s:?}"
        );
        let md = s.metadata();
        assert_eq!(md.get("iot-quota").unwrap(), "devices_per_owner");
        assert_eq!(md.get("iot-quota-limit").unwrap(), "3");
    }
}
