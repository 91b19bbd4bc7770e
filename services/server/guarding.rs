//! How the server guards its calls, from the flags: who may call (bearer
//! tokens, or the embedded default admin token), over what (TLS, mTLS),
//! and how much (message size, calls in flight, connection limits) — so
//! no peer, authenticated or not, can take the server from the others.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::{path::PathBuf, sync::Arc};

use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::ServeError;
use crate::{
    auth::{LiveTokens, Tokens, admin_token_path, load_or_create_admin_token, refusals::Refusals},
    config::ServeArgs,
    transport,
};

/// How calls are guarded: who may call, over what, and how much.
#[derive(Clone, Debug)]
pub struct Guarding {
    /// Accepted bearer tokens (reloaded when the token file changes).
    pub tokens: Arc<LiveTokens>,
    /// TLS (and mTLS) settings; `None` serves plain HTTP/2.
    pub tls: Option<ServerTlsConfig>,
    /// Largest request message.
    pub max_message_bytes: usize,
    /// Most calls in flight per caller.
    pub max_calls_per_caller: usize,
    /// Most public calls in flight, from everyone together.
    pub max_public_calls: usize,
    /// Most agent calls in flight, from everyone together.
    pub max_agent_calls: usize,
    /// Connections, streams and timeouts.
    pub transport: transport::Limits,
    /// Where refused calls are counted for the audit log.
    pub refusals: Arc<Refusals>,
}

/// The accepted tokens from the flags: the token file and inline entries,
/// or else the embedded default admin token under the data directory.
pub fn tokens(args: &ServeArgs) -> Result<Tokens, ServeError> {
    let file = match &args.auth_tokens_file {
        Some(path) => Some(Tokens::from_file(path)?),
        None => None,
    };
    with_file(args, file)
}

/// The accepted tokens from the flags, the token file's entries as given
/// (already read and parsed).
fn with_file(args: &ServeArgs, file: Option<Tokens>) -> Result<Tokens, ServeError> {
    let mut tokens = Tokens::default();
    if let Some(file) = file {
        tokens = tokens.merge(file);
    }
    if let Some(inline) = &args.auth_tokens {
        tokens = tokens.merge(Tokens::parse(inline)?);
    }
    if args.auth_tokens_file.is_none() && args.auth_tokens.is_none() {
        let (path, admin) = load_or_create_admin_token(&args.data_dir)?;
        tracing::info!(path = %path.display(), "no token file configured; the admin token is in this file");
        return Ok(admin);
    }
    if tokens.is_empty() {
        tracing::warn!(
            "the token configuration accepts no token: every call except health and reflection is refused"
        );
    }
    Ok(tokens)
}

/// How often the token file is looked at for a change.
const TOKEN_FILE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The file the accepted tokens are read from, watched for changes: the
/// token file, or, when no token is configured at all, the embedded
/// default's admin token — a leaked one is revoked by writing another into
/// the file, or by removing the file for a fresh one. Inline tokens alone:
/// nothing to watch.
fn watched_file(args: &ServeArgs) -> Option<PathBuf> {
    match (&args.auth_tokens_file, &args.auth_tokens) {
        (Some(path), _) => Some(path.clone()),
        (None, None) => Some(admin_token_path(&args.data_dir)),
        (None, Some(_)) => None,
    }
}

/// Reads the tokens again, from the same flags, whenever the content of
/// the file they come from changes (looked at every [`TOKEN_FILE_CHECK`]),
/// until `stop`: an operator revokes a token (or adds one) by editing the
/// file, with no restart and no signal (SIGHUP keeps meaning "the terminal
/// closed": a clean stop). A file that fails to read or parse leaves the
/// current set as it is, and says why once per change.
pub(super) async fn reload_tokens_on_change(
    args: ServeArgs,
    live: Arc<LiveTokens>,
    stop: CancellationToken,
) {
    let Some(path) = watched_file(&args) else {
        return;
    };
    let mut loaded = tokio::fs::read(&path).await.ok();
    let mut every = tokio::time::interval(TOKEN_FILE_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = tokio::fs::read(&path).await.ok();
        if now == loaded {
            continue;
        }
        loaded = now;
        // What was just read is what is parsed: one read, and no edit can
        // slip in between the look and the reload.
        let reloaded = if args.auth_tokens_file.is_some() {
            match &loaded {
                Some(bytes) => Tokens::parse(&String::from_utf8_lossy(bytes)),
                None => Tokens::from_file(&path),
            }
            .map_err(ServeError::from)
            .and_then(|file| with_file(&args, Some(file)))
        } else {
            // The admin token, read again (or, removed, made anew: what
            // the file holds now is what counts as loaded).
            let admin = load_or_create_admin_token(&args.data_dir)
                .map(|(_, tokens)| tokens)
                .map_err(ServeError::from);
            loaded = tokio::fs::read(&path).await.ok();
            admin
        };
        match reloaded {
            Ok(tokens) => {
                let accepted = tokens.len();
                live.replace(tokens);
                tracing::info!(accepted, path = %path.display(), "the token file changed: reloaded the accepted tokens");
            }
            Err(err) => {
                tracing::error!(%err, "the token file changed but could not be reloaded; the previous set stays");
            }
        }
    }
}

/// The TLS settings from the flags (`None`: plain HTTP/2).
pub fn tls(args: &ServeArgs) -> Result<Option<ServerTlsConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    // Two rustls providers are linked (ring for tonic, aws-lc-rs for the AWS
    // SDK), so rustls cannot pick one itself: choose ring for the process.
    // An error only says one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|e| ServeError::Tls(format!("{}: {e}", path.display())))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &args.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// The guarding the flags ask for.
pub fn guarding(args: &ServeArgs) -> Result<Guarding, ServeError> {
    Ok(Guarding {
        tokens: Arc::new(LiveTokens::new(tokens(args)?)),
        tls: tls(args)?,
        max_message_bytes: args.max_message_bytes,
        max_calls_per_caller: args.max_calls_per_caller,
        max_public_calls: args.max_public_calls,
        max_agent_calls: args.max_agent_calls,
        transport: transport::Limits {
            max_connections: transport::effective_max_connections(args.max_connections),
            max_concurrent_streams: args.max_concurrent_streams,
            handshake_timeout: args.handshake_timeout,
            idle_timeout: args.idle_timeout,
            keepalive_interval: args.keepalive_interval,
            keepalive_timeout: args.keepalive_timeout,
        },
        refusals: Refusals::new(),
    })
}
