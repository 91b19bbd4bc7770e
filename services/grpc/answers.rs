//! How an admission reads as the answer of a unary mutation: a config
//! change says how it will be delivered (C7, C8), a probe report says
//! whether it was acted on and, if not, why (C9).

use crate::{
    domain::ledger::DropReason,
    engine::intent::{Admission, Verdict, Waiting},
    proto as pb,
};

use super::convert::ts;

/// A config mutation's answer: started a cycle, joined one, deferred to
/// the debounce window, or only stored — so the caller knows whether and
/// when the change reaches a running generation.
pub(super) fn config_change_response(admission: Admission) -> pb::ConfigChangeResponse {
    use pb::config_change_response::Delivery;
    let (delivery, cycle, not_before) = match admission.verdict {
        Verdict::Accepted { cycle, .. } => (Delivery::Started, Some(cycle), None),
        Verdict::Coalesced {
            cycle,
            not_before,
            waiting: Waiting::Coalesced,
        } => (Delivery::Coalesced, Some(cycle), Some(not_before)),
        Verdict::Coalesced {
            cycle,
            not_before,
            waiting: Waiting::Deferred,
        } => (Delivery::Deferred, Some(cycle), Some(not_before)),
        Verdict::Stored | Verdict::Dropped { .. } | Verdict::Idle | Verdict::AlreadyDeleted => {
            (Delivery::Stored, None, None)
        }
    };
    pb::ConfigChangeResponse {
        config_version: admission.config_version.map(|v| v.0).unwrap_or_default(),
        delivery: delivery as i32,
        cycle_id: cycle.map(|c| c.to_string()).unwrap_or_default(),
        not_before: not_before.map(ts),
    }
}

/// A `ReportUnreachable` answer: acted on (a cycle started or joined), or
/// dropped with the reason, so a prober can tell a booting instance from a
/// dead one without restarting it (C9).
pub(super) fn report_unreachable_response(admission: Admission) -> pb::ReportUnreachableResponse {
    use pb::report_unreachable_response::Outcome;
    match admission.verdict {
        Verdict::Accepted { cycle, .. } => pb::ReportUnreachableResponse {
            acted: true,
            outcome: Outcome::Acted as i32,
            reason: "a restart cycle started".into(),
            cycle_id: cycle.to_string(),
            until: None,
        },
        Verdict::Coalesced {
            cycle, not_before, ..
        } => pb::ReportUnreachableResponse {
            acted: true,
            outcome: Outcome::Acted as i32,
            reason: "joined the restart cycle that is about to run".into(),
            cycle_id: cycle.to_string(),
            until: Some(ts(not_before)),
        },
        Verdict::Dropped { reason, until } => pb::ReportUnreachableResponse {
            acted: false,
            outcome: match reason {
                DropReason::CycleInFlight => Outcome::DroppedCycleInFlight,
                DropReason::Debounced => Outcome::DroppedDebounced,
                DropReason::NotRunning => Outcome::DroppedNotRunning,
                DropReason::InstanceBooting => Outcome::DroppedInstanceBooting,
            } as i32,
            reason: reason.describe().into(),
            cycle_id: String::new(),
            until: until.map(ts),
        },
        Verdict::Stored | Verdict::Idle | Verdict::AlreadyDeleted => {
            pb::ReportUnreachableResponse {
                acted: false,
                outcome: Outcome::DroppedNotRunning as i32,
                reason: DropReason::NotRunning.describe().into(),
                cycle_id: String::new(),
                until: None,
            }
        }
    }
}
