//! The whole stack over fakes: debounce → coalesce → gate → cycle service,
//! with per-key state checked after a million distinct keys (C15).

use std::sync::Arc;

use async_trait::async_trait;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::{
    coalesce::{Admit, CoalesceLayer, Ticket},
    debounce::{DebounceLayer, DropCheck, EarlyDrop},
    gate::{Claim, GateGuard, GateKeeper, GateLayer, Gated},
    intent::{Admission, Verdict},
    test_support::TestRequest,
};
use crate::domain::{
    CycleId, Error, Generation, Goal, Timestamp, Trigger,
    clock::{ManualClock, SharedClock},
};

struct NeverDrop;

#[async_trait]
impl DropCheck<u32> for NeverDrop {
    async fn check(&self, _: &u32, _: Trigger, _: Timestamp) -> Result<Option<EarlyDrop>, Error> {
        Ok(None)
    }
}

struct OpenEach;

#[async_trait]
impl Admit<TestRequest> for OpenEach {
    async fn admit(
        &self,
        _: &u32,
        batch: &[TestRequest],
        _: Timestamp,
    ) -> Result<Vec<Result<Ticket, Error>>, Error> {
        Ok(batch
            .iter()
            .map(|_| {
                Ok(Ticket::Ready {
                    cycle: CycleId::new(),
                    opened: true,
                    config_version: None,
                })
            })
            .collect())
    }
}

struct Guard(CycleId);

impl GateGuard for Guard {
    fn cycle(&self) -> CycleId {
        self.0
    }
}

struct AlwaysOpen;

#[async_trait]
impl GateKeeper<u32> for AlwaysOpen {
    type Guard = Guard;

    async fn claim(&self, _: &u32, _: Timestamp) -> Result<Claim<Guard>, Error> {
        Ok(Claim::Won(Guard(CycleId::new())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_distinct_workspaces_leave_no_per_key_state() {
    let clock: SharedClock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let coalesce = CoalesceLayer::new(Arc::new(OpenEach), clock.clone());
    let cycles = service_fn(|gated: Gated<TestRequest, Guard>| async move {
        Ok::<_, Error>(Admission::of(Verdict::Accepted {
            cycle: gated.guard.cycle(),
            generation: Generation(1),
            goal: Goal::Provision,
        }))
    });
    let stack = ServiceBuilder::new()
        .layer(DebounceLayer::new(Arc::new(NeverDrop), clock.clone()))
        .layer(coalesce.clone())
        .layer(GateLayer::new(Arc::new(AlwaysOpen), clock))
        .service(cycles);
    // Eight concurrent callers, each touching its own range of keys.
    let callers: Vec<_> = (0..8u32)
        .map(|caller| {
            let stack = stack.clone();
            tokio::spawn(async move {
                for key in (caller..1_000_000).step_by(8) {
                    let trigger = if key % 2 == 0 {
                        Trigger::Manual
                    } else {
                        Trigger::HealthProbe
                    };
                    let answer = stack.clone().oneshot(TestRequest::new(key, trigger)).await;
                    assert!(answer.is_ok());
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    assert_eq!(coalesce.live_lanes(), 0, "per-key lanes left behind");
}
