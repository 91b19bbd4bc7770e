//! Secrets at rest: every value is sealed with XChaCha20-Poly1305 under a
//! key from configuration before it reaches Postgres. The nonce is random
//! per write (24 bytes, so random nonces cannot collide in practice) and
//! the associated data is the workspace id and the secret name, so a sealed
//! value copied to another row fails to open instead of leaking there.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::{
    Key, KeyInit as _, XChaCha20Poly1305, XNonce,
    aead::{Aead as _, Payload},
};
use sha2::{Digest as _, Sha256};

use crate::{
    domain::Error,
    domain::{Secret, WorkspaceId},
};

/// The 32-byte key secrets are sealed with. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretsKey(Key);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

/// A key that cannot be used (the message never contains key material).
#[derive(Debug, thiserror::Error)]
#[error("secrets key: {0}")]
pub struct KeyError(String);

impl SecretsKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS provides randomness");
        Self(bytes.into())
    }

    /// A key written as 64 hex digits or as base64 of 32 bytes.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .ok_or_else(|| KeyError("must be 64 hex digits or base64 of 32 bytes".into()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError("must be exactly 32 bytes".into()))?;
        Ok(Self(bytes.into()))
    }

    /// Reads a key file (see [`SecretsKey::from_text`]).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
        Self::from_text(&text)
    }

    /// The embedded default: a key kept in `dir/secrets-key` (mode 0600),
    /// created on first use. Returns the file's path and the key.
    pub fn load_or_create(dir: &Path) -> Result<(PathBuf, Self), KeyError> {
        let path = dir.join("secrets-key");
        let text = crate::private_file::read_or_create(&path, || {
            format!("{}\n", hex::encode(Self::generate().0))
        })
        .map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
        let key = Self::from_text(&text)?;
        Ok((path, key))
    }
}

/// Seals and opens secret values.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    /// Keys [`Sealer::digest`]: derived from the secrets key, so a digest
    /// of a request that carries a secret reveals nothing without the key.
    digest_key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

/// What a sealed value is bound to.
fn associated(workspace: WorkspaceId, name: &str) -> Vec<u8> {
    let mut aad = workspace.as_uuid().as_bytes().to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// A sealed value: the nonce and the ciphertext (with its tag).
pub struct Sealed {
    /// 24 random bytes.
    pub nonce: Vec<u8>,
    /// The ciphertext followed by the Poly1305 tag.
    pub ciphertext: Vec<u8>,
}

impl Sealer {
    /// Seals with `key`.
    pub fn new(key: &SecretsKey) -> Self {
        let mut derive = Sha256::new();
        derive.update(b"workspace-lifecycle request digest key\0");
        derive.update(key.0.as_slice());
        Self {
            cipher: XChaCha20Poly1305::new(&key.0),
            digest_key: derive.finalize().into(),
        }
    }

    /// A keyed digest of `data`: equal for equal data under one key, and
    /// useless for guessing `data` without the key (it may hold secrets).
    pub fn digest(&self, data: &[u8]) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.digest_key);
        hash.update(data);
        hash.finalize().into()
    }

    /// Seals the value of secret `name` of `workspace`.
    pub fn seal(
        &self,
        workspace: WorkspaceId,
        name: &str,
        value: &Secret,
    ) -> Result<Sealed, Error> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::Internal(format!("no randomness for a nonce: {e}")))?;
        let aad = associated(workspace, name);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value.expose().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Internal("a secret could not be sealed".into()))?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens what [`Sealer::seal`] sealed for the same workspace and name.
    pub fn open(
        &self,
        workspace: WorkspaceId,
        name: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Secret, Error> {
        let refused = || {
            Error::Internal(format!(
                "secret {name:?} of workspace {workspace} cannot be opened with the configured secrets key"
            ))
        };
        if nonce.len() != 24 {
            return Err(refused());
        }
        let aad = associated(workspace, name);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| refused())?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let sealer = Sealer::new(&SecretsKey::generate());
        let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
        let value = Secret::new("sk-known-plaintext");
        let sealed = sealer.seal(a, "API_KEY", &value).unwrap();
        assert!(
            !sealed
                .ciphertext
                .windows(b"sk-known".len())
                .any(|w| w == b"sk-known")
        );
        let opened = sealer
            .open(a, "API_KEY", &sealed.nonce, &sealed.ciphertext)
            .unwrap();
        assert_eq!(opened.expose(), "sk-known-plaintext");
        // Another row, another name, another key: refused, value not echoed.
        for err in [
            sealer.open(b, "API_KEY", &sealed.nonce, &sealed.ciphertext),
            sealer.open(a, "OTHER", &sealed.nonce, &sealed.ciphertext),
            Sealer::new(&SecretsKey::generate()).open(
                a,
                "API_KEY",
                &sealed.nonce,
                &sealed.ciphertext,
            ),
        ] {
            let err = err.unwrap_err().to_string();
            assert!(!err.contains("sk-known"), "{err}");
        }
        // Two seals of one value differ (random nonces).
        let again = sealer.seal(a, "API_KEY", &value).unwrap();
        assert_ne!(again.nonce, sealed.nonce);
        assert_ne!(again.ciphertext, sealed.ciphertext);
    }

    #[test]
    fn keys_parse_and_never_print() {
        let hex_key = "00".repeat(32);
        assert!(SecretsKey::from_text(&hex_key).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(SecretsKey::from_text(&b64).is_ok());
        for bad in ["", "00", &"zz".repeat(32), &"00".repeat(31)] {
            assert!(SecretsKey::from_text(bad).is_err(), "{bad}");
        }
        let key = SecretsKey::from_text(&"ab".repeat(32)).unwrap();
        assert!(!format!("{key:?}").contains("abab"));
    }

    #[test]
    fn key_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (path, first) = SecretsKey::load_or_create(dir.path()).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (_, second) = SecretsKey::load_or_create(dir.path()).unwrap();
        let ws = WorkspaceId::new();
        let sealed = Sealer::new(&first)
            .seal(ws, "A", &Secret::new("v"))
            .unwrap();
        assert!(
            Sealer::new(&second)
                .open(ws, "A", &sealed.nonce, &sealed.ciphertext)
                .is_ok()
        );
    }
}
