//! What went wrong, in terms a caller can act on: the server's status with
//! its `google.rpc` details read out, or how a followed cycle ended when it
//! did not end online.
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// A failed call or a cycle that did not bring the workspace online.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint, token or TLS files could not be used.
    #[error("client configuration: {0}")]
    Config(String),
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server refused or could not serve the call.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// The cycle ran and failed.
    #[error("generation {generation} failed: {reason}")]
    CycleFailed {
        /// The generation that failed.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// No cycle ran for the request (debounced, or stored for a stopped
    /// workspace).
    #[error("no restart: {reason}")]
    NotRestarted {
        /// Until when such requests are dropped, when known.
        until: Option<prost_types::Timestamp>,
        /// Why.
        reason: String,
    },
    /// The cycle stopped the workspace.
    #[error("the workspace was stopped (generation {generation})")]
    Stopped {
        /// The generation that was stopped.
        generation: u64,
    },
    /// The cycle deleted the workspace.
    #[error("the workspace was deleted")]
    Deleted,
    /// The stream ended without its final event.
    #[error("the event stream ended before the cycle did")]
    StreamEnded,
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::Status(Box::new(status))
    }
}

impl Error {
    /// The server's status, if the server answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC code, if the server answered with one.
    pub fn code(&self) -> Option<Code> {
        self.status().map(tonic::Status::code)
    }

    /// The server's stable `ErrorInfo.reason` (`INVALID_FIELD`,
    /// `WORKSPACE_DELETED`, `DATABASE_UNAVAILABLE`, …).
    pub fn reason(&self) -> Option<String> {
        let details = self.status()?.get_error_details();
        details.error_info().map(|info| info.reason.clone())
    }

    /// The fields a `BadRequest` names, with what is wrong with each.
    pub fn field_violations(&self) -> Vec<(String, String)> {
        self.status()
            .and_then(|s| s.get_details_bad_request())
            .map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|v| (v.field, v.description))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// When the server says a retry may succeed (`RetryInfo`).
    pub fn retry_delay(&self) -> Option<Duration> {
        retry_delay(self.status()?)
    }
}

/// The `RetryInfo` delay of `status`.
pub(crate) fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}
