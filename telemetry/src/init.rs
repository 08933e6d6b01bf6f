//! Setting up a process's logs and traces in one call, the same way in every binary.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where spans are sent; without it nothing is exported (the OpenTelemetry convention).
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The service name spans carry; the binary's own name when unset.
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";

/// How log lines are written on standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event, for people at a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log collectors (Loki, Cloud Logging, ...).
    Json,
}

/// Keeps the trace pipeline alive; dropping it flushes the spans not yet exported, so a
/// short-lived process (the CLI) still delivers its trace. Hold it until `main` returns.
#[must_use = "dropping the guard at once shuts the trace exporter down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: exporting the last spans failed: {e}");
            }
        }
    }
}

/// Installs the global `tracing` subscriber: logs filtered by `RUST_LOG` (default `info`) in
/// `format` on standard error, plus an OTLP/gRPC span exporter when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, naming the service `$OTEL_SERVICE_NAME` or
/// `default_service_name`. Also makes W3C trace context the propagation format. Must be called
/// inside a Tokio runtime (the exporter's gRPC channel runs on it).
pub fn init(default_service_name: &str, format: LogFormat) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Human => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };
    let provider = match std::env::var(OTLP_ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.is_empty() => Some(tracer_provider(
            &endpoint,
            &std::env::var(SERVICE_NAME_VAR).unwrap_or_else(|_| default_service_name.into()),
        )?),
        _ => None,
    };
    // Spans go to the exporter whatever RUST_LOG says about log lines: the filter applies to
    // the log layer only, and the exporter takes `info` and above.
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("tessera"))
            .with_filter(EnvFilter::new("info"))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter()))
        .with(traces)
        .try_init()
        .context("a tracing subscriber is installed already")?;
    Ok(TelemetryGuard { provider })
}

/// A tracer provider batching spans to the OTLP/gRPC collector at `endpoint`.
fn tracer_provider(endpoint: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("{OTLP_ENDPOINT_VAR}={endpoint} is not a usable OTLP endpoint"))?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
