//! Group commit: the batches of many workspaces' lanes admitted together,
//! in one durable step, when admissions queue up faster than they commit
//! (C2, C13).
//!
//! Each lane hands its batch in and waits until it is answered. While fewer
//! than [`MAX_IN_FLIGHT`] groups are being admitted, the lane that hands a
//! batch in admits it at once, on its own task, together with every batch
//! waiting at that moment; if more waits after, the slot goes on in a task
//! of its own, so a lane's task never admits other keys' groups while its
//! own next batch waits. When all slots are busy, batches wait and the next
//! free slot takes them all, so a group grows with the load: one
//! transaction per group instead of one per workspace, and no extra wait
//! when the service is idle. A lane has at most one batch in here at a
//! time, so a group never holds a key twice; when a group answers a lane,
//! what the lane's callers queued meanwhile is handed in for it there and
//! then (`handed.rs`), so the lane joins the very next group and the slot
//! goes on at once, without waiting for the lane's task to be scheduled.
//!
//! Keys still do not wait on each other (C4). A batch that would have to
//! wait for its row (another transaction holds it) is left out of its group
//! and admitted alone, outside any slot, in a task of its own: a slot is
//! held only by a transaction that never waits for a row lock (an insert of
//! a name another transaction is inserting still waits for that one). And
//! against a database that is slow for everyone: a group in flight for
//! longer than [`STALL`] no longer holds its slot against the others, and a
//! batch that waited [`STALL`] for a slot is admitted by its own lane.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};

use super::{Admit, Batch, Lane, Orphans, Reply, starts::Starts};
use crate::{domain::clock::SharedClock, engine::intent::StackRequest};
pub(super) use handed::Rejoined;
use handed::{Handed, LaneBatch, Rejoin};

mod handed;

/// How many groups one replica admits at the same time (each holds one
/// connection). One: while it commits, the next group gathers everything
/// that arrives, so the groups grow with the load and Postgres runs one
/// dozen statements per group, not per workspace. Measured on 16 busy
/// workspaces (BENCHMARKS.md, "one slot"): at two slots a group held ~5
/// calls (2.16 statements per call), at one ~8 (1.36), with more calls per
/// second on one and on three replicas. A group never waits for a row
/// lock (those batches are admitted alone, outside the slot), and one
/// slow for longer than [`STALL`] lets the waiting batches go on their own.
pub(super) const MAX_IN_FLIGHT: usize = 1;

/// How long a group may hold its slot against the others, and how long a
/// batch waits for a slot before its lane admits it alone.
pub(super) const STALL: Duration = Duration::from_millis(20);

/// How many left-out batches of one group are admitted alone at once.
const ALONE_AT_ONCE: usize = 4;

struct State<R: StackRequest> {
    waiting: Vec<Handed<R>>,
    next_ticket: u64,
    starts: Starts,
}

impl<R: StackRequest> State<R> {
    /// Puts a lane's batch in the waiting list under a new ticket (the
    /// list stays sorted by ticket).
    fn wait(
        &mut self,
        queue: Arc<Lane<R>>,
        key: R::Key,
        (requests, replies): (Vec<R>, Vec<Reply<R>>),
        done: oneshot::Sender<Rejoined>,
    ) -> u64 {
        self.next_ticket += 1;
        self.waiting.push(Handed {
            ticket: self.next_ticket,
            lane: LaneBatch {
                key,
                requests,
                replies,
            },
            done,
            queue,
        });
        self.next_ticket
    }
}

/// The group committer of one layer (one replica).
pub(super) struct Committer<A, R: StackRequest> {
    admit: Arc<A>,
    clock: SharedClock,
    /// Where a ready request whose caller went away goes on (the layer's
    /// inner service, set when the layer wraps it).
    pub(super) orphans: Arc<Orphans<R>>,
    state: Mutex<State<R>>,
    /// How many times a waiting batch looked for a slot after a stall
    /// (tests).
    #[cfg(test)]
    pub(super) looks: std::sync::atomic::AtomicUsize,
}

impl<A: Admit<R>, R: StackRequest> Committer<A, R> {
    /// A committer admitting at most `slots` groups at once.
    pub(super) fn new(admit: Arc<A>, clock: SharedClock, slots: usize) -> Self {
        Self {
            admit,
            clock,
            orphans: Arc::default(),
            #[cfg(test)]
            looks: Default::default(),
            state: Mutex::new(State {
                waiting: Vec::new(),
                next_ticket: 0,
                starts: Starts::new(slots),
            }),
        }
    }

    /// Hands in one lane's batch and returns once every request of it has
    /// been answered (through `replies`). The batch is handed in at once,
    /// not in the returned future: that future never holds it (a parked
    /// request's future is boxed for as long as it waits).
    pub(super) fn submit(
        self: &Arc<Self>,
        lane: Arc<Lane<R>>,
        key: R::Key,
        (requests, replies): (Vec<R>, Vec<Reply<R>>),
    ) -> impl Future<Output = ()> + Send + '_ {
        let (done, answered) = oneshot::channel();
        let (ticket, slot) = {
            let mut state = self.state.lock().expect("committer poisoned");
            let ticket = state.wait(lane, key, (requests, replies), done);
            let now = Instant::now();
            (
                ticket,
                state.starts.slot_free(now).then(|| state.starts.begin(now)),
            )
        };
        self.answered(ticket, slot, answered)
    }

    /// Hands in, for a lane whose batch was just answered by a group, what
    /// its callers queued meanwhile — what its drain would do once
    /// scheduled — so the lane joins the very next group, which the slot
    /// that answered it takes without waiting for the lane's task. Opens
    /// no slot: the caller holds one.
    fn rejoin(&self, lane: Arc<Lane<R>>, key: R::Key) -> Rejoined {
        let batch = lane.take(false)?;
        let (done, answered) = oneshot::channel();
        let mut state = self.state.lock().expect("committer poisoned");
        let ticket = state.wait(lane, key, batch, done);
        Some(Rejoin { ticket, answered })
    }

    /// Leads the group of `slot` (if the batch got one) and waits for the
    /// batch of `ticket` to be answered.
    ///
    /// A lane's drain holds this future while its batch waits (a million
    /// parked requests, a million of them), so what few waits need is boxed
    /// when needed: a group's lead and the stall timer.
    async fn answered(
        self: &Arc<Self>,
        ticket: u64,
        slot: Option<u64>,
        answered: oneshot::Receiver<Rejoined>,
    ) {
        let (mut ticket, mut answered) = (ticket, answered);
        if let Some(slot) = slot {
            Box::pin(Slot::new(self.clone(), slot).lead()).await;
            // Most often this task answered its own batch just now: no
            // timer for the stall is armed then.
            match answered.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                Ok(Some(next)) => (ticket, answered) = (next.ticket, next.answered),
                Ok(None) | Err(oneshot::error::TryRecvError::Closed) => return,
            }
        }
        // Answered by another slot's group, or alone after its row was busy;
        // a batch handed in for the lane when it was answered is waited for
        // in its place.
        loop {
            tokio::select! {
                heard = &mut answered => match heard {
                    Ok(Some(next)) => {
                        (ticket, answered) = (next.ticket, next.answered);
                        continue;
                    }
                    Ok(None) | Err(_) => return,
                },
                _ = Box::pin(tokio::time::sleep(STALL)) => {}
            }
            // Every slot stayed busy: if this batch still waits, its own
            // lane admits it (with whatever waits) in a slot of its own.
            let slot = {
                let mut state = self.state.lock().expect("committer poisoned");
                #[cfg(test)]
                self.looks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Tickets are handed in in order and taken all at once: the
                // waiting list is sorted by ticket.
                let waits = state
                    .waiting
                    .binary_search_by_key(&ticket, |h| h.ticket)
                    .is_ok();
                waits.then(|| state.starts.begin(Instant::now()))
            };
            match slot {
                Some(slot) => Box::pin(Slot::new(self.clone(), slot).lead()).await,
                // Taken into a group being admitted: that group, or the lone
                // admission of a batch it left out, answers it (or drops its
                // `done`). Looking again after every stall would only wake
                // each of a stuck group's batches fifty times a second.
                None => match (&mut answered).await {
                    Ok(Some(next)) => (ticket, answered) = (next.ticket, next.answered),
                    Ok(None) | Err(_) => return,
                },
            }
        }
    }

    /// How many batches wait for a slot (tests).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.state.lock().expect("committer poisoned").waiting.len()
    }

    /// Takes every waiting batch for the slot whose group began as start
    /// `began`, or closes the slot when none waits (under the same lock, so
    /// a batch handed in meanwhile is never stranded). The group taken
    /// begins now, unless the slot has only just opened (`opened`).
    fn next_group(&self, began: &mut u64, opened: bool) -> Option<Vec<Handed<R>>> {
        let mut state = self.state.lock().expect("committer poisoned");
        if state.waiting.is_empty() {
            state.starts.end(*began);
            return None;
        }
        if !opened {
            state.starts.end(*began);
            *began = state.starts.begin(Instant::now());
        }
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
        let mut left_out = Vec::new();
        for handed in group {
            match results.next() {
                Some(None) => left_out.push(handed),
                answers => {
                    let Handed {
                        lane, done, queue, ..
                    } = handed;
                    let key = lane.key.clone();
                    lane.answer(answers.flatten(), &self.orphans);
                    let _ = done.send(self.rejoin(queue, key));
                }
            }
        }
        if !left_out.is_empty() {
            self.admit_alone(left_out);
        }
    }

    /// Admits the batches a group left out (their rows were busy, or the
    /// group failed) each alone, waiting for its row, in a task of their
    /// own: no slot, and no lane's task, waits for a row lock. A few at a
    /// time, so a failed group of hundreds does not drain the pool. Each
    /// lane hears back only once its batch is answered, so a workspace's
    /// batches stay in order.
    fn admit_alone(&self, left_out: Vec<Handed<R>>) {
        let (admit, clock) = (self.admit.clone(), self.clock.clone());
        let orphans = self.orphans.clone();
        tokio::spawn(futures::StreamExt::for_each_concurrent(
            futures::stream::iter(left_out),
            ALONE_AT_ONCE,
            move |handed| {
                let (admit, clock, orphans) = (admit.clone(), clock.clone(), orphans.clone());
                async move {
                    let lane = &handed.lane;
                    let answers = admit.admit(&lane.key, &lane.requests, clock.now()).await;
                    handed.lane.answer(Some(answers), &orphans);
                    // Its lane's drain hands in what it queued meanwhile:
                    // no slot is held here to take it.
                    let _ = handed.done.send(None);
                }
            },
        ));
    }
}

/// A slot of the committer, held by the task admitting groups in it.
struct Slot<A: Admit<R>, R: StackRequest> {
    committer: Option<Arc<Committer<A, R>>>,
    /// The number of the start of the slot's current (or first) group.
    began: u64,
    /// The slot has only just opened: its first group began with it.
    opened: bool,
}

impl<A: Admit<R>, R: StackRequest> Slot<A, R> {
    /// A slot just opened, as start `began`.
    fn new(committer: Arc<Committer<A, R>>, began: u64) -> Self {
        Self {
            committer: Some(committer),
            began,
            opened: true,
        }
    }

    /// Admits one group, on the lane's own task, then hands the slot to a
    /// task of its own if more waits (or closes it): a lane's task never
    /// keeps admitting other keys' groups while its own next batch waits.
    async fn lead(mut self) {
        let committer = self.committer.clone().expect("a slot leads once");
        if let Some(group) = committer.next_group(&mut self.began, self.opened) {
            committer.admit_group(group).await;
            if let Some(next) = committer.next_group(&mut self.began, false) {
                self.committer = None;
                go_on(committer, self.began, Some(next));
                return;
            }
        }
        self.committer = None;
    }

    /// Admits `group`, then groups until none waits; the last look closes
    /// the slot.
    async fn lead_on(mut self, mut group: Option<Vec<Handed<R>>>) {
        let committer = self.committer.clone().expect("a slot leads once");
        while let Some(taken) = group {
            committer.admit_group(taken).await;
            group = committer.next_group(&mut self.began, false);
        }
        self.committer = None;
    }
}

/// The slot of start `began` goes on in a task of its own: with `next` if
/// it was already taken, else with whatever waits. The slot is built only
/// when the task runs: a task dropped unpolled (the runtime is ending) just
/// lets go. (Built out here, it would be dropped with the task and spawn
/// again, without end.)
fn go_on<A: Admit<R>, R: StackRequest>(
    committer: Arc<Committer<A, R>>,
    began: u64,
    next: Option<Vec<Handed<R>>>,
) {
    tokio::spawn(async move {
        let mut slot = Slot {
            committer: Some(committer.clone()),
            began,
            opened: false,
        };
        let next = next.or_else(|| committer.next_group(&mut slot.began, false));
        slot.lead_on(next).await
    });
}

impl<A: Admit<R>, R: StackRequest> Drop for Slot<A, R> {
    /// Dropped mid-group (its task was dropped): that group's transaction
    /// rolls back and its callers are told; the slot goes on in a task of
    /// its own, so no batch waits behind a slot nobody holds.
    fn drop(&mut self) {
        let Some(committer) = self.committer.take() else {
            return;
        };
        let began = self.began;
        match tokio::runtime::Handle::try_current() {
            // Its group ended with the task: the next one begins anew.
            Ok(_) => go_on(committer, began, None),
            Err(_) => committer
                .state
                .lock()
                .expect("committer poisoned")
                .starts
                .end(began),
        }
    }
}
