//! What admission knows of a workspace's whole config after a change: sizes,
//! never values, so a backend can refuse a config it could never boot
//! ([`crate::Backend::admits`]) before the change commits.
//! No lifecycle contract (C1–C20): a backend's limits, checked at admission so a change it cannot carry changes nothing.

use crate::Launch;

/// The sizes of a workspace's config: counts and byte totals of its files,
/// secrets, plain environment and command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigFootprint {
    /// Number of files.
    pub files: usize,
    /// Bytes of all file contents.
    pub file_bytes: usize,
    /// Bytes of all file paths.
    pub path_bytes: usize,
    /// Number of secrets.
    pub secrets: usize,
    /// Bytes of all secret names.
    pub secret_name_bytes: usize,
    /// Bytes of all secret values.
    pub secret_value_bytes: usize,
    /// Number of plain environment variables (the spec's `env`).
    pub env: usize,
    /// Bytes of their names.
    pub env_name_bytes: usize,
    /// Bytes of their values.
    pub env_value_bytes: usize,
    /// Number of command arguments (program included).
    pub command_args: usize,
    /// Bytes of all command arguments.
    pub command_bytes: usize,
}

impl Launch {
    /// The footprint of this launch's config.
    pub fn footprint(&self) -> ConfigFootprint {
        ConfigFootprint {
            files: self.files.len(),
            file_bytes: self.files.values().map(Vec::len).sum(),
            path_bytes: self.files.keys().map(String::len).sum(),
            secrets: self.secrets.len(),
            secret_name_bytes: self.secrets.keys().map(String::len).sum(),
            secret_value_bytes: self.secrets.values().map(|v| v.expose().len()).sum(),
            env: self.spec.env.len(),
            env_name_bytes: self.spec.env.keys().map(String::len).sum(),
            env_value_bytes: self.spec.env.values().map(String::len).sum(),
            command_args: self.spec.command.len(),
            command_bytes: self.spec.command.iter().map(String::len).sum(),
        }
    }
}
