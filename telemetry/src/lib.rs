//! What every Tessera process shares for observability and its life cycle, so the coordinator,
//! the workers and the CLI log, trace, count and stop the same way:
//!
//! - [`init`]: logs on standard error (human-readable, or JSON for log collectors) and, only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans exported over OTLP/gRPC; silent otherwise.
//! - [`propagation`]: W3C `traceparent` carried in gRPC metadata, so one job is one trace across
//!   the CLI, the coordinator and the workers.
//! - [`metrics`]: a Prometheus `/metrics` endpoint over a registry the process fills.
//! - [`shutdown`]: one cancellation token for SIGTERM and ctrl-c (graceful stop and drain).

pub mod init;
pub mod metrics;
pub mod propagation;
pub mod shutdown;

pub use init::{init, LogFormat, TelemetryGuard};

/// The metric families a worker exposes on its `/metrics` endpoint. They are named here, not in
/// the worker crate, so the deployment files (dashboard, autoscaler, alerts) can be checked
/// against them without building the worker, which links libtorch.
pub const WORKER_METRICS: &[&str] = &[
    "tessera_worker_iterations_total",
    "tessera_worker_upscaled_megapixels_total",
    "tessera_worker_gpu_memory_bytes",
    "tessera_worker_task_seconds",
];
