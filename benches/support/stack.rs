//! The engine's keyed tower stack (debounce → coalesce → gate → inner) over
//! the real `Intent`, with the Postgres-backed parts replaced by answers
//! that cost nothing, so what is measured is the middleware itself: the
//! per-key lanes (`KeyedSlots`), the admission drain task and its channel,
//! and the boxed futures of each layer.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use async_trait::async_trait;
use tokio::sync::watch;
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneSyncService};
use workspace_lifecycle::{
    domain::{
        CycleId, Error, Generation, Goal, Timestamp, Trigger, WorkspaceId,
        clock::{SharedClock, WallClock},
    },
    engine::{
        coalesce::{Admit, Batch, CoalesceLayer, GroupAnswer, Ticket},
        debounce::{DebounceLayer, DropCheck, EarlyDrop},
        gate::{Claim, GateGuard, GateKeeper, GateLayer, Gated},
        intent::{Admission, Intent, Verdict},
    },
};

/// What every service in these benchmarks is.
pub type Svc = BoxCloneSyncService<Intent, Admission, Error>;

/// The reason that makes the fake admission wait for [`Parking::release`].
pub const PARK: &str = "park";

struct NeverDrop;

#[async_trait]
impl DropCheck<WorkspaceId> for NeverDrop {
    async fn check(
        &self,
        _: &WorkspaceId,
        _: Trigger,
        _: Timestamp,
    ) -> Result<Option<EarlyDrop>, Error> {
        Ok(None)
    }
}

/// Admits every request as the opener of one fixed cycle; requests whose
/// reason is [`PARK`] wait in admission (holding their key's lane) until
/// released — as a request whose row another transaction holds: left out
/// of its group and admitted alone, so it never holds back the other keys'
/// requests grouped with it (C4), just as the store does.
pub struct Parking {
    cycle: CycleId,
    parked: AtomicBool,
    release: watch::Sender<bool>,
}

impl Parking {
    /// Whether admitting `batch` waits for [`Parking::release`].
    fn waits(&self, batch: &[Intent]) -> bool {
        self.parked.load(Ordering::Relaxed) && batch.iter().any(|i| i.reason == PARK)
    }

    /// From now on, [`PARK`] requests wait again.
    pub fn park(&self) {
        self.release.send_replace(false);
        self.parked.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.parked.store(false, Ordering::SeqCst);
        self.release.send_replace(true);
    }
}

#[async_trait]
impl Admit<Intent> for Parking {
    async fn admit_group(&self, group: &[Batch<'_, Intent>], now: Timestamp) -> Vec<GroupAnswer> {
        let mut answers = Vec::with_capacity(group.len());
        for batch in group {
            answers.push(if self.waits(batch.requests) {
                None
            } else {
                Some(self.admit(batch.key, batch.requests, now).await)
            });
        }
        answers
    }

    async fn admit(
        &self,
        _: &WorkspaceId,
        batch: &[Intent],
        _: Timestamp,
    ) -> Result<Vec<Result<Ticket, Error>>, Error> {
        if self.waits(batch) {
            let _ = self.release.subscribe().wait_for(|r| *r).await;
        }
        Ok(batch
            .iter()
            .map(|_| {
                Ok(Ticket::Ready {
                    cycle: self.cycle,
                    opened: true,
                    config_version: None,
                })
            })
            .collect())
    }
}

pub struct Guard(CycleId);

impl GateGuard for Guard {
    fn cycle(&self) -> CycleId {
        self.0
    }
}

struct AlwaysOpen(CycleId);

#[async_trait]
impl GateKeeper<WorkspaceId> for AlwaysOpen {
    type Guard = Guard;

    async fn claim(&self, _: &WorkspaceId, _: Timestamp) -> Result<Claim<Guard>, Error> {
        Ok(Claim::Won(Guard(self.0)))
    }
}

fn accepted(cycle: CycleId) -> Admission {
    Admission::of(Verdict::Accepted {
        cycle,
        generation: Generation(1),
        goal: Goal::Provision,
    })
}

/// The inner service alone: what a request costs without the keyed stack.
pub fn bare() -> Svc {
    let cycle = CycleId::new();
    BoxCloneSyncService::new(service_fn(move |_: Intent| async move {
        Ok::<_, Error>(accepted(cycle))
    }))
}

/// The keyed stack around the same inner service.
pub struct Keyed {
    pub svc: Svc,
    pub coalesce: CoalesceLayer<Parking, Intent>,
    pub parking: Arc<Parking>,
}

pub fn keyed() -> Keyed {
    let clock: SharedClock = Arc::new(WallClock);
    let cycle = CycleId::new();
    let parking = Arc::new(Parking {
        cycle,
        parked: AtomicBool::new(true),
        release: watch::channel(false).0,
    });
    let coalesce = CoalesceLayer::new(parking.clone(), clock.clone());
    let inner =
        service_fn(move |_: Gated<Intent, Guard>| async move { Ok::<_, Error>(accepted(cycle)) });
    let svc = ServiceBuilder::new()
        .layer(DebounceLayer::new(Arc::new(NeverDrop), clock.clone()))
        .layer(coalesce.clone())
        .layer(GateLayer::new(Arc::new(AlwaysOpen(cycle)), clock))
        .service(inner);
    Keyed {
        svc: BoxCloneSyncService::new(svc),
        coalesce,
        parking,
    }
}

/// The `i`-th distinct workspace id.
pub fn key(i: u64) -> WorkspaceId {
    WorkspaceId::from(uuid::Uuid::from_u128(
        0xbe4c_0000_0000_0000_0000_0000_0000_0000 | i as u128,
    ))
}

/// One MANUAL restart of `key` through `svc`.
pub async fn call(svc: &Svc, key: WorkspaceId, reason: &'static str) -> Admission {
    svc.clone()
        .oneshot(Intent::restart(key, Trigger::Manual, reason))
        .await
        .expect("the fakes never fail")
}
