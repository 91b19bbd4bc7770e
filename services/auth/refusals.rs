//! The audit trail of refused calls. Every call the auth layer refuses
//! (`UNAUTHENTICATED`, `PERMISSION_DENIED`) is counted here, in memory,
//! under (method, code, who) — the caller's token name when the token was
//! valid, else the peer's IP address — and a background task writes one
//! audit row per key per interval with the count. A flood of refused calls
//! costs a map increment each and a bounded number of rows: at most
//! [`MAX_KEYS`] per interval, the rest folded into one overflow row.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").
//!
//! The token a refused caller sent is never recorded: it may be a typo of
//! a real one.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::store::{RefusedRow, Store};

/// Most distinct keys kept per interval; further keys are counted under
/// one overflow key, so memory and rows per interval stay bounded whatever
/// an attacker varies (paths, addresses).
pub const MAX_KEYS: usize = 1024;

/// Longest method string kept (the path is the caller's to choose).
const MAX_METHOD_LEN: usize = 128;

/// Who was refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Who {
    /// A valid token of too low a role: its name.
    Caller(String),
    /// No valid token: where the call came from, if known.
    Peer(Option<IpAddr>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    method: String,
    code: tonic::Code,
    who: Who,
}

/// Refused calls counted since the last flush.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<HashMap<Key, i64>>,
}

impl Refusals {
    /// A new, empty count.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Counts one refused call of the method at HTTP `path`.
    pub fn record(&self, path: &str, code: tonic::Code, who: Who) {
        let mut key = Key {
            method: method_of(path),
            code,
            who,
        };
        let mut counts = self.counts.lock().expect("refusals lock");
        if counts.len() >= MAX_KEYS && !counts.contains_key(&key) {
            key = Key {
                method: "*".into(),
                code,
                who: Who::Peer(None),
            };
        }
        *counts.entry(key).or_default() += 1;
    }

    /// Takes the counts so far, as audit rows.
    pub fn drain(&self) -> Vec<RefusedRow> {
        let counts = std::mem::take(&mut *self.counts.lock().expect("refusals lock"));
        counts
            .into_iter()
            .map(|(key, count)| {
                let (actor, peer) = match key.who {
                    Who::Caller(name) => (name, None),
                    Who::Peer(ip) => ("anonymous".to_owned(), ip.map(|ip| ip.to_string())),
                };
                RefusedRow {
                    actor,
                    action: key.method,
                    code: code_name(key.code).to_owned(),
                    peer,
                    count,
                }
            })
            .collect()
    }

    /// Writes the counts every `interval` until `stop`, then once more.
    pub async fn flush_every(
        self: Arc<Self>,
        store: Store,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = ticks.tick() => false,
                () = stop.cancelled() => true,
            };
            let rows = self.drain();
            if !rows.is_empty() {
                if let Err(err) = store.append_refused(&rows).await {
                    let calls: i64 = rows.iter().map(|r| r.count).sum();
                    tracing::warn!(%err, calls, "could not record refused calls in the audit log");
                }
            }
            if last {
                return;
            }
        }
    }
}

/// The method name of a known service's path (as mutation rows name it),
/// else the path itself, bounded.
fn method_of(path: &str) -> String {
    for service in [super::LIFECYCLE, super::AGENT] {
        if let Some(method) = path.strip_prefix(service) {
            if !method.contains('/') && method.len() <= MAX_METHOD_LEN {
                return method.to_owned();
            }
        }
    }
    let mut end = path.len().min(MAX_METHOD_LEN);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_owned()
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const GET: &str = "/workspace.lifecycle.v1.WorkspaceLifecycle/GetWorkspace";

    #[test]
    fn refusals_aggregate_per_method_code_and_who() {
        let refusals = Refusals::new();
        let peer = Who::Peer(Some("10.0.0.1".parse().unwrap()));
        for _ in 0..1000 {
            refusals.record(GET, Code::Unauthenticated, peer.clone());
        }
        refusals.record(GET, Code::PermissionDenied, Who::Caller("ro".into()));
        let mut rows = refusals.drain();
        rows.sort_by_key(|r| r.count);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].actor.as_str(), rows[0].code.as_str(), rows[0].count),
            ("ro", "PERMISSION_DENIED", 1)
        );
        assert_eq!(rows[1].action, "GetWorkspace");
        assert_eq!(rows[1].peer.as_deref(), Some("10.0.0.1"));
        assert_eq!(rows[1].count, 1000);
        assert!(refusals.drain().is_empty(), "drained");
    }

    #[test]
    fn an_attacker_varying_every_key_gets_bounded_rows() {
        let refusals = Refusals::new();
        for i in 0..10_000u32 {
            let path = format!("/x.Y/{}{}", "m".repeat(300), i);
            let ip = IpAddr::from(i.to_be_bytes());
            refusals.record(&path, Code::Unauthenticated, Who::Peer(Some(ip)));
        }
        let rows = refusals.drain();
        assert_eq!(rows.len(), MAX_KEYS + 1);
        assert_eq!(rows.iter().map(|r| r.count).sum::<i64>(), 10_000);
        assert!(rows.iter().all(|r| r.action.len() <= MAX_METHOD_LEN));
        let overflow = rows.iter().find(|r| r.action == "*").unwrap();
        assert_eq!(overflow.count, 10_000 - MAX_KEYS as i64);
    }
}
