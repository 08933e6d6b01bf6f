//! Farm mode (`tessera-worker --coordinator URL`): register this process's capabilities, then
//! lease tasks, run them with models kept loaded, report progress, and hand back outputs.
//!
//! The network side is async ([`session`]); the models run on a blocking thread ([`tasks`]),
//! which reports each iteration through a channel so heartbeats, checkpoints and previews go out
//! while the work goes on. SIGTERM or ctrl-c drains: the running task is finished (or, for a
//! render, checkpointed and handed back), then the worker deregisters.

mod capabilities;
mod link;
mod metrics;
mod session;
mod tasks;

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use metrics::WorkerMetrics;
use session::Session;
use tasks::ModelCache;
use tessera_core::settings;
use tessera_nets::generate::Precision;
use tessera_nets::models::ModelDir;
use tessera_telemetry::metrics::{bind_metrics, serve_metrics, MetricsSource};
use tessera_telemetry::LogFormat;

/// Options of farm mode.
#[derive(clap::Args, Debug, Clone)]
pub struct FarmArgs {
    /// The coordinator to pull tasks from, e.g. http://127.0.0.1:7470. Without it the worker
    /// runs one of its local commands instead.
    #[arg(long, env = "TESSERA_COORDINATOR")]
    pub coordinator: Option<String>,
    /// PEM file of the CA that signed the coordinator's certificate, for an https://
    /// coordinator (default: the system's roots).
    #[arg(long, env = "TESSERA_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Worker token, for a coordinator with an auth file (`tessera token --role worker`).
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the worker token (a mounted secret), when --token is not given.
    #[arg(long, env = "TESSERA_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// `cpu` or `cuda:N`: the device every model of farm mode runs on.
    #[arg(
        long = "device",
        id = "farm_device",
        env = "TESSERA_DEVICE",
        default_value = "cpu"
    )]
    pub device: String,
    /// A label for listings (default: host name and process id).
    #[arg(long, env = "TESSERA_WORKER_NAME")]
    pub name: Option<String>,
    /// Largest picture this worker takes, in pixels (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_pixels: u64,
    /// Longest side of a picture this worker renders (0: no limit). Unset: on a GPU, what its
    /// memory holds for a render, by the reference script's known memory use; on the CPU, no
    /// limit.
    #[arg(long, env = "TESSERA_MAX_SIDE")]
    pub max_side: Option<u32>,
    /// Most optimiser iterations a render may run on this worker (0: no limit), e.g. for
    /// workers lent for a short time.
    #[arg(long, env = "TESSERA_MAX_ITERATIONS", default_value_t = 0)]
    pub max_iterations: u32,
    /// Append one JSON line per task to this file: how long its lease request, input
    /// downloads, work and hand-back took. `tessera-bench farm` reads these to show what the
    /// farm adds to the work.
    #[arg(long, env = "TESSERA_TIMINGS", value_name = "FILE")]
    pub timings: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at GET /metrics on this address (port 0 picks one; the bound
    /// address is printed as `tessera-worker metrics on ADDR`). Unset: no endpoint.
    #[arg(long, env = "TESSERA_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// CPU threads for the models' work (default: libtorch's choice, every core). Several
    /// CPU workers on one machine should split the cores, or each slows the others down,
    /// network included; `tessera up` does so.
    #[arg(long, env = "TESSERA_THREADS", value_parser = clap::value_parser!(i32).range(1..))]
    pub threads: Option<i32>,
    /// How this worker runs the render networks, to fit its device.
    #[command(flatten)]
    pub render_mode: RenderMode,
    /// Log lines on standard error: `human` or `json`. Spans (one per task, with its stages)
    /// are also exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (service name:
    /// OTEL_SERVICE_NAME, default tessera-worker).
    #[arg(long, env = "TESSERA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// How a worker runs the render networks: a property of its device, not of the job, so it is
/// the worker's to choose (a render resumed from a checkpoint keeps the mode it started with).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct RenderMode {
    /// The table's [`tessera_core::settings::PRECISION`]; fp16 pixels may differ slightly from
    /// float32.
    #[arg(
        help = settings::PRECISION.help,
        long = "precision",
        id = "farm_precision",
        value_name = "PRECISION",
        env = "TESSERA_PRECISION",
        value_enum,
        default_value_t = settings::PRECISION.default
    )]
    pub precision: Precision,
    /// The table's [`tessera_core::settings::RECOMPUTE_DECODER`]: at 496x496 on the CPU, 37%
    /// less memory over the models for 26% more time.
    #[arg(
        help = settings::RECOMPUTE_DECODER.help,
        long = "recompute-decoder",
        id = "farm_recompute_decoder",
        env = "TESSERA_RECOMPUTE_DECODER"
    )]
    pub recompute_decoder: bool,
}

/// Runs farm mode until a signal drains it.
pub fn run(models: &ModelDir, args: FarmArgs, coordinator: String) -> anyhow::Result<()> {
    let device = tessera_nets::device::parse(&args.device)?;
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let capabilities = capabilities::detect(models, &args)?;
    let cache = Arc::new(Mutex::new(ModelCache::new(
        models.clone(),
        device,
        args.render_mode,
    )));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cuda_index = match device {
        tch::Device::Cuda(index) => Some(index),
        _ => None,
    };
    let metrics = Arc::new(WorkerMetrics::new(cuda_index));
    runtime.block_on(async move {
        let _telemetry = tessera_telemetry::init("tessera-worker", args.log_format)?;
        let stop = tessera_telemetry::shutdown::on_signals(
            "tessera-worker: draining (finishing or checkpointing the running task)",
        );
        let metrics_stop = CancellationToken::new();
        if let Some(address) = args.metrics_listen {
            let (listener, bound) = bind_metrics(address).await?;
            println!("tessera-worker metrics on {bound}");
            let source: Arc<dyn MetricsSource> = metrics.clone();
            tokio::spawn(serve_metrics(listener, source, None, metrics_stop.clone()));
        }
        let mut session =
            Session::register(&coordinator, &args, capabilities, &stop, metrics).await?;
        session.serve(cache, &stop).await?;
        let deregistered = session.deregister().await;
        metrics_stop.cancel();
        deregistered
    })
}
