//! Postgres: the truth about every workspace.
//! Contracts: C5, C12, C14.
//!
//! One method per operation, each one transaction. Every operation that
//! touches the gate, the follow-up or the debounce window locks the
//! workspace row (`SELECT … FOR NO KEY UPDATE`: writers exclude each other,
//! while a row merely referring to the workspace can still be added), loads
//! the [`Ledger`], applies one
//! of its transitions and writes it back, so the rules live in Rust (and are
//! model-checked) while Postgres serialises them across replicas. Every
//! write a cycle makes is fenced: it happens only if that cycle still holds
//! the gate in this replica's name.
//!
//! [`Ledger`]: crate::domain::ledger::Ledger

mod admission;
mod agents;
mod audit;
mod claimed;
mod config_state;
mod cycles;
mod drops;
mod error;
mod group_tx;
mod known_rows;
mod limits;
pub mod listener;
mod notify;
mod open_tx;
mod request_ids;
mod retention;
mod row_tx;
mod rows;
mod running;
mod schedule;
pub mod sealing;
mod standings;
mod statement;
mod workspaces;

use std::{str::FromStr, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use admission::{Tally, WorkspaceWrites};
pub use agents::{AgentReport, AgentWait, Registration, token_hash};
pub use audit::{AuditRow, RefusedRow};
pub use claimed::{ConfigSnapshot, PendingStart, Started};
pub use config_state::{ConfigState, ConfigWrites};
pub use cycles::CycleRecord;
pub use drops::Peek;
pub use group_tx::{Admitting, GroupTx, Unchanged};
pub use limits::LimitCheck;
pub use retention::Pruned;
pub use row_tx::{Committed, Connection, Locked, OnRow, RowTx};
pub use running::Fence;
pub use schedule::{ADMITTER_GRACE, Serving};
pub use sealing::{Sealer, SecretsKey};
pub use standings::Standing;
pub use workspaces::{AgentRecord, TriggerCounts, WorkspaceRecord};

use crate::domain::Error;
use crate::{
    domain::{self, ReplicaId},
    domain::{
        clock::{DatabaseClock, SharedClock},
        ledger::Timing,
    },
};
pub(crate) use error::{db, query, row_by_id};
pub use request_ids::{Claim, RequestClaim};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How the store connects.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// A libpq-style URL or key=value string.
    pub url: String,
    /// Most connections this replica opens.
    pub max_connections: usize,
    /// How long a request waits for a free connection before `UNAVAILABLE`.
    pub acquire_timeout: Duration,
    /// The key secret values are sealed with at rest.
    pub secrets_key: SecretsKey,
}

/// The shared handle on Postgres. Cloned for every admission and cycle:
/// what is not a handle already is behind an `Arc`.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    pg_config: Arc<tokio_postgres::Config>,
    replica: ReplicaId,
    timing: Timing,
    clock: SharedClock,
    sealer: Arc<Sealer>,
    /// The backends' limits, checked at admission (set by the engine).
    limits: Arc<std::sync::OnceLock<LimitCheck>>,
    /// The rows admission read and wrote, so it need not read them again.
    known: Arc<known_rows::KnownRows>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects (lazily) and checks that Postgres answers.
    pub async fn connect(
        config: &StoreConfig,
        replica: ReplicaId,
        timing: Timing,
        clock: SharedClock,
    ) -> Result<Self, Error> {
        let mut pg_config =
            tokio_postgres::Config::from_str(&config.url).map_err(|e| Error::Invalid {
                field: "database_url".into(),
                message: format!("bad database URL: {e}"),
            })?;
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(Duration::from_secs(5));
        }
        // Nothing the control plane does should hold a row for long; a
        // statement stuck behind a dead peer fails instead of piling up.
        pg_config.options("-c statement_timeout=30000 -c lock_timeout=10000");
        pg_config.application_name("workspace-lifecycle");
        let manager = Manager::from_config(
            pg_config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| Error::Internal(format!("connection pool: {e}")))?;
        let store = Self {
            pool,
            pg_config: Arc::new(pg_config),
            replica,
            timing,
            clock,
            sealer: Arc::new(Sealer::new(&config.secrets_key)),
            limits: Arc::default(),
            known: Arc::default(),
        };
        drop(store.conn().await?);
        Ok(store)
    }

    /// Anchors `clock` to the database's time: the tightest of a few
    /// readings (C19).
    pub async fn sync_clock(&self, clock: &DatabaseClock) -> Result<(), Error> {
        let conn = self.conn().await?;
        let statement = conn.prepare_cached("SELECT now()").await.map_err(db)?;
        for _ in 0..3 {
            let sent = tokio::time::Instant::now();
            let row = conn.query_one(&statement, &[]).await.map_err(db)?;
            let received = tokio::time::Instant::now();
            // `now()` is the transaction's start; a lone statement is its
            // own transaction, so that is the moment the server read it.
            clock.sync(row.get(0), sent, received);
        }
        Ok(())
    }

    /// Re-syncs `clock` every few seconds, for as long as the process runs
    /// (a failed reading keeps the last anchor: the monotonic clock carries
    /// it on).
    pub async fn keep_clock_synced(
        self,
        clock: DatabaseClock,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.cancelled() => return,
            }
            if let Err(err) = self.sync_clock(&clock).await {
                tracing::debug!(%err, "could not read the database's clock");
            }
        }
    }

    /// Applies the embedded migrations (idempotent; safe from several
    /// replicas at once thanks to refinery's lock table).
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.conn().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        // Replicas starting together must not race the migrations.
        client
            .execute("SELECT pg_advisory_lock(7201861)", &[])
            .await
            .map_err(db)?;
        let result = embedded::migrations::runner().run_async(client).await;
        client
            .execute("SELECT pg_advisory_unlock(7201861)", &[])
            .await
            .map_err(db)?;
        result.map_err(|e| Error::Internal(format!("migrations: {e}")))?;
        self.seal_legacy_secrets().await
    }

    /// Seals secrets written before they were sealed at rest (rows without
    /// a nonce hold plain text), so none stays readable in Postgres.
    async fn seal_legacy_secrets(&self) -> Result<(), Error> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let rows = tx
            .query(
                "SELECT workspace_id, name, value FROM secrets WHERE nonce IS NULL FOR UPDATE",
                &[],
            )
            .await
            .map_err(db)?;
        for row in &rows {
            let (id, name): (uuid::Uuid, String) = (row.get(0), row.get(1));
            let plain = domain::Secret::new(String::from_utf8_lossy(row.get::<_, &[u8]>(2)));
            let sealed = self.sealer.seal(id.into(), &name, &plain)?;
            tx.execute(
                "UPDATE secrets SET value = $3, nonce = $4 WHERE workspace_id = $1 AND name = $2",
                &[&id, &name, &sealed.ciphertext, &sealed.nonce],
            )
            .await
            .map_err(db)?;
        }
        // Their sizes as admission counts them changed: the rows' versions
        // move (V8's trigger), so no replica admits against what it knew.
        let sealed: Vec<uuid::Uuid> = rows.iter().map(|row| row.get(0)).collect();
        tx.execute(
            "UPDATE workspaces SET row_version = row_version WHERE id = ANY($1)",
            &[&sealed],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if !rows.is_empty() {
            tracing::info!(count = rows.len(), "sealed secrets stored before sealing");
        }
        Ok(())
    }

    /// Seals and opens secret values.
    pub(crate) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// A pooled connection, or `UNAVAILABLE` if none comes in time (the
    /// engine opens a [`RowTx`] on it).
    pub async fn conn(&self) -> Result<Object, Error> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::Unavailable(format!("database: {e}")))
    }

    /// This replica's id (leases are held in its name).
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The configured windows and lease.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The clock the store stamps rows with.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The connection settings, for the listener's dedicated connection.
    pub(crate) fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg_config
    }

    /// The most connections the pool opens.
    pub fn pool_max_size(&self) -> usize {
        self.pool.status().max_size
    }
}
