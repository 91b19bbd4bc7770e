//! Request ids (AIP-155): the first answer to each mutation a caller tagged
//! with a `request_id`, so a retry gets that answer instead of a second
//! effect — sequentially, concurrently and across replicas.
//! Contracts: C13, C20.
//!
//! A claim is a transaction holding an advisory transaction lock on the
//! id: a concurrent request with the same id, on any replica, waits (with
//! back-off, holding no connection) until the first one has recorded its
//! answer or given up, then reads it. The
//! transaction stays open while the mutation runs on other connections of
//! the pool, and records the answer when it commits. A claim dropped
//! without an outcome (a panic, a cancelled call) closes its connection, so
//! Postgres rolls it back and releases the lock: a dropped claim can never
//! return an open transaction to the pool.

use std::time::Duration;

use deadpool_postgres::Object;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Store, db};
use crate::domain::Error;

/// Salt of the advisory-lock key, so request-id locks do not collide with
/// the migration lock or anyone else's.
const LOCK_SALT: i64 = 7_201_862;

/// How long a repeat waits for the first request with its id to finish
/// before it answers `UNAVAILABLE` (and its caller retries).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// What an earlier request with the same id says about this one.
pub enum Claim {
    /// The same request was answered before: this is its encoded answer.
    Replay(Vec<u8>),
    /// The id was used for a different request (method or body).
    Reused,
    /// The id is new: run the request, then record or abandon.
    Fresh(Box<RequestClaim>),
}

/// The right to answer a request id first; holds its lock.
pub struct RequestClaim {
    conn: Option<Object>,
    id: Uuid,
    method: &'static str,
    digest: Vec<u8>,
}

impl Store {
    /// Claims `id` for `method` with the request `digest`, or says what an
    /// earlier request with that id answered. Ids older than `retention`
    /// count as unused.
    pub async fn claim_request(
        &self,
        id: Uuid,
        method: &'static str,
        digest: Vec<u8>,
        retention: Duration,
    ) -> Result<Claim, Error> {
        let mut claim = RequestClaim {
            conn: None,
            id,
            method,
            digest,
        };
        // Waiters hold no connection while they wait: a crowd of repeats
        // must not take the pool the first request needs to finish.
        let mut backoff = Duration::from_millis(10);
        let give_up = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let conn = self.conn().await?;
            conn.batch_execute("BEGIN").await.map_err(db)?;
            claim.conn = Some(conn);
            let conn = claim.conn.as_ref().expect("just set");
            let locked: bool = conn
                .query_one(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended($1::uuid::text, $2))",
                    &[&id, &LOCK_SALT],
                )
                .await
                .map_err(db)?
                .get(0);
            if locked {
                break;
            }
            claim.finish("ROLLBACK").await?;
            if tokio::time::Instant::now() + backoff > give_up {
                return Err(Error::Unavailable(
                    "an earlier request with this request_id is still running".into(),
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        let conn = claim.conn.as_ref().expect("locked");
        let retention_secs = retention.as_secs_f64();
        let row = conn
            .query_opt(
                "SELECT method, request_digest, response,
                        created_at >= now() - make_interval(secs => $2)
                 FROM request_ids WHERE request_id = $1",
                &[&id, &retention_secs],
            )
            .await
            .map_err(db)?;
        match row {
            Some(row) if row.get::<_, bool>(3) => {
                let same = row.get::<_, &str>(0) == method
                    && row.get::<_, &[u8]>(1) == claim.digest.as_slice();
                let answer = same.then(|| row.get::<_, Vec<u8>>(2));
                claim.finish("ROLLBACK").await?;
                Ok(answer.map_or(Claim::Reused, Claim::Replay))
            }
            Some(_) => {
                // Expired but not yet pruned: the id is free again.
                conn.execute("DELETE FROM request_ids WHERE request_id = $1", &[&id])
                    .await
                    .map_err(db)?;
                Ok(Claim::Fresh(Box::new(claim)))
            }
            None => Ok(Claim::Fresh(Box::new(claim))),
        }
    }

    /// Deletes request ids older than `retention`; returns how many.
    pub async fn prune_request_ids(&self, retention: Duration) -> Result<u64, Error> {
        let conn = self.conn().await?;
        conn.execute(
            "DELETE FROM request_ids WHERE created_at < now() - make_interval(secs => $1)",
            &[&retention.as_secs_f64()],
        )
        .await
        .map_err(db)
    }

    /// Prunes expired request ids every `every` until `stop`.
    pub fn prune_request_ids_every(
        &self,
        retention: Duration,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match store.prune_request_ids(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "expired request ids deleted"),
                    Err(err) => tracing::warn!(%err, "could not prune request ids"),
                }
            }
        })
    }
}

impl RequestClaim {
    /// Records `response` as the answer to this id and releases it.
    pub async fn record(mut self, response: &[u8]) -> Result<(), Error> {
        let conn = self.conn.as_ref().expect("claim is live");
        conn.execute(
            "INSERT INTO request_ids (request_id, method, request_digest, response)
             VALUES ($1, $2, $3, $4)",
            &[&self.id, &self.method, &self.digest, &response],
        )
        .await
        .map_err(db)?;
        self.finish("COMMIT").await
    }

    /// Releases the id unrecorded: the request failed, and a retry with the
    /// same id runs it again.
    pub async fn abandon(mut self) {
        let _ = self.finish("ROLLBACK").await;
    }

    async fn finish(&mut self, statement: &str) -> Result<(), Error> {
        let conn = self.conn.take().expect("claim is live");
        match conn.batch_execute(statement).await {
            Ok(()) => Ok(()),
            Err(err) => {
                // The transaction's state is unknown: never pool it.
                drop(Object::take(conn));
                Err(db(err))
            }
        }
    }
}

impl Drop for RequestClaim {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closing the connection rolls back and releases the lock.
            drop(Object::take(conn));
        }
    }
}
