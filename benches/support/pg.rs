//! The benchmarks' own Postgres: a cluster under `target/bench-pg`, started
//! with `max_connections` sized for what the benchmark about to run opens
//! (servers' pools, bench clients, a margin), durable (`fsync=on`, as the
//! service's embedded cluster runs) or with `fsync=off` (commits cost no
//! disk flush: a CPU and round-trip limit) as the benchmark asks — or the
//! cluster `BENCH_DATABASE_URL` names, checked against the same need.
//!
//! Separate from the service's embedded cluster (fixed at 300 connections):
//! the storm alone opens 256 bench connections next to three replicas'
//! pools, which is what made it crash at 2 replicas on a fresh clone.

use std::path::{Path, PathBuf};

use tokio::process::Command;
use tokio_postgres::NoTls;

/// Connections a benchmark may need besides what it declares: the
/// benchmark's own admin/setup connections, psql-like probes, autovacuum.
pub const MARGIN: usize = 40;

/// A Postgres the benchmark runs on.
pub struct Cluster {
    /// A maintenance URL (database `postgres`).
    pub admin: String,
    /// Where the server binaries are (pgbench too).
    pub bin: PathBuf,
    /// The postmaster's pid, when the cluster's data directory is readable
    /// here (for its CPU share).
    pub postmaster: Option<u32>,
    /// `max_connections` as the running cluster reports it.
    pub max_connections: usize,
    /// `fsync` as the running cluster reports it.
    pub fsync: String,
    /// pg_stat_statements is loaded: statements per call can be counted.
    pub statements: bool,
}

impl Cluster {
    /// One line for the benchmark's header.
    pub fn describe(&self) -> String {
        format!(
            "Postgres {} (max_connections={}, fsync={}, pg_stat_statements {})",
            self.admin,
            self.max_connections,
            self.fsync,
            if self.statements { "on" } else { "off" }
        )
    }

    /// `host=… port=…` of the admin URL, as pgbench flags.
    pub fn pgbench_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for part in self.admin.split_whitespace() {
            if let Some((k, v)) = part.split_once('=') {
                match k {
                    "host" => flags.extend(["-h".to_owned(), v.to_owned()]),
                    "port" => flags.extend(["-p".to_owned(), v.to_owned()]),
                    "user" => flags.extend(["-U".to_owned(), v.to_owned()]),
                    _ => {}
                }
            }
        }
        flags
    }
}

/// A cluster that allows at least `connections` (plus [`MARGIN`]), with
/// `fsync` on or off (restarted when it runs with the other setting).
pub async fn cluster(connections: usize, fsync: bool) -> Cluster {
    let want = connections + MARGIN;
    let fsync_setting = if fsync { "on" } else { "off" };
    let bin = bin_dir();
    if let Ok(admin) = std::env::var("BENCH_DATABASE_URL") {
        let cluster = inspect(admin, bin).await;
        assert!(
            cluster.max_connections >= want,
            "BENCH_DATABASE_URL allows {} connections; this benchmark opens up to {want}",
            cluster.max_connections
        );
        return cluster;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-pg");
    let pgdata = root.join("pg");
    let port = port(&root);
    let admin = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    if !pgdata.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&pgdata).expect("create target/bench-pg");
        chown_to_postgres(&pgdata);
        run(as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&pgdata)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"]))
        .await;
    }
    let running = as_postgres(&bin.join("pg_ctl"))
        .arg("-D")
        .arg(&pgdata)
        .arg("status")
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if running {
        let now = inspect(admin.clone(), bin.clone()).await;
        if now.max_connections >= want && now.statements && now.fsync == fsync_setting {
            return now;
        }
        // Too small for this benchmark, started without
        // pg_stat_statements or with the other fsync: restart it.
        run(as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&pgdata)
            .args(["-m", "fast", "-w", "stop"]))
        .await;
    }
    // Sized in steps so consecutive benchmarks rarely restart it.
    let size = want.div_ceil(100) * 100;
    run(as_postgres(&bin.join("pg_ctl"))
        .arg("-D")
        .arg(&pgdata)
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections={size} \
             -c fsync={fsync_setting} -c shared_buffers=256MB \
             -c shared_preload_libraries=pg_stat_statements",
            pgdata.display()
        ))
        .arg("-l")
        .arg(pgdata.join("server.log"))
        .args(["-w", "-t", "60", "start"]))
    .await;
    inspect(admin, bin).await
}

async fn inspect(admin: String, bin: PathBuf) -> Cluster {
    let (client, connection) = tokio_postgres::connect(&admin, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the bench Postgres ({admin}): {e}"));
    tokio::spawn(connection);
    let show = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .map(|row| row.get::<_, String>(0))
                .unwrap_or_default()
        }
    };
    let max_connections = show("max_connections").await.parse().unwrap_or(0);
    let fsync = show("fsync").await;
    let data_directory = show("data_directory").await;
    let statements = show("shared_preload_libraries")
        .await
        .contains("pg_stat_statements");
    let postmaster = std::fs::read_to_string(Path::new(&data_directory).join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
    Cluster {
        admin,
        bin,
        postmaster,
        max_connections,
        fsync,
        statements,
    }
}

/// Statements executed in the current database and transaction ids
/// assigned in the cluster so far: pg_stat_statements counts BEGIN and
/// COMMIT too, so statements are the round trips of a client that does not
/// pipeline; every transaction that writes takes one id, so the ids are the
/// write transactions (each a commit record). Both are exact at once (the
/// commit counters of pg_stat_database are published up to 10 s late).
/// `None` for statements without pg_stat_statements.
pub async fn counters(client: &tokio_postgres::Client) -> (Option<i64>, i64) {
    let statements = client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .ok()
        .map(|row| row.get(0));
    let xids = client
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
            &[],
        )
        .await
        .map(|row| row.get(0))
        .unwrap_or(0);
    (statements, xids)
}

/// "4.02 statements, 1.00 write transactions per call" between two
/// counter readings
/// (they include the benchmark's own few reads and the servers' background
/// work during the run).
pub fn per_call(before: (Option<i64>, i64), after: (Option<i64>, i64), calls: usize) -> String {
    let statements = match (before.0, after.0) {
        (Some(b), Some(a)) => format!("{:.2}", (a - b) as f64 / calls as f64),
        _ => "?".to_owned(),
    };
    format!(
        "Postgres {statements} statements, {:.2} write transactions per call",
        (after.1 - before.1) as f64 / calls as f64
    )
}

/// `$WL_PG_BIN` or the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WL_PG_BIN") {
        return dir.into();
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| d.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|(_, d)| d)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or WL_PG_BIN)")
}

/// The cluster's port, kept in `<root>/pg.port` so later runs reuse it.
fn port(root: &Path) -> u16 {
    std::fs::create_dir_all(root).expect("create target/bench-pg");
    let file = root.join("pg.port");
    if let Some(port) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return port;
    }
    let port = test_support::free_port();
    std::fs::write(&file, port.to_string()).expect("write pg.port");
    port
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Postgres refuses to run as root: as root, run its tools as `postgres`.
fn as_postgres(program: &Path) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command.stdin(std::process::Stdio::null());
    command
}

fn chown_to_postgres(dir: &Path) {
    if !is_root() {
        return;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("running as root needs a `postgres` user");
    std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .expect("chown the bench cluster's directory");
}

async fn run(command: &mut Command) {
    let out = command.output().await.expect("run a Postgres tool");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
