//! The debounce's early check for droppable triggers (C9): a probe report
//! is a no-op while a cycle is in flight, inside the debounce window, while
//! the workspace is stopped, or while the backend says the instance is still
//! booting. Each drop is counted and visible (admission records it with its
//! group). What passes is re-checked by the ledger under the row lock.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;

use self::peeks::{Batched, ReadMany};
use super::{
    backend_set::Backends,
    debounce::{DropCheck, EarlyDrop},
};
use crate::{
    domain::{Desired, Error, Timestamp, Trigger, WorkspaceId, ledger::DropReason},
    store::{Peek, Store},
};

mod peeks;

/// Checks droppable requests against Postgres and the backend.
pub struct ProbeCheck {
    peeks: Arc<Batched<StorePeeks>>,
    backends: Backends,
}

/// The store's look at many workspaces at once.
struct StorePeeks(Store);

#[async_trait]
impl ReadMany for StorePeeks {
    type Value = Peek;

    async fn read_many(&self, ids: &[WorkspaceId]) -> Result<HashMap<WorkspaceId, Peek>, Error> {
        self.0.peek_many(ids).await
    }
}

impl ProbeCheck {
    /// A check over `store` and `backends`.
    pub fn new(store: Store, backends: Backends) -> Self {
        Self {
            peeks: Batched::new(StorePeeks(store)),
            backends,
        }
    }

    /// Asks the backend whether the instance is still booting. A backend
    /// that cannot answer is not taken as "booting": the ledger decides.
    async fn booting(&self, workspace: WorkspaceId, peek: &Peek) -> bool {
        let Ok(backend) = self.backends.get(peek.backend) else {
            return false;
        };
        match backend.state(workspace).await {
            Ok(state) => state.is_booting(),
            Err(err) => {
                tracing::debug!(%workspace, %err, "backend state unknown for a probe");
                false
            }
        }
    }
}

#[async_trait]
impl DropCheck<WorkspaceId> for ProbeCheck {
    async fn check(
        &self,
        workspace: &WorkspaceId,
        trigger: Trigger,
        now: Timestamp,
    ) -> Result<Option<EarlyDrop>, Error> {
        // Probes that arrive together share one read of their rows.
        let peek = self.peeks.get(*workspace).await?;
        let until = peek.window_until.filter(|until| *until > now);
        let reason = if peek.desired == Desired::Deleted {
            return Err(Error::FailedPrecondition("workspace is deleted".into()));
        } else if peek.desired != Desired::Running {
            DropReason::NotRunning
        } else if peek.cycle_in_flight {
            DropReason::CycleInFlight
        } else if until.is_some() {
            DropReason::Debounced
        } else if trigger == Trigger::HealthProbe && self.booting(*workspace, &peek).await {
            DropReason::InstanceBooting
        } else {
            return Ok(None);
        };
        Ok(Some(EarlyDrop {
            reason,
            until: peek.window_until,
        }))
    }
}
