//! `tessera up`: a whole farm on one machine, for users who have only that. It starts a
//! coordinator with its state journaled under `--dir` (so a farm started again resumes its jobs)
//! and `--workers` worker processes, waits until every worker has registered, and then either
//! serves until ctrl-c / SIGTERM or, with `--run`, renders one prompt file and fetches the
//! pictures. Stopping drains the workers first (a render in progress is checkpointed into the
//! farm's state), then the coordinator.
//!
//! The processes are the same binaries a cluster runs, found next to `tessera` (or on `PATH`);
//! their logs go to `DIR/logs/`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tessera_core::job::{normalise_model, Settings};
use tessera_proto::v1;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::args::{JobOptions, UpArgs};
use crate::farm::{Address, Farm};
use crate::{fetch, submit, upscale, watch};

/// How long the coordinator may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the workers may take to register (each loads libtorch first).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a draining worker may take to checkpoint or finish its task before it is killed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the coordinator may take to shut down gracefully.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often registration is checked.
const POLL: Duration = Duration::from_millis(100);

/// Runs `tessera up`.
pub async fn up(args: &UpArgs, json: bool) -> anyhow::Result<()> {
    // Read what --run needs before starting anything, so a typo costs no start-up.
    let batch = match &args.run {
        Some(prompts) => Some(Batch::read(prompts, args)?),
        None => None,
    };
    let mut farm = LocalFarm::start(args).await?;
    let outcome = match batch {
        Some(batch) => batch.run(&farm.url, args, json).await,
        None => farm.serve().await,
    };
    let stopped = farm.stop().await;
    outcome.and(stopped)
}

/// The processes of the farm; killed if dropped without [`LocalFarm::stop`].
struct LocalFarm {
    url: String,
    coordinator: Child,
    workers: Vec<Child>,
    logs: PathBuf,
}

impl LocalFarm {
    /// Starts the coordinator, then the workers, and waits until all of them registered.
    async fn start(args: &UpArgs) -> anyhow::Result<LocalFarm> {
        let logs = args.dir.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let (coordinator, url, metrics) = start_coordinator(args, &logs).await?;
        let names: Vec<String> = (0..args.workers)
            .map(|i| format!("local-{}-{i}", std::process::id()))
            .collect();
        let mut workers = Vec::with_capacity(names.len());
        for (index, name) in names.iter().enumerate() {
            workers.push(start_worker(args, &url, &logs, index, name)?);
        }
        let mut farm = LocalFarm {
            url,
            coordinator,
            workers,
            logs,
        };
        farm.wait_registered(&names).await?;
        eprintln!(
            "tessera farm up: coordinator {} with {} worker(s) on {}; state in {}, logs in {}, metrics on http://{metrics}/metrics",
            farm.url,
            names.len(),
            args.device,
            args.dir.display(),
            farm.logs.display()
        );
        Ok(farm)
    }

    /// Waits until a worker of every name is registered and alive, or one of them exits.
    async fn wait_registered(&mut self, names: &[String]) -> anyhow::Result<()> {
        let mut client = Farm::connect(&Address::open(&self.url)).await?;
        let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
        loop {
            let registered: HashSet<String> = client
                .workers()
                .await?
                .into_iter()
                .filter(|w| w.alive)
                .map(|w| w.name)
                .collect();
            if names.iter().all(|n| registered.contains(n)) {
                return Ok(());
            }
            for (index, worker) in self.workers.iter_mut().enumerate() {
                if let Some(status) = worker.try_wait()? {
                    bail!(
                        "worker {index} exited ({status}) before registering; the end of its log:\n{}",
                        log_tail(&self.logs.join(format!("worker-{index}.log")))
                    );
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the workers did not register within {} s; see their logs in {}",
                    REGISTER_TIMEOUT.as_secs(),
                    self.logs.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Serves until ctrl-c or SIGTERM; an exit of the coordinator is an error.
    async fn serve(&mut self) -> anyhow::Result<()> {
        eprintln!(
            "submit with `tessera --coordinator {} submit PROMPTS`; ctrl-c stops the farm",
            self.url
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
            status = self.coordinator.wait() => bail!(
                "the coordinator exited ({}); the end of its log:\n{}",
                status?,
                log_tail(&self.logs.join("coordinator.log"))
            ),
        }
    }

    /// Drains every worker (SIGTERM), then stops the coordinator the same way; a process that
    /// outstays its timeout is killed.
    async fn stop(mut self) -> anyhow::Result<()> {
        eprintln!("tessera farm: draining the workers, then stopping the coordinator");
        for worker in &self.workers {
            terminate(worker);
        }
        for (index, worker) in self.workers.iter_mut().enumerate() {
            stop_within(worker, DRAIN_TIMEOUT, &format!("worker {index}")).await?;
        }
        terminate(&self.coordinator);
        stop_within(&mut self.coordinator, SHUTDOWN_TIMEOUT, "the coordinator").await
    }
}

/// What `--run` submits: the prompt file's job, or the fallback pictures to upscale when the
/// workers cannot generate.
struct Batch<'a> {
    job: v1::JobSpec,
    fallback: Vec<upscale::Picture<'a>>,
}

impl<'a> Batch<'a> {
    fn read(prompts: &Path, args: &'a UpArgs) -> anyhow::Result<Batch<'a>> {
        Ok(Batch {
            job: submit::spec(prompts, &args.render, &JobOptions::default())?,
            fallback: upscale::read_pictures(&args.fallback_pictures)?,
        })
    }

    /// Submits, watches to the end and fetches into `--output`.
    async fn run(self, url: &str, args: &UpArgs, json: bool) -> anyhow::Result<()> {
        let mut farm = Farm::connect(&Address::open(url)).await?;
        let defaults = Settings::farm_defaults();
        let offered: HashSet<String> = farm
            .workers()
            .await?
            .into_iter()
            .flat_map(|w| w.capabilities.map(|c| c.models).unwrap_or_default())
            .collect();
        // The coordinator keeps capabilities under normalised names.
        let missing: Vec<&str> = [&defaults.clip_model, &defaults.vqgan_model]
            .into_iter()
            .filter(|m| !offered.contains(&normalise_model(m)))
            .map(String::as_str)
            .collect();
        let job = if missing.is_empty() {
            submit::submit(&mut farm, self.job, json).await?
        } else {
            eprintln!("{}", missing_weights(&missing, args.models.as_deref()));
            if self.fallback.is_empty() {
                bail!("nothing to render without the generation weights (give --fallback-pictures to upscale pictures instead)");
            }
            let model = args
                .render
                .upscale
                .clone()
                .filter(|m| m != "none")
                .or(defaults.upscale.map(|u| u.model))
                .context("no upscale model to fall back on")?;
            eprintln!(
                "upscaling {} picture(s) with {model} instead",
                self.fallback.len()
            );
            let options = JobOptions::default();
            upscale::submit(&mut farm, &model, &options, self.fallback, json).await?
        };
        // Fetch what finished even when some pictures failed, then report the failure.
        let watched = watch::watch(&Address::open(url), &job, json).await;
        fetch::fetch(&mut farm, &job, &args.output, json).await?;
        watched
    }
}

/// What to do about missing generation weights.
fn missing_weights(missing: &[&str], models: Option<&Path>) -> String {
    let dir = models.map_or_else(
        || "the default models directory ($TESSERA_MODELS or .deps/models)".to_string(),
        |d| d.display().to_string(),
    );
    format!(
        "the workers cannot render: {} not installed in {dir}. On a machine with internet, \
         scripts/setup.sh downloads OpenAI's CLIP and the CompVis VQGAN and converts them; with \
         copies at hand, run TESSERA_CLIP_CKPT=ViT-B-32.pt TESSERA_VQGAN_CKPT=last.ckpt \
         scripts/setup.sh (README, Rendering).",
        missing.join(" and ")
    )
}

/// Starts the coordinator and reads the addresses it serves gRPC (as a URL) and metrics on.
async fn start_coordinator(args: &UpArgs, logs: &Path) -> anyhow::Result<(Child, String, String)> {
    let log_path = logs.join("coordinator.log");
    let mut command = Command::new(sibling_binary("tessera-coordinator"));
    command
        .args(["--embedded", "--listen", &args.listen])
        .args(["--metrics-listen", &args.metrics_listen, "--state-dir"])
        .arg(args.dir.join("state"))
        .arg("--store")
        .arg(args.dir.join("artifacts"));
    let mut child = spawn(command, Stdio::piped(), &log_path)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let (addr, metrics) = tokio::time::timeout(LISTEN_TIMEOUT, async {
        // It prints where its metrics are, then where it listens.
        let mut metrics = String::new();
        while let Some(line) = lines.next_line().await? {
            if let Some((_, addr)) = line.rsplit_once("metrics on ") {
                metrics = addr.trim().to_string();
            }
            if let Some((_, addr)) = line.rsplit_once("listening on ") {
                return Ok((addr.trim().to_string(), metrics));
            }
        }
        bail!(
            "the coordinator exited before listening; the end of its log:\n{}",
            log_tail(&log_path)
        )
    })
    .await
    .context("the coordinator did not start listening in time")??;
    // Keep draining its standard output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, format!("http://{addr}"), metrics))
}

/// Starts worker `index` (on `cuda:index` when the device is `cuda`).
fn start_worker(
    args: &UpArgs,
    url: &str,
    logs: &Path,
    index: usize,
    name: &str,
) -> anyhow::Result<Child> {
    let device = match args.device.as_str() {
        "cuda" => format!("cuda:{index}"),
        other => other.to_string(),
    };
    let mut command = Command::new(sibling_binary("tessera-worker"));
    command.args(["--coordinator", url, "--device", &device, "--name", name]);
    // Each worker serves its metrics on a free port, written to its log.
    command.args(["--metrics-listen", "127.0.0.1:0"]);
    if args.device == "cpu" {
        // Each CPU worker gets its share of the cores instead of all of them.
        command.args(["--threads", &cpu_share(args.workers).to_string()]);
    }
    if let Some(models) = &args.models {
        command.arg("--models").arg(models);
    }
    let log = logs.join(format!("worker-{index}.log"));
    let stdout = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    spawn(command, stdout.into(), &log)
}

/// The cores of this machine divided among `workers`, at least one each.
fn cpu_share(workers: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / workers.max(1) as usize).max(1)
}

/// Spawns `command` with its standard error appended to `log`.
fn spawn(mut command: Command, stdout: Stdio, log: &Path) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build --release`, or put it on PATH)",
                command.as_std().get_program().to_string_lossy()
            )
        })
}

/// A Tessera binary installed next to this one (as `cargo build` and packages lay them out),
/// else the bare name, looked up on `PATH`.
fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Sends SIGTERM, the signal every Tessera process drains on.
fn terminate(child: &Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        // SAFETY: `kill` has no memory effects; the pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Waits for `child` to exit; kills it after `timeout`. An unclean exit is an error.
async fn stop_within(child: &mut Child, timeout: Duration, what: &str) -> anyhow::Result<()> {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                bail!("{what} exited with {status} while stopping");
            }
            Ok(())
        }
        Err(_) => {
            child.kill().await?;
            bail!(
                "{what} did not stop within {} s and was killed",
                timeout.as_secs()
            )
        }
    }
}

/// The last lines of a log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
