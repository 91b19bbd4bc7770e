//! Group commit: the batches of many workspaces' lanes admitted together,
//! in one durable step, when admissions queue up faster than they commit
//! (C2, C13).
//!
//! Each lane hands its batch in and waits until it is answered. While fewer
//! than [`MAX_IN_FLIGHT`] groups are being admitted, the lane that hands a
//! batch in admits it at once, on its own task, together with every batch
//! waiting at that moment, and goes on with whatever waits after. When all
//! slots are busy, batches wait and the next free slot takes them all, so
//! a group grows with the load: one transaction per group instead of one
//! per workspace, and no extra wait when the service is idle. A lane has at
//! most one batch in here at a time, so a group never holds a key twice.
//!
//! Keys still do not wait on each other (C4). A batch that would have to
//! wait for its row (another transaction holds it) is left out of its group
//! and goes back to its lane, which admits it alone, outside any slot: a
//! slot is held only as long as a transaction that never waits for a lock.
//! And against a database that is slow for everyone: a group in flight for
//! longer than [`STALL`] no longer holds its slot against the others, and a
//! batch that waited [`STALL`] for a slot is admitted by its own lane.

use std::{
    collections::{BTreeSet, HashMap},
    ops::Bound,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};

use super::{Admit, Batch, GroupAnswer, Reply};
use crate::{
    domain::{Error, clock::SharedClock},
    engine::intent::StackRequest,
};

/// How many groups one replica admits at the same time (each holds one
/// connection). Two: one commits while the next gathers, and a group held
/// up on a row lock does not stop the rest; more would only split the load
/// into smaller groups, each costing Postgres the same dozen statements
/// (at 4, 16 busy workspaces went about 3 calls per transaction).
pub(super) const MAX_IN_FLIGHT: usize = 2;

/// How long a group may hold its slot against the others, and how long a
/// batch waits for a slot before its lane admits it alone.
pub(super) const STALL: Duration = Duration::from_millis(20);

/// One lane's batch, with the callers' replies and the lane's wake-up.
struct Handed<R: StackRequest> {
    ticket: u64,
    lane: LaneBatch<R>,
    done: oneshot::Sender<Option<LaneBatch<R>>>,
}

/// A batch with its callers' replies: handed in, or handed back to its
/// lane to admit alone.
struct LaneBatch<R: StackRequest> {
    key: R::Key,
    requests: Vec<R>,
    replies: Vec<Reply<R>>,
}

impl<R: StackRequest> LaneBatch<R> {
    /// Sends each caller its answer.
    fn answer(self, answers: GroupAnswer) {
        let expected = self.requests.len();
        let answers = match answers {
            Some(Ok(answers)) if answers.len() == expected => answers,
            Some(Err(err)) => vec![Err(err); expected],
            Some(Ok(_)) | None => {
                vec![Err(Error::Internal("admission lost a request".into())); expected]
            }
        };
        for ((request, reply), answer) in self.requests.into_iter().zip(self.replies).zip(answers) {
            let _ = reply.send((request, answer));
        }
    }
}

struct State<R: StackRequest> {
    waiting: Vec<Handed<R>>,
    next_ticket: u64,
    /// The slots in use, with when their current group began, and the same
    /// ordered by that time: which are fresh is a range, however many slots
    /// are stuck (a million parked requests make a million).
    slots: HashMap<u64, Instant>,
    by_start: BTreeSet<(Instant, u64)>,
    next_slot: u64,
}

impl<R: StackRequest> State<R> {
    /// A slot may open while fewer than [`MAX_IN_FLIGHT`] groups began
    /// within [`STALL`]: one stuck on a lock holds back nobody for long.
    fn slot_free(&self, now: Instant) -> bool {
        let fresh = match now.checked_sub(STALL) {
            Some(since) => self
                .by_start
                .range((Bound::Excluded((since, u64::MAX)), Bound::Unbounded))
                .take(MAX_IN_FLIGHT)
                .count(),
            None => self.by_start.len().min(MAX_IN_FLIGHT),
        };
        fresh < MAX_IN_FLIGHT
    }

    fn open_slot(&mut self, now: Instant) -> u64 {
        self.next_slot += 1;
        self.restart_slot(self.next_slot, now);
        self.next_slot
    }

    /// The slot's next group begins `now`.
    fn restart_slot(&mut self, slot: u64, now: Instant) {
        if let Some(began) = self.slots.insert(slot, now) {
            self.by_start.remove(&(began, slot));
        }
        self.by_start.insert((now, slot));
    }

    fn close_slot(&mut self, slot: u64) {
        if let Some(began) = self.slots.remove(&slot) {
            self.by_start.remove(&(began, slot));
        }
    }
}

/// The group committer of one layer (one replica).
pub(super) struct Committer<A, R: StackRequest> {
    admit: Arc<A>,
    clock: SharedClock,
    state: Mutex<State<R>>,
}

impl<A: Admit<R>, R: StackRequest> Committer<A, R> {
    pub(super) fn new(admit: Arc<A>, clock: SharedClock) -> Self {
        Self {
            admit,
            clock,
            state: Mutex::new(State {
                waiting: Vec::new(),
                next_ticket: 0,
                slots: HashMap::new(),
                by_start: BTreeSet::new(),
                next_slot: 0,
            }),
        }
    }

    /// Hands in one lane's batch and returns once every request of it has
    /// been answered (through `replies`).
    pub(super) async fn submit(
        self: &Arc<Self>,
        key: R::Key,
        requests: Vec<R>,
        replies: Vec<Reply<R>>,
    ) {
        let (done, answered) = oneshot::channel();
        let (ticket, slot) = {
            let mut state = self.state.lock().expect("committer poisoned");
            state.next_ticket += 1;
            let ticket = state.next_ticket;
            state.waiting.push(Handed {
                ticket,
                lane: LaneBatch {
                    key,
                    requests,
                    replies,
                },
                done,
            });
            let now = Instant::now();
            (ticket, state.slot_free(now).then(|| state.open_slot(now)))
        };
        if let Some(slot) = slot {
            Slot::new(self.clone(), slot).lead().await;
        }
        // Answered by this task just now, or by another slot's group; or
        // handed back, to admit alone.
        let mut answered = std::pin::pin!(answered);
        loop {
            tokio::select! {
                back = &mut answered => {
                    if let Ok(Some(back)) = back {
                        let answers = self.admit.admit(&back.key, &back.requests, self.clock.now()).await;
                        back.answer(Some(answers));
                    }
                    return;
                }
                _ = tokio::time::sleep(STALL) => {}
            }
            // Every slot stayed busy: if this batch still waits, its own
            // lane admits it (with whatever waits) in a slot of its own.
            let slot = {
                let mut state = self.state.lock().expect("committer poisoned");
                let waits = state.waiting.iter().any(|h| h.ticket == ticket);
                waits.then(|| state.open_slot(Instant::now()))
            };
            if let Some(slot) = slot {
                Slot::new(self.clone(), slot).lead().await;
            }
        }
    }

    /// How many batches wait for a slot (tests).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.state.lock().expect("committer poisoned").waiting.len()
    }

    /// Takes every waiting batch for `slot`, or closes the slot when none
    /// waits (under the same lock, so a batch handed in meanwhile is never
    /// stranded).
    fn next_group(&self, slot: u64) -> Option<Vec<Handed<R>>> {
        let mut state = self.state.lock().expect("committer poisoned");
        if state.waiting.is_empty() {
            state.close_slot(slot);
            return None;
        }
        state.restart_slot(slot, Instant::now());
        Some(std::mem::take(&mut state.waiting))
    }

    async fn admit_group(&self, group: Vec<Handed<R>>) {
        let results = {
            let batches: Vec<Batch<'_, R>> = group
                .iter()
                .map(|handed| Batch {
                    key: &handed.lane.key,
                    requests: &handed.lane.requests,
                })
                .collect();
            self.admit.admit_group(&batches, self.clock.now()).await
        };
        let mut results = results.into_iter();
        for handed in group {
            match results.next() {
                // Left out: back to its lane.
                Some(None) => {
                    if let Err(Some(back)) = handed.done.send(Some(handed.lane)) {
                        back.answer(None);
                    }
                }
                answers => {
                    handed.lane.answer(answers.flatten());
                    let _ = handed.done.send(None);
                }
            }
        }
    }
}

/// A slot of the committer, held by the task admitting groups in it.
struct Slot<A: Admit<R>, R: StackRequest> {
    committer: Option<Arc<Committer<A, R>>>,
    id: u64,
}

impl<A: Admit<R>, R: StackRequest> Slot<A, R> {
    fn new(committer: Arc<Committer<A, R>>, id: u64) -> Self {
        Self {
            committer: Some(committer),
            id,
        }
    }

    /// Admits groups until none waits; the last look closes the slot.
    async fn lead(mut self) {
        let committer = self.committer.clone().expect("a slot leads once");
        while let Some(group) = committer.next_group(self.id) {
            committer.admit_group(group).await;
        }
        self.committer = None;
    }
}

impl<A: Admit<R>, R: StackRequest> Drop for Slot<A, R> {
    /// Dropped mid-group (its task was dropped): that group's transaction
    /// rolls back and its callers are told; the slot goes on in a task of
    /// its own, so no batch waits behind a slot nobody holds.
    fn drop(&mut self) {
        let Some(committer) = self.committer.take() else {
            return;
        };
        let id = self.id;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // The slot is rebuilt only when the task runs: a task dropped
                // unpolled (the runtime is ending) just lets go.
                runtime.spawn(async move { Slot::new(committer, id).lead().await });
            }
            Err(_) => committer
                .state
                .lock()
                .expect("committer poisoned")
                .close_slot(id),
        }
    }
}
