//! The gateway's errors, and their one conversion to gRPC status (the
//! `iot.v1.Ingest` door).

use iot_domain::{RejectReason, Rejection};

use crate::pipeline::Transient;

/// Every way the gateway fails: at start-up, in its MQTT subscriber, and
/// for one request at a door.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A request that is not well formed (each problem `"field: what"`).
    #[error("invalid request: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The whole message was refused (it is dead-lettered).
    #[error("{}: {}", .0.reason.code(), .0.detail)]
    Refused(Rejection),
    /// A failure that says nothing about the message: retry it later.
    #[error(transparent)]
    Transient(#[from] Transient),
    #[error("Kafka: {0}")]
    Kafka(#[from] iot_kafka::rdkafka::error::KafkaError),
    #[error(transparent)]
    RegistryAddress(#[from] iot_proto::TlsError),
    #[error("metrics: {0}")]
    Metrics(#[from] iot_telemetry::prometheus::Error),
    /// (Boxed: it holds the whole request the client could not queue.)
    #[error("MQTT client: {0}")]
    Mqtt(Box<rumqttc::v5::ClientError>),
    #[error("a task of the gateway failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Service(#[from] iot_runtime::ServiceError),
}

impl From<rumqttc::v5::ClientError> for GatewayError {
    fn from(e: rumqttc::v5::ClientError) -> Self {
        Self::Mqtt(Box::new(e))
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Invalid(problems) => iot_proto::invalid_argument(&problems),
            GatewayError::Refused(ref r) => match r.reason {
                RejectReason::UnknownDevice => tonic::Status::not_found(e.to_string()),
                RejectReason::InactiveDevice => tonic::Status::failed_precondition(e.to_string()),
                _ => tonic::Status::invalid_argument(e.to_string()),
            },
            GatewayError::Transient(_) => tonic::Status::unavailable(e.to_string()),
            // Not an answer to a request: the gateway's own start or stop.
            _ => {
                tracing::error!(error = %e, "gateway failure");
                tonic::Status::internal("gateway failure")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_keeps_its_code() {
        let refused =
            |reason| tonic::Status::from(GatewayError::Refused(Rejection::new(reason, "why")));
        let s = refused(RejectReason::UnknownDevice);
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "unknown_device: why");
        assert_eq!(
            refused(RejectReason::InactiveDevice).code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            refused(RejectReason::BadValue).code(),
            tonic::Code::InvalidArgument
        );
        let s = tonic::Status::from(GatewayError::Invalid(vec!["device: is required".into()]));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            iot_proto::field_violations(&s),
            [("device".to_owned(), "is required".to_owned())]
        );
        let s = tonic::Status::from(GatewayError::Transient(Transient::Registry(
            tonic::Status::unavailable("down"),
        )));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(
            s.message().starts_with("device registry unavailable"),
            "{s:?}"
        );
    }
}
