//! The in-process bus that hands workspace events to watchers and waiting
//! cycles, one channel per watched workspace that vanishes when idle (C15).
//!
//! Events are published through Postgres (`NOTIFY` inside the transaction
//! that made the change, see `store::notify`), so they are sent only if the
//! change committed, in commit order, to every replica. Each replica's
//! listener feeds them into its [`EventBus`]; there is no second, local path
//! that could disagree with it.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::keyed::{KeyedSlots, SlotRef};
use crate::domain::{Event, EventKind, Timestamp, WorkspaceId};

/// How many events a slow subscriber may fall behind before it must resync.
const SUBSCRIBER_BUFFER: usize = 256;

/// Per-workspace broadcast channels that exist only while someone listens.
#[derive(Clone, Default)]
pub struct EventBus {
    channels: KeyedSlots<WorkspaceId, broadcast::Sender<Arc<Event>>>,
}

/// A subscription to one workspace's events; keeps its channel alive.
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Event>>,
    _slot: Option<SlotRef<WorkspaceId, broadcast::Sender<Arc<Event>>>>,
}

/// What a subscriber gets next.
#[derive(Debug)]
pub enum Received {
    /// The next event.
    Event(Arc<Event>),
    /// The subscriber fell behind and missed events: re-read state.
    Lagged,
    /// The bus is gone (shutdown).
    Closed,
}

impl Subscription {
    /// Waits for the next event.
    pub async fn recv(&mut self) -> Received {
        match self.receiver.recv().await {
            Ok(event) => Received::Event(event),
            Err(broadcast::error::RecvError::Lagged(_)) => Received::Lagged,
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts receiving `workspace`'s events from now on.
    pub fn subscribe(&self, workspace: WorkspaceId) -> Subscription {
        let slot = self
            .channels
            .acquire(&workspace, || broadcast::channel(SUBSCRIBER_BUFFER).0);
        Subscription {
            receiver: slot.subscribe(),
            _slot: Some(slot),
        }
    }

    /// Hands an event to the workspace's subscribers (if any).
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        if let Some(channel) = self.channels.get(&event.workspace) {
            let _ = channel.send(event);
        }
    }

    /// Tells every subscriber that events may have been missed.
    pub fn resync_all(&self, at: Timestamp) {
        let workspaces: Vec<WorkspaceId> = self.channels.keys();
        for workspace in workspaces {
            self.publish(Event {
                workspace,
                at,
                kind: EventKind::Resync,
            });
        }
    }

    /// How many workspaces have subscribers now (C15 checks).
    pub fn live_channels(&self) -> usize {
        self.channels.len()
    }
}

impl crate::store::listener::EventSink for EventBus {
    fn publish(&self, event: Event) {
        EventBus::publish(self, event);
    }

    fn resync_all(&self, at: Timestamp) {
        EventBus::resync_all(self, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(workspace: WorkspaceId) -> Event {
        Event {
            workspace,
            at: chrono::Utc::now(),
            kind: EventKind::Resync,
        }
    }

    #[tokio::test]
    async fn subscribers_get_their_workspace_only_and_channels_go_when_unwatched() {
        let bus = EventBus::new();
        let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
        let mut sub = bus.subscribe(a);
        bus.publish(event(b));
        bus.publish(event(a));
        match sub.recv().await {
            Received::Event(e) => assert_eq!(e.workspace, a),
            other => panic!("{other:?}"),
        }
        assert_eq!(bus.live_channels(), 1);
        drop(sub);
        assert_eq!(bus.live_channels(), 0);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged() {
        let bus = EventBus::new();
        let ws = WorkspaceId::new();
        let mut sub = bus.subscribe(ws);
        for _ in 0..SUBSCRIBER_BUFFER + 10 {
            bus.publish(event(ws));
        }
        assert!(matches!(sub.recv().await, Received::Lagged));
    }
}
