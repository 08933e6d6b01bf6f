//! The command line's grammar: global flags and one subcommand per thing a user does with the
//! farm. Kept apart from the code that runs the commands so `--help` reads as one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tessera_core::job::MAX_SEEDS_PER_PROMPT;
use tessera_core::sweep::Sweep;
use tessera_telemetry::LogFormat;

use crate::setting_flags::SettingFlags;

/// The default coordinator: the one `tessera up` starts on this machine.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7470";

/// Submit text-to-image and upscale jobs to a Tessera farm, watch them and bring the pictures
/// home.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// The coordinator's gRPC address.
    #[arg(long, env = "TESSERA_COORDINATOR", default_value = DEFAULT_COORDINATOR, global = true)]
    pub coordinator: String,
    /// PEM file of the CA that signed the coordinator's certificate, for an https:// address
    /// (default: the system's roots).
    #[arg(long, env = "TESSERA_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Bearer token for a coordinator with an auth file (better in the environment than on a
    /// command line that `ps` shows).
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the token (a mounted secret), when --token is not given.
    #[arg(long, env = "TESSERA_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables and progress bars.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log lines on standard error: `human` or `json`. With OTEL_EXPORTER_OTLP_ENDPOINT set, the
    /// command's spans are also exported over OTLP, as the parents of the coordinator's.
    #[arg(long, env = "TESSERA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each is run by the module of the same name.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check that the coordinator answers, and print its version.
    Ping,
    /// Submit a prompt file (one prompt per line, or JSONL with per-prompt settings).
    Submit(SubmitArgs),
    /// Follow a job until it ends: progress bars, or one JSON object per event with --json.
    Watch(JobArg),
    /// Show one job's state.
    Status(JobArg),
    /// List the jobs, newest first.
    Jobs,
    /// Cancel a job; results finished before stay available.
    Cancel(JobArg),
    /// Give a job another priority (larger runs first); its queued tasks move at once.
    Priority(PriorityArgs),
    /// Pause a job: its queued tasks wait, its running renders checkpoint and go back to the
    /// queue (shorter tasks finish), until `tessera resume`.
    Pause(JobArg),
    /// Resume a paused job: its renders go on from their checkpoints.
    Resume(JobArg),
    /// List the workers the farm knows.
    Workers,
    /// Download a job's finished pictures and a manifest.json into a directory (resumable).
    Fetch(FetchArgs),
    /// Upscale pictures on the farm.
    Upscale(UpscaleArgs),
    /// Make a new token and print it with the entry for the coordinator's auth file, which
    /// keeps only its SHA-256. Needs no coordinator.
    Token(TokenArgs),
    /// Run a whole farm on this machine: a coordinator with its state on disk and local
    /// workers. Runs until ctrl-c or SIGTERM, or, with --run, renders one prompt file, fetches
    /// the pictures and stops.
    Up(UpArgs),
}

impl Command {
    /// The subcommand as typed, for the command's trace span.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Submit(_) => "submit",
            Command::Watch(_) => "watch",
            Command::Status(_) => "status",
            Command::Jobs => "jobs",
            Command::Cancel(_) => "cancel",
            Command::Priority(_) => "priority",
            Command::Pause(_) => "pause",
            Command::Resume(_) => "resume",
            Command::Workers => "workers",
            Command::Fetch(_) => "fetch",
            Command::Upscale(_) => "upscale",
            Command::Token(_) => "token",
            Command::Up(_) => "up",
        }
    }
}

/// What a new token is for.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// `client` (one tenant's jobs), `worker` (leases and runs tasks) or `admin` (everything).
    #[arg(long, value_parser = ["client", "worker", "admin"])]
    pub role: String,
    /// The tenant of a client token.
    #[arg(long, required_if_eq("role", "client"))]
    pub tenant: Option<String>,
    /// A label for the coordinator's logs, e.g. who holds the token.
    #[arg(long, default_value = "")]
    pub name: String,
}

/// A job id.
#[derive(Args, Debug)]
pub struct JobArg {
    /// The job's id, as `submit` printed it.
    pub job: String,
}

/// A job and its new priority.
#[derive(Args, Debug)]
pub struct PriorityArgs {
    /// The job's id, as `submit` printed it.
    pub job: String,
    /// Its new priority (-1000..=1000; larger runs first).
    #[arg(allow_negative_numbers = true, value_parser = priority)]
    pub priority: i32,
}

/// A priority as typed, refused outside the farm's range with the range named.
pub fn priority(text: &str) -> Result<i32, String> {
    let value: i32 = text
        .parse()
        .map_err(|_| format!("the priority must be a whole number, not '{text}'"))?;
    tessera_core::job::check_priority(value).map_err(|e| e.to_string())?;
    Ok(value)
}

/// Settings and placement shared by every kind of submission.
#[derive(Args, Debug, Default)]
pub struct JobOptions {
    /// Larger runs first; jobs of equal priority share the farm.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = priority)]
    pub priority: i32,
    /// A label for listings (default: the file's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Largest upscale tile in input pixels (0: one tile per picture).
    #[arg(long)]
    pub tile: Option<u32>,
    /// Follow the job until it ends, as `tessera watch` does.
    #[arg(long)]
    pub watch: bool,
    /// Queue the job even when no registered worker could run it (too large, too many
    /// iterations, a model none has): it waits for capacity instead of being refused.
    #[arg(long)]
    pub queue_anyway: bool,
    /// POST a signed JSON event here on each finished result and at the job's end (http or
    /// https, where the farm's --webhook-allow list permits; default: the tenant's own).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
}

/// `tessera submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The prompt file: `.jsonl` for one JSON object per line, `.json` for an array of them,
    /// any other name for one prompt per line.
    pub prompts: PathBuf,
    /// Seeds, steps, size and upscaling.
    #[command(flatten)]
    pub render: RenderOptions,
    /// Placement, labels and following.
    #[command(flatten)]
    pub job: JobOptions,
    /// Submit nothing: print the tasks the job would make and an estimate of its worker time
    /// and wall time on the farm as it is now, from the farm's measured rates.
    #[arg(long, conflicts_with = "watch")]
    pub dry_run: bool,
}

/// How every prompt of a file is rendered, unless its JSONL line says otherwise.
#[derive(Args, Debug)]
pub struct RenderOptions {
    /// Render every prompt with seeds 0 to N-1 (N at most 1000, a farm's most per prompt).
    #[arg(long, value_name = "N", conflicts_with = "seed",
          value_parser = clap::value_parser!(u64).range(1..=MAX_SEEDS_PER_PROMPT as u64))]
    pub seeds: Option<u64>,
    /// Render every prompt with this seed (repeat for several).
    #[arg(long, value_name = "S")]
    pub seed: Vec<u64>,
    /// Picture size before upscaling, e.g. 496x496 (multiples of 16).
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
    /// Upscale model, or `none` to keep the generated picture.
    #[arg(long, value_name = "MODEL|none")]
    pub upscale: Option<String>,
    /// Render every prompt and seed at each of these values of a render setting (repeat for
    /// several settings: every combination is rendered), e.g. `--sweep lr=0.05,0.1 --sweep
    /// cutn=32,64`; each result is labelled with its values (`lr0.1_cutn64`) in the manifest
    /// and in its file name. Keys are job setting names (or `lr`); a sweep value wins over a
    /// JSONL line's own.
    #[arg(long, value_name = "KEY=V1,V2,...", value_parser = parse_sweep)]
    pub sweep: Vec<Sweep>,
    /// Every other render setting, one flag each.
    #[command(flatten)]
    pub settings: SettingFlags,
}

/// A `--sweep`, checked against the settings table as the coordinator will check it.
fn parse_sweep(text: &str) -> Result<Sweep, String> {
    Sweep::parse(text).map_err(|e| e.to_string())
}

/// `tessera fetch`.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The job's id.
    pub job: String,
    /// Directory for the pictures and manifest.json (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
}

/// `tessera upscale`.
#[derive(Args, Debug)]
pub struct UpscaleArgs {
    /// Pictures to upscale (PNG, JPEG or WebP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Upscale model, e.g. realesrgan-x4plus.
    #[arg(long)]
    pub model: String,
    /// Where the pictures go once the job ends (with --watch).
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// Placement, labels and following.
    #[command(flatten)]
    pub job: JobOptions,
}

/// `tessera up`. A flag given twice keeps its last value, so scripts can append overrides.
#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct UpArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// The workers' device: `cpu`, or `cuda` for one GPU per worker (worker i on cuda:i).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// Address the coordinator serves on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7470")]
    pub listen: String,
    /// Address of the coordinator's Prometheus /metrics endpoint (port 0 picks a free one, so
    /// farms side by side do not collide).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics_listen: String,
    /// The farm's state, artifacts and logs; a farm started again on the same directory
    /// resumes the jobs it had.
    #[arg(long, value_name = "DIR", default_value = ".tessera")]
    pub dir: PathBuf,
    /// The workers' models directory (default: theirs, $TESSERA_MODELS or .deps/models).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Render this prompt file, fetch the pictures into --output, then stop the farm.
    #[arg(long, value_name = "PROMPTS")]
    pub run: Option<PathBuf>,
    /// Where --run puts the pictures and manifest.json.
    #[arg(short, long, value_name = "DIR", default_value = "out")]
    pub output: PathBuf,
    /// With --run, when the workers lack the generation weights: upscale these pictures
    /// instead, so the rest of the farm still runs.
    #[arg(long, value_name = "PICTURE")]
    pub fallback_pictures: Vec<PathBuf>,
    /// Seeds, steps, size and upscaling of --run.
    #[command(flatten)]
    pub render: RenderOptions,
}
