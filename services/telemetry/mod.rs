//! Logs, traces and metrics, configured the way the OpenTelemetry ecosystem
//! expects: the standard `OTEL_*` variables choose the collector, the
//! service name and the sampler; without an endpoint nothing is exported.
//! Contracts: C16.
//!
//! What is exported is shaped for operators reading Jaeger: one trace per
//! cycle ([`cycle_trace`]) and nothing else — a span with no parent is kept
//! only if it is a cycle's root ([`sampler`]), so background calls (the
//! reconciler polling EC2, say) never flood the collector with traces of
//! their own. Export runs on the SDK's own threads with bounded queues:
//! a collector that is down costs dropped spans, never a blocked request
//! or unbounded memory.

pub mod caller;
pub mod cycle_trace;
pub mod metrics;
pub mod prometheus_endpoint;
mod sampler;
mod span_ids;

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator,
    trace::SdkTracerProvider,
};
use tracing::Level;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, fmt, prelude::*};

/// The instrumentation scope of every span and instrument.
pub const SCOPE: &str = "workspace-lifecycle";

static TRACES_ON: AtomicBool = AtomicBool::new(false);
static PROMETHEUS: OnceLock<prometheus::Registry> = OnceLock::new();

/// True when spans are exported, so work done only for traces (finding a
/// cycle's trace for a request) is skipped otherwise.
pub fn traces_enabled() -> bool {
    TRACES_ON.load(Ordering::Relaxed)
}

/// The metrics in the Prometheus text format, if telemetry was initialised.
pub fn prometheus_text() -> Option<String> {
    let registry = PROMETHEUS.get()?;
    let mut out = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut out)
        .ok()?;
    Some(out)
}

/// What `init` set up; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: SdkMeterProvider,
}

/// A configuration problem with telemetry (reported, never fatal: the
/// service runs without the exporter rather than not at all).
#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(String);

/// The collector endpoint for `signal` ("TRACES" or "METRICS"), if one is
/// configured.
fn endpoint_for(signal: &str) -> Option<String> {
    let disabled = std::env::var("OTEL_SDK_DISABLED")
        .map(|v| v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if disabled {
        return None;
    }
    [
        format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"),
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
    ]
    .iter()
    .filter_map(|name| std::env::var(name).ok())
    .find(|value| !value.trim().is_empty())
}

fn resource() -> Resource {
    // Reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the default
    // name is the binary's.
    let mut builder = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        builder = builder.with_service_name(SCOPE);
    }
    builder.build()
}

fn tracer_provider() -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if endpoint_for("TRACES").is_none() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource())
            .with_sampler(sampler::CycleRoots::from_env())
            .with_id_generator(span_ids::PlannedIds::default())
            .with_batch_exporter(exporter)
            .build(),
    ))
}

fn meter_provider() -> Result<SdkMeterProvider, TelemetryError> {
    let registry = prometheus::Registry::new();
    let prometheus_reader = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let _ = PROMETHEUS.set(registry);
    let mut builder = SdkMeterProvider::builder()
        .with_resource(resource())
        .with_reader(prometheus_reader);
    if endpoint_for("METRICS").is_some() {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        builder = builder.with_periodic_exporter(exporter);
    }
    Ok(builder.build())
}

/// How logs are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs logging (text or JSON lines, `RUST_LOG` filtering), and the
/// trace and metric pipelines. Call once, inside the Tokio runtime (the
/// OTLP exporter's gRPC client needs it).
pub fn init(format: LogFormat) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let (traces, trace_error) = match tracer_provider() {
        Ok(provider) => (provider, None),
        Err(err) => (None, Some(err)),
    };
    let otel_layer = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SCOPE))
            .with_location(false)
            .with_threads(false)
            .with_filter(
                // Our spans and the backends' at INFO; the AWS SDK's
                // request spans are at DEBUG.
                Targets::new()
                    .with_default(Level::INFO)
                    .with_target("aws_smithy_runtime", Level::DEBUG)
                    .with_target("aws_sdk_ec2", Level::DEBUG),
            )
    });
    // tokio-postgres logs statement parameters at DEBUG, and a parameter
    // can be a secret: its logs stop at INFO whatever RUST_LOG says.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("tokio_postgres=info".parse().expect("a valid directive"));
    let log_layer = match format {
        LogFormat::Text => fmt::layer().with_target(false).boxed(),
        LogFormat::Json => fmt::layer().json().boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(log_layer.with_filter(filter))
        .with(otel_layer)
        .try_init();

    if let Some(provider) = &traces {
        global::set_tracer_provider(provider.clone());
        TRACES_ON.store(true, Ordering::Relaxed);
        tracing::info!("exporting traces over OTLP");
    }
    if let Some(err) = trace_error {
        tracing::warn!(%err, "traces are not exported");
    }
    let metrics = match meter_provider() {
        Ok(provider) => provider,
        Err(err) => {
            tracing::warn!(%err, "metrics are not exported");
            SdkMeterProvider::builder().build()
        }
    };
    global::set_meter_provider(metrics.clone());
    Telemetry { traces, metrics }
}

impl Telemetry {
    /// Flushes and stops the exporters, giving a collector that is down
    /// at most `timeout` per signal.
    pub async fn shutdown(self, timeout: Duration) {
        let Self { traces, metrics } = self;
        // The SDK's shutdown blocks its caller until the export threads end.
        let flushed = tokio::task::spawn_blocking(move || {
            if let Some(provider) = traces {
                if let Err(err) = provider.shutdown_with_timeout(timeout) {
                    tracing::warn!(%err, "could not flush spans");
                }
            }
            if let Err(err) = metrics.shutdown_with_timeout(timeout) {
                tracing::warn!(%err, "could not flush metrics");
            }
        });
        let _ = tokio::time::timeout(timeout * 3, flushed).await;
    }
}
