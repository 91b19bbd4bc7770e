//! Each replica's ear on Postgres: one dedicated connection that `LISTEN`s
//! for events and hands them to the in-process bus. If the connection
//! drops, it reconnects with backoff and tells every subscriber to resync,
//! since events may have been missed meanwhile.
//! Contracts: C14, C20.

use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::{Store, notify::CHANNEL};
use crate::domain::{Event, Timestamp};

/// Where the listener hands what it hears (the engine's event bus).
pub trait EventSink: Send + Sync + 'static {
    /// An event some replica committed.
    fn publish(&self, event: Event);
    /// Events may have been missed: every subscriber should re-read state.
    fn resync_all(&self, at: Timestamp);
}

/// Runs until `shutdown` is cancelled. `ready` fires once the first
/// `LISTEN` is in place, so nothing published after start-up is missed.
pub async fn run(
    store: Store,
    bus: impl EventSink,
    shutdown: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut delay = Duration::from_millis(100);
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = listen_once(&store, &bus, &mut ready) => outcome,
        };
        if let Err(err) = outcome {
            tracing::warn!(%err, "event listener lost its connection; reconnecting");
        }
        bus.resync_all(store.clock().now());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    store: &Store,
    bus: &impl EventSink,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = store.pg_config().connect(NoTls).await?;
    // This task drives the connection itself and hands each notification
    // to the bus as it reads it: no task in between, so an event reaches
    // its subscribers one scheduling hop after Postgres sent it.
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen_sql = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&listen_sql);
    tokio::pin!(listen);
    loop {
        tokio::select! {
            listened = &mut listen => {
                listened?;
                break;
            }
            message = messages.next() => match message {
                Some(Ok(message)) => hand_over(bus, message),
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            },
        }
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    // `client` lives to the end: the connection lasts as long as it does.
    while let Some(message) = messages.next().await {
        hand_over(bus, message?);
    }
    Ok(())
}

fn hand_over(bus: &impl EventSink, message: AsyncMessage) {
    if let AsyncMessage::Notification(note) = message {
        match serde_json::from_str::<Event>(note.payload()) {
            Ok(event) => bus.publish(event),
            Err(err) => tracing::warn!(%err, "unreadable event payload"),
        }
    }
}
