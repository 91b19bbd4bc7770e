//! Unit tests of `engine::gate`: each contract it enforces, driven with fakes and a manual clock.
use std::{collections::HashMap, sync::Mutex, time::Duration};

use tower::{ServiceExt, service_fn};

use super::*;
use crate::{
    domain::{Generation, Goal, Trigger, clock::ManualClock},
    engine::test_support::TestRequest,
};

/// An in-memory gate: one holder per key; the guard frees it on drop.
#[derive(Default)]
struct MemoryGate {
    held: Arc<Mutex<HashMap<u32, CycleId>>>,
    next: Mutex<HashMap<u32, CycleId>>,
}

struct MemoryGuard {
    key: u32,
    cycle: CycleId,
    held: Arc<Mutex<HashMap<u32, CycleId>>>,
}

impl GateGuard for MemoryGuard {
    fn cycle(&self) -> CycleId {
        self.cycle
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        self.held.lock().unwrap().remove(&self.key);
    }
}

#[async_trait]
impl GateKeeper<u32> for MemoryGate {
    type Guard = MemoryGuard;

    async fn claim(&self, key: &u32, _now: Timestamp) -> Result<Claim<MemoryGuard>, Error> {
        let mut held = self.held.lock().unwrap();
        if let Some(&cycle) = held.get(key) {
            return Ok(Claim::Lost(Some(Holder {
                cycle,
                generation: Generation(7),
                goal: Goal::Provision,
            })));
        }
        let Some(cycle) = self.next.lock().unwrap().remove(key) else {
            return Ok(Claim::Lost(None));
        };
        held.insert(*key, cycle);
        Ok(Claim::Won(MemoryGuard {
            key: *key,
            cycle,
            held: self.held.clone(),
        }))
    }
}

fn admitted(key: u32, cycle: CycleId) -> TestRequest {
    TestRequest::new(key, Trigger::Manual).at(Stage::Admitted {
        cycle,
        opened: true,
    })
}

/// A cycle service that holds the guard until told to finish.
fn holder(
    release: Arc<tokio::sync::Notify>,
) -> impl Service<
    Gated<TestRequest, MemoryGuard>,
    Response = Admission,
    Error = Error,
    Future = impl Send,
> + Clone {
    service_fn(move |gated: Gated<TestRequest, MemoryGuard>| {
        let release = release.clone();
        async move {
            let cycle = gated.guard.cycle();
            tokio::spawn(async move {
                release.notified().await;
                drop(gated);
            });
            Ok::<_, Error>(Admission::of(Verdict::Accepted {
                cycle,
                generation: Generation(1),
                goal: Goal::Provision,
            }))
        }
    })
}

fn clock() -> SharedClock {
    Arc::new(ManualClock::new(chrono::Utc::now()))
}

#[tokio::test]
async fn only_one_request_holds_the_gate_and_the_rest_are_coalesced() {
    let keeper = Arc::new(MemoryGate::default());
    let release = Arc::new(tokio::sync::Notify::new());
    let svc = GateLayer::new(keeper.clone(), clock()).layer(holder(release.clone()));
    let first = CycleId::new();
    keeper.next.lock().unwrap().insert(1, first);

    let a = svc.clone().oneshot(admitted(1, first)).await.unwrap();
    assert!(matches!(a.verdict, Verdict::Accepted { cycle, .. } if cycle == first));

    let second = CycleId::new();
    keeper.next.lock().unwrap().insert(1, second);
    let b = svc.clone().oneshot(admitted(1, second)).await.unwrap();
    assert!(matches!(b.verdict, Verdict::Coalesced { cycle, .. } if cycle == second));

    release.notify_one();
    tokio::time::timeout(Duration::from_secs(5), async {
        while keeper.held.lock().unwrap().contains_key(&1) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let c = svc.oneshot(admitted(1, second)).await.unwrap();
    assert!(matches!(c.verdict, Verdict::Accepted { cycle, .. } if cycle == second));
}

#[tokio::test]
async fn a_request_whose_cycle_the_sweep_claimed_first_is_still_the_one_that_started_it() {
    let keeper = Arc::new(MemoryGate::default());
    let svc = GateLayer::new(keeper.clone(), clock()).layer(holder(Arc::default()));
    // The scheduler's sweep took the gate for the cycle a request had just
    // opened, before the request's own claim.
    let opened = CycleId::new();
    keeper.held.lock().unwrap().insert(1, opened);

    let answer = svc.clone().oneshot(admitted(1, opened)).await.unwrap();
    assert_eq!(
        answer.verdict,
        Verdict::Accepted {
            cycle: opened,
            generation: Generation(7),
            goal: Goal::Provision,
        }
    );
    // So is one admitted to start a cycle it joined (a MANUAL restart that
    // makes a deferred cycle due, C7): admission answers every other joiner
    // `coalesced` itself.
    let joined = TestRequest::new(1, Trigger::Manual).at(Stage::Admitted {
        cycle: opened,
        opened: false,
    });
    let answer = svc.clone().oneshot(joined).await.unwrap();
    assert!(matches!(answer.verdict, Verdict::Accepted { cycle, .. } if cycle == opened));
    // Nor did one whose own cycle waits behind the running one.
    let behind = CycleId::new();
    let answer = svc.oneshot(admitted(1, behind)).await.unwrap();
    assert!(matches!(answer.verdict, Verdict::Coalesced { cycle, .. } if cycle == behind));
}

#[tokio::test]
async fn a_held_gate_on_one_key_does_not_block_another() {
    let keeper = Arc::new(MemoryGate::default());
    let release = Arc::new(tokio::sync::Notify::new());
    let svc = GateLayer::new(keeper.clone(), clock()).layer(holder(release));
    let (a, b) = (CycleId::new(), CycleId::new());
    keeper.next.lock().unwrap().extend([(1, a), (2, b)]);
    let first = svc.clone().oneshot(admitted(1, a)).await.unwrap();
    let second = svc.oneshot(admitted(2, b)).await.unwrap();
    assert!(matches!(first.verdict, Verdict::Accepted { .. }));
    assert!(matches!(second.verdict, Verdict::Accepted { .. }));
}

#[tokio::test]
async fn a_resumption_with_nothing_due_is_idle() {
    let keeper = Arc::new(MemoryGate::default());
    let svc = GateLayer::new(keeper, clock()).layer(holder(Arc::default()));
    let answer = svc
        .oneshot(TestRequest::new(1, Trigger::Reconciler).at(Stage::Resume))
        .await
        .unwrap();
    assert_eq!(answer.verdict, Verdict::Idle);
}

#[tokio::test]
async fn an_unadmitted_request_never_reaches_the_cycle_service() {
    let keeper = Arc::new(MemoryGate::default());
    let svc = GateLayer::new(keeper, clock()).layer(holder(Arc::default()));
    let err = svc
        .oneshot(TestRequest::new(1, Trigger::Manual))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Internal(_)));
}

/// A gate whose claims wait until let through, then win.
struct SlowGate {
    open: tokio::sync::watch::Sender<bool>,
    cycle: CycleId,
}

#[async_trait]
impl GateKeeper<u32> for SlowGate {
    type Guard = MemoryGuard;

    async fn claim(&self, key: &u32, _now: Timestamp) -> Result<Claim<MemoryGuard>, Error> {
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        Ok(Claim::Won(MemoryGuard {
            key: *key,
            cycle: self.cycle,
            held: Arc::default(),
        }))
    }
}

// The claim runs on the caller's task (no spawn per call), yet a caller
// that goes away mid-claim neither rolls the claim back nor leaves its
// admitted cycle unstarted until the scheduler's sweep (C20).
#[tokio::test]
async fn a_caller_gone_mid_claim_still_starts_its_cycle() {
    let cycle = CycleId::new();
    let keeper = Arc::new(SlowGate {
        open: tokio::sync::watch::channel(false).0,
        cycle,
    });
    let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
    let cycles = service_fn(move |gated: Gated<TestRequest, MemoryGuard>| {
        let _ = started.send(gated.guard.cycle());
        async move { Ok::<_, Error>(Admission::of(Verdict::Idle)) }
    });
    let svc = GateLayer::new(keeper.clone(), clock()).layer(cycles);

    let mut call = Box::pin(svc.oneshot(admitted(1, cycle)));
    assert!(
        futures::poll!(call.as_mut()).is_pending(),
        "the claim waits"
    );
    drop(call);
    keeper.open.send_replace(true);
    let start = tokio::time::timeout(Duration::from_secs(5), starts.recv()).await;
    assert_eq!(
        start,
        Ok(Some(cycle)),
        "the cycle started without its caller"
    );
}
