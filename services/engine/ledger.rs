//! Every transition of the per-workspace gate and follow-up state (the
//! state itself is `domain::ledger`).
//! Contracts: C1–C3, C5, C7, C8, C11, C17.
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

use crate::domain::{
    CycleId, Desired, Goal, ReplicaId, Timestamp, Trigger,
    ledger::{
        AdmitRequest, Admitted, Ask, Burst, Claim, DropReason, Ledger, Pending, Refusal, Running,
        Timing, Treatment, after,
    },
};

impl Ledger {
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
        if let Some(refusal) = self.refusal(request.ask) {
            return Err(refusal);
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
        self.set_lease(cycle, owner, epoch, after(now, timing.lease_ttl))
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
        self.set_lease(cycle, owner, epoch, now)
    }

    /// Moves the holder's lease end to `until`; false (and no change) if
    /// `cycle` no longer holds the gate in `owner`'s name at `epoch`.
    fn set_lease(
        &mut self,
        cycle: CycleId,
        owner: ReplicaId,
        epoch: u32,
        until: Timestamp,
    ) -> bool {
        if !self.holds(cycle, owner, epoch) {
            return false;
        }
        if let Some(running) = &mut self.running {
            running.lease_until = until;
        }
        true
    }

    /// Why this workspace refuses a request asking `ask`, if it does: a
    /// deleted workspace takes nothing but another delete (C17).
    pub fn refusal(&self, ask: Ask) -> Option<Refusal> {
        (self.desired == Desired::Deleted && ask != Ask::Delete).then_some(Refusal::Deleted)
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

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
