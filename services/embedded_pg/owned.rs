//! The server's hold on the embedded cluster: whatever way the process
//! leaves — a startup error, SIGTERM or SIGINT, a panic unwinding `main` —
//! a cluster this process started is stopped, so no Postgres outlives the
//! server that started it. (`SIGKILL` cannot be caught; a later start
//! finds the cluster running and reuses it.)
//! No lifecycle contract (C1–C20): how the process runs.

use super::{EmbeddedError, EmbeddedPostgres};

/// The embedded cluster, stopped on drop if this process started it.
#[derive(Debug)]
pub struct Owned(Option<EmbeddedPostgres>);

impl Owned {
    /// Takes charge of `pg`.
    pub fn new(pg: EmbeddedPostgres) -> Self {
        Self(Some(pg))
    }

    /// The cluster.
    pub fn get(&self) -> &EmbeddedPostgres {
        self.0.as_ref().expect("held until stopped")
    }

    /// Stops the cluster now if this process started it (a cluster that was
    /// already running belongs to someone else).
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        match self.0.take() {
            Some(pg) if pg.started_here() => pg.stop().await,
            _ => Ok(()),
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(pg) = self.0.take().filter(EmbeddedPostgres::started_here) {
            tracing::info!("stopping the embedded Postgres this process started");
            if let Err(err) = pg.stop_blocking() {
                tracing::warn!(%err, "could not stop the embedded Postgres");
            }
        }
    }
}
