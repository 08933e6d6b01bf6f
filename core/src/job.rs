//! Render jobs as users submit them: the settings of a render with per-prompt overrides, the
//! models a farm offers, the limits of one job, the two prompt file forms, and the errors that
//! say what to fix.
//!
//! A job is a batch of prompts x seeds x settings; an upscale-only job is a list of users'
//! pictures. [`crate::plan`] turns a job into tasks. All of this is pure so the CLI can check a
//! batch before sending it and the coordinator can refuse it with the same words.

use crate::loop_options::{self, Augment, CutMethod, InitNoise, OptimiserKind};
use crate::prompt::PromptError;
use crate::settings::{self as defs, OutOfRange};
use crate::task::{ArtifactRef, Requirements, TaskKind};
use crate::tiles::{TileError, TilePlan, TileSpec};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Width and height of a generated picture must be multiples of this (VQGAN's downsampling).
pub const SIZE_MULTIPLE: u32 = 16;

/// The `upscale_model` value that turns the upscale stage off.
pub const NO_UPSCALE: &str = "none";

/// The upscale stage of a render: which model and how the picture is cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upscale {
    /// Upscale model, as named in the catalogue.
    pub model: String,
    /// Output pixels per input pixel of that model.
    pub scale: u32,
    /// How pictures are cut into tiles.
    pub tile: TileSpec,
}

/// Every setting of one render, resolved: job defaults with the prompt's overrides applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// CLIP model judging the picture.
    pub clip_model: String,
    /// VQGAN model whose latent is optimised.
    pub vqgan_model: String,
    /// Picture width in pixels, a multiple of [`SIZE_MULTIPLE`].
    pub width: u32,
    /// Picture height in pixels, a multiple of [`SIZE_MULTIPLE`].
    pub height: u32,
    /// Optimiser steps.
    pub iterations: u32,
    /// Cutouts per step.
    pub cutn: u32,
    /// Crop-size exponent of the cutouts.
    pub cut_pow: f64,
    /// Learning rate of the optimiser.
    pub learning_rate: f64,
    /// Pull back towards the starting latent (0: none).
    pub init_weight: f64,
    /// Update rule of the latent.
    #[serde(default)]
    pub optimiser: OptimiserKind,
    /// How cutouts are made.
    #[serde(default)]
    pub cut_method: CutMethod,
    /// Augmentations of the `latest` cutouts, in order.
    #[serde(default = "default_augments")]
    pub augments: Vec<Augment>,
    /// Largest per-cutout noise level of the `latest` cutouts.
    #[serde(default = "default_noise_fac")]
    pub noise_fac: f64,
    /// Steps per story phase (`^` in the prompt; 0: the phases share the steps evenly).
    #[serde(default)]
    pub change_prompt_every: u32,
    /// Start from encoded random pixels or a gradient instead of random codebook tokens.
    #[serde(default)]
    pub init_noise: Option<InitNoise>,
    /// Weight of the picture's total variation in the loss (0: none).
    #[serde(default)]
    pub tv_weight: f64,
    /// A checkpoint every this many steps, so a lost worker's successor resumes (0: none).
    pub checkpoint_every: u32,
    /// A preview picture every this many steps (0: none).
    pub preview_every: u32,
    /// The upscale stage, or `None` to keep the generated picture as the result.
    pub upscale: Option<Upscale>,
    /// Device the work must run on: empty for any, `cuda` or `cpu` for a kind, `cuda:1` exactly.
    pub device: String,
}

impl Settings {
    /// The farm's defaults, from [`crate::settings`]: 496x496, 500 steps, 32 cutouts, Adam at
    /// 0.1, ViT-B/32 with vqgan_imagenet_f16_16384, a checkpoint and a preview every 50 steps,
    /// then Real-ESRGAN x4plus in 256-pixel tiles.
    pub fn farm_defaults() -> Settings {
        Settings {
            clip_model: defs::CLIP_MODEL.farm_default.into(),
            vqgan_model: defs::VQGAN_MODEL.farm_default.into(),
            width: defs::WIDTH.farm_default,
            height: defs::HEIGHT.farm_default,
            iterations: defs::ITERATIONS.farm_default,
            cutn: defs::CUTN.farm_default,
            cut_pow: defs::CUT_POW.farm_default,
            learning_rate: defs::LEARNING_RATE.farm_default,
            init_weight: defs::INIT_WEIGHT.farm_default,
            optimiser: defs::OPTIMISER.farm_default,
            cut_method: defs::CUT_METHOD.farm_default,
            augments: default_augments(),
            noise_fac: default_noise_fac(),
            change_prompt_every: defs::CHANGE_PROMPT_EVERY.farm_default,
            init_noise: defs::INIT_NOISE.farm_default,
            tv_weight: defs::TV_WEIGHT.farm_default,
            checkpoint_every: defs::CHECKPOINT_EVERY.farm_default,
            preview_every: defs::PREVIEW_EVERY.farm_default,
            upscale: Some(Upscale {
                model: "realesrgan-x4plus".into(),
                scale: 4,
                tile: TileSpec::default(),
            }),
            device: String::new(),
        }
    }

    /// These settings with `patch` applied and everything checked against the catalogue and
    /// limits.
    pub fn apply(
        &self,
        patch: &SettingsPatch,
        catalog: &ModelCatalog,
        limits: &Limits,
    ) -> Result<Settings, JobError> {
        let mut s = self.clone();
        if let Some(name) = &patch.clip_model {
            s.clip_model = catalog.find(ModelFamily::Clip, name)?.to_string();
        }
        if let Some(name) = &patch.vqgan_model {
            s.vqgan_model = catalog.find(ModelFamily::Vqgan, name)?.to_string();
        }
        set(&mut s.width, patch.width);
        set(&mut s.height, patch.height);
        set(&mut s.iterations, patch.iterations);
        set(&mut s.cutn, patch.cutn);
        set(&mut s.cut_pow, patch.cut_pow);
        set(&mut s.learning_rate, patch.learning_rate);
        set(&mut s.init_weight, patch.init_weight);
        s.apply_loop_choices(patch)?;
        set(&mut s.noise_fac, patch.noise_fac);
        set(&mut s.tv_weight, patch.tv_weight);
        set(&mut s.change_prompt_every, patch.change_prompt_every);
        set(&mut s.checkpoint_every, patch.checkpoint_every);
        set(&mut s.preview_every, patch.preview_every);
        if let Some(device) = &patch.device {
            s.device = device.trim().to_string();
        }
        s.upscale = s.apply_upscale(patch, catalog)?;
        s.validate(limits)?;
        Ok(s)
    }

    /// The named choices of the loop (update rule, cutouts, augmentations, starting picture).
    fn apply_loop_choices(&mut self, patch: &SettingsPatch) -> Result<(), JobError> {
        if let Some(name) = &patch.optimiser {
            self.optimiser = choice("optimiser", name)?;
        }
        if let Some(name) = &patch.cut_method {
            self.cut_method = choice("cut_method", name)?;
        }
        if let Some(list) = &patch.augments {
            self.augments = loop_options::parse_augments(list)
                .map_err(|name| unknown_choice::<Augment>("augments", &name))?;
        }
        if let Some(name) = &patch.init_noise {
            self.init_noise = loop_options::parse_init_noise(name)
                .map_err(|name| unknown_choice::<InitNoise>("init_noise", &name))?;
        }
        Ok(())
    }

    fn apply_upscale(
        &self,
        patch: &SettingsPatch,
        catalog: &ModelCatalog,
    ) -> Result<Option<Upscale>, JobError> {
        let mut upscale = match patch.upscale_model.as_deref() {
            Some(name) if name.eq_ignore_ascii_case(NO_UPSCALE) => return Ok(None),
            Some(name) => {
                let model = catalog.upscale_model(name)?;
                Some(Upscale {
                    model: model.name.clone(),
                    scale: model.scale,
                    tile: self.upscale.as_ref().map(|u| u.tile).unwrap_or_default(),
                })
            }
            None => self.upscale.clone(),
        };
        if let Some(u) = upscale.as_mut() {
            set(&mut u.tile.tile, patch.tile);
            set(&mut u.tile.pad, patch.tile_pad);
            set(&mut u.tile.overlap, patch.tile_overlap);
        }
        if let (Some(scale), Some(u)) = (patch.upscale_scale, &upscale) {
            if scale != u.scale {
                return Err(JobError::out_of_range(
                    "upscale_scale",
                    scale,
                    format!("{} (the scale of {})", u.scale, u.model),
                ));
            }
        }
        Ok(upscale)
    }

    /// Checks every value against its range and the limits.
    pub fn validate(&self, limits: &Limits) -> Result<(), JobError> {
        for (field, value) in [("width", self.width), ("height", self.height)] {
            check_side(field, value, limits)?;
        }
        if self.iterations == 0 {
            return Err(JobError::out_of_range("iterations", 0, "at least 1".into()));
        }
        if self.iterations > limits.max_iterations {
            return Err(JobError::TooManyIterations {
                value: self.iterations,
                max: limits.max_iterations,
            });
        }
        for side in [(&defs::WIDTH, self.width), (&defs::HEIGHT, self.height)] {
            side.0.check(side.1)?;
        }
        defs::CUTN.check(self.cutn)?;
        for (setting, value) in [
            (&defs::CUT_POW, self.cut_pow),
            (&defs::LEARNING_RATE, self.learning_rate),
            (&defs::INIT_WEIGHT, self.init_weight),
            (&defs::NOISE_FAC, self.noise_fac),
            (&defs::TV_WEIGHT, self.tv_weight),
        ] {
            setting.check(value)?;
        }
        check_device(&self.device)?;
        if let Some(u) = &self.upscale {
            TilePlan::new(self.width, self.height, u.scale, u.tile).map_err(JobError::Tile)?;
        }
        Ok(())
    }

    /// The requirements of this render's generate task.
    pub fn generate_requirements(&self) -> Requirements {
        Requirements {
            kind: TaskKind::Generate,
            models: sorted_models([&self.clip_model, &self.vqgan_model]),
            device: self.device.clone(),
            pixels: u64::from(self.width) * u64::from(self.height),
            side: self.width.max(self.height),
            iterations: self.iterations,
        }
    }
}

/// A named choice of the loop, or an error naming the field and every accepted name.
fn choice<T: clap::ValueEnum>(field: &'static str, name: &str) -> Result<T, JobError> {
    loop_options::parse(name).ok_or_else(|| unknown_choice::<T>(field, name))
}

fn unknown_choice<T: clap::ValueEnum>(field: &'static str, name: &str) -> JobError {
    JobError::UnknownChoice {
        field,
        name: name.trim().to_string(),
        known: loop_options::names::<T>(),
    }
}

fn default_augments() -> Vec<Augment> {
    defs::AUGMENTS.farm_default.to_vec()
}

fn default_noise_fac() -> f64 {
    defs::NOISE_FAC.farm_default
}

fn set<T: Copy>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

fn check_side(field: &'static str, value: u32, limits: &Limits) -> Result<(), JobError> {
    if value == 0 || value > limits.max_side {
        return Err(JobError::out_of_range(
            field,
            value,
            format!("between {SIZE_MULTIPLE} and {} pixels", limits.max_side),
        ));
    }
    if !value.is_multiple_of(SIZE_MULTIPLE) {
        let below = value / SIZE_MULTIPLE * SIZE_MULTIPLE;
        return Err(JobError::NotMultiple {
            field,
            value,
            below,
            above: below + SIZE_MULTIPLE,
        });
    }
    Ok(())
}

/// Refuses a device no worker can be: a job asking for `banana` would wait forever.
pub(crate) fn check_device(device: &str) -> Result<(), JobError> {
    let one_cuda = device
        .strip_prefix("cuda:")
        .is_some_and(|n| n.parse::<u16>().is_ok_and(|n| n < 1024) && !n.starts_with('+'));
    if matches!(device, "" | "cpu" | "cuda") || one_cuda {
        Ok(())
    } else {
        Err(JobError::out_of_range(
            "device",
            device,
            "empty (any), cpu, cuda (any CUDA device) or cuda:N (that one)".into(),
        ))
    }
}

/// Settings a user changes, at job level or for one prompt; every field is optional and unset
/// fields keep the value from the level above.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// See [`Settings::clip_model`].
    pub clip_model: Option<String>,
    /// See [`Settings::vqgan_model`].
    pub vqgan_model: Option<String>,
    /// See [`Settings::width`].
    pub width: Option<u32>,
    /// See [`Settings::height`].
    pub height: Option<u32>,
    /// See [`Settings::iterations`].
    pub iterations: Option<u32>,
    /// See [`Settings::cutn`].
    pub cutn: Option<u32>,
    /// See [`Settings::cut_pow`].
    pub cut_pow: Option<f64>,
    /// See [`Settings::learning_rate`].
    pub learning_rate: Option<f64>,
    /// See [`Settings::init_weight`].
    pub init_weight: Option<f64>,
    /// See [`Settings::optimiser`]: `adam`, `adamw`, `adagrad` or `rmsprop`.
    pub optimiser: Option<String>,
    /// See [`Settings::cut_method`]: `latest` or `original`.
    pub cut_method: Option<String>,
    /// See [`Settings::augments`]: names joined by `,` (`affine`, `perspective`, `jitter`,
    /// `erasing`, or `generate.py`'s `Af`, `Pe`, `Ji`, `Er`); empty for none.
    pub augments: Option<String>,
    /// See [`Settings::noise_fac`].
    pub noise_fac: Option<f64>,
    /// See [`Settings::tv_weight`].
    pub tv_weight: Option<f64>,
    /// See [`Settings::change_prompt_every`].
    pub change_prompt_every: Option<u32>,
    /// See [`Settings::init_noise`]: `pixels`, `gradient`, or
    /// [`loop_options::NO_INIT_NOISE`].
    pub init_noise: Option<String>,
    /// See [`Settings::checkpoint_every`].
    pub checkpoint_every: Option<u32>,
    /// See [`Settings::preview_every`].
    pub preview_every: Option<u32>,
    /// Upscale model, or [`NO_UPSCALE`] to keep the generated picture.
    pub upscale_model: Option<String>,
    /// Must equal the model's scale when given; users write it to make sure of the output size.
    pub upscale_scale: Option<u32>,
    /// See [`TileSpec::tile`].
    pub tile: Option<u32>,
    /// See [`TileSpec::pad`].
    pub tile_pad: Option<u32>,
    /// See [`TileSpec::overlap`].
    pub tile_overlap: Option<u32>,
    /// See [`Settings::device`].
    pub device: Option<String>,
}

/// Parses `WxH` (as in `--size 496x496`) into width and height.
pub fn parse_size(text: &str) -> Result<(u32, u32), JobError> {
    let bad = || JobError::BadSize {
        text: text.to_string(),
    };
    let (w, h) = text.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    ))
}

/// A family of models the catalogue knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFamily {
    /// Image/text encoders judging the picture.
    Clip,
    /// Latent codecs being optimised.
    Vqgan,
    /// Super-resolution networks.
    Upscale,
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelFamily::Clip => "CLIP",
            ModelFamily::Vqgan => "VQGAN",
            ModelFamily::Upscale => "upscale",
        })
    }
}

/// An upscale model and its fixed scale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpscaleModel {
    /// Name as workers advertise it.
    pub name: String,
    /// Output pixels per input pixel.
    pub scale: u32,
}

/// The models a farm offers; a job naming any other is refused at submission instead of
/// waiting forever for a worker that has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCatalog {
    /// CLIP models.
    pub clip: Vec<String>,
    /// VQGAN models.
    pub vqgan: Vec<String>,
    /// Upscale models with their scales.
    pub upscale: Vec<UpscaleModel>,
}

impl Default for ModelCatalog {
    /// The models of VQGAN-CLIP's `generate.py` and the Real-ESRGAN weights the set-up installs.
    fn default() -> Self {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        let up = |name: &str, scale| UpscaleModel {
            name: name.into(),
            scale,
        };
        ModelCatalog {
            clip: names(&["ViT-B/32", "ViT-B/16", "ViT-L/14", "RN50", "RN101"]),
            vqgan: names(&[
                "vqgan_imagenet_f16_16384",
                "vqgan_imagenet_f16_1024",
                "vqgan_gumbel_f8_8192",
                "wikiart_16384",
                "sflckr",
            ]),
            upscale: vec![
                up("realesrgan-x4plus", 4),
                up("realesrgan-x4plus-anime", 4),
                up("realesr-animevideov3-x4", 4),
                up("realesr-general-x4v3", 4),
                up("RealESRGAN_x2plus", 2),
            ],
        }
    }
}

impl ModelCatalog {
    /// The catalogue's spelling of `name` in `family` (matched like workers match files: case
    /// and `_` versus `-` ignored), or an error listing what exists.
    pub fn find(&self, family: ModelFamily, name: &str) -> Result<&str, JobError> {
        let names: Vec<&str> = match family {
            ModelFamily::Clip => self.clip.iter().map(String::as_str).collect(),
            ModelFamily::Vqgan => self.vqgan.iter().map(String::as_str).collect(),
            ModelFamily::Upscale => self.upscale.iter().map(|m| m.name.as_str()).collect(),
        };
        let wanted = normalise_model(name);
        names
            .iter()
            .find(|n| normalise_model(n) == wanted)
            .copied()
            .ok_or_else(|| JobError::UnknownModel {
                family,
                name: name.to_string(),
                known: names.join(", "),
            })
    }

    /// The upscale model called `name`.
    pub fn upscale_model(&self, name: &str) -> Result<&UpscaleModel, JobError> {
        let found = self.find(ModelFamily::Upscale, name)?;
        Ok(self
            .upscale
            .iter()
            .find(|m| m.name == found)
            .expect("find returned a catalogue name"))
    }
}

/// A model name in the form capabilities are compared in: lower case, `-` for `_`.
pub fn normalise_model(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

/// Model names as a worker offers and a task needs them: normalised, sorted, each once.
pub fn sorted_models<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut models: Vec<String> = names.into_iter().map(|n| normalise_model(n)).collect();
    models.sort();
    models.dedup();
    models
}

/// Characters of a job's or an input picture's name: as long as a file name may be, short
/// enough for every listing.
pub const MAX_NAME_CHARS: usize = 255;

/// Refuses `text` (a prompt, a name) longer than `max` characters or holding a control
/// character other than a tab: what users send is printed on other users' terminals, where an
/// escape sequence would take the terminal over and a NUL or a line break would garble it.
pub fn check_shown_text(what: &'static str, text: &str, max: usize) -> Result<(), JobError> {
    let chars = text.chars().count();
    if chars > max {
        return Err(JobError::TooLong { what, chars, max });
    }
    match text.chars().position(|c| c.is_control() && c != '\t') {
        Some(index) => Err(JobError::ControlCharacter {
            what,
            character: text.chars().nth(index).expect("found at this index"),
            position: index + 1,
        }),
        None => Ok(()),
    }
}

/// Seeds per prompt a farm takes at most (a tenant's limit may be lower).
pub const MAX_SEEDS_PER_PROMPT: usize = 1_000;

/// Bounds on what one job may ask for, so one submission cannot swamp the farm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Prompts (or input pictures) per job.
    pub max_prompts: usize,
    /// Seeds per prompt.
    pub max_seeds: usize,
    /// Results (prompts x seeds) per job.
    pub max_results: usize,
    /// Optimiser steps per render.
    pub max_iterations: u32,
    /// Width or height of a generated picture.
    pub max_side: u32,
    /// Characters per prompt.
    pub max_prompt_chars: usize,
    /// Pixels of an input picture of an upscale-only job.
    pub max_input_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prompts: 10_000,
            max_seeds: MAX_SEEDS_PER_PROMPT,
            max_results: 100_000,
            max_iterations: 10_000,
            max_side: 4096,
            max_prompt_chars: 2_000,
            max_input_pixels: 4096 * 4096,
        }
    }
}

/// One prompt of a batch with its own seeds and overrides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptEntry {
    /// The prompt, in the generation loop's syntax (`text:weight|text^story phase`).
    pub text: String,
    /// Seeds for this prompt instead of the job's.
    pub seeds: Option<Vec<u64>>,
    /// Settings for this prompt instead of the job's.
    pub settings: SettingsPatch,
    /// Line of the prompt file it came from (1-based), for error messages; 0 when none.
    pub line: usize,
}

/// A user's picture to upscale, already uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputImage {
    /// The name the user knows it by (its file name).
    pub name: String,
    /// The uploaded file; width and height must be set.
    pub artifact: ArtifactRef,
}

/// What a job works on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobSource {
    /// Render these prompts.
    Prompts(Vec<PromptEntry>),
    /// Upscale these pictures.
    Images(Vec<InputImage>),
}

/// The priorities a job may have, at submission and after (`tessera priority`): room for any
/// scheme of levels, while a slip of the keyboard (an extra digit) is refused instead of putting
/// one job above every other for good.
pub const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;

/// Refuses a priority outside [`PRIORITIES`], naming the range.
pub fn check_priority(priority: i32) -> Result<(), JobError> {
    if PRIORITIES.contains(&priority) {
        return Ok(());
    }
    Err(JobError::out_of_range(
        "priority",
        priority,
        format!("{}..={}", PRIORITIES.start(), PRIORITIES.end()),
    ))
}

/// A job as submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// A label for listings.
    pub name: String,
    /// Larger runs first; jobs of equal priority share the farm.
    pub priority: i32,
    /// Settings for every prompt, over the farm's defaults.
    pub settings: SettingsPatch,
    /// Seeds of every prompt without its own; empty means seed 0.
    pub seeds: Vec<u64>,
    /// Prompts or pictures.
    pub source: JobSource,
    /// Settings rendered at several values: every prompt and seed at each combination.
    #[serde(default)]
    pub sweeps: Vec<crate::sweep::Sweep>,
}

/// Parses a prompt file in the text form: one prompt per line; blank lines and lines starting
/// with `#` are skipped. A file that reads as JSON is refused: read as text, each of its
/// lines (`[`, `"a cat",`) would become a prompt.
pub fn parse_prompts_text(text: &str) -> Result<Vec<PromptEntry>, JobError> {
    let text = without_byte_order_mark(text);
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .peekable();
    let first_is_object = lines.peek().is_some_and(|(_, l)| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v.is_object())
    });
    let whole_is_array =
        serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_array());
    if first_is_object || whole_is_array {
        return Err(JobError::JsonAsText);
    }
    Ok(lines
        .map(|(i, l)| PromptEntry {
            text: l.trim().to_string(),
            line: i + 1,
            ..PromptEntry::default()
        })
        .collect())
}

/// Parses a prompt file in the JSONL form: one prompt per line, a string or an object with
/// `prompt`, optional `seeds` and any [`SettingsPatch`] field; blank lines are skipped.
/// Errors name the line, and the field where one is wrong.
pub fn parse_prompts_jsonl(text: &str) -> Result<Vec<PromptEntry>, JobError> {
    let mut entries = Vec::new();
    for (i, raw) in without_byte_order_mark(text).lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let bad = |message: String| JobError::Jsonl { line, message };
        let item: PromptItem = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        entries.push(item.entry(line).map_err(bad)?);
    }
    Ok(entries)
}

/// Parses a prompt file in the JSON form: an array whose elements are what a JSONL line
/// holds. Errors name the element (and, for JSON that does not read, the line and column).
pub fn parse_prompts_json(text: &str) -> Result<Vec<PromptEntry>, JobError> {
    let items: Vec<PromptItem> = serde_json::from_str(without_byte_order_mark(text))
        .map_err(|e| JobError::Json(e.to_string()))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            item.entry(0)
                .map_err(|message| JobError::Json(format!("element {}: {message}", i + 1)))
        })
        .collect()
}

/// The text without the byte-order mark some editors put first: it is not part of any prompt,
/// and left in place it would turn a first `# comment` into a prompt.
fn without_byte_order_mark(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// One prompt of a JSONL line or a JSON array, as read: a string, or an object whose keys
/// are each given once (JSON readers keep the last of a repeated key, silently dropping the
/// other).
enum PromptItem {
    Text(String),
    Object(serde_json::Map<String, serde_json::Value>),
}

impl PromptItem {
    /// The entry this item asks for, from line `line` (0 for none); the error names the field.
    fn entry(self, line: usize) -> Result<PromptEntry, String> {
        let mut map = match self {
            PromptItem::Text(text) => {
                return Ok(PromptEntry {
                    text,
                    line,
                    ..PromptEntry::default()
                })
            }
            PromptItem::Object(map) => map,
        };
        let text = match map.remove("prompt") {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err("\"prompt\" must be a string".into()),
            None => return Err("missing \"prompt\"".into()),
        };
        let seeds = map
            .remove("seeds")
            .map(serde_json::from_value::<Vec<u64>>)
            .transpose()
            .map_err(|e| format!("\"seeds\" must be a list of whole numbers: {e}"))?;
        let settings: SettingsPatch = serde_path_to_error::deserialize(serde_json::Value::Object(
            map,
        ))
        .map_err(|e| match e.path().to_string().as_str() {
            "." => e.inner().to_string(),
            field => format!("\"{field}\": {}", e.inner()),
        })?;
        Ok(PromptEntry {
            text,
            seeds,
            settings,
            line,
        })
    }
}

impl<'de> Deserialize<'de> for PromptItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PromptItemVisitor)
    }
}

struct PromptItemVisitor;

impl<'de> serde::de::Visitor<'de> for PromptItemVisitor {
    type Value = PromptItem;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a prompt: a string, or an object such as {\"prompt\": \"a lighthouse\"}")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<PromptItem, E> {
        Ok(PromptItem::Text(text.to_string()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut access: A,
    ) -> Result<PromptItem, A::Error> {
        let mut map = serde_json::Map::new();
        while let Some((key, value)) = access.next_entry::<String, serde_json::Value>()? {
            if map.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "\"{key}\" is given twice; give each field once"
                )));
            }
            map.insert(key, value);
        }
        Ok(PromptItem::Object(map))
    }
}

/// A job that cannot be accepted, saying what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// No prompts or pictures.
    #[error("the job has no {what}: give at least one")]
    EmptyBatch {
        /// "prompts" or "images".
        what: &'static str,
    },
    /// A prompt file in the JSON form that cannot be read.
    #[error("prompts JSON: {0}")]
    Json(String),
    /// A prompt file sent as text that reads as JSON.
    #[error(
        "the prompt file reads as JSON, not as one prompt per line: name it .json for an array \
         of prompts, or .jsonl for one per line"
    )]
    JsonAsText,
    /// A JSONL prompt line that cannot be read.
    #[error("prompts JSONL line {line}: {message}")]
    Jsonl {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A prompt the generation loop could not use.
    #[error("{0}")]
    Prompt(PromptError),
    /// A prompt or a name longer than the limit.
    #[error("the {what} has {chars} characters; the limit is {max}")]
    TooLong {
        /// "prompt", "job name", "image name".
        what: &'static str,
        /// Its length.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// A control character in text that is shown to people.
    #[error(
        "the {what} holds the control character {} at character {position}; it would be \
         printed to terminals as it is, so it is refused",
        character.escape_unicode()
    )]
    ControlCharacter {
        /// "prompt", "job name", "image name".
        what: &'static str,
        /// The control character found, shown escaped in the message.
        character: char,
        /// Where, counting characters from 1.
        position: usize,
    },
    /// The same seed twice for one prompt: the results would be the same picture.
    #[error("seed {seed} is given twice; one seed makes one picture, so a repeat makes the same one again")]
    RepeatedSeed {
        /// The seed given more than once.
        seed: u64,
    },
    /// A side that VQGAN cannot produce.
    #[error("{field} {value} is not a multiple of 16: use {below} or {above}")]
    NotMultiple {
        /// `width` or `height`.
        field: &'static str,
        /// The value given.
        value: u32,
        /// The nearest allowed value below.
        below: u32,
        /// The nearest allowed value above.
        above: u32,
    },
    /// A `WxH` size that cannot be read.
    #[error("size '{text}' is not WIDTHxHEIGHT, for example 496x496")]
    BadSize {
        /// The text given.
        text: String,
    },
    /// A model outside the catalogue.
    #[error("unknown {family} model '{name}'; known: {known}")]
    UnknownModel {
        /// Which family.
        family: ModelFamily,
        /// The name given.
        name: String,
        /// The catalogue's names.
        known: String,
    },
    /// More of something than a job may hold.
    #[error("too many {what}: {count}, the limit is {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More optimiser steps than the limit.
    #[error("too many iterations: {value}, the limit is {max}")]
    TooManyIterations {
        /// The value given.
        value: u32,
        /// The limit.
        max: u32,
    },
    /// A named choice that does not exist.
    #[error("{field} '{name}' is not known; choose from {known}")]
    UnknownChoice {
        /// The setting whose name is unknown (`optimiser`, `augments`, ...).
        field: &'static str,
        /// The name given.
        name: String,
        /// Every accepted name.
        known: String,
    },
    /// A setting out of its range.
    #[error("{field} = {value} is out of range: it must be {expected}")]
    OutOfRange {
        /// The setting out of range, as users write it.
        field: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        expected: String,
    },
    /// Tile settings that cannot cut the picture.
    #[error("tile settings: {0}")]
    Tile(TileError),
    /// A tile index outside the plan.
    #[error("tile {index} is not in the plan ({count} tiles)")]
    NoSuchTile {
        /// The tile index asked for.
        index: u32,
        /// Tiles in the plan.
        count: usize,
    },
    /// An input picture that cannot be upscaled.
    #[error("input image '{name}': {reason}")]
    BadImage {
        /// The picture's name in the job, as the user uploaded it.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A finished task whose picture has the wrong size.
    #[error("task {task} produced a {}x{} picture, expected {}x{}", got.0, got.1, expected.0, expected.1)]
    WrongOutput {
        /// The task whose output is refused.
        task: String,
        /// Size delivered.
        got: (u32, u32),
        /// Size asked for.
        expected: (u32, u32),
    },
    /// A sweep that cannot be made.
    #[error("{0}")]
    Sweep(#[from] crate::sweep::SweepError),
    /// A problem at a place in the batch.
    #[error("{place}: {source}")]
    At {
        /// Where: "line 7", "prompt 3", "image 2 (cat.png)", "job settings".
        place: String,
        /// The problem.
        source: Box<JobError>,
    },
}

impl From<OutOfRange> for JobError {
    fn from(e: OutOfRange) -> Self {
        JobError::OutOfRange {
            field: e.field,
            value: e.value,
            expected: e.expected,
        }
    }
}

impl JobError {
    pub(crate) fn out_of_range(
        field: &'static str,
        value: impl fmt::Display,
        expected: String,
    ) -> Self {
        JobError::OutOfRange {
            field,
            value: value.to_string(),
            expected,
        }
    }

    /// This error, said to happen at `place`.
    pub fn at(self, place: &str) -> JobError {
        JobError::At {
            place: place.to_string(),
            source: Box::new(self),
        }
    }
}
