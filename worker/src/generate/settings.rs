//! Every knob of a render, with `generate.py`'s defaults except the size (496x496, the size the
//! farm upscales 4x to 1984x1984). Serialisable, because the settings travel in checkpoints and
//! PNG metadata.

use super::augment::{Augment, DEFAULT_AUGMENTS};
use super::cutouts::CutMethod;
use super::init::LatentInit;
use super::optim::OptimiserKind;
use serde::{Deserialize, Serialize};
use tessera_core::loop_options::DEFAULT_NOISE_FAC;
use tessera_core::prompt::PromptSpec;

/// Arithmetic precision of the two networks' forward and backward passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Precision {
    /// Whatever precision the networks were loaded in (float32, or bf16/fp16 weights), with
    /// the latent, optimiser and loss always in float32.
    Full,
    /// CUDA autocast around VQGAN's decode and CLIP's image encoder: matmuls and convolutions
    /// in float16, reductions in float32. No effect on CPU.
    Fp16Autocast,
}

/// The settings of one render.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Text phases, image prompts and noise prompts.
    pub prompts: PromptSpec,
    /// Seed of every random draw of the render.
    pub seed: u64,
    /// Requested width in pixels (rounded down to a multiple of VQGAN's factor).
    pub width: u32,
    /// Requested height in pixels (rounded down to a multiple of VQGAN's factor).
    pub height: u32,
    /// Number of optimiser steps.
    pub iterations: u32,
    /// Starting latent.
    pub init: LatentInit,
    /// Weight of the pull back towards the starting latent (0: none).
    pub init_weight: f64,
    /// Update rule.
    pub optimiser: OptimiserKind,
    /// Learning rate of the update rule.
    pub learning_rate: f64,
    /// How cutouts are made.
    pub cut_method: CutMethod,
    /// Cutouts per iteration.
    pub cutn: u32,
    /// Crop-size exponent of the `original` method.
    pub cut_pow: f64,
    /// Augmentations of the `latest` method, applied in this order.
    pub augments: Vec<Augment>,
    /// Largest per-cutout noise level of the `latest` method.
    pub noise_fac: f64,
    /// Iterations per story phase (0: the phases share the iterations evenly).
    pub change_prompt_every: u32,
    /// A preview image every this many iterations (0: none).
    pub preview_every: u32,
    /// A checkpoint every this many iterations (0: none).
    pub checkpoint_every: u32,
    /// Arithmetic precision of the networks.
    pub precision: Precision,
    /// Decode without a graph, keeping only each decoder stage's input, and back-propagate the
    /// decoder one stage at a time, each recomputed (activation checkpointing): VQGAN's
    /// activations are not held while CLIP runs, and only one stage's at a time afterwards,
    /// for one more decoder forward pass. The result is the same.
    pub recompute_decoder: bool,
    /// Name of the CLIP model, recorded in the output so a render can be repeated.
    pub perceptor_model: String,
    /// Name of the VQGAN model, recorded in the output so a render can be repeated.
    pub codec_model: String,
}

/// A setting out of its range, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("setting `{field}` = {value} is out of range: {expected}")]
pub struct SettingsError {
    /// The field at fault.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// What it must be.
    pub expected: &'static str,
}

/// Largest side accepted; far beyond what fits any GPU at these model sizes.
pub const MAX_SIDE: u32 = 4096;

impl Settings {
    /// Defaults for these prompts and seed: 496x496, 500 iterations, Adam lr 0.1, `latest`
    /// cutouts (32, all four augmentations), random codebook tokens, CLIP ViT-B/32,
    /// vqgan_imagenet_f16_16384.
    pub fn new(prompts: PromptSpec, seed: u64) -> Settings {
        Settings {
            prompts,
            seed,
            width: 496,
            height: 496,
            iterations: 500,
            init: LatentInit::RandomTokens,
            init_weight: 0.0,
            optimiser: OptimiserKind::Adam,
            learning_rate: 0.1,
            cut_method: CutMethod::Latest,
            cutn: 32,
            cut_pow: 1.0,
            augments: DEFAULT_AUGMENTS.to_vec(),
            noise_fac: DEFAULT_NOISE_FAC,
            change_prompt_every: 0,
            preview_every: 0,
            checkpoint_every: 0,
            precision: Precision::Full,
            recompute_decoder: false,
            perceptor_model: "ViT-B/32".into(),
            codec_model: "vqgan_imagenet_f16_16384".into(),
        }
    }

    /// Checks every numeric setting against its range.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |field, value: &dyn std::fmt::Display, expected| SettingsError {
            field,
            value: value.to_string(),
            expected,
        };
        let p = &self.prompts;
        if p.phases.iter().any(Vec::is_empty) {
            return Err(bad(
                "prompts",
                &"an empty story phase",
                "text in every phase",
            ));
        }
        if p.phases.is_empty() && p.images.is_empty() && p.noise.is_empty() {
            return Err(bad(
                "prompts",
                &"(none)",
                "at least one text, image or noise prompt",
            ));
        }
        let side = "between 1 and 4096 pixels";
        if self.width == 0 || self.width > MAX_SIDE {
            return Err(bad("width", &self.width, side));
        }
        if self.height == 0 || self.height > MAX_SIDE {
            return Err(bad("height", &self.height, side));
        }
        if self.cutn == 0 || self.cutn > 1024 {
            return Err(bad("cutn", &self.cutn, "between 1 and 1024"));
        }
        let positive = "a finite number above 0";
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(bad("learning_rate", &self.learning_rate, positive));
        }
        if !(self.cut_pow.is_finite() && self.cut_pow > 0.0) {
            return Err(bad("cut_pow", &self.cut_pow, positive));
        }
        let non_negative = "a finite number, 0 or above";
        if !(self.init_weight.is_finite() && self.init_weight >= 0.0) {
            return Err(bad("init_weight", &self.init_weight, non_negative));
        }
        if !(self.noise_fac.is_finite() && self.noise_fac >= 0.0) {
            return Err(bad("noise_fac", &self.noise_fac, non_negative));
        }
        Ok(())
    }

    /// The first setting that two renders must share to be optimised in one batch (one
    /// forward pass decodes and judges them all), if they differ.
    pub fn batch_mismatch(&self, other: &Settings) -> Option<&'static str> {
        let checks: [(&'static str, bool); 14] = [
            ("width", self.width == other.width),
            ("height", self.height == other.height),
            ("iterations", self.iterations == other.iterations),
            ("cut_method", self.cut_method == other.cut_method),
            ("cutn", self.cutn == other.cutn),
            ("cut_pow", self.cut_pow == other.cut_pow),
            ("augments", self.augments == other.augments),
            ("noise_fac", self.noise_fac == other.noise_fac),
            ("preview_every", self.preview_every == other.preview_every),
            (
                "checkpoint_every",
                self.checkpoint_every == other.checkpoint_every,
            ),
            ("precision", self.precision == other.precision),
            (
                "recompute_decoder",
                self.recompute_decoder == other.recompute_decoder,
            ),
            (
                "perceptor_model",
                self.perceptor_model == other.perceptor_model,
            ),
            ("codec_model", self.codec_model == other.codec_model),
        ];
        checks.iter().find(|(_, same)| !same).map(|(name, _)| *name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::new(PromptSpec::parse("a cat", "", "").unwrap(), 1)
    }

    #[test]
    fn defaults_are_valid_and_round_trip_through_json() {
        let s = settings();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), s);
    }

    #[test]
    fn out_of_range_settings_name_the_field() {
        let mut s = settings();
        s.learning_rate = -1.0;
        let err = s.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "setting `learning_rate` = -1 is out of range: a finite number above 0"
        );
        let mut s = settings();
        s.width = 0;
        assert_eq!(s.validate().unwrap_err().field, "width");
    }

    #[test]
    fn batch_partners_may_differ_only_in_their_own_fields() {
        let a = settings();
        let mut b = Settings::new(PromptSpec::parse("a dog", "", "").unwrap(), 99);
        b.learning_rate = 0.2;
        b.optimiser = OptimiserKind::AdamW;
        b.init_weight = 0.5;
        assert_eq!(a.batch_mismatch(&b), None);
        b.cutn = 16;
        assert_eq!(a.batch_mismatch(&b), Some("cutn"));
    }
}
