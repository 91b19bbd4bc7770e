//! Publishing events: `NOTIFY` inside the transaction that made the change,
//! so listeners hear only of committed changes, in commit order.
//! Contracts: C14, C20.

use super::statement::Statement;
use crate::domain::{Event, EventKind};

/// The channel every replica listens on.
pub(crate) const CHANNEL: &str = "wl_events";

/// Largest payload Postgres accepts is 8000 bytes; events are far smaller,
/// but a too-long text is cut (and, failing that, the event is replaced by
/// a resync) rather than dropped: a stream must never miss its final event
/// (C20).
const MAX_PAYLOAD: usize = 7900;

/// How much of a free text an event carries when the whole would not fit.
const CUT_TEXT: usize = 1000;

/// The event as a payload that fits: texts cut if needed, else a resync,
/// which makes every listener re-read what it follows from the database.
pub(super) fn payload(event: &Event) -> Option<String> {
    let whole = serde_json::to_string(event).ok()?;
    if whole.len() <= MAX_PAYLOAD {
        return Some(whole);
    }
    let mut cut = event.clone();
    match &mut cut.kind {
        EventKind::Status { reason, .. }
        | EventKind::Cycle { reason, .. }
        | EventKind::Trigger { reason, .. } => shorten(reason),
        EventKind::Agent { endpoint, .. } => shorten(endpoint),
        EventKind::Resync => {}
    }
    let cut = serde_json::to_string(&cut).ok()?;
    if cut.len() <= MAX_PAYLOAD {
        return Some(cut);
    }
    serde_json::to_string(&Event {
        workspace: event.workspace,
        at: event.at,
        kind: EventKind::Resync,
    })
    .ok()
}

fn shorten(text: &mut String) {
    if text.len() > CUT_TEXT {
        let mut end = CUT_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// The statement that queues `events` for delivery when the surrounding
/// transaction commits; `None` when there is nothing to send.
pub(super) fn publish(events: &[Event]) -> Option<Statement<'static>> {
    if events.is_empty() {
        return None;
    }
    let payloads: Vec<String> = events.iter().filter_map(payload).collect();
    Some(Statement::new(
        "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
        vec![Box::new(CHANNEL), Box::new(payloads)],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Generation, WorkspaceId, WorkspaceStatus};

    #[test]
    fn an_event_too_long_for_notify_is_cut_not_dropped() {
        let event = Event {
            workspace: WorkspaceId::new(),
            at: chrono::Utc::now(),
            kind: EventKind::Status {
                status: WorkspaceStatus::Failed,
                reason: "é".repeat(10_000),
                generation: Generation(2),
            },
        };
        let sent = payload(&event).expect("a payload");
        assert!(sent.len() <= MAX_PAYLOAD);
        let back: Event = serde_json::from_str(&sent).unwrap();
        assert!(matches!(
            back.kind,
            EventKind::Status {
                status: WorkspaceStatus::Failed,
                ..
            }
        ));
    }
}
