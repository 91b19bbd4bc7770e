//! Fresh databases: one per test or benchmark run, on the Postgres named by
//! `TEST_DATABASE_URL` (CI), on a cluster the tests start themselves under
//! `target/tmp/test-pg`, or on whatever maintenance URL a benchmark chose —
//! URLs in either form (`key=value` or `postgres://`).
//! No contract of its own: the tests and benches check C1–C20 with it.

use std::sync::OnceLock;

use tokio_postgres::NoTls;
use workspace_lifecycle::embedded_pg::EmbeddedPostgres;

static ADMIN_URL: OnceLock<String> = OnceLock::new();

/// The URL of a maintenance database on the test cluster:
/// `TEST_DATABASE_URL`, or a cluster of our own (started once, reused).
pub fn test_admin_url() -> &'static str {
    ADMIN_URL.get_or_init(|| {
        if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
            return url;
        }
        // Start (or reuse) a cluster of our own; one runtime on a plain
        // thread, since tests each run on their own runtime.
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let root = crate::target_tmpdir().join("test-pg");
                let pg = EmbeddedPostgres::ensure(&root)
                    .await
                    .expect("no TEST_DATABASE_URL and no local Postgres could be started");
                pg.admin_url()
            })
        })
        .join()
        .unwrap()
    })
}

/// Points `url` (key=value or postgres:// form) at database `name`.
pub fn with_dbname(url: &str, name: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let host = base.split('/').next().unwrap_or(base);
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        return format!("postgres://{host}/{name}{query}");
    }
    let mut parts: Vec<String> = url
        .split_whitespace()
        .filter(|part| !part.starts_with("dbname="))
        .map(str::to_owned)
        .collect();
    parts.push(format!("dbname={name}"));
    parts.join(" ")
}

/// A plain client on `url` (its connection driven by a spawned task).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to Postgres ({url}): {e}"));
    tokio::spawn(connection);
    client
}

/// Creates an empty database with a unique name starting `prefix` on the
/// cluster `admin` reaches; returns its URL.
pub async fn create_database(admin: &str, prefix: &str) -> String {
    let client = connect(admin).await;
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a fresh database");
    with_dbname(admin, &name)
}

/// A database that exists for one test.
pub struct TestDb {
    /// Its URL.
    pub url: String,
}

impl TestDb {
    /// Creates an empty database with a unique name on the test cluster.
    pub async fn create() -> Self {
        Self {
            url: create_database(test_admin_url(), "wl_test").await,
        }
    }

    /// A plain client on this database, for looking behind the API.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}
