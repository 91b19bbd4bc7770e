//! Requests the debounce dropped before admission (C9): admission only
//! counts them, with the rest of their group, and answers them once that
//! committed. A batch of nothing but drops needs no row lock.

use crate::{
    domain::{Error, Handling, WorkspaceId},
    engine::{
        coalesce::Ticket,
        intent::{Admission, Intent, Stage, Verdict},
    },
    store::{Tally, WorkspaceWrites},
};

/// A batch whose every request the debounce dropped (C9): its answers and
/// its count, recorded without the row lock; `None` if any request of it
/// is to be admitted.
pub(super) fn dropped_batch(
    workspace: WorkspaceId,
    batch: &[Intent],
) -> Option<(Vec<Result<Ticket, Error>>, WorkspaceWrites<'static>)> {
    let mut tally = Tally::default();
    let results = batch
        .iter()
        .map(|intent| record_drop(intent, &mut tally))
        .collect::<Option<Vec<_>>>()?;
    Some((results, WorkspaceWrites::counted(workspace, tally)))
}

/// Counts a request the debounce dropped and answers it; `None` for any
/// other request.
pub(super) fn record_drop(intent: &Intent, tally: &mut Tally) -> Option<Result<Ticket, Error>> {
    let Stage::Dropped { reason, until } = intent.stage else {
        return None;
    };
    tally.count(intent.trigger, Handling::Dropped, None, reason.describe());
    Some(Ok(Ticket::Done(Admission::of(Verdict::Dropped {
        reason,
        until,
    }))))
}
