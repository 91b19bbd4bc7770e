//! The accepted tokens as a running server holds them: replaced whole when
//! the token file changes, so a leaked token is revoked by editing the
//! file — no restart that would cut every caller's streams and in-flight
//! restarts. A file that no longer parses changes nothing: the server
//! keeps the set it had rather than locking everyone out (or in).
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::sync::{Arc, RwLock};

use super::Tokens;

/// The current token set, swapped atomically on reload.
#[derive(Debug, Default)]
pub struct LiveTokens {
    current: RwLock<Arc<Tokens>>,
}

impl LiveTokens {
    /// Starts with `tokens`.
    pub fn new(tokens: Tokens) -> Self {
        Self {
            current: RwLock::new(Arc::new(tokens)),
        }
    }

    /// The set a call is checked against (a call checks one whole set, old
    /// or new, never a mix).
    pub fn current(&self) -> Arc<Tokens> {
        self.current.read().expect("tokens poisoned").clone()
    }

    /// Accepts `tokens` from the next call on; calls already admitted go on.
    pub fn replace(&self, tokens: Tokens) {
        *self.current.write().expect("tokens poisoned") = Arc::new(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn a_replaced_set_refuses_the_tokens_it_dropped_and_accepts_the_new() {
        let live = LiveTokens::new(
            Tokens::default()
                .with_token("ops", Role::Admin, "kept")
                .with_token("leaked", Role::Reader, "revoked"),
        );
        let before = live.current();
        live.replace(Tokens::default().with_token("ops", Role::Admin, "kept"));
        assert!(live.current().verify("revoked").is_none(), "revoked");
        assert!(live.current().verify("kept").is_some(), "kept");
        // A call that took the old set finishes against it.
        assert!(before.verify("revoked").is_some());
    }
}
