//! Whom the process backend runs agents as. An agent runs code an operator
//! chose (its spec's command, its files, its environment), so when the
//! server runs as root the agent must not: it runs as an unprivileged user
//! (`nobody` unless configured), and the server checks at startup that this
//! user can reach its directories and run the agent program, failing with
//! an error that names the fix rather than failing every cycle later.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::unistd::{Uid, User};

use crate::BackendError;

/// The user agents run as when the server runs as root and none is named.
pub const DEFAULT_RUN_AS: &str = "nobody";

/// A user other than the server's own, to switch to before exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// Resolves `requested` (default: [`DEFAULT_RUN_AS`] under root, else the
/// server's own user). `None`: agents run as the server's own user.
pub(super) fn resolve(requested: Option<&str>) -> Result<Option<Identity>, BackendError> {
    let me = Uid::effective();
    let name = match requested {
        Some(name) => name,
        None if me.is_root() => DEFAULT_RUN_AS,
        None => return Ok(None),
    };
    let user = User::from_name(name)
        .map_err(|e| BackendError::Other(format!("process backend: cannot look up user {name:?}: {e}")))?
        .ok_or_else(|| {
            BackendError::Other(format!(
                "process backend: no user {name:?} to run agents as (create it, or pass --process-run-as <user>)"
            ))
        })?;
    if user.uid == me {
        return Ok(None);
    }
    if !me.is_root() {
        return Err(BackendError::Other(format!(
            "process backend: only a server running as root can run agents as {name:?} (pass --process-run-as {})",
            User::from_uid(me)
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| me.to_string())
        )));
    }
    if user.uid.is_root() {
        tracing::warn!(
            "process backend: agents run as root (--process-run-as); any operator can run code as root on this host"
        );
        return Ok(None);
    }
    Ok(Some(Identity {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

impl Identity {
    /// Whether this user may use `path` with the permission bit `bit`
    /// (`1` execute/search, `2` write, `4` read), by its mode bits (the
    /// agent runs with no supplementary groups).
    fn may(&self, path: &Path, bit: u32) -> std::io::Result<bool> {
        let meta = std::fs::metadata(path)?;
        let shift = if meta.uid() == self.uid {
            6
        } else if meta.gid() == self.gid {
            3
        } else {
            0
        };
        Ok((meta.mode() >> shift) & bit != 0)
    }

    /// Fails unless this user can search every directory from `/` down to
    /// `dir` (the agent's files and working directory live below it).
    pub(super) fn check_reaches(&self, dir: &Path) -> Result<(), BackendError> {
        let dir = std::fs::canonicalize(dir)?;
        for ancestor in dir.ancestors().collect::<Vec<_>>().into_iter().rev() {
            if !self.may(ancestor, 1)? {
                return Err(BackendError::Other(format!(
                    "process backend: agents run as user {} (uid {}), who cannot enter {} (mode {:o}): \
                     run `chmod o+x {}`, choose a --data-dir under directories {} can enter, \
                     or name another user with --process-run-as",
                    self.name,
                    self.uid,
                    ancestor.display(),
                    mode_of(ancestor),
                    ancestor.display(),
                    self.name,
                )));
            }
        }
        Ok(())
    }

    /// Fails unless this user can run `program` (a path, or a name looked
    /// up in `PATH`).
    pub(super) fn check_runs(&self, program: &str) -> Result<(), BackendError> {
        let Some(path) = locate(program) else {
            return Err(BackendError::Other(format!(
                "process backend: agent program {program:?} not found"
            )));
        };
        let path = std::fs::canonicalize(&path)?;
        if let Some(dir) = path.parent() {
            self.check_reaches(dir).map_err(|e| {
                BackendError::Other(format!(
                    "{e} (needed to run the agent program {}; or pass --agent-command with a program it can run)",
                    path.display()
                ))
            })?;
        }
        if !self.may(&path, 1)? {
            return Err(BackendError::Other(format!(
                "process backend: agents run as user {}, who may not execute {} (mode {:o}): \
                 run `chmod o+rx {}`, pass --agent-command with a program it can run, \
                 or name another user with --process-run-as",
                self.name,
                path.display(),
                mode_of(&path),
                path.display()
            )));
        }
        Ok(())
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.mode() & 0o7777)
        .unwrap_or_default()
}

/// `program` itself if it names a path, else its first match in `PATH`.
fn locate(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn nobody() -> Identity {
        let user = User::from_name(DEFAULT_RUN_AS).unwrap().unwrap();
        Identity {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }

    #[test]
    fn a_private_directory_on_the_way_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = nobody().check_reaches(&inner).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("chmod o+x"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        nobody().check_reaches(&inner).unwrap();
    }

    #[test]
    fn a_program_only_root_may_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let program = dir.path().join("agent");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = nobody()
            .check_runs(&program.to_string_lossy())
            .unwrap_err()
            .to_string();
        assert!(err.contains("may not execute"), "{err}");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        nobody().check_runs(&program.to_string_lossy()).unwrap();
        nobody().check_runs("sh").unwrap();
    }
}
