//! The project-local Postgres the server runs on when no database URL is
//! given: initialised under the data directory on first start, started on
//! a loopback port, reused on later starts. Postgres refuses to run as
//! root, so as root the cluster belongs to the `postgres` user.
//! No lifecycle contract (C1–C20): how the process runs.
//!
//! Nobody but this service may connect: every connection, TCP or socket,
//! needs the password the first start generates ([`access`]). The handle
//! the server keeps ([`Owned`]) stops a cluster this process started on
//! every way out of the process short of `SIGKILL`.
//!
//! (Crates that embed Postgres download binaries at build time; this one
//! uses the server binaries installed on the machine.)

mod access;
mod owned;
mod placement;

pub use owned::Owned;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::Command;

/// A failure to provide the embedded database.
#[derive(Debug, thiserror::Error)]
#[error("embedded Postgres: {0}")]
pub struct EmbeddedError(String);

fn fail<T>(msg: impl Into<String>) -> Result<T, EmbeddedError> {
    Err(EmbeddedError(msg.into()))
}

/// A running local Postgres cluster.
pub struct EmbeddedPostgres {
    bin: PathBuf,
    pgdata: PathBuf,
    port: u16,
    password: String,
    owner: Option<nix::unistd::User>,
    /// This process started the cluster (rather than finding it running).
    started_here: bool,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("pgdata", &self.pgdata)
            .field("port", &self.port)
            .field("started_here", &self.started_here)
            .finish_non_exhaustive()
    }
}

const DATABASE: &str = "workspaces";

impl EmbeddedPostgres {
    /// Initialises (once) and starts (if not running) the cluster under
    /// `root`, and makes sure the service's database exists. A cluster an
    /// older version initialised with `trust` is moved to password
    /// authentication first.
    pub async fn ensure(root: &Path) -> Result<Self, EmbeddedError> {
        let bin = placement::find_bin_dir().await?;
        let owner = if nix::unistd::Uid::effective().is_root() {
            Some(
                nix::unistd::User::from_name("postgres")
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        EmbeddedError("running as root needs a `postgres` user".into())
                    })?,
            )
        } else {
            None
        };
        let root = std::path::absolute(root).map_err(|e| EmbeddedError(e.to_string()))?;
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|e| EmbeddedError(format!("{}: {e}", root.display())))?;
        let pgdata = placement::data_dir(owner.as_ref(), &root).await?;
        let mut this = Self {
            bin,
            port: placement::load_or_pick_port(&root)?,
            password: access::load_or_create_password(&root)?,
            pgdata,
            owner,
            started_here: false,
        };
        if !this.pgdata.join("PG_VERSION").exists() {
            this.init().await?;
        }
        let running = this.running().await;
        if !access::hba_is_ours(&this.pgdata) {
            this.upgrade_from_trust(running).await?;
        }
        if !running {
            this.start().await?;
            this.started_here = true;
        }
        if let Err(err) = this.create_database().await {
            if this.started_here {
                let _ = this.stop().await;
            }
            return Err(err);
        }
        Ok(this)
    }

    /// The URL of the service's database (it carries the password: never
    /// log it).
    pub fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    /// The URL of the maintenance database `postgres` (tests create their
    /// databases through it).
    pub fn admin_url(&self) -> String {
        self.url_of("postgres")
    }

    fn url_of(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={dbname}",
            self.port, self.password
        )
    }

    /// The loopback port the cluster listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The program and arguments that run `program` of the server binaries
    /// as the cluster's owner.
    fn argv(&self, program: &str) -> Vec<OsString> {
        let path = self.bin.join(program).into_os_string();
        match &self.owner {
            Some(user) => vec![
                "runuser".into(),
                "-u".into(),
                user.name.clone().into(),
                "--".into(),
                path,
            ],
            None => vec![path],
        }
    }

    fn command(&self, program: &str) -> Command {
        let argv = self.argv(program);
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, what: &str, mut command: Command) -> Result<(), EmbeddedError> {
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .map_err(|_| EmbeddedError(format!("{what} timed out")))?
            .map_err(|e| EmbeddedError(format!("{what}: {e}")))?;
        if !output.status.success() {
            return fail(format!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(())
    }

    async fn init(&self) -> Result<(), EmbeddedError> {
        tokio::fs::create_dir_all(&self.pgdata)
            .await
            .map_err(|e| EmbeddedError(e.to_string()))?;
        if let Some(user) = &self.owner {
            for dir in [self.pgdata.parent(), Some(self.pgdata.as_path())]
                .into_iter()
                .flatten()
            {
                if dir.ends_with("pg") || dir.starts_with(&user.dir) {
                    self.chown(dir)?;
                }
            }
        }
        // The superuser's password reaches initdb through a file only the
        // cluster's owner can read, removed right after.
        let pwfile = access::PasswordFile::write(self)?;
        let mut initdb = self.command("initdb");
        initdb
            .arg("-D")
            .arg(&self.pgdata)
            .args(["--auth=scram-sha-256", "-U", "postgres", "-E", "UTF8"])
            .arg(format!("--pwfile={}", pwfile.path().display()))
            .arg("--no-instructions");
        self.run("initdb", initdb).await?;
        drop(pwfile);
        access::write_hba(&self.pgdata)
    }

    /// Gives `path` to the cluster's owner (as root).
    fn chown(&self, path: &Path) -> Result<(), EmbeddedError> {
        if let Some(user) = &self.owner {
            std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| EmbeddedError(format!("chown {}: {e}", path.display())))?;
        }
        Ok(())
    }

    async fn running(&self) -> bool {
        let mut status = self.command("pg_ctl");
        status.arg("-D").arg(&self.pgdata).arg("status");
        status.stdout(Stdio::null()).stderr(Stdio::null());
        matches!(status.status().await, Ok(s) if s.success())
    }

    async fn start(&self) -> Result<(), EmbeddedError> {
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c password_encryption=scram-sha-256",
                self.port,
                self.pgdata.display()
            ))
            .arg("-l")
            .arg(self.pgdata.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        self.run("pg_ctl start", start).await
    }

    async fn connect(
        &self,
        dbname: &str,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), EmbeddedError> {
        let (client, connection) =
            tokio_postgres::connect(&self.url_of(dbname), tokio_postgres::NoTls)
                .await
                .map_err(|e| EmbeddedError(format!("connect: {e}")))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, driver))
    }

    async fn create_database(&self) -> Result<(), EmbeddedError> {
        let (client, driver) = self.connect("postgres").await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .await
            .map_err(|e| EmbeddedError(e.to_string()))?
            .is_some();
        if !exists {
            if let Err(err) = client
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .await
            {
                // Another process may have created it meanwhile.
                if err.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) {
                    return fail(format!("create database: {err}"));
                }
            }
        }
        drop(client);
        let _ = driver.await;
        Ok(())
    }

    /// True if this process started the cluster.
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    fn stop_args(&self) -> Vec<OsString> {
        let mut argv = self.argv("pg_ctl");
        argv.extend([
            "-D".into(),
            self.pgdata.clone().into_os_string(),
            "-m".into(),
            "fast".into(),
            "-w".into(),
            "-t".into(),
            "30".into(),
            "stop".into(),
        ]);
        argv
    }

    /// Stops the cluster (fast shutdown).
    pub async fn stop(&self) -> Result<(), EmbeddedError> {
        let argv = self.stop_args();
        let mut stop = Command::new(&argv[0]);
        stop.args(&argv[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        self.run("pg_ctl stop", stop).await
    }

    /// Stops the cluster from a context that cannot wait asynchronously (a
    /// destructor on the way out of the process).
    fn stop_blocking(&self) -> Result<(), EmbeddedError> {
        let argv = self.stop_args();
        let output = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| EmbeddedError(format!("pg_ctl stop: {e}")))?;
        if !output.status.success() {
            return fail(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(())
    }
}
