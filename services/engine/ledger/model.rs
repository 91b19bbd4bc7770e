//! Model checks of the ledger over thread interleavings (shuttle).
//! Contracts: C2, C5, C11 (model-checked).
//!
//! Each thread plays one caller or runner in any replica; the shuttle mutex
//! plays the workspace row lock (each ledger transition is one transaction).
//! Shuttle explores schedules of these threads — including every point at
//! which a runner ends its cycle relative to arriving requests — and checks:
//!
//! - C5: never two cycles running at once;
//! - C2: requests that arrive while a cycle runs give exactly one more;
//! - no lost request: every admitted request's cycle is started after it;
//! - no spurious cycle: every started cycle was opened by a request;
//! - C11: no schedule deadlocks (shuttle fails the test if all threads
//!   block), and every thread finishes.

use std::time::Duration;
use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use shuttle::{
    sync::{Arc, Mutex},
    thread,
};

use super::*;

fn instant() -> Timestamp {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// Windows of zero length: everything admitted is due at once, so the
/// model exercises the gate and the follow-up, not timing (covered by the
/// unit tests).
fn timing() -> Timing {
    Timing {
        debounce_window: Duration::ZERO,
        burst_quiet: Duration::ZERO,
        burst_max_wait: Duration::ZERO,
        lease_ttl: Duration::from_secs(3600),
    }
}

/// What the shared world records.
#[derive(Default)]
struct World {
    ledger: Ledger,
    /// Logical time: bumped by every transition.
    tick: u64,
    /// cycle → tick at which it was claimed.
    started: HashMap<CycleId, u64>,
    /// (cycle, tick of admission) for every request that got a cycle.
    admitted: Vec<(CycleId, u64)>,
    /// cycles opened by a request.
    opened: Vec<CycleId>,
}

struct Shared {
    world: Mutex<World>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            world: Mutex::new(World::default()),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        })
    }

    /// One request: admit it, and if its cycle may start, try to run it.
    fn request(self: &Arc<Self>, ask: Ask, trigger: Trigger, treatment: Treatment, me: ReplicaId) {
        let claim = {
            let mut world = self.world.lock().unwrap();
            world.tick += 1;
            let tick = world.tick;
            let admitted = world.ledger.admit(
                AdmitRequest {
                    ask,
                    trigger,
                    treatment,
                },
                instant(),
                CycleId::new(),
                &timing(),
            );
            let ready = match admitted {
                Ok(Admitted::Opened { cycle, ready, .. }) => {
                    world.opened.push(cycle);
                    world.admitted.push((cycle, tick));
                    ready
                }
                Ok(Admitted::Joined { cycle, ready, .. }) => {
                    world.admitted.push((cycle, tick));
                    ready
                }
                Ok(Admitted::Dropped { .. } | Admitted::Stored | Admitted::AlreadyDeleted)
                | Err(_) => false,
            };
            drop(world);
            // The claim is its own transaction (the gate layer).
            thread::yield_now();
            if ready { self.claim(me) } else { None }
        };
        if let Some(claim) = claim {
            self.run(claim, me);
        }
    }

    fn claim(&self, me: ReplicaId) -> Option<Claim> {
        let mut world = self.world.lock().unwrap();
        world.tick += 1;
        let tick = world.tick;
        let claim = world.ledger.claim(me, instant(), &timing())?;
        assert!(
            world.started.insert(claim.cycle, tick).is_none(),
            "cycle {} started twice",
            claim.cycle
        );
        Some(claim)
    }

    /// Runs cycles: this one, then every follow-up due when it ends
    /// (release and claim in one transaction, as `LeaseGuard::finish`).
    fn run(&self, mut claim: Claim, me: ReplicaId) {
        loop {
            let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now_running, Ordering::SeqCst);
            thread::yield_now(); // Stop → Start → wait for agent
            self.running.fetch_sub(1, Ordering::SeqCst);
            let next = {
                let mut world = self.world.lock().unwrap();
                world.tick += 1;
                let tick = world.tick;
                assert!(world.ledger.release(claim.cycle, me, claim.takeovers));
                let next = world.ledger.claim(me, instant(), &timing());
                if let Some(next) = next {
                    world.started.insert(next.cycle, tick);
                }
                next
            };
            match next {
                Some(next) => claim = next,
                None => return,
            }
        }
    }

    fn check_invariants(&self) {
        let world = self.world.lock().unwrap();
        assert_eq!(
            self.max_running.load(Ordering::SeqCst),
            1,
            "C5: cycles overlapped"
        );
        assert!(
            world.ledger.running.is_none(),
            "a cycle was left holding the gate"
        );
        assert!(
            world.ledger.pending.is_none(),
            "a follow-up was never started"
        );
        for (cycle, admitted_at) in &world.admitted {
            let started_at = world
                .started
                .get(cycle)
                .unwrap_or_else(|| panic!("request's cycle {cycle} never ran"));
            assert!(
                started_at > admitted_at,
                "a request was served by a cycle that started before it"
            );
        }
        let mut opened = world.opened.clone();
        let mut started: Vec<CycleId> = world.started.keys().copied().collect();
        opened.sort();
        started.sort();
        assert_eq!(
            opened, started,
            "every opened cycle runs exactly once, no other does"
        );
    }
}

#[test]
fn requests_from_every_entry_point_never_overlap_never_get_lost_never_deadlock() {
    shuttle::check_random(
        || {
            let shared = Shared::new();
            let kinds = [
                (Ask::Run, Trigger::Create, Treatment::Urgent),
                (Ask::Run, Trigger::Manual, Treatment::Urgent),
                (Ask::Run, Trigger::ConfigChanged, Treatment::Deferred),
                (Ask::Run, Trigger::ConfigChanged, Treatment::Burst),
                (Ask::Run, Trigger::HealthProbe, Treatment::DropIfBusy),
                (Ask::Stop, Trigger::Manual, Treatment::Urgent),
                (Ask::Run, Trigger::Manual, Treatment::Urgent),
            ];
            let threads: Vec<_> = kinds
                .into_iter()
                .map(|(ask, trigger, treatment)| {
                    let shared = shared.clone();
                    // Each thread is a different replica.
                    thread::spawn(move || shared.request(ask, trigger, treatment, ReplicaId::new()))
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            shared.check_invariants();
        },
        3000,
    );
}

#[test]
fn requests_during_a_running_cycle_give_exactly_one_more() {
    shuttle::check_pct(
        || {
            let shared = Shared::new();
            let runner = ReplicaId::new();
            // A cycle is in flight.
            {
                let mut world = shared.world.lock().unwrap();
                let opened = world.ledger.admit(
                    AdmitRequest {
                        ask: Ask::Run,
                        trigger: Trigger::Manual,
                        treatment: Treatment::Urgent,
                    },
                    instant(),
                    CycleId::new(),
                    &timing(),
                );
                let Ok(Admitted::Opened { cycle, .. }) = opened else {
                    unreachable!()
                };
                world.opened.push(cycle);
            }
            let first = shared.claim(runner).unwrap();
            // Five requests race each other while it runs...
            let arrivals: Vec<_> = (0..5)
                .map(|_| {
                    let shared = shared.clone();
                    thread::spawn(move || {
                        shared.request(
                            Ask::Run,
                            Trigger::Manual,
                            Treatment::Urgent,
                            ReplicaId::new(),
                        )
                    })
                })
                .collect();
            for t in arrivals {
                t.join().unwrap();
            }
            // ...then it ends and hands the gate on.
            shared.run(first, runner);
            shared.check_invariants();
            assert_eq!(
                shared.world.lock().unwrap().started.len(),
                2,
                "C2: exactly one cycle after the one in flight"
            );
        },
        2000,
        3,
    );
}

#[test]
fn arrivals_racing_the_end_of_a_cycle_are_never_lost() {
    shuttle::check_pct(
        || {
            let shared = Shared::new();
            let runner = ReplicaId::new();
            shared.request(Ask::Run, Trigger::Create, Treatment::Urgent, runner);
            // The first cycle already ran (single thread). Now a cycle and
            // arrivals race: whichever order, nothing is lost or doubled.
            let cycle_thread = {
                let shared = shared.clone();
                thread::spawn(move || {
                    shared.request(Ask::Run, Trigger::Manual, Treatment::Urgent, runner)
                })
            };
            let arrivals: Vec<_> = (0..3)
                .map(|i| {
                    let shared = shared.clone();
                    let treatment = if i == 0 {
                        Treatment::Deferred
                    } else {
                        Treatment::Urgent
                    };
                    thread::spawn(move || {
                        shared.request(Ask::Run, Trigger::Manual, treatment, ReplicaId::new())
                    })
                })
                .collect();
            cycle_thread.join().unwrap();
            for t in arrivals {
                t.join().unwrap();
            }
            shared.check_invariants();
        },
        3000,
        3,
    );
}
