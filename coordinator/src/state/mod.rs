//! The coordinator's state: jobs, tasks, queues, leases, workers and job events, behind one
//! trait with two implementations that behave identically (one conformance suite checks both):
//! [`redis::RedisBackend`] for farms (several coordinators may share it) and
//! [`embedded::EmbeddedBackend`] for one machine without Redis. The Redis scripts (`lua/`) are
//! named after the `model.rs` methods they mirror, and `coordinator/tests/differential.rs`
//! runs random operations on both to check that they stay alike; every Redis key and field
//! name is documented in `keys.rs`.
//!
//! Every transition is atomic in both: a lease, heartbeat, completion, failure, expiry or
//! cancellation either happens entirely or not at all, so the coordinator may be killed at any
//! moment. Time is passed in (`now`, milliseconds since the Unix epoch) rather than read inside,
//! which keeps the transitions deterministic and lets tests move the clock.

mod dir_lock;
pub mod embedded;
mod keys;
mod model;
pub mod redis;
mod redis_link;

pub(crate) use redis_link::ensure_tls_provider;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::job::Settings;
use tessera_core::plan::{JobPlan, Unit};
pub use tessera_core::rates::{Rate, Rates};
use tessera_core::task::{
    ArtifactRef, Capabilities, FinishedTask, KindCounts, NewTask, TaskKind, TaskSpec,
};
use tokio::sync::Notify;

/// How failures are treated: the bounds that stop a poison task and a bad worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Failed attempts a task may have beyond its first before it fails for good.
    pub max_retries: u32,
    /// Expired leases a task may have before it fails for good (a task that kills its worker).
    pub max_expiries: u32,
    /// Tasks of one job that a worker failed and another worker then did, after which the
    /// first gets no more tasks of that job (0: never). Counting only tasks others did keeps a
    /// poison task, which fails everywhere, from banning good workers.
    pub ban_after: u32,
    /// Events kept per job; older ones are dropped first.
    pub events_max: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_retries: 3,
            max_expiries: 10,
            ban_after: 3,
            events_max: 100_000,
        }
    }
}

/// Where a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Waiting for the outputs of the tasks it consumes.
    Blocked,
    /// Leased to a worker.
    Running,
    /// Its output was accepted.
    Done,
    /// Failed beyond its budget, or a task it consumes did.
    Failed,
    /// Its job was cancelled.
    Cancelled,
}

impl TaskState {
    /// The name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Blocked => "blocked",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Every state, for counting by state.
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Blocked,
        TaskState::Running,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The state called `name`.
    pub fn parse(name: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Tasks are queued, blocked or running.
    Running,
    /// Every result is done.
    Succeeded,
    /// Every task ended and some result failed.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// The name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state called `name`.
    pub fn parse(name: &str) -> Option<JobState> {
        [
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// Tasks of a job per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// Waiting for a worker.
    pub queued: u64,
    /// Waiting for inputs.
    pub blocked: u64,
    /// Leased by a worker, which is working on it now.
    pub running: u64,
    /// Their output was accepted.
    pub done: u64,
    /// Failed for good.
    pub failed: u64,
    /// Dropped because their job was cancelled.
    pub cancelled: u64,
}

impl StateCounts {
    /// The count of tasks in `state`.
    pub fn get(&self, state: TaskState) -> u64 {
        match state {
            TaskState::Queued => self.queued,
            TaskState::Blocked => self.blocked,
            TaskState::Running => self.running,
            TaskState::Done => self.done,
            TaskState::Failed => self.failed,
            TaskState::Cancelled => self.cancelled,
        }
    }

    /// The count of tasks in `state`, for updating.
    pub fn get_mut(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Queued => &mut self.queued,
            TaskState::Blocked => &mut self.blocked,
            TaskState::Running => &mut self.running,
            TaskState::Done => &mut self.done,
            TaskState::Failed => &mut self.failed,
            TaskState::Cancelled => &mut self.cancelled,
        }
    }

    /// Tasks that have not ended.
    pub fn active(&self) -> u64 {
        self.queued + self.blocked + self.running
    }
}

/// A job ready to be stored with its first tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// Job id (no `.`; task ids start with it).
    pub id: String,
    /// A label for listings.
    pub name: String,
    /// Larger runs first.
    pub priority: i32,
    /// Whether it upscales users' pictures.
    pub upscale_only: bool,
    /// The job's settings.
    pub settings: Settings,
    /// Tasks of each kind it will have in all.
    pub expected: KindCounts,
    /// The results it will have (one per prompt and seed, or per picture), in order.
    pub units: Vec<Unit>,
    /// Its first tasks.
    pub tasks: Vec<NewTask>,
    /// The tenant it belongs to ("" for an open farm's or an admin's jobs).
    #[serde(default)]
    pub tenant: String,
    /// The tenant's admission limits, checked in the same step that stores the job.
    #[serde(default)]
    pub quota: Quota,
    /// Where its results and its end are POSTed ("" for nowhere), already checked against
    /// the farm's allow list; stored with the job so its outbox survives restarts.
    #[serde(default)]
    pub webhook: String,
}

impl NewJob {
    /// Job `id` as `plan` plans it: the one way the coordinator and its tests turn a plan into
    /// what the state store keeps.
    pub fn planned(
        id: &str,
        name: String,
        priority: i32,
        plan: JobPlan,
        tenant: String,
        quota: Quota,
    ) -> NewJob {
        NewJob {
            id: id.to_string(),
            name,
            priority,
            upscale_only: plan.upscale_only,
            settings: plan.settings,
            expected: plan.expected,
            units: plan.units,
            tasks: plan.tasks,
            tenant,
            quota,
            webhook: String::new(),
        }
    }
}

/// A tenant's admission limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Jobs of the tenant still running.
    pub jobs_in_flight: Option<u32>,
    /// Jobs the tenant submits per clock minute.
    pub submissions_per_minute: Option<u32>,
}

/// The clock minute of `now_ms`, the window of `Quota::submissions_per_minute`.
pub fn minute_of(now_ms: u64) -> u64 {
    now_ms / 60_000
}

/// What storing a job came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Stored and queued.
    Created,
    /// The id is taken.
    Exists,
    /// The tenant has as many jobs running as its quota allows.
    JobsInFlight(u32),
    /// The tenant submitted as many jobs this minute as its quota allows.
    SubmissionsPerMinute(u32),
}

impl CreateOutcome {
    /// `Ok` when created; otherwise the error naming the limit that refused the job.
    pub fn into_result(self, job: &NewJob) -> StateResult<()> {
        let tenant = &job.tenant;
        match self {
            CreateOutcome::Created => Ok(()),
            CreateOutcome::Exists => Err(StateError::JobExists(job.id.clone())),
            CreateOutcome::JobsInFlight(limit) => Err(StateError::OverQuota(format!(
                "tenant '{tenant}' already has {limit} jobs running, its limit jobs_in_flight; \
                 wait for one to end or cancel one"
            ))),
            CreateOutcome::SubmissionsPerMinute(limit) => Err(StateError::OverQuota(format!(
                "tenant '{tenant}' submitted {limit} jobs this minute, its limit \
                 submissions_per_minute; submit again next minute"
            ))),
        }
    }
}

/// A stored job with its counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id, unique in the farm; its tasks' ids start with it.
    pub id: String,
    /// The name its submitter gave it, shown in listings (need not be unique).
    pub name: String,
    /// The tenant it belongs to ("" for none).
    #[serde(default)]
    pub tenant: String,
    /// Higher runs first; equal priorities run in submission order.
    pub priority: i32,
    /// Where the job stands as a whole (derived from its tasks).
    pub state: JobState,
    /// Whether it upscales users' pictures.
    pub upscale_only: bool,
    /// The job's settings.
    pub settings: Settings,
    /// When it was submitted (ms since the Unix epoch), for listings and durations.
    pub submitted_ms: u64,
    /// End time (0 while running).
    pub finished_ms: u64,
    /// Tasks per state.
    pub counts: StateCounts,
    /// Tasks of each kind it will have in all.
    pub expected: KindCounts,
    /// Tasks of each kind that have ended (done, failed or cancelled).
    pub ended: KindCounts,
    /// Total duration of the finished tasks of each kind, in milliseconds.
    pub busy_ms: KindCounts,
    /// Finished tasks of each kind whose duration is in `busy_ms`.
    pub timed: KindCounts,
    /// Results in all.
    pub units_total: u64,
    /// Results whose picture is stored.
    pub units_done: u64,
    /// Results that failed for good (a task of theirs failed beyond its budget).
    pub units_failed: u64,
    /// Leases granted to its tasks, first attempts and retries alike.
    #[serde(default)]
    pub attempts: u64,
    /// Attempts that failed or whose lease expired and that were queued again: the work the
    /// job lost to faults (a task given back by a draining worker is not one).
    #[serde(default)]
    pub retries: u64,
    /// Whether a user paused it: its queued tasks are not offered, and its running renders are
    /// told to checkpoint and give their task back, until it is resumed.
    #[serde(default)]
    pub paused: bool,
    /// Queued tasks of jobs with a higher priority (paused jobs' are not offered, so not
    /// counted).
    pub queue_position: u64,
    /// Its webhook and how the deliveries to it stand (see [`crate::webhooks`]).
    #[serde(default)]
    pub webhook: WebhookStatus,
}

impl JobRecord {
    /// Tasks the job will have in all.
    pub fn planned(&self) -> u64 {
        self.expected.total()
    }

    /// Estimated milliseconds until the job ends: the work left of each kind at that kind's
    /// average duration so far, shared among the tasks running now. `None` while a kind with
    /// work left has no finished task to average, and for ended jobs.
    pub fn eta_ms(&self) -> Option<u64> {
        self.eta_with(None)
    }

    /// [`JobRecord::eta_ms`], with the farm's measured rates standing in for the average of a
    /// kind that has no finished task in this job yet.
    pub fn eta_with(&self, farm: Option<&Rates>) -> Option<u64> {
        Some(self.work_left_ms(farm)? / self.counts.running.max(1))
    }

    /// Worker-milliseconds of work the job has left (see [`JobRecord::eta_with`]).
    pub fn work_left_ms(&self, farm: Option<&Rates>) -> Option<u64> {
        if self.state != JobState::Running {
            return None;
        }
        let mut work = 0u64;
        for kind in TaskKind::ALL {
            let left = self.expected.get(kind).saturating_sub(self.ended.get(kind));
            if left == 0 {
                continue;
            }
            let timed = self.timed.get(kind);
            work += match farm {
                _ if timed > 0 => left * self.busy_ms.get(kind) / timed,
                Some(rates) => left * tessera_core::rates::task_ms(rates, kind, &self.settings)?,
                None => return None,
            };
        }
        Some(work)
    }
}

/// A stored task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its id: its job's id, then its place in the job's plan.
    pub id: String,
    /// The job it belongs to.
    pub job: String,
    /// Kind of work.
    pub kind: TaskKind,
    /// Result it contributes to.
    pub unit: u32,
    /// Where the task stands in its life (queued, blocked, running, ended).
    pub state: TaskState,
    /// Leases so far; the current lease's fencing token.
    pub attempt: u32,
    /// Attempts reported failed.
    pub failures: u32,
    /// Leases that expired.
    pub expiries: u32,
    /// Worker of the latest lease ("" before the first).
    pub worker: String,
    /// End of the current lease.
    pub deadline_ms: u64,
    /// What to do.
    pub spec: TaskSpec,
    /// The task consuming its output.
    pub parent: Option<String>,
    /// Which input of the parent it fills.
    pub slot: u32,
    /// Inputs still missing.
    pub waiting: u32,
    /// Whether its output is a result.
    pub is_final: bool,
    /// Latest checkpoint of any attempt.
    pub checkpoint: Option<ArtifactRef>,
    /// Step of that checkpoint.
    pub checkpoint_iteration: u32,
    /// Start of the latest lease (0 before the first), for task durations.
    #[serde(default)]
    pub started_ms: u64,
    /// Latest reported step.
    pub iteration: u32,
    /// Latest reported loss.
    pub loss: Option<f64>,
    /// The output of its completed attempt (`None` before, and while it runs again).
    pub output: Option<ArtifactRef>,
    /// Every error, oldest first.
    pub errors: Vec<String>,
    /// Outputs of the tasks it consumes, by slot.
    pub inputs: BTreeMap<u32, ArtifactRef>,
    /// W3C `traceparent` of the job's submission, passed to workers with the lease.
    #[serde(default)]
    pub trace: String,
}

impl TaskRecord {
    /// This task as the planner sees a finished one, to plan what its output brings next.
    pub fn finished(&self) -> FinishedTask<'_> {
        FinishedTask {
            id: &self.id,
            job: &self.job,
            unit: self.unit,
            spec: &self.spec,
            trace: &self.trace,
        }
    }

    /// The file of this task with artifact key `key` that a worker downloads to run it: a
    /// consumed output, an upscale tile's source picture, or the checkpoint to resume from.
    pub fn input(&self, key: &str) -> Option<&ArtifactRef> {
        let source = match &self.spec {
            TaskSpec::UpscaleTile { source, .. } => Some(source),
            _ => None,
        };
        self.inputs
            .values()
            .chain(source)
            .chain(self.checkpoint.as_ref())
            .find(|artifact| artifact.key == key)
    }
}

/// The lease a report claims to hold.
#[derive(Clone, Copy, Debug)]
pub struct LeaseRef<'a> {
    /// The task the report is about.
    pub task: &'a str,
    /// Attempt (fencing token).
    pub attempt: u32,
    /// The worker reporting; only the lease's holder is heard.
    pub worker: &'a str,
}

/// What a heartbeat reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimiser steps done so far.
    pub iteration: u32,
    /// Steps in all.
    pub iterations: u32,
    /// The loss at that step, when the task has one.
    pub loss: Option<f64>,
    /// A new checkpoint and its step.
    pub checkpoint: Option<(ArtifactRef, u32)>,
    /// Whether a new preview was stored.
    pub preview: bool,
}

/// Answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Renewed until this deadline.
    Continue {
        /// New end of the lease.
        deadline_ms: u64,
    },
    /// The job was cancelled.
    Cancelled,
    /// This attempt no longer holds the task.
    Lost,
    /// Renewed, but the job is paused: a render checkpoints and gives the task back
    /// ([`StateBackend::release`]); shorter work may finish.
    Paused {
        /// New end of the lease.
        deadline_ms: u64,
    },
}

/// Answer to a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// The output is the task's result.
    Accepted,
    /// This attempt's output had already been accepted.
    Duplicate,
    /// This attempt no longer holds the task.
    Stale,
    /// The job was cancelled.
    Cancelled,
}

/// What became of a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailVerdict {
    /// Queued again for another attempt, within its retry budget.
    Retrying,
    /// Failed for good.
    Failed,
    /// The attempt no longer holds the task.
    Stale,
    /// The job was cancelled.
    Cancelled,
    /// Its corrupt input is being made again; the task waits for it (no failure counted).
    WaitingForInput,
    /// Its corrupt input was made again meanwhile, or was its checkpoint, now dropped: queued
    /// again at once (no failure counted).
    Requeued,
}

/// Answer to a failure report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailOutcome {
    /// What became of the task.
    pub verdict: FailVerdict,
    /// Failures of the task so far.
    pub failures: u32,
    /// Whether the worker is now kept off the job.
    pub banned: bool,
}

/// Answer to a cancellation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job is now cancelled.
    Cancelled,
    /// The job had already ended in this state.
    AlreadyEnded(JobState),
    /// No such job.
    NotFound,
}

/// Answer to a change of a running job (its priority, pausing, resuming).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlOutcome {
    /// Applied (also when the job already was as asked).
    Applied,
    /// The job had already ended in this state; nothing changed.
    AlreadyEnded(JobState),
    /// No such job.
    NotFound,
}

/// A registered worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Its id, unique in the farm; leases and reports name it.
    pub id: String,
    /// The name the worker gave itself (host and GPU, say), shown in listings.
    pub name: String,
    /// What it can do (normalised).
    pub capabilities: Capabilities,
    /// Its software version, shown in listings to spot workers left behind by an upgrade.
    pub version: String,
    /// When it registered (ms since the Unix epoch).
    pub registered_ms: u64,
    /// Last lease or heartbeat.
    pub last_seen_ms: u64,
    /// The task it works on.
    pub current_task: Option<String>,
    /// A task it leased ahead while working on `current_task` (lease-ahead), which becomes its
    /// current task when that one ends.
    #[serde(default)]
    pub ahead_task: Option<String>,
    /// Tasks it finished.
    pub tasks_done: u64,
}

/// Where a result stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResultState {
    /// Still being made.
    Pending,
    /// Its picture is stored and can be fetched.
    Done,
    /// One of its tasks failed for good.
    Failed,
    /// Its job was cancelled first.
    Cancelled,
}

/// A result of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// What it is made from.
    pub unit: Unit,
    /// Where it stands.
    pub state: ResultState,
    /// The picture, once done.
    pub output: Option<ArtifactRef>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Something that happened to a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the job's stream (resume after it).
    pub cursor: String,
    /// When, in coordinator time.
    pub time_ms: u64,
    /// What happened, with what it happened to.
    pub kind: EventKind,
}

/// The kinds of event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A worker leased a task.
    TaskStarted {
        /// The task it concerns.
        task: String,
        /// Kind of work.
        kind: TaskKind,
        /// The attempt (lease number) it concerns, so stale reports can be told apart.
        attempt: u32,
        /// The worker that held the attempt.
        worker: String,
        /// Result it contributes to.
        unit: u32,
    },
    /// A heartbeat.
    Progress {
        /// The task it concerns.
        task: String,
        /// The attempt (lease number) it concerns, so stale reports can be told apart.
        attempt: u32,
        /// Optimiser steps done.
        iteration: u32,
        /// Steps in all.
        iterations: u32,
        /// The loss the worker last reported, when it reports one.
        loss: Option<f64>,
        /// Step of the latest checkpoint.
        checkpoint_iteration: u32,
    },
    /// A new preview picture was stored.
    Preview {
        /// The task it concerns.
        task: String,
        /// The attempt (lease number) it concerns, so stale reports can be told apart.
        attempt: u32,
        /// Step it shows.
        iteration: u32,
    },
    /// A task's output was accepted.
    TaskDone {
        /// The task it concerns.
        task: String,
        /// Kind of work.
        kind: TaskKind,
        /// The attempt (lease number) it concerns, so stale reports can be told apart.
        attempt: u32,
        /// The worker that held the attempt.
        worker: String,
        /// Result it contributes to.
        unit: u32,
        /// Whether the output is the result.
        is_final: bool,
        /// The accepted output, which the task's consumer or the user downloads.
        output: ArtifactRef,
    },
    /// An attempt failed.
    TaskFailed {
        /// The task it concerns.
        task: String,
        /// The attempt (lease number) it concerns, so stale reports can be told apart.
        attempt: u32,
        /// Worker ("" when the task failed because a task it consumes did).
        worker: String,
        /// What went wrong.
        error: String,
        /// Whether it was queued again.
        will_retry: bool,
    },
    /// A lease ended without a report and the task was queued again.
    TaskRequeued {
        /// The task it concerns.
        task: String,
        /// The attempt (lease number) it concerns, so stale reports can be told apart.
        attempt: u32,
        /// The worker that held the attempt.
        worker: String,
        /// Why the lease ended (expired, drained, worker deregistered).
        reason: String,
    },
    /// The job ended; always its last event.
    JobDone {
        /// The state it ended in.
        state: JobState,
        /// Tasks per state.
        counts: StateCounts,
        /// Results whose picture is stored.
        units_done: u64,
        /// Results that failed for good.
        units_failed: u64,
    },
}

/// The whole farm's state at one moment, for the metrics gauges: read from the store at each
/// scrape, so every coordinator sharing the store reports the same numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FarmStats {
    /// Queued tasks per job priority and task kind (only pairs with queued tasks).
    pub queued: BTreeMap<(i32, TaskKind), u64>,
    /// Tasks of every job per state.
    pub tasks: StateCounts,
}

/// A finished task as a sample of the farm's speed ([`tessera_core::rates`]). Its time is
/// counted from its lease or from its worker's previous finished task, whichever is later: a
/// task leased ahead waited for the one before it, and counting that wait twice would halve
/// the farm's apparent speed. A worker's first finished task of each class also loaded its
/// model (and warmed its kernels up) and is no sample; it only starts the worker's clock. Both
/// stores keep one clock entry per worker id that ever finished a task, and one entry per
/// worker and class it finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSample {
    /// The worker that finished it.
    pub worker: String,
    /// Its class of work ([`tessera_core::rates::Work::class`]).
    pub class: String,
    /// Its amount of that work.
    pub amount: u64,
    /// When its lease began.
    pub started_ms: u64,
}

/// How a job's webhook deliveries stand, for `tessera status` (the outbox's own bookkeeping,
/// its cursor into the job's events, is in [`WebhookClaim`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStatus {
    /// Where events are POSTed ("" for a job without a webhook).
    pub url: String,
    /// Events the receiver accepted (answered 2xx).
    pub delivered: u64,
    /// Attempts that failed (each retried with backoff until the farm's bound).
    pub failures: u64,
    /// Events given up after failing for the farm's whole retry time.
    pub dropped: u64,
    /// Why the latest failed attempt failed ("" before any).
    pub last_error: String,
    /// Whether events wait to be delivered.
    pub pending: bool,
    /// When the next attempt after a failure is due (0 when none waits for backoff).
    pub next_ms: u64,
}

/// A job whose webhook has events due, claimed for delivery by one coordinator for a while
/// ([`StateBackend::webhook_claim`]), with what the delivery needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookClaim {
    /// The job.
    pub job: String,
    /// Its tenant, whose secret signs the deliveries.
    pub tenant: String,
    /// Where to POST.
    pub url: String,
    /// The last of its events that was delivered or passed over ("" for none yet): delivery
    /// resumes after it.
    pub cursor: String,
    /// Failed attempts at the event after the cursor, for the backoff.
    pub tries: u32,
    /// When the first of those failed (0 when none did), for the retry bound.
    pub failing_since_ms: u64,
}

/// What became of the events a delivery attempt dealt with ([`StateBackend::webhook_advance`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookStep {
    /// None of them is a webhook event: passed over.
    Skipped,
    /// The receiver accepted the webhook event that ends them.
    Delivered,
    /// The webhook event that ends them failed for the whole retry time and is given up, for
    /// this reason (its last attempt counts as a failure).
    Dropped(String),
}

impl EventKind {
    /// Whether the event is POSTed to the job's webhook: a finished result or the job's end.
    pub fn is_webhook_event(&self) -> bool {
        matches!(
            self,
            EventKind::TaskDone { is_final: true, .. } | EventKind::JobDone { .. }
        )
    }
}

/// A failure of the state store itself (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store cannot be reached or refused a command.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// Stored data that cannot be read back.
    #[error("corrupt state for {what}: {detail}")]
    Corrupt {
        /// Which record, or which file and line, does not read back.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// Another coordinator owns the state directory; two would corrupt its journal.
    #[error(
        "the state directory {} is in use by {holder}; stop that one first, or give this one \
         another directory",
        dir.display()
    )]
    InUse {
        /// The directory asked for.
        dir: std::path::PathBuf,
        /// Who holds it, as the holder wrote it.
        holder: String,
    },
    /// A job with this id exists already.
    #[error("job {0} exists already")]
    JobExists(String),
    /// The tenant's quota refuses another job now; the message names the limit.
    #[error("{0}")]
    OverQuota(String),
}

/// Result of a state operation.
pub type StateResult<T> = Result<T, StateError>;

/// The coordinator's state store. Both implementations pass the same conformance suite
/// (`coordinator/tests/conformance.rs`).
#[async_trait::async_trait]
pub trait StateBackend: Send + Sync + 'static {
    /// Stores a job with its results and first tasks, queueing the runnable ones.
    async fn create_job(&self, job: &NewJob, now: u64) -> StateResult<()>;

    /// A job with its counters and queue position.
    async fn job(&self, id: &str) -> StateResult<Option<JobRecord>>;

    /// Jobs newest first, and how many there are; only `tenant`'s when it is given.
    async fn jobs(
        &self,
        tenant: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> StateResult<(Vec<JobRecord>, u64)>;

    /// A page of a job's results and how many there are; `None` for an unknown job.
    async fn results(
        &self,
        job: &str,
        offset: usize,
        limit: usize,
    ) -> StateResult<Option<(Vec<ResultRecord>, u64)>>;

    /// A task with everything stored about it; `None` for an unknown id.
    async fn task(&self, id: &str) -> StateResult<Option<TaskRecord>>;

    /// Adds (or replaces) a worker.
    async fn register_worker(&self, worker: &WorkerRecord) -> StateResult<()>;

    /// A registered worker; `None` when it never registered or has deregistered.
    async fn worker(&self, id: &str) -> StateResult<Option<WorkerRecord>>;

    /// Every registered worker, by id.
    async fn workers(&self) -> StateResult<Vec<WorkerRecord>>;

    /// Removes a worker, queueing again the tasks it holds (current and leased ahead); returns
    /// them.
    async fn deregister_worker(
        &self,
        id: &str,
        policy: &Policy,
        now: u64,
    ) -> StateResult<Vec<String>>;

    /// Leases the next task `worker` can do: highest priority first, jobs of equal priority in
    /// turn, each job's tasks in order (stitches, then tiles, then renders).
    async fn lease(
        &self,
        worker: &str,
        caps: &Capabilities,
        policy: &Policy,
        now: u64,
        lease_ms: u64,
    ) -> StateResult<Option<TaskRecord>>;

    /// Renews a lease and records progress.
    async fn heartbeat(
        &self,
        lease: LeaseRef<'_>,
        progress: &Progress,
        policy: &Policy,
        now: u64,
        lease_ms: u64,
    ) -> StateResult<HeartbeatOutcome>;

    /// Accepts a task's output and stores the tasks that follow it.
    async fn complete(
        &self,
        lease: LeaseRef<'_>,
        output: &ArtifactRef,
        followups: &[NewTask],
        policy: &Policy,
        now: u64,
    ) -> StateResult<CompleteOutcome>;

    /// Records a failed attempt; retries it within the budget.
    async fn fail(
        &self,
        lease: LeaseRef<'_>,
        error: &str,
        retryable: bool,
        policy: &Policy,
        now: u64,
    ) -> StateResult<FailOutcome>;

    /// Answers a worker that found input `key` of the task it holds corrupt, once the
    /// coordinator has found the stored file corrupt or missing too. When `producer` (the
    /// task whose output `key` should be) made it, the producer runs again and this task
    /// waits for its new output; a corrupt checkpoint is dropped and the task starts over; an
    /// input nobody in the job made (an upload) fails the task for good. No failure is
    /// counted against the task or the worker: the file broke after it was accepted.
    async fn redo_input(
        &self,
        lease: LeaseRef<'_>,
        key: &str,
        producer: Option<&str>,
        policy: &Policy,
        now: u64,
    ) -> StateResult<FailVerdict>;

    /// Queues again up to `limit` tasks whose lease ended before `now`; returns them.
    async fn expire(&self, policy: &Policy, now: u64, limit: usize) -> StateResult<Vec<String>>;

    /// Cancels a job and every task of it that has not ended.
    async fn cancel(&self, job: &str, policy: &Policy, now: u64) -> StateResult<CancelOutcome>;

    /// Gives `job` priority `priority`: its queued tasks move to that level at once, keeping
    /// their fair-share position.
    async fn set_priority(
        &self,
        job: &str,
        priority: i32,
        policy: &Policy,
        now: u64,
    ) -> StateResult<ControlOutcome>;

    /// Pauses `job`: its queued tasks are offered to no worker, and heartbeats of its running
    /// tasks answer [`HeartbeatOutcome::Paused`], until [`StateBackend::resume`].
    async fn pause(&self, job: &str, policy: &Policy, now: u64) -> StateResult<ControlOutcome>;

    /// Resumes a paused job: its queued tasks are offered again where they were in line.
    async fn resume(&self, job: &str, policy: &Policy, now: u64) -> StateResult<ControlOutcome>;

    /// Queues again a task its holder gives back unfinished because its job was paused (after
    /// a heartbeat with its checkpoint): neither a failure nor an expiry is counted. `false`
    /// when the attempt no longer holds the task.
    async fn release(&self, lease: LeaseRef<'_>, policy: &Policy, now: u64) -> StateResult<bool>;

    /// Up to `max` events of `job` after cursor `after` ("" from the start), waiting up to
    /// `wait` for the first one when there is none yet.
    async fn events(
        &self,
        job: &str,
        after: &str,
        max: usize,
        wait: Duration,
    ) -> StateResult<Vec<Event>>;

    /// Woken whenever tasks may have become available (on this coordinator or, with Redis,
    /// on any), so waiting lease requests retry at once.
    fn work_signal(&self) -> Arc<Notify>;

    /// Queue depths and task counts of the whole farm.
    async fn stats(&self) -> StateResult<FarmStats>;

    /// Checks that the store answers.
    async fn ping(&self) -> StateResult<()>;

    /// Counts a task that `sample.worker` finished at `now` in the farm's rate of its class
    /// of work (see [`RateSample`]).
    async fn record_rate(&self, sample: &RateSample, now: u64) -> StateResult<()>;

    /// The farm's measured rates, by class of work.
    async fn rates(&self) -> StateResult<Rates>;

    /// Claims up to `limit` jobs whose webhook events are due at `now`, oldest due first, for
    /// `lease_ms`: until then no other claim returns them, so coordinators sharing a store do
    /// not deliver one job's events at once, and a claimer that dies only delays them.
    async fn webhook_claim(
        &self,
        now: u64,
        limit: usize,
        lease_ms: u64,
    ) -> StateResult<Vec<WebhookClaim>>;

    /// Moves `job`'s webhook cursor from `from` to event `to`, recording `step`; the job leaves
    /// the outbox when no event follows `to`, and is due again at once otherwise. `false`
    /// (nothing changed) when the cursor is no longer `from`: another delivery moved it.
    async fn webhook_advance(
        &self,
        job: &str,
        from: &str,
        to: &str,
        step: &WebhookStep,
        now: u64,
    ) -> StateResult<bool>;

    /// Records a failed attempt at the event after `from` (`error` says why) and makes the
    /// job due again at `retry_at`. `false` when the cursor is no longer `from`.
    async fn webhook_failed(
        &self,
        job: &str,
        from: &str,
        error: &str,
        retry_at: u64,
        now: u64,
    ) -> StateResult<bool>;
}
