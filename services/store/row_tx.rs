//! One transaction on one workspace row: the narrow surface the engine
//! drives to apply its decisions (C2, C5, C11, C13). The engine locks the
//! row, decides with the ledger, and the store writes what it decided —
//! the row, the events (`NOTIFY`, sent only if the transaction commits) —
//! in the same transaction, so every replica sees one order of decisions.
//! Its `BEGIN` goes out with the row lock, in one round trip (`open_tx.rs`).

use deadpool_postgres::Object;

use super::{Store, notify, open_tx::OpenTx, rows, statement::Statement};
use crate::domain::{ConfigVersion, Error, Event, Timestamp, WorkspaceId, ledger::Ledger};

/// A pooled connection; a [`RowTx`] owns it for its transaction.
pub type Connection = Object;

/// The ledger and config version read under the row lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locked {
    /// The gate and follow-up state.
    pub ledger: Ledger,
    /// The version of the workspace's secrets and files.
    pub config_version: ConfigVersion,
}

/// A transaction about one workspace, open until `commit` (dropped: rolled
/// back, nothing written).
pub struct RowTx {
    pub(super) tx: OpenTx,
    pub(super) store: Store,
    pub(super) workspace: WorkspaceId,
    pub(super) events: Vec<Event>,
    /// Statements that go out with the `COMMIT`, in the order they were
    /// queued (a cycle's end, then its follow-up's start).
    queued: Vec<Statement<'static>>,
}

impl RowTx {
    /// A transaction about `workspace` on `conn`, opened by its row lock.
    pub fn begin(conn: Connection, store: &Store, workspace: WorkspaceId) -> Self {
        Self {
            tx: OpenTx::new(conn),
            store: store.clone(),
            workspace,
            events: Vec::new(),
            queued: Vec::new(),
        }
    }

    /// The workspace this transaction is about.
    pub fn workspace(&self) -> WorkspaceId {
        self.workspace
    }

    /// Locks the row for the rest of the transaction and reads its ledger;
    /// `NotFound` if there is no such workspace.
    pub async fn lock(&self) -> Result<Locked, Error> {
        let ((), locked) = futures::try_join!(
            self.tx.opening(),
            rows::lock(self.tx.client(), self.workspace)
        )?;
        Ok(locked)
    }

    /// Queues a statement to go out with the `COMMIT`; its rows are
    /// [`Committed::rows`] of the returned place.
    pub(super) fn queue(&mut self, statement: Statement<'static>) -> Queued {
        self.queued.push(statement);
        Queued(self.queued.len() - 1)
    }

    /// Writes `save` (if given) back to the row — with when its follow-up is
    /// due, for the scheduler — sends the queued statements and events, and
    /// commits: all of it and the `COMMIT` in one pipelined round trip.
    pub async fn commit(self, save: Option<&Locked>, now: Timestamp) -> Result<Committed, Error> {
        let timing = self.store.timing();
        let rows: Vec<rows::Save<'_>> = save
            .into_iter()
            .map(|locked| rows::Save::of(self.workspace, locked, timing))
            .collect();
        let statements: Vec<Statement<'_>> = self
            .queued
            .into_iter()
            .chain(rows::save(&rows, now))
            .chain(notify::publish(&self.events))
            .collect();
        let rows = self.tx.commit_with(&statements).await?;
        // Admission would find the row moved: it reads it again instead.
        self.store.known.forget(self.workspace);
        Ok(Committed { rows })
    }
}

/// Where a queued statement's rows are in [`Committed`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Queued(usize);

/// A committed [`RowTx`]: what its queued statements returned.
#[derive(Debug)]
pub struct Committed {
    rows: Vec<Vec<tokio_postgres::Row>>,
}

impl Committed {
    /// The rows of the statement queued at `at`.
    pub(super) fn rows(&self, at: Queued) -> &[tokio_postgres::Row] {
        self.rows.get(at.0).map_or(&[], Vec::as_slice)
    }
}
