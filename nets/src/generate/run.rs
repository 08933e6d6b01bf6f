//! One optimisation run of B renders at once: their latents decoded in one batch, their cutouts
//! judged by CLIP in one batch, one backward pass, then each latent stepped by its own optimiser.
//!
//! Renders in a batch never mix: each has its own latent, seed (hence cutouts, augmentations and
//! noise), targets and optimiser, and the loss is a sum of per-render terms, so each latent's
//! gradient is its own render's. The only coupling is numerical: the networks' batched kernels
//! may round differently from single-image ones (measured on the test networks: latents within
//! 1.3e-6 after 10 iterations; see `tests.rs`), so a batched render matches its lone render to
//! float tolerance, not bit for bit. A resumed batch matches the uninterrupted batch bit for bit.

use super::cutouts::{CutDraws, CutMethod, Cutter};
use super::init::{draw_init, initial_latent, tensor_to_image, Geometry, ImageError};
use super::loss::{init_loss, prompt_loss, total_variation};
use super::optim::Optimiser;
use super::record::{Draw, DrawRecorder};
use super::rng::{Purpose, RunRng};
use super::settings::{Precision, Settings, SettingsError};
use super::state::{self, StateError};
use super::synth::{vector_quantize, ClampBoundary};
use super::targets::{build_targets, TargetError, Targets};
use super::traits::{LatentCodec, Perceptor};
use image::RgbImage;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Why a run could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// An empty batch.
    #[error("nothing to render: give at least one set of settings")]
    NoRenders,
    /// A setting out of range.
    #[error("render {index}: {source}")]
    Settings {
        /// Position in the batch.
        index: usize,
        /// The range error.
        source: SettingsError,
    },
    /// Two renders of a batch that differ where they must agree.
    #[error(
        "render {index} differs from render 0 in `{field}`, which renders batched together must \
         share: render them separately or align the setting"
    )]
    Batch {
        /// Position in the batch.
        index: usize,
        /// The setting that differs.
        field: &'static str,
    },
    /// A size smaller than one latent cell.
    #[error(
        "size {width}x{height} is too small: VQGAN needs at least {factor}x{factor} pixels (sides \
         are rounded down to multiples of {factor})"
    )]
    TooSmall {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
        /// VQGAN's downsampling factor.
        factor: i64,
    },
    /// The starting latent could not be made.
    #[error("render {index}: {source}")]
    Init {
        /// Position in the batch.
        index: usize,
        /// The image error.
        source: ImageError,
    },
    /// A prompt could not be embedded.
    #[error("render {index}: {source}")]
    Targets {
        /// Position in the batch.
        index: usize,
        /// The embedding error.
        source: TargetError,
    },
    /// A checkpoint that cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] StateError),
    /// The output PNG could not be encoded.
    #[error(transparent)]
    Png(#[from] super::png::PngError),
    /// A checkpoint made with other networks than the ones given to resume it.
    #[error(
        "the checkpoint does not fit these models: {what} should be {expected}, found {found} \
         (resume with the CLIP and VQGAN it was made with)"
    )]
    Mismatch {
        /// Which part does not fit.
        what: &'static str,
        /// What these models need.
        expected: String,
        /// What the checkpoint holds.
        found: String,
    },
    /// `step` after the last iteration.
    #[error("the run has already done all {iterations} iterations")]
    Finished {
        /// The number of iterations of the run.
        iterations: u32,
    },
}

/// One render's optimisation state.
#[derive(Debug)]
pub(crate) struct Element {
    pub settings: Settings,
    pub rng: RunRng,
    /// The latent being optimised: a leaf that requires gradients.
    pub z: Tensor,
    /// The starting latent, for `init_weight`.
    pub z_orig: Tensor,
    pub optimiser: Optimiser,
    pub targets: Targets,
}

/// What one iteration did to one render.
#[derive(Debug, Clone)]
pub struct RenderProgress {
    /// Each loss term (`init`, `text:…`, `image:…`, `noise:…`) and its value.
    pub losses: Vec<(String, f64)>,
    /// The sum of the terms.
    pub total: f64,
    /// The picture at the start of the iteration, when a preview was due.
    pub preview: Option<RgbImage>,
}

/// What one iteration did, for progress callbacks.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The iteration just done, from 0.
    pub iteration: u32,
    /// The run's number of iterations.
    pub iterations: u32,
    /// Time spent optimising so far (including before a resume).
    pub elapsed: Duration,
    /// Per render of the batch, in order.
    pub renders: Vec<RenderProgress>,
    /// The state after this iteration, when a checkpoint was due (filled by the driver).
    pub checkpoint: Option<Vec<u8>>,
}

/// One forward pass: the graph cuts to back-propagate through and the loss terms.
struct Forward {
    /// All latents, concatenated (the input a recomputed decode needs).
    z: Tensor,
    image: ClampBoundary,
    /// Each decoder stage's input when the decoder is recomputed (empty when its graph is kept).
    stage_inputs: Vec<Tensor>,
    clamped_cutouts: Option<ClampBoundary>,
    terms: Vec<Vec<(String, Tensor)>>,
}

/// An optimisation in progress over a batch of renders.
pub struct Run<'m, P: Perceptor + ?Sized, C: LatentCodec + ?Sized> {
    perceptor: &'m P,
    codec: &'m C,
    codebook: Tensor,
    z_min: Tensor,
    z_max: Tensor,
    geometry: Geometry,
    elements: Vec<Element>,
    iteration: u32,
    elapsed_before: Duration,
    started: Instant,
    last_losses: Vec<Vec<(String, f64)>>,
    /// Sees every draw, in parity tests; `None` in production.
    recorder: Option<&'m mut dyn DrawRecorder>,
}

impl<'m, P: Perceptor + ?Sized, C: LatentCodec + ?Sized> Run<'m, P, C> {
    /// Validates the settings, builds every render's starting latent and targets.
    pub fn start(
        settings: &[Settings],
        perceptor: &'m P,
        codec: &'m C,
    ) -> Result<Self, GenerateError> {
        Run::start_recording(settings, perceptor, codec, None)
    }

    /// [`Run::start`], showing `recorder` every random draw of the run as it is made (parity
    /// tests replay them in the reference loop; see `record`).
    pub fn start_recording(
        settings: &[Settings],
        perceptor: &'m P,
        codec: &'m C,
        recorder: Option<&'m mut dyn DrawRecorder>,
    ) -> Result<Self, GenerateError> {
        let first = check_batch(settings)?;
        let mut run = Run::empty(first, perceptor, codec)?;
        run.recorder = recorder;
        let cut_size = perceptor.input_resolution();
        let n_embed = run.codebook.size()[0];
        for (index, s) in settings.iter().enumerate() {
            let rng = RunRng::new(s.seed);
            let size = (s.width, s.height);
            let z = draw_init(&s.init, n_embed, run.geometry, size, &rng)
                .and_then(|draw| {
                    run.record(index, Draw::Init(&draw));
                    initial_latent(&draw, codec, &run.codebook, run.geometry)
                })
                .map_err(|source| GenerateError::Init { index, source })?;
            let cutter = cutter(s, cut_size);
            let targets = build_targets(
                &s.prompts,
                perceptor,
                &cutter,
                run.geometry,
                &rng,
                run.device(),
                &mut |k, draws| {
                    if let Some(r) = run.recorder.as_deref_mut() {
                        r.record(index, Draw::ImagePrompt { index: k, draws });
                    }
                },
            )
            .map_err(|source| GenerateError::Targets { index, source })?;
            let optimiser = Optimiser::new(s.optimiser, s.learning_rate, &z);
            run.elements.push(Element {
                settings: s.clone(),
                rng,
                z_orig: z.copy(),
                z: z.set_requires_grad(true),
                optimiser,
                targets,
            });
        }
        Ok(run)
    }

    /// Continues a run from [`Run::checkpoint`]'s bytes, on the codec's device.
    pub fn resume(
        checkpoint: &[u8],
        perceptor: &'m P,
        codec: &'m C,
    ) -> Result<Self, GenerateError> {
        let device = codec.codebook().device();
        let saved = state::decode(checkpoint, device)?;
        let settings: Vec<Settings> = saved.elements.iter().map(|e| e.settings.clone()).collect();
        let first = check_batch(&settings)?;
        let mut run = Run::empty(first, perceptor, codec)?;
        run.check_fits(&saved.elements)?;
        run.iteration = saved.iteration;
        run.elapsed_before = saved.elapsed;
        run.elements = saved.elements;
        run.last_losses = vec![Vec::new(); run.elements.len()];
        Ok(run)
    }

    fn empty(first: &Settings, perceptor: &'m P, codec: &'m C) -> Result<Self, GenerateError> {
        let codebook = codec.codebook().to_kind(Kind::Float).detach();
        let factor = codec.downsampling_factor();
        let geometry =
            Geometry::new(first.width, first.height, factor).ok_or(GenerateError::TooSmall {
                width: first.width,
                height: first.height,
                factor,
            })?;
        let per_channel = |m: (Tensor, Tensor)| m.0.view([1, -1, 1, 1]);
        Ok(Run {
            perceptor,
            codec,
            z_min: per_channel(codebook.min_dim(0, false)),
            z_max: per_channel(codebook.max_dim(0, false)),
            codebook,
            geometry,
            elements: Vec::new(),
            iteration: 0,
            elapsed_before: Duration::ZERO,
            started: Instant::now(),
            last_losses: Vec::new(),
            recorder: None,
        })
    }

    /// Shows the recorder, if any, a draw of render `render`.
    fn record(&mut self, render: usize, draw: Draw<'_>) {
        if let Some(r) = self.recorder.as_deref_mut() {
            r.record(render, draw);
        }
    }

    fn device(&self) -> Device {
        self.codebook.device()
    }

    /// Rejects saved state made with other networks: latents must fit this VQGAN's codebook and
    /// grid, target embeddings this CLIP's width.
    fn check_fits(&self, elements: &[Element]) -> Result<(), GenerateError> {
        let g = self.geometry;
        let latent = vec![1, self.codebook.size()[1], g.tokens_y, g.tokens_x];
        let width = self.perceptor.embed_dim();
        for e in elements {
            if e.z.size() != latent || e.z_orig.size() != latent {
                return Err(GenerateError::Mismatch {
                    what: "latent",
                    expected: format!("{latent:?}"),
                    found: format!("{:?}", e.z.size()),
                });
            }
            let targets = e.targets.phases.iter().flatten().chain(&e.targets.fixed);
            if let Some(t) = targets
                .into_iter()
                .find(|t| t.embed.size().last() != Some(&width))
            {
                return Err(GenerateError::Mismatch {
                    what: "target embedding",
                    expected: format!("width {width}"),
                    found: format!("{:?} for {}", t.embed.size(), t.label),
                });
            }
        }
        Ok(())
    }

    fn shared(&self) -> &Settings {
        &self.elements[0].settings
    }

    /// Iterations done so far.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The run's number of iterations.
    pub fn iterations(&self) -> u32 {
        self.shared().iterations
    }

    /// Whether every iteration has been done.
    pub fn is_done(&self) -> bool {
        self.iteration >= self.iterations()
    }

    /// The settings of each render of the batch.
    pub fn settings(&self) -> Vec<&Settings> {
        self.elements.iter().map(|e| &e.settings).collect()
    }

    /// Each render's latent (for comparisons and inspection).
    pub fn latents(&self) -> Vec<Tensor> {
        self.elements.iter().map(|e| e.z.detach().copy()).collect()
    }

    /// The decoded size in pixels (the requested size rounded down to the latent grid).
    pub fn image_size(&self) -> (u32, u32) {
        (self.geometry.side_x, self.geometry.side_y)
    }

    /// Time spent optimising, including before a resume.
    pub fn elapsed(&self) -> Duration {
        self.elapsed_before + self.started.elapsed()
    }

    /// The loss terms of each render at the last iteration done (empty before the first).
    pub fn last_losses(&self) -> &[Vec<(String, f64)>] {
        &self.last_losses
    }

    /// The whole state after the iterations done so far, as bytes for [`Run::resume`].
    pub fn checkpoint(&self) -> Result<Vec<u8>, StateError> {
        state::encode(self.iteration, self.elapsed(), &self.elements)
    }

    /// The current pictures: each latent quantised, decoded and clamped, `[B, 3, H, W]` in [0, 1].
    pub fn pixels(&self) -> Tensor {
        tch::no_grad(|| {
            let z: Vec<Tensor> = self.elements.iter().map(|e| e.z.detach()).collect();
            self.synthesise(&Tensor::cat(&z, 0)).clamp(0.0, 1.0)
        })
    }

    /// The current pictures as 8-bit images.
    pub fn images(&self) -> Vec<RgbImage> {
        let pixels = self.pixels();
        (0..pixels.size()[0])
            .map(|b| tensor_to_image(&pixels.get(b)))
            .collect()
    }

    /// Quantise, decode and map to [0, 1] (unclamped); differentiable in `z`.
    fn synthesise(&self, z: &Tensor) -> Tensor {
        let z_q = self.quantize(z);
        to_unit_range(&tch::autocast(self.autocast(), || self.codec.decode(&z_q)))
    }

    /// Every latent snapped to the codebook with a straight-through gradient, in the codec's
    /// precision.
    fn quantize(&self, z: &Tensor) -> Tensor {
        let quantized: Vec<Tensor> = z
            .split(1, 0)
            .iter()
            .map(|z| vector_quantize(z, &self.codebook))
            .collect();
        Tensor::cat(&quantized, 0).to_kind(self.codec.kind())
    }

    /// [`Run::synthesise`] without a graph, keeping the input of every decoder stage for
    /// [`Run::backward_by_stage`].
    fn synthesise_by_stage(&self, z: &Tensor) -> (Tensor, Vec<Tensor>) {
        tch::no_grad(|| {
            let mut x = self.quantize(z);
            let mut inputs = Vec::new();
            for stage in 0..self.codec.decode_stages() {
                let next = tch::autocast(self.autocast(), || self.codec.decode_stage(stage, &x));
                inputs.push(std::mem::replace(&mut x, next));
            }
            (to_unit_range(&x), inputs)
        })
    }

    /// Back-propagates `grad`, the gradient at the pixels, through the decoder one stage at a
    /// time from the last, each recomputed from its kept input (activation checkpointing: one
    /// stage's activations alive at once), then through the quantisation into `z`.
    fn backward_by_stage(&self, z: &Tensor, inputs: &[Tensor], grad: Tensor) {
        let last = inputs.len() - 1;
        let mut grad = grad;
        for (stage, input) in inputs.iter().enumerate().rev() {
            let x = if stage == 0 {
                self.quantize(z)
            } else {
                input.detach().set_requires_grad(true)
            };
            let mut y = tch::autocast(self.autocast(), || self.codec.decode_stage(stage, &x));
            if stage == last {
                y = to_unit_range(&y);
            }
            // d/dy Σ y·g = g exactly: the multiplication's backward is g·1.
            (y * &grad).sum(Kind::Float).backward();
            if stage > 0 {
                grad = x.grad();
            }
        }
    }

    fn autocast(&self) -> bool {
        self.shared().precision == Precision::Fp16Autocast
    }

    /// The loss terms of the current pictures under the cutouts, augmentations and noise of
    /// iteration `i`, without a step: fixed cutouts make losses comparable across iterations.
    pub fn evaluate(&self, i: u32) -> Vec<Vec<(String, f64)>> {
        tch::no_grad(|| loss_values(&self.forward(i, &self.draws(i)).terms))
    }

    /// Decode, cut out (under `draws`, one per render) and score every render at iteration
    /// `i`, keeping the graph.
    fn forward(&self, i: u32, draws: &[CutDraws]) -> Forward {
        let z: Vec<&Tensor> = self.elements.iter().map(|e| &e.z).collect();
        let z = Tensor::cat(&z, 0);
        let (image, stage_inputs) = if self.shared().recompute_decoder {
            let (pixels, inputs) = self.synthesise_by_stage(&z);
            (ClampBoundary::recomputable(pixels), inputs)
        } else {
            (ClampBoundary::new(self.synthesise(&z)), Vec::new())
        };
        let cutouts = self.cutouts(image.leaf(), draws);
        let clamped_cutouts = match self.shared().cut_method {
            CutMethod::Original => Some(ClampBoundary::new(cutouts.shallow_clone())),
            CutMethod::Latest => None,
        };
        let pixels = clamped_cutouts
            .as_ref()
            .map_or(&cutouts, ClampBoundary::leaf);
        let embeds = tch::autocast(self.autocast(), || {
            self.perceptor
                .encode_image(&pixels.to_kind(self.perceptor.kind()))
        })
        .to_kind(Kind::Float);
        let terms = self.loss_terms(&embeds, image.leaf(), i);
        Forward {
            z,
            image,
            stage_inputs,
            clamped_cutouts,
            terms,
        }
    }

    /// One iteration for every render: forward, backward, optimiser step, clamp.
    pub fn step(&mut self) -> Result<Progress, GenerateError> {
        if self.is_done() {
            return Err(GenerateError::Finished {
                iterations: self.iterations(),
            });
        }
        let i = self.iteration;
        for e in &mut self.elements {
            e.z.zero_grad();
        }
        let draws = self.draws(i);
        for (render, draws) in draws.iter().enumerate() {
            self.record(
                render,
                Draw::Cutouts {
                    iteration: i,
                    draws,
                },
            );
        }
        let Forward {
            z,
            image,
            stage_inputs,
            clamped_cutouts,
            terms,
        } = self.forward(i, &draws);
        let total = terms
            .iter()
            .flatten()
            .map(|(_, t)| t.shallow_clone())
            .reduce(|a, b| a + b)
            .expect("every render has at least one loss term");
        total.backward();
        if let Some(boundary) = clamped_cutouts {
            boundary.propagate();
        }
        let previews = self.previews(image.leaf(), i);
        if stage_inputs.is_empty() {
            image.propagate();
        } else if let Some(grad) = image.masked_leaf_gradient() {
            self.backward_by_stage(&z, &stage_inputs, grad);
        }
        for e in &mut self.elements {
            let grad = e.z.grad();
            let grad = if grad.defined() {
                grad
            } else {
                e.z.zeros_like()
            };
            e.optimiser.step(&mut e.z, &grad);
            let (low, high) = (&self.z_min, &self.z_max);
            tch::no_grad(|| e.z.copy_(&e.z.maximum(low).minimum(high)));
        }
        self.iteration += 1;
        self.last_losses = loss_values(&terms);
        let renders = self
            .last_losses
            .iter()
            .zip(previews)
            .map(|(losses, preview)| RenderProgress {
                total: losses.iter().map(|(_, v)| v).sum(),
                losses: losses.clone(),
                preview,
            })
            .collect();
        Ok(Progress {
            iteration: i,
            iterations: self.iterations(),
            elapsed: self.elapsed(),
            renders,
            checkpoint: None,
        })
    }

    /// What every render draws for its cutouts at iteration `i`.
    fn draws(&self, i: u32) -> Vec<CutDraws> {
        let device = self.device();
        let cut_size = self.perceptor.input_resolution();
        let g = self.geometry;
        self.elements
            .iter()
            .map(|e| {
                let mut stream = e.rng.stream(u64::from(i), Purpose::Cutouts);
                cutter(&e.settings, cut_size).draw(
                    i64::from(g.side_x),
                    i64::from(g.side_y),
                    &mut stream,
                    |shape| {
                        e.rng
                            .randn(u64::from(i), Purpose::CutoutNoise, shape, device)
                    },
                )
            })
            .collect()
    }

    /// Every render's cutouts of its picture in `image` `[B, 3, H, W]` under its `draws`,
    /// concatenated.
    fn cutouts(&self, image: &Tensor, draws: &[CutDraws]) -> Tensor {
        let cut_size = self.perceptor.input_resolution();
        let cuts: Vec<Tensor> = self
            .elements
            .iter()
            .zip(draws)
            .enumerate()
            .map(|(b, (e, draws))| {
                cutter(&e.settings, cut_size).apply(&image.narrow(0, b as i64, 1), draws)
            })
            .collect();
        Tensor::cat(&cuts, 0)
    }

    /// Every render's loss terms at iteration `i`, from the cutouts' embeddings and the
    /// pictures `[B, 3, H, W]`.
    fn loss_terms(&self, embeds: &Tensor, pictures: &Tensor, i: u32) -> Vec<Vec<(String, Tensor)>> {
        let cutn = i64::from(self.shared().cutn);
        self.elements
            .iter()
            .enumerate()
            .map(|(b, e)| {
                let mine = embeds.narrow(0, b as i64 * cutn, cutn);
                let s = &e.settings;
                let phase = s.prompts.phase_at(i, s.change_prompt_every, s.iterations);
                let init = (s.init_weight != 0.0).then(|| {
                    (
                        "init".to_string(),
                        init_loss(&e.z, &e.z_orig, s.init_weight),
                    )
                });
                let smooth = (s.tv_weight != 0.0).then(|| {
                    let picture = pictures.narrow(0, b as i64, 1);
                    (
                        "tv".to_string(),
                        total_variation(&picture).sum(Kind::Float) * s.tv_weight,
                    )
                });
                init.into_iter()
                    .chain(
                        e.targets
                            .active(phase)
                            .map(|t| (t.label.clone(), prompt_loss(&mine, t))),
                    )
                    .chain(smooth)
                    .collect()
            })
            .collect()
    }

    fn previews(&self, image: &Tensor, i: u32) -> Vec<Option<RgbImage>> {
        let every = self.shared().preview_every;
        let due = every > 0 && i.is_multiple_of(every);
        (0..self.elements.len())
            .map(|b| due.then(|| tensor_to_image(&image.get(b as i64))))
            .collect()
    }
}

/// The settings of a batch, checked: valid, and sharing what a batch must share.
fn check_batch(settings: &[Settings]) -> Result<&Settings, GenerateError> {
    let first = settings.first().ok_or(GenerateError::NoRenders)?;
    for (index, s) in settings.iter().enumerate() {
        s.validate()
            .map_err(|source| GenerateError::Settings { index, source })?;
        if let Some(field) = first.batch_mismatch(s) {
            return Err(GenerateError::Batch { index, field });
        }
    }
    Ok(first)
}

fn cutter(s: &Settings, cut_size: i64) -> Cutter<'_> {
    Cutter {
        method: s.cut_method,
        cut_size,
        cutn: i64::from(s.cutn),
        cut_pow: s.cut_pow,
        augments: &s.augments,
        noise_fac: s.noise_fac,
    }
}

/// The loss terms' values, read back in one transfer.
fn loss_values(terms: &[Vec<(String, Tensor)>]) -> Vec<Vec<(String, f64)>> {
    let all: Vec<Tensor> = terms.iter().flatten().map(|(_, t)| t.detach()).collect();
    let values = Vec::<f64>::try_from(
        Tensor::stack(&all, 0)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu),
    )
    .expect("loss values");
    let mut values = values.into_iter();
    terms
        .iter()
        .map(|render| {
            render
                .iter()
                .map(|(label, _)| (label.clone(), values.next().expect("one value per term")))
                .collect()
        })
        .collect()
}

/// Decoder output, roughly in [-1, 1], as float32 pixels in [0, 1] (unclamped).
fn to_unit_range(decoded: &Tensor) -> Tensor {
    (decoded.to_kind(Kind::Float) + 1.0) / 2.0
}
