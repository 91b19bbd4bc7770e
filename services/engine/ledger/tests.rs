//! Unit tests of `engine::ledger`: every transition and the contracts it keeps (C1–C3, C5, C7, C8, C11, C17), on a manual clock.
use std::time::Duration;

use super::*;
use crate::domain::Generation;

fn t0() -> Timestamp {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn at(secs: u64) -> Timestamp {
    t0() + chrono::Duration::seconds(secs as i64)
}

fn timing() -> Timing {
    Timing {
        debounce_window: Duration::from_secs(60),
        burst_quiet: Duration::from_secs(5),
        burst_max_wait: Duration::from_secs(30),
        lease_ttl: Duration::from_secs(15),
    }
}

fn req(trigger: Trigger) -> AdmitRequest {
    let treatment = match trigger {
        Trigger::Manual | Trigger::Create => Treatment::Urgent,
        Trigger::ConfigChanged => Treatment::Deferred,
        Trigger::HealthProbe | Trigger::Reconciler => Treatment::DropIfBusy,
    };
    AdmitRequest {
        ask: Ask::Run,
        trigger,
        treatment,
    }
}

fn write() -> AdmitRequest {
    AdmitRequest {
        ask: Ask::Run,
        trigger: Trigger::ConfigChanged,
        treatment: Treatment::Burst,
    }
}

fn ask(ask: Ask) -> AdmitRequest {
    AdmitRequest {
        ask,
        trigger: Trigger::Manual,
        treatment: Treatment::Urgent,
    }
}

const ME: fn() -> ReplicaId = ReplicaId::new;

#[test]
fn one_request_on_an_idle_workspace_is_ready_and_claims_generation_one() {
    let mut ledger = Ledger::new();
    let admitted = ledger
        .admit(req(Trigger::Create), at(0), CycleId::new(), &timing())
        .unwrap();
    let Admitted::Opened { cycle, ready, .. } = admitted else {
        panic!("{admitted:?}")
    };
    assert!(ready);
    let claim = ledger.claim(ME(), at(0), &timing()).unwrap();
    assert_eq!(claim.cycle, cycle);
    assert_eq!(claim.goal, Goal::Provision);
    assert_eq!(claim.generation, Generation(1));
    assert!(ledger.pending.is_none());
}

#[test]
fn any_number_of_requests_during_a_cycle_give_exactly_one_follow_up() {
    let (mut ledger, owner) = (Ledger::new(), ME());
    ledger
        .admit(req(Trigger::Manual), at(0), CycleId::new(), &timing())
        .unwrap();
    let first = ledger.claim(owner, at(0), &timing()).unwrap();

    let mut follow_ups = Vec::new();
    for (i, trigger) in [Trigger::Manual, Trigger::ConfigChanged, Trigger::Manual]
        .into_iter()
        .cycle()
        .take(50)
        .enumerate()
    {
        match ledger
            .admit(req(trigger), at(1), CycleId::new(), &timing())
            .unwrap()
        {
            Admitted::Opened { cycle, ready, .. } => {
                assert_eq!(i, 0, "only the first request opens the follow-up");
                assert!(!ready, "the gate is held");
                follow_ups.push(cycle);
            }
            Admitted::Joined { cycle, ready, .. } => {
                assert!(!ready);
                follow_ups.push(cycle);
            }
            other => panic!("{other:?}"),
        }
    }
    follow_ups.dedup();
    assert_eq!(follow_ups.len(), 1, "all joined one follow-up");
    assert!(ledger.claim(ME(), at(2), &timing()).is_none(), "gate held");

    assert!(ledger.release(first.cycle, owner, first.takeovers));
    let second = ledger.claim(owner, at(3), &timing()).unwrap();
    assert_eq!(second.cycle, follow_ups[0]);
    assert_eq!(second.generation, Generation(2));
    assert!(ledger.release(second.cycle, owner, second.takeovers));
    assert!(
        ledger.claim(owner, at(4), &timing()).is_none(),
        "exactly two"
    );
}

#[test]
fn sequential_manual_requests_each_get_a_cycle() {
    let (mut ledger, owner) = (Ledger::new(), ME());
    for n in 1..=3 {
        let admitted = ledger
            .admit(req(Trigger::Manual), at(n), CycleId::new(), &timing())
            .unwrap();
        assert!(matches!(admitted, Admitted::Opened { ready: true, .. }));
        let claim = ledger.claim(owner, at(n), &timing()).unwrap();
        assert_eq!(claim.generation, Generation(n));
        assert!(ledger.release(claim.cycle, owner, claim.takeovers));
    }
}

#[test]
fn probes_are_dropped_in_flight_and_in_the_window_and_act_after_it() {
    let (mut ledger, owner) = (Ledger::new(), ME());
    ledger
        .admit(req(Trigger::Manual), at(0), CycleId::new(), &timing())
        .unwrap();
    let claim = ledger.claim(owner, at(0), &timing()).unwrap();
    for trigger in [Trigger::HealthProbe, Trigger::Reconciler] {
        assert_eq!(
            ledger
                .admit(req(trigger), at(1), CycleId::new(), &timing())
                .unwrap(),
            Admitted::Dropped {
                reason: DropReason::CycleInFlight,
                until: Some(at(60))
            }
        );
    }
    ledger.release(claim.cycle, owner, claim.takeovers);
    assert_eq!(
        ledger
            .admit(req(Trigger::HealthProbe), at(59), CycleId::new(), &timing())
            .unwrap(),
        Admitted::Dropped {
            reason: DropReason::Debounced,
            until: Some(at(60))
        }
    );
    assert!(
        ledger.pending.is_none(),
        "a drop leaves no trace in the ledger"
    );
    assert!(matches!(
        ledger
            .admit(req(Trigger::HealthProbe), at(60), CycleId::new(), &timing())
            .unwrap(),
        Admitted::Opened { ready: true, .. }
    ));
}

#[test]
fn config_changes_in_the_window_are_deferred_to_its_end_never_dropped() {
    let (mut ledger, owner) = (Ledger::new(), ME());
    ledger
        .admit(req(Trigger::Manual), at(0), CycleId::new(), &timing())
        .unwrap();
    let first = ledger.claim(owner, at(0), &timing()).unwrap();
    ledger.release(first.cycle, owner, first.takeovers);

    let admitted = ledger
        .admit(
            req(Trigger::ConfigChanged),
            at(10),
            CycleId::new(),
            &timing(),
        )
        .unwrap();
    assert!(matches!(admitted, Admitted::Opened { due, ready: false, .. } if due == at(60)));
    assert!(ledger.claim(owner, at(59), &timing()).is_none());
    let deferred = ledger.claim(owner, at(60), &timing()).unwrap();
    assert_eq!(deferred.generation, Generation(2));
}

#[test]
fn a_config_change_outside_the_window_runs_at_once() {
    let mut ledger = Ledger::new();
    ledger.window_until = Some(at(60));
    let admitted = ledger
        .admit(
            req(Trigger::ConfigChanged),
            at(61),
            CycleId::new(),
            &timing(),
        )
        .unwrap();
    assert!(matches!(admitted, Admitted::Opened { ready: true, .. }));
}

#[test]
fn manual_is_never_debounced_and_pulls_a_deferred_follow_up_forward() {
    let mut ledger = Ledger::new();
    ledger.window_until = Some(at(60));
    let deferred = ledger
        .admit(
            req(Trigger::ConfigChanged),
            at(1),
            CycleId::new(),
            &timing(),
        )
        .unwrap();
    assert!(matches!(deferred, Admitted::Opened { ready: false, .. }));
    let manual = ledger
        .admit(req(Trigger::Manual), at(2), CycleId::new(), &timing())
        .unwrap();
    assert!(matches!(manual, Admitted::Joined { ready: true, .. }));
    assert!(ledger.claim(ME(), at(2), &timing()).is_some());
}

#[test]
fn a_burst_of_writes_waits_for_quiet_but_not_past_the_cap() {
    let mut ledger = Ledger::new();
    let mut cycles = Vec::new();
    for s in 0..10 {
        match ledger
            .admit(write(), at(s), CycleId::new(), &timing())
            .unwrap()
        {
            Admitted::Opened { cycle, ready, .. } | Admitted::Joined { cycle, ready, .. } => {
                assert!(!ready, "mid-burst");
                cycles.push(cycle);
            }
            other => panic!("{other:?}"),
        }
    }
    cycles.dedup();
    assert_eq!(cycles.len(), 1);
    assert_eq!(ledger.pending_due(&timing()), Some(at(9 + 5)));
    assert!(ledger.claim(ME(), at(13), &timing()).is_none());
    assert!(ledger.claim(ME(), at(14), &timing()).is_some());

    // A burst that never goes quiet is cut at the cap.
    let mut ledger = Ledger::new();
    for s in (0..100).step_by(2) {
        ledger
            .admit(write(), at(s), CycleId::new(), &timing())
            .unwrap();
    }
    assert_eq!(ledger.pending_due(&timing()), Some(at(30)));
}

#[test]
fn a_stop_that_arrives_while_a_restart_waits_decides_the_follow_up() {
    let (mut ledger, owner) = (Ledger::new(), ME());
    ledger
        .admit(req(Trigger::Manual), at(0), CycleId::new(), &timing())
        .unwrap();
    let first = ledger.claim(owner, at(0), &timing()).unwrap();
    ledger
        .admit(req(Trigger::Manual), at(1), CycleId::new(), &timing())
        .unwrap();
    ledger
        .admit(ask(Ask::Stop), at(2), CycleId::new(), &timing())
        .unwrap();
    ledger.release(first.cycle, owner, first.takeovers);
    let next = ledger.claim(owner, at(3), &timing()).unwrap();
    assert_eq!(next.goal, Goal::Stop);
    assert_eq!(
        next.generation,
        Generation(1),
        "a stop starts no generation"
    );
}

#[test]
fn stopped_workspaces_store_config_and_drop_probes() {
    let mut ledger = Ledger::new();
    ledger.desired = Desired::Stopped;
    assert_eq!(
        ledger
            .admit(
                req(Trigger::ConfigChanged),
                at(0),
                CycleId::new(),
                &timing()
            )
            .unwrap(),
        Admitted::Stored
    );
    assert!(matches!(
        ledger
            .admit(req(Trigger::HealthProbe), at(0), CycleId::new(), &timing())
            .unwrap(),
        Admitted::Dropped {
            reason: DropReason::NotRunning,
            ..
        }
    ));
    // MANUAL starts a stopped workspace.
    assert!(matches!(
        ledger
            .admit(req(Trigger::Manual), at(0), CycleId::new(), &timing())
            .unwrap(),
        Admitted::Opened { ready: true, .. }
    ));
    assert_eq!(ledger.desired, Desired::Running);
}

#[test]
fn deleted_workspaces_refuse_everything_but_a_delete_which_joins_retries_or_is_answered() {
    let (mut ledger, owner) = (Ledger::new(), ME());
    ledger
        .admit(ask(Ask::Delete), at(0), CycleId::new(), &timing())
        .unwrap();
    let delete = ledger.claim(owner, at(0), &timing()).unwrap();
    assert_eq!(delete.goal, Goal::Delete);
    assert_eq!(
        ledger.admit(ask(Ask::Delete), at(1), CycleId::new(), &timing()),
        Ok(Admitted::Joined {
            cycle: delete.cycle,
            due: at(1),
            ready: false
        })
    );
    for request in [
        req(Trigger::Manual),
        ask(Ask::Stop),
        req(Trigger::ConfigChanged),
    ] {
        assert_eq!(
            ledger.admit(request, at(1), CycleId::new(), &timing()),
            Err(Refusal::Deleted)
        );
    }
    // The delete cycle ended without removing the workspace (it failed):
    // asking again opens a new delete cycle (C17).
    ledger.release(delete.cycle, owner, delete.takeovers);
    let retry = CycleId::new();
    assert_eq!(
        ledger.admit(ask(Ask::Delete), at(2), retry, &timing()),
        Ok(Admitted::Opened {
            cycle: retry,
            due: at(2),
            ready: true
        })
    );
    let again = ledger.claim(owner, at(2), &timing()).unwrap();
    assert_eq!((again.cycle, again.goal), (retry, Goal::Delete));
    // Once it is removed, a delete is answered, never refused.
    ledger.release(again.cycle, owner, again.takeovers);
    ledger.removed = true;
    assert_eq!(
        ledger.admit(ask(Ask::Delete), at(3), CycleId::new(), &timing()),
        Ok(Admitted::AlreadyDeleted)
    );
    assert_eq!(
        ledger.admit(req(Trigger::Manual), at(3), CycleId::new(), &timing()),
        Err(Refusal::Deleted)
    );
}

#[test]
fn an_expired_lease_is_taken_over_as_a_new_generation_and_fences_the_old_holder() {
    let (mut ledger, dead, alive) = (Ledger::new(), ME(), ME());
    ledger
        .admit(req(Trigger::Manual), at(0), CycleId::new(), &timing())
        .unwrap();
    let first = ledger.claim(dead, at(0), &timing()).unwrap();
    assert!(
        ledger.claim(alive, at(14), &timing()).is_none(),
        "lease live"
    );
    let taken = ledger.claim(alive, at(15), &timing()).unwrap();
    assert_eq!(taken.cycle, first.cycle);
    assert!(taken.takeover);
    assert_eq!(taken.generation, Generation(2));
    assert!(!ledger.renew(first.cycle, dead, 0, at(16), &timing()));
    assert!(
        !ledger.release(first.cycle, dead, first.takeovers),
        "old holder is fenced"
    );
    assert!(ledger.holds(first.cycle, alive, 1));
}

#[test]
fn a_takeover_by_the_same_replica_still_fences_the_old_runner() {
    let (mut ledger, me) = (Ledger::new(), ME());
    ledger
        .admit(req(Trigger::Manual), at(0), CycleId::new(), &timing())
        .unwrap();
    let stale = ledger.claim(me, at(0), &timing()).unwrap();
    let fresh = ledger.claim(me, at(15), &timing()).unwrap();
    assert_eq!(stale.cycle, fresh.cycle);
    assert!(!ledger.holds(stale.cycle, me, stale.takeovers));
    assert!(!ledger.renew(stale.cycle, me, stale.takeovers, at(16), &timing()));
    assert!(!ledger.release(stale.cycle, me, stale.takeovers));
    assert!(ledger.release(fresh.cycle, me, fresh.takeovers));
}

#[test]
fn renewing_keeps_the_gate() {
    let (mut ledger, owner) = (Ledger::new(), ME());
    ledger
        .admit(req(Trigger::Manual), at(0), CycleId::new(), &timing())
        .unwrap();
    let claim = ledger.claim(owner, at(0), &timing()).unwrap();
    for s in (5..100).step_by(5) {
        assert!(ledger.renew(claim.cycle, owner, 0, at(s), &timing()));
        assert!(ledger.claim(ME(), at(s + 1), &timing()).is_none());
    }
}
