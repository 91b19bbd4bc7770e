//! A statement built whole before anything is sent, so a transaction's last
//! writes (and reads) and its `COMMIT` can go out in one round trip without
//! any of them landing after the `COMMIT` (`OpenTx::commit_with`).
//! Contracts: C13 (nothing acknowledged before it is durable; nothing
//! written outside its transaction).
//!
//! Why the split: a write that prepares its statement as it goes is sent
//! only when the `Parse` came back — after a `COMMIT` pipelined behind it
//! on a connection whose statement cache is cold, so it would run on its
//! own, outside the transaction. A [`Statement`] is only text and
//! parameters; whoever sends it prepares first and sends second.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use deadpool_postgres::GenericClient;
use futures::future::BoxFuture;
use tokio_postgres::{Row, types::ToSql};

use super::db;
use crate::domain::Error;

/// A parameter a [`Statement`] owns (or borrows from what the caller decided).
pub(super) type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// One statement and its parameters, not yet sent (a write, or a read
/// whose rows come back with the `COMMIT`'s answer).
pub(super) struct Statement<'a> {
    sql: &'static str,
    params: Vec<Param<'a>>,
}

impl<'a> Statement<'a> {
    /// `sql` with `params` (`$1`, `$2`, … in order).
    pub(super) fn new(sql: &'static str, params: Vec<Param<'a>>) -> Self {
        Self { sql, params }
    }

    /// Its text, to prepare it.
    pub(super) fn sql(&self) -> &'static str {
        self.sql
    }

    /// Its parameters, to send it.
    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Sends `statements` and then `last` in one round trip, and returns each
/// statement's rows (none for a write without `RETURNING`): every statement
/// is prepared first (a cache hit costs no round trip), then each is sent
/// in order, `last` (the `COMMIT`) behind them. A statement that fails
/// before it is sent stops the rest from being sent.
pub(super) async fn pipelined<'c, C, L>(
    client: &'c C,
    first: BoxFuture<'c, Result<(), Error>>,
    statements: &'c [Statement<'_>],
    last: L,
) -> Result<Vec<Vec<Row>>, Error>
where
    C: GenericClient + Sync,
    L: Future<Output = Result<(), Error>> + Send + 'c,
{
    let prepared = futures::future::try_join_all(
        statements
            .iter()
            .map(|statement| client.prepare_cached(statement.sql())),
    )
    .await
    .map_err(db)?;
    let none = |done: Result<(), Error>| done.map(|()| Vec::new());
    let mut steps: Vec<BoxFuture<'_, Result<Vec<Row>, Error>>> =
        Vec::with_capacity(statements.len() + 2);
    steps.push(Box::pin(async move { none(first.await) }));
    for (prepared, statement) in prepared.iter().zip(statements) {
        steps.push(Box::pin(async move {
            client
                .query(prepared, &statement.params())
                .await
                .map_err(db)
        }));
    }
    steps.push(Box::pin(async move { none(last.await) }));
    let mut rows = InOrder::new(steps).await?;
    // What `first` and `last` answered.
    rows.pop();
    rows.remove(0);
    Ok(rows)
}

/// Polls its futures in their order on every pass, until all are done or
/// one fails, and returns their outputs in that order. A statement future
/// sends its message on its first poll, so the messages reach Postgres in
/// this order.
struct InOrder<'f, T> {
    steps: Vec<Option<BoxFuture<'f, Result<T, Error>>>>,
    outputs: Vec<Option<T>>,
}

impl<'f, T> InOrder<'f, T> {
    fn new(steps: Vec<BoxFuture<'f, Result<T, Error>>>) -> Self {
        Self {
            outputs: steps.iter().map(|_| None).collect(),
            steps: steps.into_iter().map(Some).collect(),
        }
    }
}

impl<T: Unpin> Future for InOrder<'_, T> {
    type Output = Result<Vec<T>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut pending = false;
        for (step, output) in this.steps.iter_mut().zip(this.outputs.iter_mut()) {
            let Some(future) = step else { continue };
            match future.as_mut().poll(cx) {
                Poll::Ready(Ok(done)) => {
                    *output = Some(done);
                    *step = None;
                }
                // The steps after it are not polled: if they were never
                // sent, they never will be.
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => pending = true,
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(Ok(this
            .outputs
            .iter_mut()
            .filter_map(Option::take)
            .collect()))
    }
}
