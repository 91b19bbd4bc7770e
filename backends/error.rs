//! What can go wrong inside a backend, in terms the engine can act on.
//! Contracts: C17 (a failure says whether it may be retried).

use std::fmt;

use crate::Generation;

/// A backend failure. The message is shown to operators as the reason of a
/// `FAILED` workspace, so it must never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached or answered with a transient error; the
    /// cycle fails and a later request may succeed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the request as given (bad image, bad spec).
    #[error("backend rejected the request: {0}")]
    Rejected(String),
    /// The config can never boot on this backend.
    #[error("backend rejected the request: {0}")]
    Limit(#[from] LimitExceeded),
    /// A start of a generation older than one the backend already has: the
    /// caller's cycle was superseded (C18), and nothing was touched.
    #[error("generation {requested} is superseded by generation {newer}")]
    Superseded {
        /// The generation the caller asked to start.
        requested: Generation,
        /// The newer generation found.
        newer: Generation,
    },
    /// The backend is compiled in but not configured on this server.
    #[error("backend {0} is not enabled on this server")]
    NotEnabled(crate::BackendKind),
    /// Anything else, with context.
    #[error("backend error: {0}")]
    Other(String),
}

impl From<std::io::Error> for BackendError {
    fn from(err: std::io::Error) -> Self {
        Self::Other(err.to_string())
    }
}

/// A spec a backend could never run, naming the request field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecRejected {
    /// The field, e.g. `spec.image`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// A config larger than a backend can ever boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitExceeded {
    /// The limit's name, e.g. `ec2.user_data_bytes`.
    pub limit: &'static str,
    /// The most the backend takes.
    pub max: u64,
    /// What the config needs (an upper bound).
    pub needed: u64,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the workspace's config needs up to {} where {} allows {}",
            self.needed, self.limit, self.max
        )
    }
}

impl std::error::Error for LimitExceeded {}
