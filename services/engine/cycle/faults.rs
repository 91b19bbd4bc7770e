//! How a cycle survives its faults: its deadline counts from its first
//! start across takeovers (C20); every backend call is bounded by the
//! lease the runner can still trust (C18); a stop that is ignored is
//! escalated to force; a failed cycle removes its own instance by force
//! before it ends (C17).

use std::{panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt;
use workspace_backends::{Backend, BackendError, Halt};

use super::{CycleDeps, CycleError, execute};
use crate::{
    domain::{Finish, Generation, Goal, Phase},
    engine::lease::LeaseGuard,
    telemetry::cycle_trace::CycleTrace,
};

/// Runs one cycle, then accounts for its instance whatever happened (C17).
/// `None`: the runner may have lost its lease, so the end is not its to
/// record.
pub(super) async fn execute_guarded(
    deps: &CycleDeps,
    guard: &LeaseGuard,
    trace: &CycleTrace,
) -> Option<Finish> {
    match attempt(deps, guard, trace).await {
        Ok(finish) => Some(finish),
        Err(err) if err.lost_lease() => None,
        Err(err) => clean_up(deps, guard, err).await,
    }
}

/// The local instant the cycle's deadline falls on: it counts from the
/// cycle's first start, in the database's time, so a takeover does not
/// restart it (C20).
fn deadline(deps: &CycleDeps, guard: &LeaseGuard) -> tokio::time::Instant {
    let at = guard.first_started_at()
        + chrono::Duration::from_std(deps.settings.provision_deadline)
            .unwrap_or(chrono::Duration::MAX);
    let left = (at - deps.store.clock().now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

/// Runs the cycle under its deadline, its lease renewal and a panic guard.
async fn attempt(
    deps: &CycleDeps,
    guard: &LeaseGuard,
    trace: &CycleTrace,
) -> Result<Finish, CycleError> {
    let takeovers = guard.claim().takeovers;
    if takeovers > deps.settings.max_takeovers {
        return Err(CycleError::TooManyTakeovers(takeovers));
    }
    let deadline = deadline(deps, guard);
    let work = AssertUnwindSafe(execute(deps, guard, trace, deadline)).catch_unwind();
    tokio::select! {
        result = tokio::time::timeout_at(deadline, work) => match result {
            Ok(Ok(result)) => result,
            Ok(Err(_panic)) => Err(CycleError::Panicked),
            Err(_) => Err(CycleError::deadline(
                guard.claim().goal,
                deps.settings.provision_deadline,
            )),
        },
        lost = keep_lease(guard, deps.settings.lease_renewal) => Err(lost),
    }
}

/// How long the forced clean-up of a failed cycle may take.
const CLEAN_UP_LIMIT: Duration = Duration::from_secs(30);

/// Ends a failed cycle with its instance accounted for: the failed
/// generation is removed by force (it gets no grace to linger in), while
/// the cycle still holds its lease. A failed stop or delete whose forced
/// retry works ends as asked. A runner that lost its lease touches
/// nothing; the next owner's start, or the collector, removes the instance.
async fn clean_up(deps: &CycleDeps, guard: &LeaseGuard, err: CycleError) -> Option<Finish> {
    let reason = err.to_string();
    // Confirm the lease in the database first: a runner that was taken over
    // without noticing (its clock said the lease was still good) touches
    // nothing, and records nothing.
    match guard.renew().await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(renewal) => {
            // Not confirmed: not ours. The lease expires and the next
            // runner (whose stop covers this generation) accounts for it.
            tracing::warn!(%renewal, %reason, "cannot confirm the lease before cleaning up");
            return None;
        }
    }
    let Ok(backend) = deps.backends.get(guard.backend()) else {
        return Some(Finish::Failed { reason });
    };
    let claim = *guard.claim();
    let workspace = guard.workspace();
    let forced = async {
        match claim.goal {
            Goal::Delete => {
                backend
                    .delete(workspace, claim.generation, Halt::Force)
                    .await
            }
            Goal::Stop | Goal::Provision => {
                backend.stop(workspace, claim.generation, Halt::Force).await
            }
        }
    };
    let result = tokio::select! {
        result = tokio::time::timeout(CLEAN_UP_LIMIT, bounded(guard, forced)) => match result {
            Ok(result) => result,
            Err(_) => Err(CycleError::Deadline(format!(
                "the forced clean-up did not finish within {}",
                humantime::format_duration(CLEAN_UP_LIMIT)
            ))),
        },
        lost = keep_lease(guard, deps.settings.lease_renewal) => Err(lost),
    };
    Some(match (claim.goal, result) {
        (Goal::Delete, Ok(())) => {
            tracing::warn!(%workspace, %reason, "delete needed force");
            Finish::Deleted
        }
        (Goal::Stop, Ok(())) => {
            tracing::warn!(%workspace, %reason, "stop needed force");
            Finish::Stopped
        }
        (Goal::Provision, Ok(())) => Finish::Failed { reason },
        (_, Err(cleanup)) if cleanup.lost_lease() => return None,
        (_, Err(cleanup)) => {
            tracing::warn!(%workspace, %cleanup, "could not remove the failed cycle's instance; the collector will");
            Finish::Failed { reason }
        }
    })
}

/// Runs a backend call only while the lease can be trusted, and cuts it
/// off when it can no longer be (C18): the call is bounded by the lease
/// time left, which each successful renewal extends. The fence is read
/// from the clock before *every* poll of the call — not left to a timer
/// having fired — so a runner resumed after a pause drops the call it was
/// in rather than carrying it one step further.
pub(super) async fn bounded<T>(
    guard: &LeaseGuard,
    call: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, CycleError> {
    let mut call = std::pin::pin!(call);
    let mut wake_at_fence = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    std::future::poll_fn(|cx| {
        let left = guard.fence_left();
        if left.is_zero() {
            return std::task::Poll::Ready(Err(CycleError::LeaseLapsed));
        }
        if let std::task::Poll::Ready(result) = call.as_mut().poll(cx) {
            return std::task::Poll::Ready(result.map_err(CycleError::from));
        }
        // Be woken when the fence falls, should nothing else wake us first.
        wake_at_fence
            .as_mut()
            .reset(tokio::time::Instant::now() + left);
        let _ = wake_at_fence.as_mut().poll(cx);
        std::task::Poll::Pending
    })
    .await
}

/// Renews the lease until it is lost, or until the last successful
/// renewal is too old to trust; returns why.
async fn keep_lease(guard: &LeaseGuard, every: Duration) -> CycleError {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = guard.fenced() => return CycleError::LeaseLapsed,
        }
        let renewal = tokio::select! {
            renewal = guard.renew() => renewal,
            _ = guard.fenced() => return CycleError::LeaseLapsed,
        };
        match renewal {
            Ok(true) => {}
            Ok(false) => return CycleError::Fenced,
            Err(err) => tracing::warn!(%err, "lease renewal failed"),
        }
    }
}

/// Announces a phase; fails the cycle unless it still holds the gate (the
/// fenced write is also the check before the backend call that follows).
pub(super) async fn enter(guard: &LeaseGuard, phase: Phase) -> Result<(), CycleError> {
    if guard.phase(phase).await? {
        Ok(())
    } else {
        Err(CycleError::Fenced)
    }
}

/// Stops everything up to `generation`: gracefully within half the time
/// the cycle has left, then by force — an instance that ignores SIGTERM
/// must not take the whole cycle down with it (C17).
pub(super) async fn stop_escalating(
    guard: &LeaseGuard,
    backend: &dyn Backend,
    generation: Generation,
    deadline: tokio::time::Instant,
) -> Result<(), CycleError> {
    let workspace = guard.workspace();
    let patience = deadline.saturating_duration_since(tokio::time::Instant::now()) / 2;
    let graceful = bounded(guard, backend.stop(workspace, generation, Halt::Graceful));
    match tokio::time::timeout(patience, graceful).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(err)) if err.lost_lease() => return Err(err),
        Ok(Err(err)) => tracing::warn!(%workspace, %err, "graceful stop failed; forcing it"),
        Err(_) => tracing::warn!(%workspace, "graceful stop is taking too long; forcing it"),
    }
    bounded(guard, backend.stop(workspace, generation, Halt::Force)).await
}
