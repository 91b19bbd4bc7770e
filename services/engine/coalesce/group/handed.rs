//! A lane's batch as the group committer holds it, and what the lane's
//! drain hears when it is answered (C2, C13): when the lane queued more
//! meanwhile, the committer hands that in for it at once, so the lane joins
//! the very next group without waiting for its drain to be scheduled.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::super::{GroupAnswer, Lane, Orphans, Reply, Ticket};
use crate::{
    domain::Error,
    engine::intent::{StackRequest, Stage},
};

/// What a lane's drain hears when its batch is answered: `None`, or that
/// the requests its lane queued meanwhile were handed in for it as another
/// batch, answered in turn through `answered`.
pub(in crate::engine::coalesce) type Rejoined = Option<Rejoin>;

/// The lane's next batch, handed in by the committer.
pub(in crate::engine::coalesce) struct Rejoin {
    /// Its ticket.
    pub(in crate::engine::coalesce) ticket: u64,
    /// Its answer.
    pub(in crate::engine::coalesce) answered: oneshot::Receiver<Rejoined>,
}

/// One lane's batch, with the callers' replies and the lane's wake-up.
pub(in crate::engine::coalesce) struct Handed<R: StackRequest> {
    pub(super) ticket: u64,
    pub(super) lane: LaneBatch<R>,
    /// The lane's drain, told when the batch is answered.
    pub(super) done: oneshot::Sender<Rejoined>,
    /// The lane, whose queue the committer hands in when it answers.
    pub(super) queue: Arc<Lane<R>>,
}

/// A batch with its callers' replies.
pub(super) struct LaneBatch<R: StackRequest> {
    pub(super) key: R::Key,
    pub(super) requests: Vec<R>,
    pub(super) replies: Vec<Reply<R>>,
}

impl<R: StackRequest> LaneBatch<R> {
    /// Sends each caller its answer. A request whose caller went away while
    /// it was admitted, and whose answer is to start its cycle, goes on to
    /// the gate without it (`orphans`): the cycle starts now, not at the
    /// scheduler's next sweep.
    pub(super) fn answer(self, answers: GroupAnswer, orphans: &Orphans<R>) {
        let expected = self.requests.len();
        let answers = match answers {
            Some(Ok(answers)) if answers.len() == expected => answers,
            Some(Err(err)) => vec![Err(err); expected],
            Some(Ok(_)) | None => {
                vec![Err(Error::Internal("admission lost a request".into())); expected]
            }
        };
        for ((request, reply), answer) in self.requests.into_iter().zip(self.replies).zip(answers) {
            if let Err(unheard) = reply.send(Box::new((request, answer)))
                && let (mut request, Ok(Ticket::Ready { cycle, opened, .. })) = *unheard
                && let Some(go_on) = orphans.get()
            {
                request.set_stage(Stage::Admitted { cycle, opened });
                go_on(request);
            }
        }
    }
}
