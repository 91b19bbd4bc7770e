//! The audit log: one row per mutation a caller made, written in the
//! transaction that admits it. The detail names what changed (a secret's
//! name, a file's path and size, a workspace's name) and never a secret
//! value.

use deadpool_postgres::GenericClient;
use serde_json::json;

use super::db;
use crate::{
    domain::{Timestamp, WorkspaceId},
    engine::{
        EngineError,
        coalesce::Ticket,
        intent::{Change, Intent},
    },
};

/// What the audit log says a request changed.
fn detail(intent: &Intent) -> serde_json::Value {
    let mut detail = json!({
        "trigger": intent.trigger.as_str(),
        "reason": intent.reason,
    });
    match &intent.change {
        Some(Change::SetSecret { name, .. }) => detail["secret"] = json!(name),
        Some(Change::DeleteSecret { name }) => detail["secret"] = json!(name),
        Some(Change::WriteFile { path, content }) => {
            detail["file"] = json!(path);
            detail["bytes"] = json!(content.len());
        }
        None => {}
    }
    if let Some(creation) = &intent.creation {
        detail["name"] = json!(creation.name);
        detail["backend"] = json!(creation.backend.as_str());
    }
    detail
}

/// Records every request of `batch` that a caller made and that was
/// admitted (a refused request changed nothing and is not recorded).
pub(super) async fn record(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
    batch: &[Intent],
    results: &[Result<Ticket, EngineError>],
    now: Timestamp,
) -> Result<(), EngineError> {
    let (mut actors, mut actions, mut details) = (Vec::new(), Vec::new(), Vec::new());
    for (intent, result) in batch.iter().zip(results) {
        if let (Some(audit), Ok(_)) = (&intent.audit, result) {
            actors.push(audit.actor.as_str());
            actions.push(audit.action);
            details.push(detail(intent));
        }
    }
    if actors.is_empty() {
        return Ok(());
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO audit_log (at, actor, action, workspace_id, detail)
             SELECT $1, actor, action, $2, detail
             FROM unnest($3::text[], $4::text[], $5::jsonb[]) AS t(actor, action, detail)",
        )
        .await
        .map_err(db)?;
    tx.execute(
        &insert,
        &[&now, &workspace.as_uuid(), &actors, &actions, &details],
    )
    .await
    .map_err(db)?;
    Ok(())
}
