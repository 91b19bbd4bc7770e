//! Publishing events: `NOTIFY` inside the transaction that made the change,
//! so listeners hear only of committed changes, in commit order.

use deadpool_postgres::GenericClient;

use super::db;
use crate::engine::{EngineError, events::Event};

/// The channel every replica listens on.
pub(crate) const CHANNEL: &str = "wl_events";

/// Largest payload Postgres accepts is 8000 bytes; events are far smaller,
/// but a too-long reason is cut rather than failing the transaction.
const MAX_PAYLOAD: usize = 7900;

/// Queues `events` for delivery when the surrounding transaction commits.
pub(crate) async fn publish(
    client: &impl GenericClient,
    events: &[Event],
) -> Result<(), EngineError> {
    if events.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = events
        .iter()
        .filter_map(|event| serde_json::to_string(event).ok())
        .filter(|payload| payload.len() <= MAX_PAYLOAD)
        .collect();
    let statement = client
        .prepare_cached("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
        .await
        .map_err(db)?;
    client
        .execute(&statement, &[&CHANNEL, &payloads])
        .await
        .map_err(db)?;
    Ok(())
}
