//! alert-engine's errors and their one conversion to gRPC status.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("invalid request: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// What was not found: "alert <id>", "rule <id>", ...
    #[error("{0} not found")]
    NotFound(String),
    #[error("name: a rule named {0:?} exists")]
    RuleExists(String),
    /// The owner already has `limit` of what `quota` counts.
    #[error(
        "quota exceeded: limits.{quota} is {limit} and the owner has reached it; \
         delete some, or ask the operator to raise it"
    )]
    QuotaExceeded { quota: &'static str, limit: u32 },
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database: {0}")]
    Database(#[from] iot_db::DbError),
    #[error(transparent)]
    Schema(#[from] iot_db::SchemaError),
    #[error("device registry: {0}")]
    Registry(#[source] Box<Status>),
    #[error("device registry client: {0}")]
    RegistryClient(#[from] iot_proto::TlsError),
    #[error("kafka: {0}")]
    Kafka(#[from] iot_kafka::rdkafka::error::KafkaError),
    #[error("kafka consumer: {0}")]
    Consumer(#[from] iot_kafka::SetupError),
    #[error("undecodable alert event: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("invalid id in a stored alert: {0}")]
    Id(#[from] uuid::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] iot_telemetry::prometheus::Error),
    #[error("a task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Service(#[from] iot_runtime::ServiceError),
}

impl From<Status> for AlertError {
    fn from(s: Status) -> Self {
        Self::Registry(Box::new(s))
    }
}

impl From<AlertError> for Status {
    fn from(e: AlertError) -> Self {
        match &e {
            AlertError::Invalid(p) => iot_proto::invalid_argument(p),
            AlertError::NotFound(_) => Status::not_found(e.to_string()),
            AlertError::RuleExists(_) => Status::already_exists(e.to_string()),
            AlertError::QuotaExceeded { quota, limit } => {
                iot_proto::quota_exceeded(quota, *limit, e.to_string())
            }
            AlertError::Pool(p) => iot_runtime::status::pool_failed(p),
            AlertError::Db(q) => iot_runtime::status::query_failed(q),
            _ => {
                tracing::error!(error = %e, "alerts request failed");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_has_its_code() {
        let code = |e: AlertError| Status::from(e).code();
        assert_eq!(
            code(AlertError::Invalid(vec!["id: bad".into()])),
            Code::InvalidArgument
        );
        assert_eq!(code(AlertError::NotFound("alert x".into())), Code::NotFound);
        assert_eq!(
            code(AlertError::RuleExists("r".into())),
            Code::AlreadyExists
        );
        assert_eq!(
            code(deadpool_postgres::PoolError::Closed.into()),
            Code::Unavailable
        );
        assert_eq!(
            code(Status::unavailable("registry down").into()),
            Code::Internal
        );
        let nf = Status::from(AlertError::NotFound("rule 7".into()));
        assert_eq!(nf.message(), "rule 7 not found");
        let dup = Status::from(AlertError::RuleExists("hot".into()));
        assert_eq!(dup.message(), "name: a rule named \"hot\" exists");
        let full = Status::from(AlertError::QuotaExceeded {
            quota: "webhooks_per_owner",
            limit: 100,
        });
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(
            full.message().contains("limits.webhooks_per_owner is 100"),
            "{full:?}"
        );
        assert_eq!(
            full.metadata().get("iot-quota").unwrap(),
            "webhooks_per_owner"
        );
        assert_eq!(full.metadata().get("iot-quota-limit").unwrap(), "100");
    }
}
