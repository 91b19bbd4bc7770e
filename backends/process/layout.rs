//! Where the process backend keeps what: one directory per workspace, one
//! per generation inside it, and who owns each. The records (which pid runs
//! a generation, how it exited) live in directories only the server
//! writes, so an agent can never plant a link the server would follow; the
//! agent owns only its files and its log. Stopped generations keep their
//! directory (with the log) for operators, but only the newest few.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").
//!
//! ```text
//! <root>/                       server, 0711
//!   <workspace>/                server, 0711
//!     gen-<n>/                  server, 0711  instance.json, exit.json
//!       agent.log               agent,  0600
//!       files/                  agent,  0700  (files 0600, directories 0700)
//!       run/                    server, 0711  the agent's working directory, empty
//! ```

use std::{
    fs::{DirBuilder, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, lchown},
    path::{Component, Path, PathBuf},
};

use crate::{BackendError, Generation, WorkspaceId};

use super::identity::Identity;

/// Mode of the directories the server owns: others may pass, not look.
pub(super) const SERVER_DIR_MODE: u32 = 0o711;
const AGENT_DIR_MODE: u32 = 0o700;
const AGENT_FILE_MODE: u32 = 0o600;
const GENERATION_PREFIX: &str = "gen-";

/// The directory tree under one root.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub(super) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub(super) fn workspace(&self, workspace: WorkspaceId) -> PathBuf {
        self.root.join(workspace.to_string())
    }

    pub(super) fn generation(&self, workspace: WorkspaceId, generation: Generation) -> PathBuf {
        self.workspace(workspace)
            .join(format!("{GENERATION_PREFIX}{}", generation.0))
    }

    /// Every workspace that has a directory.
    pub(super) fn workspaces(&self) -> Vec<WorkspaceId> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// The generations of `workspace` that have a directory, oldest first.
    pub(super) fn generations(&self, workspace: WorkspaceId) -> Vec<Generation> {
        let Ok(entries) = std::fs::read_dir(self.workspace(workspace)) else {
            return Vec::new();
        };
        let mut found: Vec<Generation> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                let n = name
                    .to_str()?
                    .strip_prefix(GENERATION_PREFIX)?
                    .parse()
                    .ok()?;
                Some(Generation(n))
            })
            .collect();
        found.sort();
        found
    }
}

/// A directory the server owns (created if missing, mode forced).
pub(super) fn server_dir(path: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(SERVER_DIR_MODE)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SERVER_DIR_MODE))
}

/// Lays out a fresh generation directory: the run and files directories,
/// every file of the config, the log. Written while everything still
/// belongs to the server (no other user can enter `files/` yet), then
/// handed to the agent's user. Returns the log file, for the child's
/// output.
pub(super) fn prepare_generation(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    agent: Option<&Identity>,
) -> Result<std::fs::File, BackendError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    server_dir(dir)?;
    server_dir(&dir.join("run"))?;
    let files_dir = dir.join("files");
    let mut owned = vec![files_dir.clone()];
    agent_dir(&files_dir)?;
    for (relative, content) in files {
        let target = file_target(&files_dir, relative)?;
        // Each missing directory on the way, in order, so each can be
        // handed over.
        let mut parent = files_dir.clone();
        let components: Vec<_> = Path::new(relative).components().collect();
        for component in &components[..components.len() - 1] {
            parent.push(component);
            if !parent.exists() {
                agent_dir(&parent)?;
                owned.push(parent.clone());
            }
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(AGENT_FILE_MODE)
            .open(&target)?;
        file.write_all(content)?;
        owned.push(target);
    }
    let log_path = dir.join("agent.log");
    let log = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(AGENT_FILE_MODE)
        .open(&log_path)?;
    owned.push(log_path);
    if let Some(agent) = agent {
        // Deepest first, `files/` itself last: until then nobody else can
        // enter it.
        for path in owned.iter().rev() {
            lchown(path, Some(agent.uid), Some(agent.gid))?;
        }
    }
    Ok(log)
}

fn agent_dir(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().mode(AGENT_DIR_MODE).create(path)?;
    // The umask may have taken bits away; the mode is exact either way.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(AGENT_DIR_MODE))
}

/// Resolves a stored file path under `root`, refusing anything that could
/// escape it (the API validates paths too; this is the last line).
pub(super) fn file_target(root: &Path, relative: &str) -> Result<PathBuf, BackendError> {
    let path = Path::new(relative);
    if relative.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(BackendError::Rejected(format!(
            "file path {relative:?} is not a plain relative path"
        )));
    }
    Ok(root.join(path))
}

/// Removes a directory tree; gone already is fine.
pub(super) fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
