//! What a replica's sweep takes (C14, C19): a follow-up that was due the
//! moment it was admitted belongs to the replica that admitted it, which
//! claims it in its next transaction. Another replica's sweep — one whose
//! clock runs ahead included — takes it only after `ADMITTER_GRACE`, when
//! its admitter must have died in between; a follow-up that waited for its
//! time is anyone's once due.

use chrono::SubsecRound;
use workspace_lifecycle::{
    domain::{WorkspaceId, clock::Clock, clock::ManualClock},
    store::ADMITTER_GRACE,
};

use super::fencing::store_on;
use crate::support::TestDb;

/// Inserts a workspace whose follow-up was admitted at `created` and is due
/// at `due`, the gate free.
async fn pending(
    sql: &tokio_postgres::Client,
    created: chrono::DateTime<chrono::Utc>,
    due: chrono::DateTime<chrono::Utc>,
) -> WorkspaceId {
    let ws = WorkspaceId::new();
    let spec = serde_json::to_value(workspace_backends::WorkspaceSpec::default()).unwrap();
    sql.execute(
        "INSERT INTO workspaces (id, name, backend, spec, created_at, updated_at, status,
                                 pending_cycle, pending_created_at, pending_urgent, pending_due_at)
         VALUES ($1, $7, 'process', $2, $3, $3, 'ONLINE', $4, $3, $5, $6)",
        &[
            &ws.as_uuid(),
            &spec,
            &created,
            &uuid::Uuid::new_v4(),
            &(due <= created),
            &due,
            &ws.to_string(),
        ],
    )
    .await
    .unwrap();
    ws
}

#[tokio::test]
async fn a_follow_up_due_when_admitted_is_left_to_its_admitter_for_the_grace() {
    let db = TestDb::create().await;
    // Postgres keeps microseconds: compare instants it can hold.
    let clock = ManualClock::new(chrono::Utc::now().trunc_subsecs(6));
    let store = store_on(&db, &clock).await;
    let sql = db.client().await;
    let now = clock.now();
    let grace = chrono::Duration::from_std(ADMITTER_GRACE).unwrap();

    let ready = pending(&sql, now, now).await;
    assert_eq!(
        store.due_workspaces(now, 10).await.unwrap(),
        Vec::<WorkspaceId>::new(),
        "a sweep took a follow-up its admitter is about to claim"
    );
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(now + grace),
        "the sweep looks again when the grace ends"
    );
    assert_eq!(
        store.due_workspaces(now + grace, 10).await.unwrap(),
        vec![ready],
        "once the grace ended (its admitter died), the sweep takes it"
    );

    let waited = pending(&sql, now - chrono::Duration::seconds(5), now).await;
    assert_eq!(
        store.due_workspaces(now, 10).await.unwrap(),
        vec![waited],
        "a follow-up that waited for its time is due at its time"
    );
}
