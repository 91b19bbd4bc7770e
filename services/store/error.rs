//! Postgres errors in the engine's terms: a lost connection is
//! `UNAVAILABLE` (retry), a constraint is the caller's problem, the rest is
//! internal. Messages carry no parameter values, so no secret can leak
//! through them.
//! Contracts: C20 (a lost database is `UNAVAILABLE`, retryable).

use tokio_postgres::error::SqlState;

use crate::domain::Error;

/// Runs `sql` (prepared once per connection, then cached) with `params`;
/// the rows it returned. Several of these joined (`futures::try_join!`) on
/// one transaction are pipelined: sent back to back, one round trip.
pub(crate) async fn query(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, Error> {
    let statement = client.prepare_cached(sql).await.map_err(db)?;
    client.query(&statement, params).await.map_err(db)
}

/// The one row `sql` (a prepared, cached statement taking the id as `$1`)
/// finds for `id`; `NotFound` naming `what` if there is none.
pub(crate) async fn row_by_id(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    id: uuid::Uuid,
    what: impl FnOnce() -> String,
) -> Result<tokio_postgres::Row, Error> {
    let statement = client.prepare_cached(sql).await.map_err(db)?;
    client
        .query_opt(&statement, &[&id])
        .await
        .map_err(db)?
        .ok_or_else(|| Error::NotFound(what()))
}

/// Maps a driver error.
pub(crate) fn db(err: tokio_postgres::Error) -> Error {
    match err.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => {
            Error::AlreadyExists("already exists".into())
        }
        Some(code)
            if *code == SqlState::QUERY_CANCELED
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS =>
        {
            Error::Unavailable(format!("database busy: {}", code.code()))
        }
        Some(code) => Error::Internal(format!("database error {}", code.code())),
        None if err.is_closed() || io_error(&err) => {
            Error::Unavailable("database connection lost".into())
        }
        // Client-side errors (a type mismatch, say) name types, never values.
        None => Error::Internal(format!("database client error: {err}")),
    }
}

fn io_error(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}
