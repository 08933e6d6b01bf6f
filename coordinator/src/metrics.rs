//! The coordinator's Prometheus metrics. Counters and histograms count what this process did
//! (sum them over coordinators in queries); the gauges describing the farm (queue depths, tasks
//! per state, workers per device) are read from the state store at each scrape, so every
//! coordinator sharing one Redis reports the same, current numbers.

use crate::state::{JobRecord, JobState, StateBackend, TaskState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::task::{KindCounts, TaskKind};
use tessera_telemetry::metrics::MetricsSource;

/// Every metric family the coordinator exposes, as they appear on `/metrics` (counters with
/// their `_total`). Gauges of things that do not exist yet (an empty queue, no workers) have no
/// series and are then left out of a scrape, as Prometheus expects.
pub const FAMILIES: &[&str] = &[
    "tessera_queue_depth",
    "tessera_tasks",
    "tessera_workers",
    "tessera_tasks_planned_total",
    "tessera_tasks_completed_total",
    "tessera_lease_expiries_total",
    "tessera_task_retries_total",
    "tessera_corrupt_artifacts_total",
    "tessera_task_duration_seconds",
    "tessera_job_duration_seconds",
    "tessera_state_store_up",
    "tessera_webhook_deliveries_total",
];

/// The outcomes a webhook attempt is counted under: accepted by the receiver, failed (to be
/// retried), or failed for good (the event given up).
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "failed", "dropped"];

/// How long a health check or a scrape waits for the state store before saying it is down: a
/// store that does not answer must not hold `/healthz` at SERVING nor hang `/metrics` (a
/// client's reconnection to a dead Redis can take many seconds to fail).
pub const STORE_ANSWER: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    priority: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Task durations: 0.1 s (a tile on a GPU) to about 7 hours (a long render on a CPU).
fn task_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 18))
}

/// Job durations: 1 s to about 18 days (a batch of thousands of renders).
fn job_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 21))
}

/// The coordinator's metrics and the store its gauges are read from.
pub struct Metrics {
    registry: Registry,
    backend: Arc<dyn StateBackend>,
    /// How long a worker may be silent and still count as alive.
    alive_ms: u64,
    queue_depth: Family<QueueLabels, Gauge>,
    tasks: Family<StateLabel, Gauge>,
    workers: Family<DeviceLabel, Gauge>,
    planned: Family<KindLabel, Counter>,
    completed: Family<KindLabel, Counter>,
    lease_expiries: Counter,
    retries: Counter,
    corrupt_artifacts: Counter,
    task_duration: Histograms<KindLabel>,
    job_duration: Histograms<StateLabel>,
    webhooks: Family<OutcomeLabel, Counter>,
    /// 1 when the last scrape read the farm gauges from the state store, 0 when it did not
    /// answer (the farm gauges then keep the values last read).
    store_up: Gauge,
    /// One scrape at a time: a scrape clears and refills the gauges before encoding.
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    /// Registers every family; workers silent for longer than `alive_ms` are not counted.
    pub fn new(backend: Arc<dyn StateBackend>, alive_ms: u64) -> Self {
        let mut metrics = Metrics {
            registry: Registry::default(),
            backend,
            alive_ms,
            queue_depth: Family::default(),
            tasks: Family::default(),
            workers: Family::default(),
            planned: Family::default(),
            completed: Family::default(),
            lease_expiries: Counter::default(),
            retries: Counter::default(),
            corrupt_artifacts: Counter::default(),
            task_duration: Family::new_with_constructor(task_buckets),
            job_duration: Family::new_with_constructor(job_buckets),
            webhooks: Family::default(),
            store_up: Gauge::default(),
            scrape: tokio::sync::Mutex::new(()),
        };
        let r = &mut metrics.registry;
        r.register(
            "tessera_state_store_up",
            "1 when this coordinator's last scrape read the farm from its state store, 0 when the store did not answer (the farm gauges then hold the last values read)",
            metrics.store_up.clone(),
        );
        r.register(
            "tessera_queue_depth",
            "Tasks waiting for a worker, by job priority and task kind (whole farm)",
            metrics.queue_depth.clone(),
        );
        r.register(
            "tessera_tasks",
            "Tasks of every job by state (whole farm)",
            metrics.tasks.clone(),
        );
        r.register(
            "tessera_workers",
            "Registered workers heard from recently, by device (whole farm)",
            metrics.workers.clone(),
        );
        r.register(
            "tessera_tasks_planned",
            "Tasks planned by jobs submitted to this coordinator, by kind",
            metrics.planned.clone(),
        );
        r.register(
            "tessera_tasks_completed",
            "Task outputs accepted by this coordinator, by kind",
            metrics.completed.clone(),
        );
        r.register(
            "tessera_lease_expiries",
            "Leases this coordinator found expired (the worker went silent)",
            metrics.lease_expiries.clone(),
        );
        r.register(
            "tessera_task_retries",
            "Failed attempts this coordinator queued again",
            metrics.retries.clone(),
        );
        r.register(
            "tessera_corrupt_artifacts",
            "Task inputs found corrupt or missing in the artifact store, so made again",
            metrics.corrupt_artifacts.clone(),
        );
        r.register(
            "tessera_task_duration_seconds",
            "From lease to accepted output, by kind",
            metrics.task_duration.clone(),
        );
        r.register(
            "tessera_job_duration_seconds",
            "From submission to end, by final job state",
            metrics.job_duration.clone(),
        );
        r.register(
            "tessera_webhook_deliveries",
            "Webhook delivery attempts by this coordinator, by outcome (delivered, failed and retried, dropped after the retry time)",
            metrics.webhooks.clone(),
        );
        for outcome in WEBHOOK_OUTCOMES {
            drop(metrics.webhooks.get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            }));
        }
        // Every kind and end state from the start, at zero, so rates and ratios have a series
        // to work on before the first event (families without one are not exposed at all).
        for kind in TaskKind::ALL {
            let label = kind_label(kind);
            drop(metrics.planned.get_or_create(&label));
            drop(metrics.completed.get_or_create(&label));
            drop(metrics.task_duration.get_or_create(&label));
        }
        for state in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            drop(
                metrics
                    .job_duration
                    .get_or_create(&state_label(state.as_str())),
            );
        }
        metrics
    }

    /// A job was submitted with `expected` tasks of each kind.
    pub fn job_planned(&self, expected: &KindCounts) {
        for kind in TaskKind::ALL {
            self.planned
                .get_or_create(&kind_label(kind))
                .inc_by(expected.get(kind));
        }
    }

    /// A task's output was accepted `seconds` after its lease began.
    pub fn task_completed(&self, kind: TaskKind, seconds: f64) {
        let label = kind_label(kind);
        self.completed.get_or_create(&label).inc();
        self.task_duration.get_or_create(&label).observe(seconds);
    }

    /// Leases were found expired.
    pub fn leases_expired(&self, count: usize) {
        self.lease_expiries.inc_by(count as u64);
    }

    /// A failed attempt was queued again.
    pub fn task_retried(&self) {
        self.retries.inc();
    }

    /// A worker's input was found corrupt or missing in the artifact store.
    pub fn corrupt_artifact(&self) {
        self.corrupt_artifacts.inc();
    }

    /// A webhook attempt ended with `outcome`, one of [`WEBHOOK_OUTCOMES`].
    pub fn webhook(&self, outcome: &str) {
        let label = OutcomeLabel {
            outcome: outcome.to_string(),
        };
        self.webhooks.get_or_create(&label).inc();
    }

    /// Observes the job's duration if it has ended.
    pub fn job_ended(&self, job: &JobRecord) {
        if job.state == JobState::Running || job.finished_ms == 0 {
            return;
        }
        let seconds = job.finished_ms.saturating_sub(job.submitted_ms) as f64 / 1000.0;
        self.job_duration
            .get_or_create(&state_label(job.state.as_str()))
            .observe(seconds);
    }

    /// Refills the farm gauges from the state store.
    async fn refresh(&self) -> anyhow::Result<()> {
        let stats = self.backend.stats().await?;
        let workers = self.backend.workers().await?;
        self.queue_depth.clear();
        for ((priority, kind), n) in stats.queued {
            let labels = QueueLabels {
                priority: priority.to_string(),
                kind: kind.as_str().to_string(),
            };
            self.queue_depth.get_or_create(&labels).set(n as i64);
        }
        for state in TaskState::ALL {
            self.tasks
                .get_or_create(&state_label(state.as_str()))
                .set(stats.tasks.get(state) as i64);
        }
        let now = crate::api::now_ms();
        let mut devices: BTreeMap<String, i64> = BTreeMap::new();
        for w in workers {
            if now.saturating_sub(w.last_seen_ms) <= self.alive_ms {
                *devices.entry(w.capabilities.device).or_default() += 1;
            }
        }
        self.workers.clear();
        for (device, n) in devices {
            self.workers.get_or_create(&DeviceLabel { device }).set(n);
        }
        Ok(())
    }
}

fn state_label(state: &str) -> StateLabel {
    StateLabel {
        state: state.to_string(),
    }
}

fn kind_label(kind: TaskKind) -> KindLabel {
    KindLabel {
        kind: kind.as_str().to_string(),
    }
}

#[async_trait::async_trait]
impl MetricsSource for Metrics {
    async fn render(&self) -> anyhow::Result<String> {
        let _one_at_a_time = self.scrape.lock().await;
        let refreshed = match tokio::time::timeout(STORE_ANSWER, self.refresh()).await {
            Ok(done) => done,
            Err(_) => Err(anyhow::anyhow!(
                "the state store did not answer in {STORE_ANSWER:?}"
            )),
        };
        if let Err(e) = &refreshed {
            tracing::warn!("metrics: the farm gauges keep their last values: {e:#}");
        }
        self.store_up.set(i64::from(refreshed.is_ok()));
        self.registry.render().await
    }
}
