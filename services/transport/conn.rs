//! One accepted connection and its clock. A peer that connects and says
//! nothing, or finishes the TLS handshake and sends no call, is closed
//! after the handshake timeout; a connection with no open call is closed
//! after the idle timeout. The check lives in `poll_read`, which the HTTP/2
//! (or TLS) driver always has pending on a quiet connection, so it needs
//! no task of its own; closing is an error from `poll_read`, upon which
//! the driver drops the connection and with it the cap's permit.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::OwnedSemaphorePermit,
    time::{Instant, Sleep},
};

/// What the transport knows of a connection, in every request's extensions
/// (tonic puts a connection's `ConnectInfo` there, under TLS too).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Its calls, for the idle clock.
    pub activity: Arc<Activity>,
}

/// The calls open on one connection and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    open_calls: AtomicUsize,
    served: AtomicBool,
    /// Milliseconds after `opened` when the last call ended.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            open_calls: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// A call opened; the returned guard ends it when dropped.
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.served.store(true, Ordering::Release);
        self.open_calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    fn end(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_end_ms.store(ms, Ordering::Release);
        self.open_calls.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection closes if nothing changes; `None` while a call
    /// is open.
    fn deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        if self.open_calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.served.load(Ordering::Acquire) {
            return Some(self.opened + timeouts.handshake);
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        Some(self.opened + last + timeouts.idle)
    }
}

/// One open call; ends it when dropped.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The two clocks of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Until the first call.
    pub handshake: Duration,
    /// Without an open call.
    pub idle: Duration,
}

/// An accepted connection under the handshake and idle clocks, holding
/// its place under the connection cap until dropped.
pub struct Conn<IO> {
    io: IO,
    info: ConnInfo,
    timeouts: Timeouts,
    timer: Pin<Box<Sleep>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<IO> Conn<IO> {
    /// Wraps `io` from `peer`, accepted now.
    pub fn new(
        io: IO,
        peer: SocketAddr,
        timeouts: Timeouts,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let activity = Arc::new(Activity::new());
        let first = activity.opened + timeouts.handshake;
        Self {
            io,
            info: ConnInfo { peer, activity },
            timeouts,
            timer: Box::pin(tokio::time::sleep_until(first)),
            _permit: permit,
        }
    }

    /// The connection's info (the same value requests carry).
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// `Ready(error)` once the connection's time is up; `Pending` with a
    /// wake-up registered otherwise.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let now = Instant::now();
            let next = match self.info.activity.deadline(&self.timeouts) {
                // A call is open: look again an idle period from now.
                None => now + self.timeouts.idle,
                Some(at) if at <= now => {
                    let served = self.info.activity.served.load(Ordering::Acquire);
                    let why = if served {
                        "connection idle"
                    } else {
                        "no call within the handshake timeout"
                    };
                    tracing::debug!(peer = %self.info.peer, why, "closing connection");
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
                }
                Some(at) => at,
            };
            if self.timer.deadline() != next {
                self.timer.as_mut().reset(next);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(result) = Pin::new(&mut this.io).poll_read(cx, buf) {
            return Poll::Ready(result);
        }
        this.poll_expired(cx).map(Err)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO> tonic::transport::server::Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    const TIMEOUTS: Timeouts = Timeouts {
        handshake: Duration::from_secs(2),
        idle: Duration::from_secs(5),
    };

    fn conn() -> (Conn<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64);
        let peer = "127.0.0.1:1".parse().unwrap();
        (Conn::new(ours, peer, TIMEOUTS, None), theirs)
    }

    async fn closes_after(conn: &mut Conn<tokio::io::DuplexStream>) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_closes_at_the_handshake_timeout() {
        let (mut conn, _peer) = conn();
        assert_eq!(closes_after(&mut conn).await, TIMEOUTS.handshake);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_alone_do_not_keep_a_connection_open() {
        let (mut conn, mut peer) = conn();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            for _ in 0..100 {
                if peer.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let start = Instant::now();
        let mut buf = [0u8; 1];
        let err = loop {
            match conn.read(&mut buf).await {
                Ok(_) => continue,
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUTS.handshake);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_call_holds_the_connection_and_idleness_counts_from_its_end() {
        let (mut conn, _peer) = conn();
        let call = conn.info().activity.begin();
        let reading = tokio::spawn(async move {
            let after = closes_after(&mut conn).await;
            (after, conn)
        });
        // The call stays open far past both timeouts.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!reading.is_finished());
        drop(call);
        let (after, _conn) = reading.await.unwrap();
        assert_eq!(after, Duration::from_secs(60) + TIMEOUTS.idle);
    }
}
