//! The work of each task kind, on a blocking thread, with the models loaded once per process
//! and kept for every later task.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context};
use tch::Device;
use tessera_core::prompt::PromptSpec;
use tessera_core::tiles::{Rect, Stitcher, TilePlan, TileSpec};
use tessera_proto::v1;

use super::RenderMode;
use tessera_nets::clip::Clip;
use tessera_nets::esrgan::SrModel;
use tessera_nets::generate::init::LatentInit;
use tessera_nets::generate::{drive_until, Driven, Halt, Progress, Run, Settings};
use tessera_nets::imageio::{encode_png, from_dynamic, Picture, PictureKind};
use tessera_nets::models::ModelDir;
use tessera_nets::upscale::{
    crop, read_tile_png, round_as_tile_file, tile_png, UpscaleError, Upscaler,
};
use tessera_nets::vqgan::VqModel;

/// Models by name, loaded on first use. One task runs at a time, so the session hands the
/// cache to each task's blocking thread behind a mutex.
pub struct ModelCache {
    models: ModelDir,
    device: Device,
    render_mode: RenderMode,
    upscalers: HashMap<String, Upscaler>,
    clips: HashMap<String, Clip>,
    vqgans: HashMap<String, VqModel>,
}

/// The file stem a catalogue model name is stored under: OpenAI's CLIP archives replace `/`
/// and `@` (`ViT-B/32` is `ViT-B-32.pt`).
pub fn file_stem(name: &str) -> String {
    name.replace(['/', '@'], "-")
}

fn load_once<T>(
    map: &mut HashMap<String, T>,
    name: &str,
    load: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<()> {
    if !map.contains_key(name) {
        let _span = tracing::info_span!("model load", model = name).entered();
        let model = load().with_context(|| format!("loading model {name}"))?;
        map.insert(name.to_string(), model);
    }
    Ok(())
}

impl ModelCache {
    /// An empty cache over `models`, loading onto `device`, whose renders run in `render_mode`.
    pub fn new(models: ModelDir, device: Device, render_mode: RenderMode) -> Self {
        ModelCache {
            models,
            device,
            render_mode,
            upscalers: HashMap::new(),
            clips: HashMap::new(),
            vqgans: HashMap::new(),
        }
    }

    /// The tile geometry comes with each task, so the upscaler's own spec is never used.
    fn upscaler(&mut self, name: &str) -> anyhow::Result<&Upscaler> {
        let (models, device) = (&self.models, self.device);
        load_once(&mut self.upscalers, name, || {
            let file = models.find(&file_stem(name))?;
            let model = SrModel::load(&file.path, device)?;
            Ok(Upscaler::new(model, TileSpec::default(), device))
        })?;
        Ok(&self.upscalers[name])
    }

    fn generators(&mut self, clip: &str, vqgan: &str) -> anyhow::Result<(&Clip, &VqModel)> {
        let (models, device) = (&self.models, self.device);
        load_once(&mut self.clips, clip, || {
            let file = models.find(&file_stem(clip))?;
            Ok(Clip::load(&file.path, device, tch::Kind::Float)?)
        })?;
        load_once(&mut self.vqgans, vqgan, || {
            let file = models.find(&file_stem(vqgan))?;
            let yaml = file.path.with_extension("yaml");
            Ok(VqModel::load(&yaml, &file.path, device)?)
        })?;
        Ok((&self.clips[clip], &self.vqgans[vqgan]))
    }
}

/// Whether the running task stopped being this worker's (`abort` is set when a heartbeat or an
/// upload says so): the work then ends at its next stage instead of keeping the device busy
/// for an output nobody will take.
fn dropped(abort: &AtomicBool) -> bool {
    abort.load(Ordering::Relaxed)
}

/// Upscales one tile of `source` (a picture file) and returns its contribution to the final
/// picture (the upscaled tile less its context, which only the network needed) as a 16-bit PNG
/// that records the source's kind; a picture of one tile has no stitch, so its tile returns
/// the final picture, in the source's kind. Between its stages (decoding the source, loading
/// the model, the network, encoding) and between the network's blocks it stops,
/// [`Outcome::Abandoned`], once `abort` is set.
pub fn upscale_tile(
    cache: &mut ModelCache,
    spec: &v1::UpscaleTileSpec,
    source: &[u8],
    abort: &AtomicBool,
) -> anyhow::Result<Outcome> {
    let picture = from_dynamic(&image::load_from_memory(source)?);
    if dropped(abort) {
        return Ok(Outcome::Abandoned);
    }
    let input = spec.input.context("the tile task has no input rectangle")?;
    let rect = Rect {
        x: input.x,
        y: input.y,
        width: input.width,
        height: input.height,
    };
    if rect.x + rect.width > picture.width || rect.y + rect.height > picture.height {
        bail!(
            "tile {rect:?} lies outside the {}x{} source",
            picture.width,
            picture.height
        );
    }
    let upscaler = cache.upscaler(&spec.model)?;
    if dropped(abort) {
        return Ok(Outcome::Abandoned);
    }
    let scale = upscaler.scale();
    let span = tracing::info_span!("tile upscale", model = %spec.model, width = rect.width, height = rect.height).entered();
    let pixels = match upscaler.upscale_region_unless(&picture, rect, &|| dropped(abort)) {
        Err(UpscaleError::Stopped) => return Ok(Outcome::Abandoned),
        pixels => pixels?,
    };
    drop(span);
    let output = spec
        .output
        .context("the tile task has no output rectangle")?;
    let contribution = Rect {
        x: output
            .x
            .checked_sub(rect.x * scale)
            .context("the tile's output lies before its input")?,
        y: output
            .y
            .checked_sub(rect.y * scale)
            .context("the tile's output lies above its input")?,
        width: output.width,
        height: output.height,
    };
    if contribution.x + contribution.width > rect.width * scale
        || contribution.y + contribution.height > rect.height * scale
    {
        bail!("the tile's output {output:?} lies outside its upscaled input {rect:?}");
    }
    let kind = picture.kind();
    let pixels = crop(&pixels, kind.channels(), rect.width * scale, contribution);
    let plan = tile_plan(spec.plan.as_ref().context("the tile task has no plan")?)?;
    if plan.tiles.len() == 1 {
        return join(plan, kind, &[round_as_tile_file(&pixels)]).map(Outcome::Output);
    }
    Ok(Outcome::Output(tile_png(
        &pixels,
        kind,
        output.width,
        output.height,
    )?))
}

/// Joins the upscaled tiles (16-bit PNGs, in tile order) into the final PNG, in the kind of
/// picture the tiles were cut from; stops, [`Outcome::Abandoned`], between tiles and before
/// the join once `abort` is set.
pub fn stitch(
    plan: &v1::ImagePlan,
    tiles: &[Vec<u8>],
    abort: &AtomicBool,
) -> anyhow::Result<Outcome> {
    let plan = tile_plan(plan)?;
    if tiles.len() != plan.tiles.len() {
        bail!(
            "the stitch has {} tiles, its plan {}",
            tiles.len(),
            plan.tiles.len()
        );
    }
    let _span = tracing::info_span!(
        "stitch",
        tiles = tiles.len(),
        width = plan.out_width(),
        height = plan.out_height()
    )
    .entered();
    let mut kinds = Vec::with_capacity(tiles.len());
    let mut contributions = Vec::with_capacity(tiles.len());
    for (index, bytes) in tiles.iter().enumerate() {
        if dropped(abort) {
            return Ok(Outcome::Abandoned);
        }
        let (pixels, kind, _, _) =
            read_tile_png(bytes).with_context(|| format!("tile {index} of the stitch"))?;
        kinds.push(kind);
        contributions.push(pixels);
    }
    let kind = kinds[0];
    if let Some(other) = kinds.iter().position(|k| *k != kind) {
        bail!("tile {other} of the stitch was cut from another kind of picture than tile 0");
    }
    if dropped(abort) {
        return Ok(Outcome::Abandoned);
    }
    join(plan, kind, &contributions).map(Outcome::Output)
}

/// The tile geometry a task carries.
fn tile_plan(plan: &v1::ImagePlan) -> anyhow::Result<TilePlan> {
    let spec = TileSpec {
        tile: plan.tile,
        pad: plan.pad,
        overlap: plan.overlap,
    };
    Ok(TilePlan::new(plan.width, plan.height, plan.scale, spec)?)
}

/// Blends each tile's `contributions` (in tile order) into the final picture of `kind`, as PNG.
fn join(plan: TilePlan, kind: PictureKind, contributions: &[Vec<f32>]) -> anyhow::Result<Vec<u8>> {
    let (width, height) = (plan.out_width(), plan.out_height());
    let mut stitcher = Stitcher::new(plan, kind.channels());
    for (index, pixels) in contributions.iter().enumerate() {
        stitcher.add_contribution(index, pixels)?;
    }
    let picture = Picture::from_interleaved(kind, width, height, &stitcher.finish()?)?;
    Ok(encode_png(&picture)?)
}

/// How a task's work ended on this worker.
#[derive(Debug)]
pub enum Outcome {
    /// The output, to hand back.
    Output(Vec<u8>),
    /// Nothing: the task was cancelled or its lease ended (another worker may hold it now).
    Abandoned,
    /// A render stopped early because this worker drains or its job was paused: its
    /// checkpoint, for the next attempt.
    Paused {
        /// The render's state after `iteration` iterations.
        checkpoint: Vec<u8>,
        /// Iterations done.
        iteration: u32,
    },
}

/// Renders a generate task, from `checkpoint` when an earlier attempt left one, until it ends
/// or `progress` halts it.
pub fn generate(
    cache: &mut ModelCache,
    spec: &v1::GenerateSpec,
    checkpoint: Option<&[u8]>,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<Halt>,
) -> anyhow::Result<Outcome> {
    let wire = spec.settings.as_ref().context("the task has no settings")?;
    let job = tessera_proto::convert::settings(wire).context("the task's settings")?;
    let mode = cache.render_mode;
    let (clip, vq) = cache.generators(&job.clip_model, &job.vqgan_model)?;
    let run = match checkpoint {
        Some(bytes) => Run::resume(bytes, clip, vq)?,
        None => {
            let prompts = PromptSpec::parse(&spec.prompt, "", "")?;
            let settings = render_settings(job, prompts, spec.seed, mode);
            Run::start(&[settings], clip, vq)?
        }
    };
    Ok(match drive_until(run, progress)? {
        Driven::Finished(mut outputs) => Outcome::Output(outputs.remove(0).png),
        Driven::Abandoned => Outcome::Abandoned,
        Driven::Paused {
            checkpoint,
            iteration,
        } => Outcome::Paused {
            checkpoint,
            iteration,
        },
    })
}

/// The loop's settings of a job's render: the job's choices, this worker's render mode.
fn render_settings(
    job: tessera_core::job::Settings,
    prompts: PromptSpec,
    seed: u64,
    mode: RenderMode,
) -> Settings {
    Settings {
        width: job.width,
        height: job.height,
        iterations: job.iterations,
        init: job
            .init_noise
            .map_or(LatentInit::RandomTokens, LatentInit::from),
        init_weight: job.init_weight,
        optimiser: job.optimiser,
        learning_rate: job.learning_rate,
        cut_method: job.cut_method,
        cutn: job.cutn,
        cut_pow: job.cut_pow,
        augments: job.augments,
        noise_fac: job.noise_fac,
        tv_weight: job.tv_weight,
        change_prompt_every: job.change_prompt_every,
        preview_every: job.preview_every,
        checkpoint_every: job.checkpoint_every,
        precision: mode.precision,
        recompute_decoder: mode.recompute_decoder,
        perceptor_model: job.clip_model,
        codec_model: job.vqgan_model,
        ..Settings::new(prompts, seed)
    }
}
