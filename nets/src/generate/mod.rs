//! Text to image: the VQGAN+CLIP optimisation loop (Crowson's method as nerdyrodent/VQGAN-CLIP's
//! `generate.py` runs it for a still image), plus checkpoint/resume and batching.
//!
//! A latent grid of VQGAN codes is decoded to a picture, the picture is cut into augmented
//! views, CLIP embeds the views, and the latent is moved to bring the embeddings closer to the
//! prompts' (text, image or noise) under a spherical distance. The pieces, one job per file:
//! `settings` (every knob), `init` (starting latent, image files), `targets` (prompt
//! embeddings), `cutouts` and `augment` (the views), `synth` (straight-through quantisation and
//! `clamp_with_grad`), `loss`, `optim` (torch's update rules over plain tensors), `rng`
//! (reproducible randomness), `run` (the iteration), `state` (checkpoints), `png` (output with
//! settings in text chunks), `bench` (timing against PyTorch). The networks come in through the
//! [`Perceptor`] and [`LatentCodec`] traits.
//!
//! Determinism: every random draw derives from (seed, iteration) (`rng`), so the same settings on
//! the same device give the same picture bit for bit, and a run resumed from a checkpoint gives
//! the uninterrupted run's picture bit for bit — on the CPU given the same number of torch
//! threads (parallel reductions split their sums by thread count).

pub mod augment;
mod clip_perceptor;
pub mod cutouts;
pub mod init;
pub mod loss;
pub mod optim;
pub mod png;
pub mod record;
pub mod rng;
pub mod run;
pub mod settings;
pub mod state;
pub mod synth;
pub mod targets;
pub mod traits;
mod vqgan_codec;

pub mod testnets;
#[cfg(test)]
mod tests;

pub use run::{GenerateError, Progress, RenderProgress, Run};
pub use settings::{Precision, Settings};
pub use traits::{LatentCodec, ModelError, Perceptor};

use image::RgbImage;
use std::ops::ControlFlow;
use std::time::Duration;

/// A finished render.
#[derive(Debug, Clone)]
pub struct RenderOutput {
    /// The picture.
    pub image: RgbImage,
    /// The picture as a PNG with the settings in its text chunks.
    pub png: Vec<u8>,
    /// The settings it was made with.
    pub settings: Settings,
    /// The loss terms at the last iteration (empty for 0 iterations).
    pub losses: Vec<(String, f64)>,
    /// Optimisation time, including time before a resume.
    pub elapsed: Duration,
}

/// Renders one picture, calling `progress` after every iteration (with a preview every
/// `preview_every` and checkpoint bytes every `checkpoint_every` iterations).
pub fn render<P, C>(
    settings: &Settings,
    perceptor: &P,
    codec: &C,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RenderOutput, GenerateError>
where
    P: Perceptor + ?Sized,
    C: LatentCodec + ?Sized,
{
    let mut outputs = render_batch(std::slice::from_ref(settings), perceptor, codec, progress)?;
    Ok(outputs.remove(0))
}

/// Renders several pictures in one batched optimisation (see [`Settings::batch_mismatch`] for
/// what they must share); each comes out as it would alone.
pub fn render_batch<P, C>(
    settings: &[Settings],
    perceptor: &P,
    codec: &C,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<RenderOutput>, GenerateError>
where
    P: Perceptor + ?Sized,
    C: LatentCodec + ?Sized,
{
    drive(Run::start(settings, perceptor, codec)?, progress)
}

/// Continues the renders of a checkpoint to the end.
pub fn resume_render<P, C>(
    checkpoint: &[u8],
    perceptor: &P,
    codec: &C,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<RenderOutput>, GenerateError>
where
    P: Perceptor + ?Sized,
    C: LatentCodec + ?Sized,
{
    drive(Run::resume(checkpoint, perceptor, codec)?, progress)
}

/// Steps `run` to the end, reporting and checkpointing, then renders the outputs.
fn drive<P, C>(
    run: Run<'_, P, C>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<RenderOutput>, GenerateError>
where
    P: Perceptor + ?Sized,
    C: LatentCodec + ?Sized,
{
    match drive_until(run, &mut |report| {
        progress(report);
        ControlFlow::Continue(())
    })? {
        Driven::Finished(outputs) => Ok(outputs),
        _ => unreachable!("a driver that always continues reaches the end"),
    }
}

/// Why a driver stops a run before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    /// The work is no longer wanted (cancelled, or the task went to another worker).
    Abandon,
    /// The process is going away: keep the state so another process can continue it.
    Pause,
}

/// How a driven run ended.
#[derive(Debug)]
pub enum Driven {
    /// It reached its last iteration.
    Finished(Vec<RenderOutput>),
    /// The driver abandoned it.
    Abandoned,
    /// The driver paused it: a checkpoint of the iteration it had reached.
    Paused {
        /// [`Run::checkpoint`] at `iteration`.
        checkpoint: Vec<u8>,
        /// Iterations done.
        iteration: u32,
    },
}

/// Steps `run` to the end, reporting and checkpointing, then renders the outputs, unless
/// `progress` halts it first (a farm task that was cancelled, lost its lease, or whose worker
/// is draining).
pub fn drive_until<P, C>(
    mut run: Run<'_, P, C>,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<Halt>,
) -> Result<Driven, GenerateError>
where
    P: Perceptor + ?Sized,
    C: LatentCodec + ?Sized,
{
    let every = run.settings()[0].checkpoint_every;
    let iterations = tracing::info_span!(
        "iterations",
        from = run.iteration(),
        to = tracing::field::Empty
    )
    .entered();
    while !run.is_done() {
        let mut report = run.step()?;
        if every > 0 && run.iteration().is_multiple_of(every) && !run.is_done() {
            report.checkpoint = Some(run.checkpoint()?);
        }
        match progress(&report) {
            ControlFlow::Continue(()) => {}
            ControlFlow::Break(Halt::Abandon) => return Ok(Driven::Abandoned),
            ControlFlow::Break(Halt::Pause) => {
                return Ok(Driven::Paused {
                    checkpoint: run.checkpoint()?,
                    iteration: run.iteration(),
                })
            }
        }
    }
    iterations.record("to", run.iteration());
    drop(iterations);
    let _decode = tracing::info_span!("decode").entered();
    let elapsed = run.elapsed();
    let losses = run.last_losses().to_vec();
    let outputs = run
        .images()
        .into_iter()
        .zip(run.settings())
        .enumerate()
        .map(|(b, (image, settings))| {
            Ok(RenderOutput {
                png: png::encode_png(&image, settings)?,
                image,
                settings: settings.clone(),
                losses: losses.get(b).cloned().unwrap_or_default(),
                elapsed,
            })
        })
        .collect::<Result<Vec<_>, GenerateError>>()?;
    Ok(Driven::Finished(outputs))
}
