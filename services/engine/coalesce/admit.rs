//! What the coalesce layer asks of durable admission: a batch per key, or
//! a group of batches at once, and a signal when a group's commit is sent
//! (C2, C4, C13).

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::{
    domain::{ConfigVersion, CycleId, Error, Timestamp},
    engine::intent::{Admission, StackRequest},
};

/// The outcome of admitting one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ticket {
    /// Admitted into `cycle`, which may start now: go on to the gate.
    Ready {
        /// The cycle.
        cycle: CycleId,
        /// This request opened it.
        opened: bool,
        /// The config version after this request.
        config_version: Option<ConfigVersion>,
    },
    /// The final answer.
    Done(Admission),
}

/// One key's requests, in arrival order, as handed to [`Admit`].
pub struct Batch<'a, R: StackRequest> {
    /// The key every request is for.
    pub key: &'a R::Key,
    /// The requests.
    pub requests: &'a [R],
}

/// The answers to one [`Batch`]: one per request, or an `Err` for the
/// whole batch (nothing of it was admitted).
pub type BatchAnswers = Result<Vec<Result<Ticket, Error>>, Error>;

/// A group's answer to one of its batches, or `None` when the batch was
/// left out because admitting it would have to wait (its row is busy): its
/// lane then admits it alone through [`Admit::admit`], outside the group's
/// slot, so a lock wait never holds back the other keys (C4).
pub type GroupAnswer = Option<BatchAnswers>;

/// Durable admission of batches of requests.
#[async_trait]
pub trait Admit<R: StackRequest>: Send + Sync + 'static {
    /// Admits `batch` (all for `key`, in arrival order) in one durable step,
    /// returning one result per request. An `Err` for the whole call means
    /// nothing was admitted.
    async fn admit(&self, key: &R::Key, batch: &[R], now: Timestamp) -> BatchAnswers;

    /// Admits several keys' batches (no key twice) together — one durable
    /// step for all where the implementation can (group commit) — with one
    /// answer per batch, in order. `committing` is told once the step's
    /// commit is on its way (see [`Committing`]). One after the other
    /// unless overridden.
    async fn admit_group(
        &self,
        group: &[Batch<'_, R>],
        now: Timestamp,
        committing: Committing,
    ) -> Vec<GroupAnswer> {
        drop(committing);
        let mut answers = Vec::with_capacity(group.len());
        for batch in group {
            answers.push(Some(self.admit(batch.key, batch.requests, now).await));
        }
        answers
    }
}

/// Told by [`Admit::admit_group`] once its group's writes and commit are
/// on their way. From then on the group only waits for Postgres to flush
/// it, and holds no row the next group needs (a lane has one batch in the
/// committer at a time, so the next group's rows are other rows): the
/// committer lets the next group run its statements while this one's
/// commit is flushed. Dropped untold, the group keeps its slot until it is
/// answered.
pub struct Committing(Option<oneshot::Sender<()>>);

impl Committing {
    /// A signal that reaches `heard`.
    pub(super) fn new(heard: oneshot::Sender<()>) -> Self {
        Self(Some(heard))
    }

    /// The group's commit has been sent.
    pub fn sent(mut self) {
        if let Some(heard) = self.0.take() {
            let _ = heard.send(());
        }
    }
}
