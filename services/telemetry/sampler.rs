//! Which spans are exported: the user's sampler (`OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`) decides for cycle roots and for spans under a
//! sampled parent; any other span without a parent is dropped, so the
//! collector receives one trace per cycle and nothing else.
//! Contracts: C16.

use opentelemetry::{
    Context, KeyValue,
    trace::{Link, SpanKind, TraceContextExt, TraceId},
};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use super::cycle_trace::CYCLE_SPAN;

/// Keeps cycle roots and what hangs under sampled spans.
#[derive(Clone, Debug)]
pub(super) struct CycleRoots {
    inner: Sampler,
}

impl CycleRoots {
    /// The user's sampler from the standard variables (default: always on,
    /// honouring a caller's sampled flag).
    pub(super) fn from_env() -> Self {
        let ratio = || {
            std::env::var("OTEL_TRACES_SAMPLER_ARG")
                .ok()
                .and_then(|arg| arg.parse::<f64>().ok())
                .unwrap_or(1.0)
        };
        let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let inner = match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(ratio()),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio())))
            }
            _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        };
        Self { inner }
    }
}

impl ShouldSample for CycleRoots {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let has_parent = parent_context.is_some_and(|cx| cx.span().span_context().is_valid());
        if !has_parent && name != CYCLE_SPAN {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: Default::default(),
            };
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};

    use super::*;

    fn decide(parent: Option<&Context>, name: &str) -> SamplingDecision {
        CycleRoots {
            inner: Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        }
        .should_sample(
            parent,
            TraceId::from_bytes([1; 16]),
            name,
            &SpanKind::Internal,
            &[],
            &[],
        )
        .decision
    }

    #[test]
    fn only_cycles_may_start_a_trace() {
        assert_eq!(decide(None, CYCLE_SPAN), SamplingDecision::RecordAndSample);
        assert_eq!(decide(None, "invoke"), SamplingDecision::Drop);
        let parent = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        assert_eq!(
            decide(Some(&parent), "invoke"),
            SamplingDecision::RecordAndSample
        );
    }
}
