//! `tessera-bench farm`: what the farm adds around real work, per worker count.
//!
//! Each row runs one upscale job of small tiled pictures on a fresh coordinator and N real
//! `tessera-worker` processes, each writing a `--timings` line per task. From those lines:
//! *before* is the time from the lease to the start of the work (downloading the inputs);
//! *after* is the time from the end of the work to the next task in hand (upload, completion,
//! and the next lease request, including any wait for work to become available). Both are
//! reported as a share of the work itself. Each worker's first task (which loads the model) is
//! left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
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

/// One `--timings` line.
#[derive(serde::Deserialize)]
struct TaskTiming {
    kind: String,
    lease_ms: f64,
    fetch_ms: f64,
    work_ms: f64,
    hand_back_ms: f64,
}

/// Sums over the measured tasks of one row.
#[derive(Default)]
struct Totals {
    tasks: usize,
    work: f64,
    before: f64,
    hand_back: f64,
    lease: f64,
    by_kind: HashMap<String, (f64, f64)>,
}

impl Totals {
    /// Adds one worker's tasks, in the order it ran them.
    fn add_worker(&mut self, timings: &[TaskTiming]) {
        // Task i's "after" ends when task i+1 is in hand, so the last task has none; the
        // first loaded the model, so it is skipped.
        for pair in timings.windows(2).skip(1) {
            let (task, next) = (&pair[0], &pair[1]);
            let overhead = task.fetch_ms + task.hand_back_ms + next.lease_ms;
            self.tasks += 1;
            self.work += task.work_ms;
            self.before += task.fetch_ms;
            self.hand_back += task.hand_back_ms;
            self.lease += next.lease_ms;
            let kind = self.by_kind.entry(task.kind.clone()).or_default();
            kind.0 += task.work_ms;
            kind.1 += overhead;
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
        "{:>7} {:>6} {:>7} {:>9} {:>9} {:>9} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "workers",
        "tasks",
        "wall s",
        "work ms",
        "before %",
        "after %",
        "hand-back %",
        "lease %",
        "total %",
        "tile %",
        "stitch %"
    );
    for &n in &args.workers {
        let (wall, totals) = run_row(args, n)
            .await
            .with_context(|| format!("{n} workers"))?;
        let after = totals.hand_back + totals.lease;
        println!(
            "{n:>7} {:>6} {:>7.1} {:>9.1} {:>9.2} {:>9.2} {:>12.2} {:>9.2} {:>9.2} {:>9} {:>9}",
            totals.tasks,
            wall.as_secs_f64(),
            totals.work / totals.tasks as f64,
            totals.share(totals.before),
            totals.share(after),
            totals.share(totals.hand_back),
            totals.share(totals.lease),
            totals.share(totals.before + after),
            totals.kind_share("upscale_tile"),
            totals.kind_share("stitch"),
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
        totals.add_worker(&read_timings(&timings_path(dir.path(), index))?);
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
