//! `tessera-bench farm`: what the farm adds around real work, per worker count.
//!
//! Each row runs one upscale job of small tiled pictures on a fresh coordinator and N real
//! `tessera-worker` processes, each writing a `--timings` line per task. From those lines, for
//! each worker and each pair of tasks it ran one after the other, the gap between the end of
//! one's work and the start of the next's is split into where it went:
//! - *hand-back*: waiting for the previous output's upload before starting this one's;
//! - *lease*: the part of the next task's lease request still outstanding, less the time the
//!   coordinator reported waiting for work to exist (*no work*: the queue held nothing this
//!   worker could do, e.g. a stitch waiting for tiles on other workers; idle, not overhead);
//! - *fetch*: the part of its input downloads still outstanding;
//! - *dispatch*: from inputs in hand to the work running.
//!
//! Overhead is hand-back + lease + fetch + dispatch, as a share of the work time. Tasks leased
//! ahead (during the previous task's work) have their lease and downloads hidden. Each
//! worker's first task (which loads the model) is left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera_core::timing::TaskTiming;
use tessera_proto::transfer::upload_messages;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::{binary, Service};
use tonic::transport::Channel;

/// Options of `tessera-bench farm`.
#[derive(clap::Args)]
pub struct FarmBench {
    /// Worker processes per row.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8])]
    workers: Vec<usize>,
    /// Pictures per row.
    #[arg(long, default_value_t = 40)]
    pictures: usize,
    /// Side of each picture, in pixels.
    #[arg(long, default_value_t = 96)]
    size: u32,
    /// Tile side in input pixels: with the defaults each picture is four tile tasks and a
    /// stitch, 200 tasks in all.
    #[arg(long, default_value_t = 48)]
    tile: u32,
    /// Upscale model, from the workers' models directory.
    #[arg(long, default_value = "realesr-animevideov3-x4")]
    model: String,
    /// The workers' models directory.
    #[arg(long, default_value = ".deps/models")]
    models: PathBuf,
}

/// Where the gap before one task's work went, in milliseconds.
#[derive(Default, Clone, Copy)]
struct Gap {
    hand_back: f64,
    no_work: f64,
    lease: f64,
    fetch: f64,
    dispatch: f64,
}

impl Gap {
    /// The gap between `previous`'s work and `task`'s, split by what was outstanding.
    fn between(previous: &TaskTiming, task: &TaskTiming) -> Gap {
        let free = previous.released_ms;
        let outstanding = |from: f64, to: f64| (to - from.max(free)).max(0.0);
        let lease = outstanding(task.asked_ms.min(free), task.leased_ms);
        let no_work = task.waited_ms.min(lease);
        Gap {
            hand_back: previous.released_ms - previous.ended_ms,
            no_work,
            lease: lease - no_work,
            fetch: outstanding(task.leased_ms, task.fetched_ms),
            dispatch: outstanding(task.fetched_ms, task.started_ms),
        }
    }

    fn overhead(&self) -> f64 {
        self.hand_back + self.lease + self.fetch + self.dispatch
    }

    fn add(&mut self, other: &Gap) {
        self.hand_back += other.hand_back;
        self.no_work += other.no_work;
        self.lease += other.lease;
        self.fetch += other.fetch;
        self.dispatch += other.dispatch;
    }
}

/// Sums over the measured tasks of one row.
#[derive(Default)]
struct Totals {
    tasks: usize,
    ahead: usize,
    work: f64,
    gaps: Gap,
    /// Work and overhead by task kind.
    by_kind: HashMap<String, (f64, f64)>,
}

impl Totals {
    /// Adds one worker's tasks. The first loaded the model, so it only starts the first gap.
    fn add_worker(&mut self, mut timings: Vec<TaskTiming>) {
        timings.sort_by(|a, b| a.started_ms.total_cmp(&b.started_ms));
        for pair in timings.windows(2) {
            let (previous, task) = (&pair[0], &pair[1]);
            let gap = Gap::between(previous, task);
            let work = task.ended_ms - task.started_ms;
            self.tasks += 1;
            self.ahead += usize::from(task.ahead);
            self.work += work;
            self.gaps.add(&gap);
            let kind = self.by_kind.entry(task.kind.clone()).or_default();
            kind.0 += work;
            kind.1 += gap.overhead();
        }
    }

    fn share(&self, part: f64) -> f64 {
        100.0 * part / self.work
    }

    fn kind_share(&self, kind: &str) -> String {
        self.by_kind
            .get(kind)
            .map_or("-".into(), |(work, overhead)| {
                format!("{:.2}", 100.0 * overhead / work)
            })
    }
}

/// Runs every row and prints the table.
pub async fn run(args: &FarmBench) -> anyhow::Result<()> {
    println!(
        "{} pictures of {}x{} per row in tiles of {}, upscaled by {} and stitched; \
         shares of the work time (first task of each worker left out):",
        args.pictures, args.size, args.size, args.tile, args.model
    );
    println!(
        "{:>7} {:>6} {:>7} {:>8} {:>8} {:>11} {:>8} {:>8} {:>10} {:>9} {:>10} {:>7} {:>9}",
        "workers",
        "tasks",
        "ahead %",
        "wall s",
        "work ms",
        "hand-back %",
        "lease %",
        "fetch %",
        "dispatch %",
        "no work %",
        "overhead %",
        "tile %",
        "stitch %"
    );
    for &n in &args.workers {
        let (wall, t) = run_row(args, n)
            .await
            .with_context(|| format!("{n} workers"))?;
        let g = &t.gaps;
        println!(
            "{n:>7} {:>6} {:>7.0} {:>8.1} {:>8.1} {:>11.2} {:>8.2} {:>8.2} {:>10.2} {:>9.2} {:>10.2} {:>7} {:>9}",
            t.tasks,
            100.0 * t.ahead as f64 / t.tasks as f64,
            wall.as_secs_f64(),
            t.work / t.tasks as f64,
            t.share(g.hand_back),
            t.share(g.lease),
            t.share(g.fetch),
            t.share(g.dispatch),
            t.share(g.no_work),
            t.share(g.overhead()),
            t.kind_share("upscale_tile"),
            t.kind_share("stitch"),
        );
    }
    Ok(())
}

/// One row: a fresh coordinator, `n` workers, one job; the job's wall time and the totals.
async fn run_row(args: &FarmBench, n: usize) -> anyhow::Result<(Duration, Totals)> {
    let dir = tempfile::TempDir::new()?;
    let mut command = Command::new(binary("tessera-coordinator")?);
    command
        .args(["--listen", "127.0.0.1:0", "--embedded", "--store"])
        .arg(dir.path().join("store"))
        .env("RUST_LOG", "warn");
    let service = Service::start(command)?;
    let mut jobs = JobsClient::connect(service.url()).await?;
    let started = Instant::now();
    let job = submit(&mut jobs, args).await?;
    let workers = Workers::start(&service, args, n, dir.path())?;
    wait_done(&mut jobs, &job).await?;
    let wall = started.elapsed();
    workers.stop()?;
    let mut totals = Totals::default();
    for index in 0..n {
        totals.add_worker(read_timings(&timings_path(dir.path(), index))?);
    }
    if totals.tasks == 0 {
        bail!("no task was measured (too few pictures for {n} workers?)");
    }
    Ok((wall, totals))
}

/// Uploads the pictures and submits them as one upscale job, one tile per picture.
async fn submit(jobs: &mut JobsClient<Channel>, args: &FarmBench) -> anyhow::Result<String> {
    let mut images = Vec::with_capacity(args.pictures);
    for index in 0..args.pictures {
        let name = format!("p{index}.png");
        let header = v1::UploadHeader {
            name: name.clone(),
            ..Default::default()
        };
        let data = picture(args.size, index);
        let uploaded = jobs.upload_input(upload_messages(header, &data)).await?;
        images.push(v1::InputImage {
            name,
            key: uploaded.into_inner().key,
        });
    }
    let spec = v1::JobSpec {
        name: "farm bench".into(),
        settings: Some(v1::Settings {
            upscale_model: Some(args.model.clone()),
            tile: Some(args.tile),
            ..Default::default()
        }),
        source: Some(v1::job_spec::Source::Images(v1::ImageList { images })),
        ..Default::default()
    };
    let reply = jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(spec) })
        .await?;
    Ok(reply.into_inner().job_id)
}

/// A PNG of `size`x`size` with a pattern of its own.
fn picture(size: u32, index: usize) -> Vec<u8> {
    let image = image::RgbImage::from_fn(size, size, |x, y| {
        let v = (x * 7 + y * 13 + index as u32 * 29) % 256;
        image::Rgb([v as u8, (255 - v) as u8, ((x ^ y) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("a PNG encodes in memory");
    bytes
}

/// Follows the job until it ends; an error unless it succeeded.
async fn wait_done(jobs: &mut JobsClient<Channel>, job: &str) -> anyhow::Result<()> {
    let request = v1::WatchJobRequest {
        job_id: job.into(),
        ..Default::default()
    };
    let mut stream = jobs.watch_job(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        if let Some(v1::job_event::Event::JobDone(done)) = event.event {
            if done.state() != v1::JobState::Succeeded {
                bail!("the job ended {:?}", done.state());
            }
            return Ok(());
        }
    }
    bail!("the event stream ended before the job")
}

fn timings_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("worker-{index}.timings.jsonl"))
}

fn read_timings(path: &Path) -> anyhow::Result<Vec<TaskTiming>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("{line:?}")))
        .collect()
}

/// The worker processes of one row; killed if dropped before [`Workers::stop`].
struct Workers(Vec<Child>);

impl Workers {
    fn start(service: &Service, args: &FarmBench, n: usize, dir: &Path) -> anyhow::Result<Workers> {
        let program = binary("tessera-worker")?;
        // The cores are split among the workers, as `tessera up` does.
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let threads = (cores / n).max(1).to_string();
        let mut children = Vec::with_capacity(n);
        for index in 0..n {
            let log = std::fs::File::create(dir.join(format!("worker-{index}.log")))?;
            let child = Command::new(&program)
                .arg("--models")
                .arg(&args.models)
                .args(["--coordinator", &service.url(), "--name"])
                .arg(format!("bench-{index}"))
                .arg("--timings")
                .arg(timings_path(dir, index))
                .args(["--threads", &threads])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            children.push(child);
        }
        Ok(Workers(children))
    }

    /// Drains every worker (SIGTERM) and waits for it, so its timings are complete.
    fn stop(mut self) -> anyhow::Result<()> {
        for child in &self.0 {
            let pid = i32::try_from(child.id())?;
            // SAFETY: `kill` has no memory effects; the pid is our own live child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for child in &mut self.0 {
            child.wait()?;
        }
        self.0.clear();
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
