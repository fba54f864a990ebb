//! The one meaning of a failed database call to a gRPC caller, shared by
//! every service's error type: the database cannot be reached now
//! (UNAVAILABLE, worth a retry), the caller asked for more than the
//! database gives one call (RESOURCE_EXHAUSTED), or the query failed
//! (INTERNAL). Each is logged here with its cause; the caller sees no SQL.

use tonic::Status;

/// No connection could be had from the pool: every connection stayed
/// busy past the pool's wait (RESOURCE_EXHAUSTED: back off and retry), or
/// the database is down (UNAVAILABLE).
pub fn pool_failed(e: &deadpool_postgres::PoolError) -> Status {
    use deadpool_postgres::{PoolError, TimeoutType};
    if let PoolError::Timeout(TimeoutType::Wait) = e {
        tracing::warn!(error = %e, "every database connection is busy");
        return Status::resource_exhausted("every database connection is busy: retry shortly");
    }
    tracing::error!(error = %e, "no database connection");
    Status::unavailable("database unavailable")
}

/// A query failed: UNAVAILABLE when the database went away under it
/// ([`iot_db::is_unreachable`]), RESOURCE_EXHAUSTED when it ran past the
/// pool's statement timeout, INTERNAL otherwise.
pub fn query_failed(e: &tokio_postgres::Error) -> Status {
    if iot_db::is_statement_timeout(e) {
        tracing::warn!(error = %e, "query cancelled by the statement timeout");
        return Status::resource_exhausted(
            "the query ran past the statement timeout: ask for a shorter range or wider buckets",
        );
    }
    tracing::error!(error = %e, "database query failed");
    if iot_db::is_unreachable(e) {
        Status::unavailable("database unavailable")
    } else {
        Status::internal("database error")
    }
}
