//! A window on a run's randomness for parity tests: every draw the loop makes (the starting
//! latent's tokens or picture, the image prompts' cutouts, each iteration's cutouts,
//! augmentations and noise) shown to a [`DrawRecorder`] as it is made.
//!
//! Every draw of a run is a pure function of (seed, iteration, purpose) (`rng`), but the
//! reference loop (`generate.py` on the upstream modules) draws from torch's generator, so no
//! seed makes the two see the same numbers. The parity tests therefore write what our loop drew
//! to a file and the reference reads it instead of drawing. A run without a recorder (every
//! production run) skips the hook at the cost of one branch per draw.

use super::cutouts::CutDraws;
use super::init::InitDraw;

/// One random draw of a run, as the loop is about to use it.
#[derive(Debug)]
pub enum Draw<'a> {
    /// What the starting latent is made from.
    Init(&'a InitDraw),
    /// The cutouts of image prompt `index` (in prompt order), made once before the first
    /// iteration.
    ImagePrompt {
        /// Position among the render's image prompts.
        index: u32,
        /// The crops or augmentations and noise.
        draws: &'a CutDraws,
    },
    /// The cutouts of one iteration.
    Cutouts {
        /// The iteration, from 0.
        iteration: u32,
        /// The crops or augmentations and noise.
        draws: &'a CutDraws,
    },
}

/// Sees every draw of a run ([`super::Run::start_recording`]).
pub trait DrawRecorder {
    /// Called once per draw of render `render` (its position in the batch), in the order the
    /// loop draws.
    fn record(&mut self, render: usize, draw: Draw<'_>);
}
