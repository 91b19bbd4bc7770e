//! The audit log: one row per mutation a caller made, written in the
//! transaction that admits it. The detail names what changed (a secret's
//! name, a file's path and size, a workspace's name) and never a secret
//! value.
//! Contracts: C13 (the audit row commits with the change).

use serde_json::json;

use super::{db, statement::Statement};
use crate::domain::{
    Error, Timestamp, Trigger, WorkspaceId,
    change::{Audited, Change, Creation},
};

/// One admitted mutation a caller made, as the audit log records it.
#[derive(Clone, Copy, Debug)]
pub struct AuditRow<'a> {
    /// Who, and through which RPC.
    pub by: &'a Audited,
    /// The trigger the request carried.
    pub trigger: Trigger,
    /// The caller's reason.
    pub reason: &'a str,
    /// The config change, if any.
    pub change: Option<&'a Change>,
    /// The workspace created, if any.
    pub creation: Option<&'a Creation>,
}

/// What the audit log says a request changed: names, paths and sizes, never
/// a value.
fn detail(row: &AuditRow<'_>) -> serde_json::Value {
    let mut detail = json!({
        "trigger": row.trigger.as_str(),
        "reason": row.reason,
    });
    match row.change {
        Some(Change::SetSecret { name, .. }) => detail["secret"] = json!(name),
        Some(Change::DeleteSecret { name }) => detail["secret"] = json!(name),
        Some(Change::WriteFile { path, content }) => {
            detail["file"] = json!(path);
            detail["bytes"] = json!(content.len());
        }
        Some(Change::DeleteFile { path }) => detail["file"] = json!(path),
        None => {}
    }
    if let Some(creation) = row.creation {
        detail["name"] = json!(creation.name);
        detail["backend"] = json!(creation.backend.as_str());
    }
    detail
}

/// The statement that records the admitted mutations callers made, for
/// any number of workspaces at once (a refused request changed nothing and
/// is not recorded); `None` when there are none.
pub(super) fn record<'a>(
    rows: &[(WorkspaceId, AuditRow<'a>)],
    now: Timestamp,
) -> Option<Statement<'a>> {
    if rows.is_empty() {
        return None;
    }
    let workspaces: Vec<uuid::Uuid> = rows.iter().map(|(w, _)| w.as_uuid()).collect();
    let actors: Vec<&'a str> = rows.iter().map(|(_, r)| r.by.actor.as_str()).collect();
    let actions: Vec<&'a str> = rows.iter().map(|(_, r)| r.by.action).collect();
    let details: Vec<serde_json::Value> = rows.iter().map(|(_, r)| detail(r)).collect();
    Some(Statement::new(
        "INSERT INTO audit_log (at, actor, action, workspace_id, detail)
         SELECT $1, actor, action, w, detail
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::jsonb[]) AS t(w, actor, action, detail)",
        vec![
            Box::new(now),
            Box::new(workspaces),
            Box::new(actors),
            Box::new(actions),
            Box::new(details),
        ],
    ))
}

/// Refused calls of one (method, code, who) over one flush interval of the
/// refusal counter (`auth::refusals`): one audit row with the count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRow {
    /// The token's name, or "anonymous" without a valid token.
    pub actor: String,
    /// The method refused (as mutation rows name it).
    pub action: String,
    /// `UNAUTHENTICATED` or `PERMISSION_DENIED`.
    pub code: String,
    /// The peer's IP address, for anonymous callers.
    pub peer: Option<String>,
    /// How many calls were refused.
    pub count: i64,
}

impl super::Store {
    /// Appends one audit row per refused-call count, in one statement. The
    /// rows name no workspace (the request was never read) and are stamped
    /// with the database's time.
    pub async fn append_refused(&self, rows: &[RefusedRow]) -> Result<(), Error> {
        let conn = self.conn().await?;
        let (mut actors, mut actions, mut codes, mut peers, mut counts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            actors.push(row.actor.as_str());
            actions.push(row.action.as_str());
            codes.push(row.code.as_str());
            peers.push(row.peer.as_deref());
            counts.push(row.count);
        }
        conn.execute(
            "INSERT INTO audit_log (at, actor, action, workspace_id, detail)
             SELECT now(), actor, action, NULL,
                    jsonb_strip_nulls(jsonb_build_object('refused', code, 'count', n, 'peer', peer))
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])
                  AS t(actor, action, code, peer, n)",
            &[&actors, &actions, &codes, &peers, &counts],
        )
        .await
        .map_err(db)?;
        Ok(())
    }
}
