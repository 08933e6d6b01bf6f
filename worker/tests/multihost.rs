//! Faults across hosts: the farm on hosts of its own (network namespaces, see
//! `tessera_tests::hosts`), a Redis primary and replica under Sentinel, two coordinators behind
//! HAProxy, real `tessera-worker` processes (tiny render models, the real Real-ESRGAN weights
//! for upscale tiles) and the real `tessera` CLI on a client host. Each run strikes as networks
//! and machines fail, then checks what must hold: every task accepted exactly once, every
//! result there once with its checksum, the counts agreeing; and says what it saw (leases
//! expired, late reports refused, retries, failover times).
//!
//! The faults' choices come from a seeded generator whose seed is printed;
//! `TESSERA_FAULT_SEED=N` replays one. These tests need root and iproute2, and fail saying so
//! without them.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::farm::{job, models};
use tempfile::TempDir;
use tessera_core::task::sha256_hex;
use tessera_proto::access::Access;
use tessera_proto::v1;
use tessera_proto::v1::job_event::Event;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::follow::{jobs, Follower};
use tessera_tests::hosts::{wait_until, Farm, FarmSpec};
use tessera_tests::jobs::{results, status, submit, task};
use tonic::transport::Channel;

/// Longest any wait of a run may take before it counts as stuck.
const RUN_TIMEOUT: Duration = tessera_tests::follow::PATIENCE;

/// A small xorshift generator: the faults' choices, replayable from the printed seed.
struct Dice(u64);

impl Dice {
    /// The seed from `TESSERA_FAULT_SEED`, else from the clock; printed either way.
    fn seeded(run: &str) -> Dice {
        let seed = std::env::var("TESSERA_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.unwrap().as_nanos() as u64
            });
        eprintln!("{run}: fault seed {seed} (replay with TESSERA_FAULT_SEED={seed})");
        Dice(seed | 1)
    }

    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }
}

/// The farm of one run, with the models its workers load.
struct Run {
    farm: Farm,
    _models: TempDir,
}

impl Run {
    /// Starts a farm of `workers` worker hosts whose coordinators expire leases after
    /// `lease_ms`.
    fn start(workers: usize, lease_ms: u64) -> Run {
        let models = models();
        for file in ["realesrgan-x4plus.param", "realesrgan-x4plus.bin"] {
            let real = common::workspace_root().join(".deps/models").join(file);
            std::fs::copy(&real, models.path().join(file)).unwrap_or_else(|e| {
                panic!("{}: {e} (scripts/setup.sh installs it)", real.display())
            });
        }
        let coordinator_flags = [
            "--lease-ms",
            &lease_ms.to_string(),
            "--max-expiries",
            "50",
            "--clip-models",
            "vit",
            "--vqgan-models",
            "vq",
            "--upscale-models",
            "tiny-sr:4,realesrgan-x4plus:4",
        ];
        let models_dir = models.path().display().to_string();
        let spec = FarmSpec {
            workers,
            coordinator_flags: coordinator_flags.iter().map(|s| s.to_string()).collect(),
            worker_flags: vec![
                "--models".into(),
                models_dir,
                "--threads".into(),
                "1".into(),
            ],
        };
        let farm = Farm::start(&spec).expect("the farm starts on its hosts");
        Run {
            farm,
            _models: models,
        }
    }

    /// Runs `future` on the client host.
    fn client<F: std::future::Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        self.farm.client.block_on(future).unwrap()
    }

    /// The end of every log of the farm, for a failing assertion.
    fn logs(&self) -> String {
        let procs = self.farm.coordinators.iter().chain(&self.farm.workers);
        procs
            .chain([&self.farm.balancer])
            .map(|p| format!("--- {}\n{}\n", p.host.name, tail(&p.log())))
            .collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// What a run saw, printed at its end.
#[derive(Default)]
struct Seen {
    tasks: usize,
    expiries: u32,
    retries: u64,
    requeued: usize,
    refused: usize,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tasks, each accepted once; {} leases expired, {} attempts retried, {} tasks \
             requeued; {} late reports refused",
            self.tasks, self.expiries, self.retries, self.requeued, self.refused
        )
    }
}

/// Checks what must hold once a job of `tasks` tasks and `renders` results has ended: it
/// succeeded; every task was accepted exactly once; every result is there once, downloads
/// whole with its checksum and is its own file; the job's counts agree with the events.
async fn check_job(url: &str, follower: &Follower, tasks: usize, renders: usize) -> Seen {
    let Some(Event::JobDone(done)) = follower.events.last() else {
        panic!("the job did not end: {:?}", follower.events.last())
    };
    assert_eq!(done.state(), v1::JobState::Succeeded, "{done:?}");
    let counts = done.tasks.unwrap();
    assert_eq!(
        (counts.done, counts.failed),
        (tasks as u64, 0),
        "{counts:?}"
    );
    let mut accepted: BTreeMap<&str, u32> = BTreeMap::new();
    for event in &follower.events {
        if let Event::TaskDone(d) = event {
            *accepted.entry(d.task_id.as_str()).or_default() += 1;
        }
    }
    assert_eq!(accepted.len(), tasks, "tasks accepted");
    let twice: Vec<_> = accepted.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "accepted more than once: {twice:?}");

    let mut client = jobs(url).await;
    let results = results(&mut client, &follower.job).await;
    assert_eq!(results.len(), renders);
    let mut keys = HashSet::new();
    let mut workers = tessera_tests::protocol::workers_client(url, &Access::default()).await;
    for result in &results {
        assert_eq!(result.state(), v1::ResultState::Done, "{result:?}");
        let output = result.output.as_ref().unwrap();
        assert!(keys.insert(output.key.clone()), "{} twice", output.key);
        let bytes = tessera_tests::protocol::download(&mut workers, &output.key).await;
        assert_eq!(sha256_hex(&bytes), output.sha256, "{}", output.key);
        assert_eq!(bytes.len() as u64, output.size, "{}", output.key);
    }
    let job = status(&mut client, &follower.job).await;
    let mut expiries = 0;
    for id in accepted.keys() {
        let info = task(&mut client, id).await;
        assert_eq!(info.state(), v1::TaskState::Done, "{info:?}");
        expiries += info.expiries;
    }
    let requeued = follower
        .events
        .iter()
        .filter(|e| matches!(e, Event::TaskRequeued(_)))
        .count();
    assert!(job.attempts >= tasks as u64, "{job:?}");
    Seen {
        tasks,
        expiries,
        retries: job.retries,
        requeued,
        refused: 0,
    }
}

/// Late reports refused, as the farm's logs tell: a coordinator refused an upload of an
/// attempt that no longer held its task, or a worker heard its lease was lost or its output
/// not used.
fn refusals(run: &Run) -> usize {
    let said = ["was refused", "lease lost", "was not used"];
    let procs = run.farm.coordinators.iter().chain(&run.farm.workers);
    let lines = |log: String| {
        log.lines()
            .filter(|l| said.iter().any(|s| l.contains(s)))
            .count()
    };
    procs.map(|p| lines(p.log())).sum()
}

/// The id of the worker host `name`, as the coordinators know it.
async fn worker_name(client: &mut JobsClient<Channel>, id: &str) -> String {
    let reply = client
        .list_workers(v1::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let worker = reply.workers.iter().find(|w| w.worker_id == id);
    worker.map(|w| w.name.clone()).unwrap_or_default()
}

/// Polls the task until `wanted` holds, and returns it.
async fn task_until(
    client: &mut JobsClient<Channel>,
    id: &str,
    what: &str,
    wanted: impl Fn(&v1::TaskInfo) -> bool,
) -> v1::TaskInfo {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if let Ok(info) = client
            .get_task(v1::GetTaskRequest { task_id: id.into() })
            .await
        {
            let info = info.into_inner();
            if wanted(&info) {
                return info;
            }
            assert!(Instant::now() < deadline, "{what}: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One render of `iterations` steps, checkpointed every few, upscaled by the real
/// Real-ESRGAN x4plus in four tiles and stitched: six tasks.
fn long_render(iterations: u32) -> v1::JobSpec {
    let mut spec = job(1);
    spec.seeds = vec![7];
    let settings = spec.settings.as_mut().unwrap();
    settings.iterations = Some(iterations);
    settings.checkpoint_every = Some(5);
    settings.upscale_model = Some("realesrgan-x4plus".into());
    spec
}

#[test]
fn run1_a_worker_partitioned_mid_render_loses_its_lease_and_its_late_report_is_refused() {
    let mut dice = Dice::seeded("run 1");
    let run = Run::start(4, 1500);
    let url = run.farm.url();
    let checkpoints = 1 + dice.roll(3) as u32;
    let (job_id, render, holder, cut_checkpoint) = run.client(async {
        let mut client = jobs(&url).await;
        let job_id = submit(&mut client, long_render(3000)).await;
        let render = format!("{job_id}.0.g");
        // Cut the render's worker off once it has handed over a checkpoint or more.
        let info = task_until(&mut client, &render, "a checkpoint", |t| {
            t.checkpoint_iteration >= 5 * checkpoints
        })
        .await;
        let holder = worker_name(&mut client, &info.worker_id).await;
        (job_id, render, holder, info.checkpoint_iteration)
    });
    let worker = run
        .farm
        .workers
        .iter()
        .position(|w| w.host.name == holder)
        .unwrap();
    let cut_at = Instant::now();
    run.farm.workers[worker].host.cut().unwrap();
    let moved = run.client(async {
        let mut client = jobs(&url).await;
        task_until(&mut client, &render, "the lease to expire and move", |t| {
            t.expiries >= 1 && t.attempt >= 2 && t.iteration > 0
        })
        .await
    });
    let expired_after = cut_at.elapsed();
    let new_holder = run.client(async {
        let mut client = jobs(&url).await;
        worker_name(&mut client, &moved.worker_id).await
    });
    assert_ne!(new_holder, holder, "{moved:?}");
    // The next worker went on from the checkpoint, not from the start.
    assert!(moved.iteration >= cut_checkpoint, "{moved:?}");
    run.farm.workers[worker].host.heal().unwrap();
    let partitioned = &run.farm.workers[worker];
    // Back on the network, the partitioned worker hears its lease is gone: its report is
    // refused and its work dropped.
    let said = ["lease lost", "was not used", "not used"];
    wait_until(
        RUN_TIMEOUT,
        "the partitioned worker to hear its lease was lost",
        || {
            let log = partitioned.log();
            said.iter().any(|s| log.contains(s))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", run.logs()));
    let mut seen = run.client(async {
        let mut follower = Follower::new(&url, &job_id);
        follower.until_end().await;
        check_job(&url, &follower, 6, 1).await
    });
    seen.refused = refusals(&run);
    let done = run.client(async {
        let mut client = jobs(&url).await;
        task(&mut client, &render).await
    });
    assert_eq!(
        done.attempt, moved.attempt,
        "accepted from the second attempt: {done:?}"
    );
    // It rejoins: a second job's tasks reach it too.
    let tasks_before = run.client(async {
        let mut client = jobs(&url).await;
        tasks_done(&mut client, &holder).await
    });
    run.client(async {
        let mut client = jobs(&url).await;
        let second = submit(&mut client, job(2)).await;
        let mut follower = Follower::new(&url, &second);
        follower.until_end().await;
        check_job(&url, &follower, 24, 4).await;
    });
    let tasks_after = run.client(async {
        let mut client = jobs(&url).await;
        tasks_done(&mut client, &holder).await
    });
    assert!(
        tasks_after > tasks_before,
        "the partitioned worker took no work after it came back\n{}",
        partitioned.log()
    );
    eprintln!(
        "run 1: render cut off at checkpoint {cut_checkpoint} on {holder}; lease expired {:.1} s \
         after the cut and moved to {new_holder}; the returning worker's report refused ({}); \
         it then did {} tasks; {seen}",
        expired_after.as_secs_f64(),
        said.iter()
            .find(|s| partitioned.log().contains(*s))
            .unwrap(),
        tasks_after - tasks_before,
    );
}

/// Tasks the worker named `name` has done, as the coordinators count them.
async fn tasks_done(client: &mut JobsClient<Channel>, name: &str) -> u64 {
    let reply = client
        .list_workers(v1::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner();
    reply
        .workers
        .iter()
        .filter(|w| w.name == name)
        .map(|w| w.tasks_done)
        .sum()
}

/// Starts `tessera watch JOB` on the client host, its output to files in `dir`.
fn start_watch(run: &Run, job: &str, dir: &std::path::Path) -> std::process::Child {
    let out = std::fs::File::create(dir.join("watch.out")).unwrap();
    let err = std::fs::File::create(dir.join("watch.err")).unwrap();
    run.farm
        .cli(&["watch", job])
        .unwrap()
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

/// Waits for the watch to end by itself and checks it said the job succeeded with `renders`
/// results, without anyone touching it.
fn check_watch(mut watch: std::process::Child, dir: &std::path::Path, renders: usize) -> String {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the watch did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(dir.join("watch.out")).unwrap();
    let stderr = std::fs::read_to_string(dir.join("watch.err")).unwrap();
    let totals = format!("succeeded: {renders} result(s) done, 0 failed");
    assert!(
        status.success() && stdout.contains(&totals),
        "{status}\n{stdout}\n{stderr}"
    );
    stderr
}

#[test]
fn run2_a_coordinator_cut_from_redis_and_one_killed_the_other_serves_and_nobody_notices() {
    let mut dice = Dice::seeded("run 2");
    let mut run = Run::start(4, 2000);
    let url = run.farm.url();
    let dir = TempDir::new().unwrap();
    let prompts = 4;
    let (tasks, renders) = (prompts * 12, prompts * 2);
    let job_id = run.client(async { submit(&mut jobs(&url).await, job(prompts)).await });
    let watch = start_watch(&run, &job_id, dir.path());
    let mut follower = Follower::new(&url, &job_id);
    run.client(follower.until_done(tasks / 4));

    // One coordinator loses Redis (both Redis hosts), not the workers: its health check fails,
    // the balancer takes it out and shuts its connections, and the other serves.
    let cut = dice.roll(2);
    let (cut_host, redis) = (
        run.farm.coordinators[cut].host.clone(),
        [
            run.farm.redis[0].host.clone(),
            run.farm.redis[1].host.clone(),
        ],
    );
    let (downs, ups) = (
        run.farm.balancer_said(&cut_host.name, "DOWN"),
        run.farm.balancer_said(&cut_host.name, "UP"),
    );
    let started = Instant::now();
    for r in &redis {
        cut_host.partition_from(r, true).unwrap();
    }
    run.farm
        .wait_balancer(&cut_host.name, "DOWN", downs + 1)
        .unwrap();
    let out_after = started.elapsed();
    let before = follower.done();
    run.client(follower.until_done(before + 3));
    let served_after = started.elapsed();
    for r in &redis {
        cut_host.partition_from(r, false).unwrap();
    }
    run.farm
        .wait_balancer(&cut_host.name, "UP", ups + 1)
        .unwrap();

    // Then the other coordinator is killed outright.
    let killed = 1 - cut;
    let killed_name = run.farm.coordinators[killed].host.name.clone();
    let downs = run.farm.balancer_said(&killed_name, "DOWN");
    run.farm.coordinators[killed].kill();
    let started = Instant::now();
    run.farm
        .wait_balancer(&killed_name, "DOWN", downs + 1)
        .unwrap();
    let killed_out_after = started.elapsed();
    let before = follower.done();
    run.client(follower.until_done(before + 3));
    let served_after_kill = started.elapsed();
    run.farm.coordinators[killed].restart().unwrap();
    run.client(follower.until_end());
    let mut seen = run.client(check_job(&url, &follower, tasks, renders));
    seen.refused = refusals(&run);
    let said = check_watch(watch, dir.path(), renders);
    eprintln!(
        "run 2: {} cut from Redis: out of the balancer in {:.2} s, tasks accepted through the \
         other {:.2} s after the cut; {killed_name} killed: out of the balancer {:.2} s later, \
         three more tasks accepted {:.2} s later; the watch reconnected by itself ({} notes); \
         {seen}",
        cut_host.name,
        out_after.as_secs_f64(),
        served_after.as_secs_f64(),
        killed_out_after.as_secs_f64(),
        served_after_kill.as_secs_f64(),
        said.lines().count(),
    );
}

#[test]
fn run3_the_redis_primary_killed_sentinel_promotes_and_nothing_acknowledged_is_lost() {
    let mut run = Run::start(4, 2000);
    let url = run.farm.url();
    let prompts = 4;
    let (tasks, renders) = (prompts * 12, prompts * 2);
    let job_id = run.client(async { submit(&mut jobs(&url).await, job(prompts)).await });
    let mut follower = Follower::new(&url, &job_id);
    run.client(follower.until_done(tasks / 3));
    // What was acknowledged before the failover: a job submitted and the tasks accepted.
    let second = run.client(async { submit(&mut jobs(&url).await, job(1)).await });
    let acknowledged = follower.done();

    let old = run.farm.primary().unwrap();
    let killed_at = Instant::now();
    run.farm.redis[0].kill();
    let new = run.farm.wait_new_primary(&old).unwrap();
    let promoted_after = killed_at.elapsed();
    assert_eq!(new, run.farm.redis[1].host.ip.to_string());
    // Its supervisor starts the old primary again; Sentinel makes it the new one's replica,
    // so the new primary has the replica `min-replicas-to-write 1` asks for and takes writes.
    run.farm.redis[0].restart().unwrap();
    run.client(follower.until_done(acknowledged + 1));
    let writing_after = killed_at.elapsed();
    run.client(follower.until_end());
    let seen = run.client(check_job(&url, &follower, tasks, renders));
    // Nothing acknowledged before the failover is lost: the events before it are still
    // there (check_job counted each task once over the whole stream) and the job submitted
    // just before it runs to its end.
    let second_seen = run.client(async {
        let mut follower = Follower::new(&url, &second);
        follower.until_end().await;
        check_job(&url, &follower, 12, 2).await
    });
    let role = run.farm.redis_cli(0, &["ROLE"]).unwrap();
    assert!(
        role.starts_with("slave"),
        "the old primary came back as a replica: {role}"
    );
    let followed: usize = run
        .farm
        .coordinators
        .iter()
        .map(|c| {
            c.log()
                .matches("Sentinel names a new Redis primary")
                .count()
        })
        .sum();
    assert!(
        followed >= 2,
        "both coordinators followed the new primary\n{}",
        run.logs()
    );
    eprintln!(
        "run 3: primary {old} killed; Sentinel promoted {new} {:.2} s later; tasks accepted \
         again {:.2} s after the kill; {acknowledged} tasks acknowledged before it, none lost; \
         {seen}; second job {second_seen}",
        promoted_after.as_secs_f64(),
        writing_after.as_secs_f64(),
    );
}

/// One thing that goes wrong in the storm.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// A worker host's link goes down until the next fault.
    CutWorker,
    KillCoordinator,
    FailOverRedis,
}

/// The storm's faults in order: worker cuts throughout, the coordinators killed at a third and
/// two thirds of the way, Redis failing over in the middle.
fn storm_schedule(cuts: usize) -> Vec<Fault> {
    let mut faults = vec![Fault::CutWorker; cuts];
    faults.insert(cuts / 3, Fault::KillCoordinator);
    faults.insert(cuts / 2 + 1, Fault::FailOverRedis);
    faults.insert(2 * cuts / 3 + 2, Fault::KillCoordinator);
    faults
}

#[test]
fn storm_worker_cuts_coordinator_kills_and_a_redis_failover_over_one_job() {
    let mut dice = Dice::seeded("storm");
    let full = std::env::var_os("TESSERA_STORM_FULL").is_some();
    let prompts = if full { 42 } else { 17 };
    let (tasks, renders) = (prompts * 12, prompts * 2);
    let mut run = Run::start(4, 2000);
    let url = run.farm.url();
    let job_id = run.client(async { submit(&mut jobs(&url).await, job(prompts)).await });
    let mut follower = Follower::new(&url, &job_id);
    let faults = storm_schedule(10);
    let mut cut: Option<usize> = None;
    let mut failover = Duration::ZERO;
    for (k, fault) in faults.iter().enumerate() {
        run.client(follower.until_done((k + 1) * tasks / (faults.len() + 2)));
        if let Some(worker) = cut.take() {
            run.farm.workers[worker].host.heal().unwrap();
        }
        match fault {
            Fault::CutWorker => {
                let worker = dice.roll(run.farm.workers.len());
                run.farm.workers[worker].host.cut().unwrap();
                cut = Some(worker);
            }
            Fault::KillCoordinator => {
                let index = dice.roll(run.farm.coordinators.len());
                run.farm.coordinators[index].kill();
                run.farm.coordinators[index].restart().unwrap();
            }
            Fault::FailOverRedis => {
                let old = run.farm.primary().unwrap();
                let index = run
                    .farm
                    .redis
                    .iter()
                    .position(|r| r.host.ip.to_string() == old);
                let started = Instant::now();
                run.farm.redis[index.unwrap()].kill();
                run.farm.wait_new_primary(&old).unwrap();
                failover = started.elapsed();
                run.farm.redis[index.unwrap()].restart().unwrap();
            }
        }
    }
    if let Some(worker) = cut {
        run.farm.workers[worker].host.heal().unwrap();
    }
    run.client(follower.until_end());
    let mut seen = run.client(check_job(&url, &follower, tasks, renders));
    seen.refused = refusals(&run);
    // The farm-wide gauges agree with the job: every task done, nothing queued.
    let metrics = run.farm.coordinators[0]
        .host
        .addr(tessera_tests::hosts::METRICS_PORT);
    let scrape = run
        .farm
        .client
        .within(|| tessera_tests::scrape::Scrape::get(metrics))
        .unwrap()
        .unwrap();
    assert_eq!(
        scrape.sum("tessera_tasks", &[("state", "done")]),
        tasks as f64
    );
    assert_eq!(scrape.sum("tessera_queue_depth", &[]), 0.0);
    eprintln!(
        "storm: {} worker cuts, 2 coordinator kills, 1 Redis failover (promoted in {:.2} s); {seen}",
        faults.iter().filter(|f| **f == Fault::CutWorker).count(),
        failover.as_secs_f64(),
    );
}
