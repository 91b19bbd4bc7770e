//! What one call to the Docker engine leaves behind: a span in the cycle's
//! trace (C16), and on failure a [`BackendError`] the engine can act on.

use bollard::errors::Error as DockerError;

use crate::BackendError;

/// The HTTP status the engine answered with, if it answered at all.
pub(super) fn status_code(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// An engine failure in the engine's terms: a 4xx is a request the engine
/// refuses (retrying will not help), anything else is the engine being
/// unavailable (a retry may).
pub(super) fn backend_error(what: &str, err: DockerError) -> BackendError {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } if (400..500).contains(&status_code) => {
            BackendError::Rejected(format!("{what}: {message}"))
        }
        DockerError::DockerResponseServerError { message, .. } => {
            BackendError::Unavailable(format!("{what}: docker engine: {message}"))
        }
        other => BackendError::Unavailable(format!("{what}: {other}")),
    }
}

/// A span for one call to the engine, so a cycle's trace shows where
/// the backend's time went.
pub(super) fn docker_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!("docker", otel.name = operation, otel.kind = "client")
}
