//! Server streams: following one cycle to its end (RestartWorkspace,
//! StopWorkspace, DeleteWorkspace), ending with its final event (C20), and
//! following a workspace (WatchWorkspace). Each is a task feeding a
//! channel; the stream ends when the task ends or the caller goes away —
//! closing a stream never cancels a cycle, which is durable (C13).

use std::{str::FromStr, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::convert::{self, ts};
use crate::domain::Event;
use crate::domain::EventKind;
use crate::{
    domain::{CycleId, CycleState, Generation, Goal, Outcome, WorkspaceId},
    engine::{
        Engine,
        events::{Received, Subscription},
        intent::{Admission, Verdict},
    },
    proto as pb,
    proto::restart_event::Event as Ev,
};

/// A stream of cycle events.
pub(super) type RestartStream = ReceiverStream<Result<pb::RestartEvent, Status>>;
/// A stream of workspace events.
pub(super) type WatchStream = ReceiverStream<Result<pb::WorkspaceEvent, Status>>;

/// What an open stream gets when the server shuts down: the cycle goes on
/// (durably); the caller can watch it again on another replica.
fn shutting_down() -> Status {
    super::status::shutting_down("the server is shutting down; the cycle continues")
}

/// How often a follower re-reads its cycle in case an event was missed.
const RECHECK: Duration = Duration::from_secs(5);

fn restart_event(
    cycle: Option<CycleId>,
    at: crate::domain::Timestamp,
    event: Ev,
) -> pb::RestartEvent {
    pb::RestartEvent {
        cycle_id: cycle.map(|c| c.to_string()).unwrap_or_default(),
        at: Some(ts(at)),
        event: Some(event),
    }
}

fn terminal(outcome: Outcome, generation: Generation, config_version: u64, reason: String) -> Ev {
    match outcome {
        Outcome::Succeeded => Ev::Online(pb::restart_event::Online {
            generation: generation.0,
            config_version,
        }),
        Outcome::Failed => Ev::Failed(pb::restart_event::Failed {
            generation: generation.0,
            reason,
        }),
        Outcome::Stopped => Ev::Stopped(pb::restart_event::Stopped {
            generation: generation.0,
        }),
        Outcome::Deleted => Ev::Deleted(pb::restart_event::Deleted {}),
    }
}

/// The stream for an admitted request: its admission (stamped `arrived`,
/// when the request came in), then (if a cycle serves it) that cycle's
/// phases up to its end. `events` must have been subscribed before the
/// request was submitted, so nothing is missed.
pub(super) fn cycle_stream(
    engine: Arc<Engine>,
    admission: Admission,
    events: Subscription,
    arrived: crate::domain::Timestamp,
) -> RestartStream {
    match first_event(admission, arrived) {
        Some(first) => stream_from(engine, first, events, false),
        None => ReceiverStream::new(mpsc::channel(1).1),
    }
}

/// The first event of a request's stream: how it was admitted (`None` for
/// an admission that answers nothing).
pub(super) fn first_event(
    admission: Admission,
    now: crate::domain::Timestamp,
) -> Option<pb::RestartEvent> {
    let (first, cycle) = match admission.verdict {
        Verdict::Accepted {
            cycle,
            generation,
            goal,
        } => (
            Ev::Accepted(pb::restart_event::Accepted {
                cycle_id: cycle.to_string(),
                // The generation the cycle provisions: a stop or delete
                // provisions none (the engine's claim names the one it
                // stops).
                generation: match goal {
                    Goal::Provision => generation.0,
                    Goal::Stop | Goal::Delete => 0,
                },
            }),
            Some(cycle),
        ),
        Verdict::Coalesced {
            cycle, not_before, ..
        } => (
            Ev::Coalesced(pb::restart_event::Coalesced {
                cycle_id: cycle.to_string(),
                not_before: Some(ts(not_before)),
            }),
            Some(cycle),
        ),
        Verdict::Dropped { reason, until } => (
            Ev::Debounced(pb::restart_event::Debounced {
                until: until.map(ts),
                reason: reason.describe().to_owned(),
            }),
            None,
        ),
        Verdict::Stored => (
            Ev::Debounced(pb::restart_event::Debounced {
                until: None,
                reason: "the workspace is stopped; the change is stored for its next start".into(),
            }),
            None,
        ),
        Verdict::AlreadyDeleted => (Ev::Deleted(pb::restart_event::Deleted {}), None),
        Verdict::Idle => return None,
    };
    Some(restart_event(cycle, now, first))
}

/// `first`, then the phases of the cycle it names up to its end. With
/// `resync_first` (a replayed answer, whose cycle may be long over) the
/// cycle's state is read from Postgres before waiting for events.
pub(super) fn stream_from(
    engine: Arc<Engine>,
    first: pb::RestartEvent,
    mut events: Subscription,
    resync_first: bool,
) -> RestartStream {
    let (tx, rx) = mpsc::channel(16);
    let cycle = match &first.event {
        Some(Ev::Accepted(_) | Ev::Coalesced(_)) => CycleId::from_str(&first.cycle_id).ok(),
        _ => None,
    };
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let Some(cycle) = cycle else { return };
        follow_cycle(&engine, cycle, &mut events, &tx, resync_first).await;
    });
    ReceiverStream::new(rx)
}

async fn follow_cycle(
    engine: &Engine,
    cycle: CycleId,
    events: &mut Subscription,
    tx: &mpsc::Sender<Result<pb::RestartEvent, Status>>,
    mut resync: bool,
) {
    loop {
        let event = if std::mem::take(&mut resync) {
            None
        } else {
            tokio::select! {
            received = events.recv() => match received {
                Received::Event(event) => Some(event),
                Received::Lagged | Received::Closed => None,
            },
            _ = tokio::time::sleep(RECHECK) => None,
            _ = tx.closed() => return,
            _ = engine.closing() => {
                let _ = tx.send(Err(shutting_down())).await;
                return;
            }
            }
        };
        match event.as_deref() {
            Some(Event {
                at,
                kind:
                    EventKind::Cycle {
                        cycle: c,
                        state,
                        generation,
                        phase,
                        outcome,
                        reason,
                        config_version,
                    },
                ..
            }) if *c == cycle => {
                let message = match (state, phase, outcome) {
                    (CycleState::Running, Some(phase), _) => {
                        Ev::Phase(pb::restart_event::PhaseChanged {
                            phase: convert::phase(*phase) as i32,
                            generation: generation.0,
                        })
                    }
                    (CycleState::Ended, _, Some(outcome)) => {
                        let end = terminal(*outcome, *generation, config_version.0, reason.clone());
                        let _ = tx.send(Ok(restart_event(Some(cycle), *at, end))).await;
                        return;
                    }
                    _ => continue,
                };
                if tx
                    .send(Ok(restart_event(Some(cycle), *at, message)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(Event {
                kind: EventKind::Resync,
                ..
            })
            | None => {
                // Events may have been missed: ask Postgres how the cycle is.
                if let Ok(record) = engine.store().cycle(cycle).await {
                    if let (CycleState::Ended, Some(outcome)) = (record.state, record.outcome) {
                        let end = terminal(
                            outcome,
                            record.generation,
                            record.config_version.0,
                            record.reason,
                        );
                        let at = record.ended_at.unwrap_or(record.created_at);
                        let _ = tx.send(Ok(restart_event(Some(cycle), at, end))).await;
                        return;
                    }
                }
            }
            Some(_) => {}
        }
    }
}

/// The WatchWorkspace stream: a snapshot, then every change.
pub(super) fn watch_stream(
    engine: Arc<Engine>,
    workspace: WorkspaceId,
    mut events: Subscription,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let snapshot = |engine: Arc<Engine>| async move {
            let record = engine.store().workspace(workspace).await?;
            Ok::<_, crate::domain::Error>(pb::WorkspaceEvent {
                at: Some(ts(engine.store().clock().now())),
                workspace_id: workspace.to_string(),
                event: Some(pb::workspace_event::Event::Snapshot(convert::workspace(
                    &record,
                ))),
            })
        };
        match snapshot(engine.clone()).await {
            Ok(first) => {
                let deleted = shows_deleted(&first);
                if tx.send(Ok(first)).await.is_err() || deleted {
                    return;
                }
            }
            Err(err) => {
                let _ = tx.send(Err(err.into())).await;
                return;
            }
        }
        loop {
            let received = tokio::select! {
                received = events.recv() => received,
                _ = tx.closed() => return,
                _ = engine.closing() => {
                    let _ = tx.send(Err(shutting_down())).await;
                    return;
                }
            };
            let message = match received {
                Received::Event(event) => match watch_event(&event) {
                    Some(message) => message,
                    None => match snapshot(engine.clone()).await {
                        Ok(message) => message,
                        Err(_) => continue,
                    },
                },
                Received::Lagged => match snapshot(engine.clone()).await {
                    Ok(message) => message,
                    Err(_) => continue,
                },
                Received::Closed => return,
            };
            let deleted = shows_deleted(&message);
            if tx.send(Ok(message)).await.is_err() || deleted {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The watch's final event: the workspace is DELETED, whether a live
/// status change or a snapshot (a resync, or the first) says so (C20).
fn shows_deleted(message: &pb::WorkspaceEvent) -> bool {
    let deleted = pb::WorkspaceStatus::Deleted as i32;
    match &message.event {
        Some(pb::workspace_event::Event::Status(s)) => s.status == deleted,
        Some(pb::workspace_event::Event::Snapshot(w)) => w.status == deleted,
        _ => false,
    }
}

/// An engine event on the wire; `None` for a resync (answered with a fresh
/// snapshot).
fn watch_event(event: &Event) -> Option<pb::WorkspaceEvent> {
    use pb::workspace_event::Event as W;
    let body = match &event.kind {
        EventKind::Status {
            status,
            reason,
            generation,
        } => W::Status(pb::StatusChanged {
            status: convert::status(*status) as i32,
            reason: reason.clone(),
            generation: generation.0,
        }),
        EventKind::Cycle {
            cycle,
            state,
            generation,
            phase,
            outcome,
            reason,
            config_version,
        } => W::Cycle(pb::CycleChanged {
            cycle_id: cycle.to_string(),
            state: convert::cycle_state(*state) as i32,
            generation: generation.0,
            phase: phase.map(|p| convert::phase(p) as i32).unwrap_or_default(),
            outcome: outcome
                .map(|o| convert::outcome(o) as i32)
                .unwrap_or_default(),
            reason: reason.clone(),
            config_version: config_version.0,
        }),
        EventKind::Trigger {
            trigger,
            handling,
            cycle,
            reason,
            count,
        } => W::Trigger(pb::TriggerHandled {
            trigger: convert::trigger(*trigger) as i32,
            handling: convert::handling(*handling) as i32,
            cycle_id: cycle.map(|c| c.to_string()).unwrap_or_default(),
            reason: reason.clone(),
            count: *count,
        }),
        EventKind::Agent {
            generation,
            config_version,
            endpoint,
        } => W::Agent(pb::AgentRegistered {
            generation: generation.0,
            config_version: config_version.0,
            endpoint: endpoint.clone(),
        }),
        EventKind::Resync => return None,
    };
    Some(pb::WorkspaceEvent {
        at: Some(ts(event.at)),
        workspace_id: event.workspace.to_string(),
        event: Some(body),
    })
}

#[cfg(test)]
mod tests;
