//! The reconciler: the service's own eyes on its workspaces. A workspace
//! that should be serving (ONLINE, no cycle in flight or waiting) but whose
//! instance the backend reports as gone, stopped or crashed gets a
//! RECONCILER request — through the same stack as everyone else, so it is
//! debounced (C7) and never races another cycle (C5). A booting instance is
//! not "down" (C9). Each pass also asks again for deletes whose cycle
//! failed and runs the garbage collector (C17).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{Stack, backend_set::Backends, intent::Intent};
use crate::{
    domain::{Trigger, WorkspaceId},
    store::{Serving, Store},
};

/// Workspaces looked at per pass (the pass pages through all of them).
const PAGE: usize = 200;

/// Runs until `shutdown`, one pass every `every`.
pub(super) async fn run(
    store: Store,
    backends: Backends,
    stack: Stack,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(err) = pass(&store, &backends, &stack).await {
            tracing::warn!(%err, "reconciler pass failed");
        }
        if let Err(err) = retry_deletes(&store, &stack).await {
            tracing::warn!(%err, "retrying failed deletes failed");
        }
        if let Err(err) = super::collector::collect(&store, &backends, every).await {
            tracing::warn!(%err, "collector pass failed");
        }
    }
}

async fn pass(
    store: &Store,
    backends: &Backends,
    stack: &Stack,
) -> Result<(), crate::domain::Error> {
    let mut after = None;
    loop {
        let page = store.serving_workspaces(after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.workspace);
        for serving in &page {
            check(stack, backends, serving).await;
        }
        if page.len() < PAGE {
            return Ok(());
        }
    }
}

/// One workspace: a cycle if its instance is down. Leftover instances (of
/// older generations, or of workspaces that are gone) are not this pass's
/// business: a garbage collector over the backends' inventories removes
/// them.
async fn check(stack: &Stack, backends: &Backends, serving: &Serving) {
    let workspace = serving.workspace;
    let Ok(backend) = backends.get(serving.backend) else {
        return;
    };
    let state = match backend.state(workspace).await {
        Ok(state) => state,
        Err(err) => {
            tracing::debug!(%workspace, %err, "reconciler could not read the instance");
            return;
        }
    };
    if state.is_down() {
        request_cycle(stack, workspace, format!("instance is {:?}", state.phase)).await;
    }
}

/// A delete whose cycle failed is asked again until it completes (C17):
/// through the stack, so it never races another cycle.
async fn retry_deletes(store: &Store, stack: &Stack) -> Result<(), crate::domain::Error> {
    for (workspace, _) in store.unfinished_deletes(PAGE).await? {
        tracing::info!(%workspace, "retrying a delete that failed");
        let intent = Intent::new(
            workspace,
            crate::domain::ledger::Ask::Delete,
            Trigger::Reconciler,
            "retrying a delete that failed",
        );
        if let Err(err) = stack.clone().oneshot(intent).await {
            tracing::warn!(%workspace, %err, "delete retry failed");
        }
    }
    Ok(())
}

async fn request_cycle(stack: &Stack, workspace: WorkspaceId, reason: String) {
    tracing::info!(%workspace, %reason, "reconciler found the instance down");
    let intent = Intent::restart(workspace, Trigger::Reconciler, reason);
    if let Err(err) = stack.clone().oneshot(intent).await {
        tracing::warn!(%workspace, %err, "reconciler request failed");
    }
}
