//! Unit tests of `engine::coalesce`: each contract it enforces, driven with fakes and a manual clock.
use std::{collections::HashMap, time::Duration};

use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::*;
use crate::{
    domain::{Trigger, clock::ManualClock, ledger::Treatment},
    engine::{
        intent::{Verdict, Waiting},
        test_support::{MockHandle, MockInner, TestRequest, mock_inner},
    },
};

/// Admits like a ledger with one follow-up per key: the first request of a
/// key opens a ready cycle, every later one joins it. Each batch waits for a
/// permit so a test can hold admission while requests pile up.
struct FakeAdmit {
    permits: Semaphore,
    batches: Mutex<Vec<usize>>,
    cycles: Mutex<HashMap<u32, CycleId>>,
}

impl FakeAdmit {
    fn new(permits: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Semaphore::new(permits),
            batches: Mutex::default(),
            cycles: Mutex::default(),
        })
    }
}

#[async_trait]
impl Admit<TestRequest> for FakeAdmit {
    async fn admit(
        &self,
        key: &u32,
        batch: &[TestRequest],
        _now: Timestamp,
    ) -> Result<Vec<Result<Ticket, Error>>, Error> {
        self.permits.acquire().await.unwrap().forget();
        self.batches.lock().unwrap().push(batch.len());
        let mut cycles = self.cycles.lock().unwrap();
        Ok(batch
            .iter()
            .map(|_| {
                Ok(match cycles.get(key) {
                    Some(cycle) => Ticket::Done(Admission::of(Verdict::Coalesced {
                        cycle: *cycle,
                        not_before: chrono::Utc::now(),
                        waiting: Waiting::Coalesced,
                    })),
                    None => {
                        let cycle = CycleId::new();
                        cycles.insert(*key, cycle);
                        Ticket::Ready {
                            cycle,
                            opened: true,
                            config_version: None,
                        }
                    }
                })
            })
            .collect())
    }
}

fn layer<A: Admit<TestRequest>>(admit: Arc<A>) -> CoalesceLayer<A, TestRequest> {
    CoalesceLayer::new(admit, Arc::new(ManualClock::new(chrono::Utc::now())))
}

fn treated(key: u32, tag: usize) -> TestRequest {
    TestRequest::new(key, Trigger::Manual)
        .tagged(tag)
        .at(Stage::Treated(Treatment::Urgent))
}

type Svc = Coalesce<MockInner, FakeAdmit, TestRequest>;

/// A layer admitting through `admit`, and its service over a mock inner
/// one (keep the handle: dropping it ends the inner service).
fn served<A: Admit<TestRequest>>(
    admit: &Arc<A>,
) -> (
    CoalesceLayer<A, TestRequest>,
    Coalesce<MockInner, A, TestRequest>,
    MockHandle,
) {
    served_in(admit, group::MAX_IN_FLIGHT)
}

/// As [`served`], with `slots` groups in flight at most.
fn served_in<A: Admit<TestRequest>>(
    admit: &Arc<A>,
    slots: usize,
) -> (
    CoalesceLayer<A, TestRequest>,
    Coalesce<MockInner, A, TestRequest>,
    MockHandle,
) {
    let layer = CoalesceLayer::with_slots(
        admit.clone(),
        Arc::new(ManualClock::new(chrono::Utc::now())),
        slots,
    );
    let (inner, handle) = mock_inner();
    let svc = layer.layer(inner);
    (layer, svc, handle)
}

/// Yields until `done`, failing after 10,000 turns of the runtime: bounded
/// by turns, not time, because on a paused clock time never moves while a
/// task keeps yielding (a timeout would never fire).
async fn within_turns(what: &str, done: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what}: not after 10,000 turns");
}

#[tokio::test]
async fn a_storm_on_one_key_is_admitted_in_few_batches_and_only_one_request_goes_on() {
    let admit = FakeAdmit::new(0);
    let layer = layer(admit.clone());
    let (inner, mut handle) = mock_inner();
    let svc: Svc = layer.layer(inner);

    let calls: Vec<_> = (0..50)
        .map(|tag| tokio::spawn(svc.clone().oneshot(treated(1, tag))))
        .collect();
    // Let every call queue while the first batch is held.
    tokio::time::sleep(Duration::from_millis(50)).await;
    admit.permits.add_permits(100);

    let (through, reply) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        through.stage,
        Stage::Admitted { opened: true, .. }
    ));
    reply.send_response(Admission::of(Verdict::Idle));

    let mut coalesced = 0;
    for call in calls {
        match call.await.unwrap().unwrap().verdict {
            Verdict::Coalesced { .. } => coalesced += 1,
            Verdict::Idle => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(coalesced, 49, "every other caller answered as coalesced");
    let batches = admit.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 50);
    assert!(batches.len() <= 2, "50 requests took {batches:?} batches");
    assert_eq!(layer.live_lanes(), 0, "lane evicted once idle");
}

#[tokio::test]
async fn keys_do_not_wait_for_each_other() {
    let admit = FakeAdmit::new(0);
    let layer = layer(admit.clone());
    let (inner, mut handle) = mock_inner();
    let svc: Svc = layer.layer(inner);
    handle.allow(10);
    let a = tokio::spawn(svc.clone().oneshot(treated(1, 0)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Key 1's batch waits for a permit; key 2 queues in its own lane and
    // both go on as permits arrive, neither behind the other's lane.
    let b = tokio::spawn(svc.clone().oneshot(treated(2, 1)));
    admit.permits.add_permits(1);
    let (first, reply) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap()
        .unwrap();
    reply.send_response(Admission::of(Verdict::Idle));
    admit.permits.add_permits(1);
    let (second, reply) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap()
        .unwrap();
    reply.send_response(Admission::of(Verdict::Idle));
    let mut keys = [first.key, second.key];
    keys.sort();
    assert_eq!(keys, [1, 2]);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_caller_that_goes_away_does_not_cancel_the_batch_of_others() {
    let admit = FakeAdmit::new(0);
    let layer = layer(admit.clone());
    let (inner, handle) = mock_inner();
    let svc: Svc = layer.layer(inner);
    let leader = tokio::spawn(svc.clone().oneshot(treated(4, 0)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let follower = tokio::spawn(svc.clone().oneshot(treated(4, 1)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    leader.abort();
    admit.permits.add_permits(10);
    // The batch still commits and the follower gets its answer. (The opened
    // cycle, whose opener left, is durable and due: the scheduler starts it.)
    let answer = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            answer,
            Ok(Admission {
                verdict: Verdict::Coalesced { .. },
                ..
            })
        ),
        "{answer:?}"
    );
    assert_eq!(admit.batches.lock().unwrap().iter().sum::<usize>(), 2);
    drop(handle);
}

#[tokio::test]
async fn requests_not_at_the_admission_stage_pass_straight_through() {
    let admit = FakeAdmit::new(100);
    let (inner, mut handle) = mock_inner();
    let svc: Svc = layer(admit.clone()).layer(inner);
    let call = tokio::spawn(svc.oneshot(TestRequest::new(1, Trigger::Manual).at(Stage::Resume)));
    let (seen, reply) = handle.next_request().await.unwrap();
    assert_eq!(seen.stage, Stage::Resume);
    reply.send_response(Admission::of(Verdict::Idle));
    call.await.unwrap().unwrap();
    assert!(admit.batches.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_admission_fails_every_request_of_the_batch_and_nothing_goes_on() {
    struct Down;
    #[async_trait]
    impl Admit<TestRequest> for Down {
        async fn admit(
            &self,
            _key: &u32,
            _batch: &[TestRequest],
            _now: Timestamp,
        ) -> Result<Vec<Result<Ticket, Error>>, Error> {
            Err(Error::Unavailable("database down".into()))
        }
    }
    let (inner, _handle) = mock_inner();
    let layer: CoalesceLayer<Down, TestRequest> = CoalesceLayer::new(
        Arc::new(Down),
        Arc::new(ManualClock::new(chrono::Utc::now())),
    );
    let mut svc = layer.layer(inner);
    // No readiness needed: the request never reaches the inner service.
    let err = tokio::time::timeout(Duration::from_secs(5), svc.call(treated(1, 0)))
        .await
        .expect("answered")
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)));
}

/// Every request admitted, answered idle.
fn idle(batch: &[TestRequest]) -> BatchAnswers {
    Ok(batch
        .iter()
        .map(|_| Ok(Ticket::Done(Admission::of(Verdict::Idle))))
        .collect())
}

/// Records the keys of every group and holds each group for a permit.
struct GroupingAdmit {
    permits: Semaphore,
    groups: Mutex<Vec<Vec<u32>>>,
}

impl GroupingAdmit {
    /// Every group held until permits are added.
    fn held() -> Arc<Self> {
        Arc::new(Self {
            permits: Semaphore::new(0),
            groups: Mutex::default(),
        })
    }
}

#[async_trait]
impl Admit<TestRequest> for GroupingAdmit {
    async fn admit(&self, _: &u32, batch: &[TestRequest], _: Timestamp) -> BatchAnswers {
        idle(batch)
    }

    async fn admit_group(
        &self,
        group: &[Batch<'_, TestRequest>],
        _: Timestamp,
    ) -> Vec<GroupAnswer> {
        self.permits.acquire().await.unwrap().forget();
        self.groups
            .lock()
            .unwrap()
            .push(group.iter().map(|b| *b.key).collect());
        group
            .iter()
            .map(|batch| Some(idle(batch.requests)))
            .collect()
    }
}

/// Yields until exactly `waiting` batches wait for a slot.
async fn until_waiting<A: Admit<TestRequest>>(
    layer: &CoalesceLayer<A, TestRequest>,
    waiting: usize,
) {
    within_turns("the batches waiting", || {
        layer.committer.waiting() == waiting
    })
    .await
}

/// One call for each of `keys` keys, spawned, once every batch but the
/// slots' first ones waits for a slot; with how many wait.
async fn queue_behind_the_slots<A: Admit<TestRequest>>(
    layer: &CoalesceLayer<A, TestRequest>,
    svc: &Coalesce<MockInner, A, TestRequest>,
    keys: u32,
) -> (
    Vec<tokio::task::JoinHandle<Result<Admission, Error>>>,
    usize,
) {
    let calls = (0..keys)
        .map(|key| tokio::spawn(svc.clone().oneshot(treated(key, key as usize))))
        .collect();
    let waiting = keys as usize - group::MAX_IN_FLIGHT;
    within_turns("the batches queue behind the busy slots", || {
        layer.committer.waiting() >= waiting
    })
    .await;
    (calls, waiting)
}

// Paused clock: the batches wait for a slot no longer than `group::STALL`
// of tokio time, which passes here only when every task is idle.
#[tokio::test(start_paused = true)]
async fn batches_of_many_keys_that_wait_for_a_slot_share_one_group() {
    let admit = GroupingAdmit::held();
    let (layer, svc, _handle) = served(&admit);
    let keys = 20;
    // The first MAX_IN_FLIGHT keys take the slots (held by the permits);
    // every other key's batch waits for one.
    let (calls, waiting) = queue_behind_the_slots(&layer, &svc, keys).await;
    admit.permits.add_permits(100);
    for call in calls {
        let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
        assert!(matches!(answer, Ok(Ok(Ok(_)))), "{answer:?}");
    }
    let mut sizes: Vec<usize> = admit.groups.lock().unwrap().iter().map(Vec::len).collect();
    sizes.sort();
    let mut expected = vec![1; group::MAX_IN_FLIGHT];
    expected.push(waiting);
    assert_eq!(sizes, expected, "the waiting batches went in one group");
    let mut seen: Vec<u32> = admit.groups.lock().unwrap().concat();
    seen.sort();
    assert_eq!(
        seen,
        (0..keys).collect::<Vec<_>>(),
        "each key admitted once"
    );
    assert_eq!(layer.live_lanes(), 0);
}

/// Holds every group with a key of `blocked` until released.
struct BlockingAdmit {
    blocked: Vec<u32>,
    entered: std::sync::atomic::AtomicUsize,
    release: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl Admit<TestRequest> for BlockingAdmit {
    async fn admit(&self, _: &u32, batch: &[TestRequest], _: Timestamp) -> BatchAnswers {
        idle(batch)
    }

    async fn admit_group(
        &self,
        group: &[Batch<'_, TestRequest>],
        _: Timestamp,
    ) -> Vec<GroupAnswer> {
        if group.iter().any(|b| self.blocked.contains(b.key)) {
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = self.release.subscribe().wait_for(|r| *r).await;
        }
        group
            .iter()
            .map(|batch| Some(idle(batch.requests)))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn groups_stuck_in_every_slot_hold_back_another_key_no_longer_than_the_stall() {
    let admit = Arc::new(BlockingAdmit {
        blocked: vec![1, 2],
        entered: Default::default(),
        release: tokio::sync::watch::channel(false).0,
    });
    let (layer, svc, _handle) = served_in(&admit, 2);
    let stuck: Vec<_> = [1, 2]
        .map(|key| tokio::spawn(svc.clone().oneshot(treated(key, key as usize))))
        .into();
    within_turns("both slots taken by stuck groups", || {
        admit.entered.load(std::sync::atomic::Ordering::SeqCst) >= group::MAX_IN_FLIGHT
    })
    .await;

    // Both slots are fresh: the next key waits for one, at most the stall.
    let began = tokio::time::Instant::now();
    let answer = tokio::time::timeout(group::STALL * 10, svc.clone().oneshot(treated(3, 3))).await;
    assert!(matches!(answer, Ok(Ok(_))), "{answer:?}");
    assert_eq!(
        began.elapsed(),
        group::STALL,
        "admitted by its own lane after the stall"
    );

    // Now the stuck groups are past the stall: a key goes at once.
    let began = tokio::time::Instant::now();
    let answer = tokio::time::timeout(group::STALL * 10, svc.clone().oneshot(treated(4, 4))).await;
    assert!(matches!(answer, Ok(Ok(_))), "{answer:?}");
    assert_eq!(began.elapsed(), Duration::ZERO, "stuck groups hold no slot");

    admit.release.send_replace(true);
    for call in stuck {
        let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
        assert!(matches!(answer, Ok(Ok(Ok(_)))), "{answer:?}");
    }
    assert_eq!(layer.live_lanes(), 0);
}

// A million requests parked in admission hung the keyed-overhead benchmark:
// every batch of a stuck group looked for a slot again after every stall,
// a million wake-ups each 20 ms.
#[tokio::test(start_paused = true)]
async fn a_batch_taken_into_a_stuck_group_looks_for_a_slot_no_more() {
    let keys = 10u32;
    let admit = Arc::new(BlockingAdmit {
        blocked: (0..keys).collect(),
        entered: Default::default(),
        release: tokio::sync::watch::channel(false).0,
    });
    let (layer, svc, _handle) = served(&admit);
    // Two keys take the slots and stick; after the stall one waiting batch
    // leads a group of all eight, which sticks too.
    let (calls, waiting) = queue_behind_the_slots(&layer, &svc, keys).await;
    tokio::time::sleep(group::STALL * 100).await;
    assert_eq!(layer.committer.waiting(), 0, "one batch led them all");
    let looks = layer
        .committer
        .looks
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        looks, waiting,
        "each waiting batch looked once, after the first stall"
    );

    admit.release.send_replace(true);
    for call in calls {
        let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
        assert!(matches!(answer, Ok(Ok(Ok(_)))), "{answer:?}");
    }
    assert_eq!(layer.live_lanes(), 0);
}

/// Leaves keys 1 and 2 out of every group (their rows are busy); admitting
/// either alone waits for the row, released by `rows`.
struct BusyRowsAdmit {
    rows: Semaphore,
    waiting_alone: std::sync::atomic::AtomicUsize,
}

impl BusyRowsAdmit {
    fn busy(key: u32) -> bool {
        key == 1 || key == 2
    }
}

#[async_trait]
impl Admit<TestRequest> for BusyRowsAdmit {
    async fn admit(&self, key: &u32, batch: &[TestRequest], _: Timestamp) -> BatchAnswers {
        if Self::busy(*key) {
            self.waiting_alone
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.rows.acquire().await.unwrap().forget();
        }
        idle(batch)
    }

    async fn admit_group(
        &self,
        group: &[Batch<'_, TestRequest>],
        _: Timestamp,
    ) -> Vec<GroupAnswer> {
        group
            .iter()
            .map(|batch| (!Self::busy(*batch.key)).then(|| idle(batch.requests)))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn batches_waiting_for_their_rows_wait_outside_the_slots() {
    let admit = Arc::new(BusyRowsAdmit {
        rows: Semaphore::new(0),
        waiting_alone: Default::default(),
    });
    let (layer, svc, _handle) = served(&admit);
    let busy: Vec<_> = [1, 2]
        .map(|key| tokio::spawn(svc.clone().oneshot(treated(key, key as usize))))
        .into();
    within_turns("both busy batches went back to their lanes", || {
        admit
            .waiting_alone
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    })
    .await;

    // Two keys wait for their rows, as many as there are slots: another
    // key still goes at once, not after the stall.
    let began = tokio::time::Instant::now();
    let answer = tokio::time::timeout(group::STALL * 10, svc.clone().oneshot(treated(3, 3))).await;
    assert!(matches!(answer, Ok(Ok(_))), "{answer:?}");
    assert_eq!(began.elapsed(), Duration::ZERO, "a lock wait held a slot");

    admit.rows.add_permits(2);
    for call in busy {
        let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
        assert!(matches!(answer, Ok(Ok(Ok(_)))), "{answer:?}");
    }
    assert_eq!(layer.live_lanes(), 0);
}

// Paused clock: no stall passes unless every task is idle.
#[tokio::test(start_paused = true)]
async fn a_lane_admits_one_group_then_hands_its_slot_on_so_its_next_batch_is_not_held_back() {
    let admit = GroupingAdmit::held();
    let (layer, svc, _handle) = served_in(&admit, 2);
    // Key 1's lane leads a slot, key 2's the other; keys 3–6 wait.
    let mut calls = vec![tokio::spawn(svc.clone().oneshot(treated(1, 1)))];
    until_waiting(&layer, 0).await;
    calls.push(tokio::spawn(svc.clone().oneshot(treated(2, 2))));
    until_waiting(&layer, 0).await;
    for key in 3..=6 {
        calls.push(tokio::spawn(
            svc.clone().oneshot(treated(key, key as usize)),
        ));
    }
    until_waiting(&layer, 4).await;
    // Key 1's next request queues in its lane.
    calls.push(tokio::spawn(svc.clone().oneshot(treated(1, 7))));
    // Key 1's group commits: its next batch is handed in for it as it is
    // answered, and joins keys 3–6 in the group the slot goes on with, in
    // a task of its own: key 1's first caller has its answer while that
    // group is still held.
    admit.permits.add_permits(1);
    until_waiting(&layer, 0).await;
    let first = calls.remove(0);
    let answer = tokio::time::timeout(Duration::from_secs(5), first).await;
    assert!(matches!(answer, Ok(Ok(Ok(_)))), "{answer:?}");

    admit.permits.add_permits(100);
    for call in calls {
        let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
        assert!(matches!(answer, Ok(Ok(Ok(_)))), "{answer:?}");
    }
    let groups = admit.groups.lock().unwrap().clone();
    assert!(
        groups.contains(&vec![3, 4, 5, 6, 1]),
        "key 1's next batch joined the very next group: {groups:?}"
    );
    assert_eq!(layer.live_lanes(), 0);
}

/// A caller that goes away while its batch is admitted does not take its
/// cycle's start with it: the ready request goes on to the gate on its own
/// once the batch commits (C20), instead of waiting for the scheduler.
#[tokio::test]
async fn a_ready_request_whose_caller_went_away_still_goes_on_to_the_gate() {
    let admit = FakeAdmit::new(0);
    let (_layer, svc, mut handle) = served(&admit);
    let caller = tokio::spawn(svc.clone().oneshot(treated(7, 1)));
    within_turns("the batch is in admission", || {
        admit.permits.available_permits() == 0 && !caller.is_finished()
    })
    .await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    caller.abort();
    let _ = caller.await;
    admit.permits.add_permits(1);

    let (through, reply) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the ready request reaches the gate without its caller")
        .unwrap();
    assert_eq!(through.key, 7);
    assert!(matches!(
        through.stage,
        Stage::Admitted { opened: true, .. }
    ));
    reply.send_response(Admission::of(Verdict::Idle));
}

/// A lane answered by a group hands in the batch its callers queued
/// meanwhile before the slot takes its next group, so that batch joins the
/// very next group instead of the one after it.
#[tokio::test(start_paused = true)]
async fn a_lane_answered_by_a_group_joins_the_next_group_with_what_it_queued() {
    let admit = GroupingAdmit::held();
    let (layer, svc, _handle) = served(&admit);
    let answered = |groups: usize| {
        let admit = admit.clone();
        async move {
            within_turns("the groups admitted", || {
                admit.groups.lock().unwrap().len() == groups
            })
            .await
        }
    };
    let call = |key: u32, tag: usize| tokio::spawn(svc.clone().oneshot(treated(key, tag)));
    // Key 1 leads the slot; keys 2 and 3 wait for it.
    let mut calls = vec![call(1, 1)];
    until_waiting(&layer, 0).await;
    calls.push(call(2, 2));
    until_waiting(&layer, 1).await;
    calls.push(call(3, 3));
    until_waiting(&layer, 2).await;
    admit.permits.add_permits(1);
    answered(1).await;
    until_waiting(&layer, 0).await;
    // Keys 2 and 3 are being admitted: key 2's next request queues in its
    // lane, key 4 waits for the slot.
    calls.push(call(2, 4));
    calls.push(call(4, 5));
    until_waiting(&layer, 1).await;
    admit.permits.add_permits(1);
    answered(2).await;

    admit.permits.add_permits(100);
    for call in calls {
        let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
        assert!(matches!(answer, Ok(Ok(Ok(_)))), "{answer:?}");
    }
    assert_eq!(
        *admit.groups.lock().unwrap(),
        vec![vec![1], vec![2, 3], vec![4, 2]],
        "key 2's second batch joined key 4's group"
    );
    assert_eq!(layer.live_lanes(), 0);
}
