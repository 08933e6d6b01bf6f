//! `tessera-worker render`: one prompt to one picture on this machine, with the real CLIP and
//! VQGAN checkpoints from the models directory.

use std::path::PathBuf;

use anyhow::{bail, Context};
use tessera_core::prompt::PromptSpec;

use crate::clip::Clip;
use crate::generate::init::LatentInit;
use crate::generate::{render, Progress, Settings};
use crate::models::ModelDir;
use crate::vqgan::VqModel;

/// Where users get the checkpoints this command needs, printed when they are missing.
const CHECKPOINT_HELP: &str = "CLIP: OpenAI's TorchScript archives (e.g. ViT-B-32.pt, the URLs in \
openai/CLIP clip/clip.py) copied into the models directory; VQGAN: taming-transformers' \
vqgan_imagenet_f16_16384 last.ckpt and its model.yaml, converted with \
`.deps/venv/bin/python scripts/convert_checkpoint.py last.ckpt MODELS/vqgan_imagenet_f16_16384.safetensors` \
and the YAML saved as MODELS/vqgan_imagenet_f16_16384.yaml";

/// Options of `tessera-worker render`.
#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// Text prompts: `text:weight:stop`, several joined by `|`, story phases by `^`.
    #[arg(long)]
    prompt: String,
    /// Image prompts (`path:weight:stop`, joined by `|`).
    #[arg(long, default_value = "")]
    image_prompt: String,
    /// Noise prompts (`seed:weight`, joined by `|`).
    #[arg(long, default_value = "")]
    noise_prompt: String,
    /// Start from this picture instead of random codebook tokens.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// Output size, WxH (rounded down to the VQGAN's factor).
    #[arg(long, default_value = "496x496")]
    size: String,
    /// Optimisation steps.
    #[arg(long, default_value_t = 500)]
    iterations: u32,
    /// Seed of every random draw; the same seed gives the same picture.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a preview PNG next to the output every N iterations (0: never).
    #[arg(long, default_value_t = 0)]
    preview_every: u32,
    /// Cutouts per iteration.
    #[arg(long, default_value_t = 32)]
    cutn: u32,
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

/// Runs the command.
pub fn run(models: &ModelDir, args: RenderArgs) -> anyhow::Result<()> {
    let settings = settings(&args)?;
    let device = crate::device::parse(&args.device)?;
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
    let preview_path = args.out.with_extension("preview.png");
    let output = render(&settings, &clip, &vq, &mut |p: &Progress| {
        report(p, &preview_path)
    })?;
    std::fs::write(&args.out, &output.png)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wrote {} in {:.1} s",
        args.out.display(),
        output.elapsed.as_secs_f64()
    );
    Ok(())
}

fn settings(args: &RenderArgs) -> anyhow::Result<Settings> {
    let prompts = PromptSpec::parse(&args.prompt, &args.image_prompt, &args.noise_prompt)?;
    let (width, height) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .with_context(|| format!("--size '{}' is not WxH, e.g. 496x496", args.size))?;
    let mut settings = Settings::new(prompts, args.seed);
    settings.width = width;
    settings.height = height;
    settings.iterations = args.iterations;
    settings.preview_every = args.preview_every;
    settings.cutn = args.cutn;
    if let Some(path) = &args.init_image {
        settings.init = LatentInit::Image { path: path.clone() };
    }
    Ok(settings)
}

/// Prints one line per iteration and saves previews as they come.
fn report(progress: &Progress, preview_path: &std::path::Path) {
    let render = &progress.renders[0];
    eprintln!(
        "iteration {}/{} loss {:.4} ({:.1} s)",
        progress.iteration + 1,
        progress.iterations,
        render.total,
        progress.elapsed.as_secs_f64()
    );
    if let Some(preview) = &render.preview {
        if let Err(err) = preview.save(preview_path) {
            eprintln!("cannot write preview {}: {err}", preview_path.display());
        }
    }
}
