//! ingest-writer's errors and their one conversion to gRPC status.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("invalid request: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database: {0}")]
    Database(#[from] iot_db::DbError),
    #[error(transparent)]
    Schema(#[from] iot_db::SchemaError),
    #[error("database is not migrated (run `iotctl migrate`)")]
    NotMigrated,
    #[error("{0}")]
    Backend(String),
    #[error("kafka: {0}")]
    Kafka(#[from] iot_kafka::rdkafka::error::KafkaError),
    #[error("kafka consumer: {0}")]
    Consumer(#[from] iot_kafka::SetupError),
    #[error("metrics: {0}")]
    Metrics(#[from] iot_telemetry::prometheus::Error),
    #[error(transparent)]
    Service(#[from] iot_runtime::ServiceError),
    #[error("archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
}

impl From<WriterError> for Status {
    fn from(e: WriterError) -> Self {
        match &e {
            WriterError::Invalid(p) => iot_proto::invalid_argument(p),
            WriterError::Pool(p) => iot_runtime::status::pool_failed(p),
            WriterError::Db(q) => iot_runtime::status::query_failed(q),
            _ => {
                tracing::error!(error = %e, "telemetry request failed");
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
        let code = |e: WriterError| Status::from(e).code();
        assert_eq!(
            code(WriterError::Invalid(vec!["limit: too large".into()])),
            Code::InvalidArgument
        );
        assert_eq!(
            code(deadpool_postgres::PoolError::Closed.into()),
            Code::Unavailable
        );
        assert_eq!(code(WriterError::NotMigrated), Code::Internal);
    }
}
