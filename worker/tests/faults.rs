//! The fault suite, on real processes (Redis with an append-only file, a coordinator on it,
//! `tessera-worker` processes with tiny models, and the `tessera watch` CLI):
//! - a job of 504 tasks runs while worker processes are killed with SIGKILL and replaced, the
//!   coordinator is killed and restarted, and Redis is killed, left down until the farm
//!   notices, and restarted; every task must complete exactly once, every result must be there
//!   once and intact, and the watch must end with the right totals;
//! - a picture damaged in the artifact store is caught by the worker that reads it (checksum)
//!   and made again by the task that made it;
//! - a poison task (an upscale model whose file is broken) fails after its retry budget with
//!   every error kept, bans no worker, and the rest of its job completes;
//! - an artifact store whose disk is full refuses uploads with a clear error, the workers keep
//!   their outputs and retry with backoff, and the job completes once there is room;
//! - a worker frozen mid-tile past its lease drops the tile at the first heartbeat after it
//!   thaws, saying so once, and hands nothing of it back;
//! - an output the coordinator refuses (played by the test) is dropped with one line naming
//!   the task and the coordinator's reason.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::farm::{
    coordinator_on, download, job, models, upload_pictures, upscale_job, watch, Workers,
};
use std::sync::Arc;
use tempfile::TempDir;
use tessera_core::task::sha256_hex;
use tessera_core::tiles::TileSpec;
use tessera_proto::access::Access;
use tessera_proto::v1;
use tessera_proto::v1::job_event::Event;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_proto::v1::workers_server::{Workers as WorkersService, WorkersServer};
use tessera_tests::jobs::{results, status, submit};
use tessera_tests::protocol::{png, ProtocolWorker};
use tessera_tests::{binary, free_port, RedisServer, Service};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Prompts of the job; with 2 seeds and 6 tasks per render, 504 tasks.
const PROMPTS: usize = 42;
const TASKS: usize = PROMPTS * 2 * 6;
const WORKERS: usize = 4;
const WORKER_KILLS: usize = 20;
const COORDINATOR_RESTARTS: usize = 3;

/// One thing that goes wrong.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    KillWorker,
    RestartCoordinator,
    RestartRedis,
}

/// The faults in the order they strike: worker kills throughout, the coordinator restarts at
/// a quarter, a half and three quarters of the way, and Redis in between.
fn schedule() -> Vec<Fault> {
    let mut faults = vec![Fault::KillWorker; WORKER_KILLS];
    for at in [5, 10, 15] {
        faults.insert(at, Fault::RestartCoordinator);
    }
    faults.insert(12, Fault::RestartRedis);
    assert_eq!(faults.len(), WORKER_KILLS + COORDINATOR_RESTARTS + 1);
    faults
}

/// Follows a job's events across coordinator restarts: a broken stream is reopened after the
/// last cursor seen, so no event is missed or seen twice.
struct Follower {
    url: String,
    job: String,
    cursor: String,
    events: Vec<Event>,
}

impl Follower {
    /// Follows until `done` tasks have completed (or the job ended).
    async fn until_done(&mut self, done: usize) {
        self.follow(|events| {
            events
                .iter()
                .filter(|e| matches!(e, Event::TaskDone(_)))
                .count()
                >= done
        })
        .await
    }

    /// Follows until the job ends.
    async fn until_end(&mut self) {
        self.follow(|_| false).await
    }

    async fn follow(&mut self, enough: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !enough(&self.events) && !matches!(self.events.last(), Some(Event::JobDone(_))) {
            assert!(Instant::now() < deadline, "the job made no progress");
            let Ok(mut client) = JobsClient::connect(self.url.clone()).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let request = v1::WatchJobRequest {
                job_id: self.job.clone(),
                after: self.cursor.clone(),
                include_previews: false,
            };
            let Ok(stream) = client.watch_job(request).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(message)) = stream.message().await {
                self.cursor = message.cursor;
                let event = message.event.expect("events have a body");
                let end = matches!(event, Event::JobDone(_));
                self.events.push(event);
                if end || enough(&self.events) {
                    return;
                }
            }
        }
    }
}

/// A small xorshift generator: which worker dies is random, and the seed is printed so a
/// failing run can be repeated.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }
}

/// Waits until the coordinator answers a job query with an error (Redis is gone), and returns
/// its message.
async fn error_while_redis_is_down(url: &str, job: &str) -> String {
    let mut client = JobsClient::connect(url.to_string()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = v1::GetJobRequest { job_id: job.into() };
        match client.get_job(request).await {
            Err(status) => return format!("{:?}: {}", status.code(), status.message()),
            Ok(_) => assert!(Instant::now() < deadline, "the coordinator never noticed"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_504_tasks_survives_killed_workers_coordinator_restarts_and_a_redis_restart() {
    let started = Instant::now();
    let models = models();
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let mut redis = RedisServer::start_durable().unwrap();
    let redis_url = redis.url();
    let listen = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--redis",
        redis_url.as_str(),
        "--lease-ms",
        "2000",
        "--max-expiries",
        "30",
    ];
    let start_coordinator = || coordinator_on(&listen, &store, &flags);
    let mut coordinator: Service = start_coordinator();
    let url = coordinator.url();
    let mut workers = Workers::start(WORKERS, models.path(), &coordinator);
    let mut client = JobsClient::connect(url.clone()).await.unwrap();
    let job_id = submit(&mut client, job(PROMPTS)).await;
    let watch = tokio::process::Command::new(binary("tessera").unwrap())
        .args(["--coordinator", &url, "watch", &job_id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let seed = started.elapsed().as_nanos() as u64 | 1;
    eprintln!("dice seed {seed}");
    let mut dice = Dice(seed);
    let mut follower = Follower {
        url: url.clone(),
        job: job_id.clone(),
        cursor: String::new(),
        events: Vec::new(),
    };
    let faults = schedule();
    let mut redis_error = String::new();
    for (k, fault) in faults.iter().enumerate() {
        follower
            .until_done((k + 1) * TASKS / (faults.len() + 2))
            .await;
        match fault {
            Fault::KillWorker => workers.replace(dice.roll(WORKERS)),
            Fault::RestartCoordinator => {
                coordinator.kill();
                coordinator = start_coordinator();
            }
            Fault::RestartRedis => {
                redis.kill();
                redis_error = error_while_redis_is_down(&url, &job_id).await;
                redis.restart().unwrap();
            }
        }
    }
    follower.until_end().await;
    let events = &follower.events;

    // The watch, a real CLI process that lived through every restart, ends with the totals.
    let watched = tokio::time::timeout(Duration::from_secs(120), watch.wait_with_output())
        .await
        .expect("the watch ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&watched.stdout);
    let renders = PROMPTS * 2;
    assert!(
        watched.status.success()
            && stdout.contains(&format!("succeeded: {renders} result(s) done, 0 failed")),
        "{watched:?}"
    );
    let Some(Event::JobDone(done)) = events.last() else {
        panic!("the job did not end: {:?}", events.last())
    };
    assert_eq!(done.state(), v1::JobState::Succeeded, "{done:?}");
    let counts = done.tasks.unwrap();
    assert_eq!(
        (counts.done, counts.failed),
        (TASKS as u64, 0),
        "{counts:?}"
    );

    // Every task completed exactly once: one accepted completion each, six per render.
    let mut completions: BTreeMap<&str, u32> = BTreeMap::new();
    for event in events {
        if let Event::TaskDone(d) = event {
            *completions.entry(d.task_id.as_str()).or_default() += 1;
        }
    }
    assert_eq!(completions.len(), TASKS);
    let twice: Vec<_> = completions.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "completed more than once: {twice:?}");

    // Every result is there once, and its file is intact.
    let results = results(&mut client_at(&url).await, &job_id).await;
    assert_eq!(results.len(), renders);
    let mut keys = HashSet::new();
    for result in &results {
        assert_eq!(result.state(), v1::ResultState::Done, "{result:?}");
        let output = result.output.as_ref().unwrap();
        assert!(keys.insert(output.key.clone()), "{} twice", output.key);
        let bytes = download(url.clone(), &output.key).await;
        assert_eq!(sha256_hex(&bytes), output.sha256, "{}", output.key);
        let picture = image::load_from_memory(&bytes).unwrap();
        assert_eq!((picture.width(), picture.height()), (128, 128));
    }

    // The faults really struck: tasks were requeued after their workers died.
    let requeued = events
        .iter()
        .filter(|e| matches!(e, Event::TaskRequeued(_)))
        .count();
    assert_eq!(workers.started(), WORKERS + WORKER_KILLS);
    assert!(requeued > 0, "no task was lost to a killed worker");
    assert!(
        redis_error.contains("Unavailable") && redis_error.to_lowercase().contains("redis"),
        "{redis_error}"
    );
    eprintln!(
        "{TASKS} tasks, {renders} results in {:.1} s: {WORKER_KILLS} workers killed, \
         {COORDINATOR_RESTARTS} coordinator restarts, 1 Redis restart; {requeued} tasks requeued; \
         while Redis was down: {redis_error}",
        started.elapsed().as_secs_f64(),
    );
}

async fn client_at(url: &str) -> JobsClient<Channel> {
    JobsClient::connect(url.to_string()).await.unwrap()
}

/// Every event of the job, which must end succeeded with `results` results.
async fn watch_to_success(client: &mut JobsClient<Channel>, job: &str, results: u64) -> Vec<Event> {
    let events = watch(client, job).await;
    let Some(Event::JobDone(done)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(
        (done.state(), done.results_done),
        (v1::JobState::Succeeded, results),
        "{events:?}"
    );
    events
}

async fn task_info(client: &mut JobsClient<Channel>, task: &str) -> v1::TaskInfo {
    let request = v1::GetTaskRequest {
        task_id: task.into(),
    };
    client.get_task(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn a_picture_corrupted_in_the_store_is_caught_by_its_reader_and_made_again() {
    let models = models();
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let service = coordinator_on("127.0.0.1:0", &store, &["--embedded"]);
    let url = service.url();
    let mut client = client_at(&url).await;
    let mut spec = job(1);
    spec.seeds = vec![1];
    let job_id = submit(&mut client, spec).await;

    // A stand-in worker hands the render back.
    let models_known = ["vit", "vq", "tiny-sr"];
    let mut stand_in =
        ProtocolWorker::register_with(&url, &Access::default(), "stand-in", &models_known).await;
    let render = stand_in.lease(5_000).await.expect("the render is queued");
    assert_eq!(
        stand_in.finish(&render).await,
        v1::CompletionVerdict::Accepted
    );
    let picture = task_info(&mut client, &render.task_id)
        .await
        .output
        .unwrap();

    // A report of a corrupt input whose stored file is intact (damaged on the way) is an
    // ordinary failure, retried.
    let tile = stand_in.lease(5_000).await.expect("the tiles are queued");
    let request = v1::FailTaskRequest {
        worker_id: stand_in.id.clone(),
        task_id: tile.task_id.clone(),
        attempt: tile.attempt,
        error: "checksum mismatch".into(),
        retryable: true,
        corrupt_input: picture.key.clone(),
    };
    let reply = stand_in
        .client
        .fail_task(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.verdict(), v1::FailVerdict::Retrying);
    let errors = task_info(&mut client, &tile.task_id).await.errors;
    assert!(errors[0].contains("damaged on the way"), "{errors:?}");

    // Now the stored picture is damaged: one byte flipped, the size unchanged.
    let path = store.join(&picture.key);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    // A real worker reads it for a tile, finds the checksum wrong and says so; the render runs
    // again (on that worker) and the job completes.
    let _worker = Workers::start(1, models.path(), &service);
    let events = watch_to_success(&mut client, &job_id, 1).await;
    let render_done = events
        .iter()
        .filter(|e| matches!(e, Event::TaskDone(d) if d.task_id == render.task_id))
        .count();
    assert_eq!(render_done, 2, "the render was accepted again");
    let redone = events.iter().any(|e| {
        matches!(e, Event::TaskRequeued(r) if r.task_id == render.task_id
            && r.reason.contains(&format!("its output {} is corrupt", picture.key)))
    });
    assert!(redone, "{events:?}");
    let rendered = task_info(&mut client, &render.task_id).await;
    assert_eq!((rendered.attempt, rendered.failures), (2, 0));
    assert_ne!(rendered.output.unwrap().key, picture.key);
    // Only the stand-in's report counted as a failure; the tile that found the damage did not.
    let mut failures = 0;
    for k in 0..4 {
        failures += task_info(&mut client, &format!("{job_id}.0.t{k}"))
            .await
            .failures;
    }
    assert_eq!(failures, 1);
}

/// A small tmpfs mounted over a directory, standing for a disk that fills up; unmounted on drop.
/// Mounting needs root (or CAP_SYS_ADMIN), which the test machines have.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tessera-test"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {} ({status}): this test needs root or CAP_SYS_ADMIN",
            path.display()
        );
        SmallDisk {
            path: path.to_path_buf(),
        }
    }

    /// Fills the disk with a ballast file until nothing more fits.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let ballast = self.path.join("ballast");
        let mut file = std::fs::File::create(&ballast).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).and_then(|()| file.flush()).is_ok() {}
        ballast
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test]
async fn a_full_store_refuses_uploads_clearly_and_the_job_completes_once_there_is_room() {
    let models = models();
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let disk = SmallDisk::mount(&store, "4m");
    let ballast = disk.fill();
    let service = coordinator_on("127.0.0.1:0", &store, &["--embedded"]);
    let url = service.url();
    let mut client = client_at(&url).await;
    let mut spec = job(1);
    spec.seeds = vec![1];
    let job_id = submit(&mut client, spec).await;
    let _worker = Workers::start(1, models.path(), &service);

    // The render's output does not fit: the coordinator says why, and the worker keeps it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !service.log().contains("the artifact store is full") {
        assert!(Instant::now() < deadline, "{}", service.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        service.log().contains("No space left on device"),
        "{}",
        service.log()
    );
    let status = status(&mut client, &job_id).await;
    assert_eq!(status.state(), v1::JobState::Running);
    assert_eq!(status.tasks.unwrap().failed, 0);

    // Room is made; the retried upload goes through and the job completes, nothing lost.
    std::fs::remove_file(ballast).unwrap();
    let events = watch_to_success(&mut client, &job_id, 1).await;
    let failures = events
        .iter()
        .filter(|e| matches!(e, Event::TaskFailed(_)))
        .count();
    assert_eq!(failures, 0, "{events:?}");
}

#[tokio::test]
async fn a_poison_task_fails_after_its_retries_with_its_errors_kept_and_the_rest_completes() {
    let models = models();
    std::fs::write(
        models.path().join("broken-sr.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let dir = TempDir::new().unwrap();
    let extra = ["--embedded", "--upscale-models", "broken-sr:4"];
    let service = coordinator_on("127.0.0.1:0", &dir.path().join("store"), &extra);
    let mut client = client_at(&service.url()).await;
    let mut spec = job(0);
    spec.seeds = vec![1];
    spec.source = Some(v1::job_spec::Source::PromptsJsonl(
        [
            r#"{"prompt": "a red lighthouse"}"#,
            r#"{"prompt": "a blue lighthouse", "upscale_model": "broken-sr"}"#,
            r#"{"prompt": "a green lighthouse"}"#,
        ]
        .join("\n"),
    ));
    let job_id = submit(&mut client, spec).await;
    let _workers = Workers::start(2, models.path(), &service);
    let events = watch(&mut client, &job_id).await;

    let Some(Event::JobDone(done)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(
        (done.state(), done.results_done, done.results_failed),
        (v1::JobState::Failed, 2, 1)
    );
    let results = results(&mut client, &job_id).await;
    let states: Vec<_> = results.iter().map(|r| r.state()).collect();
    use v1::ResultState::{Done, Failed};
    assert_eq!(states, [Done, Failed, Done]);
    assert!(results[1].error.contains("broken-sr"), "{:?}", results[1]);
    // Every tile of the poison picture ran its whole budget (1 + 3 retries), on both workers,
    // and kept every error.
    for k in 0..4 {
        let tile = task_info(&mut client, &format!("{job_id}.1.t{k}")).await;
        assert_eq!(tile.state(), v1::TaskState::Failed);
        assert_eq!((tile.failures, tile.errors.len()), (4, 4), "{tile:?}");
        assert!(
            tile.errors.iter().all(|e| e.contains("broken-sr")),
            "{tile:?}"
        );
    }
}

#[tokio::test]
async fn a_tile_whose_lease_is_lost_is_dropped_at_the_next_heartbeat_saying_so_once() {
    let models = models();
    let store = TempDir::new().unwrap();
    let service = coordinator_on(
        "127.0.0.1:0",
        store.path(),
        &["--embedded", "--lease-ms", "2000"],
    );
    // One thread: the tile of a 512x512 picture is seconds of work, so the worker is frozen
    // in the middle of it.
    let workers = Workers::start_with(1, models.path(), &service, &["--threads", "1"]);
    let mut client = client_at(&service.url()).await;
    let images = upload_pictures(&mut client, &[("big.png", png(512, 512, 7))]).await;
    let whole = TileSpec {
        tile: 0,
        pad: 0,
        overlap: 0,
    };
    let job = submit(&mut client, upscale_job(images, whole)).await;
    let request = v1::WatchJobRequest {
        job_id: job.clone(),
        ..Default::default()
    };
    let mut events = client.watch_job(request).await.unwrap().into_inner();
    let mut next = async || {
        let message = events.message().await.unwrap();
        message.expect("the job ended first").event.unwrap()
    };

    let task = loop {
        if let Event::TaskStarted(started) = next().await {
            break started.task_id;
        }
    };
    workers.signal(0, libc::SIGSTOP);
    loop {
        match next().await {
            Event::TaskRequeued(requeued) if requeued.attempt == 1 => break,
            Event::TaskDone(_) => panic!("the tile ended before the worker was frozen"),
            _ => {}
        }
    }
    workers.signal(0, libc::SIGCONT);
    let done = loop {
        if let Event::JobDone(done) = next().await {
            break done;
        }
    };
    assert_eq!(done.state(), v1::JobState::Succeeded);

    // The first heartbeat after the thaw learnt the lease was gone: the tile was dropped then,
    // said once, and never finished or handed back; a later attempt made the result.
    let log = workers.log(0);
    let lost = format!("task {task} attempt 1: lease lost; its work is dropped");
    assert_eq!(log.matches(&lost).count(), 1, "{log}");
    assert!(!log.contains("ended:"), "{log}");
    assert!(!log.contains("refused"), "{log}");
    let finished: Vec<_> = workers
        .finished_tasks(0)
        .into_iter()
        .filter(|t| t["task"] == task.as_str())
        .collect();
    assert_eq!(
        finished.len(),
        1,
        "only the later attempt finished: {finished:?}"
    );
    assert!(task_info(&mut client, &task).await.attempt > 1);
}

/// A coordinator the test plays: it leases one upscale tile to the first worker that asks,
/// renews every heartbeat, and refuses the tile's output as a coordinator does once the lease
/// has ended, telling the test what it refused.
struct Refusing {
    source: Vec<u8>,
    leased: std::sync::atomic::AtomicBool,
    refused: tokio::sync::mpsc::UnboundedSender<String>,
    completed: Arc<std::sync::atomic::AtomicBool>,
}

impl Refusing {
    /// The one task: the whole 32x32 `source` upscaled x4 in one tile.
    fn tile(&self) -> v1::Task {
        let plan = v1::ImagePlan {
            width: 32,
            height: 32,
            scale: 4,
            ..Default::default()
        };
        let rect = |side| v1::Rect {
            x: 0,
            y: 0,
            width: side,
            height: side,
        };
        let spec = v1::UpscaleTileSpec {
            source: Some(v1::ArtifactRef {
                key: "uploads/source.png".into(),
                size: self.source.len() as u64,
                sha256: sha256_hex(&self.source),
                ..Default::default()
            }),
            model: "tiny-sr".into(),
            plan: Some(plan),
            tile_index: 0,
            input: Some(rect(32)),
            output: Some(rect(128)),
        };
        v1::Task {
            task_id: "t1".into(),
            job_id: "j1".into(),
            kind: v1::TaskKind::UpscaleTile.into(),
            attempt: 1,
            spec: Some(v1::task::Spec::UpscaleTile(spec)),
            ..Default::default()
        }
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl WorkersService for Refusing {
    async fn register(&self, _: Request<v1::RegisterRequest>) -> Answer<v1::RegisterReply> {
        Ok(Response::new(v1::RegisterReply {
            worker_id: "w1".into(),
            lease_ms: 60_000,
            heartbeat_interval_ms: 1_000,
        }))
    }

    async fn deregister(&self, _: Request<v1::DeregisterRequest>) -> Answer<v1::DeregisterReply> {
        Ok(Response::new(v1::DeregisterReply::default()))
    }

    async fn lease_task(
        &self,
        request: Request<v1::LeaseTaskRequest>,
    ) -> Answer<v1::LeaseTaskReply> {
        if self.leased.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // Nothing more to do: wait as long as asked, as a coordinator does.
            let wait = u64::from(request.into_inner().wait_ms);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            return Ok(Response::new(v1::LeaseTaskReply::default()));
        }
        Ok(Response::new(v1::LeaseTaskReply {
            task: Some(self.tile()),
            waited_ms: 0,
        }))
    }

    async fn heartbeat(&self, _: Request<v1::HeartbeatRequest>) -> Answer<v1::HeartbeatReply> {
        Ok(Response::new(v1::HeartbeatReply {
            verdict: v1::HeartbeatVerdict::Continue.into(),
            ..Default::default()
        }))
    }

    async fn complete_task(
        &self,
        _: Request<v1::CompleteTaskRequest>,
    ) -> Answer<v1::CompleteTaskReply> {
        self.completed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(Response::new(v1::CompleteTaskReply::default()))
    }

    async fn fail_task(&self, request: Request<v1::FailTaskRequest>) -> Answer<v1::FailTaskReply> {
        let _ = self
            .refused
            .send(format!("failed: {}", request.into_inner().error));
        Ok(Response::new(v1::FailTaskReply::default()))
    }

    async fn release_task(
        &self,
        _: Request<v1::ReleaseTaskRequest>,
    ) -> Answer<v1::ReleaseTaskReply> {
        Err(Status::unimplemented("this coordinator pauses no job"))
    }

    async fn upload_artifact(
        &self,
        request: Request<tonic::Streaming<v1::UploadChunk>>,
    ) -> Answer<v1::ArtifactRef> {
        let mut chunks = request.into_inner();
        let mut header = None;
        while let Some(chunk) = chunks.message().await? {
            if let Some(v1::upload_chunk::Part::Header(h)) = chunk.part {
                header = Some(h);
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        let _ = self.refused.send(header.name.clone());
        Err(Status::failed_precondition(format!(
            "attempt {} of task {} by worker {} does not hold the task (its lease ended); drop the work",
            header.attempt, header.task_id, header.worker_id
        )))
    }

    type DownloadArtifactStream = std::pin::Pin<
        Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<v1::DataChunk, Status>> + Send>,
    >;

    async fn download_artifact(
        &self,
        _: Request<v1::DownloadArtifactRequest>,
    ) -> Answer<Self::DownloadArtifactStream> {
        let chunk = v1::DataChunk {
            data: self.source.clone(),
            offset: 0,
            total_size: self.source.len() as u64,
        };
        let stream = tonic::codegen::tokio_stream::iter([Ok(chunk)]);
        Ok(Response::new(Box::pin(stream)))
    }
}

// Two threads: draining the worker blocks one while the other serves its last calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_the_coordinator_refuses_is_dropped_saying_so_once_with_its_reason() {
    let (refused, mut refusals) = tokio::sync::mpsc::unbounded_channel();
    let completed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let coordinator = Refusing {
        source: png(32, 32, 3),
        leased: Default::default(),
        refused,
        completed: completed.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkersServer::new(coordinator))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let models = models();
    let mut workers = Workers::start_at(1, models.path(), &url, &[]);

    assert_eq!(refusals.recv().await.unwrap(), "output.png");
    // Draining waits for the hand-back, so its word is in the log once the worker has exited.
    assert!(workers.drain(0).success());
    let log = workers.log(0);
    let said = "tessera-worker: task t1 attempt 1: its output was refused (attempt 1 of task t1 \
                by worker w1 does not hold the task (its lease ended); drop the work); dropped";
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert!(!completed.load(std::sync::atomic::Ordering::SeqCst));
    assert!(refusals.try_recv().is_err(), "the output was sent once");
    server.abort();
}
