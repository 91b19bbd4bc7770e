//! What a caller asks to change, as plain data: a config mutation, a new
//! workspace, and who asked. The engine admits them (C2, C13); the store
//! writes them in the admitting transaction; the audit log names them.

use super::{BackendKind, Secret, WorkspaceSpec};

/// A config mutation, applied in the same transaction that admits its
/// CONFIG_CHANGED request, so a change can never commit without the cycle
/// that delivers it (the "lost restart" of SPEC failure 1).
#[derive(Clone, Debug)]
pub enum Change {
    /// Set or replace a secret.
    SetSecret {
        /// Secret name.
        name: String,
        /// Secret value (redacted in `Debug`).
        value: Secret,
    },
    /// Remove a secret.
    DeleteSecret {
        /// Secret name.
        name: String,
    },
    /// Write (or replace) a file.
    WriteFile {
        /// Relative path.
        path: String,
        /// Content.
        content: Vec<u8>,
    },
    /// Remove the file at `path`.
    DeleteFile {
        /// Relative path.
        path: String,
    },
}

/// A workspace to insert, in the same transaction that admits its CREATE
/// request.
#[derive(Clone, Debug)]
pub struct Creation {
    /// Unique among live workspaces.
    pub name: String,
    /// Where it runs.
    pub backend: BackendKind,
    /// What it runs.
    pub spec: WorkspaceSpec,
}

/// The audit identity of a request made by a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audited {
    /// The caller's name (its token's name).
    pub actor: String,
    /// The RPC, e.g. `SetSecret`.
    pub action: &'static str,
}
