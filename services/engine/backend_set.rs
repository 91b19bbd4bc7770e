//! The backends this server runs, by kind.
//! Contracts: C17 (the collector lists every backend's instances).

use std::{collections::HashMap, sync::Arc};

use workspace_backends::{Backend, BackendError};

use crate::domain::BackendKind;

/// Kind → backend, for the kinds enabled on this server.
#[derive(Clone, Default)]
pub struct Backends {
    by_kind: HashMap<BackendKind, Arc<dyn Backend>>,
}

impl Backends {
    /// No backends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enables `backend` for its kind.
    pub fn with(mut self, backend: Arc<dyn Backend>) -> Self {
        self.by_kind.insert(backend.kind(), backend);
        self
    }

    /// The backend for `kind`, or a clear error if it is not enabled here.
    pub fn get(&self, kind: BackendKind) -> Result<Arc<dyn Backend>, BackendError> {
        self.by_kind
            .get(&kind)
            .cloned()
            .ok_or(BackendError::NotEnabled(kind))
    }

    /// True if `kind` is enabled.
    pub fn enabled(&self, kind: BackendKind) -> bool {
        self.by_kind.contains_key(&kind)
    }

    /// Every enabled backend.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.by_kind.values()
    }
}
