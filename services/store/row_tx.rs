//! One transaction on one workspace row: the narrow surface the engine
//! drives to apply its decisions (C2, C5, C11, C13). The engine locks the
//! row, decides with the ledger, and the store writes what it decided —
//! the row, the events (`NOTIFY`, sent only if the transaction commits) —
//! in the same transaction, so every replica sees one order of decisions.
//! Its `BEGIN` goes out with the row lock, in one round trip (`open_tx.rs`).

use deadpool_postgres::Object;

use super::{
    Store, notify,
    open_tx::{Guarded, OpenTx},
    rows,
    rows::RowVersion,
    statement::Statement,
};
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
    /// The row's version, when the transaction decides on the row as this
    /// process remembers it instead of reading it: its `COMMIT` then goes
    /// out behind `wl_lock_unchanged` (`Store::on_row`).
    recalled: Option<RowVersion>,
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
            recalled: None,
        }
    }

    /// The workspace this transaction is about.
    pub fn workspace(&self) -> WorkspaceId {
        self.workspace
    }

    /// Locks the row for the rest of the transaction and reads its ledger;
    /// `NotFound` if there is no such workspace.
    pub async fn lock(&self) -> Result<Locked, Error> {
        let ((), (locked, version)) = futures::try_join!(
            self.tx.opening(),
            rows::lock(self.tx.client(), self.workspace)
        )?;
        (self.store.known).remember(self.workspace, version, locked.clone(), None);
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
        match self.end(save, now).await? {
            Ended::Committed(committed) => Ok(committed),
            Ended::Moved(_) => Err(Error::Internal(
                "a transaction that read its row found it moved".into(),
            )),
        }
    }

    /// Commits (see [`RowTx::commit`]); a transaction that decided on the
    /// remembered row goes out behind its guard, and is refused
    /// ([`Ended::Moved`], nothing written) if the row moved since.
    async fn end(self, save: Option<&Locked>, now: Timestamp) -> Result<Ended, Error> {
        let timing = self.store.timing();
        let rows: Vec<rows::Save<'_>> = save
            .into_iter()
            .map(|locked| rows::Save::of(self.workspace, locked, timing))
            .collect();
        let queued = self.queued.len();
        let wrote = queued > 0 || save.is_some();
        let statements: Vec<Statement<'_>> = self
            .queued
            .into_iter()
            .chain(rows::save(&rows, now))
            .chain(notify::publish(&self.events))
            .collect();
        let (store, workspace) = (self.store, self.workspace);
        let rows = match self.recalled {
            None => self.tx.commit_with(&statements).await?,
            Some(version) => {
                let guard = rows::lock_unchanged(&[workspace], &[version]);
                match self.tx.commit_behind(&guard, &statements).await? {
                    Guarded::Committed(rows) => rows,
                    Guarded::Refused(conn) => {
                        store.known.moved(&[workspace]);
                        return Ok(Ended::Moved(conn));
                    }
                }
            }
        };
        // The row as the save left it (it runs after the queued writes), or
        // forgotten if a queued write moved it without a save.
        let saved = save.and(rows.get(queued)).map(|saved| rows::saved(saved));
        match saved {
            Some(Ok(saved)) => {
                for (id, locked, version) in saved {
                    store.known.remember(id, version, locked, None);
                }
            }
            _ if wrote => store.known.forget(workspace),
            _ => {}
        }
        Ok(Ended::Committed(Committed { rows }))
    }
}

/// How a row transaction ended.
enum Ended {
    Committed(Committed),
    /// It decided on the remembered row, which had moved: nothing written.
    Moved(Box<Connection>),
}

impl Store {
    /// Decides on `workspace`'s row and commits the decision, in one round
    /// trip when this process remembers the row (its last read or write of
    /// it): `decide` gets the transaction (to queue writes on) and the row,
    /// and says whether to save the row. Should the remembered row have
    /// moved, or `decide` fail on it, nothing is written and `decide` runs
    /// again on the row read under the lock — so it must do nothing but
    /// decide. `NotFound` if there is no such workspace.
    pub async fn on_row<T>(
        &self,
        workspace: WorkspaceId,
        now: Timestamp,
        mut decide: impl FnMut(&mut RowTx, &mut Locked) -> Result<(bool, T), Error>,
    ) -> Result<OnRow<T>, Error> {
        let mut conn = self.conn().await?;
        let mut recall = true;
        loop {
            let mut tx = RowTx::begin(conn, self, workspace);
            let remembered = recall.then(|| self.known.recall_row(workspace)).flatten();
            let mut locked = match remembered {
                Some((locked, version)) => {
                    tx.recalled = Some(version);
                    locked
                }
                None => tx.lock().await?,
            };
            let (save, value) = match decide(&mut tx, &mut locked) {
                Ok(decided) => decided,
                Err(_) if tx.recalled.is_some() => {
                    // Nothing was sent: its connection goes back as it was.
                    drop(tx);
                    recall = false;
                    conn = self.conn().await?;
                    continue;
                }
                Err(err) => return Err(err),
            };
            match tx.end(save.then_some(&locked), now).await? {
                Ended::Committed(committed) => {
                    return Ok(OnRow {
                        value,
                        committed,
                        locked,
                    });
                }
                Ended::Moved(free) => {
                    recall = false;
                    conn = *free;
                }
            }
        }
    }
}

/// A decision [`Store::on_row`] committed.
pub struct OnRow<T> {
    /// What `decide` returned.
    pub value: T,
    /// What the queued statements returned.
    pub committed: Committed,
    /// The row as decided (and saved, if it was).
    pub locked: Locked,
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
