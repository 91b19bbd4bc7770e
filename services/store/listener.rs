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
    let (messages_tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            let stop = message.is_err();
            if messages_tx.send(message).is_err() || stop {
                break;
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    let result = loop {
        match messages.recv().await {
            Some(Ok(AsyncMessage::Notification(note))) => {
                match serde_json::from_str::<Event>(note.payload()) {
                    Ok(event) => bus.publish(event),
                    Err(err) => tracing::warn!(%err, "unreadable event payload"),
                }
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => break Err(err),
            None => break Ok(()),
        }
    };
    driver.abort();
    result
}
