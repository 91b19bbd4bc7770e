//! Gates a test puts in front of the fake's next calls, per workspace.
//! No contract of its own: tests of C5 and C17 hold calls with it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use tokio::sync::Semaphore;
use workspace_backends::WorkspaceId;

/// Per workspace, gates for its next calls of one kind, one each.
#[derive(Default)]
pub(super) struct Holds(Mutex<HashMap<WorkspaceId, VecDeque<Arc<Semaphore>>>>);

impl Holds {
    pub(super) fn add(&self, workspace: WorkspaceId) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        let mut holds = self.0.lock().unwrap();
        holds.entry(workspace).or_default().push_back(gate.clone());
        gate
    }

    pub(super) fn next(&self, workspace: WorkspaceId) -> Option<Arc<Semaphore>> {
        self.0.lock().unwrap().get_mut(&workspace)?.pop_front()
    }
}
