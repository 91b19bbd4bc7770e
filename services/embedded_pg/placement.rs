//! Where the embedded cluster lives on this machine: the installed server
//! binaries, the data directory (in the `postgres` user's home when it
//! cannot reach ours), and the loopback port kept across restarts.
//! No lifecycle contract (C1–C20): how the process runs.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
};

use tokio::process::Command;

use super::{EmbeddedError, fail};

/// Where the cluster's data lives: `<root>/pg`, or — when the server runs
/// as root and the `postgres` user cannot reach `root` — a directory in
/// that user's home, named by a digest of `root` so each project keeps its
/// own cluster.
pub(super) async fn data_dir(
    owner: Option<&nix::unistd::User>,
    root: &Path,
) -> Result<PathBuf, EmbeddedError> {
    Ok(match owner {
        Some(user) if !reachable_by(user, root).await => {
            // The `postgres` user cannot reach the project directory
            // (e.g. under /root): keep the cluster in its home instead.
            let digest =
                <sha2::Sha256 as sha2::Digest>::digest(root.as_os_str().as_encoded_bytes());
            let dir = user
                .dir
                .join("workspace-lifecycle")
                .join(hex::encode(&digest[..8]));
            tracing::info!(pgdata = %dir.display(), "the postgres user cannot reach the data directory; keeping the cluster in its home");
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| EmbeddedError(format!("{}: {e}", dir.display())))?;
            dir.join("pg")
        }
        _ => root.join("pg"),
    })
}

/// True if `user` can traverse every directory down to `dir`.
async fn reachable_by(user: &nix::unistd::User, dir: &Path) -> bool {
    Command::new("runuser")
        .arg("-u")
        .arg(&user.name)
        .args(["--", "test", "-x"])
        .arg(dir)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Where the Postgres server binaries are: `$WL_PG_BIN`, `pg_config
/// --bindir`, or the newest `/usr/lib/postgresql/*/bin`.
pub(super) async fn find_bin_dir() -> Result<PathBuf, EmbeddedError> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("WL_PG_BIN").map(PathBuf::from) {
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output().await {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, dir)) => Ok(dir),
        None => fail(
            "no PostgreSQL server binaries found (install postgresql, set WL_PG_BIN, or pass --database-url)",
        ),
    }
}

/// The cluster's port, kept in `<root>/pg.port` so restarts reuse it.
pub(super) fn load_or_pick_port(root: &Path) -> Result<u16, EmbeddedError> {
    let raw = crate::private_file::read_or_create(&root.join("pg.port"), || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port().to_string())
            .unwrap_or_default()
    })
    .map_err(|e| EmbeddedError(format!("pg.port: {e}")))?;
    raw.trim()
        .parse()
        .map_err(|_| EmbeddedError(format!("pg.port holds no port: {raw:?}")))
}
