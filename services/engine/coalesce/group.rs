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

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Admit, Batch, Reply};
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

/// One lane's batch, with the callers' replies and the lane's wake-up.
struct Handed<R: StackRequest> {
    key: R::Key,
    requests: Vec<R>,
    replies: Vec<Reply<R>>,
    done: oneshot::Sender<()>,
}

struct State<R: StackRequest> {
    waiting: Vec<Handed<R>>,
    in_flight: usize,
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
                in_flight: 0,
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
        let lead = {
            let mut state = self.state.lock().expect("committer poisoned");
            state.waiting.push(Handed {
                key,
                requests,
                replies,
                done,
            });
            let free = state.in_flight < MAX_IN_FLIGHT;
            if free {
                state.in_flight += 1;
            }
            free
        };
        if lead {
            Slot(Some(self.clone())).lead().await;
        }
        // Answered by this task just now, or by another slot's group.
        let _ = answered.await;
    }

    /// How many batches wait for a slot (tests).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.state.lock().expect("committer poisoned").waiting.len()
    }

    /// Takes every waiting batch, or frees the slot when none waits (under
    /// the same lock, so a batch handed in meanwhile is never stranded).
    fn next_group(&self) -> Option<Vec<Handed<R>>> {
        let mut state = self.state.lock().expect("committer poisoned");
        if state.waiting.is_empty() {
            state.in_flight -= 1;
            return None;
        }
        Some(std::mem::take(&mut state.waiting))
    }

    async fn admit_group(&self, group: Vec<Handed<R>>) {
        let results = {
            let batches: Vec<Batch<'_, R>> = group
                .iter()
                .map(|handed| Batch {
                    key: &handed.key,
                    requests: &handed.requests,
                })
                .collect();
            self.admit.admit_group(&batches, self.clock.now()).await
        };
        let mut results = results.into_iter();
        for handed in group {
            let expected = handed.requests.len();
            let answers = match results.next() {
                Some(Ok(answers)) if answers.len() == expected => answers,
                Some(Err(err)) => vec![Err(err); expected],
                Some(Ok(_)) | None => {
                    vec![Err(Error::Internal("admission lost a request".into())); expected]
                }
            };
            for ((request, reply), answer) in
                handed.requests.into_iter().zip(handed.replies).zip(answers)
            {
                let _ = reply.send((request, answer));
            }
            let _ = handed.done.send(());
        }
    }
}

/// A slot of the committer, held by the task admitting groups in it.
struct Slot<A: Admit<R>, R: StackRequest>(Option<Arc<Committer<A, R>>>);

impl<A: Admit<R>, R: StackRequest> Slot<A, R> {
    /// Admits groups until none waits; the last look frees the slot.
    async fn lead(mut self) {
        let committer = self.0.clone().expect("a slot leads once");
        while let Some(group) = committer.next_group() {
            committer.admit_group(group).await;
        }
        self.0 = None;
    }
}

impl<A: Admit<R>, R: StackRequest> Drop for Slot<A, R> {
    /// Dropped mid-group (its task was dropped): that group's transaction
    /// rolls back and its callers are told; the slot goes on in a task of
    /// its own, so no batch waits behind a slot nobody holds.
    fn drop(&mut self) {
        let Some(committer) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // The slot is rebuilt only when the task runs: a task dropped
                // unpolled (the runtime is ending) just lets go.
                runtime.spawn(async move { Slot(Some(committer)).lead().await });
            }
            Err(_) => {
                committer
                    .state
                    .lock()
                    .expect("committer poisoned")
                    .in_flight -= 1
            }
        }
    }
}
