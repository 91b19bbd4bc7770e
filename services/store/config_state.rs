//! A workspace's config as admission checks it (C13, C17): names, paths and
//! sizes — never values — read once under the row lock, then every change
//! of the batch checked against the limits and applied in memory, in
//! arrival order. What the batch changed is written with the group's
//! commit, one statement per table for every workspace of the group, so a
//! batch of changes costs no round trip per change.

use std::collections::{BTreeMap, HashMap};

use workspace_backends::ConfigFootprint;

use super::{Store, limits, sealing::Sealed};
use crate::domain::{BackendKind, Error, WorkspaceId, WorkspaceSpec, change::Change, validate};

/// The stored config of one locked workspace, with the batch's changes
/// applied so far.
pub struct ConfigState<'a> {
    workspace: WorkspaceId,
    backend: BackendKind,
    /// Read only when the backends' limits are checked.
    spec: Option<WorkspaceSpec>,
    /// name → value bytes (as sealed, less the tag)
    secrets: HashMap<String, usize>,
    /// path → content bytes
    files: HashMap<String, usize>,
    totals: ConfigFootprint,
    writes: ConfigWrites<'a>,
}

/// What a batch changed: the last word on each secret and file (`None`:
/// deleted).
#[derive(Default)]
pub struct ConfigWrites<'a> {
    pub(super) secrets: BTreeMap<String, Option<Sealed>>,
    pub(super) files: BTreeMap<String, Option<&'a [u8]>>,
}

impl<'a> ConfigState<'a> {
    pub(super) fn new(
        workspace: WorkspaceId,
        backend: BackendKind,
        spec: Option<WorkspaceSpec>,
    ) -> Self {
        Self {
            workspace,
            backend,
            spec,
            secrets: HashMap::new(),
            files: HashMap::new(),
            totals: ConfigFootprint::default(),
            writes: ConfigWrites::default(),
        }
    }

    /// Adds a stored secret (read under the lock).
    pub(super) fn stored_secret(&mut self, name: String, value_bytes: usize) {
        self.totals.secrets += 1;
        self.totals.secret_name_bytes += name.len();
        self.totals.secret_value_bytes += value_bytes;
        self.secrets.insert(name, value_bytes);
    }

    /// Adds a stored file (read under the lock).
    pub(super) fn stored_file(&mut self, path: String, content_bytes: usize) {
        self.totals.files += 1;
        self.totals.path_bytes += path.len();
        self.totals.file_bytes += content_bytes;
        self.files.insert(path, content_bytes);
    }

    /// This config as the changes so far leave it, with nothing to write:
    /// what admission remembers of the workspace (`known_rows.rs`).
    pub fn unwritten(&self) -> ConfigState<'static> {
        ConfigState {
            workspace: self.workspace,
            backend: self.backend,
            spec: self.spec.clone(),
            secrets: self.secrets.clone(),
            files: self.files.clone(),
            totals: self.totals,
            writes: ConfigWrites::default(),
        }
    }

    /// Whether it was read with the workspace's spec (the backends' limits
    /// are checked against it).
    pub(super) fn has_spec(&self) -> bool {
        self.spec.is_some()
    }

    /// What the batch's changes leave to write.
    pub fn into_writes(self) -> ConfigWrites<'a> {
        self.writes
    }

    /// The stored config without the entry `change` replaces.
    fn others(&self, change: &Change) -> ConfigFootprint {
        let mut others = self.totals;
        match change {
            Change::SetSecret { name, .. } => {
                if let Some(bytes) = self.secrets.get(name) {
                    others.secrets -= 1;
                    others.secret_name_bytes -= name.len();
                    others.secret_value_bytes -= bytes;
                }
            }
            Change::WriteFile { path, .. } => {
                if let Some(bytes) = self.files.get(path) {
                    others.files -= 1;
                    others.path_bytes -= path.len();
                    others.file_bytes -= bytes;
                }
            }
            Change::DeleteSecret { .. } | Change::DeleteFile { .. } => {}
        }
        others
    }

    /// Checks `change` against the workspace's and the backend's limits and
    /// applies it; a refused change leaves everything as it was.
    pub fn apply(&mut self, change: &'a Change, store: &Store) -> Result<(), Error> {
        let others = self.others(change);
        if let Some(spec) = &self.spec {
            limits::check(store, self.backend, spec, &self.totals, &others, change)?;
        }
        match change {
            Change::SetSecret { name, value } => {
                if others.secrets as i64 >= validate::MAX_SECRETS {
                    return Err(Error::Exhausted(format!(
                        "a workspace holds at most {} secrets",
                        validate::MAX_SECRETS
                    )));
                }
                let sealed = store.sealer().seal(self.workspace, name, value)?;
                self.remove_secret(name);
                self.stored_secret(name.clone(), value.expose().len());
                self.writes.secrets.insert(name.clone(), Some(sealed));
            }
            Change::DeleteSecret { name } => {
                if !self.remove_secret(name) {
                    return Err(Error::NotFound(format!("secret {name:?}")));
                }
                self.writes.secrets.insert(name.clone(), None);
            }
            Change::WriteFile { path, content } => {
                if let Some(other) = self.clash(path) {
                    return Err(Error::Invalid {
                        field: "path".into(),
                        message: format!(
                            "path {path:?} clashes with the file {other:?}: a path is a file or a directory, not both"
                        ),
                    });
                }
                if others.files as i64 >= validate::MAX_FILES {
                    return Err(Error::Exhausted(format!(
                        "a workspace holds at most {} files",
                        validate::MAX_FILES
                    )));
                }
                if (others.file_bytes + content.len()) as i64 > validate::MAX_TOTAL_FILE_BYTES {
                    return Err(Error::Exhausted(format!(
                        "a workspace's files total at most {} bytes",
                        validate::MAX_TOTAL_FILE_BYTES
                    )));
                }
                self.remove_file(path);
                self.stored_file(path.clone(), content.len());
                self.writes.files.insert(path.clone(), Some(content));
            }
            Change::DeleteFile { path } => {
                if !self.remove_file(path) {
                    return Err(Error::NotFound(format!("file {path:?}")));
                }
                self.writes.files.insert(path.clone(), None);
            }
        }
        Ok(())
    }

    /// A file that would make `path` both a file and a directory: a file at
    /// one of its parents, or one under it.
    fn clash<'s>(&'s self, path: &str) -> Option<&'s str> {
        let parent = path
            .match_indices('/')
            .map(|(at, _)| &path[..at])
            .find(|parent| self.files.contains_key(*parent))
            .and_then(|parent| self.files.get_key_value(parent))
            .map(|(file, _)| file.as_str());
        parent.or_else(|| {
            self.files.keys().map(String::as_str).find(|file| {
                file.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        })
    }

    fn remove_secret(&mut self, name: &str) -> bool {
        let Some(bytes) = self.secrets.remove(name) else {
            return false;
        };
        self.totals.secrets -= 1;
        self.totals.secret_name_bytes -= name.len();
        self.totals.secret_value_bytes -= bytes;
        true
    }

    fn remove_file(&mut self, path: &str) -> bool {
        let Some(bytes) = self.files.remove(path) else {
            return false;
        };
        self.totals.files -= 1;
        self.totals.path_bytes -= path.len();
        self.totals.file_bytes -= bytes;
        true
    }
}
