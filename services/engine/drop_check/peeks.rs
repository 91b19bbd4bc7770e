//! Looks at workspaces that arrive together share one read (C9 under a
//! storm): a probe storm's unlocked looks cost one round trip per batch, not
//! one each. The read runs in a task of its own, so a caller that goes away
//! never cancels the read others wait on; each read starts after every look
//! it answers was asked, so no one gets a state older than their question.

use std::{collections::HashMap, sync::Arc, sync::Mutex};

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::domain::{Error, WorkspaceId};

/// Most workspaces one read asks for.
const MAX_BATCH: usize = 1_000;

/// Reads many workspaces at once.
#[async_trait]
pub(super) trait ReadMany: Send + Sync + 'static {
    /// What is read of one workspace.
    type Value: Clone + Send + Sync + 'static;

    /// The workspaces of `ids` that exist, each with what was read.
    async fn read_many(
        &self,
        ids: &[WorkspaceId],
    ) -> Result<HashMap<WorkspaceId, Self::Value>, Error>;
}

type Reply<V> = oneshot::Sender<Result<V, Error>>;

struct Waiting<V> {
    asked: Vec<(WorkspaceId, Reply<V>)>,
    /// A task is reading (and will read again while anyone waits).
    reading: bool,
}

/// Looks at workspaces through `R`, batched.
pub(super) struct Batched<R: ReadMany> {
    reader: R,
    waiting: Mutex<Waiting<R::Value>>,
}

impl<R: ReadMany> Batched<R> {
    /// Batched looks through `reader`.
    pub(super) fn new(reader: R) -> Arc<Self> {
        Arc::new(Self {
            reader,
            waiting: Mutex::new(Waiting {
                asked: Vec::new(),
                reading: false,
            }),
        })
    }

    /// What is read of `id`, in the next read; `NotFound` if it does not
    /// exist.
    pub(super) async fn get(self: &Arc<Self>, id: WorkspaceId) -> Result<R::Value, Error> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock().expect("peeks poisoned");
            waiting.asked.push((id, reply));
            !std::mem::replace(&mut waiting.reading, true)
        };
        if start {
            tokio::spawn(self.clone().read_while_asked());
        }
        answer
            .await
            .map_err(|_| Error::Internal("a batched read ended without an answer".into()))?
    }

    /// Reads what is asked, batch after batch, until nothing is.
    async fn read_while_asked(self: Arc<Self>) {
        // A read that panics, or a task dropped mid-read, must not leave
        // the next look waiting for a reader that is gone.
        let _stopped = Stopped(&self.waiting);
        loop {
            let asked: Vec<(WorkspaceId, Reply<R::Value>)> = {
                let mut waiting = self.waiting.lock().expect("peeks poisoned");
                if waiting.asked.is_empty() {
                    waiting.reading = false;
                    return;
                }
                let take = waiting.asked.len().min(MAX_BATCH);
                waiting.asked.drain(..take).collect()
            };
            let ids: Vec<WorkspaceId> = asked.iter().map(|(id, _)| *id).collect();
            let read = self.reader.read_many(&ids).await;
            for (id, reply) in asked {
                let value = match &read {
                    Ok(found) => found
                        .get(&id)
                        .cloned()
                        .ok_or_else(|| Error::NotFound(format!("workspace {id}"))),
                    Err(err) => Err(err.clone()),
                };
                let _ = reply.send(value);
            }
        }
    }
}

/// Marks the reader stopped when its task ends, however it ends: the
/// looks still asked are failed (their callers hear an error) and the next
/// look starts a reader again.
struct Stopped<'a, V>(&'a Mutex<Waiting<V>>);

impl<V> Drop for Stopped<'_, V> {
    fn drop(&mut self) {
        let mut waiting = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        waiting.reading = false;
        waiting.asked.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    /// Answers each id with its own string, once a permit is given; every
    /// read's ids are kept.
    struct Gated {
        permits: Arc<Semaphore>,
        reads: Mutex<Vec<Vec<WorkspaceId>>>,
        fail: bool,
        missing: Option<WorkspaceId>,
        panics: std::sync::atomic::AtomicBool,
    }

    impl Gated {
        fn new() -> Self {
            Self {
                permits: Arc::new(Semaphore::new(0)),
                reads: Mutex::new(Vec::new()),
                fail: false,
                missing: None,
                panics: Default::default(),
            }
        }
    }

    #[async_trait]
    impl ReadMany for Gated {
        type Value = String;

        async fn read_many(
            &self,
            ids: &[WorkspaceId],
        ) -> Result<HashMap<WorkspaceId, String>, Error> {
            self.reads.lock().unwrap().push(ids.to_vec());
            self.permits.acquire().await.unwrap().forget();
            assert!(
                !self.panics.load(std::sync::atomic::Ordering::SeqCst),
                "the reader dies mid-read"
            );
            if self.fail {
                return Err(Error::Unavailable("database gone".into()));
            }
            Ok(ids
                .iter()
                .filter(|id| Some(**id) != self.missing)
                .map(|id| (*id, id.to_string()))
                .collect())
        }
    }

    fn spawn_get(
        batched: &Arc<Batched<Gated>>,
        id: WorkspaceId,
    ) -> tokio::task::JoinHandle<Result<String, Error>> {
        let batched = batched.clone();
        tokio::spawn(async move { batched.get(id).await })
    }

    async fn first_read_started(batched: &Batched<Gated>) {
        until("the first read to start", || {
            batched.reader.reads.lock().unwrap().len() == 1
        })
        .await;
    }

    fn asked<R: ReadMany>(batched: &Batched<R>) -> usize {
        batched.waiting.lock().unwrap().asked.len()
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        test_support::bounded_by(Duration::from_secs(10), what, async {
            while !done() {
                tokio::task::yield_now().await;
            }
        })
        .await
    }

    #[tokio::test]
    async fn looks_asked_while_a_read_runs_share_the_next_read() {
        let batched = Batched::new(Gated::new());
        let first = WorkspaceId::new();
        let lead = spawn_get(&batched, first);
        first_read_started(&batched).await;
        let others: Vec<WorkspaceId> = (0..49).map(|_| WorkspaceId::new()).collect();
        let waits: Vec<_> = others.iter().map(|id| spawn_get(&batched, *id)).collect();
        until("every look to be asked", || asked(&batched) == 49).await;
        batched.reader.permits.add_permits(2);
        assert_eq!(lead.await.unwrap().unwrap(), first.to_string());
        for (id, wait) in others.iter().zip(waits) {
            assert_eq!(wait.await.unwrap().unwrap(), id.to_string());
        }
        let reads = batched.reader.reads.lock().unwrap().clone();
        assert_eq!(
            reads,
            vec![vec![first], others],
            "two reads for fifty looks"
        );
    }

    #[tokio::test]
    async fn a_missing_workspace_is_not_found_and_a_failed_read_fails_every_look() {
        let (gone, there) = (WorkspaceId::new(), WorkspaceId::new());
        let reader = Gated {
            missing: Some(gone),
            ..Gated::new()
        };
        reader.permits.add_permits(10);
        let batched = Batched::new(reader);
        assert!(matches!(batched.get(gone).await, Err(Error::NotFound(_))));
        assert_eq!(batched.get(there).await.unwrap(), there.to_string());

        let reader = Gated {
            fail: true,
            ..Gated::new()
        };
        reader.permits.add_permits(10);
        let batched = Batched::new(reader);
        assert!(matches!(
            batched.get(there).await,
            Err(Error::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_does_not_cancel_the_read_others_wait_on() {
        let batched = Batched::new(Gated::new());
        let (first, second) = (WorkspaceId::new(), WorkspaceId::new());
        let lead = spawn_get(&batched, first);
        first_read_started(&batched).await;
        let other = spawn_get(&batched, second);
        until("the second look to be asked", || asked(&batched) == 1).await;
        lead.abort();
        batched.reader.permits.add_permits(2);
        assert_eq!(other.await.unwrap().unwrap(), second.to_string());
        until("the reader to stop once nothing is asked", || {
            !batched.waiting.lock().unwrap().reading
        })
        .await;
    }

    #[tokio::test]
    async fn a_reader_that_dies_mid_read_leaves_the_next_look_a_reader() {
        let reader = Gated::new();
        reader
            .panics
            .store(true, std::sync::atomic::Ordering::SeqCst);
        reader.permits.add_permits(10);
        let batched = Batched::new(reader);
        let failed = test_support::bounded_by(
            Duration::from_secs(10),
            "the look a dying reader was to answer",
            batched.get(WorkspaceId::new()),
        )
        .await;
        assert!(matches!(failed, Err(Error::Internal(_))), "{failed:?}");
        batched
            .reader
            .panics
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let next = WorkspaceId::new();
        assert_eq!(
            bounded_get(&batched, next).await,
            next.to_string(),
            "a later look starts a reader of its own"
        );
    }

    async fn bounded_get(batched: &Arc<Batched<Gated>>, id: WorkspaceId) -> String {
        test_support::bounded_by(Duration::from_secs(10), "a look", batched.get(id))
            .await
            .unwrap()
    }
}
