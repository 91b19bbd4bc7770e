//! The fences written in SQL (C12, C18): once another runner took a cycle
//! over, the old runner's every write — its phase announcements, its
//! renewals, its end — is refused by the database, and
//! a refused renewal fences it off the backend at once. Each assertion
//! goes red if the fencing condition is dropped from its statement.

use std::{sync::Arc, time::Duration};

use workspace_lifecycle::{
    domain::{
        ConfigVersion, CycleId, Finish, Handling, Phase, ReplicaId, Trigger, WorkspaceId,
        clock::ManualClock, ledger::Timing,
    },
    engine::gate::GateKeeper,
    store::{GroupTx, Locked, RowTx, Store, StoreConfig, Tally, Unchanged, WorkspaceWrites},
};

use crate::support::{TestDb, TestServer};
use test_support::bounded_by;

const LEASE: Duration = Duration::from_secs(10);

pub(super) async fn store_on(db: &TestDb, clock: &ManualClock) -> Store {
    let store = Store::connect(
        &StoreConfig {
            url: db.url.clone(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            secrets_key: TestServer::secrets_key(),
        },
        ReplicaId::new(),
        Timing {
            lease_ttl: LEASE,
            ..Timing::default()
        },
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

/// A database with one ONLINE workspace row named `name`, written directly.
struct OnlineRow {
    db: TestDb,
    store: Store,
    sql: tokio_postgres::Client,
    ws: WorkspaceId,
    now: workspace_lifecycle::domain::Timestamp,
}

async fn online_row(name: &str) -> OnlineRow {
    let db = TestDb::create().await;
    let clock = ManualClock::new(chrono::Utc::now());
    let store = store_on(&db, &clock).await;
    let sql = db.client().await;
    let ws = WorkspaceId::new();
    let now = workspace_lifecycle::domain::clock::Clock::now(&clock);
    let spec = serde_json::to_value(workspace_backends::WorkspaceSpec::default()).unwrap();
    sql.execute(
        "INSERT INTO workspaces (id, name, backend, spec, created_at, updated_at, status)
         VALUES ($1, $4, 'process', $2, $3, $3, 'ONLINE')",
        &[&ws.as_uuid(), &spec, &now, &name],
    )
    .await
    .unwrap();
    OnlineRow {
        db,
        store,
        sql,
        ws,
        now,
    }
}

/// The workspace's config version, as Postgres holds it.
async fn config_version(sql: &tokio_postgres::Client, ws: WorkspaceId) -> i64 {
    sql.query_one(
        "SELECT config_version FROM workspaces WHERE id = $1",
        &[&ws.as_uuid()],
    )
    .await
    .unwrap()
    .get(0)
}

/// Two replicas' stores on one database with one workspace row named
/// `name` whose cycle is pending, written directly.
struct PendingRow {
    _db: TestDb,
    clock: ManualClock,
    a: Store,
    b: Store,
    sql: tokio_postgres::Client,
    ws: WorkspaceId,
    now: workspace_lifecycle::domain::Timestamp,
}

async fn pending_row(name: &str) -> PendingRow {
    let db = TestDb::create().await;
    let clock = ManualClock::new(chrono::Utc::now());
    let a = store_on(&db, &clock).await;
    let b = store_on(&db, &clock).await;
    let sql = db.client().await;
    let ws = WorkspaceId::new();
    let cycle = uuid::Uuid::new_v4();
    let now = workspace_lifecycle::domain::clock::Clock::now(&clock);
    let spec = serde_json::to_value(workspace_backends::WorkspaceSpec::default()).unwrap();
    sql.execute(
        "INSERT INTO workspaces (id, name, backend, spec, created_at, updated_at, status,
                                 pending_cycle, pending_created_at, pending_urgent)
         VALUES ($1, $5, 'process', $2, $3, $3, 'PROVISIONING', $4, $3, true)",
        &[&ws.as_uuid(), &spec, &now, &cycle, &name],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO cycles (id, workspace_id, state, created_at) VALUES ($1, $2, 'PENDING', $3)",
        &[&cycle, &ws.as_uuid(), &now],
    )
    .await
    .unwrap();
    PendingRow {
        _db: db,
        clock,
        a,
        b,
        sql,
        ws,
        now,
    }
}

#[tokio::test]
async fn a_runner_whose_cycle_was_taken_over_writes_nothing() {
    let PendingRow {
        _db,
        clock,
        a,
        b,
        sql,
        ws,
        now,
    } = pending_row("fenced").await;

    let mut old = a
        .claim(&ws, now)
        .await
        .unwrap()
        .won()
        .expect("the first runner claims");
    assert!(old.renew().await.unwrap(), "the holder renews");
    clock.advance(LEASE + Duration::from_secs(1));
    let later = workspace_lifecycle::domain::clock::Clock::now(&clock);
    let mut new = b
        .claim(&ws, later)
        .await
        .unwrap()
        .won()
        .expect("the lease expired: taken over");
    assert!(new.claim().takeover);
    assert!(new.claim().generation > old.claim().generation);

    assert!(
        !old.phase(Phase::Provisioning).await.unwrap(),
        "phase announcements must be fenced"
    );
    assert!(!old.renew().await.unwrap(), "renewal must be fenced");
    assert!(
        old.fence_left().is_zero(),
        "a refused renewal fences the runner off the backend at once"
    );
    let finished = old
        .finish(Finish::Failed {
            reason: "stale".into(),
        })
        .await
        .unwrap();
    assert!(!finished.recorded, "the stale end must not be recorded");

    // Generations (and their agent tokens) are recorded only by claims,
    // under the row lock: one per claim, none by the stale runner.
    let generations: Vec<i64> = sql
        .query(
            "SELECT generation FROM generations WHERE workspace_id = $1 ORDER BY generation",
            &[&ws.as_uuid()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        generations,
        [
            old.claim().generation.0 as i64,
            new.claim().generation.0 as i64
        ],
        "a generation recorded by anything but a claim"
    );
    let row = sql
        .query_one(
            "SELECT status, running_takeovers FROM workspaces WHERE id = $1",
            &[&ws.as_uuid()],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, &str>(0),
        "PROVISIONING",
        "the stale failure leaked"
    );
    assert_eq!(row.get::<_, i32>(1), 1);

    // The new holder is not affected.
    assert!(new.phase(Phase::Provisioning).await.unwrap());
    assert!(new.renew().await.unwrap());
    assert!(!new.fence_left().is_zero());
    let finished = new
        .finish(Finish::Failed {
            reason: "test over".into(),
        })
        .await
        .unwrap();
    assert!(finished.recorded);
}

/// A row transaction's BEGIN goes out with its row lock, in one round
/// trip: the lock is held by an open transaction until it ends, and a
/// transaction dropped before it committed rolls back before its
/// connection serves anyone else.
#[tokio::test]
async fn a_row_lock_is_held_in_its_transaction_and_a_dropped_transaction_rolls_back() {
    let OnlineRow {
        db: _db,
        store,
        sql,
        ws,
        ..
    } = online_row("locked").await;
    let try_lock = async || {
        sql.batch_execute("BEGIN").await.unwrap();
        let got = sql
            .query(
                "SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE NOWAIT",
                &[&ws.as_uuid()],
            )
            .await
            .is_ok();
        sql.batch_execute("ROLLBACK").await.unwrap();
        got
    };

    let conn = store.conn().await.unwrap();
    let pid: i32 = conn
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let tx = RowTx::begin(conn, &store, ws);
    tx.lock().await.unwrap();
    assert!(
        !try_lock().await,
        "the row lock lasts until the transaction ends"
    );
    drop(tx);

    bounded_by(
        Duration::from_secs(10),
        "the dropped transaction rolls back",
        async {
            loop {
                let state: Option<String> = sql
                    .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
                    .await
                    .unwrap()
                    .get(0);
                if state.as_deref() == Some("idle") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    assert!(try_lock().await, "the row is free again");
}

/// The row lock the writers hold excludes other writers, not a row that only
/// refers to the workspace: a dropped probe's counter is written while an
/// admission holds the row, so drops never queue behind it (C4, C9). (Red
/// with `FOR UPDATE`: the counter's foreign-key check waits for the holder
/// until the lock times out.)
#[tokio::test]
async fn a_held_row_still_lets_a_counter_of_it_be_written() {
    let OnlineRow {
        db: _db,
        store,
        ws,
        now,
        ..
    } = online_row("counted").await;
    let holder = GroupTx::begin(store.conn().await.unwrap(), &store);
    let held = holder.lock(&[ws], &[], true).await.unwrap();
    assert!(held.contains_key(&ws), "the admission holds the row");
    let mut tally = Tally::default();
    tally.count(
        Trigger::HealthProbe,
        Handling::Dropped,
        None,
        "cycle in flight",
    );
    let counter = GroupTx::begin(store.conn().await.unwrap(), &store);
    bounded_by(
        Duration::from_secs(5),
        "a counter written while the row is held",
        counter.commit(&[WorkspaceWrites::counted(ws, tally)], now),
    )
    .await
    .unwrap();
    drop(holder);
}

/// A transaction's last writes go out with its `COMMIT`, in one round trip.
/// Each is prepared before any is sent, so on a connection that never
/// prepared them none lands after the `COMMIT`, on its own: a group whose
/// later statement fails leaves nothing behind, not even its first write.
/// (Red when the writes prepare as they go: the `COMMIT` overtakes them and
/// the row's new config version is left committed.)
#[tokio::test]
async fn writes_sent_with_the_commit_land_inside_its_transaction_even_unprepared() {
    let OnlineRow {
        db: _db,
        store,
        sql,
        ws,
        now,
    } = online_row("pipelined").await;
    let before = config_version(&sql, ws).await;

    let tx = GroupTx::begin(store.conn().await.unwrap(), &store);
    let mut locked = tx.lock(&[ws], &[], true).await.unwrap();
    let mut saved = locked.remove(&ws).expect("locked").locked;
    saved.config_version = ConfigVersion(before as u64 + 7);
    // Absorbed into a cycle that does not exist: the cycles statement, sent
    // after the row's, breaks its foreign key.
    let mut tally = Tally::default();
    tally.count(
        Trigger::Manual,
        Handling::Coalesced,
        Some(CycleId::new()),
        "",
    );
    let writes = [WorkspaceWrites {
        save: Some(saved),
        ..WorkspaceWrites::counted(ws, tally)
    }];
    let failed = bounded_by(
        Duration::from_secs(10),
        "the group's commit answers",
        tx.commit(&writes, now),
    )
    .await;
    assert!(failed.is_err(), "a broken foreign key fails the group");
    assert_eq!(
        config_version(&sql, ws).await,
        before,
        "the row's write landed outside the failed transaction"
    );
}

/// A group decided on rows the store remembers (it read or wrote them
/// last) goes out in one round trip behind `wl_lock_unchanged`: written if
/// no row moved since, and if one did — another replica wrote it — or
/// another transaction holds it, nothing is written and the store reads
/// those rows under the lock for a while. (Red when the guard does not
/// compare versions: the stale decision overwrites the other replica's;
/// and red when the version's trigger is not `ENABLE ALWAYS`: the other
/// replica's write, in a `session_replication_role = replica` session,
/// leaves the version as it was.)
#[tokio::test]
async fn a_group_decided_on_remembered_rows_writes_nothing_if_one_moved_or_is_held() {
    let OnlineRow {
        db,
        store,
        sql,
        ws,
        now,
    } = online_row("remembered").await;
    let bumped = |mut locked: Locked| {
        locked.config_version.0 += 1;
        [WorkspaceWrites {
            save: Some(locked),
            ..WorkspaceWrites::counted(ws, Tally::default())
        }]
    };
    let before = config_version(&sql, ws).await;

    // Read under the lock and written: the store remembers the row.
    let tx = GroupTx::begin(store.conn().await.unwrap(), &store);
    let mut locked = tx.lock(&[ws], &[], false).await.unwrap();
    let read = locked.remove(&ws).expect("locked").locked;
    tx.commit(&bumped(read), now).await.unwrap();

    // Remembered as written: decided without a read, and committed.
    let (mut known, versions) =
        GroupTx::recall(&store, &[ws], &[]).expect("the row it wrote is remembered");
    let known = known.remove(&ws).expect("recalled").locked;
    assert_eq!(known.config_version.0 as i64, before + 1);
    let tx = GroupTx::begin(store.conn().await.unwrap(), &store);
    let written = bounded_by(
        Duration::from_secs(10),
        "the remembered group commits",
        tx.commit_unchanged(&[ws], &versions, &bumped(known), now),
    )
    .await;
    assert!(
        matches!(written.unwrap(), Unchanged::Committed),
        "nothing moved: the group is written"
    );
    assert_eq!(config_version(&sql, ws).await, before + 2);

    // Another replica moves the row — here in a session where ordinary
    // triggers do not fire, as in the README's audit retention — and the
    // store still remembers it as it was: the decision made on that is
    // refused whole.
    sql.batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    sql.execute(
        "UPDATE workspaces SET config_version = config_version + 10 WHERE id = $1",
        &[&ws.as_uuid()],
    )
    .await
    .unwrap();
    sql.batch_execute("RESET session_replication_role")
        .await
        .unwrap();
    let (mut known, versions) = GroupTx::recall(&store, &[ws], &[]).expect("still remembered");
    let stale = known.remove(&ws).expect("recalled").locked;
    let tx = GroupTx::begin(store.conn().await.unwrap(), &store);
    let written = bounded_by(
        Duration::from_secs(10),
        "the refusal",
        tx.commit_unchanged(&[ws], &versions, &bumped(stale), now),
    )
    .await;
    let Unchanged::Moved(conn) = written.unwrap() else {
        panic!("a moved row refuses the remembered group");
    };
    // Its transaction is over: the connection serves the next statement
    // (in the failed transaction it would be refused with 25P02).
    conn.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(
        config_version(&sql, ws).await,
        before + 12,
        "the other replica's write stands"
    );
    assert!(
        GroupTx::recall(&store, &[ws], &[]).is_none(),
        "after a row was found moved, rows are read under the lock again"
    );

    // A row another transaction holds: refused at once, not waited for.
    // (Another store: this one recalls nothing for a second now.)
    let store = store_on(&db, &ManualClock::new(chrono::Utc::now())).await;
    let other = WorkspaceId::new();
    let spec = serde_json::to_value(workspace_backends::WorkspaceSpec::default()).unwrap();
    sql.execute(
        "INSERT INTO workspaces (id, name, backend, spec, created_at, updated_at, status)
         VALUES ($1, 'held', 'process', $2, $3, $3, 'ONLINE')",
        &[&other.as_uuid(), &spec, &now],
    )
    .await
    .unwrap();
    let tx = GroupTx::begin(store.conn().await.unwrap(), &store);
    let read = tx.lock(&[other], &[], false).await.unwrap();
    assert!(read.contains_key(&other));
    drop(tx);
    let (mut known, versions) =
        GroupTx::recall(&store, &[other], &[]).expect("the row it read is remembered");
    let held = known.remove(&other).expect("recalled").locked;
    sql.batch_execute("BEGIN").await.unwrap();
    sql.execute(
        "SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE",
        &[&other.as_uuid()],
    )
    .await
    .unwrap();
    let before_held = config_version(&sql, other).await;
    let mut writes = bumped(held);
    writes[0].workspace = other;
    let tx = GroupTx::begin(store.conn().await.unwrap(), &store);
    let written = bounded_by(
        Duration::from_secs(10),
        "a held row's refusal",
        tx.commit_unchanged(&[other], &versions, &writes, now),
    )
    .await;
    assert!(
        matches!(written.unwrap(), Unchanged::Moved(_)),
        "a held row refuses the group, at once"
    );
    sql.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(config_version(&sql, other).await, before_held);
}

/// C5 with remembered rows: a claim decided on the row as this replica last
/// read it is committed only if the row did not move since. Replica `a`
/// remembers the row with its cycle pending; replica `b` claims that cycle;
/// `a`'s claim, decided on the remembered row, would take the gate a second
/// time — its guard refuses it, and `a` decides again on the row read
/// under the lock: lost, to `b`'s cycle. (Red when the guard does not
/// compare versions: both replicas win the gate.)
#[tokio::test]
async fn a_claim_decided_on_a_remembered_row_another_replica_claimed_is_lost() {
    let PendingRow {
        _db,
        a,
        b,
        sql,
        ws,
        now,
        ..
    } = pending_row("remembered").await;

    // `a` reads the row (and lets it go): it remembers the pending cycle.
    let tx = RowTx::begin(a.conn().await.unwrap(), &a, ws);
    assert!(tx.lock().await.unwrap().ledger.pending.is_some());
    drop(tx);

    let held = b
        .claim(&ws, now)
        .await
        .unwrap()
        .won()
        .expect("b claims the pending cycle");
    let second = bounded_by(Duration::from_secs(10), "a's claim", a.claim(&ws, now)).await;
    assert!(
        second.unwrap().won().is_none(),
        "a took the gate b holds, on the row it remembered"
    );
    let running: Option<uuid::Uuid> = sql
        .query_one(
            "SELECT running_cycle FROM workspaces WHERE id = $1",
            &[&ws.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(running, Some(held.claim().cycle.as_uuid()));
}
