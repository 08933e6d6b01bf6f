//! The farm's parts as real processes, shared by the farm and fault suites: worker
//! processes with tiny models, a coordinator, a job, and following its events.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;
use tessera_core::tiles::TileSpec;
use tessera_proto::access::Access;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::protocol::workers_client;
use tessera_tests::{binary, Service};
use tonic::transport::Channel;

/// Worker processes, killed when the test ends however it ends.
pub struct Workers {
    children: Vec<Child>,
    /// What started them, for replacing one.
    models: std::path::PathBuf,
    coordinator: String,
    /// Options every worker is started with, besides the coordinator and models.
    options: Vec<String>,
    started: usize,
    /// Where each serves its Prometheus metrics.
    pub metrics: Vec<std::net::SocketAddr>,
    /// Their `--timings` files and standard error logs.
    timings: TempDir,
}

impl Workers {
    /// Kills worker `index` at once (SIGKILL), as a crashed node would end.
    pub fn kill(&mut self, index: usize) {
        let _ = self.children[index].kill();
        let _ = self.children[index].wait();
    }

    /// Sends `signal` to worker `index`: SIGSTOP and SIGCONT freeze and thaw it, as a node
    /// that stalls (swapping, a paused VM) and comes back.
    pub fn signal(&self, index: usize, signal: i32) {
        let pid = i32::try_from(self.children[index].id()).unwrap();
        // SAFETY: `kill` has no memory effects; the pid is our own live child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Asks worker `index` to drain (SIGTERM, as Kubernetes does) and waits for it to exit.
    pub fn drain(&mut self, index: usize) -> std::process::ExitStatus {
        self.signal(index, libc::SIGTERM);
        let child = &mut self.children[index];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not exit within 60 s of SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// What worker `index` (in start order) printed on standard error so far.
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.log_file(index)).unwrap_or_default()
    }

    fn log_file(&self, index: usize) -> std::path::PathBuf {
        self.timings.path().join(format!("worker-{index}.log"))
    }

    /// Where worker `index` (in start order) writes its `--timings`.
    pub fn timings_file(&self, index: usize) -> std::path::PathBuf {
        self.timings.path().join(format!("worker-{index}.jsonl"))
    }

    /// The tasks worker `index` finished, in the order it started them (its `--timings`).
    pub fn finished_tasks(&self, index: usize) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.timings_file(index)).unwrap_or_default();
        let mut tasks: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let started = |task: &serde_json::Value| task["started_ms"].as_f64().unwrap();
        tasks.sort_by(|a, b| started(a).total_cmp(&started(b)));
        tasks
    }

    /// Starts `count` workers, each serving metrics on a free port, and reads where.
    pub fn start(count: usize, models: &Path, coordinator: &Service) -> Workers {
        Workers::start_with(count, models, coordinator, &[])
    }

    /// [`Workers::start`], each worker also given `options` (e.g. `--recompute-decoder`).
    pub fn start_with(
        count: usize,
        models: &Path,
        coordinator: &Service,
        options: &[&str],
    ) -> Workers {
        Workers::start_at(count, models, &coordinator.url(), options)
    }

    /// [`Workers::start_with`] on whatever answers at `url`, e.g. a coordinator the test plays.
    pub fn start_at(count: usize, models: &Path, url: &str, options: &[&str]) -> Workers {
        let mut workers = Workers {
            children: Vec::new(),
            models: models.to_path_buf(),
            coordinator: url.to_string(),
            options: options.iter().map(|o| o.to_string()).collect(),
            started: 0,
            metrics: Vec::new(),
            timings: TempDir::new().unwrap(),
        };
        for _ in 0..count {
            let (child, metrics) = workers.spawn();
            workers.children.push(child);
            workers.metrics.push(metrics);
        }
        workers
    }

    /// Kills worker `index` (SIGKILL) and starts a fresh process in its place, as a node's
    /// supervisor would.
    pub fn replace(&mut self, index: usize) {
        self.kill(index);
        let (child, metrics) = self.spawn();
        self.children[index] = child;
        self.metrics[index] = metrics;
    }

    /// How many worker processes were started in all.
    pub fn started(&self) -> usize {
        self.started
    }

    /// Starts one more worker process (named and timed by its start order) and reads where it
    /// serves metrics.
    fn spawn(&mut self) -> (Child, std::net::SocketAddr) {
        let n = self.started;
        self.started += 1;
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-worker"))
            .arg("--models")
            .arg(&self.models)
            .args(["--coordinator", &self.coordinator, "--name"])
            .arg(format!("w{n}"))
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--timings")
            .arg(self.timings_file(n))
            .args(&self.options)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.log_file(n)).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let address = loop {
            let line = lines.next().expect("the worker exited").unwrap();
            if let Some((_, address)) = line.rsplit_once("metrics on ") {
                break address.trim().parse().unwrap();
            }
        };
        // Keep reading so the worker never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (child, address)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn models() -> TempDir {
    let dir = super::tiny_generation_models();
    std::fs::copy(
        super::esrgan_fixture("rrdb_x4_basicsr.safetensors"),
        dir.path().join("tiny-sr.safetensors"),
    )
    .unwrap();
    dir
}

/// A coordinator listening on `listen` (so a restarted one can take the same address) that
/// knows the tiny models; `extra` names its state backend (`--embedded` or `--redis URL`) and
/// any other flags.
pub fn coordinator_on(listen: &str, store: &Path, extra: &[&str]) -> Service {
    Service::start(coordinator_command(listen, store.as_os_str(), extra)).unwrap()
}

/// The command [`coordinator_on`] runs, for a test that adds to it (e.g. the `AWS_*`
/// variables of an S3 store); `store` is a directory or a store URL.
pub fn coordinator_command(listen: &str, store: &std::ffi::OsStr, extra: &[&str]) -> Command {
    let mut command = Command::new(binary("tessera-coordinator").unwrap());
    command
        .args(["--listen", listen, "--store"])
        .arg(store)
        .args(extra)
        .args(["--clip-models", "vit", "--vqgan-models", "vq"])
        .args(["--upscale-models", "tiny-sr:4"])
        .env("RUST_LOG", "warn");
    command
}

/// A job of `prompts` prompts x 2 seeds, each a 32x32 render of 3 iterations upscaled x4 in
/// 4 tiles and a stitch: 6 tasks per render.
pub fn job(prompts: usize) -> v1::JobSpec {
    let text: String = (0..prompts)
        .map(|i| format!("a red lighthouse {i}\n"))
        .collect();
    v1::JobSpec {
        name: "farm test".into(),
        seeds: vec![1, 2],
        settings: Some(v1::Settings {
            clip_model: Some("vit".into()),
            vqgan_model: Some("vq".into()),
            width: Some(32),
            height: Some(32),
            iterations: Some(3),
            cutn: Some(2),
            checkpoint_every: Some(0),
            preview_every: Some(0),
            upscale_model: Some("tiny-sr".into()),
            tile: Some(16),
            tile_pad: Some(4),
            tile_overlap: Some(4),
            ..Default::default()
        }),
        source: Some(v1::job_spec::Source::PromptsText(text)),
        ..Default::default()
    }
}

/// Uploads `pictures` (name and file bytes) as inputs of an upscale-only job, in order.
pub async fn upload_pictures(
    client: &mut JobsClient<Channel>,
    pictures: &[(&str, Vec<u8>)],
) -> Vec<v1::InputImage> {
    let mut images = Vec::new();
    for (name, bytes) in pictures {
        let header = v1::UploadHeader {
            name: name.to_string(),
            ..Default::default()
        };
        let uploaded = client
            .upload_input(tessera_proto::transfer::upload_messages(header, bytes))
            .await
            .unwrap()
            .into_inner();
        images.push(v1::InputImage {
            name: name.to_string(),
            key: uploaded.key,
        });
    }
    images
}

/// A job upscaling `images` with tiny-sr, cut into tiles by `tile`.
pub fn upscale_job(images: Vec<v1::InputImage>, tile: TileSpec) -> v1::JobSpec {
    v1::JobSpec {
        name: "upscale test".into(),
        settings: Some(v1::Settings {
            upscale_model: Some("tiny-sr".into()),
            tile: Some(tile.tile),
            tile_pad: Some(tile.pad),
            tile_overlap: Some(tile.overlap),
            ..Default::default()
        }),
        source: Some(v1::job_spec::Source::Images(v1::ImageList { images })),
        ..Default::default()
    }
}

/// Follows the job's events until one satisfies `wanted`, and returns it.
pub async fn event_until(
    client: &mut JobsClient<Channel>,
    job: &str,
    wanted: impl Fn(&v1::job_event::Event) -> bool,
) -> v1::job_event::Event {
    let request = v1::WatchJobRequest {
        job_id: job.into(),
        ..Default::default()
    };
    let mut stream = client.watch_job(request).await.unwrap().into_inner();
    loop {
        let message = stream.message().await.unwrap();
        let event = message.expect("the job ended first").event.unwrap();
        if wanted(&event) {
            return event;
        }
    }
}

/// Every event of the job up to its end.
pub async fn watch(client: &mut JobsClient<Channel>, job: &str) -> Vec<v1::job_event::Event> {
    let request = v1::WatchJobRequest {
        job_id: job.into(),
        ..Default::default()
    };
    let mut stream = client.watch_job(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        let event = event.event.unwrap();
        let done = matches!(event, v1::job_event::Event::JobDone(_));
        events.push(event);
        if done {
            return events;
        }
    }
    panic!("the watch ended before the job did");
}

/// One artifact, downloaded over the Workers service.
pub async fn download(url: String, key: &str) -> Vec<u8> {
    let mut client = workers_client(&url, &Access::default()).await;
    tessera_tests::protocol::download(&mut client, key).await
}
