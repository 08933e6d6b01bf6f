//! The differential test of the two state machines: random sequences of operations (submit,
//! register, lease, heartbeat, complete, fail, redo an input, expire, cancel, deregister, a
//! rate sample, a webhook delivery, and the clock moving) are applied to the embedded backend,
//! whose `Model` is the reference, and to Redis, whose Lua scripts run on a real
//! `redis-server` started by the harness. Every answer is
//! compared, and after every step so is everything that can be read back: jobs (whole lists,
//! pages and per tenant), results, every task, workers, farm stats, the farm's rates and every
//! job's events (whole, and resumed from a cursor).
//!
//! Time is a simulated clock passed to every transition, so leases expire when the test moves
//! the clock past them and nothing races a real one. Each seed draws its own policy, worker
//! capabilities and operations from `StdRng::seed_from_u64(seed)`, so a seed is a complete,
//! replayable scenario; a divergence panics naming the seed, the step and the operations that
//! led to it, and how to replay it.
//!
//! Environment (all optional): `TESSERA_DIFF_SEEDS` seeds to run (default 50),
//! `TESSERA_DIFF_OPS` operations per seed (default 200), `TESSERA_DIFF_FIRST` the first seed
//! (default 0), `TESSERA_DIFF_SEED` one seed only (a replay). The defaults make 10,000
//! operations per run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tessera_coordinator::state::embedded::EmbeddedBackend;
use tessera_coordinator::state::redis::RedisBackend;
use tessera_coordinator::state::{
    Event, JobState, LeaseRef, NewJob, Policy, Progress, Quota, RateSample, StateBackend,
    StateError, TaskRecord, TaskState, WebhookStep, WorkerRecord,
};
use tessera_coordinator::store::producer_of;
use tessera_core::job::{InputImage, JobRequest, JobSource};
use tessera_core::sweep::Sweep;
use tessera_core::task::{ArtifactRef, Capabilities, TaskKind, TaskSpec};
use tessera_tests::RedisServer;

mod planned;

/// Operations per seed and seeds per run when the environment does not say.
const DEFAULT_OPS: usize = 200;
const DEFAULT_SEEDS: u64 = 50;
/// Steps between reads of every job's tasks, results and events (the others read only those
/// of the jobs the step touched), and the last step of each seed does it too.
const SWEEP_EVERY: usize = 25;
/// Workers a scenario draws from (some never register: leasing does not require it).
const WORKERS: usize = 5;
/// Tenants a scenario draws from ("" is an open farm's).
const TENANTS: [&str; 3] = ["", "acme", "zenith"];

/// Which seeds to run and how long.
struct Run {
    seeds: Vec<u64>,
    ops: usize,
}

impl Run {
    fn from_env() -> Run {
        let var = |name: &str| {
            std::env::var(name).ok().map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
            })
        };
        let ops = var("TESSERA_DIFF_OPS").map_or(DEFAULT_OPS, |n| n as usize);
        let seeds = match var("TESSERA_DIFF_SEED") {
            Some(seed) => vec![seed],
            None => {
                let first = var("TESSERA_DIFF_FIRST").unwrap_or(0);
                (first..first + var("TESSERA_DIFF_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
            }
        };
        Run { seeds, ops }
    }
}

#[tokio::test]
async fn the_embedded_model_and_redis_agree_on_random_operations() {
    let run = Run::from_env();
    let redis = RedisServer::start().unwrap();
    let started = std::time::Instant::now();
    for &seed in &run.seeds {
        let redis_backend = RedisBackend::connect(&redis.url(), &format!("diff{seed}:"))
            .await
            .unwrap();
        let mut scenario = Scenario::new(seed, redis_backend);
        for step in 0..run.ops {
            if let Err(divergence) = scenario.step(step, step + 1 == run.ops).await {
                panic!(
                    "the backends diverged: seed {seed}, step {step}\n{divergence}\n\n\
                     operations of seed {seed} so far:\n{}\n\nreplay with \
                     TESSERA_DIFF_SEED={seed} TESSERA_DIFF_OPS={} cargo test -p \
                     tessera-coordinator --test differential",
                    scenario.log.join("\n"),
                    step + 1,
                );
            }
        }
    }
    eprintln!(
        "differential: {} seeds x {} operations agreed in {:.1?}",
        run.seeds.len(),
        run.ops,
        started.elapsed()
    );
}

/// Redis state from before the key vocabulary (`state/keys.rs`): every key under the prefix
/// `old:` as commands that write it again, dumped by the code of commit 952576d after the first
/// 150 operations of seed 3, with what the embedded model read back then (`view`, of `jobs`
/// and `tasks`, probed as [`old_state_probe`] says).
#[derive(serde::Deserialize)]
struct OldState {
    jobs: Vec<String>,
    tasks: Vec<String>,
    view: View,
    commands: Vec<Vec<String>>,
}

/// The read-back the old state's `view` was made with.
fn old_state_probe(jobs: &[String]) -> Probe {
    Probe {
        everything: true,
        page: (1, 2),
        resume: (jobs[0].clone(), 2, 3),
    }
}

#[tokio::test]
async fn redis_state_stored_before_the_key_vocabulary_still_loads_and_runs() {
    let old: OldState =
        serde_json::from_str(include_str!("fixtures/redis_state_before_keys.json")).unwrap();
    let redis = RedisServer::start().unwrap();
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for command in &old.commands {
        let mut cmd = ::redis::cmd(&command[0]);
        for arg in &command[1..] {
            cmd.arg(arg);
        }
        cmd.query_async::<::redis::Value>(&mut conn).await.unwrap();
    }
    let backend = RedisBackend::connect(&redis.url(), "old:").await.unwrap();
    let probe = old_state_probe(&old.jobs);
    let view = View::read(&backend, &old.jobs, &old.tasks, &probe)
        .await
        .unwrap();
    if let Err(difference) = old.view.diff(&view) {
        panic!("the old state reads back otherwise: {difference}");
    }

    // It still runs: the old leases expire, and workers that do everything finish every job.
    let (policy, now) = (Policy::default(), 2_000_000_000_000);
    backend.expire(&policy, now, 1_000).await.unwrap();
    let workers: Vec<Capabilities> = ["cuda:1", "cpu"]
        .into_iter()
        .map(|device| {
            Capabilities {
                kinds: TaskKind::ALL.to_vec(),
                models: planned::all_models(),
                device: device.into(),
                ..Capabilities::default()
            }
            .normalised()
            .unwrap()
        })
        .collect();
    let mut leased = true;
    while leased {
        leased = false;
        for caps in &workers {
            let worker = format!("drain-{}", caps.device);
            let lease = backend.lease(&worker, caps, &policy, now, 1_000).await;
            if let Some(task) = lease.unwrap() {
                let output = planned::output_for(&task, "out.png");
                let followups = planned::followups(&task, &output);
                let lease = LeaseRef {
                    task: &task.id,
                    attempt: task.attempt,
                    worker: &worker,
                };
                let done = backend.complete(lease, &output, &followups, &policy, now);
                assert_eq!(format!("{:?}", done.await.unwrap()), "Accepted");
                leased = true;
            }
        }
    }
    let (jobs, _) = backend.jobs(None, 0, 100).await.unwrap();
    assert!(!jobs.is_empty());
    for job in jobs {
        assert_ne!(job.state, JobState::Running, "{job:?}");
    }
}

/// A job as the generator draws it; [`JobShape::plan`] makes the `NewJob`.
#[derive(Clone, Debug)]
struct JobShape {
    id: String,
    prompts: usize,
    priority: i32,
    upscale: bool,
    /// An upscale-only job of an uploaded picture instead of prompts.
    images: bool,
    device: Option<&'static str>,
    tenant: &'static str,
    quota: Quota,
    /// Whether it has a webhook, so its results and end go through the outbox.
    webhook: bool,
}

impl JobShape {
    fn plan(&self) -> NewJob {
        let upscale = self.upscale || self.images;
        let source = if self.images {
            JobSource::Images(
                (0..self.prompts)
                    .map(|i| InputImage {
                        name: format!("in{i}.png"),
                        artifact: ArtifactRef {
                            key: format!("uploads/{}/{i}/in.png", self.id),
                            size: 10,
                            sha256: "cd".repeat(32),
                            width: 64,
                            height: 64,
                        },
                    })
                    .collect(),
            )
        } else {
            planned::prompts(self.prompts)
        };
        let request = JobRequest {
            name: format!("{} job", self.id),
            priority: self.priority,
            settings: planned::small_settings(upscale, self.device),
            seeds: vec![7],
            source,
            // Two-prompt jobs sweep a setting, so results carry sweep values.
            sweeps: (self.prompts == 2 && !self.images)
                .then(|| Sweep::parse("cutn=8,16").unwrap())
                .into_iter()
                .collect(),
        };
        let mut job = planned::new_job(&self.id, request, self.tenant, self.quota);
        if self.webhook {
            job.webhook = format!("https://hooks.example.com/{}", self.id);
        }
        job
    }
}

/// One random operation. Leases are indexes into [`Scenario::leases`], every lease handed out
/// so far, so late and duplicate reports are drawn as well as current ones.
#[derive(Clone, Debug)]
enum Op {
    Submit(JobShape),
    Register(usize),
    Deregister(usize),
    Lease {
        worker: usize,
        lease_ms: u64,
    },
    Heartbeat {
        lease: Held,
        progress: Progress,
        lease_ms: u64,
    },
    Complete {
        lease: Held,
        /// Whether the output's file name holds characters JSON escapes.
        odd_name: bool,
    },
    Fail {
        lease: Held,
        error: String,
        retryable: bool,
    },
    RedoInput {
        lease: Held,
        key: String,
        producer: Option<String>,
    },
    Expire {
        limit: usize,
    },
    Cancel(String),
    SetPriority {
        job: String,
        priority: i32,
    },
    Pause(String),
    Resume(String),
    Release(Held),
    RecordRate(RateSample),
    /// Claims the jobs whose webhook events are due, and reports on the first one.
    Webhook {
        claim_ms: u64,
        report: HookReport,
    },
}

/// What a webhook delivery reports after its claim.
#[derive(Clone, Copy, Debug)]
enum HookReport {
    /// Nothing: it dies, and its claim must run out.
    Nothing,
    /// The receiver accepted the next webhook event (or none was left: passed over).
    Delivered,
    /// The attempt failed; retried this many ms later.
    Failed(u64),
    /// The event is given up.
    Dropped,
    /// A delivery whose cursor has moved since reports, and is refused.
    Stale,
}

/// A lease a report names: one handed out, possibly claimed by the wrong worker.
#[derive(Clone, Copy, Debug)]
struct Held {
    index: usize,
    impostor: bool,
}

/// One seed's scenario: the two backends, the clock and what the generator draws from.
struct Scenario {
    rng: StdRng,
    model: EmbeddedBackend,
    redis: RedisBackend,
    policy: Policy,
    now: u64,
    caps: Vec<Capabilities>,
    jobs: Vec<String>,
    /// Every task id ever planned, in order (some never stored: their job was refused).
    tasks: Vec<String>,
    leases: Vec<TaskRecord>,
    /// Every artifact key a task output, with that task.
    outputs: BTreeMap<String, String>,
    log: Vec<String>,
}

impl Scenario {
    fn new(seed: u64, redis: RedisBackend) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed);
        let policy = Policy {
            max_retries: rng.gen_range(0..=2),
            max_expiries: rng.gen_range(0..=2),
            ban_after: rng.gen_range(0..=2),
            events_max: *[3, 12, 10_000].choose(&mut rng).unwrap(),
        };
        let caps = (0..WORKERS).map(|_| capabilities(&mut rng)).collect();
        Scenario {
            rng,
            model: EmbeddedBackend::in_memory(),
            redis,
            policy,
            now: 1_700_000_000_000,
            caps,
            jobs: Vec::new(),
            tasks: Vec::new(),
            leases: Vec::new(),
            outputs: BTreeMap::new(),
            log: vec![format!("policy {policy:?}")],
        }
    }

    /// Draws one operation, applies it to both backends and compares answers and state.
    async fn step(&mut self, step: usize, last: bool) -> Result<(), String> {
        self.now += self.rng.gen_range(0..=1_500);
        let op = self.draw().await;
        self.log.push(format!("{step:4} now={} {op:?}", self.now));
        let (model, redis) = self.apply(&op).await;
        if model != redis {
            return Err(format!(
                "operation {op:?} answered\n  embedded: {model}\n  redis:    {redis}"
            ));
        }
        let touched = self.touched(&op, &model);
        self.compare(touched, last || step.is_multiple_of(SWEEP_EVERY))
            .await
    }

    /// The jobs an operation may have changed the tasks, results or events of: the job of the
    /// task it names, leased, requeued or expired, or the job it submits or cancels. Nothing
    /// else changes them: a transition only touches the tasks of one job (counts and queue
    /// positions of every job are in the job list, compared at every step).
    fn touched(&self, op: &Op, answer: &str) -> BTreeSet<String> {
        let mut jobs = BTreeSet::new();
        match op {
            Op::Submit(shape) => {
                jobs.insert(shape.id.clone());
            }
            Op::Cancel(job) | Op::Pause(job) | Op::Resume(job) | Op::SetPriority { job, .. } => {
                jobs.insert(job.clone());
            }
            Op::Heartbeat { lease, .. }
            | Op::Release(lease)
            | Op::Complete { lease, .. }
            | Op::Fail { lease, .. }
            | Op::RedoInput { lease, .. } => {
                jobs.insert(self.leases[lease.index].job.clone());
            }
            Op::RecordRate(_) | Op::Webhook { .. } => {}
            Op::Lease { .. } | Op::Expire { .. } | Op::Deregister(_) | Op::Register(_) => {
                // The answer names the tasks leased or queued again, each id led by its job's.
                for job in &self.jobs {
                    if answer.contains(&format!("\"{job}.")) {
                        jobs.insert(job.clone());
                    }
                }
            }
        }
        jobs
    }

    /// A random operation, weighted towards the lease life cycle.
    async fn draw(&mut self) -> Op {
        let live = self.live_leases().await;
        let choice = self.rng.gen_range(0..100);
        let lease = if self.leases.is_empty() {
            None
        } else {
            Some(self.pick_lease(&live))
        };
        match (choice, lease) {
            (0..=7, _) => Op::Submit(self.shape()),
            (8..=11, _) => Op::Register(self.rng.gen_range(0..WORKERS)),
            (12..=13, _) => Op::Deregister(self.rng.gen_range(0..WORKERS)),
            (14..=19, _) => {
                // Moves the clock far enough for some leases to end first, or exactly to the
                // end of one (a lease ends at its deadline, not after it).
                let deadline = live.iter().map(|&(_, d)| d).filter(|&d| d > self.now).min();
                match deadline {
                    Some(d) if self.rng.gen_bool(0.5) => self.now = d,
                    _ => self.now += self.rng.gen_range(0..=20_000),
                }
                Op::Expire {
                    limit: *[0, 1, 2, 100].choose(&mut self.rng).unwrap(),
                }
            }
            (20..=21, _) => Op::Cancel(self.some_job()),
            (22..=23, _) => {
                let job = self.some_job();
                match self.rng.gen_range(0..3) {
                    0 => Op::Pause(job),
                    1 => Op::Resume(job),
                    _ => Op::SetPriority {
                        job,
                        priority: self.rng.gen_range(-1..=2),
                    },
                }
            }
            (24..=25, _) => {
                // Across a clock minute, for the submission quotas.
                self.now += self.rng.gen_range(20_000..=70_000);
                Op::Expire { limit: 0 }
            }
            (26..=39, Some(lease)) => Op::Heartbeat {
                lease,
                progress: self.progress(lease.index),
                lease_ms: *[1_000, 5_000, 10_000].choose(&mut self.rng).unwrap(),
            },
            (40..=59, Some(lease)) => Op::Complete {
                lease,
                odd_name: self.rng.gen_bool(0.1),
            },
            (60..=69, Some(lease)) => Op::Fail {
                lease,
                error: ["CUDA out of memory", "bad \"input\"\n", "é"]
                    .choose(&mut self.rng)
                    .unwrap()
                    .to_string(),
                retryable: self.rng.gen_bool(0.8),
            },
            (78..=80, Some(lease)) => Op::Release(lease),
            (81..=84, _) => Op::RecordRate(self.rate_sample()),
            (85..=89, _) => Op::Webhook {
                claim_ms: *[0, 2_000, 30_000].choose(&mut self.rng).unwrap(),
                report: match self.rng.gen_range(0..10) {
                    0 => HookReport::Nothing,
                    1..=5 => HookReport::Delivered,
                    6..=7 => HookReport::Failed(self.rng.gen_range(0..=5_000)),
                    8 => HookReport::Dropped,
                    _ => HookReport::Stale,
                },
            },
            (70..=77, Some(lease)) => {
                let (key, producer) = self.corrupt_input(lease.index);
                Op::RedoInput {
                    lease,
                    key,
                    producer,
                }
            }
            _ => Op::Lease {
                worker: self.rng.gen_range(0..WORKERS),
                lease_ms: *[1_000, 5_000, 10_000].choose(&mut self.rng).unwrap(),
            },
        }
    }

    /// A finished task's rate sample: a few classes, leases begun before or after the
    /// worker's previous sample, now and then amounts that halve a class's sums sooner.
    fn rate_sample(&mut self) -> RateSample {
        RateSample {
            worker: worker_id(self.rng.gen_range(0..WORKERS)),
            class: ["generate 64x64", "upscale_tile m", "stitch"]
                .choose(&mut self.rng)
                .unwrap()
                .to_string(),
            amount: self.rng.gen_range(1..=70_000),
            started_ms: self.now.saturating_sub(self.rng.gen_range(0..=4_000)),
        }
    }

    /// A job submitted before (or one that does not exist, while none was).
    fn some_job(&mut self) -> String {
        self.jobs
            .choose(&mut self.rng)
            .cloned()
            .unwrap_or_else(|| "nope".into())
    }

    /// Indexes of the leases that still hold their task (by the embedded backend).
    /// With the deadline each lease has now.
    async fn live_leases(&self) -> Vec<(usize, u64)> {
        let mut live = Vec::new();
        for (i, lease) in self.leases.iter().enumerate() {
            let stored = self.model.task(&lease.id).await.unwrap();
            if let Some(t) = stored.filter(|t| {
                t.state == TaskState::Running
                    && t.attempt == lease.attempt
                    && t.worker == lease.worker
            }) {
                live.push((i, t.deadline_ms));
            }
        }
        live
    }

    /// Mostly a lease that holds its task; sometimes any lease, or the wrong worker's claim.
    fn pick_lease(&mut self, live: &[(usize, u64)]) -> Held {
        let index = match live.choose(&mut self.rng) {
            Some(&(i, _)) if self.rng.gen_bool(0.8) => i,
            _ => self.rng.gen_range(0..self.leases.len()),
        };
        Held {
            index,
            impostor: self.rng.gen_bool(0.03),
        }
    }

    fn shape(&mut self) -> JobShape {
        let rng = &mut self.rng;
        let limit = |rng: &mut StdRng| rng.gen_bool(0.3).then(|| rng.gen_range(1..=2));
        let quota = Quota {
            jobs_in_flight: limit(rng),
            submissions_per_minute: limit(rng),
        };
        // Now and then an id already taken.
        let id = match self.jobs.choose(rng) {
            Some(taken) if rng.gen_bool(0.05) => taken.clone(),
            _ => format!("j{}", self.jobs.len()),
        };
        let shape = JobShape {
            id,
            prompts: rng.gen_range(1..=2),
            priority: rng.gen_range(0..=2),
            upscale: rng.gen_bool(0.6),
            images: rng.gen_bool(0.15),
            device: *[None, None, Some("cuda"), Some("cuda:1"), Some("cpu")]
                .choose(rng)
                .unwrap(),
            tenant: TENANTS.choose(rng).unwrap(),
            quota,
            webhook: rng.gen_bool(0.5),
        };
        if !self.jobs.contains(&shape.id) {
            self.jobs.push(shape.id.clone());
        }
        shape
    }

    fn progress(&mut self, lease: usize) -> Progress {
        let r = &self.leases[lease];
        let rng = &mut self.rng;
        let iteration = rng.gen_range(0..=20);
        let checkpoint = rng.gen_bool(0.4).then(|| {
            let at = rng.gen_range(0..=iteration);
            let key = format!("jobs/{}/{}/{}/ckpt-{at}.pt", r.job, r.id, r.attempt);
            (
                ArtifactRef {
                    key,
                    size: 10,
                    sha256: "ab".repeat(32),
                    width: 0,
                    height: 0,
                },
                at,
            )
        });
        Progress {
            iteration,
            iterations: 20,
            loss: *[None, Some(0.25), Some(1.5e-3)].choose(rng).unwrap(),
            checkpoint,
            preview: rng.gen_bool(0.3),
        }
    }

    /// An input a worker could call corrupt: one the lease holds (a consumed output, the tile's
    /// source, the checkpoint) or any other key, with the task that made it as the coordinator
    /// finds it from the key, or none, or the wrong one.
    fn corrupt_input(&mut self, lease: usize) -> (String, Option<String>) {
        let r = &self.leases[lease];
        let mut held: Vec<String> = r.inputs.values().map(|a| a.key.clone()).collect();
        if let TaskSpec::UpscaleTile { source, .. } = &r.spec {
            held.push(source.key.clone());
        }
        held.extend(r.checkpoint.iter().map(|c| c.key.clone()));
        held.extend(
            self.outputs
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .choose(&mut self.rng)
                .cloned(),
        );
        held.push(format!("jobs/{}/nobody/1/out.png", r.job));
        let key = held.choose(&mut self.rng).unwrap().clone();
        let producer = match self.rng.gen_range(0..10) {
            0 => None,
            1 => self.tasks.choose(&mut self.rng).cloned(),
            _ => producer_of(&key).map(str::to_string),
        };
        (key, producer)
    }

    /// The lease a report names, as the reporting worker states it.
    fn lease_ref(&self, held: Held) -> LeaseRef<'_> {
        let r = &self.leases[held.index];
        LeaseRef {
            task: &r.id,
            attempt: r.attempt,
            worker: if held.impostor { "impostor" } else { &r.worker },
        }
    }

    /// Applies `op` to both backends; their answers, as text.
    async fn apply(&mut self, op: &Op) -> (String, String) {
        let (p, now) = (self.policy, self.now);
        let backends: [&dyn StateBackend; 2] = [&self.model, &self.redis];
        let mut answers = Vec::with_capacity(2);
        match op {
            Op::Submit(shape) => {
                let job = shape.plan();
                self.tasks.extend(job.tasks.iter().map(|t| t.id.clone()));
                for b in backends {
                    answers.push(show(b.create_job(&job, now).await));
                }
            }
            Op::Register(w) => {
                let record = WorkerRecord {
                    id: worker_id(*w),
                    name: format!("host {w}"),
                    capabilities: self.caps[*w].clone(),
                    version: "test".into(),
                    registered_ms: now,
                    last_seen_ms: now,
                    current_task: None,
                    ahead_task: None,
                    tasks_done: 0,
                };
                for b in backends {
                    answers.push(show(b.register_worker(&record).await));
                }
            }
            Op::Deregister(w) => {
                for b in backends {
                    answers.push(show(b.deregister_worker(&worker_id(*w), &p, now).await));
                }
            }
            Op::Lease { worker, lease_ms } => {
                let (id, caps) = (worker_id(*worker), &self.caps[*worker]);
                let mut leased = Vec::new();
                for b in backends {
                    let answer = b.lease(&id, caps, &p, now, *lease_ms).await;
                    answers.push(show(&answer));
                    leased.push(answer);
                }
                if let Ok(Some(task)) = leased.swap_remove(0) {
                    self.leases.push(task);
                }
            }
            Op::Heartbeat {
                lease,
                progress,
                lease_ms,
            } => {
                let l = self.lease_ref(*lease);
                for b in backends {
                    answers.push(show(b.heartbeat(l, progress, &p, now, *lease_ms).await));
                }
            }
            Op::Complete { lease, odd_name } => {
                let task = &self.leases[lease.index];
                // A file name JSON escapes tests that scripts compare keys, not JSON text.
                let name = if *odd_name { "o\"dd\\.png" } else { "out.png" };
                let output = planned::output_for(task, name);
                let followups = planned::followups(task, &output);
                let l = self.lease_ref(*lease);
                for b in backends {
                    answers.push(show(b.complete(l, &output, &followups, &p, now).await));
                }
                self.outputs.insert(output.key.clone(), task.id.clone());
                self.tasks.extend(followups.iter().map(|t| t.id.clone()));
            }
            Op::Fail {
                lease,
                error,
                retryable,
            } => {
                let l = self.lease_ref(*lease);
                for b in backends {
                    answers.push(show(b.fail(l, error, *retryable, &p, now).await));
                }
            }
            Op::RedoInput {
                lease,
                key,
                producer,
            } => {
                let l = self.lease_ref(*lease);
                for b in backends {
                    let producer = producer.as_deref();
                    answers.push(show(b.redo_input(l, key, producer, &p, now).await));
                }
            }
            Op::Expire { limit } => {
                for b in backends {
                    answers.push(show(b.expire(&p, now, *limit).await));
                }
            }
            Op::Cancel(job) => {
                for b in backends {
                    answers.push(show(b.cancel(job, &p, now).await));
                }
            }
            Op::SetPriority { job, priority } => {
                for b in backends {
                    answers.push(show(b.set_priority(job, *priority, &p, now).await));
                }
            }
            Op::Pause(job) => {
                for b in backends {
                    answers.push(show(b.pause(job, &p, now).await));
                }
            }
            Op::Resume(job) => {
                for b in backends {
                    answers.push(show(b.resume(job, &p, now).await));
                }
            }
            Op::Release(lease) => {
                let l = self.lease_ref(*lease);
                for b in backends {
                    answers.push(show(b.release(l, &p, now).await));
                }
            }
            Op::RecordRate(sample) => {
                for b in backends {
                    answers.push(show(b.record_rate(sample, now).await));
                }
            }
            Op::Webhook { claim_ms, report } => {
                for b in backends {
                    answers.push(webhook_delivery(b, now, *claim_ms, *report).await);
                }
            }
        }
        let redis = answers.pop().unwrap();
        (answers.pop().unwrap(), redis)
    }

    /// Reads back from both backends and names the first difference: the job list, workers and
    /// stats always, and the tasks, results and events of the `touched` jobs, or of every job
    /// when `everything`.
    async fn compare(&mut self, touched: BTreeSet<String>, everything: bool) -> Result<(), String> {
        let jobs: Vec<String> = if everything {
            self.jobs.clone()
        } else {
            touched.into_iter().collect()
        };
        let of_jobs: BTreeSet<String> = jobs.iter().map(|j| format!("{j}.")).collect();
        let tasks: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| of_jobs.iter().any(|j| t.starts_with(j.as_str())))
            .cloned()
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        let probe = Probe {
            everything,
            page: (self.rng.gen_range(0..4), self.rng.gen_range(0..4)),
            resume: (
                jobs.choose(&mut self.rng).cloned().unwrap_or_default(),
                self.rng.gen_range(0..6),
                self.rng.gen_range(1..4),
            ),
        };
        let model = View::read(&self.model, &jobs, &tasks, &probe).await?;
        let redis = View::read(&self.redis, &jobs, &tasks, &probe).await?;
        model.diff(&redis)
    }
}

fn worker_id(index: usize) -> String {
    format!("w{index}")
}

/// A worker's capabilities: all or some kinds, devices that match some jobs and not others,
/// with or without the models and a size limit.
fn capabilities(rng: &mut StdRng) -> Capabilities {
    let mut models = planned::all_models();
    let kinds = match rng.gen_range(0..4) {
        0 => vec![TaskKind::Generate],
        1 => vec![TaskKind::UpscaleTile, TaskKind::Stitch],
        _ => TaskKind::ALL.to_vec(),
    };
    if rng.gen_bool(0.15) {
        models.clear();
    }
    Capabilities {
        kinds,
        models,
        device: ["cpu", "cuda:0", "cuda:1", "cuda:10", "cuda"]
            .choose(rng)
            .unwrap()
            .to_string(),
        max_pixels: *[0, 0, 5_000, 70_000].choose(rng).unwrap(),
        // Renders are 64x64 of 20 iterations: some workers are too small or too short.
        max_side: *[0, 0, 48, 64].choose(rng).unwrap(),
        max_iterations: *[0, 0, 10, 20].choose(rng).unwrap(),
    }
    .normalised()
    .unwrap()
}

/// An answer as text, errors by their message (`StateError` has no equality).
fn show<T: Debug>(answer: impl std::borrow::Borrow<Result<T, StateError>>) -> String {
    match answer.borrow() {
        Ok(value) => format!("{value:?}"),
        Err(e) => format!("error: {e}"),
    }
}

/// The random parts of a read-back, drawn once and used on both backends: a page of the job
/// list (offset, limit), and a job's events resumed after its n-th event (job, n, max); the
/// listings per tenant only when `everything` is read.
struct Probe {
    everything: bool,
    page: (usize, usize),
    resume: (String, usize, usize),
}

/// Everything a backend answers about its state.
#[derive(Debug, PartialEq, serde::Deserialize)]
struct View {
    jobs: Vec<String>,
    page: Vec<String>,
    per_tenant: Vec<String>,
    results: Vec<String>,
    tasks: Vec<String>,
    workers: Vec<String>,
    stats: Vec<String>,
    events: Vec<String>,
    resumed: Vec<String>,
    /// The farm's rates, one line per class (none in state stored before them).
    #[serde(default)]
    rates: Vec<String>,
}

impl View {
    async fn read(
        b: &dyn StateBackend,
        jobs: &[String],
        tasks: &[String],
        probe: &Probe,
    ) -> Result<View, String> {
        let all = b.jobs(None, 0, 1_000).await;
        let (offset, limit) = probe.page;
        let mut view = View {
            jobs: lines(&all),
            page: vec![show(b.jobs(None, offset, limit).await)],
            per_tenant: Vec::new(),
            results: Vec::new(),
            tasks: Vec::new(),
            workers: lines(&b.workers().await),
            stats: vec![show(b.stats().await)],
            events: Vec::new(),
            resumed: Vec::new(),
            rates: match b.rates().await {
                Ok(rates) => rates.iter().map(|(c, r)| format!("{c}: {r:?}")).collect(),
                Err(e) => vec![format!("error: {e}")],
            },
        };
        for tenant in TENANTS.iter().filter(|_| probe.everything) {
            view.per_tenant
                .push(show(b.jobs(Some(tenant), 0, 1_000).await));
        }
        for job in jobs.iter().map(String::as_str).chain(["nope"]) {
            view.results
                .push(format!("{job}: {}", show(b.results(job, 0, 100).await)));
            view.results
                .push(format!("{job} [1..]: {}", show(b.results(job, 1, 1).await)));
            let events = b.events(job, "", 100_000, Duration::ZERO).await;
            let events = events.map_err(|e| format!("events of {job}: {e}"))?;
            check_cursors(job, &events)?;
            view.events.extend(
                normalised(&events)
                    .into_iter()
                    .map(|e| format!("{job}: {e:?}")),
            );
            let (resume_job, n, max) = &probe.resume;
            if job == resume_job {
                if let Some(after) = events.get(*n) {
                    let resumed = b.events(job, &after.cursor, *max, Duration::ZERO).await;
                    let resumed = resumed.map_err(|e| format!("events of {job}: {e}"))?;
                    view.resumed = normalised(&resumed)
                        .into_iter()
                        .map(|e| format!("{job} after event {n}: {e:?}"))
                        .collect();
                }
            }
        }
        for id in tasks.iter().map(String::as_str).chain(["nope.0.g"]) {
            view.tasks.push(format!("{id}: {}", show(b.task(id).await)));
        }
        Ok(view)
    }

    /// The first field and line where two views differ, both sides shown.
    fn diff(&self, redis: &View) -> Result<(), String> {
        let fields = [
            ("jobs", &self.jobs, &redis.jobs),
            ("job page", &self.page, &redis.page),
            ("jobs per tenant", &self.per_tenant, &redis.per_tenant),
            ("results", &self.results, &redis.results),
            ("tasks", &self.tasks, &redis.tasks),
            ("workers", &self.workers, &redis.workers),
            ("stats", &self.stats, &redis.stats),
            ("events", &self.events, &redis.events),
            ("resumed events", &self.resumed, &redis.resumed),
            ("rates", &self.rates, &redis.rates),
        ];
        for (name, model, redis) in fields {
            if model == redis {
                continue;
            }
            let at = model
                .iter()
                .zip(redis.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(model.len().min(redis.len()));
            let none = String::from("(nothing)");
            return Err(format!(
                "{name} differ at line {at} ({} lines embedded, {} redis)\n  embedded: {}\n  \
                 redis:    {}",
                model.len(),
                redis.len(),
                model.get(at).unwrap_or(&none),
                redis.get(at).unwrap_or(&none),
            ));
        }
        Ok(())
    }
}

/// One line per record, so a difference names the record.
fn lines<T: IntoLines>(answer: &Result<T, StateError>) -> Vec<String> {
    match answer {
        Ok(value) => value.lines(),
        Err(e) => vec![format!("error: {e}")],
    }
}

/// Splits a read into its records.
trait IntoLines {
    fn lines(&self) -> Vec<String>;
}

impl<T: Debug> IntoLines for Vec<T> {
    fn lines(&self) -> Vec<String> {
        self.iter().map(|r| format!("{r:?}")).collect()
    }
}

impl<T: Debug> IntoLines for (Vec<T>, u64) {
    fn lines(&self) -> Vec<String> {
        let mut lines = self.0.lines();
        lines.push(format!("total {}", self.1));
        lines
    }
}

/// Cursors are each backend's own tokens (the embedded one counts events, Redis names stream
/// entries `ms-seq` by its own wall clock), so they cannot be equal; what callers rely on is
/// that they increase along a job's events and that resuming after one returns what follows
/// it, which [`check_cursors`] and the resumed read check. Only the cursor is blanked.
fn normalised(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .map(|e| Event {
            cursor: String::new(),
            ..e.clone()
        })
        .collect()
}

/// Fails unless a job's cursors increase strictly.
fn check_cursors(job: &str, events: &[Event]) -> Result<(), String> {
    let order = |cursor: &str| -> (u64, u64) {
        let (a, b) = cursor.split_once('-').unwrap_or((cursor, "0"));
        (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
    };
    for pair in events.windows(2) {
        if order(&pair[0].cursor) >= order(&pair[1].cursor) {
            return Err(format!(
                "cursors of job {job} do not increase: {} then {}",
                pair[0].cursor, pair[1].cursor
            ));
        }
    }
    Ok(())
}

/// A webhook delivery on one backend: claims the due jobs, then reports on the first as
/// `report` says. Cursors are each backend's own tokens, so the answer names each by its
/// place in the job's events.
async fn webhook_delivery(
    b: &dyn StateBackend,
    now: u64,
    claim_ms: u64,
    report: HookReport,
) -> String {
    let claims = match b.webhook_claim(now, 3, claim_ms).await {
        Ok(claims) => claims,
        Err(e) => return format!("error: {e}"),
    };
    let mut answer = Vec::new();
    for claim in &claims {
        let events = b.events(&claim.job, "", 100_000, Duration::ZERO).await;
        let events = events.unwrap_or_default();
        let place = events.iter().position(|e| e.cursor == claim.cursor);
        answer.push(format!(
            "{} of '{}' to {} after event {place:?}, {} tries since {}",
            claim.job, claim.tenant, claim.url, claim.tries, claim.failing_since_ms
        ));
        if answer.len() > 1 {
            continue;
        }
        let rest = &events[place.map_or(0, |i| i + 1)..];
        let hook = rest.iter().find(|e| e.kind.is_webhook_event());
        let to = hook
            .or(rest.last())
            .map_or(claim.cursor.as_str(), |e| &e.cursor);
        let passed = |step: WebhookStep| {
            if hook.is_some() {
                step
            } else {
                WebhookStep::Skipped
            }
        };
        let (job, from) = (claim.job.as_str(), claim.cursor.as_str());
        let reported = match report {
            HookReport::Nothing => continue,
            HookReport::Delivered => {
                let step = passed(WebhookStep::Delivered);
                b.webhook_advance(job, from, to, &step, now).await
            }
            HookReport::Dropped => {
                let step = passed(WebhookStep::Dropped("answered 410".into()));
                b.webhook_advance(job, from, to, &step, now).await
            }
            HookReport::Failed(after) => {
                b.webhook_failed(job, from, "answered 500", now + after, now)
                    .await
            }
            HookReport::Stale => {
                let step = WebhookStep::Delivered;
                b.webhook_advance(job, "stale", to, &step, now).await
            }
        };
        answer.push(show(reported));
    }
    answer.join("; ")
}
