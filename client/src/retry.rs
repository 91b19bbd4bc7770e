//! When a failed call is tried again. Only two answers invite a retry —
//! `UNAVAILABLE` (the database or this replica is away for a moment) and a
//! `RESOURCE_EXHAUSTED` that carries a `RetryInfo` (too many calls in
//! flight; a limit such as "500 secrets" has none, and waiting would not
//! help) — and the client applies the policy only to calls that are safe
//! to repeat: reads, and mutations that carry a `request_id`.
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

use std::time::Duration;

use tonic::Code;

use crate::error::retry_delay;

/// How often and how patiently to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: never retry).
    pub max_attempts: u32,
    /// The wait before the first retry when the server names none; it
    /// doubles per attempt.
    pub initial_backoff: Duration,
    /// The longest wait between attempts, whatever the server says.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Six attempts over about six seconds: enough to ride out a Postgres
    /// restart or a replica's shutdown.
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(3),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// How long to wait before attempt `attempt + 1` after `status` failed
    /// attempt `attempt` (1-based), or `None` to give up.
    pub fn delay(&self, attempt: u32, status: &tonic::Status) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let told = retry_delay(status);
        let backoff = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt - 1));
        let wait = match status.code() {
            Code::Unavailable => told.unwrap_or(backoff),
            Code::ResourceExhausted => told?,
            _ => return None,
        };
        Some(wait.min(self.max_backoff))
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;

    #[test]
    fn unavailable_is_retried_with_the_servers_delay_or_backoff() {
        let policy = RetryPolicy::default();
        let told = tonic::Status::with_error_details(
            Code::Unavailable,
            "db",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(700))),
        );
        assert_eq!(policy.delay(1, &told), Some(Duration::from_millis(700)));
        let bare = tonic::Status::unavailable("x");
        assert_eq!(policy.delay(1, &bare), Some(Duration::from_millis(100)));
        assert_eq!(policy.delay(3, &bare), Some(Duration::from_millis(400)));
        assert_eq!(policy.delay(6, &bare), None, "attempts are bounded");
    }

    #[test]
    fn exhaustion_is_retried_only_when_the_server_says_when() {
        let policy = RetryPolicy::default();
        let limit = tonic::Status::resource_exhausted("500 secrets");
        assert_eq!(policy.delay(1, &limit), None);
        let busy = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "busy",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(200))),
        );
        assert_eq!(policy.delay(1, &busy), Some(Duration::from_millis(200)));
        assert_eq!(policy.delay(1, &tonic::Status::invalid_argument("x")), None);
    }
}
