//! What can go wrong inside a backend, in terms the engine can act on.

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
