//! A transaction whose `BEGIN` costs no round trip of its own: it goes out
//! pipelined just ahead of the transaction's first statement, so a group's
//! admission or a claim waits for Postgres one time fewer (C13 unchanged:
//! nothing is acknowledged before its `COMMIT` returned). The transaction
//! owns its pooled connection; dropped before it committed, it rolls back
//! on a task of its own before the connection goes back to the pool (or
//! the connection is closed, which rolls back too), so no caller ever gets
//! a connection with a transaction open.

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::Object;
use tokio_postgres::{Row, error::SqlState};

use super::{
    Connection, db,
    statement::{self, Statement},
};
use crate::domain::Error;

/// An open (or about to be opened) transaction on its own connection.
pub(super) struct OpenTx {
    conn: Option<Connection>,
    /// `BEGIN` has gone out.
    begun: AtomicBool,
    committed: bool,
}

impl OpenTx {
    /// A transaction on `conn`; nothing is sent yet.
    pub(super) fn new(conn: Connection) -> Self {
        Self {
            conn: Some(conn),
            begun: AtomicBool::new(false),
            committed: false,
        }
    }

    /// The connection, for the transaction's statements. The first of them
    /// must be joined after [`OpenTx::opening`] (`try_join!(tx.opening(),
    /// statement)`): futures joined that way are sent in that order.
    pub(super) fn client(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a transaction has its connection until it ends")
    }

    /// `BEGIN`, unless it already went out. Polled first in a join with the
    /// transaction's first statement, it is sent right before it, in the
    /// same round trip.
    pub(super) async fn opening(&self) -> Result<(), Error> {
        if self.begun.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.client().batch_execute("BEGIN").await.map_err(db)
    }

    /// Sends `statements` and `COMMIT` in one round trip (with `BEGIN` ahead
    /// of them if nothing went out yet), commits, and returns each
    /// statement's rows. Each is prepared before any is sent (`statement.rs`),
    /// so none can land after the `COMMIT`, outside the transaction; a
    /// failed statement rolls them all back (Postgres answers the `COMMIT`
    /// of a failed transaction with a rollback, and its error is the one
    /// returned).
    pub(super) async fn commit_with(
        mut self,
        statements: &[Statement<'_>],
    ) -> Result<Vec<Vec<Row>>, Error> {
        let client = self.client();
        let commit = async move { client.batch_execute("COMMIT").await.map_err(db) };
        let rows =
            statement::pipelined(client, Box::pin(self.opening()), statements, commit).await?;
        self.committed = true;
        Ok(rows)
    }

    /// Like [`OpenTx::commit_with`], with `guard` sent first, right behind
    /// `BEGIN`: [`Guarded::Refused`] — nothing written — if the guard found
    /// its rows moved (SQLSTATE WL001) or held by another transaction
    /// (55P03, `NOWAIT`).
    pub(super) async fn commit_behind(
        mut self,
        guard: &Statement<'_>,
        statements: &[Statement<'_>],
    ) -> Result<Guarded, Error> {
        let client = self.client();
        let prepared = client.prepare_cached(guard.sql()).await.map_err(db)?;
        let moved = AtomicBool::new(false);
        let params = guard.params();
        let guarded = async {
            client.query(&prepared, &params).await.map_err(|err| {
                let code = err.code();
                if code == Some(&SqlState::LOCK_NOT_AVAILABLE)
                    || code.map(SqlState::code) == Some(ROW_MOVED)
                {
                    moved.store(true, Ordering::Release);
                }
                db(err)
            })
        };
        // Joined, so `BEGIN` and the guard go out in that order on the
        // first poll, ahead of the statements.
        let first = async { futures::try_join!(self.opening(), guarded).map(drop) };
        let commit = async move { client.batch_execute("COMMIT").await.map_err(db) };
        let outcome = statement::pipelined(client, Box::pin(first), statements, commit).await;
        match outcome {
            Ok(rows) => {
                self.committed = true;
                Ok(Guarded::Committed(rows))
            }
            // The guard's answer came back, so every step went out on the
            // first poll, the `COMMIT` too: Postgres ends the failed
            // transaction with it (a rollback), ahead of anything sent next
            // on the connection, which is free for the next transaction.
            Err(_) if moved.load(Ordering::Acquire) => {
                self.committed = true;
                let conn = self.conn.take().expect("a transaction has its connection");
                Ok(Guarded::Refused(Box::new(conn)))
            }
            Err(err) => Err(err),
        }
    }
}

/// How a guarded commit ([`OpenTx::commit_behind`]) ended.
pub(super) enum Guarded {
    /// Committed: each statement's rows.
    Committed(Vec<Vec<Row>>),
    /// The guard refused: nothing written, the transaction over; its
    /// connection, for the next one.
    Refused(Box<Connection>),
}

/// What `wl_lock_unchanged` (V8) raises when a row it was asked to lock
/// moved since it was read, or is gone.
const ROW_MOVED: &str = "WL001";

impl Drop for OpenTx {
    fn drop(&mut self) {
        if self.committed || !*self.begun.get_mut() {
            return;
        }
        let Some(conn) = self.conn.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if conn.batch_execute("ROLLBACK").await.is_err() {
                        // Not usable: out of the pool, closed (Postgres
                        // rolls back what it had).
                        drop(Object::take(conn));
                    }
                });
            }
            Err(_) => drop(Object::take(conn)),
        }
    }
}
