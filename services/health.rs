//! Honest `grpc.health.v1`: SERVING only while this replica can do its job.
//! A load balancer that asks must not keep sending calls to a replica whose
//! every answer would be `UNAVAILABLE`, so health says NOT_SERVING
//! Contracts: C14 (a load balancer sends calls only to a replica that can serve them).
//!
//! - while Postgres is unreachable — found by a background checker with its
//!   own connection (a ping per `--health-check-interval`, never per call,
//!   and never waiting behind a busy pool), back to SERVING at the first
//!   ping that answers;
//! - from the moment shutdown begins, for good — before the listener
//!   closes, so balancers see it while the port still answers.
//!
//! The state is two facts and one rule ([`State::serving`]); `Health/Watch`
//! streams every change (tonic-health's reporter), and Watch streams end
//! when the server closes, so they never hold a graceful shutdown open.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use tokio::sync::Mutex;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, server::NamedService};
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_server::{Health as HealthApi, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

use crate::{
    grpc::{AgentService, LifecycleService},
    proto::{
        workspace_agent_server::WorkspaceAgentServer,
        workspace_lifecycle_server::WorkspaceLifecycleServer,
    },
    store::Store,
};

/// How long one ping may take before Postgres counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What health is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    database_up: bool,
    draining: bool,
}

impl State {
    /// The one rule.
    fn serving(self) -> ServingStatus {
        if self.database_up && !self.draining {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

/// The replica's health: set by the database checker and by shutdown,
/// published to `grpc.health.v1` for the server as a whole ("") and for
/// each of its services.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    state: Arc<Mutex<State>>,
    /// Cancelled when the server closes: ends open Watch streams.
    closed: CancellationToken,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

/// The `grpc.health.v1.Health` service over a [`Health`].
pub type HealthGrpc = HealthServer<ClosingHealth>;

impl Health {
    /// A health that starts SERVING (the server has just reached Postgres),
    /// and the gRPC service that answers from it.
    pub async fn new() -> (Self, HealthGrpc) {
        let reporter = HealthReporter::new();
        let health = Self {
            reporter: reporter.clone(),
            state: Arc::new(Mutex::new(State {
                database_up: true,
                draining: false,
            })),
            closed: CancellationToken::new(),
        };
        health.publish(ServingStatus::Serving).await;
        let service = ClosingHealth {
            inner: HealthService::from_health_reporter(reporter),
            closed: health.closed.clone(),
        };
        (health, HealthServer::new(service))
    }

    async fn publish(&self, status: ServingStatus) {
        for name in [
            "",
            <WorkspaceLifecycleServer<LifecycleService> as NamedService>::NAME,
            <WorkspaceAgentServer<AgentService> as NamedService>::NAME,
        ] {
            self.reporter.set_service_status(name, status).await;
        }
    }

    async fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().await;
        let before = state.serving();
        change(&mut state);
        let after = state.serving();
        if before != after {
            tracing::info!(status = ?after, database_up = state.database_up, draining = state.draining, "health changed");
            // Published under the lock, so two updates cannot publish out
            // of order.
            self.publish(after).await;
        }
    }

    /// Shutdown has begun: NOT_SERVING from now on.
    pub async fn drain(&self) {
        self.update(|s| s.draining = true).await;
    }

    /// The server has closed: open Watch streams end.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Pings Postgres every `interval` on a connection of its own until
    /// `stop`, and reports whether it answered.
    pub fn check_database(
        &self,
        store: &Store,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        let config = store.pg_config().clone();
        tokio::spawn(async move {
            let mut pinger = Pinger {
                config,
                client: None,
            };
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let up = pinger.ping().await;
                health.update(|s| s.database_up = up).await;
            }
        })
    }
}

/// A dedicated connection for pings, reopened after each failure.
struct Pinger {
    config: tokio_postgres::Config,
    client: Option<tokio_postgres::Client>,
}

impl Pinger {
    async fn ping(&mut self) -> bool {
        let answered = tokio::time::timeout(PING_TIMEOUT, async {
            if self.client.is_none() {
                let (client, connection) = self.config.connect(NoTls).await.ok()?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                self.client = Some(client);
            }
            self.client.as_ref()?.simple_query("SELECT 1").await.ok()
        })
        .await;
        let up = matches!(answered, Ok(Some(_)));
        if !up {
            self.client = None;
        }
        up
    }
}

/// tonic-health's service, with Watch streams that end when the server
/// closes (a graceful shutdown waits for open streams).
pub struct ClosingHealth {
    inner: HealthService,
    closed: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HealthApi for ClosingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        let closed = self.closed.clone().cancelled_owned();
        Ok(Response::new(Box::pin(stream.take_until(closed))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_needs_the_database_and_no_drain() {
        let up = State {
            database_up: true,
            draining: false,
        };
        assert_eq!(up.serving(), ServingStatus::Serving);
        for state in [
            State {
                database_up: false,
                ..up
            },
            State {
                draining: true,
                ..up
            },
        ] {
            assert_eq!(state.serving(), ServingStatus::NotServing);
        }
    }

    #[tokio::test]
    async fn watch_sees_each_change_and_ends_on_close() {
        let (health, _service) = Health::new().await;
        let service = ClosingHealth {
            inner: HealthService::from_health_reporter(health.reporter.clone()),
            closed: health.closed.clone(),
        };
        let mut watch = service
            .watch(Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let status = |r: Option<Result<HealthCheckResponse, Status>>| r.unwrap().unwrap().status;
        assert_eq!(status(watch.next().await), ServingStatus::Serving as i32);
        health.update(|s| s.database_up = false).await;
        assert_eq!(status(watch.next().await), ServingStatus::NotServing as i32);
        health.update(|s| s.database_up = true).await;
        assert_eq!(status(watch.next().await), ServingStatus::Serving as i32);
        health.drain().await;
        assert_eq!(status(watch.next().await), ServingStatus::NotServing as i32);
        health.close();
        assert!(watch.next().await.is_none());
    }
}
