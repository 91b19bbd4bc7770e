//! A TCP proxy between a server and Postgres that a test can slow down or
//! cut: the faults a network puts between a replica and its database.
//! `cut` drops every open connection and refuses new ones until `restore`.

use std::{
    net::SocketAddr,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// The proxy; it stops when dropped.
pub struct PgProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    url: String,
    /// `true` while cut: live connections end, new ones are refused.
    cut: watch::Sender<bool>,
    latency_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgProxy {
    /// A proxy to the Postgres of `url` (a libpq key=value string or URL).
    pub async fn start(url: &str) -> Self {
        let config = tokio_postgres::Config::from_str(url).unwrap();
        let target = match (&config.get_hosts()[0], config.get_ports().first()) {
            (tokio_postgres::config::Host::Tcp(host), port) => {
                format!("{host}:{}", port.copied().unwrap_or(5432))
            }
            _ => panic!("the proxy needs a TCP Postgres"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut through = format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            addr.port(),
            config.get_user().unwrap_or("postgres"),
            config.get_dbname().unwrap_or("postgres"),
        );
        if let Some(password) = config.get_password() {
            let password = String::from_utf8_lossy(password).replace('\\', "\\\\");
            through.push_str(&format!(" password='{}'", password.replace('\'', "\\'")));
        }
        let (cut, _) = watch::channel(false);
        let latency_us = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (state, latency_us) = (cut.clone(), latency_us.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if *state.borrow() {
                        continue; // dropped: refused
                    }
                    let (cut, latency_us, target) =
                        (state.subscribe(), latency_us.clone(), target.clone());
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(&target).await {
                            pipe(client, server, cut, latency_us).await;
                        }
                    });
                }
            }
        });
        Self {
            addr,
            url: through,
            cut,
            latency_us,
            task,
        }
    }

    /// A URL for the same database through the proxy.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Delays every chunk forwarded in either direction by `by`.
    pub fn set_latency(&self, by: Duration) {
        self.latency_us
            .store(by.as_micros() as u64, Ordering::SeqCst);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mut cut: watch::Receiver<bool>,
    latency_us: Arc<AtomicU64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = forward(&mut client_read, &mut server_write, &latency_us);
    let down = forward(&mut server_read, &mut client_write, &latency_us);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}

async fn forward(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    latency_us: &AtomicU64,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = latency_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
