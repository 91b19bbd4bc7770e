//! A TCP proxy between a server and the test Postgres that a test can cut
//! and restore: what a database outage looks like to the server (every
//! connection reset, new ones refused) without stopping the shared cluster.

use std::{net::SocketAddr, str::FromStr};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// The proxy; dropping it stops it.
pub struct PgProxy {
    /// Where servers connect instead of Postgres.
    pub addr: SocketAddr,
    /// `true` while cut.
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    target: tokio_postgres::Config,
}

impl PgProxy {
    /// Proxies to the Postgres that `url` names.
    pub async fn start(url: &str) -> Self {
        let target = tokio_postgres::Config::from_str(url).expect("a Postgres URL");
        let upstream = match (&target.get_hosts()[0], target.get_ports().first()) {
            (tokio_postgres::config::Host::Tcp(host), port) => {
                format!("{host}:{}", port.copied().unwrap_or(5432))
            }
            _ => panic!("the proxy needs a TCP Postgres"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(false);
        let state = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *state.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut = state.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            task,
            target,
        }
    }

    /// A URL for the same database through the proxy.
    pub fn url(&self) -> String {
        let mut parts = vec![
            "host=127.0.0.1".to_owned(),
            format!("port={}", self.addr.port()),
        ];
        if let Some(user) = self.target.get_user() {
            parts.push(format!("user={user}"));
        }
        if let Some(db) = self.target.get_dbname() {
            parts.push(format!("dbname={db}"));
        }
        if let Some(password) = self.target.get_password() {
            let password = String::from_utf8_lossy(password).replace('\\', "\\\\");
            parts.push(format!("password='{}'", password.replace('\'', "\\'")));
        }
        parts.join(" ")
    }

    /// Resets every connection and refuses new ones, until [`restore`].
    ///
    /// [`restore`]: PgProxy::restore
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
