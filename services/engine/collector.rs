//! The garbage collector (C17): level-triggered, every reconcile pass. It
//! lists what each backend actually runs and removes every instance that is
//! not the serving generation of a live workspace — leftovers of failed
//! cycles whose clean-up could not reach the backend, of owners that were
//! paused or partitioned mid-call, of FAILED, STOPPED and DELETED
//! workspaces. So whatever went wrong, a leak lasts one reconcile interval.
//!
//! It never races a cycle (C5): a workspace whose cycle runs is the cycle's
//! business (its start removes older generations, its failure cleans up),
//! and each removal runs holding the workspace's row, its standing read
//! again under that lock, so no cycle can be claimed until it ends. The
//! hold is bounded: a removal gets [`REMOVAL_HOLD`], and a collector
//! paused past it loses the row and makes no call (C18). One replica
//! collects at a time (an advisory lock a quiet holder loses). Instances of
//! workspaces this database does not know are left alone: they may belong
//! to another deployment sharing the backend.

use std::time::Duration;

use workspace_backends::{Backend, Halt, InstancePhase, InstanceRef};

use super::backend_set::Backends;
use crate::domain::Error;
use crate::{
    domain::Generation,
    store::{Standing, Store},
};

/// The advisory lock key of the collector: one replica collects at a time.
const COLLECTOR_LOCK: i64 = 0x776c_6763; // "wlgc"

/// How long one removal may hold its workspace's row. A cycle claimed
/// meanwhile waits this long at most (well under the lock timeout); a
/// removal cut short is asked again by the next pass (removals are
/// idempotent, and an EC2 terminate is sent before its wait). A call cut
/// short is abandoned, not undone: what the backend still does for it
/// (EC2 finishing a terminate) can overlap a cycle claimed next, and is
/// harmless to it because removals address only older generations (C18).
pub(crate) const REMOVAL_HOLD: Duration = Duration::from_secs(5);

/// One pass over every backend, unless another replica is collecting;
/// returns how many instances it removed. A replica that goes quiet for
/// two reconcile intervals (at least 10 s) while collecting yields the
/// collection to the next.
pub(super) async fn collect(
    store: &Store,
    backends: &Backends,
    every: Duration,
) -> Result<usize, Error> {
    let quiet = (every * 2).max(Duration::from_secs(10));
    match store
        .exclusive(COLLECTOR_LOCK, quiet, collect_now(store, backends))
        .await?
    {
        Some(pass) => pass,
        None => Ok(0),
    }
}

async fn collect_now(store: &Store, backends: &Backends) -> Result<usize, Error> {
    let mut removed = 0;
    for backend in backends.all() {
        let inventory = match backend.inventory().await {
            Ok(inventory) => inventory,
            Err(err) => {
                tracing::warn!(backend = %backend.kind(), %err, "collector could not list instances");
                continue;
            }
        };
        let mut workspaces: Vec<_> = inventory.iter().map(|i| i.workspace).collect();
        workspaces.sort_unstable();
        workspaces.dedup();
        let standings = store.standings(&workspaces).await?;
        for instance in &inventory {
            let Some(standing) = standings.get(&instance.workspace) else {
                continue;
            };
            if !doomed(instance, *standing) {
                continue;
            }
            // Under the row: a cycle may have claimed it since the list.
            let held = store
                .holding(instance.workspace, *standing, REMOVAL_HOLD, |left| {
                    remove(backend.as_ref(), instance, *standing, left)
                })
                .await?;
            if held == Some(true) {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// True if `instance` must go given its workspace's `standing`.
fn doomed(instance: &InstanceRef, standing: Standing) -> bool {
    // Already gone (a terminated EC2 instance stays listed for a while).
    if instance.phase == InstancePhase::Missing {
        return false;
    }
    match standing {
        Standing::Busy => false,
        // Newer than what serves cannot be (generations are recorded
        // before their start); never stop through the serving one.
        Standing::Serving(serving) => instance.generation.is_none_or(|g| g < serving),
        Standing::Idle { .. } => true,
    }
}

async fn remove(
    backend: &dyn Backend,
    instance: &InstanceRef,
    standing: Standing,
    within: Duration,
) -> bool {
    let workspace = instance.workspace;
    // Unlabelled counts as older than everything.
    let through = instance.generation.unwrap_or(Generation(0));
    let call = async {
        match standing {
            Standing::Idle { deleted: true } => {
                backend.delete(workspace, through, Halt::Force).await
            }
            _ => backend.stop(workspace, through, Halt::Force).await,
        }
    };
    let Ok(result) = tokio::time::timeout(within, call).await else {
        tracing::warn!(%workspace, generation = through.0, "collector's removal ran out of time; the next pass asks again");
        return false;
    };
    match result {
        Ok(()) => {
            tracing::warn!(%workspace, generation = through.0, ?standing, "collector removed a leftover instance");
            true
        }
        Err(err) => {
            tracing::warn!(%workspace, %err, "collector could not remove a leftover instance");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WorkspaceId;

    fn instance(generation: Option<u64>) -> InstanceRef {
        InstanceRef {
            workspace: WorkspaceId::new(),
            generation: generation.map(Generation),
            phase: InstancePhase::Running,
        }
    }

    #[test]
    fn only_the_serving_generation_of_a_live_workspace_survives() {
        let serving = Standing::Serving(Generation(3));
        assert!(!doomed(&instance(Some(3)), serving));
        assert!(doomed(&instance(Some(2)), serving));
        assert!(doomed(&instance(None), serving));
        assert!(
            !doomed(&instance(Some(4)), serving),
            "never stop through the serving one"
        );
        assert!(!doomed(&instance(Some(1)), Standing::Busy));
        for deleted in [false, true] {
            assert!(doomed(&instance(Some(3)), Standing::Idle { deleted }));
        }
        let gone = InstanceRef {
            phase: InstancePhase::Missing,
            ..instance(Some(1))
        };
        assert!(
            !doomed(&gone, Standing::Idle { deleted: true }),
            "already gone"
        );
    }
}
