//! A restart, stop or delete as it happens: the admission (accepted,
//! coalesced or debounced), the phases, and the end. The request carries a
//! request id, so when the stream breaks with `UNAVAILABLE` (the replica
//! shut down, say) it is sent again: the server answers with the recorded
//! admission and follows the same cycle — no second cycle — and the
//! repeated admission is not shown twice.
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

use futures::future::BoxFuture;
use tonic::Streaming;

use crate::{
    Client, Error,
    client::Raw,
    proto::{self as pb, restart_event::Event},
};

/// What a cycle that ended online serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// The generation now running.
    pub generation: u64,
    /// The config version its agent booted with.
    pub config_version: u64,
}

type Open = Box<
    dyn Fn(
            Raw,
        ) -> BoxFuture<
            'static,
            Result<tonic::Response<Streaming<pb::RestartEvent>>, tonic::Status>,
        > + Send
        + Sync,
>;

/// The events of one cycle request.
pub struct CycleStream {
    client: Client,
    open: Open,
    events: Streaming<pb::RestartEvent>,
    /// The first event was delivered: skip it when the stream is reopened.
    admitted: bool,
    /// Reopens so far (bounded by the retry policy).
    reopened: u32,
}

impl std::fmt::Debug for CycleStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleStream")
            .field("admitted", &self.admitted)
            .finish_non_exhaustive()
    }
}

impl CycleStream {
    pub(crate) async fn open<Req, Fut>(
        client: Client,
        request: Req,
        call: fn(Raw, Req) -> Fut,
    ) -> Result<Self, Error>
    where
        Req: Clone + Send + Sync + 'static,
        Fut: std::future::Future<
                Output = Result<tonic::Response<Streaming<pb::RestartEvent>>, tonic::Status>,
            > + Send
            + 'static,
    {
        let open: Open = Box::new(move |raw| Box::pin(call(raw, request.clone())));
        let events = client.retried((), |raw, ()| open(raw)).await?;
        Ok(Self {
            client,
            open,
            events,
            admitted: false,
            reopened: 0,
        })
    }

    /// The next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<pb::RestartEvent, Error>> {
        loop {
            match self.events.message().await {
                Ok(Some(event)) => {
                    self.admitted = true;
                    return Some(Ok(event));
                }
                Ok(None) => return None,
                Err(status) => {
                    self.reopened += 1;
                    let Some(wait) = self.client.retry_policy().delay(self.reopened, &status)
                    else {
                        return Some(Err(status.into()));
                    };
                    tokio::time::sleep(wait).await;
                    match self.client.retried((), |raw, ()| (self.open)(raw)).await {
                        Ok(mut events) => {
                            if self.admitted {
                                // The recorded admission, again.
                                if let Err(status) = events.message().await {
                                    return Some(Err(status.into()));
                                }
                            }
                            self.events = events;
                        }
                        Err(err) => return Some(Err(err)),
                    }
                }
            }
        }
    }

    /// Follows the cycle to its end: the generation and config version it
    /// serves, or why it did not bring the workspace online.
    pub async fn wait_online(mut self) -> Result<Served, Error> {
        self.wait_for(|_| {}).await
    }

    /// [`CycleStream::wait_online`], showing each event to `each` first
    /// (a progress display, a log line).
    pub async fn wait_for(
        &mut self,
        mut each: impl FnMut(&pb::RestartEvent),
    ) -> Result<Served, Error> {
        while let Some(event) = self.next().await {
            let event = event?;
            each(&event);
            match event.event {
                Some(Event::Online(online)) => {
                    return Ok(Served {
                        generation: online.generation,
                        config_version: online.config_version,
                    });
                }
                Some(Event::Failed(failed)) => {
                    return Err(Error::CycleFailed {
                        generation: failed.generation,
                        reason: failed.reason,
                    });
                }
                Some(Event::Debounced(debounced)) => {
                    return Err(Error::NotRestarted {
                        until: debounced.until,
                        reason: debounced.reason,
                    });
                }
                Some(Event::Stopped(stopped)) => {
                    return Err(Error::Stopped {
                        generation: stopped.generation,
                    });
                }
                Some(Event::Deleted(_)) => return Err(Error::Deleted),
                Some(Event::Accepted(_) | Event::Coalesced(_) | Event::Phase(_)) | None => {}
            }
        }
        Err(Error::StreamEnded)
    }
}
