//! Wraps a real backend and counts what it is asked to do, so tests against
//! the real Docker Engine (or EC2 endpoint) still count cycles as backend
//! Start calls and see any overlap.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use workspace_backends::{
    Backend, BackendError, BackendKind, ConfigFootprint, Generation, Halt, InstanceRef,
    InstanceState, Launch, LimitExceeded, WorkspaceId,
};

#[derive(Default)]
struct Tally {
    starts: HashMap<WorkspaceId, Vec<Generation>>,
    errors: Vec<String>,
    in_flight: HashMap<WorkspaceId, usize>,
    max_in_flight: HashMap<WorkspaceId, usize>,
}

/// A backend that counts.
pub struct Counted<B> {
    inner: B,
    tally: Mutex<Tally>,
}

impl<B: Backend> Counted<B> {
    pub fn new(inner: B) -> Arc<Self> {
        Arc::new(Self {
            inner,
            tally: Mutex::default(),
        })
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    pub fn starts(&self, workspace: WorkspaceId) -> Vec<Generation> {
        self.tally
            .lock()
            .unwrap()
            .starts
            .get(&workspace)
            .cloned()
            .unwrap_or_default()
    }

    /// Every error the backend returned, as text.
    pub fn errors(&self) -> Vec<String> {
        self.tally.lock().unwrap().errors.clone()
    }

    pub fn max_in_flight(&self, workspace: WorkspaceId) -> usize {
        *self
            .tally
            .lock()
            .unwrap()
            .max_in_flight
            .get(&workspace)
            .unwrap_or(&0)
    }

    fn enter(&self, workspace: WorkspaceId) {
        let mut tally = self.tally.lock().unwrap();
        let now = {
            let n = tally.in_flight.entry(workspace).or_default();
            *n += 1;
            *n
        };
        let max = tally.max_in_flight.entry(workspace).or_default();
        *max = (*max).max(now);
    }

    fn leave<T>(&self, workspace: WorkspaceId, result: &Result<T, BackendError>) {
        let mut tally = self.tally.lock().unwrap();
        *tally.in_flight.entry(workspace).or_default() -= 1;
        if let Err(err) = result {
            tally.errors.push(err.to_string());
        }
    }
}

#[async_trait]
impl<B: Backend> Backend for Counted<B> {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        self.enter(launch.workspace);
        self.tally
            .lock()
            .unwrap()
            .starts
            .entry(launch.workspace)
            .or_default()
            .push(launch.generation);
        let result = self.inner.start(launch).await;
        self.leave(launch.workspace, &result);
        result
    }

    async fn stop(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        self.enter(workspace);
        let result = self.inner.stop(workspace, through, halt).await;
        self.leave(workspace, &result);
        result
    }

    async fn delete(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        self.enter(workspace);
        let result = self.inner.delete(workspace, through, halt).await;
        self.leave(workspace, &result);
        result
    }

    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        self.inner.state(workspace).await
    }

    fn admits(&self, footprint: &ConfigFootprint) -> Result<(), LimitExceeded> {
        self.inner.admits(footprint)
    }

    async fn inventory(&self) -> Result<Vec<InstanceRef>, BackendError> {
        self.inner.inventory().await
    }
}
