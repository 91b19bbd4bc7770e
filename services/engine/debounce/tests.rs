//! Unit tests of `engine::debounce`: each contract it enforces, driven with fakes and a manual clock.
use std::sync::Mutex;

use tokio_test::assert_ready_ok;
use tower::ServiceExt;

use super::*;
use crate::{
    domain::clock::ManualClock,
    engine::{
        intent::Verdict,
        test_support::{MockHandle, MockInner, TestRequest, mock_inner},
    },
};

/// Drops every droppable request while `busy`, and remembers what it saw.
#[derive(Default)]
struct Busy {
    busy: Mutex<bool>,
    seen: Mutex<Vec<(u32, Trigger)>>,
}

#[async_trait]
impl DropCheck<u32> for Busy {
    async fn check(
        &self,
        key: &u32,
        trigger: Trigger,
        _now: Timestamp,
    ) -> Result<Option<EarlyDrop>, Error> {
        self.seen.lock().unwrap().push((*key, trigger));
        Ok(self.busy.lock().unwrap().then_some(EarlyDrop {
            reason: DropReason::CycleInFlight,
            until: None,
        }))
    }
}

fn stack(busy: bool) -> (Debounce<MockInner, Busy>, MockHandle, Arc<Busy>) {
    let (inner, handle) = mock_inner();
    let check = Arc::new(Busy::default());
    *check.busy.lock().unwrap() = busy;
    let clock: SharedClock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let svc = DebounceLayer::new(check.clone(), clock).layer(inner);
    (svc, handle, check)
}

#[tokio::test]
async fn each_trigger_gets_its_treatment() {
    let cases = [
        (Trigger::Manual, false, Treatment::Urgent),
        (Trigger::Create, false, Treatment::Urgent),
        (Trigger::ConfigChanged, false, Treatment::Deferred),
        (Trigger::ConfigChanged, true, Treatment::Burst),
        (Trigger::HealthProbe, false, Treatment::DropIfBusy),
        (Trigger::Reconciler, false, Treatment::DropIfBusy),
    ];
    for (trigger, file, want) in cases {
        assert_eq!(treatment(trigger, file), want, "{trigger}");
    }
}

#[tokio::test]
async fn urgent_and_deferred_requests_pass_without_a_check() {
    let (svc, mut handle, check) = stack(true);
    for trigger in [Trigger::Manual, Trigger::ConfigChanged] {
        let call = tokio::spawn(svc.clone().oneshot(TestRequest::new(1, trigger)));
        let (seen, reply) = handle.next_request().await.unwrap();
        assert!(matches!(seen.stage, Stage::Treated(t) if t != Treatment::DropIfBusy));
        reply.send_response(Admission::of(Verdict::Idle));
        call.await.unwrap().unwrap();
    }
    assert!(check.seen.lock().unwrap().is_empty(), "never consulted");
}

#[tokio::test]
async fn a_busy_workspace_drops_probes_which_admission_only_records() {
    let (svc, mut handle, check) = stack(true);
    for trigger in [Trigger::HealthProbe, Trigger::Reconciler] {
        let call = tokio::spawn(svc.clone().oneshot(TestRequest::new(9, trigger)));
        let (seen, reply) = handle.next_request().await.unwrap();
        assert_eq!(
            seen.stage,
            Stage::Dropped {
                reason: DropReason::CycleInFlight,
                until: None,
            },
            "admission gets it already dropped, to count with its group"
        );
        reply.send_response(Admission::of(Verdict::Dropped {
            reason: DropReason::CycleInFlight,
            until: None,
        }));
        let admission = call.await.unwrap().expect("a drop is an answer");
        assert!(matches!(admission.verdict, Verdict::Dropped { .. }));
    }
    assert_eq!(check.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_idle_workspace_lets_a_probe_through_marked_droppable() {
    let (mut svc, mut handle, _check) = stack(false);
    handle.allow(1);
    let mut ready = tokio_test::task::spawn(svc.ready());
    assert_ready_ok!(ready.poll());
    drop(ready);
    let call = tokio::spawn(svc.call(TestRequest::new(3, Trigger::HealthProbe)));
    let (seen, reply) = handle.next_request().await.unwrap();
    assert_eq!(seen.stage, Stage::Treated(Treatment::DropIfBusy));
    reply.send_response(Admission::of(Verdict::Idle));
    assert_eq!(call.await.unwrap().unwrap().verdict, Verdict::Idle);
}

#[tokio::test]
async fn requests_past_the_debounce_are_not_treated_again() {
    let (svc, mut handle, check) = stack(true);
    let mut resumed = TestRequest::new(5, Trigger::HealthProbe);
    resumed.stage = Stage::Resume;
    let call = tokio::spawn(svc.oneshot(resumed));
    let (seen, reply) = handle.next_request().await.unwrap();
    assert_eq!(seen.stage, Stage::Resume);
    reply.send_response(Admission::of(Verdict::Idle));
    call.await.unwrap().unwrap();
    assert!(check.seen.lock().unwrap().is_empty());
}
