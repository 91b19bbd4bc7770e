//! Bearer tokens: configured as `role:name:sha256-hex` lines (a file or the
//! `WL_AUTH_TOKENS` variable), so the server never holds a token itself,
//! only its SHA-256; a presented token is hashed and compared with every
//! entry in constant time.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Caller, Role};

/// A token configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// A line is not `role:name:sha256-hex`.
    #[error("token entry {line}: {reason}")]
    Malformed {
        /// 1-based entry number.
        line: usize,
        /// What is wrong (never the entry's text).
        reason: String,
    },
    /// The file could not be read or written.
    #[error("token file {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct Entry {
    caller: Caller,
    hash: [u8; 32],
}

/// The accepted tokens, by hash.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.entries.iter().map(|e| &e.caller.name).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token-file line that accepts `token` as `name` with `role`.
pub fn entry(role: Role, name: &str, token: &str) -> String {
    format!("{role}:{name}:{}", hex::encode(hash(token)))
}

/// A fresh high-entropy token (256 random bits, hex).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    format!("wl_{}", hex::encode(bytes))
}

impl Tokens {
    /// Parses `role:name:sha256-hex` entries, one per line or separated by
    /// commas; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut tokens = Self::default();
        let entries = text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let malformed = |reason: &str| TokensError::Malformed {
                line: i + 1,
                reason: reason.into(),
            };
            let mut parts = entry.splitn(3, ':');
            let (Some(role), Some(name), Some(digest)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(malformed("expected role:name:sha256-hex"));
            };
            let role: Role = role.parse().map_err(|e: String| malformed(&e))?;
            if name.is_empty() || name.len() > 128 {
                return Err(malformed("name must be 1–128 characters"));
            }
            let digest = hex::decode(digest)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| malformed("the hash must be 64 hex digits (SHA-256)"))?;
            tokens.add(name, role, digest);
        }
        Ok(tokens)
    }

    /// Reads a token file (see [`Tokens::parse`]).
    pub fn from_file(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    fn add(&mut self, name: &str, role: Role, hash: [u8; 32]) {
        self.entries.push(Entry {
            caller: Caller {
                name: name.to_owned(),
                role,
            },
            hash,
        });
    }

    /// Accepts `token` (held in plain text by the caller, e.g. a test) as
    /// `name` with `role`.
    pub fn with_token(mut self, name: &str, role: Role, token: &str) -> Self {
        self.add(name, role, hash(token));
        self
    }

    /// Adds every entry of `other`.
    pub fn merge(mut self, other: Self) -> Self {
        self.entries.extend(other.entries);
        self
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no token is accepted (every protected call is refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller `token` belongs to. Every entry is compared, in constant
    /// time, whether or not an earlier one matched.
    pub fn verify(&self, token: &str) -> Option<Caller> {
        let presented = hash(token);
        let mut found = None;
        for entry in &self.entries {
            let equal: bool = entry.hash.ct_eq(&presented).into();
            if equal && found.is_none() {
                found = Some(&entry.caller);
            }
        }
        found.cloned()
    }
}

/// Where the embedded default keeps its admin token under the data
/// directory (the server watches it, the tests read it).
pub fn admin_token_path(dir: &Path) -> PathBuf {
    dir.join("admin-token")
}

/// The embedded default: an admin token kept in `dir/admin-token` (mode
/// 0600), created on first use, so `cargo run` gives a usable service
/// without a token file. Returns the file's path and the tokens it grants.
pub fn load_or_create_admin_token(dir: &Path) -> Result<(PathBuf, Tokens), TokensError> {
    let path = admin_token_path(dir);
    let token = crate::private_file::read_or_create(&path, || format!("{}\n", generate_token()))
        .map_err(|source| TokensError::Io {
            path: path.clone(),
            source,
        })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(TokensError::Malformed {
            line: 1,
            reason: format!("{} is empty", path.display()),
        });
    }
    let tokens = Tokens::default().with_token("admin", Role::Admin, token);
    Ok((path, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let line = entry(Role::Operator, "ci", "tok");
        let tokens = Tokens::parse(&line).unwrap();
        assert_eq!(tokens.verify("tok").unwrap().name, "ci");
        assert!(!line.contains("tok"));
    }

    #[test]
    fn parses_and_verifies() {
        let token = generate_token();
        let line = format!(
            "# comment\n\noperator:ops:{}\nreader:ro:{}",
            hex::encode(hash(&token)),
            hex::encode(hash("other"))
        );
        let tokens = Tokens::parse(&line).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.verify(&token),
            Some(Caller {
                name: "ops".into(),
                role: Role::Operator
            })
        );
        assert_eq!(tokens.verify("other").unwrap().role, Role::Reader);
        assert_eq!(tokens.verify("nope"), None);
        assert_eq!(tokens.verify(""), None);
    }

    #[test]
    fn malformed_entries_are_refused_without_echoing_them() {
        for bad in [
            "admin:x",
            "root:x:00",
            "admin::00",
            "admin:x:zz",
            "admin:x:0011",
        ] {
            let err = Tokens::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("token entry 1"), "{bad}: {err}");
            if bad.len() > 8 {
                assert!(!err.contains(bad), "{err}");
            }
        }
    }

    #[test]
    fn admin_token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (path, first) = load_or_create_admin_token(dir.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.verify(token.trim()).unwrap().role, Role::Admin);
        let (_, second) = load_or_create_admin_token(dir.path()).unwrap();
        assert!(second.verify(token.trim()).is_some());
        assert!(Debug(&second).to_string().contains("admin"));
        assert!(!Debug(&second).to_string().contains(token.trim()));
    }

    struct Debug<'a>(&'a Tokens);
    impl std::fmt::Display for Debug<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
}
