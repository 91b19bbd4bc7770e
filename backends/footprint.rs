//! What admission knows of a workspace's whole config after a change: sizes,
//! never values, so a backend can refuse a config it could never boot
//! ([`crate::Backend::admits`]) before the change commits.
//! No lifecycle contract (C1–C20): a backend's limits, checked at admission so a change it cannot carry changes nothing.

use workspace_agent::env as agent_env;

use crate::{Launch, LimitExceeded};

/// The longest agent service URL a launch may carry for a backend's bound
/// to hold.
pub const MAX_SERVICE_URL: usize = 256;
/// The longest agent token (ours are 68 bytes).
pub const MAX_TOKEN: usize = 96;

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

impl ConfigFootprint {
    /// The agent's own variables every backend adds (`Launch::environment`),
    /// each with its longest value, the files directory being
    /// `files_dir` bytes long.
    pub fn agent_vars(&self, files_dir: usize) -> [(&'static str, usize); 7] {
        [
            (agent_env::SERVICE_URL, MAX_SERVICE_URL),
            (agent_env::TOKEN, MAX_TOKEN),
            (agent_env::WORKSPACE_ID, 36),
            (agent_env::GENERATION, 20),
            (agent_env::CONFIG_VERSION, 20),
            (
                agent_env::SECRET_NAMES,
                self.secret_name_bytes + self.secrets.saturating_sub(1),
            ),
            (agent_env::FILES_DIR, files_dir),
        ]
    }

    /// An upper bound of what `execve` copies when an agent of this config
    /// starts with its secrets and variables in its environment: every
    /// `NAME=value` and argument with its NUL, and a pointer to each. The
    /// agent's own variables are counted at their longest, `extra_env` adds
    /// a backend's own (`PATH`…), `default_command` is what runs when the
    /// spec names no command.
    pub fn exec_bytes(
        &self,
        files_dir: usize,
        extra_env: usize,
        default_command: &[String],
    ) -> usize {
        let agent = self.agent_vars(files_dir);
        let agent_bytes: usize = agent
            .iter()
            .map(|(name, value)| name.len() + value + 2)
            .sum();
        let user_vars = self.env + self.secrets;
        let user_bytes = self.env_name_bytes
            + self.env_value_bytes
            + self.secret_name_bytes
            + self.secret_value_bytes
            + 2 * user_vars;
        let (args, arg_bytes) = if self.command_args == 0 {
            let bytes = default_command.iter().map(String::len).sum::<usize>();
            (default_command.len(), bytes)
        } else {
            (self.command_args, self.command_bytes)
        };
        let pointers = 8 * (user_vars + agent.len() + args + 2);
        // The program's path is copied once more, as the exec'd file name.
        let program = arg_bytes.min(4096) + 1;
        agent_bytes + user_bytes + extra_env + arg_bytes + args + pointers + program
    }
}

/// Linux refuses an `execve` whose arguments and environment exceed a
/// quarter of the stack limit: a config past `max` could never boot, so
/// admission refuses it (named `limit`) instead of a cycle failing on it
/// after the old generation was stopped.
pub(crate) fn exec_admits(
    needed: usize,
    limit: &'static str,
    max: usize,
) -> Result<(), LimitExceeded> {
    if needed > max {
        return Err(LimitExceeded {
            limit,
            max: max as u64,
            needed: needed as u64,
        });
    }
    Ok(())
}
