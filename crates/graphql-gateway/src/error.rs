//! Why the gateway could not start. (Errors of a request are GraphQL
//! errors with a code: [`crate::upstream::status_error`].)

/// Why graphql-gateway could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Upstream(#[from] iot_proto::TlsError),
    #[error("auth.api_keys {key:?}: owner {owner:?} is neither a UUID nor *")]
    ApiKeyOwner { key: String, owner: String },
    #[error("auth.jwt.rs256_public_key_pem: {0}")]
    JwtKey(jsonwebtoken::errors::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Service(#[from] iot_runtime::ServiceError),
}
