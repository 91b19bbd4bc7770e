//! A slot of the group committer: the task that holds it admits groups one
//! after another until none waits, and lets the next group have it as soon
//! as its own group's commit is on its way (one group ahead at a time; C4,
//! C13).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use super::{Committer, Handed};
use crate::engine::{coalesce::Admit, intent::StackRequest};

/// The one group allowed to commit while the next one runs; released when
/// that group is answered (or its task dropped).
pub(super) struct Ahead<'a>(&'a AtomicBool);

impl<'a> Ahead<'a> {
    /// Taken if no other group is ahead.
    pub(super) fn take(ahead: &'a AtomicBool) -> Option<Self> {
        (!ahead.swap(true, Ordering::AcqRel)).then_some(Self(ahead))
    }
}

impl Drop for Ahead<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A slot of the committer, held by the task admitting groups in it.
pub(super) struct Slot<A: Admit<R>, R: StackRequest> {
    committer: Option<Arc<Committer<A, R>>>,
    /// The number of the start of the slot's current (or first) group.
    began: u64,
    /// The slot has only just opened: its first group began with it.
    opened: bool,
}

impl<A: Admit<R>, R: StackRequest> Slot<A, R> {
    /// A slot just opened, as start `began`.
    pub(super) fn new(committer: Arc<Committer<A, R>>, began: u64) -> Self {
        Self {
            committer: Some(committer),
            began,
            opened: true,
        }
    }

    /// Admits one group, on the lane's own task, then hands the slot to a
    /// task of its own if more waits (or closes it): a lane's task never
    /// keeps admitting other keys' groups while its own next batch waits.
    pub(super) async fn lead(mut self) {
        let committer = self.committer.clone().expect("a slot leads once");
        let Some(group) = committer.next_group(&mut self.began, self.opened) else {
            self.committer = None;
            return;
        };
        let Some(mut slot) = self.admit(&committer, group).await else {
            return;
        };
        let_answered_lanes_hand_in().await;
        if let Some(next) = committer.next_group(&mut slot.began, false) {
            slot.committer = None;
            go_on(committer, slot.began, Some(next));
            return;
        }
        slot.committer = None;
    }

    /// Admits `group`, then groups until none waits; the last look closes
    /// the slot.
    async fn lead_on(self, mut group: Option<Vec<Handed<R>>>) {
        let committer = self.committer.clone().expect("a slot leads once");
        let mut slot = self;
        while let Some(taken) = group {
            let Some(held) = slot.admit(&committer, taken).await else {
                return;
            };
            slot = held;
            let_answered_lanes_hand_in().await;
            group = committer.next_group(&mut slot.began, false);
        }
        slot.committer = None;
    }

    /// Admits `group` in this slot. Once the group's commit is on its way
    /// the slot may go on to the next group in a task of its own (it is
    /// dropped, see `Drop`): then `None`, and this task only answers.
    async fn admit(self, committer: &Committer<A, R>, group: Vec<Handed<R>>) -> Option<Self> {
        let mut held = Some(self);
        committer.admit_group(group, || drop(held.take())).await;
        held
    }
}

/// Gives the lanes just answered a turn before the slot takes its next
/// group: each hands in the batch its callers queued while its last one
/// was admitted, and so joins this group instead of the one after it (a
/// lane has one batch in the committer at a time). Only batching depends
/// on it, never correctness: a lane that misses it joins the next group.
async fn let_answered_lanes_hand_in() {
    tokio::task::yield_now().await;
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
    /// its own, so no batch waits behind a slot nobody holds. Dropped by
    /// its group once that group's commit is on its way: the next group
    /// begins while it commits.
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
