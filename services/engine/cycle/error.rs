//! Why a cycle failed, phrased for operators (never with secret values):
//! the reason a FAILED cycle, its stream and the workspace's status carry.
//! Contracts: C6, C20.

use std::time::Duration;

use workspace_backends::BackendError;

use crate::domain::{Error, Goal};

/// Why a cycle failed, phrased for operators (never with secret values).
#[derive(Debug, thiserror::Error)]
pub(super) enum CycleError {
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Engine(#[from] Error),
    #[error("the cycle lost the gate to a newer cycle")]
    Fenced,
    #[error("the cycle could not renew its lease in time; it stopped acting")]
    LeaseLapsed,
    #[error("the instance ended before its agent registered: {0}")]
    InstanceDown(String),
    /// A deadline passed, phrased for what was under way ([`CycleError::deadline`]).
    #[error("{0}")]
    Deadline(String),
    #[error("a delete of the workspace was requested: no agent of it can register any more")]
    DeleteRequested,
    #[error("the cycle panicked")]
    Panicked,
    #[error("the cycle was taken over {0} times (its runners keep dying); it is given up")]
    TooManyTakeovers(u32),
}

impl CycleError {
    /// The cycle's deadline of `limit` passed while it worked for `goal`:
    /// an operator reading a delete or a stop cut short by a backend that
    /// does not answer is told that, not about provisioning.
    pub(super) fn deadline(goal: Goal, limit: Duration) -> Self {
        let limit = humantime::format_duration(limit);
        Self::Deadline(match goal {
            Goal::Provision => format!("the provision deadline of {limit} passed"),
            Goal::Stop => format!("the stop did not finish within the cycle's deadline of {limit}"),
            Goal::Delete => {
                format!("the delete did not finish within the cycle's deadline of {limit}")
            }
        })
    }

    /// The runner may have lost its lease: it must not touch the backend
    /// (the next owner, or the collector, accounts for the instance).
    pub(super) fn lost_lease(&self) -> bool {
        matches!(self, Self::Fenced | Self::LeaseLapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_names_what_was_under_way() {
        let limit = Duration::from_secs(300);
        let said = |goal| CycleError::deadline(goal, limit).to_string();
        assert_eq!(said(Goal::Provision), "the provision deadline of 5m passed");
        assert_eq!(
            said(Goal::Delete),
            "the delete did not finish within the cycle's deadline of 5m"
        );
        assert_eq!(
            said(Goal::Stop),
            "the stop did not finish within the cycle's deadline of 5m"
        );
    }
}
