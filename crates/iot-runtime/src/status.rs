//! The one meaning of a failed database call to a gRPC caller, shared by
//! every service's error type: the database cannot be reached now
//! (UNAVAILABLE, worth a retry) or the query failed (INTERNAL). Either is
//! logged here with its cause; the caller sees no SQL.

use tonic::Status;

/// No connection could be had from the pool (the database is down, or
/// every connection is busy past the pool's wait).
pub fn pool_failed(e: &deadpool_postgres::PoolError) -> Status {
    tracing::error!(error = %e, "no database connection");
    Status::unavailable("database unavailable")
}

/// A query failed: UNAVAILABLE when the database went away under it
/// ([`iot_db::is_unreachable`]), INTERNAL otherwise.
pub fn query_failed(e: &tokio_postgres::Error) -> Status {
    tracing::error!(error = %e, "database query failed");
    if iot_db::is_unreachable(e) {
        Status::unavailable("database unavailable")
    } else {
        Status::internal("database error")
    }
}
