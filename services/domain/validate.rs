//! Input rules, checked before anything is written, so bad input is refused
//! with `INVALID_ARGUMENT` and changes nothing. The backends re-check what
//! could hurt them (file paths); these are the rules users read.
//! No lifecycle contract (C1–C20): bad input gets a precise status and changes nothing.
//!
//! Two rules are allow-lists because what they guard reaches a process:
//! environment names ([`env_name`]) and file paths ([`file_path`]). Anything
//! not of the allowed shape is refused, so a name or character nobody
//! thought of is refused too.

use workspace_agent::env::RESERVED_PREFIX;

use super::WorkspaceSpec;

/// Longest workspace name (fits a DNS label and a container name prefix).
pub const MAX_NAME_LEN: usize = 63;
/// Longest secret or environment variable name.
pub const MAX_SECRET_NAME_LEN: usize = 128;
/// Largest secret value.
pub const MAX_SECRET_VALUE_LEN: usize = 64 * 1024;
/// Longest file path.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest path segment: what every Linux filesystem accepts (`NAME_MAX`).
pub const MAX_SEGMENT_LEN: usize = 255;
/// Largest file.
pub const MAX_FILE_LEN: usize = 1024 * 1024;
/// Most bytes all of a workspace's files may hold together.
pub const MAX_TOTAL_FILE_BYTES: i64 = 64 * 1024 * 1024;
/// Most files per workspace.
pub const MAX_FILES: i64 = 1000;
/// Most secrets per workspace.
pub const MAX_SECRETS: i64 = 500;
/// Longest free-text reason or probe detail.
pub const MAX_REASON_LEN: usize = 1024;

/// A rule that input broke: which request field, and the rule phrased for
/// the caller. `Display` is the message alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// The request field that broke the rule ("name", "spec.env", "path"…).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn invalid<T>(field: &str, msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid {
        field: field.to_owned(),
        message: msg.into(),
    })
}

/// 1–63 characters of `[a-z0-9-]`, starting with a letter, not ending in '-'.
pub fn workspace_name(name: &str) -> Result<(), Invalid> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return invalid("name", format!("name must be 1–{MAX_NAME_LEN} characters"));
    }
    if !ok_chars || !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.ends_with('-') {
        return invalid(
            "name",
            "name must be lower-case letters, digits and '-', start with a letter and not end with '-'",
        );
    }
    Ok(())
}

/// Environment names no secret or `spec.env` entry may take: each is read
/// by a dynamic loader, the C library, a shell or a language runtime to
/// decide what code to run or where to find it, or is the agent's own.
/// An entry ending in `_` or naming a family (`PYTHON`) covers every name
/// it starts; the others are exact. One row, one reason.
pub const RESERVED_ENV: &[(&str, Match, &str)] = &[
    (RESERVED_PREFIX, Match::Prefix, "the agent's own variables"),
    (
        "LD_",
        Match::Prefix,
        "the dynamic loader (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT…)",
    ),
    ("DYLD_", Match::Prefix, "the macOS dynamic loader"),
    (
        "GCONV_PATH",
        Match::Exact,
        "glibc loads charset converters from it",
    ),
    ("GETCONF_DIR", Match::Exact, "glibc's secure-mode list"),
    (
        "GLIBC_TUNABLES",
        Match::Exact,
        "glibc tunables (CVE-2023-4911)",
    ),
    ("HOSTALIASES", Match::Exact, "glibc's secure-mode list"),
    ("LOCALDOMAIN", Match::Exact, "glibc's secure-mode list"),
    ("LOCPATH", Match::Exact, "glibc loads locale data from it"),
    ("MALLOC_", Match::Prefix, "glibc's allocator hooks"),
    ("NIS_PATH", Match::Exact, "glibc's secure-mode list"),
    ("NLSPATH", Match::Exact, "message catalogues loaded from it"),
    ("RESOLV_HOST_CONF", Match::Exact, "glibc's secure-mode list"),
    ("RES_OPTIONS", Match::Exact, "glibc's secure-mode list"),
    ("TMPDIR", Match::Exact, "glibc's secure-mode list"),
    ("TZDIR", Match::Exact, "glibc's secure-mode list"),
    ("PATH", Match::Exact, "where programs are looked up"),
    (
        "HOME",
        Match::Exact,
        "where shells and tools read start-up files",
    ),
    ("IFS", Match::Exact, "how shells split words"),
    ("ENV", Match::Exact, "a file POSIX shells run at start"),
    ("BASH_ENV", Match::Exact, "a file bash runs at start"),
    ("BASH_FUNC_", Match::Prefix, "functions bash imports"),
    ("BASHOPTS", Match::Exact, "bash options"),
    ("SHELLOPTS", Match::Exact, "shell options"),
    ("SHELL", Match::Exact, "the shell programs spawn"),
    ("PS4", Match::Exact, "expanded by a tracing shell"),
    ("PROMPT_COMMAND", Match::Exact, "run by an interactive bash"),
    ("CDPATH", Match::Exact, "changes what `cd` resolves to"),
    ("ZDOTDIR", Match::Exact, "where zsh reads start-up files"),
    (
        "PYTHON",
        Match::Prefix,
        "Python (PYTHONPATH, PYTHONSTARTUP, PYTHONHOME…)",
    ),
    ("PERL", Match::Prefix, "Perl (PERL5LIB, PERL5OPT, PERLLIB…)"),
    ("RUBY", Match::Prefix, "Ruby (RUBYOPT, RUBYLIB)"),
    ("GEM_", Match::Prefix, "RubyGems load paths"),
    ("NODE_", Match::Prefix, "Node.js (NODE_OPTIONS, NODE_PATH)"),
    (
        "JAVA_TOOL_OPTIONS",
        Match::Exact,
        "the JVM loads agents from it",
    ),
    (
        "JDK_JAVA_OPTIONS",
        Match::Exact,
        "the JVM's launcher options",
    ),
    (
        "CLASSPATH",
        Match::Exact,
        "where the JVM loads classes from",
    ),
    ("LUA_", Match::Prefix, "Lua (LUA_INIT runs code)"),
    ("PHPRC", Match::Exact, "PHP's configuration"),
    ("PHP_INI_SCAN_DIR", Match::Exact, "PHP's configuration"),
    (
        "GIT_",
        Match::Prefix,
        "git runs commands named here (GIT_SSH_COMMAND…)",
    ),
];

/// How an entry of [`RESERVED_ENV`] matches a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// The name is the entry.
    Exact,
    /// The name starts with the entry.
    Prefix,
}

/// The reason `name` is reserved, if it is.
pub fn reserved_env(name: &str) -> Option<&'static str> {
    RESERVED_ENV
        .iter()
        .find(|(entry, how, _)| match how {
            Match::Exact => name == *entry,
            Match::Prefix => name.starts_with(entry),
        })
        .map(|(_, _, why)| *why)
}

/// An environment-variable name a secret or `spec.env` may use. The rule is
/// an allow-list: upper-case letters, digits and '_', starting with a
/// letter (`[A-Z][A-Z0-9_]*`, at most 128 bytes), and not one of
/// [`RESERVED_ENV`]. Lower-case and mixed-case names are refused too, so no
/// spelling of a hook slips past (`ld_preload` is not read by the loader,
/// but neither is it a name anyone needs). `field` names the request field.
pub fn env_name(field: &str, name: &str) -> Result<(), Invalid> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_uppercase());
    if !first_ok
        || name.len() > MAX_SECRET_NAME_LEN
        || !bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return invalid(
            field,
            format!(
                "environment names must match [A-Z][A-Z0-9_]* and be at most {MAX_SECRET_NAME_LEN} bytes"
            ),
        );
    }
    if let Some(why) = reserved_env(name) {
        return invalid(field, format!("environment name {name} is reserved: {why}"));
    }
    Ok(())
}

/// The name of a secret to delete: any name an earlier version accepted
/// (`[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes), so one stored before
/// [`env_name`] tightened — an `LD_PRELOAD` planted by an older version,
/// say — can still be removed.
pub fn secret_name_to_delete(name: &str) -> Result<(), Invalid> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok
        || name.len() > MAX_SECRET_NAME_LEN
        || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return invalid(
            "name",
            format!(
                "secret names match [A-Za-z_][A-Za-z0-9_]* and are at most {MAX_SECRET_NAME_LEN} bytes"
            ),
        );
    }
    Ok(())
}

/// A secret value: bounded, and no NUL (it becomes an environment value).
pub fn secret_value(value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_SECRET_VALUE_LEN {
        return invalid(
            "value",
            format!("secret value must be at most {MAX_SECRET_VALUE_LEN} bytes"),
        );
    }
    if value.contains('\0') {
        return invalid("value", "secret value must not contain NUL");
    }
    Ok(())
}

/// True for a byte a path segment may hold: the POSIX portable filename
/// character set (`A–Z a–z 0–9 . _ -`). Each backend carries these as they
/// are — a file name, a tar entry, a word of a shell script — without
/// quoting, encoding or normalisation.
fn portable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// A relative '/'-separated path of 1–1024 bytes whose segments are 1–255
/// bytes of the portable filename characters, not `.` or `..`, and not
/// starting with '-' (which a tool would read as an option).
pub fn file_path(path: &str) -> Result<(), Invalid> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return invalid("path", format!("path must be 1–{MAX_PATH_LEN} bytes"));
    }
    if path.starts_with('/') {
        return invalid("path", "path must be relative");
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return invalid("path", "path must not contain empty, '.' or '..' segments");
        }
        if segment.len() > MAX_SEGMENT_LEN {
            return invalid(
                "path",
                format!("each path segment must be at most {MAX_SEGMENT_LEN} bytes"),
            );
        }
        if !segment.bytes().all(portable) {
            return invalid(
                "path",
                "path segments may hold only A–Z, a–z, 0–9, '.', '_' and '-'",
            );
        }
        if segment.starts_with('-') {
            return invalid("path", "path segments must not start with '-'");
        }
    }
    Ok(())
}

/// File content size.
pub fn file_content(content: &[u8]) -> Result<(), Invalid> {
    if content.len() > MAX_FILE_LEN {
        return invalid(
            "content",
            format!("file must be at most {MAX_FILE_LEN} bytes"),
        );
    }
    Ok(())
}

/// Free text kept with a cycle or a probe report; `field` names it.
pub fn reason(field: &str, text: &str) -> Result<(), Invalid> {
    if text.len() > MAX_REASON_LEN {
        return invalid(
            field,
            format!("{field} must be at most {MAX_REASON_LEN} bytes"),
        );
    }
    Ok(())
}

/// A workspace spec: bounded sizes, environment names like secret names.
pub fn spec(spec: &WorkspaceSpec) -> Result<(), Invalid> {
    let short_token = |what: &str, value: &str| {
        if value.len() > 255 || value.contains(char::is_whitespace) || value.contains('\0') {
            invalid(
                &format!("spec.{what}"),
                format!("spec.{what} must be at most 255 bytes without spaces"),
            )
        } else {
            Ok(())
        }
    };
    short_token("image", &spec.image)?;
    short_token("instance_type", &spec.instance_type)?;
    short_token("ami", &spec.ami)?;
    if spec.command.len() > 64
        || spec
            .command
            .iter()
            .any(|a| a.len() > 4096 || a.contains('\0'))
    {
        return invalid(
            "spec.command",
            "spec.command must have at most 64 arguments of at most 4096 bytes, without NUL",
        );
    }
    if spec.env.len() > 200 {
        return invalid("spec.env", "spec.env must have at most 200 variables");
    }
    for (name, value) in &spec.env {
        env_name("spec.env", name)?;
        if value.len() > 32 * 1024 || value.contains('\0') {
            return invalid(
                "spec.env",
                "spec.env values must be at most 32 KiB without NUL",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
