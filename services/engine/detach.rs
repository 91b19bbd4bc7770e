//! Work a caller drives on its own task that outlives the caller when it
//! goes away (C20). No contract of its own: the coalesce lane's drain and
//! the gate's claim use it so that a cancelled caller can neither roll back
//! work others depend on nor stall its admitted cycle, without paying a
//! spawn and a cross-thread wake-up on the common path where the caller
//! stays.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::future::BoxFuture;

/// A future polled on its caller's task that, if it has not finished when
/// it is dropped, continues as a task of its own (its output then
/// discarded).
pub struct Detachable<T: Send + 'static> {
    future: Option<BoxFuture<'static, T>>,
}

impl<T: Send + 'static> Detachable<T> {
    /// Wraps `future`; nothing runs until it is polled (or dropped).
    pub fn new(future: impl Future<Output = T> + Send + 'static) -> Self {
        Self {
            future: Some(Box::pin(future)),
        }
    }

    /// Polls the future; `Ready(None)` once it has finished before.
    pub fn poll_unpin(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = future.as_mut().poll(cx);
        if polled.is_ready() {
            self.future = None;
        }
        polled.map(Some)
    }

    /// Finishes now if it can without waiting; otherwise moves it to a task.
    pub fn finish_or_detach(mut self) {
        let waker = futures::task::noop_waker();
        let _ = self.poll_unpin(&mut Context::from_waker(&waker));
        // `Drop` spawns what is left.
    }
}

impl<T: Send + 'static> Future for Detachable<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut().poll_unpin(cx) {
            Poll::Ready(Some(output)) => Poll::Ready(output),
            Poll::Ready(None) => panic!("Detachable polled after it finished"),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Send + 'static> Drop for Detachable<T> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            // Outside a runtime (the process is ending) the future is
            // dropped: a transaction it had open rolls back.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(future);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn a_future_dropped_unfinished_goes_on_as_a_task_and_an_awaited_one_answers() {
        let (go, wait) = oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let mut detachable = Detachable::new(async move {
            let _ = wait.await;
            flag.store(true, Ordering::SeqCst);
            7
        });
        // Polled once on the caller's task: it waits for `go`.
        assert!(futures::poll!(std::future::poll_fn(|cx| detachable.poll_unpin(cx))).is_pending());
        drop(detachable);
        go.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !finished.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the dropped future went on as a task and finished");

        assert_eq!(Detachable::new(async { 5 }).await, 5);
    }
}
