//! How a container's state reads as an [`InstancePhase`]. One rule needs
//! care: a container that was created but never started is *booting* only
//! for a bounded boot window after its creation. Counted as booting forever,
//! a container wedged in `created` made every health probe a no-op (C9
//! turned against itself); past the window it is a failure with a reason.

use std::time::Duration;

use crate::InstancePhase;

/// What the engine says of one container.
#[derive(Clone, Debug, Default)]
pub(super) struct Seen<'a> {
    /// `created`, `running`, `exited`, … (empty when the engine gave none).
    pub(super) status: &'a str,
    /// The exit code, when it exited.
    pub(super) exit_code: Option<i64>,
    /// Killed for exceeding its memory limit.
    pub(super) oom_killed: bool,
    /// The engine's error text, if any.
    pub(super) error: Option<&'a str>,
    /// Time since the container was created (`None`: unknown).
    pub(super) age: Option<Duration>,
}

/// The phase of a container seen as `seen`, given the boot window.
pub(super) fn phase(seen: &Seen<'_>, boot_window: Duration) -> InstancePhase {
    match seen.status {
        "running" | "paused" => InstancePhase::Running,
        "removing" => InstancePhase::Stopping,
        "exited" => match seen.exit_code {
            Some(0) => InstancePhase::Stopped,
            code => InstancePhase::Failed(format!(
                "container exited with code {}{}",
                code.map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
                if seen.oom_killed {
                    " (out of memory)"
                } else {
                    ""
                }
            )),
        },
        "dead" => InstancePhase::Failed(format!(
            "container is dead: {}",
            seen.error.unwrap_or_default()
        )),
        // Created (or restarting, or not yet described): booting, but only
        // for the boot window. An unknown age is taken as fresh.
        status => match seen.age {
            Some(age) if age > boot_window => InstancePhase::Failed(format!(
                "stuck in {} for {} s (boot window {} s)",
                if status.is_empty() {
                    "an unknown state"
                } else {
                    status
                },
                age.as_secs(),
                boot_window.as_secs()
            )),
            _ => InstancePhase::Pending,
        },
    }
}

/// The exit code in a listing's status text (`Exited (3) 5 seconds ago`).
pub(super) fn exit_code_of(status_text: &str) -> Option<i64> {
    let rest = status_text.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(120);

    fn created(age: u64) -> InstancePhase {
        phase(
            &Seen {
                status: "created",
                age: Some(Duration::from_secs(age)),
                ..Seen::default()
            },
            WINDOW,
        )
    }

    #[test]
    fn created_is_booting_only_within_the_boot_window() {
        assert_eq!(created(0), InstancePhase::Pending);
        assert_eq!(created(120), InstancePhase::Pending);
        let InstancePhase::Failed(reason) = created(121) else {
            panic!("still booting after the window")
        };
        assert!(reason.starts_with("stuck in created"), "{reason}");
    }

    #[test]
    fn exits_read_as_stopped_or_failed_with_the_reason() {
        let exited = |code, oom| {
            phase(
                &Seen {
                    status: "exited",
                    exit_code: Some(code),
                    oom_killed: oom,
                    ..Seen::default()
                },
                WINDOW,
            )
        };
        assert_eq!(exited(0, false), InstancePhase::Stopped);
        assert_eq!(
            exited(137, true),
            InstancePhase::Failed("container exited with code 137 (out of memory)".into())
        );
        assert_eq!(exit_code_of("Exited (3) 5 seconds ago"), Some(3));
        assert_eq!(exit_code_of("Up 2 minutes"), None);
    }
}
