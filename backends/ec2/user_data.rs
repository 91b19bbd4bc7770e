//! The user data an instance boots with: a shell script that writes the
//! workspace's files, hands the agent its environment (secrets, the spec's
//! variables and the agent's own) and execs the agent.
//! Contracts: C2 (the config the cycle read), within EC2's 16 KiB.
//!
//! Nothing an operator chose ever appears raw in the script: every path,
//! file content, variable name and value — and the two paths of the
//! machine image — is base64 and decoded by the script into a quoted
//! variable, so no quote, `$()`, backtick or newline can become shell
//! syntax. Bytes that a path or an environment variable cannot carry (NUL,
//! `=` in a name) are refused rather than cut.
//!
//! EC2 limits user data to 16 KiB, so [`bound`] gives a tight upper bound
//! of the script's size from the config's footprint alone, and admission
//! refuses what could never fit (`Ec2Backend::admits`).

use base64::{Engine, engine::general_purpose::STANDARD};

use crate::{BackendError, ConfigFootprint, Launch, LimitExceeded};

/// Where the agent binary lives on the AMI.
pub const AGENT_PATH: &str = "/usr/local/bin/workspace-agent";
/// Where files are written.
pub const FILES_DIR: &str = "/workspace/files";
/// EC2's limit on (unencoded) user data.
pub const MAX_USER_DATA: usize = 16 * 1024;
/// The name admission and errors give that limit.
pub const LIMIT_NAME: &str = "ec2.user_data_bytes";
/// Longest control-plane URL the bound allows for (the server's setting).
pub use crate::footprint::MAX_SERVICE_URL;
/// Longest agent token the bound allows for (the engine mints 68 bytes).
pub use crate::footprint::MAX_TOKEN;

/// The two places on the machine image the script uses; tests run it in a
/// sandbox with their own.
#[derive(Clone, Copy, Debug)]
pub struct Paths<'a> {
    /// Where the files go.
    pub files_dir: &'a str,
    /// The agent program the script execs.
    pub agent: &'a str,
}

/// The paths of the production AMI.
pub const PRODUCTION: Paths<'static> = Paths {
    files_dir: FILES_DIR,
    agent: AGENT_PATH,
};

const HEADER: &str = "#!/bin/sh\n\
# workspace-lifecycle bootstrap: every path and value below is base64.\n\
set -eu\n\
d() { printf '%s' \"$1\" | base64 -d; }\n\
set --\n";

/// `$(…; echo x)` then `${v%x}` keeps trailing newlines, which a plain
/// command substitution would strip.
fn files_dir_line(dir: &str) -> String {
    format!("F=$(d '{dir}'; echo x); F=${{F%x}}; mkdir -p -- \"$F\"\n")
}

fn file_line(path: &str, content: &str) -> String {
    format!(
        "p=$(d '{path}'; echo x); p=\"$F/${{p%x}}\"; q=$(dirname -- \"$p\"; echo x); \
         mkdir -p -- \"${{q%?x}}\"; d '{content}' > \"$p\"\n"
    )
}

fn env_line(assignment: &str) -> String {
    format!("a=$(d '{assignment}'; echo x); set -- \"$@\" \"${{a%x}}\"\n")
}

/// `env --` then the assignments: names are data to env(1), never to the
/// shell.
fn exec_line(agent: &str) -> String {
    format!("A=$(d '{agent}'; echo x); exec env -- \"$@\" \"${{A%x}}\"\n")
}

/// The script for `launch` with the machine image's `paths`.
pub fn script(launch: &Launch, paths: &Paths<'_>) -> Result<String, BackendError> {
    for (what, path) in [
        ("files directory", paths.files_dir),
        ("agent path", paths.agent),
    ] {
        if path.is_empty() || path.contains(['\0', '=']) {
            return Err(BackendError::Rejected(format!(
                "the {what} {path:?} is empty or holds NUL or '='"
            )));
        }
    }
    let mut script = String::from(HEADER);
    script.push_str(&files_dir_line(&STANDARD.encode(paths.files_dir)));
    for (path, content) in &launch.files {
        if path.contains('\0')
            || path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(BackendError::Rejected(format!(
                "file path {path:?} is not a plain relative path"
            )));
        }
        script.push_str(&file_line(
            &STANDARD.encode(path),
            &STANDARD.encode(content),
        ));
    }
    for (name, value) in launch.environment(paths.files_dir) {
        if name.is_empty() || name.contains(['\0', '=']) {
            return Err(BackendError::Rejected(format!(
                "variable name {name:?} is empty or holds NUL or '='"
            )));
        }
        if value.contains('\0') {
            // The value is never shown: it may be a secret.
            return Err(BackendError::Rejected(format!(
                "the value of {name:?} holds a NUL byte"
            )));
        }
        script.push_str(&env_line(&STANDARD.encode(format!("{name}={value}"))));
    }
    script.push_str(&exec_line(&STANDARD.encode(paths.agent)));
    Ok(script)
}

/// The production script, base64-encoded as RunInstances expects; refused
/// when it exceeds EC2's limit.
pub fn encode(launch: &Launch) -> Result<String, BackendError> {
    if launch.service_url.len() > MAX_SERVICE_URL || launch.token.expose().len() > MAX_TOKEN {
        return Err(BackendError::Rejected(format!(
            "the agent URL or token is longer than the user data allows for \
             ({MAX_SERVICE_URL} and {MAX_TOKEN} bytes)"
        )));
    }
    let script = script(launch, &PRODUCTION)?;
    if script.len() > MAX_USER_DATA {
        return Err(LimitExceeded {
            limit: LIMIT_NAME,
            max: MAX_USER_DATA as u64,
            needed: script.len() as u64,
        }
        .into());
    }
    Ok(STANDARD.encode(script))
}

/// Σ 4⌈nᵢ/3⌉ over `items` strings of `bytes` in total, bounded above
/// without knowing each nᵢ: 4⌈n/3⌉ ≤ (4n + 8) / 3.
fn base64_bound(bytes: usize, items: usize) -> usize {
    (4 * bytes + 8 * items) / 3
}

/// An upper bound of `script(launch, PRODUCTION).len()` for any launch of
/// this footprint (and a URL and token within their maxima). It exceeds
/// the real size by at most 3 bytes per file and variable plus the slack
/// of the agent's own variables.
pub fn bound(footprint: &ConfigFootprint) -> usize {
    let fixed = HEADER.len()
        + files_dir_line(&STANDARD.encode(FILES_DIR)).len()
        + exec_line(&STANDARD.encode(AGENT_PATH)).len();
    let files = footprint.files * file_line("", "").len()
        + base64_bound(footprint.path_bytes, footprint.files)
        + base64_bound(footprint.file_bytes, footprint.files);
    // name=value of every plain variable and secret.
    let user_vars = footprint.env + footprint.secrets;
    let user_bytes = footprint.env_name_bytes
        + footprint.env_value_bytes
        + footprint.secret_name_bytes
        + footprint.secret_value_bytes
        + user_vars;
    // The agent's own, each at its largest.
    let agent_vars = footprint.agent_vars(FILES_DIR.len());
    let agent_bytes: usize = agent_vars.iter().map(|(n, v)| n.len() + 1 + v).sum();
    let vars = user_vars + agent_vars.len();
    let env = vars * env_line("").len() + base64_bound(user_bytes + agent_bytes, vars);
    fixed + files + env
}

/// Refuses a footprint whose script could exceed EC2's limit.
pub fn admits(footprint: &ConfigFootprint) -> Result<(), LimitExceeded> {
    let needed = bound(footprint);
    if needed > MAX_USER_DATA {
        return Err(LimitExceeded {
            limit: LIMIT_NAME,
            max: MAX_USER_DATA as u64,
            needed: needed as u64,
        });
    }
    Ok(())
}

/// True if `script` is made of the builder's own lines and base64 only:
/// with every single-quoted base64 payload emptied, each line is one of the
/// fixed templates. So no byte of any input can be shell syntax. The fuzz
/// target and the tests hold every script to it.
pub fn only_encoded_data(script: &str) -> bool {
    let templates = [
        files_dir_line(""),
        file_line("", ""),
        env_line(""),
        exec_line(""),
    ];
    let Some(body) = script.strip_prefix(HEADER) else {
        return false;
    };
    body.split_inclusive('\n').all(|line| {
        let mut blanked = String::with_capacity(line.len());
        let mut parts = line.split('\'');
        blanked.push_str(parts.next().unwrap_or_default());
        for (i, part) in parts.enumerate() {
            blanked.push('\'');
            // Odd parts sit between quotes: payloads, base64 only.
            if i % 2 == 0 {
                if !part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
                {
                    return false;
                }
            } else {
                blanked.push_str(part);
            }
        }
        templates.contains(&blanked)
    })
}

/// The environment a user-data script hands the agent, in order. Used by
/// tests that play the instance.
pub fn environment(encoded: &str) -> Result<Vec<(String, String)>, String> {
    let script = STANDARD.decode(encoded).map_err(|e| e.to_string())?;
    let script = String::from_utf8(script).map_err(|e| e.to_string())?;
    script
        .lines()
        .filter_map(|line| line.strip_prefix("a=$(d '"))
        .map(|rest| {
            let encoded = rest.split('\'').next().ok_or("malformed assignment")?;
            let decoded = STANDARD.decode(encoded).map_err(|e| e.to_string())?;
            let decoded = String::from_utf8(decoded).map_err(|e| e.to_string())?;
            let (name, value) = decoded.split_once('=').ok_or("assignment without '='")?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
