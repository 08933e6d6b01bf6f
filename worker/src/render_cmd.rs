//! `tessera-worker render`: one prompt to one picture on this machine, with the real CLIP and
//! VQGAN checkpoints from the models directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tessera_core::loop_options::InitNoise;
use tessera_core::prompt::PromptSpec;

use tessera_nets::clip::Clip;
use tessera_nets::generate::augment::Augment;
use tessera_nets::generate::cutouts::CutMethod;
use tessera_nets::generate::init::LatentInit;
use tessera_nets::generate::optim::OptimiserKind;
use tessera_nets::generate::{render, resume_render, Precision, Progress, Settings};
use tessera_nets::models::ModelDir;
use tessera_nets::vqgan::VqModel;

/// Where users get the checkpoints this command needs, printed when they are missing.
const CHECKPOINT_HELP: &str = "CLIP: OpenAI's TorchScript archives (e.g. ViT-B-32.pt, the URLs in \
openai/CLIP clip/clip.py) copied into the models directory; VQGAN: taming-transformers' \
vqgan_imagenet_f16_16384 last.ckpt and its model.yaml, converted with \
`.deps/venv/bin/python scripts/convert_checkpoint.py last.ckpt MODELS/vqgan_imagenet_f16_16384.safetensors` \
and the YAML saved as MODELS/vqgan_imagenet_f16_16384.yaml";

/// Options of `tessera-worker render`. Every setting of the loop is a flag, with the help text,
/// default and range of [`tessera_core::settings`]; an unset flag keeps [`Settings::new`]'s
/// default (which is the table's), shown in brackets.
#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// Text prompts: `text:weight:stop`, several joined by `|`, story phases by `^`.
    #[arg(long, conflicts_with = "resume")]
    prompt: Option<String>,
    /// Image prompts (`path:weight:stop`, joined by `|`).
    #[arg(long, conflicts_with = "resume")]
    image_prompt: Option<String>,
    /// Noise prompts (`seed:weight`, joined by `|`).
    #[arg(long, conflicts_with = "resume")]
    noise_prompt: Option<String>,
    /// Start from this picture instead of random codebook tokens.
    #[arg(long, conflicts_with_all = ["resume", "init_noise"])]
    init_image: Option<PathBuf>,
    #[arg(help = table_help("init_noise"), long, conflicts_with = "resume", value_enum)]
    init_noise: Option<InitNoise>,
    #[arg(help = table_help("init_weight"), long, conflicts_with = "resume")]
    init_weight: Option<f64>,
    /// Output size, WxH, rounded down to the VQGAN's factor [496x496].
    #[arg(long, conflicts_with = "resume")]
    size: Option<String>,
    #[arg(help = table_help("iterations"), long, conflicts_with = "resume")]
    iterations: Option<u32>,
    /// Seed of every random draw; the same seed gives the same picture [0].
    #[arg(long, conflicts_with = "resume")]
    seed: Option<u64>,
    #[arg(
        help = table_help("optimiser"),
        long,
        visible_alias = "optimizer",
        conflicts_with = "resume",
        value_enum
    )]
    optimiser: Option<OptimiserKind>,
    #[arg(help = table_help("learning_rate"), long, visible_alias = "lr", conflicts_with = "resume")]
    learning_rate: Option<f64>,
    #[arg(help = table_help("cut_method"), long, conflicts_with = "resume", value_enum)]
    cut_method: Option<CutMethod>,
    #[arg(help = table_help("cutn"), long, conflicts_with = "resume")]
    cutn: Option<u32>,
    #[arg(help = table_help("cut_pow"), long, conflicts_with = "resume")]
    cut_pow: Option<f64>,
    #[arg(help = table_help("augments"), long, conflicts_with = "resume", value_enum, value_delimiter = ',', num_args = 0..)]
    augments: Option<Vec<Augment>>,
    #[arg(help = table_help("noise_fac"), long, conflicts_with = "resume")]
    noise_fac: Option<f64>,
    #[arg(help = table_help("tv_weight"), long, conflicts_with = "resume")]
    tv_weight: Option<f64>,
    #[arg(help = table_help("change_prompt_every"), long, conflicts_with = "resume")]
    change_prompt_every: Option<u32>,
    #[arg(help = table_help("preview_every"), long, conflicts_with = "resume")]
    preview_every: Option<u32>,
    #[arg(help = table_help("checkpoint_every"), long, conflicts_with = "resume")]
    checkpoint_every: Option<u32>,
    #[arg(help = table_help("precision"), long, conflicts_with = "resume", value_enum)]
    precision: Option<Precision>,
    #[arg(help = table_help("recompute_decoder"), long, conflicts_with = "resume")]
    recompute_decoder: bool,
    /// Finish the render saved in this checkpoint (its settings come from the file).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// CLIP checkpoint name in the models directory.
    #[arg(long, default_value = "ViT-B-32")]
    clip: String,
    /// VQGAN name in the models directory (NAME.safetensors with NAME.yaml beside it).
    #[arg(long, default_value = "vqgan_imagenet_f16_16384")]
    vqgan: String,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where to write the PNG (settings and seed in its text chunks).
    #[arg(long)]
    out: PathBuf,
}

/// Render settings set by a flag of another name or shape: the size is one `--size WxH`, and
/// the models are named as files in the models directory.
pub const SET_BY_OTHER_FLAGS: [(&str, &str); 4] = [
    ("width", "size"),
    ("height", "size"),
    ("clip_model", "clip"),
    ("vqgan_model", "vqgan"),
];

/// The table's help line for a render setting, with its default.
pub fn table_help(name: &str) -> String {
    tessera_core::settings::flag_help(name, false)
        .unwrap_or_else(|| panic!("`{name}` is not in tessera_core::settings"))
}

/// Runs the command.
pub fn run(models: &ModelDir, args: RenderArgs) -> anyhow::Result<()> {
    let recipe = match &args.resume {
        Some(path) => Recipe::Resume {
            bytes: std::fs::read(path)
                .with_context(|| format!("cannot read checkpoint {}", path.display()))?,
            path,
        },
        None => Recipe::Start(Box::new(settings(&args)?)),
    };
    let device = tessera_nets::device::parse(&args.device)?;
    let clip_file = models
        .find(&args.clip)
        .with_context(|| format!("CLIP checkpoint missing. {CHECKPOINT_HELP}"))?;
    let vq_file = models
        .find(&args.vqgan)
        .with_context(|| format!("VQGAN checkpoint missing. {CHECKPOINT_HELP}"))?;
    let vq_yaml = vq_file.path.with_extension("yaml");
    if !vq_yaml.exists() {
        bail!(
            "{} has no config {} beside it. {CHECKPOINT_HELP}",
            vq_file.path.display(),
            vq_yaml.display()
        );
    }
    let clip = Clip::load(&clip_file.path, device, tch::Kind::Float)?;
    let vq = VqModel::load(&vq_yaml, &vq_file.path, device)?;
    let files = OutputFiles::beside(&args.out);
    let mut progress = |p: &Progress| report(p, &files);
    let mut outputs = match &recipe {
        Recipe::Start(settings) => vec![render(settings, &clip, &vq, &mut progress)?],
        Recipe::Resume { path, bytes } => resume_render(bytes, &clip, &vq, &mut progress)
            .with_context(|| format!("cannot resume {}", path.display()))?,
    };
    let output = outputs.remove(0);
    std::fs::write(&args.out, &output.png)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    remove_if_present(&files.checkpoint)?;
    eprintln!(
        "wrote {} in {:.1} s",
        args.out.display(),
        output.elapsed.as_secs_f64()
    );
    Ok(())
}

/// Where a render starts: fresh settings, or a checkpoint file's bytes.
enum Recipe<'a> {
    Start(Box<Settings>),
    Resume { path: &'a Path, bytes: Vec<u8> },
}

/// The files written beside the output while a render runs.
struct OutputFiles {
    preview: PathBuf,
    checkpoint: PathBuf,
}

impl OutputFiles {
    fn beside(out: &Path) -> OutputFiles {
        OutputFiles {
            preview: out.with_extension("preview.png"),
            checkpoint: out.with_extension("checkpoint"),
        }
    }
}

fn settings(args: &RenderArgs) -> anyhow::Result<Settings> {
    let text = |prompt: &Option<String>| prompt.clone().unwrap_or_default();
    let prompts = PromptSpec::parse(
        &text(&args.prompt),
        &text(&args.image_prompt),
        &text(&args.noise_prompt),
    )?;
    let mut s = Settings::new(prompts, args.seed.unwrap_or(0));
    if let Some(size) = &args.size {
        (s.width, s.height) = size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .with_context(|| format!("--size '{size}' is not WxH, e.g. 496x496"))?;
    }
    if let Some(path) = &args.init_image {
        s.init = LatentInit::Image { path: path.clone() };
    }
    if let Some(noise) = args.init_noise {
        s.init = LatentInit::from(noise);
    }
    set(&mut s.init_weight, args.init_weight);
    set(&mut s.iterations, args.iterations);
    set(&mut s.optimiser, args.optimiser);
    set(&mut s.learning_rate, args.learning_rate);
    set(&mut s.cut_method, args.cut_method);
    set(&mut s.cutn, args.cutn);
    set(&mut s.cut_pow, args.cut_pow);
    set(&mut s.augments, args.augments.clone());
    set(&mut s.noise_fac, args.noise_fac);
    set(&mut s.tv_weight, args.tv_weight);
    set(&mut s.change_prompt_every, args.change_prompt_every);
    set(&mut s.preview_every, args.preview_every);
    set(&mut s.checkpoint_every, args.checkpoint_every);
    set(&mut s.precision, args.precision);
    s.recompute_decoder = args.recompute_decoder;
    s.perceptor_model = args.clip.clone();
    s.codec_model = args.vqgan.clone();
    Ok(s)
}

/// Overwrites a default with the user's value, when there is one.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// Prints one line per iteration and saves previews and checkpoints as they come.
fn report(progress: &Progress, files: &OutputFiles) {
    let render = &progress.renders[0];
    eprintln!(
        "iteration {}/{} loss {:.4} ({:.1} s)",
        progress.iteration + 1,
        progress.iterations,
        render.total,
        progress.elapsed.as_secs_f64()
    );
    if let Some(preview) = &render.preview {
        if let Err(err) = preview.save(&files.preview) {
            eprintln!("cannot write preview {}: {err}", files.preview.display());
        }
    }
    if let Some(bytes) = &progress.checkpoint {
        match write_atomically(&files.checkpoint, bytes) {
            Ok(()) => eprintln!(
                "checkpoint after iteration {}: {}",
                progress.iteration + 1,
                files.checkpoint.display()
            ),
            Err(err) => eprintln!(
                "cannot write checkpoint {}: {err}",
                files.checkpoint.display()
            ),
        }
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so a process
/// killed mid-write leaves the previous checkpoint whole.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("checkpoint.partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}
