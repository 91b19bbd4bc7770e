//! A write statement built whole before anything is sent, so a
//! transaction's last writes and its `COMMIT` can go out in one round trip
//! without any of them landing after the `COMMIT` (`OpenTx::commit_with`).
//! Contracts: C13 (nothing acknowledged before it is durable; nothing
//! written outside its transaction).
//!
//! Why the split: a write that prepares its statement as it goes is sent
//! only when the `Parse` came back — after a `COMMIT` pipelined behind it
//! on a connection whose statement cache is cold, so it would run on its
//! own, outside the transaction. A [`Write`] is only text and parameters;
//! whoever sends it prepares first and sends second.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use deadpool_postgres::GenericClient;
use futures::future::BoxFuture;
use tokio_postgres::types::ToSql;

use super::db;
use crate::domain::Error;

/// A parameter a [`Write`] owns (or borrows from what the caller decided).
pub(super) type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// One statement and its parameters, not yet sent.
pub(super) struct Write<'a> {
    sql: &'static str,
    params: Vec<Param<'a>>,
}

impl<'a> Write<'a> {
    /// `sql` with `params` (`$1`, `$2`, … in order).
    pub(super) fn new(sql: &'static str, params: Vec<Param<'a>>) -> Self {
        Self { sql, params }
    }

    /// Runs it on its own (prepared once per connection, then cached).
    pub(super) async fn execute(&self, client: &impl GenericClient) -> Result<u64, Error> {
        let statement = client.prepare_cached(self.sql).await.map_err(db)?;
        client.execute(&statement, &self.params()).await.map_err(db)
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Sends `writes` and then `last` in one round trip: every statement is
/// prepared first (a cache hit costs no round trip), then each is sent in
/// order, `last` (the `COMMIT`) behind them. A write that fails before it
/// is sent stops the rest from being sent.
pub(super) async fn pipelined<'c, C, L>(
    client: &'c C,
    first: BoxFuture<'c, Result<(), Error>>,
    writes: &'c [Write<'_>],
    last: L,
) -> Result<(), Error>
where
    C: GenericClient + Sync,
    L: Future<Output = Result<(), Error>> + Send + 'c,
{
    let statements =
        futures::future::try_join_all(writes.iter().map(|write| client.prepare_cached(write.sql)))
            .await
            .map_err(db)?;
    let mut steps: Vec<BoxFuture<'_, Result<(), Error>>> = Vec::with_capacity(writes.len() + 2);
    steps.push(first);
    for (statement, write) in statements.iter().zip(writes) {
        steps.push(Box::pin(async move {
            client
                .execute(statement, &write.params())
                .await
                .map(drop)
                .map_err(db)
        }));
    }
    steps.push(Box::pin(last));
    InOrder::new(steps).await
}

/// Polls its futures in their order on every pass, until all are done or
/// one fails. A statement future sends its message on its first poll, so
/// the messages reach Postgres in this order.
struct InOrder<'f> {
    steps: Vec<Option<BoxFuture<'f, Result<(), Error>>>>,
}

impl<'f> InOrder<'f> {
    fn new(steps: Vec<BoxFuture<'f, Result<(), Error>>>) -> Self {
        Self {
            steps: steps.into_iter().map(Some).collect(),
        }
    }
}

impl Future for InOrder<'_> {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut pending = false;
        for step in self.steps.iter_mut() {
            let Some(future) = step else { continue };
            match future.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => *step = None,
                // The steps after it are not polled: if they were never
                // sent, they never will be.
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
}
