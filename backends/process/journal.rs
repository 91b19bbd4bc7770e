//! An append-only record of what the process backend did, by which tests
//! judge C5 and C18 — every call that changes an instance (start, stop, delete, and the reap of a dead
//! server's orphans) with its begin and end time and the server that made
//! it — shared by
//! all server processes on the machine. It is the backend's own account, so
//! an operator (or a test) can judge the control plane by what actually
//! happened to the workspaces rather than by what the service believes:
//! whether two Stop→Start ever overlapped, which config each start carried.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{BackendError, ConfigVersion, Generation, Halt, Launch, WorkspaceId};

/// One backend operation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// `start`, `stop`, `delete`, or `reap` (a dead server's orphan,
    /// stopped when a server starts).
    pub op: String,
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The generation started (starts only).
    pub generation: Option<Generation>,
    /// The newest generation a stop, delete or reap may touch.
    #[serde(default)]
    pub through: Option<Generation>,
    /// How hard a stop, delete or reap was: `graceful` or `force`.
    #[serde(default)]
    pub halt: Option<String>,
    /// The config version the start carried (starts only).
    pub config_version: Option<ConfigVersion>,
    /// Wall-clock microseconds since the Unix epoch when the call began.
    pub begin_us: u64,
    /// … and when it returned.
    pub end_us: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// The server process that made the call.
    pub server_pid: u32,
}

/// Microseconds since the Unix epoch, the journal's clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Appends entries to one file.
#[derive(Clone, Debug)]
pub(super) struct Journal {
    path: PathBuf,
}

impl Journal {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// One line, one `write` on an `O_APPEND` file, so lines from several
    /// processes never interleave.
    pub(super) fn append(&self, entry: &Entry) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(err) => return tracing::warn!(%err, "cannot encode a journal entry"),
        };
        line.push(b'\n');
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut file| file.write_all(&line));
        if let Err(err) = written {
            tracing::warn!(%err, path = %self.path.display(), "cannot append to the journal");
        }
    }
}

/// Reads a journal (lines that do not parse are skipped).
pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// What one journal entry says of a call besides its timing.
pub(super) struct Call<'a> {
    pub(super) op: &'static str,
    pub(super) workspace: WorkspaceId,
    pub(super) launch: Option<&'a Launch>,
    pub(super) through: Option<Generation>,
    pub(super) halt: Option<Halt>,
}

/// Runs `work` and appends what it was to `journal`, if one is kept.
pub(super) async fn journaled(
    journal: Option<&Journal>,
    call: Call<'_>,
    work: impl std::future::Future<Output = Result<(), BackendError>>,
) -> Result<(), BackendError> {
    let begin_us = now_us();
    let result = work.await;
    if let Some(journal) = journal {
        journal.append(&Entry {
            op: call.op.to_owned(),
            workspace: call.workspace,
            generation: call.launch.map(|l| l.generation),
            config_version: call.launch.map(|l| l.config_version),
            through: call.through,
            halt: call.halt.map(|h| h.as_str().to_owned()),
            begin_us,
            end_us: now_us(),
            ok: result.is_ok(),
            server_pid: std::process::id(),
        });
    }
    result
}
