//! Input rules, checked before anything is written, so bad input is refused
//! with `INVALID_ARGUMENT` and changes nothing. The backends re-check what
//! could hurt them (file paths); these are the rules users read.

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

/// A rule that input broke, phrased for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// 1–63 characters of `[a-z0-9-]`, starting with a letter, not ending in '-'.
pub fn workspace_name(name: &str) -> Result<(), Invalid> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return invalid(format!("name must be 1–{MAX_NAME_LEN} characters"));
    }
    if !ok_chars || !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.ends_with('-') {
        return invalid(
            "name must be lower-case letters, digits and '-', start with a letter and not end with '-'",
        );
    }
    Ok(())
}

/// An environment-variable name outside the agent's reserved prefix.
pub fn env_name(what: &str, name: &str) -> Result<(), Invalid> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok
        || name.len() > MAX_SECRET_NAME_LEN
        || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return invalid(format!(
            "{what} name must match [A-Za-z_][A-Za-z0-9_]* and be at most {MAX_SECRET_NAME_LEN} bytes"
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return invalid(format!(
            "{what} names starting with {RESERVED_PREFIX} are reserved for the agent"
        ));
    }
    Ok(())
}

/// A secret value: bounded, and no NUL (it becomes an environment value).
pub fn secret_value(value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_SECRET_VALUE_LEN {
        return invalid(format!(
            "secret value must be at most {MAX_SECRET_VALUE_LEN} bytes"
        ));
    }
    if value.contains('\0') {
        return invalid("secret value must not contain NUL");
    }
    Ok(())
}

/// A relative '/'-separated path with no empty, '.' or '..' segment and no
/// NUL or backslash.
pub fn file_path(path: &str) -> Result<(), Invalid> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return invalid(format!("path must be 1–{MAX_PATH_LEN} bytes"));
    }
    if path.contains('\0') || path.contains('\\') {
        return invalid("path must not contain NUL or backslash");
    }
    if path.starts_with('/') {
        return invalid("path must be relative");
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return invalid("path must not contain empty, '.' or '..' segments");
    }
    Ok(())
}

/// File content size.
pub fn file_content(content: &[u8]) -> Result<(), Invalid> {
    if content.len() > MAX_FILE_LEN {
        return invalid(format!("file must be at most {MAX_FILE_LEN} bytes"));
    }
    Ok(())
}

/// Free text kept with a cycle or a probe report.
pub fn reason(what: &str, text: &str) -> Result<(), Invalid> {
    if text.len() > MAX_REASON_LEN {
        return invalid(format!("{what} must be at most {MAX_REASON_LEN} bytes"));
    }
    Ok(())
}

/// A workspace spec: bounded sizes, environment names like secret names.
pub fn spec(spec: &WorkspaceSpec) -> Result<(), Invalid> {
    let short_token = |what: &str, value: &str| {
        if value.len() > 255 || value.contains(char::is_whitespace) || value.contains('\0') {
            invalid(format!(
                "spec.{what} must be at most 255 bytes without spaces"
            ))
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
            "spec.command must have at most 64 arguments of at most 4096 bytes, without NUL",
        );
    }
    if spec.env.len() > 200 {
        return invalid("spec.env must have at most 200 variables");
    }
    for (name, value) in &spec.env {
        env_name("spec.env", name)?;
        if value.len() > 32 * 1024 || value.contains('\0') {
            return invalid("spec.env values must be at most 32 KiB without NUL");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for good in ["a", "dev-1", "x0-y", &"a".repeat(63)] {
            assert!(workspace_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1abc", "Abc", "a_b", "a-", "a b", "ä", &"a".repeat(64)] {
            assert!(workspace_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        for good in ["a", "a/b.txt", "dir/.hidden", "x..y"] {
            assert!(file_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a/",
            "a\0b",
            "a\\b",
        ] {
            assert!(file_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secret_names_cannot_shadow_the_agent() {
        assert!(env_name("secret", "API_KEY").is_ok());
        assert!(env_name("secret", "_x1").is_ok());
        for bad in ["", "1A", "A-B", "WL_AGENT_TOKEN", "A B"] {
            assert!(env_name("secret", bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn accepted_paths_never_escape(path in "[a-z./\\\\\0]{0,12}") {
            if file_path(&path).is_ok() {
                prop_assert!(!path.starts_with('/'));
                prop_assert!(path.split('/').all(|s| s != ".." && s != "." && !s.is_empty()));
                prop_assert!(!path.contains('\0'));
            }
        }

        #[test]
        fn accepted_names_are_dns_safe(name in "[a-zA-Z0-9_ -]{0,70}") {
            if workspace_name(&name).is_ok() {
                prop_assert!(name.len() <= 63);
                prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }

        #[test]
        fn accepted_paths_stay_under_their_root(
            segments in proptest::collection::vec(
                prop_oneof!["\\.\\.", "\\.", "", "[a-z]{1,4}", "\\PC{1,4}"],
                1..6,
            ),
            absolute in any::<bool>(),
        ) {
            let path = format!("{}{}", if absolute { "/" } else { "" }, segments.join("/"));
            if file_path(&path).is_ok() {
                // Joined under a root, the path resolves below it.
                let root = std::path::Path::new("/root-dir");
                let mut depth = 0usize;
                for part in root.join(&path).strip_prefix(root).unwrap().components() {
                    match part {
                        std::path::Component::Normal(_) => depth += 1,
                        other => prop_assert!(false, "{path:?} has {other:?}"),
                    }
                }
                prop_assert!(depth >= 1);
                prop_assert!(!path.contains('\0') && !path.starts_with('/'));
            }
        }

        #[test]
        fn any_text_is_checked_without_panicking(text in "\\PC{0,80}") {
            let _ = workspace_name(&text);
            let _ = file_path(&text);
            let _ = env_name("secret", &text);
            let _ = secret_value(&text);
            if workspace_name(&text).is_ok() {
                prop_assert!(text.is_ascii() && !text.is_empty());
            }
        }

        #[test]
        fn workspace_ids_are_uuids_and_round_trip(text in "\\PC{0,40}", bytes in any::<[u8; 16]>()) {
            use crate::domain::WorkspaceId;
            if let Ok(id) = text.parse::<WorkspaceId>() {
                prop_assert!(uuid::Uuid::parse_str(&text).is_ok());
                prop_assert_eq!(id.to_string().parse::<WorkspaceId>().unwrap(), id);
            }
            let uuid = uuid::Uuid::from_bytes(bytes).to_string();
            prop_assert!(uuid.parse::<WorkspaceId>().is_ok());
        }

        #[test]
        fn accepted_env_names_are_portable(name in "[A-Za-z0-9_=.$-]{0,10}") {
            if env_name("secret", &name).is_ok() {
                prop_assert!(!name.contains('='));
                prop_assert!(!name.starts_with(|c: char| c.is_ascii_digit()));
            }
        }
    }
}
