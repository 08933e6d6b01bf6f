//! The `Workers` service: what GPU workers call.

use super::convert::leased_task;
use super::{new_id, now_ms, read_upload, stream_artifact, Coordinator, MessageStream};
use crate::state::{
    CompleteOutcome, FailVerdict, HeartbeatOutcome, LeaseRef, Progress, RateSample, TaskRecord,
    TaskState, WorkerRecord,
};
use crate::store::{check_name, preview_key, producer_of, task_prefix};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::job::{check_shown_text, MAX_NAME_CHARS};
use tessera_core::plan::plan_followups;
use tessera_core::rates::Work;
use tessera_core::task::{job_of_task, ArtifactRef, Capabilities};
use tessera_proto::v1;
use tessera_proto::v1::workers_server::Workers;
use tonic::{Request, Response, Status, Streaming};
use tracing::Span;

/// How often a waiting lease request looks again even without a wake-up (covers a wake-up
/// missed while the Redis channel reconnects).
const LEASE_POLL: Duration = Duration::from_secs(1);

/// The worker-facing service.
pub struct WorkersApi {
    c: Arc<Coordinator>,
}

impl WorkersApi {
    /// Counts a first attempt's completion in the farm's rates (an attempt after a failure,
    /// an expiry or a pause may resume from a checkpoint, and would look faster than it is).
    async fn record_rate(&self, task: &TaskRecord, worker: &str, now: u64) -> Result<(), Status> {
        if task.attempt != 1 {
            return Ok(());
        }
        let work = Work::of(&task.spec).map_err(|e| Status::internal(e.to_string()))?;
        let sample = RateSample {
            worker: worker.to_string(),
            class: work.class,
            amount: work.amount,
            started_ms: task.started_ms,
        };
        Ok(self.c.backend.record_rate(&sample, now).await?)
    }

    /// The service over the shared coordinator.
    pub fn new(c: Arc<Coordinator>) -> Self {
        WorkersApi { c }
    }

    fn heartbeat_interval_ms(&self) -> u64 {
        (self.c.lease_ms / 3).max(1)
    }

    async fn capabilities(&self, worker: &str) -> Result<Capabilities, Status> {
        let record =
            self.c.backend.worker(worker).await?.ok_or_else(|| {
                Status::not_found(format!("unknown worker {worker}: register again"))
            })?;
        Ok(record.capabilities)
    }

    async fn task(&self, id: &str) -> Result<TaskRecord, Status> {
        self.c
            .backend
            .task(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no task {id}")))
    }

    /// Counts the job's duration when it has ended.
    async fn observe_job_end(&self, job: &str) -> Result<(), Status> {
        if let Some(record) = self.c.backend.job(job).await? {
            self.c.metrics.job_ended(&record);
        }
        Ok(())
    }

    /// Counts what a failure report led to in the metrics.
    async fn observe_verdict(&self, task: &str, verdict: FailVerdict) -> Result<(), Status> {
        match verdict {
            FailVerdict::Retrying => self.c.metrics.task_retried(),
            FailVerdict::Failed => self.observe_job_end(job_of_task(task)).await?,
            FailVerdict::Stale
            | FailVerdict::Cancelled
            | FailVerdict::WaitingForInput
            | FailVerdict::Requeued => {}
        }
        Ok(())
    }

    /// Whether input `key` of `task` is corrupt or missing in the store, as a worker reported.
    /// A key that is no longer among the task's inputs counts as corrupt: the state then sees
    /// that it was replaced and queues the task with the new one.
    async fn stored_corrupt(&self, task: &TaskRecord, key: &str) -> Result<bool, Status> {
        match task.input(key) {
            Some(artifact) => Ok(!self.c.store.intact(artifact).await?),
            None => Ok(true),
        }
    }

    /// Has the task that made a corrupt input run again (see `StateBackend::redo_input`);
    /// `failures` are the reporting task's, which the redo leaves as they are.
    async fn redo_input(
        &self,
        lease: LeaseRef<'_>,
        key: &str,
        failures: u32,
    ) -> Result<Response<v1::FailTaskReply>, Status> {
        let verdict = self
            .c
            .backend
            .redo_input(lease, key, producer_of(key), &self.c.policy, now_ms())
            .await?;
        self.c.metrics.corrupt_artifact();
        self.observe_verdict(lease.task, verdict).await?;
        tracing::warn!(task = %lease.task, attempt = lease.attempt, worker = %lease.worker, key, ?verdict, "an input is corrupt in the artifact store");
        Ok(Response::new(v1::FailTaskReply {
            verdict: proto_verdict(verdict) as i32,
            failures,
            worker_banned: false,
        }))
    }

    /// A file a worker says belongs to this attempt must be stored under its key prefix.
    async fn check_own_artifact(
        &self,
        task: &TaskRecord,
        attempt: u32,
        artifact: &ArtifactRef,
    ) -> Result<(), Status> {
        let prefix = task_prefix(&task.job, &task.id, attempt);
        if !artifact.key.starts_with(&prefix) {
            return Err(Status::invalid_argument(format!(
                "artifact '{}' was not uploaded for attempt {attempt} of task {} (expected a key under {prefix})",
                artifact.key, task.id
            )));
        }
        let size = self.c.store.size(&artifact.key).await?;
        if size != artifact.size {
            return Err(Status::failed_precondition(format!(
                "artifact '{}' has {size} bytes stored, not {}",
                artifact.key, artifact.size
            )));
        }
        Ok(())
    }
}

/// Names the task (and its job) and the worker on the request's span.
fn record_lease(task: &str, worker: &str) {
    record_task(task);
    Span::current().record("worker", worker);
}

/// Names the task and its job on the request's span.
fn record_task(task: &str) {
    let span = Span::current();
    span.record("task", task);
    span.record("job", job_of_task(task));
}

fn proto_verdict(verdict: FailVerdict) -> v1::FailVerdict {
    match verdict {
        FailVerdict::Retrying => v1::FailVerdict::Retrying,
        FailVerdict::Failed => v1::FailVerdict::Failed,
        FailVerdict::Stale => v1::FailVerdict::Stale,
        FailVerdict::Cancelled => v1::FailVerdict::Cancelled,
        FailVerdict::WaitingForInput => v1::FailVerdict::WaitingForInput,
        FailVerdict::Requeued => v1::FailVerdict::Requeued,
    }
}

/// Characters of a task's error that are kept: any message with its causes fits, and a worker
/// sending megabytes cannot grow its job's record for good.
const MAX_ERROR_CHARS: usize = 4096;

/// `error` cut to [`MAX_ERROR_CHARS`], saying how much was cut.
fn bounded_error(error: String) -> String {
    let count = error.chars().count();
    if count <= MAX_ERROR_CHARS {
        return error;
    }
    let mut kept: String = error.chars().take(MAX_ERROR_CHARS).collect();
    kept.push_str(&format!("… ({} more characters)", count - MAX_ERROR_CHARS));
    kept
}

fn holds(task: &TaskRecord, attempt: u32, worker: &str) -> bool {
    task.state == TaskState::Running && task.attempt == attempt && task.worker == worker
}

#[tonic::async_trait]
impl Workers for WorkersApi {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterReply>, Status> {
        let r = request.into_inner();
        check_shown_text("worker name", &r.name, MAX_NAME_CHARS)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let capabilities = Capabilities::from(r.capabilities.unwrap_or_default())
            .normalised()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if capabilities.kinds.is_empty() {
            return Err(Status::invalid_argument(
                "capabilities name no task kind: a worker must offer generate, upscale_tile or stitch",
            ));
        }
        let now = now_ms();
        let worker = WorkerRecord {
            id: format!("w{}", new_id()),
            name: r.name,
            capabilities,
            version: r.version,
            registered_ms: now,
            last_seen_ms: now,
            current_task: None,
            ahead_task: None,
            tasks_done: 0,
        };
        Span::current().record("worker", &worker.id);
        self.c.backend.register_worker(&worker).await?;
        tracing::info!(worker = %worker.id, name = %worker.name, "worker registered");
        Ok(Response::new(v1::RegisterReply {
            worker_id: worker.id,
            lease_ms: self.c.lease_ms,
            heartbeat_interval_ms: self.heartbeat_interval_ms(),
        }))
    }

    async fn deregister(
        &self,
        request: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterReply>, Status> {
        let id = request.into_inner().worker_id;
        Span::current().record("worker", &id);
        let released = self
            .c
            .backend
            .deregister_worker(&id, &self.c.policy, now_ms())
            .await?;
        tracing::info!(worker = %id, ?released, "worker deregistered");
        Ok(Response::new(v1::DeregisterReply {
            released_tasks: released,
        }))
    }

    async fn lease_task(
        &self,
        request: Request<v1::LeaseTaskRequest>,
    ) -> Result<Response<v1::LeaseTaskReply>, Status> {
        let r = request.into_inner();
        Span::current().record("worker", &r.worker_id);
        let caps = self.capabilities(&r.worker_id).await?;
        let wait = Duration::from_millis(u64::from(r.wait_ms).min(self.c.max_wait_ms));
        let deadline = tokio::time::Instant::now() + wait;
        let signal = self.c.backend.work_signal();
        let mut waited = Duration::ZERO;
        loop {
            // Armed before looking, so a task queued in between still wakes us.
            let woken = signal.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let leased = self
                .c
                .backend
                .lease(
                    &r.worker_id,
                    &caps,
                    &self.c.policy,
                    now_ms(),
                    self.c.lease_ms,
                )
                .await?;
            if let Some(task) = leased {
                record_task(&task.id);
                tracing::debug!(task = %task.id, attempt = task.attempt, worker = %r.worker_id, "leased");
                return Ok(Response::new(v1::LeaseTaskReply {
                    task: Some(leased_task(&task, self.heartbeat_interval_ms())),
                    waited_ms: u32::try_from(waited.as_millis()).unwrap_or(u32::MAX),
                }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(v1::LeaseTaskReply::default()));
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(deadline.min(now + LEASE_POLL)) => {}
                _ = self.c.shutdown.cancelled() => {
                    return Ok(Response::new(v1::LeaseTaskReply::default()));
                }
            }
            waited += now.elapsed();
        }
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatReply>, Status> {
        let r = request.into_inner();
        record_lease(&r.task_id, &r.worker_id);
        let task = self.task(&r.task_id).await?;
        let current = holds(&task, r.attempt, &r.worker_id);
        let checkpoint = match r.checkpoint {
            Some(c) if current => {
                let c = ArtifactRef::from(c);
                self.check_own_artifact(&task, r.attempt, &c).await?;
                Some((c, r.checkpoint_iteration))
            }
            _ => None,
        };
        let preview = current && !r.preview.is_empty();
        if preview {
            self.c
                .store
                .put(&preview_key(&task.job, &task.id), Bytes::from(r.preview))
                .await?;
        }
        let progress = Progress {
            iteration: r.iteration,
            iterations: r.iterations,
            loss: r.loss,
            checkpoint,
            preview,
        };
        let lease = LeaseRef {
            task: &r.task_id,
            attempt: r.attempt,
            worker: &r.worker_id,
        };
        let outcome = self
            .c
            .backend
            .heartbeat(lease, &progress, &self.c.policy, now_ms(), self.c.lease_ms)
            .await?;
        let (verdict, deadline) = match outcome {
            HeartbeatOutcome::Continue { deadline_ms } => {
                (v1::HeartbeatVerdict::Continue, deadline_ms)
            }
            HeartbeatOutcome::Paused { deadline_ms } => (v1::HeartbeatVerdict::Paused, deadline_ms),
            HeartbeatOutcome::Cancelled => (v1::HeartbeatVerdict::Cancelled, 0),
            HeartbeatOutcome::Lost => (v1::HeartbeatVerdict::LeaseLost, 0),
        };
        Ok(Response::new(v1::HeartbeatReply {
            verdict: verdict as i32,
            lease_deadline_ms: deadline,
        }))
    }

    async fn complete_task(
        &self,
        request: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskReply>, Status> {
        let r = request.into_inner();
        let output = ArtifactRef::from(
            r.output
                .ok_or_else(|| Status::invalid_argument("the completion has no output"))?,
        );
        record_lease(&r.task_id, &r.worker_id);
        let task = self.task(&r.task_id).await?;
        // Only the current holder's output is checked and planned from; any other report is
        // answered by the state store (duplicate, stale or cancelled) without changes.
        let followups = if holds(&task, r.attempt, &r.worker_id) {
            self.check_own_artifact(&task, r.attempt, &output).await?;
            plan_followups(&task.finished(), &output)
                .map_err(|e| Status::invalid_argument(e.to_string()))?
        } else {
            Vec::new()
        };
        let lease = LeaseRef {
            task: &r.task_id,
            attempt: r.attempt,
            worker: &r.worker_id,
        };
        let now = now_ms();
        let outcome = self
            .c
            .backend
            .complete(lease, &output, &followups, &self.c.policy, now)
            .await?;
        if outcome == CompleteOutcome::Accepted {
            let seconds = now.saturating_sub(task.started_ms) as f64 / 1000.0;
            self.c.metrics.task_completed(task.kind, seconds);
            self.record_rate(&task, &r.worker_id, now).await?;
            if task.is_final {
                self.observe_job_end(&task.job).await?;
            }
        }
        let verdict = match outcome {
            CompleteOutcome::Accepted => v1::CompletionVerdict::Accepted,
            CompleteOutcome::Duplicate => v1::CompletionVerdict::Duplicate,
            CompleteOutcome::Stale => v1::CompletionVerdict::Stale,
            CompleteOutcome::Cancelled => v1::CompletionVerdict::Cancelled,
        };
        tracing::debug!(task = %r.task_id, attempt = r.attempt, ?outcome, "completion");
        Ok(Response::new(v1::CompleteTaskReply {
            verdict: verdict as i32,
        }))
    }

    async fn fail_task(
        &self,
        request: Request<v1::FailTaskRequest>,
    ) -> Result<Response<v1::FailTaskReply>, Status> {
        let mut r = request.into_inner();
        r.error = bounded_error(r.error);
        record_lease(&r.task_id, &r.worker_id);
        let lease = LeaseRef {
            task: &r.task_id,
            attempt: r.attempt,
            worker: &r.worker_id,
        };
        if !r.corrupt_input.is_empty() {
            let task = self.task(&r.task_id).await?;
            if self.stored_corrupt(&task, &r.corrupt_input).await? {
                return self
                    .redo_input(lease, &r.corrupt_input, task.failures)
                    .await;
            }
            r.error = format!(
                "{} (the stored file is intact: it was damaged on the way to the worker)",
                r.error
            );
        }
        let outcome = self
            .c
            .backend
            .fail(lease, &r.error, r.retryable, &self.c.policy, now_ms())
            .await?;
        self.observe_verdict(&r.task_id, outcome.verdict).await?;
        tracing::info!(task = %r.task_id, attempt = r.attempt, worker = %r.worker_id, error = %r.error, ?outcome, "attempt failed");
        Ok(Response::new(v1::FailTaskReply {
            verdict: proto_verdict(outcome.verdict) as i32,
            failures: outcome.failures,
            worker_banned: outcome.banned,
        }))
    }

    async fn release_task(
        &self,
        request: Request<v1::ReleaseTaskRequest>,
    ) -> Result<Response<v1::ReleaseTaskReply>, Status> {
        let r = request.into_inner();
        record_lease(&r.task_id, &r.worker_id);
        let lease = LeaseRef {
            task: &r.task_id,
            attempt: r.attempt,
            worker: &r.worker_id,
        };
        let released = self
            .c
            .backend
            .release(lease, &self.c.policy, now_ms())
            .await?;
        tracing::info!(task = %r.task_id, attempt = r.attempt, worker = %r.worker_id, released, "task given back (job paused)");
        Ok(Response::new(v1::ReleaseTaskReply { released }))
    }

    async fn upload_artifact(
        &self,
        request: Request<Streaming<v1::UploadChunk>>,
    ) -> Result<Response<v1::ArtifactRef>, Status> {
        let (header, data) = read_upload(request.into_inner(), self.c.store.max_bytes()).await?;
        record_lease(&header.task_id, &header.worker_id);
        check_name(&header.name)?;
        let task = self.task(&header.task_id).await?;
        if !holds(&task, header.attempt, &header.worker_id) {
            tracing::info!(
                task = %header.task_id,
                attempt = header.attempt,
                worker = %header.worker_id,
                "an upload of an attempt that no longer holds its task was refused"
            );
            return Err(Status::failed_precondition(format!(
                "attempt {} of task {} by worker {} does not hold the task (its lease ended); drop the work",
                header.attempt, header.task_id, header.worker_id
            )));
        }
        let key = format!(
            "{}{}",
            task_prefix(&task.job, &task.id, header.attempt),
            header.name
        );
        let artifact = self.c.store.put(&key, data).await?;
        Ok(Response::new(artifact.into()))
    }

    type DownloadArtifactStream = MessageStream<v1::DataChunk>;

    async fn download_artifact(
        &self,
        request: Request<v1::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let r = request.into_inner();
        if !(r.key.starts_with("jobs/") || r.key.starts_with("uploads/")) || r.key.contains("..") {
            return Err(Status::invalid_argument(format!(
                "'{}' is not an artifact key",
                r.key
            )));
        }
        let stream = stream_artifact(&self.c.store, &r.key, r.offset).await?;
        Ok(Response::new(stream))
    }
}
