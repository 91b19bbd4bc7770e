//! The figures an operator watches: how requests were handled by trigger,
//! cycles by trigger and outcome, how long cycles take and wait for the
//! gate, how many run now. Recorded through the OpenTelemetry API, read
//! over OTLP and on the Prometheus endpoint.
//! Contracts: C16.
//!
//! Labels are bounded enums (trigger, handling, goal, outcome, drop
//! reason) — never ids or free text, so series cannot grow without bound
//! and nothing a caller typed can reach them.

use std::sync::OnceLock;

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram, UpDownCounter},
};

use super::SCOPE;
use crate::domain::{CycleId, Goal, Outcome, Timestamp, Trigger};

/// The instruments.
pub struct Metrics {
    requests: Counter<u64>,
    cycles: Counter<u64>,
    cycle_duration: Histogram<f64>,
    in_flight: UpDownCounter<i64>,
    gate_wait: Histogram<f64>,
}

/// The instruments, created on first use from the global meter provider
/// (so after `telemetry::init`; without it they record nothing).
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = global::meter(SCOPE);
        let seconds = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ];
        Metrics {
            requests: meter
                .u64_counter("wl.requests")
                .with_description("Requests for a cycle, by trigger and how they were handled")
                .build(),
            cycles: meter
                .u64_counter("wl.cycles")
                .with_description(
                    "Cycles ended, once per trigger they absorbed, by goal and outcome",
                )
                .build(),
            cycle_duration: meter
                .f64_histogram("wl.cycle.duration")
                .with_unit("s")
                .with_description("From taking the gate to the cycle's end")
                .with_boundaries(seconds.clone())
                .build(),
            in_flight: meter
                .i64_up_down_counter("wl.cycles.in_flight")
                .with_description("Cycles running in this process")
                .build(),
            gate_wait: meter
                .f64_histogram("wl.gate.wait")
                .with_unit("s")
                .with_description("From a cycle's admission to taking the gate")
                .with_boundaries(seconds)
                .build(),
        }
    })
}

/// How a request was answered, as telemetry labels and records it. The
/// engine derives it from its verdict in one place (`Verdict::answered`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answered {
    /// How it was handled: accepted, coalesced, deferred, debounced,
    /// dropped, stored, idle, already_deleted.
    pub handling: &'static str,
    /// Why it was dropped, as a label ("" if it was not).
    pub drop_reason: &'static str,
    /// Why it was dropped, in words ("" if it was not).
    pub drop_description: &'static str,
    /// The cycle that serves it (opened or joined).
    pub cycle: Option<CycleId>,
    /// Its cycle's earliest start, for a request that waits.
    pub not_before: Option<Timestamp>,
    /// Until when requests like it are dropped, when known.
    pub until: Option<Timestamp>,
}

impl Metrics {
    /// Counts one request.
    pub fn request(&self, trigger: Trigger, answered: &Answered) {
        let mut labels = vec![
            KeyValue::new("trigger", trigger.as_str()),
            KeyValue::new("handling", answered.handling),
        ];
        if !answered.drop_reason.is_empty() {
            labels.push(KeyValue::new("reason", answered.drop_reason));
        }
        self.requests.add(1, &labels);
    }

    /// A cycle took the gate after waiting `waited`.
    pub fn cycle_started(&self, waited: std::time::Duration) {
        self.in_flight.add(1, &[]);
        self.gate_wait.record(waited.as_secs_f64(), &[]);
    }

    /// A cycle ended after `took`.
    pub fn cycle_ended(
        &self,
        goal: Goal,
        outcome: Outcome,
        triggers: impl IntoIterator<Item = Trigger>,
        took: std::time::Duration,
    ) {
        self.in_flight.add(-1, &[]);
        let base = [
            KeyValue::new("goal", goal.as_str()),
            KeyValue::new("outcome", outcome.as_str()),
        ];
        self.cycle_duration.record(took.as_secs_f64(), &base);
        for trigger in triggers {
            let mut labels = base.to_vec();
            labels.push(KeyValue::new("trigger", trigger.as_str()));
            self.cycles.add(1, &labels);
        }
    }
}
