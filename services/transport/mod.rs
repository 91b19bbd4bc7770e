//! The transport under the gRPC services: which TCP connections the server
//! holds and for how long. Nothing here knows about RPCs beyond "a call is
//! open on this connection".
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").
//!
//! - [`accept`]: the accept loop — a cap on open connections, and a backoff
//!   instead of a spin when the process runs out of descriptors;
//! - [`conn`]: each connection's clock — closed if no call arrives within
//!   the handshake timeout (TLS, the HTTP/2 preface and a first request),
//!   or once it has had no open call for the idle timeout;
//! - [`track`]: the tower layer that tells a connection when a call opens
//!   and ends.
//!
//! Together with HTTP/2's own limits (concurrent streams per connection,
//! keepalive pings), set in `server.rs`, this bounds what an
//! unauthenticated peer can hold: `max_connections` ×
//! `max_concurrent_streams` streams at most, and a silent connection for
//! at most the handshake timeout.

pub mod accept;
pub mod conn;
pub mod holding;
pub mod track;

use std::time::Duration;

pub use accept::incoming;
pub use conn::{Conn, ConnInfo};
pub use track::TrackCallsLayer;

/// How many connections, streams and seconds a peer gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once; one more is accepted and closed at
    /// once.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams (calls) per connection; the peer is
    /// told in SETTINGS, and a stream beyond it is refused
    /// (`REFUSED_STREAM`).
    pub max_concurrent_streams: u32,
    /// A connection without a first call by then is closed.
    pub handshake_timeout: Duration,
    /// A connection without an open call for this long is closed.
    pub idle_timeout: Duration,
    /// The server pings a connection this often (HTTP/2 PING)…
    pub keepalive_interval: Duration,
    /// …and closes it if the pong is this late.
    pub keepalive_timeout: Duration,
}

/// Descriptors kept out of the connection cap for everything else the
/// server opens: database connections, files, backend child processes.
const FD_RESERVE: u64 = 256;

/// Raises this process's soft limit on open files to its hard limit, as
/// servers commonly do (Go's runtime does it for every program): the
/// default soft limit (often 1,024) is what a silent-connection flood
/// exhausted. Errors are logged, not fatal.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%err, soft, hard, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "could not read the open-file limit"),
    }
}

/// The connection cap to enforce: `requested`, lowered so that the cap
/// plus [`FD_RESERVE`] fits this process's open-file limit — the cap must
/// bite before `EMFILE` does.
pub fn effective_max_connections(requested: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return requested;
    };
    let room = soft.saturating_sub(FD_RESERVE).max(soft / 2);
    let cap = requested
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1);
    if cap < requested {
        tracing::warn!(
            requested,
            cap,
            open_file_limit = soft,
            "the open-file limit lowers the connection cap"
        );
    }
    cap
}
