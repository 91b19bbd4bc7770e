//! Span ids known before the span exists.
//! Contracts: C16.
//!
//! A cycle is admitted (and requests join it) before it runs, possibly on
//! another replica, yet every request's span must land in the cycle's
//! trace under the cycle's root span. So a cycle's span id is a function of
//! its id ([`cycle_span_id`]), and when its root span is finally built the
//! id generator hands out exactly that id ([`with_planned`]).

use std::cell::Cell;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use crate::domain::CycleId;

thread_local! {
    static PLANNED: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for the span being built inside [`with_planned`].
#[derive(Debug, Default)]
pub(super) struct PlannedIds {
    random: RandomIdGenerator,
}

impl IdGenerator for PlannedIds {
    fn new_trace_id(&self) -> TraceId {
        PLANNED
            .with(Cell::get)
            .map(|(trace, _)| trace)
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        PLANNED
            .with(Cell::get)
            .map(|(_, span)| span)
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// Runs `build` (which must build exactly one span, synchronously) so that
/// the span gets `span` as its id, and `trace` as its trace id if it has no
/// parent.
pub(super) fn with_planned<R>(trace: TraceId, span: SpanId, build: impl FnOnce() -> R) -> R {
    PLANNED.with(|planned| planned.set(Some((trace, span))));
    let built = build();
    PLANNED.with(|planned| planned.set(None));
    built
}

/// The span id of `cycle`'s root span: the low half of its (random, v4)
/// id, never zero since the variant bits are set.
pub(super) fn cycle_span_id(cycle: CycleId) -> SpanId {
    let bytes = cycle.as_uuid().into_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    SpanId::from_bytes(low)
}

/// The trace id of a cycle nobody asked to join a trace: its own id.
pub(super) fn own_trace_id(cycle: CycleId) -> TraceId {
    TraceId::from_bytes(cycle.as_uuid().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_ids_apply_only_inside_the_closure() {
        let generator = PlannedIds::default();
        let trace = TraceId::from_bytes([7; 16]);
        let span = SpanId::from_bytes([9; 8]);
        let inside = with_planned(trace, span, || {
            (generator.new_trace_id(), generator.new_span_id())
        });
        assert_eq!(inside, (trace, span));
        assert_ne!(generator.new_span_id(), span);
        assert_ne!(generator.new_trace_id(), trace);
    }

    #[test]
    fn a_cycle_span_id_is_stable_and_valid() {
        let cycle = CycleId::new();
        assert_eq!(cycle_span_id(cycle), cycle_span_id(cycle));
        assert_ne!(cycle_span_id(cycle), SpanId::INVALID);
        assert_ne!(own_trace_id(cycle), TraceId::INVALID);
    }
}
