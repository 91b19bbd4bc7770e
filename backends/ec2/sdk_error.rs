//! How an EC2 SDK failure reads as a [`BackendError`] the engine can act on.

use crate::BackendError;

/// An SDK failure in the engine's terms: a request EC2 calls invalid or
/// unsupported is refused (retrying will not help); anything else —
/// throttling past the SDK's retries, a network error — is unavailable.
pub(super) fn sdk_error<E>(what: &str, err: aws_sdk_ec2::error::SdkError<E>) -> BackendError
where
    E: std::error::Error + aws_sdk_ec2::error::ProvideErrorMetadata + 'static,
{
    use aws_sdk_ec2::error::SdkError;
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown");
            let message = service.err().message().unwrap_or_default();
            if code.starts_with("Invalid")
                || code.starts_with("Unsupported")
                || code == "MissingParameter"
            {
                BackendError::Rejected(format!("{what}: {code}: {message}"))
            } else {
                BackendError::Unavailable(format!("{what}: {code}: {message}"))
            }
        }
        _ => BackendError::Unavailable(format!("{what}: {}", aws_smithy_error_text(&err))),
    }
}

/// An error and its chain of causes, on one line (the SDK's top-level
/// message alone rarely says what happened).
pub(super) fn aws_smithy_error_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
