//! What this process last knew of the workspace rows it read and wrote,
//! each at its row's version (V8), so a decision on a row it still knows
//! costs one round trip instead of two — an admission group
//! (`group_tx.rs`), a claim, a cycle's end, a hand-off (`Store::on_row`):
//! its writes go out behind `wl_lock_unchanged`, which fails the whole
//! transaction if any row moved since (C2, C5, C12 and C13 hold as with
//! rows read under the lock: a decision is written only against the very
//! row version it was made on, and one that writes nothing is committed
//! behind the guard all the same, so it too was made on the row as it is).
//!
//! Nothing here is trusted: a stale entry costs one failed round trip,
//! never a wrong write. It only saves reads. So it is small (bounded),
//! forgets a row whenever this process writes it another way, and once a
//! row is found moved it stops recalling any row for a second: replicas
//! that share their workspaces move each other's rows all the time, and
//! every try would cost a refused round trip (measured: the 3-replica
//! storm lost ~15 % of its intents/s while it retried row by row).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::{Locked, config_state::ConfigState, group_tx::Admitting, rows::RowVersion};
use crate::domain::WorkspaceId;

/// How many rows are remembered at most; past it, an arbitrary one is
/// forgotten for each new one (a stale or missing entry only costs a read).
const CAPACITY: usize = 4096;

/// How long after a row was found moved every row is read under the lock
/// again, before rows are recalled once more.
const SHY_FOR: Duration = Duration::from_secs(1);

/// One remembered row.
struct Known {
    version: RowVersion,
    locked: Locked,
    /// Its config as the last batch that read or changed it left it.
    config: Option<ConfigState<'static>>,
}

/// The rows this process knows, per store (shared by its clones).
#[derive(Default)]
pub(super) struct KnownRows {
    rows: Mutex<HashMap<WorkspaceId, Known>>,
    /// Until when no row is recalled: one was found moved.
    shy_until: Mutex<Option<Instant>>,
}

impl KnownRows {
    /// The rows of `ids` as last known, with their versions — if every one
    /// is known, no row was found moved in the last second, and each of
    /// `configs` is known with its config (with its spec, when
    /// `with_spec`). Otherwise `None`: the rows are read under the lock.
    pub(super) fn recall(
        &self,
        ids: &[WorkspaceId],
        configs: &[WorkspaceId],
        with_spec: bool,
    ) -> Option<(HashMap<WorkspaceId, Admitting<'static>>, Vec<RowVersion>)> {
        {
            let mut shy = self.shy_until.lock().expect("known rows");
            match *shy {
                Some(until) if until > Instant::now() => return None,
                Some(_) => *shy = None,
                None => {}
            }
        }
        let rows = self.rows.lock().expect("known rows");
        let mut admitting = HashMap::with_capacity(ids.len());
        let mut versions = Vec::with_capacity(ids.len());
        for id in ids {
            let known = rows.get(id)?;
            let config = known.config.as_ref().map(ConfigState::unwritten);
            let usable = config.as_ref().is_some_and(|c| c.has_spec() || !with_spec);
            if configs.contains(id) && !usable {
                return None;
            }
            versions.push(known.version);
            admitting.insert(
                *id,
                Admitting {
                    locked: known.locked.clone(),
                    config: config.filter(|_| usable),
                },
            );
        }
        Some((admitting, versions))
    }

    /// `workspace`'s row as last known, with its version — unless it is not
    /// known or a row was found moved in the last second.
    pub(super) fn recall_row(&self, workspace: WorkspaceId) -> Option<(Locked, RowVersion)> {
        let (mut known, versions) = self.recall(&[workspace], &[], false)?;
        Some((known.remove(&workspace)?.locked, *versions.first()?))
    }

    /// Remembers `workspace`'s row at `version`: `locked`, and its config if
    /// read (a row remembered without it keeps the config it had, if that
    /// was at the same version).
    pub(super) fn remember(
        &self,
        workspace: WorkspaceId,
        version: RowVersion,
        locked: Locked,
        config: Option<ConfigState<'static>>,
    ) {
        let mut rows = self.rows.lock().expect("known rows");
        let config = match (config, rows.remove(&workspace)) {
            (Some(config), _) => Some(config),
            (None, Some(known)) if known.version == version => known.config,
            (None, _) => None,
        };
        if rows.len() >= CAPACITY {
            if let Some(victim) = rows.keys().next().copied() {
                rows.remove(&victim);
            }
        }
        rows.insert(
            workspace,
            Known {
                version,
                locked,
                config,
            },
        );
    }

    /// Forgets `workspace`'s row: this process wrote it another way.
    pub(super) fn forget(&self, workspace: WorkspaceId) {
        self.rows.lock().expect("known rows").remove(&workspace);
    }

    /// Forgets `ids`' rows, and recalls no row for a while: one of them
    /// moved behind this process's back.
    pub(super) fn moved(&self, ids: &[WorkspaceId]) {
        {
            let mut rows = self.rows.lock().expect("known rows");
            for id in ids {
                rows.remove(id);
            }
        }
        *self.shy_until.lock().expect("known rows") = Some(Instant::now() + SHY_FOR);
    }
}
