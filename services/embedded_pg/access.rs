//! Who may connect to the embedded cluster: whoever holds the superuser's
//! password, generated on first start into `<data-dir>/pg-password` (mode
//! 0600, the service's user only), checked by scram-sha-256 on every
//! connection — TCP and Unix socket alike. Without it a local user, or a
//! container on the host network, reaching 127.0.0.1 gets nothing.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path, process::Stdio};

use tokio::io::AsyncWriteExt as _;

use super::{EmbeddedError, EmbeddedPostgres, fail};

/// The first line of every `pg_hba.conf` this server wrote; a cluster
/// without it was set up by an older version with `trust`.
const MARKER: &str = "# workspace-lifecycle: scram-sha-256 only";

const HBA: &str = "\
# workspace-lifecycle: scram-sha-256 only
# Written by the server on every start of a cluster it initialised; every
# connection needs the password in <data-dir>/pg-password.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128 scram-sha-256
";

/// The superuser's password: 32 random bytes, hex, created once (0600).
pub(super) fn load_or_create_password(root: &Path) -> Result<String, EmbeddedError> {
    let text = crate::private_file::read_or_create(&root.join("pg-password"), || {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS provides randomness");
        hex::encode(bytes)
    })
    .map_err(|e| EmbeddedError(format!("pg-password: {e}")))?;
    let password = text.trim().to_owned();
    // Only hex is ever generated; anything else was not written by us and
    // must not be pasted into SQL.
    if password.len() < 32 || !password.bytes().all(|b| b.is_ascii_hexdigit()) {
        return fail("pg-password is not a password this server generated");
    }
    Ok(password)
}

/// True if the cluster's `pg_hba.conf` is the one [`write_hba`] writes.
pub(super) fn hba_is_ours(pgdata: &Path) -> bool {
    std::fs::read_to_string(pgdata.join("pg_hba.conf"))
        .is_ok_and(|text| text.lines().next() == Some(MARKER))
}

/// Replaces the cluster's `pg_hba.conf` (the file keeps its owner).
pub(super) fn write_hba(pgdata: &Path) -> Result<(), EmbeddedError> {
    std::fs::write(pgdata.join("pg_hba.conf"), HBA)
        .map_err(|e| EmbeddedError(format!("pg_hba.conf: {e}")))
}

/// The password in a file only the cluster's owner can read, for initdb;
/// removed when dropped.
pub(super) struct PasswordFile(std::path::PathBuf);

impl PasswordFile {
    pub(super) fn write(pg: &EmbeddedPostgres) -> Result<Self, EmbeddedError> {
        let dir = pg.pgdata.parent().unwrap_or(&pg.pgdata);
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| EmbeddedError(e.to_string()))?;
        let path = dir.join(format!(".pg-initdb-pw-{}", hex::encode(nonce)));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| EmbeddedError(format!("{}: {e}", path.display())))?;
        let this = Self(path);
        file.write_all(pg.password.as_bytes())
            .map_err(|e| EmbeddedError(e.to_string()))?;
        pg.chown(&this.0)?;
        Ok(this)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PasswordFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl EmbeddedPostgres {
    /// Moves a cluster an older version initialised with `trust` to
    /// password authentication: sets the superuser's password (through
    /// the running server, which still trusts us, or in single-user mode,
    /// which opens no socket), then writes the new `pg_hba.conf`.
    pub(super) async fn upgrade_from_trust(&self, running: bool) -> Result<(), EmbeddedError> {
        tracing::info!("moving the embedded Postgres from trust to password authentication");
        // The password is hex (checked on load), so it is a safe literal.
        let statement = format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '{}';",
            self.password
        );
        if running {
            let (client, driver) = self.connect("postgres").await?;
            client.batch_execute(&statement).await.map_err(|e| {
                EmbeddedError(format!(
                    "set the password: {}",
                    e.code().map_or("?", |c| c.code())
                ))
            })?;
            write_hba(&self.pgdata)?;
            client
                .batch_execute("SELECT pg_reload_conf()")
                .await
                .map_err(|e| EmbeddedError(format!("reload: {e}")))?;
            drop(client);
            let _ = driver.await;
            return Ok(());
        }
        let mut single = self.command("postgres");
        single
            .arg("--single")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = single
            .spawn()
            .map_err(|e| EmbeddedError(format!("postgres --single: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("{statement}\n").as_bytes())
                .await
                .map_err(|e| EmbeddedError(format!("postgres --single: {e}")))?;
        }
        // Its output may echo the statement, so none of it is kept.
        let status = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
            .await
            .map_err(|_| EmbeddedError("postgres --single timed out".into()))?
            .map_err(|e| EmbeddedError(format!("postgres --single: {e}")))?;
        if !status.success() {
            return fail("postgres --single could not set the password");
        }
        write_hba(&self.pgdata)
    }
}
