//! The one typed request every entry point becomes, and what the stack
//! answers. Create, restart (any trigger), stop, delete, secret and file
//! mutations, probe reports, the reconciler and the scheduler's resumptions
//! all travel as an [`Intent`] through the same layers.
//! Contracts: C1–C3, C13.

use std::{fmt, hash::Hash};

use crate::domain::change::{Audited, Change, Creation};
use crate::domain::ledger::{Ask, DropReason, Treatment};
use crate::domain::{ConfigVersion, CycleId, Generation, Goal, Timestamp, Trigger, WorkspaceId};
use crate::telemetry::metrics::Answered;

/// Where a request is in the stack. Each layer advances it one step, so a
/// layer can tell a fresh request from one an earlier layer already handled
/// (and the scheduler can enter a due follow-up straight at the gate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Fresh from an entry point.
    New,
    /// The debounce decided how to treat it.
    Treated(Treatment),
    /// The debounce dropped it without the row lock (C9): admission only
    /// records the drop, with the rest of its group, before it is answered.
    Dropped {
        /// Why.
        reason: DropReason,
        /// Until when such requests are dropped, when known.
        until: Option<Timestamp>,
    },
    /// Durably admitted into `cycle`, which may run now: the gate should try
    /// to claim it.
    Admitted {
        /// The cycle that will serve the request.
        cycle: CycleId,
        /// This request opened the cycle (rather than joining it).
        opened: bool,
    },
    /// A due follow-up, or a cycle whose runner's lease expired, found by the
    /// scheduler: only the gate and the cycle service act on it.
    Resume,
}

/// What every layer needs of a request.
pub trait StackRequest: Send + Sync + 'static {
    /// What the layers key their per-workspace state by.
    type Key: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;

    /// The workspace the request is about.
    fn key(&self) -> Self::Key;
    /// Who asked.
    fn trigger(&self) -> Trigger;
    /// A stop or delete: never debounced or dropped.
    fn is_removal(&self) -> bool {
        false
    }
    /// True for file writes (the burst rule, C8).
    fn is_file_write(&self) -> bool;
    /// Where the request is in the stack.
    fn stage(&self) -> Stage;
    /// Moves the request to the next stage.
    fn set_stage(&mut self, stage: Stage);
}

/// One request for a cycle (or for a config change that may need one).
#[derive(Debug)]
pub struct Intent {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// What it asks of the workspace.
    pub ask: Ask,
    /// Who asked.
    pub trigger: Trigger,
    /// Free text kept with the cycle.
    pub reason: String,
    /// A mutation to commit with the admission.
    pub change: Option<Change>,
    /// A workspace to create with the admission (boxed, as `caller`: a
    /// request parked in admission is moved and held in several places, and
    /// these rarely set fields would make every copy 200 bytes larger).
    pub creation: Option<Box<Creation>>,
    /// Where the request is in the stack.
    pub stage: Stage,
    /// The span the request was made in (its log lines carry it).
    pub span: tracing::Span,
    /// The caller's W3C trace context: a cycle this request opens joins
    /// the caller's trace (C16).
    pub caller: Option<Box<opentelemetry::trace::SpanContext>>,
    /// Who asked, through which RPC: recorded in the audit log with the
    /// admission (`None` for the service's own requests).
    pub audit: Option<Audited>,
}

impl Intent {
    /// A fresh request from an entry point.
    pub fn new(
        workspace: WorkspaceId,
        ask: Ask,
        trigger: Trigger,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            workspace,
            ask,
            trigger,
            reason: reason.into(),
            change: None,
            creation: None,
            stage: Stage::New,
            span: tracing::Span::current(),
            caller: None,
            audit: None,
        }
    }

    /// The same request, made by `actor` (whose trace context is `trace`)
    /// through RPC `action`.
    pub fn by(
        mut self,
        (actor, trace): (String, Option<opentelemetry::trace::SpanContext>),
        action: &'static str,
    ) -> Self {
        self.caller = trace.map(Box::new);
        self.audit = Some(Audited { actor, action });
        self
    }

    /// What the audit log records of this request, if a caller made it.
    pub fn audit_row(&self) -> Option<crate::store::AuditRow<'_>> {
        Some(crate::store::AuditRow {
            by: self.audit.as_ref()?,
            trigger: self.trigger,
            reason: &self.reason,
            change: self.change.as_ref(),
            creation: self.creation.as_deref(),
        })
    }

    /// A restart with `trigger`.
    pub fn restart(workspace: WorkspaceId, trigger: Trigger, reason: impl Into<String>) -> Self {
        Self::new(workspace, Ask::Run, trigger, reason)
    }

    /// A config mutation (a CONFIG_CHANGED trigger).
    pub fn change(workspace: WorkspaceId, change: Change) -> Self {
        let mut intent = Self::new(workspace, Ask::Run, Trigger::ConfigChanged, "");
        intent.change = Some(change);
        intent
    }

    /// The creation of a workspace (a CREATE trigger).
    pub fn create(workspace: WorkspaceId, creation: Creation) -> Self {
        let mut intent = Self::new(workspace, Ask::Run, Trigger::Create, "created");
        intent.creation = Some(Box::new(creation));
        intent
    }

    /// The scheduler's resumption of whatever is due for `workspace`.
    pub fn resume(workspace: WorkspaceId) -> Self {
        let mut intent = Self::new(workspace, Ask::Run, Trigger::Reconciler, "");
        intent.stage = Stage::Resume;
        intent
    }
}

impl StackRequest for Intent {
    type Key = WorkspaceId;

    fn key(&self) -> WorkspaceId {
        self.workspace
    }

    fn trigger(&self) -> Trigger {
        self.trigger
    }

    fn is_file_write(&self) -> bool {
        matches!(
            self.change,
            Some(Change::WriteFile { .. } | Change::DeleteFile { .. })
        )
    }

    fn is_removal(&self) -> bool {
        self.ask != Ask::Run
    }

    fn stage(&self) -> Stage {
        self.stage
    }

    fn set_stage(&mut self, stage: Stage) {
        self.stage = stage;
    }
}

/// How the stack handled a request that did not start a cycle of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Joined (or opened) a follow-up behind a running cycle.
    Coalesced,
    /// Waits for the debounce window or a file-write burst to end.
    Deferred,
}

/// The stack's answer: what happens for this request. Only given once the
/// request is durable (committed), so any cycle it names will happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// This request started `cycle` and holds the gate.
    Accepted {
        /// The cycle.
        cycle: CycleId,
        /// The generation it provisions (the current one for stop/delete).
        generation: Generation,
        /// What it does.
        goal: Goal,
    },
    /// This request will be served by `cycle`, which starts later.
    Coalesced {
        /// The cycle.
        cycle: CycleId,
        /// Its earliest start.
        not_before: Timestamp,
        /// Behind a running cycle, or held for the window/burst.
        waiting: Waiting,
    },
    /// Dropped: no cycle for this request.
    Dropped {
        /// Why.
        reason: DropReason,
        /// Until when such requests are dropped, when known.
        until: Option<Timestamp>,
    },
    /// A config change on a stopped workspace, stored for its next start.
    Stored,
    /// A resumption found nothing to do (someone else got there first).
    Idle,
    /// A delete of a workspace that is already deleted: done, nothing to do.
    AlreadyDeleted,
}

impl Verdict {
    /// The one reading of this verdict that metrics, traces and logs use.
    pub fn answered(&self) -> Answered {
        let handling = match self {
            Self::Accepted { .. } => "accepted",
            Self::Coalesced {
                waiting: Waiting::Coalesced,
                ..
            } => "coalesced",
            Self::Coalesced {
                waiting: Waiting::Deferred,
                ..
            } => "deferred",
            Self::Dropped {
                reason: DropReason::Debounced,
                ..
            } => "debounced",
            Self::Dropped { .. } => "dropped",
            Self::Stored => "stored",
            Self::Idle => "idle",
            Self::AlreadyDeleted => "already_deleted",
        };
        let mut answered = Answered {
            handling,
            ..Answered::default()
        };
        match self {
            Self::Accepted { cycle, .. } => answered.cycle = Some(*cycle),
            Self::Coalesced {
                cycle, not_before, ..
            } => {
                answered.cycle = Some(*cycle);
                answered.not_before = Some(*not_before);
            }
            Self::Dropped { reason, until } => {
                answered.drop_reason = reason.label();
                answered.drop_description = reason.describe();
                answered.until = *until;
            }
            Self::Stored | Self::Idle | Self::AlreadyDeleted => {}
        }
        answered
    }
}

/// The answer to an [`Intent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// What happens.
    pub verdict: Verdict,
    /// The workspace's config version after the request (for mutations: the
    /// version that includes it).
    pub config_version: Option<ConfigVersion>,
}

impl Admission {
    /// An admission with no config version to report.
    pub fn of(verdict: Verdict) -> Self {
        Self {
            verdict,
            config_version: None,
        }
    }
}
