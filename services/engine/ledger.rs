//! The per-workspace gate and follow-up state, and every transition of it.
//!
//! This is the one place that decides whether a request opens a cycle, joins
//! the follow-up, waits for the debounce window or is dropped; who may run a
//! cycle (the gate, as a lease); and when a follow-up becomes due. It is pure
//! data: the store loads it with the workspace row locked, applies one
//! transition and writes it back in the same transaction, so every replica
//! sees the same decisions, and the model checks (shuttle) exercise exactly
//! this code.
//!
//! The invariants it keeps, by construction:
//! - at most one cycle *runs* per workspace (`running` is an `Option`);
//! - at most one cycle *waits* (`pending` is an `Option`), and any number of
//!   requests that arrive while a cycle runs join that one follow-up (C2);
//! - a follow-up that waits for the window still exists in the row, so a
//!   deferred change can never be lost (C7);
//! - a cycle reads its config only after `claim`, i.e. after every request
//!   it absorbed was committed.

use std::time::Duration;

use crate::domain::{CycleId, Desired, Generation, Goal, ReplicaId, Timestamp, Trigger};

/// The configured times the ledger works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// After a cycle starts, droppable triggers are dropped and config
    /// changes deferred for this long (C7).
    pub debounce_window: Duration,
    /// A file-write burst ends after this long without a write (C8).
    pub burst_quiet: Duration,
    /// A burst never holds its cycle back longer than this after its first
    /// write.
    pub burst_max_wait: Duration,
    /// How long a gate holder may stay silent before another replica may
    /// take its cycle over.
    pub lease_ttl: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            debounce_window: Duration::from_secs(60),
            burst_quiet: Duration::from_secs(5),
            burst_max_wait: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What a request asks of the workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Serve a (new) generation.
    Run,
    /// Be stopped.
    Stop,
    /// Be removed.
    Delete,
}

/// How the debounce treats a request (decided from its trigger).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Runs as soon as the gate is free (MANUAL, CREATE, stop, delete).
    Urgent,
    /// Waits for the end of the debounce window (CONFIG_CHANGED).
    Deferred,
    /// Waits for the window and for a quiet moment in a burst (file writes).
    Burst,
    /// Dropped while a cycle runs or inside the window (HEALTH_PROBE,
    /// RECONCILER).
    DropIfBusy,
}

/// One request as the ledger sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmitRequest {
    /// What the request wants.
    pub ask: Ask,
    /// Who asked.
    pub trigger: Trigger,
    /// How the debounce treats it.
    pub treatment: Treatment,
}

/// Why a droppable request was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A cycle is in flight; its outcome will tell.
    CycleInFlight,
    /// Inside the debounce window after the last cycle start.
    Debounced,
    /// The workspace is stopped on purpose.
    NotRunning,
    /// The backend says the instance is still booting.
    InstanceBooting,
}

impl DropReason {
    /// Said to the caller and counted.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::CycleInFlight => "a cycle is in flight; its outcome will tell",
            Self::Debounced => "inside the debounce window after the last cycle start",
            Self::NotRunning => "the workspace is stopped",
            Self::InstanceBooting => "the instance is still booting",
        }
    }
}

/// What admitting a request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Opened the follow-up cycle `cycle`.
    Opened {
        /// The new cycle.
        cycle: CycleId,
        /// When it may start.
        due: Timestamp,
        /// The gate is free and it is due: try to claim it now.
        ready: bool,
    },
    /// Joined a cycle someone else asked for (the follow-up, or a running
    /// delete when this is a delete).
    Joined {
        /// The cycle that will serve this request.
        cycle: CycleId,
        /// When it may start.
        due: Timestamp,
        /// The gate is free and it is due: try to claim it now.
        ready: bool,
    },
    /// A config change on a stopped workspace: stored, no cycle.
    Stored,
    /// A delete of a workspace whose delete already completed: nothing to
    /// do, and nothing wrong with asking again (delete is idempotent, C17).
    AlreadyDeleted,
    /// Dropped; no cycle will run for this request.
    Dropped {
        /// Why.
        reason: DropReason,
        /// Until when requests like it will be dropped, when known.
        until: Option<Timestamp>,
    },
}

/// A request the ledger refuses outright.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The workspace is deleted (or being deleted).
    #[error("workspace is deleted")]
    Deleted,
}

/// The cycle that holds the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// The cycle.
    pub cycle: CycleId,
    /// The replica holding the lease.
    pub owner: ReplicaId,
    /// The lease ends here unless renewed.
    pub lease_until: Timestamp,
    /// What the cycle does.
    pub goal: Goal,
    /// The generation it provisions (or the one it stops).
    pub generation: Generation,
    /// How many times a replica took it over.
    pub takeovers: u32,
}

/// A file-write burst collecting into the follow-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burst {
    /// The first write.
    pub first_at: Timestamp,
    /// The latest write.
    pub last_at: Timestamp,
}

/// The follow-up cycle: admitted, not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The cycle (callers follow it by this id).
    pub cycle: CycleId,
    /// When the first request opened it.
    pub created_at: Timestamp,
    /// Some request in it must not wait for the window.
    pub urgent: bool,
    /// The file-write burst it collects, if any.
    pub burst: Option<Burst>,
}

/// A successful claim of the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The cycle that now holds the gate.
    pub cycle: CycleId,
    /// What it does.
    pub goal: Goal,
    /// The generation it provisions (or stops).
    pub generation: Generation,
    /// It was taken over from a replica whose lease expired.
    pub takeover: bool,
    /// How many times it was taken over so far.
    pub takeovers: u32,
}

/// The gate and follow-up state of one workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    /// What the workspace should be.
    pub desired: Desired,
    /// The newest generation started.
    pub generation: Generation,
    /// The cycle holding the gate.
    pub running: Option<Running>,
    /// The follow-up cycle.
    pub pending: Option<Pending>,
    /// The debounce window opened by the last cycle start ends here.
    pub window_until: Option<Timestamp>,
    /// A delete cycle completed: nothing of the workspace is left (read
    /// from the row's status; the ledger never writes it).
    pub removed: bool,
}

impl Ledger {
    /// A workspace that has never run a cycle.
    pub fn new() -> Self {
        Self {
            desired: Desired::Running,
            generation: Generation(0),
            running: None,
            pending: None,
            window_until: None,
            removed: false,
        }
    }

    /// When the follow-up may start, if there is one.
    pub fn pending_due(&self, timing: &Timing) -> Option<Timestamp> {
        let pending = self.pending.as_ref()?;
        if pending.urgent {
            return Some(pending.created_at);
        }
        let mut due = pending.created_at;
        if let Some(burst) = pending.burst {
            let quiet = after(burst.last_at, timing.burst_quiet);
            let cap = after(burst.first_at, timing.burst_max_wait);
            due = due.max(quiet.min(cap));
        }
        if let Some(window) = self.window_until {
            due = due.max(window);
        }
        Some(due)
    }

    /// The gate holder's lease has run out: its cycle may be taken over.
    pub fn lease_expired(&self, now: Timestamp) -> bool {
        self.running.is_some_and(|r| r.lease_until <= now)
    }

    /// Admits one request. `new_cycle` is used if it opens a follow-up.
    pub fn admit(
        &mut self,
        request: AdmitRequest,
        now: Timestamp,
        new_cycle: CycleId,
        timing: &Timing,
    ) -> Result<Admitted, Refusal> {
        if self.desired == Desired::Deleted {
            return self.join_delete(request, now, new_cycle, timing);
        }
        match request.ask {
            Ask::Stop => self.desired = Desired::Stopped,
            Ask::Delete => self.desired = Desired::Deleted,
            Ask::Run => match request.trigger {
                Trigger::Manual | Trigger::Create => self.desired = Desired::Running,
                _ if self.desired != Desired::Running => {
                    return Ok(if request.treatment == Treatment::DropIfBusy {
                        Admitted::Dropped {
                            reason: DropReason::NotRunning,
                            until: None,
                        }
                    } else {
                        Admitted::Stored
                    });
                }
                _ => {}
            },
        }
        if request.treatment == Treatment::DropIfBusy {
            if self.running.is_some() {
                return Ok(Admitted::Dropped {
                    reason: DropReason::CycleInFlight,
                    until: self.window_until,
                });
            }
            if let Some(until) = self.window_until.filter(|until| *until > now) {
                return Ok(Admitted::Dropped {
                    reason: DropReason::Debounced,
                    until: Some(until),
                });
            }
        }
        let urgent = request.treatment == Treatment::Urgent;
        let bursty = request.treatment == Treatment::Burst;
        let joined = match &mut self.pending {
            Some(pending) => {
                pending.urgent |= urgent;
                if bursty {
                    pending.burst = Some(match pending.burst {
                        Some(burst) => Burst {
                            last_at: now,
                            ..burst
                        },
                        None => Burst {
                            first_at: now,
                            last_at: now,
                        },
                    });
                }
                true
            }
            None => {
                self.pending = Some(Pending {
                    cycle: new_cycle,
                    created_at: now,
                    urgent,
                    burst: bursty.then_some(Burst {
                        first_at: now,
                        last_at: now,
                    }),
                });
                false
            }
        };
        let cycle = self.pending.expect("pending was just set").cycle;
        let due = self.pending_due(timing).expect("pending exists");
        let ready = self.running.is_none() && due <= now;
        Ok(if joined {
            Admitted::Joined { cycle, due, ready }
        } else {
            Admitted::Opened { cycle, due, ready }
        })
    }

    /// A delete of a workspace already being deleted joins that cycle; a
    /// delete after a completed one is answered "already deleted"; a delete
    /// after a *failed* one opens a new delete cycle (delete is retryable,
    /// C17). Every other request on a deleted workspace is refused.
    fn join_delete(
        &mut self,
        request: AdmitRequest,
        now: Timestamp,
        new_cycle: CycleId,
        timing: &Timing,
    ) -> Result<Admitted, Refusal> {
        if request.ask != Ask::Delete {
            return Err(Refusal::Deleted);
        }
        if let Some(running) = self.running.filter(|r| r.goal == Goal::Delete) {
            return Ok(Admitted::Joined {
                cycle: running.cycle,
                due: now,
                ready: false,
            });
        }
        if let Some(pending) = self.pending {
            return Ok(Admitted::Joined {
                cycle: pending.cycle,
                due: self.pending_due(timing).unwrap_or(now),
                ready: self.running.is_none(),
            });
        }
        if self.removed {
            return Ok(Admitted::AlreadyDeleted);
        }
        self.pending = Some(Pending {
            cycle: new_cycle,
            created_at: now,
            urgent: true,
            burst: None,
        });
        Ok(Admitted::Opened {
            cycle: new_cycle,
            due: now,
            ready: self.running.is_none(),
        })
    }

    /// Takes the gate for whatever may run now: first a cycle whose holder's
    /// lease expired (taken over, as a new generation), else the follow-up if
    /// it is due. The goal of a follow-up is decided here, from the latest
    /// desired state.
    pub fn claim(&mut self, owner: ReplicaId, now: Timestamp, timing: &Timing) -> Option<Claim> {
        let lease_until = after(now, timing.lease_ttl);
        if let Some(running) = &mut self.running {
            if running.lease_until > now {
                return None;
            }
            running.owner = owner;
            running.lease_until = lease_until;
            running.takeovers += 1;
            if running.goal == Goal::Provision {
                self.generation = self.generation.next();
                running.generation = self.generation;
            }
            self.window_until = Some(after(now, timing.debounce_window));
            return Some(Claim {
                cycle: running.cycle,
                goal: running.goal,
                generation: running.generation,
                takeover: true,
                takeovers: running.takeovers,
            });
        }
        if self.pending_due(timing)? > now {
            return None;
        }
        let pending = self.pending.take().expect("due implies pending");
        let goal = match self.desired {
            Desired::Running => Goal::Provision,
            Desired::Stopped => Goal::Stop,
            Desired::Deleted => Goal::Delete,
        };
        if goal == Goal::Provision {
            self.generation = self.generation.next();
        }
        self.running = Some(Running {
            cycle: pending.cycle,
            owner,
            lease_until,
            goal,
            generation: self.generation,
            takeovers: 0,
        });
        self.window_until = Some(after(now, timing.debounce_window));
        Some(Claim {
            cycle: pending.cycle,
            goal,
            generation: self.generation,
            takeover: false,
            takeovers: 0,
        })
    }

    /// True if `cycle` holds the gate in `owner`'s name, at `epoch` (its
    /// takeover count when it was claimed): a runner whose cycle was taken
    /// over — even by its own replica — no longer holds it.
    pub fn holds(&self, cycle: CycleId, owner: ReplicaId, epoch: u32) -> bool {
        self.running
            .is_some_and(|r| r.cycle == cycle && r.owner == owner && r.takeovers == epoch)
    }

    /// Extends the holder's lease; false if it no longer holds the gate.
    pub fn renew(
        &mut self,
        cycle: CycleId,
        owner: ReplicaId,
        epoch: u32,
        now: Timestamp,
        timing: &Timing,
    ) -> bool {
        if !self.holds(cycle, owner, epoch) {
            return false;
        }
        if let Some(running) = &mut self.running {
            running.lease_until = after(now, timing.lease_ttl);
        }
        true
    }

    /// Lets the lease run out now, for a holder that is shutting down: the
    /// cycle stays in flight and the next runner takes it over at once
    /// rather than after the TTL. False if `cycle` no longer held the gate.
    pub fn hand_off(
        &mut self,
        cycle: CycleId,
        owner: ReplicaId,
        epoch: u32,
        now: Timestamp,
    ) -> bool {
        if !self.holds(cycle, owner, epoch) {
            return false;
        }
        if let Some(running) = &mut self.running {
            running.lease_until = now;
        }
        true
    }

    /// Gives the gate up; false (and no change) if `cycle` no longer held it.
    pub fn release(&mut self, cycle: CycleId, owner: ReplicaId, epoch: u32) -> bool {
        if self.holds(cycle, owner, epoch) {
            self.running = None;
            true
        } else {
            false
        }
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
