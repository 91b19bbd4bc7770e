//! The accept loop. Two things go wrong with a naive one: with every
//! descriptor in use, `accept` fails at once, again and again — a loop
//! that retries at once spins a core and writes a log line per try; and
//! without a cap, a flood of connections takes every descriptor from
//! callers who mean business. Here a connection beyond the cap is accepted
//! and closed at once (the peer learns now, rather than waiting in the
//! kernel's backlog behind the flood), and running out of descriptors
//! backs off, doubling from 10 ms to 1 s, with one log line per 10 s.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::{io, sync::Arc, time::Duration};

use futures::Stream;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};

use super::{Limits, conn::Conn, conn::Timeouts};

/// The accepted connections of `listener` under `limits`, Nagle off (a
/// stream's next small event would otherwise wait for the client's delayed
/// ACK, ~40 ms). The stream never yields an error: what goes wrong is
/// handled here.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = io::Result<Conn<TcpStream>>> {
    let acceptor = Acceptor {
        listener,
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        timeouts: Timeouts {
            handshake: limits.handshake_timeout,
            idle: limits.idle_timeout,
        },
        backoff: Backoff::default(),
        over_cap: Throttled::default(),
        out_of_fds: Throttled::default(),
    };
    futures::stream::unfold(acceptor, |mut acceptor| async move {
        let conn = acceptor.next().await;
        Some((Ok(conn), acceptor))
    })
}

struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    timeouts: Timeouts,
    backoff: Backoff,
    over_cap: Throttled,
    out_of_fds: Throttled,
}

impl Acceptor {
    async fn next(&mut self) -> Conn<TcpStream> {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff = Backoff::default();
                    let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                        if let Some(dropped) = self.over_cap.tick() {
                            tracing::warn!(
                                dropped,
                                "connection cap reached; closing new connections at once"
                            );
                        }
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return Conn::new(stream, peer, self.timeouts, Some(permit));
                }
                Err(err) => match classify(&err) {
                    AcceptError::Connection => continue,
                    AcceptError::Resources => {
                        let delay = self.backoff.next_delay();
                        if let Some(times) = self.out_of_fds.tick() {
                            tracing::warn!(%err, times, ?delay, "cannot accept; backing off");
                        }
                        tokio::time::sleep(delay).await;
                    }
                },
            }
        }
    }
}

/// What a failed `accept` means for the loop.
#[derive(Debug, PartialEq, Eq)]
enum AcceptError {
    /// One connection went wrong before it was ours: take the next.
    Connection,
    /// The process or the system ran out of something (descriptors,
    /// memory, buffers): accepting again right away would fail again.
    Resources,
}

fn classify(err: &io::Error) -> AcceptError {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        | TimedOut | BrokenPipe => AcceptError::Connection,
        // EMFILE, ENFILE, ENOBUFS, ENOMEM and anything unforeseen.
        _ => AcceptError::Resources,
    }
}

/// 10 ms, doubling to 1 s.
#[derive(Debug, Default)]
struct Backoff(Option<Duration>);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next_delay(&mut self) -> Duration {
        let delay = self.0.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.0 = Some(delay);
        delay
    }
}

/// At most one log line per period; says how many events it stands for.
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    const PERIOD: Duration = Duration::from_secs(10);

    fn tick(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + Self::PERIOD) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_backs_off_a_lost_connection_does_not() {
        let emfile = io::Error::from_raw_os_error(24);
        let enfile = io::Error::from_raw_os_error(23);
        let enobufs = io::Error::from_raw_os_error(105);
        for err in [emfile, enfile, enobufs] {
            assert_eq!(classify(&err), AcceptError::Resources, "{err}");
        }
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(classify(&aborted), AcceptError::Connection);
    }

    #[test]
    fn the_backoff_doubles_to_a_second() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_failures_logs_once_per_period() {
        let mut throttled = Throttled::default();
        let logged: Vec<_> = (0..1000).filter_map(|_| throttled.tick()).collect();
        assert_eq!(logged, [1]);
        tokio::time::advance(Throttled::PERIOD).await;
        assert_eq!(throttled.tick(), Some(1000));
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        use futures::StreamExt as _;
        use tokio::io::AsyncReadExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 2,
            max_concurrent_streams: 1,
            handshake_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(60),
        };
        let mut accepted = Box::pin(incoming(listener, limits));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let first = accepted.next().await.unwrap().unwrap();
        let _second = accepted.next().await.unwrap().unwrap();
        // The third is closed by the server: its read ends at once.
        let next = tokio::spawn(async move { accepted.next().await });
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), clients[2].read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // A place frees up when a connection goes.
        drop(first);
        let fourth = TcpStream::connect(addr).await.unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("accepted once a place is free")
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(conn.info().peer, fourth.local_addr().unwrap());
    }
}
