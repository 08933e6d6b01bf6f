//! The worker's lease loop: register, lease tasks, run each with heartbeats while it works,
//! and hand back outputs, keeping the worker's time on the work itself.
//!
//! Two things overlap the work so the farm adds little to it: a finished output is handed back
//! (uploaded and completed) in the background while the next task runs, and while a short task
//! (an upscale tile or a stitch) works, the next task is leased and its inputs downloaded
//! ("lease-ahead"), so it starts the moment the current one ends. Renders are long, so nothing
//! is leased ahead of them: a task held idle would only keep it from another worker.

use std::io::Write;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::access::Access;

use anyhow::Context;
use tessera_core::timing::TaskTiming;
use tessera_proto::v1;
use tessera_telemetry::propagation::continue_trace;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::Instrument;

use super::link::{CorruptInput, Failure, Link, Source};
use super::metrics::WorkerMetrics;
use super::tasks::{self, ModelCache, Outcome};
use super::FarmArgs;
use tessera_core::prompt::PromptError;
use tessera_nets::generate::{GenerateError, Halt, Progress};
use tessera_proto::convert::WireSettingsError;

/// A registered worker's connection and what it keeps between tasks.
pub struct Session {
    link: Link,
    heartbeat: Duration,
    timings: Option<std::fs::File>,
    /// When the worker registered: `--timings` times are milliseconds since then.
    epoch: Instant,
    /// The last upscale source downloaded.
    last_source: Option<Source>,
    /// The previous task's hand-back, still uploading while the next task runs.
    handing_back: Option<JoinHandle<anyhow::Result<()>>>,
    metrics: Arc<WorkerMetrics>,
}

/// A leased task with what it works from, downloaded.
struct Prepared {
    task: v1::Task,
    /// The task's span, a child of its job's trace.
    span: tracing::Span,
    /// The inputs, or why they could not be downloaded (the task then fails).
    inputs: anyhow::Result<Inputs>,
    /// Whether it was leased while the previous task worked.
    ahead: bool,
    /// The lease request went out.
    asked: Instant,
    /// The lease reply arrived.
    leased: Instant,
    /// How long the coordinator waited for work before replying.
    waited: Duration,
    /// The inputs were in hand.
    fetched: Instant,
}

/// The next task, leased and fetched in the background while the current one works, then
/// kept alive with heartbeats until the current one ends (a tile on a CPU can outlast a lease).
struct LeaseAhead {
    leasing: JoinHandle<anyhow::Result<Option<Prepared>>>,
    taken: CancellationToken,
}

impl LeaseAhead {
    fn start(
        link: Link,
        stop: CancellationToken,
        last_source: Option<Source>,
        heartbeat: Duration,
    ) -> LeaseAhead {
        let taken = CancellationToken::new();
        let held = taken.clone();
        let leasing = async move {
            let Some(prepared) = prepare(link.clone(), stop, last_source, true).await? else {
                return Ok(None);
            };
            let start = tokio::time::Instant::from_std(prepared.leased) + heartbeat;
            let mut tick = tokio::time::interval_at(start, heartbeat);
            loop {
                tokio::select! {
                    _ = held.cancelled() => return Ok(Some(prepared)),
                    _ = tick.tick() => {
                        let task = &prepared.task;
                        let request = v1::HeartbeatRequest {
                            worker_id: link.id(),
                            task_id: task.task_id.clone(),
                            attempt: task.attempt,
                            iteration: task.checkpoint_iteration,
                            ..Default::default()
                        };
                        let reply = link.heartbeat(request).await?;
                        if let Held::No(why) = Held::after(reply.verdict()) {
                            say_dropped(task, &why);
                            return Ok(None);
                        }
                    }
                }
            }
        };
        // Not in the current task's span: the next task belongs to its own job's trace.
        let leasing = tokio::spawn(leasing.instrument(tracing::Span::none()));
        LeaseAhead { leasing, taken }
    }

    /// The next task, when one was leased and is still this worker's.
    async fn take(self) -> anyhow::Result<Option<Prepared>> {
        self.taken.cancel();
        self.leasing.await?
    }
}

/// What a task works from.
#[derive(Default)]
struct Inputs {
    /// The latest checkpoint of an earlier attempt (renders).
    checkpoint: Option<Vec<u8>>,
    /// The outputs it consumes (a stitch's tiles, in order).
    tiles: Vec<Vec<u8>>,
    /// An upscale tile's source picture.
    source: Option<Source>,
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

/// Leases the next task and downloads its inputs; `None` when no task came before the lease
/// request's wait ran out or `stop` fired. `last_source` saves downloading a tile's source
/// picture again.
async fn prepare(
    link: Link,
    stop: CancellationToken,
    last_source: Option<Source>,
    ahead: bool,
) -> anyhow::Result<Option<Prepared>> {
    let asked = Instant::now();
    let Some(lease) = link.lease(&stop).await? else {
        return Ok(None);
    };
    let leased = Instant::now();
    let span = task_span(&lease.task);
    let inputs = fetch_inputs(&link, &lease.task, last_source)
        .instrument(tracing::info_span!(parent: &span, "fetch inputs"))
        .await;
    Ok(Some(Prepared {
        task: lease.task,
        span,
        inputs,
        ahead,
        asked,
        leased,
        waited: lease.waited,
        fetched: Instant::now(),
    }))
}

/// Downloads what a task works from: the checkpoint of an earlier attempt, the outputs it
/// consumes (a stitch's tiles) and an upscale tile's source picture.
async fn fetch_inputs(
    link: &Link,
    task: &v1::Task,
    last_source: Option<Source>,
) -> anyhow::Result<Inputs> {
    let checkpoint = match &task.checkpoint {
        Some(c) if !c.key.is_empty() => Some(link.download(c).await?),
        _ => None,
    };
    let tiles = link.download_all(&task.inputs).await?;
    let source = match &task.spec {
        Some(v1::task::Spec::UpscaleTile(t)) => {
            let source = t.source.as_ref().context("the tile has no source")?;
            Some(link.source(source, last_source).await?)
        }
        _ => None,
    };
    Ok(Inputs {
        checkpoint,
        tiles,
        source,
    })
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
        let request = v1::RegisterRequest {
            name: args.name.clone().unwrap_or_else(default_name),
            capabilities: Some(capabilities),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let access = Access::load(
            args.token.clone(),
            args.token_file.as_deref(),
            args.tls_ca.clone(),
        )?;
        let (link, heartbeat) = Link::register(url, &access, request, stop).await?;
        println!("tessera-worker registered as {}", link.id());
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
            link,
            heartbeat: heartbeat.max(Duration::from_millis(100)),
            timings,
            epoch: Instant::now(),
            last_source: None,
            handing_back: None,
            metrics,
        })
    }

    /// Leases and runs tasks until `stop` fires. A task leased ahead but not started then is
    /// the worker's current lease, which deregistration queues again at once.
    pub async fn serve(
        &mut self,
        cache: Arc<Mutex<ModelCache>>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut next = None;
        while !stop.is_cancelled() {
            let prepared = match next.take() {
                Some(prepared) => prepared,
                None => {
                    let fetched = prepare(
                        self.link.clone(),
                        stop.clone(),
                        self.last_source.clone(),
                        false,
                    );
                    match fetched.await? {
                        Some(prepared) => prepared,
                        None => continue,
                    }
                }
            };
            let span = prepared.span.clone();
            let ahead = self
                .run(prepared, cache.clone(), stop)
                .instrument(span)
                .await?;
            // Awaited after the task's span has closed: the next lease is not this task's.
            next = match ahead {
                Some(ahead) => ahead.take().await?,
                None => None,
            };
        }
        Ok(())
    }

    /// Deregisters once the last output is handed back, so the coordinator stops counting on
    /// this worker at once.
    pub async fn deregister(mut self) -> anyhow::Result<()> {
        self.finish_hand_back().await?;
        self.link.deregister().await?;
        Ok(())
    }

    /// Runs one task to its end: its output accepted, its failure reported, dropped because
    /// the task was cancelled or handed to another worker, or (a render, when `stop` fires)
    /// checkpointed for the next worker; deregistration then queues it again. Returns the
    /// lease-ahead of the next task when one was started during this one.
    async fn run(
        &mut self,
        prepared: Prepared,
        cache: Arc<Mutex<ModelCache>>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<LeaseAhead>> {
        let task = &prepared.task;
        let inputs = match prepared.inputs {
            Ok(inputs) => inputs,
            Err(error) => {
                self.report_failure(task, &error).await?;
                return Ok(None);
            }
        };

        if inputs.source.is_some() {
            self.last_source.clone_from(&inputs.source);
        }
        let short = !matches!(task.spec, Some(v1::task::Spec::Generate(_)));
        let ahead = (short && !stop.is_cancelled()).then(|| {
            LeaseAhead::start(
                self.link.clone(),
                stop.clone(),
                self.last_source.clone(),
                self.heartbeat,
            )
        });
        let started = Instant::now();
        let outcome = self
            .execute(task, inputs, cache, stop, prepared.leased)
            .await;
        let ended = Instant::now();
        match outcome {
            Ok(Outcome::Output(output)) => {
                self.count(task, ended - started);
                self.hand_back_later(task, output).await?;
                let at = |instant: Instant| millis(instant - self.epoch);
                let timing = TaskTiming {
                    task: task.task_id.clone(),
                    kind: kind_name(task).to_string(),
                    ahead: prepared.ahead,
                    asked_ms: at(prepared.asked),
                    leased_ms: at(prepared.leased),
                    waited_ms: millis(prepared.waited),
                    fetched_ms: at(prepared.fetched),
                    started_ms: at(started),
                    ended_ms: at(ended),
                    released_ms: at(Instant::now()),
                };
                self.record(&timing)?;
            }
            Ok(Outcome::Abandoned) => {}
            Ok(Outcome::Paused {
                checkpoint,
                iteration,
            }) => {
                eprintln!(
                    "tessera-worker: task {} checkpointed at iteration {iteration} for the next worker",
                    task.task_id
                );
                let mut last = Report {
                    iteration,
                    checkpoint: Some(checkpoint),
                    ..Report::default()
                };
                match self.beat(task, &mut last).await? {
                    Held::No(why) => say_dropped(task, &why),
                    // A draining worker's tasks go back when it deregisters; a task paused
                    // with its job goes back now.
                    _ if stop.is_cancelled() => {}
                    _ => {
                        if self.link.release(task).await? {
                            eprintln!(
                                "tessera-worker: task {} given back: its job was paused",
                                task.task_id
                            );
                        }
                    }
                }
            }
            Err(error) => self.report_failure(task, &error).await?,
        }
        Ok(ahead)
    }

    /// Tells the coordinator the task failed here, with the whole error chain.
    async fn report_failure(&self, task: &v1::Task, error: &anyhow::Error) -> anyhow::Result<()> {
        eprintln!("tessera-worker: task {} failed: {error:#}", task.task_id);
        let corrupt = error
            .chain()
            .find_map(|e| e.downcast_ref::<CorruptInput>())
            .map(|c| c.key.as_str());
        let failure = Failure {
            error: format!("{error:#}"),
            retryable: retryable(error),
            corrupt_input: corrupt,
        };
        self.link.fail(task, failure).await?;
        Ok(())
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

    /// Runs the work on a blocking thread while heartbeating (from the lease on: a task leased
    /// ahead has waited already), and returns how it ended. When `stop` fires a render pauses
    /// at its next iteration; upscale and stitch tasks are short and finish. When the task stops
    /// being this worker's (its lease ended, its job was cancelled) it says so once and returns
    /// [`Outcome::Abandoned`] at once: the work is told to stop at its next iteration or stage,
    /// and whatever it still returns is dropped, never handed back.
    async fn execute(
        &mut self,
        task: &v1::Task,
        inputs: Inputs,
        cache: Arc<Mutex<ModelCache>>,
        stop: &CancellationToken,
        leased: Instant,
    ) -> anyhow::Result<Outcome> {
        let spec = task.spec.clone().context("the task has no spec")?;
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
                        tasks::generate(cache, g, inputs.checkpoint.as_deref(), &mut report)
                    }
                    v1::task::Spec::UpscaleTile(t) => {
                        let source = inputs.source.context("the tile's source is missing")?;
                        tasks::upscale_tile(cache, t, &source.1, &abort)
                    }
                    v1::task::Spec::Stitch(s) => {
                        let plan = s.plan.context("the stitch has no plan")?;
                        tasks::stitch(&plan, &inputs.tiles, &abort)
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
        let start = tokio::time::Instant::from_std(leased) + self.heartbeat;
        let mut tick = tokio::time::interval_at(start, self.heartbeat);
        loop {
            let held = tokio::select! {
                result = &mut work => {
                    // Count the iterations reported after the last heartbeat went out.
                    while reports.try_recv().is_ok() {
                        self.metrics.iteration();
                    }
                    return result?;
                }
                Some(report) = reports.recv() => {
                    self.metrics.iteration();
                    let due = report.checkpoint.is_some() || report.preview.is_some();
                    latest = report;
                    if !due {
                        continue;
                    }
                    self.beat(task, &mut latest).await?
                }
                _ = tick.tick() => self.beat(task, &mut latest).await?,
                _ = stop.cancelled(), if !drain.load(Ordering::Relaxed) => {
                    drain.store(true, Ordering::Relaxed);
                    continue;
                }
            };
            match held {
                Held::Yes => {}
                // A render stops at its next iteration and is checkpointed (then given back by
                // `run`); shorter work finishes.
                Held::Paused => drain.store(true, Ordering::Relaxed),
                Held::No(why) => {
                    abort.store(true, Ordering::Relaxed);
                    say_dropped(task, &why);
                    return Ok(Outcome::Abandoned);
                }
            }
        }
    }

    /// Sends a heartbeat with the latest progress (uploading its checkpoint first), and says
    /// whether the task is still this worker's.
    async fn beat(&mut self, task: &v1::Task, latest: &mut Report) -> anyhow::Result<Held> {
        let checkpoint = match latest.checkpoint.take() {
            Some(bytes) => match self.link.upload(task, "checkpoint.bin", &bytes).await {
                Ok(artifact) => Some(artifact),
                Err(status) if status.code() == Code::FailedPrecondition => {
                    let why = format!(
                        "lease lost (its checkpoint was refused: {})",
                        status.message()
                    );
                    return Ok(Held::No(why));
                }
                Err(status) => return Err(status.into()),
            },
            None => None,
        };
        let request = v1::HeartbeatRequest {
            worker_id: self.link.id(),
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
        let reply = self.link.heartbeat(request).await?;
        Ok(Held::after(reply.verdict()))
    }
}

/// Whether a task is still this worker's, as the coordinator last answered.
enum Held {
    /// Its lease was renewed: the work goes on.
    Yes,
    /// Its lease was renewed but its job is paused: a render stops and gives the task back.
    Paused,
    /// It is not, and why: the work stops and nothing of it is handed back.
    No(String),
}

impl Held {
    /// What a heartbeat's verdict means for the work.
    fn after(verdict: v1::HeartbeatVerdict) -> Held {
        match verdict {
            v1::HeartbeatVerdict::Continue => Held::Yes,
            v1::HeartbeatVerdict::Paused => Held::Paused,
            v1::HeartbeatVerdict::LeaseLost => Held::No("lease lost".into()),
            v1::HeartbeatVerdict::Cancelled => Held::No("its job was cancelled".into()),
            other => Held::No(format!("the coordinator answered {other:?}")),
        }
    }
}

/// Says, once per task, that its work was dropped and why, so the worker's log tells a lost
/// lease from a task that finished.
fn say_dropped(task: &v1::Task, why: &str) {
    eprintln!(
        "tessera-worker: task {} attempt {}: {why}; its work is dropped",
        task.task_id, task.attempt
    );
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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

/// Whether another attempt, here or on another worker, could succeed: not when the task itself
/// is wrong (its settings, prompts or wire message), which fails the same way everywhere, so
/// the coordinator fails it at once instead of spending its retries. Anything else (a model
/// file, the device, memory, the network) may go better elsewhere.
fn retryable(error: &anyhow::Error) -> bool {
    !error.chain().any(|e| {
        e.is::<WireSettingsError>()
            || e.is::<PromptError>()
            || matches!(
                e.downcast_ref::<GenerateError>(),
                Some(
                    GenerateError::Settings { .. }
                        | GenerateError::Batch { .. }
                        | GenerateError::TooSmall { .. }
                )
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::prompt::PromptSpec;

    #[test]
    fn only_failures_of_the_task_itself_are_final() {
        let wire = anyhow::Error::new(WireSettingsError::Missing("width")).context("task t-1");
        assert!(!retryable(&wire));
        let prompt = PromptSpec::parse("a cat:x", "", "").unwrap_err();
        assert!(!retryable(&anyhow::Error::new(prompt).context("task t-2")));
        let settings = GenerateError::TooSmall {
            width: 8,
            height: 8,
            factor: 16,
        };
        assert!(!retryable(&anyhow::Error::new(settings)));

        let corrupt = anyhow::anyhow!("cannot load model realesrgan-x4plus: truncated file");
        assert!(retryable(&corrupt));
        let worker_bug = anyhow::Error::new(GenerateError::NoRenders).context("batch");
        assert!(retryable(&worker_bug));
    }
}
