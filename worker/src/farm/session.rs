//! The worker's conversation with the coordinator: registration, the lease loop, heartbeats
//! while a task runs, and handing back outputs. Every call that fails because the coordinator is
//! unreachable is retried with backoff, and a finished output is kept until it is accepted.

use std::io::Write;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera_proto::transfer::{read_download, upload_messages};
use tessera_proto::v1;
use tessera_proto::v1::workers_client::WorkersClient;
use tessera_telemetry::propagation::{continue_trace, TraceContextInterceptor};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::Instrument;

use super::metrics::WorkerMetrics;
use super::tasks::{self, ModelCache, Outcome};
use super::FarmArgs;
use crate::generate::{Halt, Progress};

/// Longest pause between retries when the coordinator is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long one lease request waits for work.
const LEASE_WAIT_MS: u32 = 5_000;

/// A registered worker's connection.
pub struct Session {
    link: Link,
    heartbeat: Duration,
    timings: Option<std::fs::File>,
    /// The last upscale source downloaded, by artifact key: the tiles of one picture often
    /// come to the same worker in a row, and artifacts never change once stored.
    last_source: Option<(String, Arc<Vec<u8>>)>,
    /// The previous task's hand-back, still uploading while the next task runs.
    handing_back: Option<JoinHandle<anyhow::Result<()>>>,
    metrics: Arc<WorkerMetrics>,
}

/// What a call to the coordinator needs, cheap to clone into a background hand-back.
#[derive(Clone)]
struct Link {
    client: WorkersClient<InterceptedService<Channel, TraceContextInterceptor>>,
    url: String,
    id: String,
}

/// Where one task's wall time went on this worker, as `--timings` records it.
#[derive(serde::Serialize)]
struct TaskTiming<'a> {
    task: &'a str,
    kind: &'static str,
    /// The lease request that brought the task, from asking to the reply.
    lease_ms: f64,
    /// From the lease to the start of the work: downloading the inputs.
    fetch_ms: f64,
    /// The work itself (model time, with heartbeats going out alongside).
    work_ms: f64,
    /// From the end of the work to the accepted completion: upload and complete.
    hand_back_ms: f64,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn kind_name(task: &v1::Task) -> &'static str {
    match task.spec {
        Some(v1::task::Spec::Generate(_)) => "generate",
        Some(v1::task::Spec::UpscaleTile(_)) => "upscale_tile",
        Some(v1::task::Spec::Stitch(_)) => "stitch",
        None => "unknown",
    }
}

/// The span of one task on this worker: the child of the job's submission when the lease
/// carries its trace context, so the task's stages (input downloads, model load, iterations or
/// tile, upload) and the coordinator's handling of its reports all join the job's trace.
fn task_span(task: &v1::Task) -> tracing::Span {
    let kind = kind_name(task);
    let span = tracing::info_span!(
        "task",
        otel.name = %format!("task {kind}"),
        task = %task.task_id,
        job = %task.job_id,
        kind,
        attempt = task.attempt,
    );
    continue_trace(&span, &task.traceparent);
    span
}

/// Whether a failed call is worth retrying: the coordinator is down or restarting.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    )
}

/// Retries `call` with doubling pauses while it fails transiently, saying so on stderr.
async fn retrying<T, F, Fut>(url: &str, what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Err(status) if transient(&status) => {
                eprintln!(
                    "tessera-worker: coordinator at {url} unreachable during {what} ({}); retrying in {:.1} s",
                    status.message(),
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
            }
            other => return other,
        }
    }
}

impl Session {
    /// Connects (retrying until the coordinator answers or `stop` fires) and registers.
    pub async fn register(
        url: &str,
        args: &FarmArgs,
        capabilities: v1::Capabilities,
        stop: &CancellationToken,
        metrics: Arc<WorkerMetrics>,
    ) -> anyhow::Result<Session> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .with_context(|| format!("--coordinator '{url}' is not a URL"))?;
        let client =
            WorkersClient::with_interceptor(endpoint.connect_lazy(), TraceContextInterceptor);
        let name = args.name.clone().unwrap_or_else(default_name);
        let request = v1::RegisterRequest {
            name,
            capabilities: Some(capabilities),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let register = retrying(url, "registration", || {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.register(request).await }
        });
        let reply = tokio::select! {
            reply = register => reply?.into_inner(),
            _ = stop.cancelled() => bail!("stopped before the coordinator at {url} answered"),
        };
        println!("tessera-worker registered as {}", reply.worker_id);
        let timings = match &args.timings {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open --timings {}", path.display()))?,
            ),
            None => None,
        };
        Ok(Session {
            link: Link {
                client,
                url: url.to_string(),
                id: reply.worker_id,
            },
            heartbeat: Duration::from_millis(reply.heartbeat_interval_ms.max(100)),
            timings,
            last_source: None,
            handing_back: None,
            metrics,
        })
    }

    /// Leases and runs tasks until `stop` fires.
    pub async fn serve(
        &mut self,
        cache: Arc<Mutex<ModelCache>>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        while !stop.is_cancelled() {
            let asked = Instant::now();
            let request = v1::LeaseTaskRequest {
                worker_id: self.link.id.clone(),
                wait_ms: LEASE_WAIT_MS,
            };
            let lease = retrying(&self.link.url, "lease", || {
                let mut client = self.link.client.clone();
                let request = request.clone();
                async move { client.lease_task(request).await }
            });
            let task = tokio::select! {
                reply = lease => reply?.into_inner().task,
                _ = stop.cancelled() => None,
            };
            if let Some(task) = task {
                let leased = asked.elapsed();
                let span = task_span(&task);
                self.run(task, cache.clone(), stop, leased)
                    .instrument(span)
                    .await?;
            }
        }
        Ok(())
    }

    /// Deregisters once the last output is handed back, so the coordinator stops counting on
    /// this worker at once.
    pub async fn deregister(mut self) -> anyhow::Result<()> {
        self.finish_hand_back().await?;
        let request = v1::DeregisterRequest {
            worker_id: self.link.id.clone(),
        };
        self.link.client.deregister(request).await?;
        Ok(())
    }

    /// Runs one task to its end: its output accepted, its failure reported, dropped because
    /// the task was cancelled or handed to another worker, or (a render, when `stop` fires)
    /// checkpointed for the next worker; deregistration then queues it again.
    async fn run(
        &mut self,
        task: v1::Task,
        cache: Arc<Mutex<ModelCache>>,
        stop: &CancellationToken,
        leased: Duration,
    ) -> anyhow::Result<()> {
        let began = Instant::now();
        match self.execute(&task, cache, stop).await {
            Ok((Outcome::Output(output), fetched)) => {
                let worked = began.elapsed();
                self.count(&task, worked - fetched);
                self.hand_back_later(&task, output).await?;
                let timing = TaskTiming {
                    task: &task.task_id,
                    kind: kind_name(&task),
                    lease_ms: millis(leased),
                    fetch_ms: millis(fetched),
                    work_ms: millis(worked - fetched),
                    hand_back_ms: millis(began.elapsed() - worked),
                };
                self.record(&timing)
            }
            Ok((Outcome::Abandoned, _)) => Ok(()),
            Ok((
                Outcome::Paused {
                    checkpoint,
                    iteration,
                },
                _,
            )) => {
                eprintln!(
                    "tessera-worker: task {} checkpointed at iteration {iteration} for the next worker",
                    task.task_id
                );
                let mut last = Report {
                    iteration,
                    checkpoint: Some(checkpoint),
                    ..Report::default()
                };
                self.beat(&task, &mut last, &AtomicBool::new(false)).await
            }
            Err(error) => {
                let request = v1::FailTaskRequest {
                    worker_id: self.link.id.clone(),
                    task_id: task.task_id.clone(),
                    attempt: task.attempt,
                    error: format!("{error:#}"),
                    retryable: true,
                };
                eprintln!("tessera-worker: task {} failed: {error:#}", task.task_id);
                retrying(&self.link.url, "failure report", || {
                    let mut client = self.link.client.clone();
                    let request = request.clone();
                    async move { client.fail_task(request).await }
                })
                .await?;
                Ok(())
            }
        }
    }

    /// Counts a finished task in the metrics.
    fn count(&self, task: &v1::Task, work: Duration) {
        self.metrics.task_done(kind_name(task), work.as_secs_f64());
        if let Some(v1::task::Spec::UpscaleTile(tile)) = &task.spec {
            if let (Some(input), Some(plan)) = (tile.input, tile.plan) {
                let scale = u64::from(plan.scale);
                let pixels = u64::from(input.width) * u64::from(input.height) * scale * scale;
                self.metrics.upscaled(pixels);
            }
        }
    }

    /// Starts handing `output` back in the background, so the next task's lease and work
    /// overlap its upload; first waits for the previous hand-back, so at most one finished
    /// output is in flight (and kept, retried, until the coordinator accepts it).
    async fn hand_back_later(&mut self, task: &v1::Task, output: Vec<u8>) -> anyhow::Result<()> {
        self.finish_hand_back().await?;
        let (link, task) = (self.link.clone(), task.clone());
        let upload = tracing::info_span!("upload", bytes = output.len());
        self.handing_back = Some(tokio::spawn(
            async move { link.hand_back(&task, output).await }.instrument(upload),
        ));
        Ok(())
    }

    /// Waits for the hand-back in flight, if any.
    async fn finish_hand_back(&mut self) -> anyhow::Result<()> {
        match self.handing_back.take() {
            Some(pending) => pending.await?,
            None => Ok(()),
        }
    }

    /// Appends a task's timing to the `--timings` file, if there is one.
    fn record(&mut self, timing: &TaskTiming) -> anyhow::Result<()> {
        if let Some(file) = &mut self.timings {
            writeln!(file, "{}", serde_json::to_string(timing)?)?;
        }
        Ok(())
    }

    /// Fetches the task's inputs, runs the work on a blocking thread while heartbeating, and
    /// returns how it ended and how long fetching the inputs took. When `stop` fires a render
    /// pauses at its next iteration; upscale and stitch tasks are short and finish.
    async fn execute(
        &mut self,
        task: &v1::Task,
        cache: Arc<Mutex<ModelCache>>,
        stop: &CancellationToken,
    ) -> anyhow::Result<(Outcome, Duration)> {
        let began = Instant::now();
        let spec = task.spec.clone().context("the task has no spec")?;
        let (checkpoint, inputs, source) = self
            .fetch_inputs(task, &spec)
            .instrument(tracing::info_span!("fetch inputs"))
            .await?;
        let fetched = began.elapsed();
        let (events, mut reports) = mpsc::unbounded_channel::<Report>();
        let abort = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(false));
        let work = {
            let (abort, drain) = (abort.clone(), drain.clone());
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || -> anyhow::Result<Outcome> {
                let _task = span.enter();
                let mut cache = cache.lock().expect("one task at a time");
                let cache = &mut *cache;
                match &spec {
                    v1::task::Spec::Generate(g) => {
                        let mut report = |p: &Progress| {
                            let _ = events.send(Report::from(p));
                            if abort.load(Ordering::Relaxed) {
                                ControlFlow::Break(Halt::Abandon)
                            } else if drain.load(Ordering::Relaxed) {
                                ControlFlow::Break(Halt::Pause)
                            } else {
                                ControlFlow::Continue(())
                            }
                        };
                        tasks::generate(cache, g, checkpoint.as_deref(), &mut report)
                    }
                    v1::task::Spec::UpscaleTile(t) => {
                        tasks::upscale_tile(cache, t, &source).map(Outcome::Output)
                    }
                    v1::task::Spec::Stitch(s) => {
                        let plan = s.plan.context("the stitch has no plan")?;
                        tasks::stitch(&plan, &inputs).map(Outcome::Output)
                    }
                }
            })
        };
        tokio::pin!(work);
        // Until the work reports, heartbeats say where the task resumed from.
        let mut latest = Report {
            iteration: task.checkpoint_iteration,
            ..Report::default()
        };
        let start = tokio::time::Instant::now() + self.heartbeat;
        let mut tick = tokio::time::interval_at(start, self.heartbeat);
        loop {
            tokio::select! {
                result = &mut work => {
                    // Count the iterations reported after the last heartbeat went out.
                    while reports.try_recv().is_ok() {
                        self.metrics.iteration();
                    }
                    return Ok((result??, fetched));
                }
                Some(report) = reports.recv() => {
                    self.metrics.iteration();
                    let due = report.checkpoint.is_some() || report.preview.is_some();
                    latest = report;
                    if due {
                        self.beat(task, &mut latest, &abort).await?;
                    }
                }
                _ = tick.tick() => self.beat(task, &mut latest, &abort).await?,
                _ = stop.cancelled(), if !drain.load(Ordering::Relaxed) => {
                    drain.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Downloads what the task works from: the checkpoint of an earlier attempt, the outputs
    /// it consumes (a stitch's tiles) and an upscale tile's source picture.
    async fn fetch_inputs(
        &mut self,
        task: &v1::Task,
        spec: &v1::task::Spec,
    ) -> anyhow::Result<(Option<Vec<u8>>, Vec<Vec<u8>>, Arc<Vec<u8>>)> {
        let checkpoint = match &task.checkpoint {
            Some(c) if !c.key.is_empty() => Some(self.link.download(&c.key).await?),
            _ => None,
        };
        let inputs = self.download_all(&task.inputs).await?;
        let source = match spec {
            v1::task::Spec::UpscaleTile(t) => {
                let key = &t.source.as_ref().context("the tile has no source")?.key;
                self.source(key).await?
            }
            _ => Arc::default(),
        };
        Ok((checkpoint, inputs, source))
    }

    /// Sends a heartbeat with the latest progress (uploading its checkpoint first), and stops
    /// the work when the coordinator says the task is no longer ours.
    async fn beat(
        &mut self,
        task: &v1::Task,
        latest: &mut Report,
        abort: &AtomicBool,
    ) -> anyhow::Result<()> {
        let checkpoint = match latest.checkpoint.take() {
            Some(bytes) => match self.link.upload(task, "checkpoint.bin", &bytes).await {
                Ok(artifact) => Some(artifact),
                Err(status) if status.code() == Code::FailedPrecondition => {
                    abort.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Err(status) => return Err(status.into()),
            },
            None => None,
        };
        let request = v1::HeartbeatRequest {
            worker_id: self.link.id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            iteration: latest.iteration,
            iterations: latest.iterations,
            loss: latest.loss,
            preview: latest.preview.take().unwrap_or_default(),
            checkpoint_iteration: if checkpoint.is_some() {
                latest.iteration
            } else {
                0
            },
            checkpoint,
        };
        let reply = retrying(&self.link.url, "heartbeat", || {
            let mut client = self.link.client.clone();
            let request = request.clone();
            async move { client.heartbeat(request).await }
        })
        .await?
        .into_inner();
        if reply.verdict() != v1::HeartbeatVerdict::Continue {
            eprintln!(
                "tessera-worker: task {} ended: {:?}",
                task.task_id,
                reply.verdict()
            );
            abort.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// An upscale source picture, downloaded unless it is the one the last tile used.
    async fn source(&mut self, key: &str) -> anyhow::Result<Arc<Vec<u8>>> {
        if let Some((cached, bytes)) = &self.last_source {
            if cached == key {
                return Ok(bytes.clone());
            }
        }
        let bytes = Arc::new(self.link.download(key).await?);
        self.last_source = Some((key.to_string(), bytes.clone()));
        Ok(bytes)
    }

    /// Downloads every input at once (a stitch has one per tile), in their order.
    async fn download_all(&self, inputs: &[v1::ArtifactRef]) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut downloads = tokio::task::JoinSet::new();
        for (index, input) in inputs.iter().enumerate() {
            let (link, key) = (self.link.clone(), input.key.clone());
            downloads.spawn(async move { (index, link.download(&key).await) });
        }
        let mut out = vec![Vec::new(); inputs.len()];
        while let Some(joined) = downloads.join_next().await {
            let (index, bytes) = joined?;
            out[index] = bytes?;
        }
        Ok(out)
    }
}

impl Link {
    /// Uploads the output and completes the task, retrying while the coordinator is away.
    async fn hand_back(&self, task: &v1::Task, output: Vec<u8>) -> anyhow::Result<()> {
        let artifact = match self.upload(task, "output.png", &output).await {
            Ok(artifact) => artifact,
            // The lease ended meanwhile: another worker holds the task now.
            Err(status) if status.code() == Code::FailedPrecondition => return Ok(()),
            Err(status) => return Err(status.into()),
        };
        let request = v1::CompleteTaskRequest {
            worker_id: self.id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            output: Some(artifact),
        };
        retrying(&self.url, "completion", || {
            let mut client = self.client.clone();
            let request = request.clone();
            async move { client.complete_task(request).await }
        })
        .await?;
        Ok(())
    }

    async fn upload(
        &self,
        task: &v1::Task,
        name: &str,
        data: &[u8],
    ) -> Result<v1::ArtifactRef, Status> {
        let header = v1::UploadHeader {
            name: name.into(),
            worker_id: self.id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
        };
        let reply = retrying(&self.url, "upload", || {
            let mut client = self.client.clone();
            let messages = upload_messages(header.clone(), data);
            async move { client.upload_artifact(messages).await }
        })
        .await?;
        Ok(reply.into_inner())
    }

    /// Downloads one artifact whole.
    async fn download(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        let request = v1::DownloadArtifactRequest {
            key: key.into(),
            offset: 0,
        };
        let stream = retrying(&self.url, "download", || {
            let mut client = self.client.clone();
            let request = request.clone();
            async move { client.download_artifact(request).await }
        })
        .await?
        .into_inner();
        let mut out = Vec::new();
        read_download(stream, &mut out).await?;
        Ok(out)
    }
}

/// What the blocking work last reported, for the next heartbeat.
#[derive(Default)]
struct Report {
    iteration: u32,
    iterations: u32,
    loss: Option<f64>,
    checkpoint: Option<Vec<u8>>,
    preview: Option<Vec<u8>>,
}

impl From<&Progress> for Report {
    fn from(p: &Progress) -> Self {
        let render = &p.renders[0];
        let preview = render.preview.as_ref().and_then(|image| {
            let mut bytes = Vec::new();
            image
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Png,
                )
                .ok()
                .map(|_| bytes)
        });
        Report {
            iteration: p.iteration + 1,
            iterations: p.iterations,
            loss: Some(render.total),
            checkpoint: p.checkpoint.clone(),
            preview,
        }
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
    format!("{}/{}", host.trim(), std::process::id())
}
