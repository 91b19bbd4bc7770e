//! The one mapping from engine errors to gRPC status codes.

use tonic::Status;

use crate::{domain::validate::Invalid, engine::EngineError};

/// The status a caller gets for `err`. Messages never carry secret values
/// (the engine's errors are built without them).
pub fn to_status(err: EngineError) -> Status {
    match err {
        EngineError::NotFound(what) => Status::not_found(format!("{what} not found")),
        EngineError::Invalid(msg) => Status::invalid_argument(msg),
        EngineError::FailedPrecondition(msg) => Status::failed_precondition(msg),
        EngineError::AlreadyExists(msg) => Status::already_exists(msg),
        EngineError::Unauthenticated(msg) => Status::unauthenticated(msg),
        EngineError::PermissionDenied(msg) => Status::permission_denied(msg),
        EngineError::Exhausted(msg) => Status::resource_exhausted(msg),
        EngineError::Unavailable(msg) => Status::unavailable(msg),
        EngineError::Internal(msg) => {
            tracing::error!(%msg, "internal error");
            Status::internal(msg)
        }
    }
}

impl From<EngineError> for Status {
    fn from(err: EngineError) -> Self {
        to_status(err)
    }
}

/// Bad input, as `INVALID_ARGUMENT`.
pub fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

impl From<Invalid> for Status {
    fn from(err: Invalid) -> Self {
        invalid(err.message)
    }
}
