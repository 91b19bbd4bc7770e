//! Exit codes that say what happened, so a script can branch on them
//! without parsing output (listed in `wl --help`).
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

use std::process::ExitCode;

use tonic::Code;
use workspace_lifecycle_client::Error;

/// How `wl` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Done.
    Ok = 0,
    /// Anything not below.
    Other = 1,
    /// The cycle ran and failed.
    CycleFailed = 3,
    /// No cycle ran (debounced, or stored for a stopped workspace).
    NotRestarted = 4,
    /// No such workspace.
    NotFound = 5,
    /// The server refused the request as asked (bad input, wrong state,
    /// already exists, a limit).
    Refused = 6,
    /// Not authenticated or not allowed.
    NotAuthorised = 7,
    /// The server or its database could not be reached.
    Unavailable = 8,
}

impl Exit {
    /// The exit for an error.
    pub(crate) fn of(err: &Error) -> Self {
        match err {
            Error::CycleFailed { .. } => Self::CycleFailed,
            Error::NotRestarted { .. } => Self::NotRestarted,
            Error::Connect(_) => Self::Unavailable,
            Error::Status(status) => match status.code() {
                Code::NotFound => Self::NotFound,
                Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::OutOfRange
                | Code::ResourceExhausted => Self::Refused,
                Code::Unauthenticated | Code::PermissionDenied => Self::NotAuthorised,
                Code::Unavailable | Code::DeadlineExceeded => Self::Unavailable,
                _ => Self::Other,
            },
            Error::Config(_) | Error::Stopped { .. } | Error::Deleted | Error::StreamEnded => {
                Self::Other
            }
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}
