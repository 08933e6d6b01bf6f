//! The worker's Prometheus metrics, served on `--metrics-listen`: what this process did (render
//! iterations, upscaled megapixels, task durations by kind) and the GPU memory in use, read
//! from NVML at each scrape. The family names are [`tessera_telemetry::WORKER_METRICS`], which
//! the deployment's dashboard and alerts are checked against.

use std::sync::atomic::AtomicU64;

use nvml_wrapper::Nvml;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tessera_telemetry::metrics::MetricsSource;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

type Histograms = Family<KindLabel, Histogram, fn() -> Histogram>;

/// Work durations: 10 ms (a small tile on a GPU) to about 45 minutes (a long render on a CPU).
fn task_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 19))
}

/// The worker's metric families.
pub struct WorkerMetrics {
    registry: Registry,
    iterations: Counter,
    upscaled_megapixels: Counter<f64, AtomicU64>,
    task_seconds: Histograms,
    gpu_memory: Gauge,
    /// The GPU this worker runs on, when it runs on one and NVML is there to ask.
    gpu: Option<(Nvml, u32)>,
}

impl WorkerMetrics {
    /// Registers every family. `cuda_index` is the worker's GPU (`None` on the CPU, where the
    /// GPU memory gauge stays 0).
    pub fn new(cuda_index: Option<usize>) -> Self {
        let gpu = cuda_index.and_then(|index| match Nvml::init() {
            Ok(nvml) => Some((nvml, u32::try_from(index).ok()?)),
            Err(e) => {
                tracing::warn!("GPU memory will read 0: NVML is not available ({e})");
                None
            }
        });
        let mut metrics = WorkerMetrics {
            registry: Registry::default(),
            iterations: Counter::default(),
            upscaled_megapixels: Counter::default(),
            task_seconds: Family::new_with_constructor(task_buckets),
            gpu_memory: Gauge::default(),
            gpu,
        };
        let r = &mut metrics.registry;
        r.register(
            "tessera_worker_iterations",
            "Render iterations done",
            metrics.iterations.clone(),
        );
        r.register(
            "tessera_worker_upscaled_megapixels",
            "Megapixels the upscaler produced (tile context included)",
            metrics.upscaled_megapixels.clone(),
        );
        r.register(
            "tessera_worker_task_seconds",
            "Work time of each task, by kind (inputs and hand-back excluded)",
            metrics.task_seconds.clone(),
        );
        r.register(
            "tessera_worker_gpu_memory_bytes",
            "GPU memory this process holds (0 on the CPU)",
            metrics.gpu_memory.clone(),
        );
        metrics
    }

    /// One render iteration done.
    pub fn iteration(&self) {
        self.iterations.inc();
    }

    /// An upscaled tile done: `pixels` output pixels from the network (tile context included).
    pub fn upscaled(&self, pixels: u64) {
        self.upscaled_megapixels.inc_by(pixels as f64 / 1e6);
    }

    /// A task of `kind` worked for `seconds`.
    pub fn task_done(&self, kind: &str, seconds: f64) {
        self.task_seconds
            .get_or_create(&KindLabel { kind: kind.into() })
            .observe(seconds);
    }

    /// The memory NVML counts for this process on the worker's GPU.
    fn read_gpu_memory(&self) -> Option<u64> {
        let (nvml, index) = self.gpu.as_ref()?;
        let device = nvml.device_by_index(*index).ok()?;
        let pid = std::process::id();
        let processes = device.running_compute_processes().ok()?;
        let ours = processes.iter().find(|p| p.pid == pid)?;
        match ours.used_gpu_memory {
            nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) => Some(bytes),
            nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
        }
    }
}

#[async_trait::async_trait]
impl MetricsSource for WorkerMetrics {
    async fn render(&self) -> anyhow::Result<String> {
        if let Some(bytes) = self.read_gpu_memory() {
            self.gpu_memory
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        self.registry.render().await
    }
}
