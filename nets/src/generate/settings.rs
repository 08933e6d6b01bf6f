//! Every knob of a render, with `generate.py`'s defaults except the size (496x496, the size the
//! farm upscales 4x to 1984x1984). Serialisable, because the settings travel in checkpoints and
//! PNG metadata.

use super::augment::Augment;
use super::cutouts::CutMethod;
use super::init::LatentInit;
use super::optim::OptimiserKind;
use serde::{Deserialize, Serialize};
pub use tessera_core::loop_options::Precision;
use tessera_core::prompt::PromptSpec;
use tessera_core::settings::{self as defs, Setting};
pub use tessera_core::settings::{OutOfRange as SettingsError, MAX_SIDE};

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
    /// Weight of the total variation of the picture (pixels in `[0, 1]`) in the loss, which
    /// smooths it (0: none). Absent from settings written before it existed: 0.
    #[serde(default)]
    pub tv_weight: f64,
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

impl Settings {
    /// Defaults for these prompts and seed, from [`tessera_core::settings`]: 496x496, 500
    /// iterations, Adam lr 0.1, `latest` cutouts (32, all four augmentations), random codebook
    /// tokens, CLIP ViT-B/32, vqgan_imagenet_f16_16384.
    pub fn new(prompts: PromptSpec, seed: u64) -> Settings {
        Settings {
            prompts,
            seed,
            width: defs::WIDTH.default,
            height: defs::HEIGHT.default,
            iterations: defs::ITERATIONS.default,
            init: defs::INIT_NOISE
                .default
                .map_or(LatentInit::RandomTokens, LatentInit::from),
            init_weight: defs::INIT_WEIGHT.default,
            optimiser: defs::OPTIMISER.default,
            learning_rate: defs::LEARNING_RATE.default,
            cut_method: defs::CUT_METHOD.default,
            cutn: defs::CUTN.default,
            cut_pow: defs::CUT_POW.default,
            augments: defs::AUGMENTS.default.to_vec(),
            noise_fac: defs::NOISE_FAC.default,
            tv_weight: defs::TV_WEIGHT.default,
            change_prompt_every: defs::CHANGE_PROMPT_EVERY.default,
            preview_every: defs::PREVIEW_EVERY.default,
            checkpoint_every: defs::CHECKPOINT_EVERY.default,
            precision: defs::PRECISION.default,
            recompute_decoder: defs::RECOMPUTE_DECODER.default,
            perceptor_model: defs::CLIP_MODEL.default.into(),
            codec_model: defs::VQGAN_MODEL.default.into(),
        }
    }

    /// Checks the prompts and every numeric setting against its range
    /// ([`tessera_core::settings`]).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let p = &self.prompts;
        let bad = |value: &str, expected: &str| SettingsError {
            field: "prompts",
            value: value.into(),
            expected: expected.into(),
        };
        if p.phases.iter().any(Vec::is_empty) {
            return Err(bad("an empty story phase", "text in every phase"));
        }
        if p.phases.is_empty() && p.images.is_empty() && p.noise.is_empty() {
            return Err(bad("(none)", "at least one text, image or noise prompt"));
        }
        let counts: [(&Setting<u32>, u32); 3] = [
            (&defs::WIDTH, self.width),
            (&defs::HEIGHT, self.height),
            (&defs::CUTN, self.cutn),
        ];
        for (setting, value) in counts {
            setting.check(value)?;
        }
        let numbers: [(&Setting<f64>, f64); 5] = [
            (&defs::LEARNING_RATE, self.learning_rate),
            (&defs::CUT_POW, self.cut_pow),
            (&defs::INIT_WEIGHT, self.init_weight),
            (&defs::NOISE_FAC, self.noise_fac),
            (&defs::TV_WEIGHT, self.tv_weight),
        ];
        for (setting, value) in numbers {
            setting.check(value)?;
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
