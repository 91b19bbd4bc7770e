//! Errors in terms a caller can act on. The gRPC layer maps each to
//! one status code in exactly one place (`grpc::status`).
//! Contracts: C20 (a retryable error says so), and bad input changes nothing.

/// Why the engine refused or could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No such workspace (or cycle).
    #[error("{0} not found")]
    NotFound(String),
    /// The request is malformed; nothing was changed.
    #[error("{message}")]
    Invalid {
        /// The request field that broke the rule ("path", "spec.env"…), so
        /// the caller's `BadRequest` names it.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request cannot apply in the current state (e.g. a deleted
    /// workspace); nothing was changed.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A name or resource already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller's credentials are missing or not valid (an agent token of
    /// an older generation, say).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A per-workspace limit was reached.
    #[error("{0}")]
    Exhausted(String),
    /// Postgres (or another dependency) cannot be reached; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected state; the message is safe to show.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::domain::validate::Invalid> for Error {
    fn from(err: crate::domain::validate::Invalid) -> Self {
        Self::Invalid {
            field: err.field,
            message: err.message,
        }
    }
}
