//! The conformance suite of the state store: every scenario runs against the embedded backend
//! (in memory and journaled to disk) and against Redis (a real `redis-server` started by the
//! harness), and must behave the same on each. Time is a number the scenarios move by hand.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tessera_coordinator::state::embedded::EmbeddedBackend;
use tessera_coordinator::state::redis::RedisBackend;
use tessera_coordinator::state::{
    CancelOutcome, CompleteOutcome, ControlOutcome, EventKind, FailVerdict, FarmStats,
    HeartbeatOutcome, JobState, LeaseRef, NewJob, Policy, Progress, Quota, Rate, RateSample, Rates,
    ResultState, StateBackend, TaskRecord, TaskState, WorkerRecord,
};
use tessera_coordinator::state::{WebhookClaim, WebhookStatus, WebhookStep};
use tessera_core::job::JobRequest;
use tessera_core::rates::RATE_WINDOW;
use tessera_core::task::{ArtifactRef, Capabilities, TaskKind};
use tessera_tests::RedisServer;

mod planned;

/// Lease length in the scenarios.
const LEASE_MS: u64 = 10_000;
/// A job's trace context, as the coordinator stores it from the submission's span.
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Side of the generated pictures: 64 px in 32 px tiles gives 4 tiles per picture.
const SIDE: u32 = 64;

/// One backend under test, with what keeps it alive.
struct Store {
    backend: Arc<dyn StateBackend>,
    policy: Policy,
    now: u64,
    _redis: Option<RedisServer>,
    _dir: Option<TempDir>,
}

impl Store {
    fn embedded() -> Store {
        Store::with(Arc::new(EmbeddedBackend::in_memory()), None, None)
    }

    fn journaled() -> Store {
        let dir = TempDir::new().unwrap();
        let backend = EmbeddedBackend::open(dir.path(), "the conformance suite").unwrap();
        Store::with(Arc::new(backend), None, Some(dir))
    }

    async fn redis() -> Store {
        let redis = RedisServer::start().unwrap();
        let backend = RedisBackend::connect(&redis.url(), "test:").await.unwrap();
        Store::with(Arc::new(backend), Some(redis), None)
    }

    fn with(
        backend: Arc<dyn StateBackend>,
        redis: Option<RedisServer>,
        dir: Option<TempDir>,
    ) -> Store {
        Store {
            backend,
            policy: Policy {
                max_retries: 2,
                max_expiries: 3,
                ban_after: 2,
                events_max: 1_000,
            },
            now: 1_000_000,
            _redis: redis,
            _dir: dir,
        }
    }

    /// A second handle on the same stored state, as a restarted coordinator opens it (for a
    /// journaled directory, only once the first is gone: see [`Store::restart`]).
    async fn reopen(&self) -> Arc<dyn StateBackend> {
        if let Some(redis) = &self._redis {
            return Arc::new(RedisBackend::connect(&redis.url(), "test:").await.unwrap());
        }
        let dir = self._dir.as_ref().expect("only durable stores reopen");
        Arc::new(EmbeddedBackend::open(dir.path(), "the conformance suite").unwrap())
    }

    /// The store as a restarted coordinator finds it: the old handle gone (a journaled
    /// directory has one owner at a time), then a new one opened.
    async fn restart(&mut self) {
        self.backend = Arc::new(EmbeddedBackend::in_memory());
        self.backend = self.reopen().await;
    }

    fn tick(&mut self, ms: u64) -> u64 {
        self.now += ms;
        self.now
    }

    async fn submit(&self, job: &NewJob) {
        self.backend.create_job(job, self.now).await.unwrap();
    }

    async fn register(&self, worker: &str, caps: &Capabilities) {
        let record = WorkerRecord {
            id: worker.into(),
            name: worker.into(),
            capabilities: caps.clone(),
            version: "test".into(),
            registered_ms: self.now,
            last_seen_ms: self.now,
            current_task: None,
            ahead_task: None,
            tasks_done: 0,
        };
        self.backend.register_worker(&record).await.unwrap();
    }

    async fn lease(&self, worker: &str) -> Option<TaskRecord> {
        self.lease_with(worker, &everything()).await
    }

    async fn lease_with(&self, worker: &str, caps: &Capabilities) -> Option<TaskRecord> {
        self.backend
            .lease(worker, caps, &self.policy, self.now, LEASE_MS)
            .await
            .unwrap()
    }

    /// Completes `task` as the worker that leased it, with a picture of the right size and
    /// the follow-up tasks the coordinator would plan.
    async fn complete(&self, task: &TaskRecord) -> CompleteOutcome {
        let output = output_for(task);
        let followups = planned::followups(task, &output);
        self.backend
            .complete(lease_of(task), &output, &followups, &self.policy, self.now)
            .await
            .unwrap()
    }

    async fn fail(&self, task: &TaskRecord, error: &str, retryable: bool) -> FailVerdict {
        self.backend
            .fail(lease_of(task), error, retryable, &self.policy, self.now)
            .await
            .unwrap()
            .verdict
    }

    /// Reports input `key` of `task` corrupt in the store, made by `producer`.
    async fn corrupt(&self, task: &TaskRecord, key: &str, producer: Option<&str>) -> FailVerdict {
        self.backend
            .redo_input(lease_of(task), key, producer, &self.policy, self.now)
            .await
            .unwrap()
    }

    async fn heartbeat(&self, task: &TaskRecord, progress: &Progress) -> HeartbeatOutcome {
        self.backend
            .heartbeat(lease_of(task), progress, &self.policy, self.now, LEASE_MS)
            .await
            .unwrap()
    }

    async fn job_state(&self, id: &str) -> JobState {
        self.backend.job(id).await.unwrap().unwrap().state
    }

    async fn task(&self, id: &str) -> TaskRecord {
        self.backend.task(id).await.unwrap().unwrap()
    }

    /// Leases and completes everything `worker` can get until nothing is left.
    async fn drain(&self, worker: &str) -> Vec<TaskRecord> {
        let mut done = Vec::new();
        while let Some(task) = self.lease(worker).await {
            assert_eq!(self.complete(&task).await, CompleteOutcome::Accepted);
            done.push(task);
        }
        done
    }

    async fn events(&self, job: &str) -> Vec<EventKind> {
        let events = self
            .backend
            .events(job, "", 10_000, Duration::ZERO)
            .await
            .unwrap();
        events.into_iter().map(|e| e.kind).collect()
    }
}

fn lease_of(task: &TaskRecord) -> LeaseRef<'_> {
    LeaseRef {
        task: &task.id,
        attempt: task.attempt,
        worker: &task.worker,
    }
}

/// The picture a task is asked for.
fn output_for(task: &TaskRecord) -> ArtifactRef {
    planned::output_for(task, "out.png")
}

/// A worker that runs every kind of task with every catalogue model.
fn everything() -> Capabilities {
    Capabilities {
        kinds: vec![TaskKind::Generate, TaskKind::UpscaleTile, TaskKind::Stitch],
        models: planned::all_models(),
        device: "cpu".into(),
        ..Capabilities::default()
    }
    .normalised()
    .unwrap()
}

/// A job of `prompts` prompts with one seed each, small pictures, upscaled 4x in 4 tiles when
/// `upscale` is set.
fn job(id: &str, prompts: usize, priority: i32, upscale: bool) -> NewJob {
    let request = JobRequest {
        name: format!("{id} job"),
        priority,
        settings: planned::small_settings(upscale, None),
        seeds: vec![7],
        source: planned::prompts(prompts),
        sweeps: Vec::new(),
    };
    planned::new_job(id, request, "", Quota::default())
}

/// A one-prompt job of `tenant` under `quota`.
fn tenant_job(id: &str, tenant: &str, quota: Quota) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        quota,
        ..job(id, 1, 0, false)
    }
}

/// Runs a scenario on every backend: `mod embedded`, `mod journaled` and `mod redis` each get
/// a test of this name.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $name() { super::$name(super::Store::embedded()).await })*
        }
        mod journaled {
            $(#[tokio::test] async fn $name() { super::$name(super::Store::journaled()).await })*
        }
        mod redis {
            $(#[tokio::test] async fn $name() { super::$name(super::Store::redis().await).await })*
        }
    };
}

conformance!(
    a_job_runs_from_generate_through_tiles_to_stitch,
    a_job_is_stored_whole_or_not_at_all,
    higher_priority_goes_first,
    a_small_job_is_not_starved_by_a_big_one,
    workers_get_only_what_they_can_do,
    an_expired_lease_resumes_from_the_checkpoint,
    a_late_report_never_overwrites_the_current_holder,
    completion_is_idempotent,
    retries_are_bounded_and_keep_every_error,
    a_failing_worker_is_kept_off_the_job,
    a_task_that_keeps_expiring_fails,
    cancelling_reaches_running_tasks,
    deregistering_a_worker_requeues_its_task,
    events_resume_from_a_cursor,
    the_state_survives_a_restart,
    stats_count_queues_and_states_over_every_job,
    tenants_see_their_own_jobs_and_quotas_hold,
    a_poison_task_bans_nobody_and_the_rest_of_its_job_completes,
    a_corrupt_input_is_made_again_by_the_task_that_made_it,
    a_corrupt_checkpoint_is_dropped_and_a_corrupt_upload_fails,
    a_new_priority_moves_queued_tasks_at_once,
    a_paused_job_is_not_leased_and_its_renders_come_back_checkpointed,
    ended_jobs_refuse_changes,
    rates_time_each_worker_s_tasks_back_to_back_and_forget_slowly,
    the_webhook_outbox_holds_each_event_until_it_is_delivered,
);

async fn stats_count_queues_and_states_over_every_job(mut s: Store) {
    assert_eq!(s.backend.stats().await.unwrap(), FarmStats::default());
    s.submit(&job("low", 3, 0, true)).await;
    s.submit(&job("high", 2, 5, false)).await;
    let stats = s.backend.stats().await.unwrap();
    assert_eq!(
        stats.queued.into_iter().collect::<Vec<_>>(),
        [((0, TaskKind::Generate), 3), ((5, TaskKind::Generate), 2)]
    );
    assert_eq!((stats.tasks.queued, stats.tasks.active()), (5, 5));

    let leased_at = s.tick(7);
    let render = s.lease("w").await.unwrap();
    assert_eq!(
        (render.job.as_str(), render.started_ms),
        ("high", leased_at)
    );
    s.complete(&render).await;
    let render = s.lease("w").await.unwrap();
    s.complete(&render).await;
    let render = s.lease("w").await.unwrap();
    assert_eq!(render.job, "low");
    s.complete(&render).await;
    // The finished low-priority render queued its four tiles.
    let stats = s.backend.stats().await.unwrap();
    assert_eq!(
        stats.queued.into_iter().collect::<Vec<_>>(),
        [
            ((0, TaskKind::Generate), 2),
            ((0, TaskKind::UpscaleTile), 4)
        ]
    );
    assert_eq!(
        (stats.tasks.queued, stats.tasks.blocked, stats.tasks.done),
        (6, 1, 3)
    );
    s.backend.cancel("low", &s.policy, s.now).await.unwrap();
    let stats = s.backend.stats().await.unwrap();
    assert!(stats.queued.is_empty());
    assert_eq!(
        (
            stats.tasks.cancelled,
            stats.tasks.done,
            stats.tasks.active()
        ),
        (7, 3, 0)
    );
}

async fn a_job_runs_from_generate_through_tiles_to_stitch(mut s: Store) {
    let mut j1 = job("j1", 2, 0, true);
    for task in &mut j1.tasks {
        task.trace = TRACE.into();
    }
    s.submit(&j1).await;
    let record = s.backend.job("j1").await.unwrap().unwrap();
    assert_eq!(record.counts.queued, 2);
    assert_eq!(record.planned(), 2 * (1 + 4 + 1));
    s.register("w1", &everything()).await;

    let generate = s.lease("w1").await.expect("a generate task is queued");
    assert_eq!(generate.kind, TaskKind::Generate);
    assert_eq!(generate.attempt, 1);
    s.tick(500);
    assert_eq!(s.complete(&generate).await, CompleteOutcome::Accepted);
    // Its tiles are queued and go before the other render (a job's tiles run first).
    let tile = s.lease("w1").await.unwrap();
    assert_eq!(tile.kind, TaskKind::UpscaleTile);
    assert_eq!(tile.unit, generate.unit);
    assert_eq!(s.complete(&tile).await, CompleteOutcome::Accepted);

    let rest = s.drain("w1").await;
    let kinds: Vec<TaskKind> = rest.iter().map(|t| t.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == TaskKind::Stitch).count(), 2);
    assert_eq!(rest.len() + 2, 12);
    // Every task, planned with the job or after a render, continues the job's trace.
    for task in rest.iter().chain([&generate, &tile]) {
        assert_eq!(task.trace, TRACE, "{}", task.id);
    }
    // A stitch receives its four tiles' outputs as inputs, by tile index.
    let stitch = rest.iter().find(|t| t.kind == TaskKind::Stitch).unwrap();
    let stored = s.task(&stitch.id).await;
    assert_eq!(
        stored.inputs.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(stored.state, TaskState::Done);

    let record = s.backend.job("j1").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Succeeded);
    assert_eq!((record.units_done, record.counts.done), (2, 12));
    let (results, total) = s.backend.results("j1", 0, 10).await.unwrap().unwrap();
    assert_eq!(total, 2);
    for result in results {
        assert_eq!(result.state, ResultState::Done);
        let output = result.output.unwrap();
        assert_eq!((output.width, output.height), (4 * SIDE, 4 * SIDE));
    }
    let events = s.events("j1").await;
    assert!(matches!(
        events.last(),
        Some(EventKind::JobDone {
            state: JobState::Succeeded,
            ..
        })
    ));
    let started = events
        .iter()
        .filter(|e| matches!(e, EventKind::TaskStarted { .. }))
        .count();
    assert_eq!(started, 12);
}

async fn a_job_is_stored_whole_or_not_at_all(s: Store) {
    let first = job("dup", 3, 0, false);
    s.submit(&first).await;
    let again = s.backend.create_job(&job("dup", 5, 0, false), s.now).await;
    assert!(again.is_err(), "a second job with the same id is refused");
    let record = s.backend.job("dup").await.unwrap().unwrap();
    assert_eq!(record.counts.queued, 3, "the refused job changed nothing");
    let (jobs, total) = s.backend.jobs(None, 0, 10).await.unwrap();
    assert_eq!((jobs.len(), total), (1, 1));
    assert!(s.backend.job("missing").await.unwrap().is_none());
    assert!(s.backend.results("missing", 0, 1).await.unwrap().is_none());
}

async fn a_new_priority_moves_queued_tasks_at_once(mut s: Store) {
    s.submit(&job("first", 2, 0, false)).await;
    s.tick(1);
    s.submit(&job("second", 2, 0, false)).await;
    let applied = s.backend.set_priority("second", 9, &s.policy, s.now);
    assert_eq!(applied.await.unwrap(), ControlOutcome::Applied);
    let first = s.backend.job("first").await.unwrap().unwrap();
    assert_eq!(first.queue_position, 2, "second's two tasks now come first");
    let order: Vec<String> = s.drain("w").await.into_iter().map(|t| t.job).collect();
    assert_eq!(order, ["second", "second", "first", "first"]);
    let second = s.backend.job("second").await.unwrap().unwrap();
    assert_eq!(second.priority, 9);
}

async fn a_paused_job_is_not_leased_and_its_renders_come_back_checkpointed(s: Store) {
    s.submit(&job("j", 2, 0, false)).await;
    s.submit(&job("other", 1, 0, false)).await;
    let running = s.lease("w").await.unwrap();
    assert_eq!(running.job, "j");
    let paused = s.backend.pause("j", &s.policy, s.now).await.unwrap();
    assert_eq!(paused, ControlOutcome::Applied);
    let record = s.backend.job("j").await.unwrap().unwrap();
    assert!(record.paused);
    assert_eq!(record.state, JobState::Running);

    // Its queued render waits; the other job's is leased.
    let other = s.lease("w2").await.unwrap();
    assert_eq!(other.job, "other");
    assert!(
        s.lease("w3").await.is_none(),
        "nothing of a paused job is offered"
    );
    let stats = s.backend.stats().await.unwrap();
    assert!(
        stats.queued.is_empty(),
        "a paused job's queue is not offered: {stats:?}"
    );

    // The running render is told at its heartbeat, checkpoints and gives the task back.
    let (checkpoint, progress) = checkpointed_at_10();
    let beat = s.heartbeat(&running, &progress).await;
    assert!(matches!(beat, HeartbeatOutcome::Paused { .. }), "{beat:?}");
    let released = s.backend.release(lease_of(&running), &s.policy, s.now);
    assert!(released.await.unwrap());
    let again = s.backend.release(lease_of(&running), &s.policy, s.now);
    assert!(!again.await.unwrap(), "a released attempt holds nothing");
    let task = s.task(&running.id).await;
    assert_eq!(
        (task.state, task.expiries, task.failures),
        (TaskState::Queued, 0, 0)
    );
    assert!(task.errors.is_empty());
    assert!(s.lease("w3").await.is_none());
    let record = s.backend.job("j").await.unwrap().unwrap();
    assert_eq!((record.counts.queued, record.retries), (2, 0));

    let resumed = s.backend.resume("j", &s.policy, s.now).await.unwrap();
    assert_eq!(resumed, ControlOutcome::Applied);
    assert!(!s.backend.job("j").await.unwrap().unwrap().paused);
    let resumed = s.lease("w").await.unwrap();
    assert_eq!(
        (resumed.id.as_str(), resumed.attempt),
        (running.id.as_str(), 2)
    );
    assert_eq!(resumed.checkpoint, Some(checkpoint));
    assert_eq!(resumed.checkpoint_iteration, 10);
}

async fn ended_jobs_refuse_changes(s: Store) {
    s.submit(&job("j", 1, 0, false)).await;
    s.backend.cancel("j", &s.policy, s.now).await.unwrap();
    let ended = ControlOutcome::AlreadyEnded(JobState::Cancelled);
    assert_eq!(s.backend.pause("j", &s.policy, s.now).await.unwrap(), ended);
    assert_eq!(
        s.backend.resume("j", &s.policy, s.now).await.unwrap(),
        ended
    );
    let priority = s.backend.set_priority("j", 3, &s.policy, s.now);
    assert_eq!(priority.await.unwrap(), ended);
    let missing = s.backend.pause("nope", &s.policy, s.now).await.unwrap();
    assert_eq!(missing, ControlOutcome::NotFound);
}

async fn higher_priority_goes_first(mut s: Store) {
    s.submit(&job("low", 3, 0, false)).await;
    s.tick(1);
    s.submit(&job("high", 2, 5, false)).await;
    let low = s.backend.job("low").await.unwrap().unwrap();
    assert_eq!(
        low.queue_position, 2,
        "two tasks of a higher priority wait before it"
    );
    let order: Vec<String> = s.drain("w").await.into_iter().map(|t| t.job).collect();
    assert_eq!(order, ["high", "high", "low", "low", "low"]);
}

async fn a_small_job_is_not_starved_by_a_big_one(mut s: Store) {
    s.submit(&job("big", 200, 0, false)).await;
    for _ in 0..5 {
        let task = s.lease("w").await.unwrap();
        s.complete(&task).await;
    }
    s.tick(1);
    s.submit(&job("small", 3, 0, false)).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let task = s.lease("w").await.unwrap();
        s.complete(&task).await;
        order.push(task.job);
    }
    // Jobs of equal priority take turns, and a new job goes first.
    assert_eq!(order, ["small", "big", "small", "big", "small", "big"]);
    assert_eq!(s.job_state("small").await, JobState::Succeeded);
}

async fn workers_get_only_what_they_can_do(mut s: Store) {
    s.submit(&job("j", 1, 0, true)).await;
    let upscaler = Capabilities {
        kinds: vec![TaskKind::UpscaleTile, TaskKind::Stitch],
        ..everything()
    };
    assert!(s.lease_with("u", &upscaler).await.is_none());
    let no_vqgan = Capabilities {
        models: vec!["vit-b/32".into(), "realesrgan-x4plus".into()],
        ..everything()
    };
    assert!(s.lease_with("m", &no_vqgan).await.is_none());
    let small = Capabilities {
        max_pixels: u64::from(SIDE * SIDE) - 1,
        ..everything()
    };
    assert!(s.lease_with("p", &small).await.is_none());
    let narrow = Capabilities {
        max_side: SIDE - 16,
        ..everything()
    };
    assert!(s.lease_with("n", &narrow).await.is_none());
    let short = Capabilities {
        max_iterations: 19,
        ..everything()
    };
    assert!(s.lease_with("s", &short).await.is_none());
    let enough = Capabilities {
        max_side: SIDE,
        max_iterations: 20,
        max_pixels: u64::from(SIDE * SIDE),
        ..everything()
    };
    let render = s.lease_with("e", &enough).await.unwrap();
    let now = s.tick(LEASE_MS + 1);
    s.backend.expire(&s.policy, now, 10).await.unwrap();
    assert_eq!(render.kind, TaskKind::Generate);
    let generate = s.lease("g").await.unwrap();
    s.complete(&generate).await;
    let tile = s.lease_with("u", &upscaler).await.unwrap();
    assert_eq!(tile.kind, TaskKind::UpscaleTile);
}

async fn an_expired_lease_resumes_from_the_checkpoint(mut s: Store) {
    s.submit(&job("j", 1, 0, false)).await;
    let first = s.lease("w1").await.unwrap();
    let (checkpoint, progress) = checkpointed_at_10();
    s.tick(LEASE_MS / 2);
    assert!(matches!(
        s.heartbeat(&first, &progress).await,
        HeartbeatOutcome::Continue { .. }
    ));
    // The heartbeat renewed the lease: nothing expires at the first deadline.
    let now = s.tick(LEASE_MS / 2 + 1);
    assert!(s
        .backend
        .expire(&s.policy, now, 10)
        .await
        .unwrap()
        .is_empty());
    let now = s.tick(LEASE_MS);
    let expired = s.backend.expire(&s.policy, now, 10).await.unwrap();
    assert_eq!(expired, std::slice::from_ref(&first.id));

    let second = s.lease("w2").await.expect("the task is queued again");
    assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));
    assert_eq!(second.checkpoint, Some(checkpoint));
    assert_eq!(second.checkpoint_iteration, 10);
    let requeued = s.events("j").await.into_iter().any(
        |e| matches!(e, EventKind::TaskRequeued { ref worker, attempt: 1, .. } if worker == "w1"),
    );
    assert!(requeued, "the expiry is an event");
}

async fn a_late_report_never_overwrites_the_current_holder(mut s: Store) {
    s.submit(&job("j", 1, 0, false)).await;
    let stale = s.lease("w1").await.unwrap();
    let now = s.tick(LEASE_MS + 1);
    s.backend.expire(&s.policy, now, 10).await.unwrap();
    let current = s.lease("w2").await.unwrap();

    assert_eq!(
        s.heartbeat(&stale, &Progress::default()).await,
        HeartbeatOutcome::Lost
    );
    assert_eq!(s.complete(&stale).await, CompleteOutcome::Stale);
    assert_eq!(s.fail(&stale, "late", true).await, FailVerdict::Stale);
    let task = s.task(&current.id).await;
    assert_eq!((task.state, task.output), (TaskState::Running, None));

    assert_eq!(s.complete(&current).await, CompleteOutcome::Accepted);
    let task = s.task(&current.id).await;
    assert_eq!(task.output, Some(output_for(&current)));
    assert_eq!(s.complete(&stale).await, CompleteOutcome::Stale);
    assert_eq!(s.task(&current.id).await.output, Some(output_for(&current)));
}

async fn completion_is_idempotent(s: Store) {
    s.submit(&job("j", 2, 0, false)).await;
    let task = s.lease("w").await.unwrap();
    assert_eq!(s.complete(&task).await, CompleteOutcome::Accepted);
    assert_eq!(s.complete(&task).await, CompleteOutcome::Duplicate);
    let record = s.backend.job("j").await.unwrap().unwrap();
    assert_eq!((record.counts.done, record.units_done), (1, 1));
    let done_events = s
        .events("j")
        .await
        .into_iter()
        .filter(|e| matches!(e, EventKind::TaskDone { .. }))
        .count();
    assert_eq!(done_events, 1);
}

async fn retries_are_bounded_and_keep_every_error(s: Store) {
    s.submit(&job("j", 1, 0, false)).await;
    // Different workers, so the ban rule stays out of the way.
    for attempt in 1..=2 {
        let task = s.lease(&format!("w{attempt}")).await.unwrap();
        assert_eq!(task.attempt, attempt);
        let verdict = s
            .fail(&task, &format!("out of memory #{attempt}"), true)
            .await;
        assert_eq!(verdict, FailVerdict::Retrying);
    }
    let last = s.lease("w3").await.unwrap();
    assert_eq!(
        s.fail(&last, "out of memory #3", true).await,
        FailVerdict::Failed
    );
    let task = s.task(&last.id).await;
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(
        task.errors,
        [
            "attempt 1 on w1: out of memory #1",
            "attempt 2 on w2: out of memory #2",
            "attempt 3 on w3: out of memory #3"
        ]
    );
    assert_eq!(s.job_state("j").await, JobState::Failed);
    let (results, _) = s.backend.results("j", 0, 1).await.unwrap().unwrap();
    assert_eq!(results[0].state, ResultState::Failed);
    assert!(results[0].error.as_deref().unwrap().contains("#3"));

    // A failure that retrying cannot mend ends the task at once.
    s.submit(&job("k", 1, 0, false)).await;
    let task = s.lease("w4").await.unwrap();
    assert_eq!(
        s.fail(&task, "bad prompt", false).await,
        FailVerdict::Failed
    );
}

async fn a_failing_worker_is_kept_off_the_job(s: Store) {
    s.submit(&job("j", 4, 0, false)).await;
    // Two tasks fail on "bad" and then succeed on "good": "bad" was at fault.
    for _ in 0..2 {
        let task = s.lease("bad").await.unwrap();
        let outcome = s
            .backend
            .fail(lease_of(&task), "driver crashed", true, &s.policy, s.now)
            .await
            .unwrap();
        assert_eq!(outcome.verdict, FailVerdict::Retrying);
        assert!(!outcome.banned, "a failure alone proves nothing");
        let again = s.lease("good").await.unwrap();
        assert_eq!(again.id, task.id);
        s.complete(&again).await;
    }
    assert!(s.lease("bad").await.is_none(), "banned after two failures");
    s.submit(&job("other", 1, 0, false)).await;
    let other = s.lease("bad").await.unwrap();
    assert_eq!(other.job, "other", "the ban covers one job only");
    assert_eq!(s.drain("good").await.len(), 2);
    assert_eq!(s.job_state("j").await, JobState::Succeeded);
}

async fn a_poison_task_bans_nobody_and_the_rest_of_its_job_completes(s: Store) {
    s.submit(&job("j", 3, 0, false)).await;
    // The first task fails on every worker until its budget is spent.
    let poison = s.lease("w1").await.unwrap();
    for (attempt, worker) in [(1, "w1"), (2, "w2"), (3, "w1")] {
        let task = if attempt == 1 {
            poison.clone()
        } else {
            s.lease(worker).await.unwrap()
        };
        assert_eq!(
            (task.id.as_str(), task.attempt),
            (poison.id.as_str(), attempt)
        );
        let verdict = s.fail(&task, &format!("poison #{attempt}"), true).await;
        let expected = if attempt < 3 {
            FailVerdict::Retrying
        } else {
            FailVerdict::Failed
        };
        assert_eq!(verdict, expected);
    }
    // Both workers failed it twice or once, yet neither is kept off the job: the task is bad.
    assert_eq!(s.drain("w1").await.len(), 2);
    let record = s.backend.job("j").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Failed);
    assert_eq!((record.units_done, record.units_failed), (2, 1));
    assert_eq!(s.task(&poison.id).await.errors.len(), 3);
}

async fn a_task_that_keeps_expiring_fails(mut s: Store) {
    s.submit(&job("j", 1, 0, false)).await;
    // Three expiries are tolerated (max_expiries), the fourth ends the task.
    for attempt in 1..=4 {
        let task = s.lease(&format!("w{attempt}")).await.unwrap();
        assert_eq!(task.attempt, attempt);
        let now = s.tick(LEASE_MS + 1);
        s.backend.expire(&s.policy, now, 10).await.unwrap();
    }
    assert!(s.lease("w5").await.is_none());
    let task = s.task("j.0.g").await;
    assert_eq!((task.state, task.expiries), (TaskState::Failed, 4));
    assert_eq!(s.job_state("j").await, JobState::Failed);
}

async fn cancelling_reaches_running_tasks(s: Store) {
    s.submit(&job("j", 3, 0, false)).await;
    let running = s.lease("w").await.unwrap();
    assert_eq!(
        s.backend.cancel("j", &s.policy, s.now).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        s.heartbeat(&running, &Progress::default()).await,
        HeartbeatOutcome::Cancelled
    );
    assert_eq!(s.complete(&running).await, CompleteOutcome::Cancelled);
    assert!(s.lease("w").await.is_none());
    let record = s.backend.job("j").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Cancelled);
    assert_eq!(record.counts.active(), 0);
    assert_eq!(
        s.backend.cancel("j", &s.policy, s.now).await.unwrap(),
        CancelOutcome::AlreadyEnded(JobState::Cancelled)
    );
    assert_eq!(
        s.backend.cancel("nope", &s.policy, s.now).await.unwrap(),
        CancelOutcome::NotFound
    );
    let events = s.events("j").await;
    assert!(matches!(
        events.last(),
        Some(EventKind::JobDone {
            state: JobState::Cancelled,
            ..
        })
    ));
}

async fn deregistering_a_worker_requeues_its_task(s: Store) {
    s.submit(&job("j", 1, 0, false)).await;
    s.register("w1", &everything()).await;
    let task = s.lease("w1").await.unwrap();
    assert_eq!(
        s.backend.worker("w1").await.unwrap().unwrap().current_task,
        Some(task.id.clone())
    );
    let released = s
        .backend
        .deregister_worker("w1", &s.policy, s.now)
        .await
        .unwrap();
    assert_eq!(released, std::slice::from_ref(&task.id));
    assert!(s.backend.worker("w1").await.unwrap().is_none());
    let again = s.lease("w2").await.unwrap();
    assert_eq!((again.id, again.attempt), (task.id, 2));
}

async fn events_resume_from_a_cursor(s: Store) {
    s.submit(&job("j", 2, 0, false)).await;
    let task = s.lease("w").await.unwrap();
    let all = s
        .backend
        .events("j", "", 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    s.complete(&task).await;
    let after = s
        .backend
        .events("j", &all[0].cursor, 100, Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(after[0].kind, EventKind::TaskDone { .. }));
    assert_eq!(after.len(), 1);
    let none = s
        .backend
        .events("j", &after[0].cursor, 100, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(none.is_empty());
}

async fn the_state_survives_a_restart(mut s: Store) {
    if s._redis.is_none() && s._dir.is_none() {
        return; // the in-memory store promises nothing across restarts
    }
    s.submit(&job("j", 3, 0, true)).await;
    let done = s.lease("w").await.unwrap();
    s.complete(&done).await;
    let running = s.lease("w").await.unwrap();
    let before = s.backend.job("j").await.unwrap().unwrap();
    s.restart().await;
    assert_eq!(s.backend.job("j").await.unwrap().unwrap(), before);
    assert_eq!(s.complete(&running).await, CompleteOutcome::Accepted);
    s.drain("w").await;
    assert_eq!(s.job_state("j").await, JobState::Succeeded);
}

/// The farm's rates: a worker's first finished task of a class only starts its clock; a task
/// leased ahead is timed from the end of the one before it; classes are kept apart; a class's
/// sums are halved at the window; the rates survive a restart.
async fn rates_time_each_worker_s_tasks_back_to_back_and_forget_slowly(mut s: Store) {
    let sample = |worker: &str, class: &str, amount: u64, started_ms: u64| RateSample {
        worker: worker.into(),
        class: class.into(),
        amount,
        started_ms,
    };
    let b = s.backend.clone();
    assert!(b.rates().await.unwrap().is_empty());
    b.record_rate(&sample("w1", "generate 64x64", 10, 1_000), 2_000)
        .await
        .unwrap();
    assert!(
        b.rates().await.unwrap().is_empty(),
        "model loading is no sample"
    );
    // Leased at 1,500 (ahead), but w1 finished its previous task at 2,000.
    b.record_rate(&sample("w1", "generate 64x64", 10, 1_500), 2_600)
        .await
        .unwrap();
    // The first stitch of each worker warms it up: no sample either.
    b.record_rate(&sample("w1", "stitch", 4096, 3_000), 3_100)
        .await
        .unwrap();
    b.record_rate(&sample("w2", "stitch", 4096, 0), 9_000)
        .await
        .unwrap();
    // Leased at 5,000, after w1 had been idle.
    b.record_rate(&sample("w1", "stitch", 4096, 5_000), 5_030)
        .await
        .unwrap();
    let rates = b.rates().await.unwrap();
    let rate = |ms, amount, samples| Rate {
        ms,
        amount,
        samples,
    };
    assert_eq!(rates["generate 64x64"], rate(600, 10, 1));
    assert_eq!(rates["stitch"], rate(30, 4096, 1));
    assert_eq!(rates.len(), 2);
    let mut now = 10_000;
    for _ in 1..RATE_WINDOW {
        b.record_rate(&sample("w1", "stitch", 4097, now), now + 11)
            .await
            .unwrap();
        now += 11;
    }
    let halved = b.rates().await.unwrap()["stitch"];
    let n = RATE_WINDOW - 1;
    assert_eq!(
        halved,
        rate((30 + 11 * n) / 2, (4096 + 4097 * n) / 2, RATE_WINDOW / 2)
    );
    let before: Rates = b.rates().await.unwrap();
    drop(b);
    if s._redis.is_some() || s._dir.is_some() {
        s.restart().await;
        assert_eq!(s.backend.rates().await.unwrap(), before);
    }
}

/// Two coordinators on one Redis, leasing at the same time: no task is handed out twice.
#[tokio::test]
async fn two_coordinators_never_lease_a_task_twice() {
    let s = Store::redis().await;
    s.submit(&job("j", 120, 0, false)).await;
    let other = s.reopen().await;
    let run = |backend: Arc<dyn StateBackend>, name: &'static str| {
        let policy = s.policy;
        let now = s.now;
        async move {
            let mut got = Vec::new();
            while let Some(t) = backend
                .lease(name, &everything(), &policy, now, LEASE_MS)
                .await
                .unwrap()
            {
                got.push(t.id);
            }
            got
        }
    };
    let workers = [
        tokio::spawn(run(s.backend.clone(), "a")),
        tokio::spawn(run(other.clone(), "b")),
        tokio::spawn(run(s.backend.clone(), "c")),
        tokio::spawn(run(other, "d")),
    ];
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (120, 120));
}

/// Completions racing from two coordinators for the same task: exactly one is accepted.
#[tokio::test]
async fn racing_completions_accept_one() {
    let s = Store::redis().await;
    s.submit(&job("j", 1, 0, true)).await;
    let task = s.lease("w").await.unwrap();
    let other = s.reopen().await;
    let output = output_for(&task);
    let followups = planned::followups(&task, &output);
    let race = |backend: Arc<dyn StateBackend>| {
        let (task, output, followups, policy, now) = (
            task.clone(),
            output.clone(),
            followups.clone(),
            s.policy,
            s.now,
        );
        tokio::spawn(async move {
            backend
                .complete(lease_of(&task), &output, &followups, &policy, now)
                .await
                .unwrap()
        })
    };
    let a = race(s.backend.clone());
    let b = race(other);
    let outcomes: BTreeSet<String> = [a.await.unwrap(), b.await.unwrap()]
        .iter()
        .map(|o| format!("{o:?}"))
        .collect();
    assert_eq!(
        outcomes,
        BTreeSet::from(["Accepted".to_string(), "Duplicate".to_string()])
    );
    let record = s.backend.job("j").await.unwrap().unwrap();
    assert_eq!(record.counts.queued, 4, "the tiles were planned once");
}

async fn tenants_see_their_own_jobs_and_quotas_hold(mut s: Store) {
    let quota = Quota {
        jobs_in_flight: Some(2),
        submissions_per_minute: Some(3),
    };
    // Start at a minute's beginning, so the scenario's ticks stay inside one minute.
    s.now = 60_000 * 1_000;
    s.submit(&tenant_job("a1", "acme", quota)).await;
    s.submit(&tenant_job("a2", "acme", quota)).await;
    s.submit(&tenant_job("o1", "other", quota)).await;
    s.submit(&job("admin", 1, 0, false)).await;

    let refused = s
        .backend
        .create_job(&tenant_job("a3", "acme", quota), s.now)
        .await;
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("'acme'") && message.contains("jobs_in_flight"),
        "{message}"
    );
    assert!(
        s.backend.job("a3").await.unwrap().is_none(),
        "nothing of it was stored"
    );

    // A job that ends no longer counts against the tenant.
    let now = s.tick(1);
    assert_eq!(
        s.backend.cancel("a1", &s.policy, now).await.unwrap(),
        CancelOutcome::Cancelled
    );
    s.submit(&tenant_job("a3", "acme", quota)).await;
    assert_eq!(s.backend.job("a3").await.unwrap().unwrap().tenant, "acme");

    // Three submissions this minute already; the quota holds until the next minute.
    let now = s.tick(1);
    s.backend.cancel("a2", &s.policy, now).await.unwrap();
    let refused = s
        .backend
        .create_job(&tenant_job("a4", "acme", quota), s.now)
        .await;
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("submissions_per_minute"), "{message}");
    s.tick(60_000);
    s.submit(&tenant_job("a4", "acme", quota)).await;

    let ids = |jobs: Vec<tessera_coordinator::state::JobRecord>| -> Vec<String> {
        jobs.into_iter().map(|j| j.id).collect()
    };
    let (acme, total) = s.backend.jobs(Some("acme"), 0, 10).await.unwrap();
    assert_eq!(
        (ids(acme), total),
        (vec!["a4".into(), "a3".into(), "a2".into(), "a1".into()], 4)
    );
    let (page, total) = s.backend.jobs(Some("acme"), 1, 2).await.unwrap();
    assert_eq!((ids(page), total), (vec!["a3".into(), "a2".into()], 4));
    let (other, _) = s.backend.jobs(Some("other"), 0, 10).await.unwrap();
    assert_eq!(ids(other), vec!["o1".to_string()]);
    let (all, total) = s.backend.jobs(None, 0, 10).await.unwrap();
    assert_eq!((all.len(), total), (6, 6));
    assert_eq!(s.backend.job("admin").await.unwrap().unwrap().tenant, "");
}

/// A render's report at iteration 12 of 20 with a checkpoint of iteration 10.
fn checkpointed_at_10() -> (ArtifactRef, Progress) {
    let checkpoint = ArtifactRef {
        key: "checkpoints/j.0.g/1".into(),
        size: 10,
        sha256: "ab".repeat(32),
        width: 0,
        height: 0,
    };
    let progress = Progress {
        iteration: 12,
        iterations: 20,
        loss: Some(0.5),
        checkpoint: Some((checkpoint.clone(), 10)),
        preview: false,
    };
    (checkpoint, progress)
}

/// The source picture a tile reads.
fn source_of(tile: &TaskRecord) -> String {
    match &tile.spec {
        tessera_core::task::TaskSpec::UpscaleTile { source, .. } => source.key.clone(),
        other => panic!("not a tile: {other:?}"),
    }
}

async fn a_corrupt_input_is_made_again_by_the_task_that_made_it(s: Store) {
    s.submit(&job("j", 1, 0, true)).await;
    s.register("w", &everything()).await;
    let render = s.lease("w").await.unwrap();
    s.complete(&render).await;
    let picture = s.task(&render.id).await.output.unwrap();

    // Two tiles find the render's picture corrupt: the render runs again, and both wait for
    // it without a failure counted; a third tile had already finished with it.
    let tile0 = s.lease("w").await.unwrap();
    assert_eq!(source_of(&tile0), picture.key);
    let verdict = s.corrupt(&tile0, &picture.key, Some(&render.id)).await;
    assert_eq!(verdict, FailVerdict::WaitingForInput);
    let tile1 = s.lease("w").await.unwrap();
    let verdict = s.corrupt(&tile1, &picture.key, Some(&render.id)).await;
    assert_eq!(verdict, FailVerdict::WaitingForInput);
    let tile2 = s.lease("w").await.unwrap();
    s.complete(&tile2).await;
    for tile in [&tile0, &tile1] {
        let stored = s.task(&tile.id).await;
        assert_eq!((stored.state, stored.failures), (TaskState::Blocked, 0));
        assert!(stored
            .errors
            .last()
            .unwrap()
            .contains("is corrupt in the artifact store"));
    }
    let record = s.backend.job("j").await.unwrap().unwrap();
    assert_eq!((record.counts.queued, record.counts.done), (2, 1));
    assert_eq!(
        record.ended.total(),
        1,
        "the render no longer counts as ended"
    );

    // The render is leased next (the last tile is queued behind it by then), and its new
    // picture reaches every tile that has not finished.
    let tile3 = s.lease("w").await.unwrap();
    assert_eq!(tile3.kind, TaskKind::UpscaleTile);
    let again = s.lease("w").await.unwrap();
    assert_eq!((again.id.as_str(), again.attempt), (render.id.as_str(), 2));
    s.complete(&again).await;
    let picture2 = s.task(&render.id).await.output.unwrap();
    assert_ne!(picture2.key, picture.key);
    // The last tile still held the old picture when it reported it: queued again with the new.
    let verdict = s.corrupt(&tile3, &picture.key, Some(&render.id)).await;
    assert_eq!(verdict, FailVerdict::Requeued);
    let mut tiles = Vec::new();
    while let Some(tile) = s.lease("w").await {
        if tile.kind == TaskKind::Stitch {
            tiles.push(tile);
            break;
        }
        assert_eq!(source_of(&tile), picture2.key, "{}", tile.id);
        s.complete(&tile).await;
    }
    let stitch = tiles
        .pop()
        .expect("the stitch is queued once its tiles are done");

    // The stitch finds a tile's output corrupt: that tile runs again and the stitch waits.
    let tile_output = stitch.inputs[&0].clone();
    let producer = s.task("j.0.t0").await;
    assert_eq!(
        producer.output.as_ref(),
        Some(&tile_output),
        "tile 0 fills slot 0"
    );
    let verdict = s
        .corrupt(&stitch, &tile_output.key, Some(&producer.id))
        .await;
    assert_eq!(verdict, FailVerdict::WaitingForInput);
    let waiting = s.task(&stitch.id).await;
    assert_eq!(waiting.state, TaskState::Blocked);
    assert!(!waiting.inputs.contains_key(&0));
    let redone = s.lease("w").await.unwrap();
    assert_eq!(redone.id, producer.id);
    s.complete(&redone).await;
    let stitch = s.lease("w").await.unwrap();
    assert_ne!(stitch.inputs[&0], tile_output);
    s.complete(&stitch).await;

    let record = s.backend.job("j").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Succeeded);
    assert_eq!((record.counts.done, record.ended.total()), (6, 6));
    assert_eq!(record.units_done, 1);
    let events = s.events("j").await;
    let redone = events.iter().any(|e| {
        matches!(e, EventKind::TaskRequeued { task, reason, .. }
            if *task == render.id && reason.contains("is corrupt in the artifact store"))
    });
    assert!(redone, "the render's redo is an event");
}

async fn a_corrupt_checkpoint_is_dropped_and_a_corrupt_upload_fails(s: Store) {
    s.submit(&job("j", 1, 0, false)).await;
    let first = s.lease("w1").await.unwrap();
    let (checkpoint, progress) = checkpointed_at_10();
    s.heartbeat(&first, &progress).await;
    let verdict = s.corrupt(&first, &checkpoint.key, None).await;
    assert_eq!(verdict, FailVerdict::Requeued);
    let second = s.lease("w1").await.unwrap();
    assert_eq!(
        (&second.checkpoint, second.checkpoint_iteration),
        (&None, 0)
    );
    assert_eq!(second.failures, 0);

    // A picture no task of the job made (an upload) cannot be made again: the task fails,
    // saying what to do.
    s.submit(&job("k", 1, 0, true)).await;
    s.complete(&second).await;
    let render = s.lease("w1").await.unwrap();
    assert_eq!(render.job, "k");
    s.complete(&render).await;
    let tile = s.lease("w1").await.unwrap();
    let verdict = s.corrupt(&tile, &source_of(&tile), None).await;
    assert_eq!(verdict, FailVerdict::Failed);
    let failed = s.task(&tile.id).await;
    assert_eq!(failed.state, TaskState::Failed);
    assert!(failed.errors.last().unwrap().contains("upload it again"));
    s.drain("w1").await;
    assert_eq!(s.job_state("k").await, JobState::Failed);
}

// The journal on disk: what a crash, an old damaged journal or a second coordinator do to it.

/// A journaled directory holding jobs `j0`..`j{count}`, its store closed, every job still in
/// the journal (none compacted into the snapshot yet).
async fn closed_journal(count: usize) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new().unwrap();
    let backend = EmbeddedBackend::open(dir.path(), "the journal test").unwrap();
    for i in 0..count {
        backend
            .create_job(&job(&format!("j{i}"), 1, 0, false), 1_000)
            .await
            .unwrap();
    }
    drop(backend);
    let journal = dir.path().join("journal.jsonl");
    let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
    assert_eq!(lines, count, "every job is still a journal line");
    (dir, journal)
}

/// The ids of the jobs a store opened on `dir` holds.
async fn job_ids_in(dir: &std::path::Path) -> Vec<String> {
    let backend = EmbeddedBackend::open(dir, "the journal test").unwrap();
    let (jobs, _) = backend.jobs(None, 0, 100).await.unwrap();
    let mut ids: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_last_line_cut_short_by_a_crash_is_dropped_and_the_rest_replayed() {
    let (dir, journal) = closed_journal(3).await;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut file, br#"{"CreateJob":{"job":{"id":"j3","#).unwrap();
    drop(file);
    assert_eq!(job_ids_in(dir.path()).await, ["j0", "j1", "j2"]);
}

#[tokio::test]
async fn a_damaged_line_inside_the_journal_refuses_the_start_naming_file_and_line() {
    let (dir, journal) = closed_journal(3).await;
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1] = "{\"not an operation\": true}";
    std::fs::write(&journal, lines.join("\n") + "\n").unwrap();
    let error = EmbeddedBackend::open(dir.path(), "the journal test")
        .err()
        .expect("the start is refused");
    let message = error.to_string();
    assert!(
        message.contains(&format!("{} line 2", journal.display())),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        lines.join("\n") + "\n",
        "a refused start leaves the journal as it found it"
    );
}

#[tokio::test]
async fn nul_holes_between_records_are_skipped_and_every_record_kept() {
    let (dir, journal) = closed_journal(3).await;
    let text = std::fs::read_to_string(&journal).unwrap();
    let holed = text.replacen('\n', &format!("\n{}", "\0".repeat(4096)), 2);
    std::fs::write(&journal, holed).unwrap();
    assert_eq!(job_ids_in(dir.path()).await, ["j0", "j1", "j2"]);
}

#[tokio::test]
async fn a_second_store_on_one_directory_is_refused_naming_the_first_which_keeps_working() {
    let dir = TempDir::new().unwrap();
    let first = EmbeddedBackend::open(dir.path(), "coordinator A").unwrap();
    let error = EmbeddedBackend::open(dir.path(), "coordinator B")
        .err()
        .expect("the second is refused");
    let message = error.to_string();
    assert!(message.contains("in use by coordinator A"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    first
        .create_job(&job("after", 1, 0, false), 1_000)
        .await
        .unwrap();
    drop(first);
    assert_eq!(job_ids_in(dir.path()).await, ["after"]);
}

/// The webhook outbox (issue 22): a job with a webhook enters it at its first result, is
/// claimed by one deliverer at a time, keeps each event until it is delivered or given up,
/// waits out a failed attempt's backoff, survives a restart, and leaves once its last event is
/// delivered; a report from a delivery whose cursor has moved changes nothing.
async fn the_webhook_outbox_holds_each_event_until_it_is_delivered(mut s: Store) {
    const URL: &str = "https://hooks.example.com/tessera";
    const CLAIM_MS: u64 = 5_000;
    let hooked = NewJob {
        webhook: URL.into(),
        ..job("hk", 2, 0, false)
    };
    s.submit(&hooked).await;
    s.submit(&job("plain", 1, 0, false)).await;
    let status =
        |b: Arc<dyn StateBackend>| async move { b.job("hk").await.unwrap().unwrap().webhook };
    let fresh = WebhookStatus {
        url: URL.into(),
        ..WebhookStatus::default()
    };
    assert_eq!(status(s.backend.clone()).await, fresh);
    assert_eq!(
        s.backend.job("plain").await.unwrap().unwrap().webhook,
        WebhookStatus::default()
    );
    assert!(s.claim(CLAIM_MS).await.is_empty(), "nothing to deliver yet");

    s.drain("w").await;
    let events = s
        .backend
        .events("hk", "", 100, Duration::ZERO)
        .await
        .unwrap();
    let hooks: Vec<String> = events
        .iter()
        .filter(|e| e.kind.is_webhook_event())
        .map(|e| e.cursor.clone())
        .collect();
    assert_eq!(hooks.len(), 3, "two results and the job's end: {events:?}");
    assert!(matches!(
        events.last().unwrap().kind,
        EventKind::JobDone { .. }
    ));
    s.tick(1);
    let first = WebhookClaim {
        job: "hk".into(),
        tenant: String::new(),
        url: URL.into(),
        cursor: String::new(),
        tries: 0,
        failing_since_ms: 0,
    };
    assert_eq!(
        s.claim(CLAIM_MS).await,
        std::slice::from_ref(&first),
        "only the job with a webhook"
    );
    assert!(
        s.claim(CLAIM_MS).await.is_empty(),
        "claimed for {CLAIM_MS} ms"
    );

    // A failed attempt waits out its backoff, a stale report is refused.
    let failed_at = s.now;
    let b = s.backend.clone();
    assert!(b
        .webhook_failed("hk", "", "the receiver answered 500", s.now + 1_000, s.now)
        .await
        .unwrap());
    assert!(!b
        .webhook_failed("hk", &hooks[0], "late", s.now, s.now)
        .await
        .unwrap());
    let waiting = status(b.clone()).await;
    assert_eq!(
        (
            waiting.failures,
            waiting.pending,
            waiting.next_ms,
            waiting.last_error.as_str()
        ),
        (1, true, s.now + 1_000, "the receiver answered 500")
    );
    s.tick(999);
    assert!(s.claim(CLAIM_MS).await.is_empty(), "backing off");
    s.tick(1);
    drop(b); // a journaled directory has one owner at a time
    if s._dir.is_some() || s._redis.is_some() {
        s.restart().await;
    }
    let retried = WebhookClaim {
        tries: 1,
        failing_since_ms: failed_at,
        ..first.clone()
    };
    assert_eq!(s.claim(CLAIM_MS).await, [retried]);

    // Delivered: the next event is due at once; given up: counted and passed; the last one
    // delivered empties the outbox.
    let b = s.backend.clone();
    let delivered = WebhookStep::Delivered;
    assert!(b
        .webhook_advance("hk", "", &hooks[0], &delivered, s.now)
        .await
        .unwrap());
    let next = WebhookClaim {
        cursor: hooks[0].clone(),
        ..first.clone()
    };
    assert_eq!(s.claim(CLAIM_MS).await, [next]);
    let dropped = WebhookStep::Dropped("the receiver answered 410 Gone".into());
    assert!(b
        .webhook_advance("hk", &hooks[0], &hooks[1], &dropped, s.now)
        .await
        .unwrap());
    assert_eq!(s.claim(CLAIM_MS).await.len(), 1);
    assert!(b
        .webhook_advance("hk", &hooks[1], &hooks[2], &delivered, s.now)
        .await
        .unwrap());
    assert!(!b
        .webhook_advance("hk", &hooks[1], &hooks[2], &delivered, s.now)
        .await
        .unwrap());
    let done = WebhookStatus {
        delivered: 2,
        failures: 2,
        dropped: 1,
        last_error: "the receiver answered 410 Gone".into(),
        ..fresh
    };
    assert_eq!(status(b).await, done);
    s.tick(CLAIM_MS * 10);
    assert!(
        s.claim(CLAIM_MS).await.is_empty(),
        "every event is delivered or given up"
    );
}

impl Store {
    async fn claim(&self, claim_ms: u64) -> Vec<WebhookClaim> {
        self.backend
            .webhook_claim(self.now, 10, claim_ms)
            .await
            .unwrap()
    }
}
