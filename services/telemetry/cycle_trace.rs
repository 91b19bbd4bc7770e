//! One trace per cycle (C16).
//!
//! ```text
//! cycle                      root (or child of the opening caller's span)
//! ├── gate_wait              admission → the gate was taken
//! ├── request                one per request the cycle answered, with an
//! │                          event: accepted | coalesced | deferred |
//! │                          debounced | dropped (linked to its caller)
//! ├── stop / provision /     a tracing span per phase; backend calls
//! │   wait_for_agent         (Docker, the EC2 SDK) nest under them
//! └── ...
//! ```
//!
//! The cycle's trace and span ids are fixed when it is admitted (the span
//! id derives from the cycle id, the trace id is the opening caller's or
//! the cycle id, stored on the cycle row), so a request admitted on one
//! replica and a cycle run on another still meet in one trace.

use std::time::SystemTime;

use tokio::time::Instant;

use opentelemetry::{
    Context, KeyValue, global,
    trace::{
        Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags,
        TraceId, TraceState, Tracer as _,
    },
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    SCOPE, metrics,
    span_ids::{self, cycle_span_id},
};
use crate::domain::{
    ConfigVersion, CycleId, Finish, Generation, Goal, Timestamp, Trigger, WorkspaceId,
};

/// What the trace of a cycle that just took the gate says of it.
#[derive(Clone, Debug)]
pub struct CycleStart {
    /// The cycle.
    pub cycle: CycleId,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// What it does.
    pub goal: Goal,
    /// The generation it provisions (or stops).
    pub generation: Generation,
    /// How many times it was taken over.
    pub takeovers: u32,
    /// When it took the gate.
    pub claimed_at: Timestamp,
    /// The config it delivers, for provisioning cycles.
    pub config_version: Option<ConfigVersion>,
    /// How it was admitted, if that could be read.
    pub admitted: Option<AdmittedCycle>,
}

/// A cycle's admission, as stored: when, where its trace hangs, and the
/// requests it absorbed.
#[derive(Clone, Debug)]
pub struct AdmittedCycle {
    /// When it was opened.
    pub created_at: Timestamp,
    /// Its trace id (hex), empty if none was stored.
    pub trace_id: String,
    /// The opening caller's span id (hex), empty for a root.
    pub parent_span_id: String,
    /// Requests absorbed, by trigger.
    pub triggers: std::collections::BTreeMap<Trigger, u64>,
}

/// The name of a cycle's root span.
pub const CYCLE_SPAN: &str = "cycle";

/// Where a newly admitted cycle's trace hangs: the opening caller's trace
/// and span, or a trace of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceOrigin {
    /// W3C trace id, 32 hex digits.
    pub trace_id: String,
    /// The caller's span id (16 hex digits), empty for a root.
    pub parent_span_id: String,
}

impl TraceOrigin {
    /// The origin of `cycle` opened by a request from `caller`.
    pub fn of(cycle: CycleId, caller: Option<&SpanContext>) -> Self {
        match caller {
            Some(caller) if caller.is_valid() => Self {
                trace_id: caller.trace_id().to_string(),
                parent_span_id: caller.span_id().to_string(),
            },
            _ => Self {
                trace_id: span_ids::own_trace_id(cycle).to_string(),
                parent_span_id: String::new(),
            },
        }
    }
}

/// The remote context of `cycle`'s root span, given its stored trace id.
fn cycle_context(cycle: CycleId, trace_id: &str) -> Context {
    let trace_id = TraceId::from_hex(trace_id).unwrap_or_else(|_| span_ids::own_trace_id(cycle));
    Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        cycle_span_id(cycle),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

fn system_time(at: crate::domain::Timestamp) -> SystemTime {
    at.into()
}

/// The trace and metrics of one running cycle.
pub struct CycleTrace {
    span: Option<global::BoxedSpan>,
    context: Context,
    cycle: CycleId,
    workspace: WorkspaceId,
    goal: Goal,
    generation: u64,
    triggers: Vec<Trigger>,
    started: Instant,
}

impl CycleTrace {
    /// Starts the cycle's root span (backdated to its admission, with the
    /// gate wait as its first child) and its metrics.
    pub fn begin(start: CycleStart) -> Self {
        let record = start.admitted.as_ref();
        let claimed_at = start.claimed_at;
        let waited = record
            .and_then(|r| (claimed_at - r.created_at).to_std().ok())
            .unwrap_or_default();
        metrics::get().cycle_started(waited);
        let triggers: Vec<Trigger> = record
            .map(|r| r.triggers.keys().copied().collect())
            .unwrap_or_default();
        let mut trace = Self {
            span: None,
            context: Context::new(),
            cycle: start.cycle,
            workspace: start.workspace,
            goal: start.goal,
            generation: start.generation.0,
            triggers,
            started: Instant::now(),
        };
        if super::traces_enabled() {
            trace.start_span(&start);
        }
        trace
    }

    fn start_span(&mut self, start: &CycleStart) {
        let (record, claimed_at) = (start.admitted.as_ref(), start.claimed_at);
        let tracer = global::tracer(SCOPE);
        let opened_at = record.map(|r| r.created_at).unwrap_or(claimed_at);
        let trace_id = record
            .and_then(|r| TraceId::from_hex(&r.trace_id).ok())
            .filter(|id| *id != TraceId::INVALID)
            .unwrap_or_else(|| span_ids::own_trace_id(self.cycle));
        let parent = record
            .and_then(|r| SpanId::from_hex(&r.parent_span_id).ok())
            .filter(|id| *id != SpanId::INVALID)
            .map(|span_id| {
                Context::new().with_remote_span_context(SpanContext::new(
                    trace_id,
                    span_id,
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::default(),
                ))
            })
            .unwrap_or_default();
        let mut attributes = vec![
            KeyValue::new("workspace.id", self.workspace.to_string()),
            KeyValue::new("cycle.id", self.cycle.to_string()),
            KeyValue::new("cycle.goal", self.goal.as_str()),
            KeyValue::new("cycle.generation", self.generation as i64),
            KeyValue::new("cycle.takeovers", i64::from(start.takeovers)),
        ];
        if let Some(record) = record {
            let triggers: Vec<&str> = record.triggers.keys().map(Trigger::as_str).collect();
            let requests: u64 = record.triggers.values().sum();
            attributes.push(KeyValue::new("cycle.triggers", triggers.join(",")));
            attributes.push(KeyValue::new("cycle.requests", requests as i64));
        }
        if let Some(version) = start.config_version {
            attributes.push(KeyValue::new("config.version", version.0 as i64));
        }
        let builder = tracer
            .span_builder(CYCLE_SPAN)
            .with_kind(SpanKind::Internal)
            .with_start_time(system_time(opened_at))
            .with_attributes(attributes);
        let span = span_ids::with_planned(trace_id, cycle_span_id(self.cycle), || {
            tracer.build_with_context(builder, &parent)
        });
        let context = Context::new().with_remote_span_context(span.span_context().clone());
        let mut gate_wait = tracer
            .span_builder("gate_wait")
            .with_start_time(system_time(opened_at))
            .start_with_context(&tracer, &context);
        gate_wait.end_with_timestamp(system_time(claimed_at));
        self.context = context;
        self.span = Some(span);
    }

    /// A span for one phase of the cycle, under its root: backend calls
    /// made inside it nest under it.
    pub fn phase(&self, name: &'static str) -> tracing::Span {
        let span = tracing::info_span!("phase", otel.name = name, phase = name);
        if self.span.is_some() {
            let _ = span.set_parent(self.context.clone());
        }
        span
    }

    /// The cycle was handed to another replica: it will end the trace.
    pub fn handed_off(mut self) {
        if let Some(mut span) = self.span.take() {
            span.set_attribute(KeyValue::new("cycle.handed_off", true));
            span.end();
        }
        metrics::get().cycle_ended(self.goal, crate::domain::Outcome::Failed, [], self.took());
    }

    fn took(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Ends the trace with the cycle's outcome, counts it, and logs one line.
    pub fn end(mut self, finish: &Finish) {
        let outcome = finish.outcome();
        let took = self.took();
        let triggers: Vec<&str> = self.triggers.iter().map(Trigger::as_str).collect();
        let (config_version, reason) = match finish {
            Finish::Online { config_version } => (Some(config_version.0), ""),
            Finish::Failed { reason } => (None, reason.as_str()),
            Finish::Stopped | Finish::Deleted => (None, ""),
        };
        tracing::info!(
            workspace = %self.workspace,
            cycle = %self.cycle,
            generation = self.generation,
            goal = self.goal.as_str(),
            triggers = %triggers.join(","),
            config_version,
            outcome = outcome.as_str(),
            reason,
            duration_ms = took.as_millis() as u64,
            "cycle ended"
        );
        if let Some(mut span) = self.span.take() {
            span.set_attribute(KeyValue::new("cycle.outcome", outcome.as_str()));
            if let Some(version) = config_version {
                span.set_attribute(KeyValue::new("config.version", version as i64));
            }
            if let Finish::Failed { reason } = finish {
                span.set_status(Status::error(reason.clone()));
            } else {
                span.set_status(Status::Ok);
            }
            span.end();
        }
        metrics::get().cycle_ended(self.goal, outcome, self.triggers.iter().copied(), took);
    }
}

/// Records how a request was handled as a `request` span in the trace of
/// the cycle that answers it — the cycle it opened or joined, or for a
/// dropped request the cycle that made it unnecessary — linked to the
/// caller's own span. Off the request's path: the caller never waits.
pub fn record_request(
    cycle: CycleId,
    trace_id: &str,
    workspace: WorkspaceId,
    trigger: Trigger,
    caller: Option<SpanContext>,
    answered: &metrics::Answered,
) {
    let tracer = global::tracer(SCOPE);
    let mut builder = tracer
        .span_builder("request")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("workspace.id", workspace.to_string()),
            KeyValue::new("request.trigger", trigger.as_str()),
            KeyValue::new("request.handling", answered.handling),
        ]);
    if let Some(caller) = caller {
        builder = builder.with_links(vec![Link::with_context(caller)]);
    }
    let mut span = tracer.build_with_context(builder, &cycle_context(cycle, trace_id));
    let mut attributes = vec![
        KeyValue::new("trigger", trigger.as_str()),
        KeyValue::new("cycle.id", cycle.to_string()),
    ];
    if let Some(not_before) = answered.not_before {
        attributes.push(KeyValue::new("not_before", not_before.to_rfc3339()));
    }
    if !answered.drop_description.is_empty() {
        attributes.push(KeyValue::new("reason", answered.drop_description));
    }
    if let Some(until) = answered.until {
        attributes.push(KeyValue::new("until", until.to_rfc3339()));
    }
    span.add_event(answered.handling, attributes);
    span.end();
}
