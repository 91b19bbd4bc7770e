//! The one mapping from errors to gRPC statuses, with `google.rpc` details
//! a client can act on without parsing messages: `BadRequest` names the
//! field of every `INVALID_ARGUMENT`, `PreconditionFailure` says which state
//! refused a `FAILED_PRECONDITION`, `RetryInfo` says when to try again where
//! a retry can help, and every one carries an `ErrorInfo` whose `reason` is
//! a stable identifier (the [`reason`] constants) that clients switch on.
//! Contracts: C20 (RetryInfo on what a retry can fix).

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{Error, validate::Invalid};

/// The `ErrorInfo.domain` of every error this service produces.
pub const DOMAIN: &str = "workspace-lifecycle";

/// Stable `ErrorInfo.reason` values. They are part of the API: a client may
/// match on them, so they are only ever added, never renamed.
pub mod reason {
    /// A request field broke an input rule (`BadRequest` names it).
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    /// The request body could not be decoded as its message type.
    pub const UNDECODABLE_MESSAGE: &str = "UNDECODABLE_MESSAGE";
    /// A `request_id` was reused for a different request.
    pub const REQUEST_ID_REUSED: &str = "REQUEST_ID_REUSED";
    /// The workspace (or cycle, secret…) does not exist.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// A workspace with that name already exists.
    pub const ALREADY_EXISTS: &str = "ALREADY_EXISTS";
    /// The workspace is deleted; nothing can change it any more.
    pub const WORKSPACE_DELETED: &str = "WORKSPACE_DELETED";
    /// The requested backend is not enabled on this server.
    pub const BACKEND_NOT_ENABLED: &str = "BACKEND_NOT_ENABLED";
    /// The workspace's state refuses the request (other than deleted).
    pub const STATE_CONFLICT: &str = "STATE_CONFLICT";
    /// A per-workspace limit (secrets, files, bytes) is reached; retrying
    /// does not help until something is removed.
    pub const LIMIT_REACHED: &str = "LIMIT_REACHED";
    /// Too many calls in flight for this caller or pool; retry shortly.
    pub const TOO_MANY_CALLS: &str = "TOO_MANY_CALLS";
    /// Postgres cannot be reached or is busy; retry shortly.
    pub const DATABASE_UNAVAILABLE: &str = "DATABASE_UNAVAILABLE";
    /// This replica is shutting down; retry (on another replica).
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    /// The caller's credentials are missing or not valid.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The caller's role may not do this.
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    /// A bug or an unexpected state.
    pub const INTERNAL: &str = "INTERNAL";
}

/// How long a client should wait before retrying after the database was
/// unavailable: long enough for a reconnect, short enough to ride out a
/// Postgres restart without the caller noticing much.
pub const DATABASE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a client should wait before retrying a call refused because too
/// many were in flight: calls usually finish in milliseconds.
pub const BUSY_RETRY_DELAY: Duration = Duration::from_millis(200);
/// How long a client should wait before retrying on a replica that is
/// shutting down (its load balancer moves it elsewhere meanwhile).
pub const SHUTDOWN_RETRY_DELAY: Duration = Duration::from_millis(100);

fn with_info(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: HashMap<String, String>,
    mut details: ErrorDetails,
) -> Status {
    details.set_error_info(reason, DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// An unvalidated input quoted in an error, cut to its first 64 characters:
/// a caller's megabyte of garbage is not echoed back to it (twice: in the
/// message and in `BadRequest`), nor into logs.
pub fn quoted(raw: &str) -> String {
    const SHOWN: usize = 64;
    match raw.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &raw[..cut], raw.len()),
        None => format!("{raw:?}"),
    }
}

/// `INVALID_ARGUMENT` naming the offending `field` in a `BadRequest`.
pub fn invalid_field(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    with_info(
        Code::InvalidArgument,
        message.clone(),
        reason::INVALID_FIELD,
        HashMap::from([("field".to_owned(), field.to_owned())]),
        ErrorDetails::with_bad_request_violation(field, message),
    )
}

/// `INVALID_ARGUMENT` for a body that is not its message type; `field` is
/// the field path decoding stopped at (`request` when it is the whole body).
pub fn undecodable(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    with_info(
        Code::InvalidArgument,
        message.clone(),
        reason::UNDECODABLE_MESSAGE,
        HashMap::new(),
        ErrorDetails::with_bad_request_violation(field, message),
    )
}

/// `INVALID_ARGUMENT`: `request_id` names an earlier, different request.
pub fn request_id_reused(method: &str) -> Status {
    let message = "request_id was already used for a different request".to_owned();
    with_info(
        Code::InvalidArgument,
        format!("{message} (this call: {method})"),
        reason::REQUEST_ID_REUSED,
        HashMap::new(),
        ErrorDetails::with_bad_request_violation("request_id", message),
    )
}

/// `FAILED_PRECONDITION` with a `PreconditionFailure` of `kind` about
/// `subject` ("workspace", "backend").
pub fn failed_precondition(
    reason: &str,
    kind: &str,
    subject: &str,
    message: impl Into<String>,
) -> Status {
    let message = message.into();
    with_info(
        Code::FailedPrecondition,
        message.clone(),
        reason,
        HashMap::new(),
        ErrorDetails::with_precondition_failure_violation(kind, subject, message),
    )
}

/// `RESOURCE_EXHAUSTED` because too many calls are in flight: a retry
/// after [`BUSY_RETRY_DELAY`] helps.
pub fn too_many_calls(message: impl Into<String>) -> Status {
    with_info(
        Code::ResourceExhausted,
        message,
        reason::TOO_MANY_CALLS,
        HashMap::new(),
        ErrorDetails::with_retry_info(Some(BUSY_RETRY_DELAY)),
    )
}

/// `UNAVAILABLE` with a `RetryInfo` of `delay`.
pub fn unavailable(reason: &str, message: impl Into<String>, delay: Duration) -> Status {
    with_info(
        Code::Unavailable,
        message,
        reason,
        HashMap::new(),
        ErrorDetails::with_retry_info(Some(delay)),
    )
}

/// `UNAVAILABLE` because this replica is shutting down.
pub fn shutting_down(message: impl Into<String>) -> Status {
    unavailable(reason::SHUTTING_DOWN, message, SHUTDOWN_RETRY_DELAY)
}

fn plain(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_info(code, message, reason, HashMap::new(), ErrorDetails::new())
}

/// `UNAUTHENTICATED` with its `ErrorInfo`.
pub fn unauthenticated(message: impl Into<String>) -> Status {
    plain(Code::Unauthenticated, reason::UNAUTHENTICATED, message)
}

/// `PERMISSION_DENIED` with its `ErrorInfo`.
pub fn permission_denied(message: impl Into<String>) -> Status {
    plain(Code::PermissionDenied, reason::PERMISSION_DENIED, message)
}

/// The status a caller gets for `err`. Messages never carry secret values
/// (the engine's errors are built without them).
pub fn to_status(err: Error) -> Status {
    match err {
        Error::NotFound(what) => plain(
            Code::NotFound,
            reason::NOT_FOUND,
            format!("{what} not found"),
        ),
        Error::Invalid { field, message } => invalid_field(&field, message),
        Error::FailedPrecondition(msg) => precondition(msg),
        Error::AlreadyExists(msg) => plain(Code::AlreadyExists, reason::ALREADY_EXISTS, msg),
        Error::Unauthenticated(msg) => unauthenticated(msg),
        Error::PermissionDenied(msg) => permission_denied(msg),
        // Per-workspace counts and sizes: waiting does not free anything,
        // so no RetryInfo.
        Error::Exhausted(msg) => plain(Code::ResourceExhausted, reason::LIMIT_REACHED, msg),
        Error::Unavailable(msg) => unavailable(
            reason::DATABASE_UNAVAILABLE,
            format!("unavailable: {msg}"),
            DATABASE_RETRY_DELAY,
        ),
        Error::Internal(msg) => {
            tracing::error!(%msg, "internal error");
            plain(Code::Internal, reason::INTERNAL, msg)
        }
    }
}

/// The engine says "deleted" in one way only; every other refusal is a
/// state conflict about the workspace.
fn precondition(msg: String) -> Status {
    if msg.contains("deleted") {
        failed_precondition(reason::WORKSPACE_DELETED, "STATE", "workspace", msg)
    } else {
        failed_precondition(reason::STATE_CONFLICT, "STATE", "workspace", msg)
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        to_status(err)
    }
}

impl From<Invalid> for Status {
    fn from(err: Invalid) -> Self {
        invalid_field(&err.field, err.message)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_input_is_quoted_cut_and_a_short_one_whole() {
        assert_eq!(super::quoted("not-a-uuid"), "\"not-a-uuid\"");
        let long = "é".repeat(100_000);
        let shown = super::quoted(&long);
        assert!(shown.len() < 200, "{shown}");
        assert!(shown.ends_with("… (200000 bytes)"), "{shown}");
    }

    use super::*;

    #[test]
    fn invalid_input_names_its_field() {
        let status: Status = Invalid {
            field: "spec.env".into(),
            message: "bad".into(),
        }
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "spec.env");
        assert_eq!(details.error_info().unwrap().reason, reason::INVALID_FIELD);
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let status = to_status(Error::Unavailable("database connection lost".into()));
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(DATABASE_RETRY_DELAY)
        );
        assert_eq!(
            details.error_info().unwrap().reason,
            reason::DATABASE_UNAVAILABLE
        );
    }

    #[test]
    fn a_deleted_workspace_is_a_precondition_with_a_stable_reason() {
        let status = to_status(Error::FailedPrecondition("workspace is deleted".into()));
        let details = status.get_error_details();
        let violation = &details.precondition_failure().unwrap().violations[0];
        assert_eq!(violation.subject, "workspace");
        assert_eq!(
            details.error_info().unwrap().reason,
            reason::WORKSPACE_DELETED
        );
    }

    #[test]
    fn limits_carry_no_retry_info_but_busy_pools_do() {
        let limit = to_status(Error::Exhausted("too many secrets".into()));
        assert!(limit.get_error_details().retry_info().is_none());
        let busy = too_many_calls("busy");
        assert_eq!(
            busy.get_error_details().retry_info().unwrap().retry_delay,
            Some(BUSY_RETRY_DELAY)
        );
    }
}
