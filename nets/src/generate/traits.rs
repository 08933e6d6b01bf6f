//! What the loop needs from its two networks, so it can run on CLIP and VQGAN, on the tiny
//! random-weight networks of its tests, or on any other pair with the same contract.

use tch::{Kind, Tensor};

/// A model's error, boxed so each implementation can keep its own error type.
pub type ModelError = Box<dyn std::error::Error + Send + Sync>;

/// The image-text model that judges the picture (CLIP).
pub trait Perceptor {
    /// Side of the square images `encode_image` takes (the cutout size).
    fn input_resolution(&self) -> i64;
    /// Length of the embeddings; noise prompts are drawn with this many dimensions.
    fn embed_dim(&self) -> i64;
    /// Precision of the weights; the loop hands `encode_image` pixels of this kind.
    fn kind(&self) -> Kind;
    /// L2-normalised embeddings `[N, D]` of `N` texts.
    fn encode_text(&self, texts: &[&str]) -> Result<Tensor, ModelError>;
    /// L2-normalised embeddings `[N, D]` of RGB images `[N, 3, R, R]` in [0, 1] (any mean/std
    /// normalisation is applied inside); differentiable with respect to the pixels.
    fn encode_image(&self, pixels: &Tensor) -> Tensor;
}

/// The autoencoder whose latent is optimised (VQGAN).
pub trait LatentCodec {
    /// Latents `[N, C, H/f, W/f]` in codebook space of images `[N, 3, H, W]` in [-1, 1], H and
    /// W multiples of f. Like taming's `VQModel.encode`, which `generate.py` uses for init
    /// images, they may already be quantised (for Gumbel models they must be: the encoder's raw
    /// output there is logits, not latents); the loop quantises them (again) either way.
    fn encode(&self, image: &Tensor) -> Result<Tensor, ModelError>;
    /// Images `[N, 3, H, W]`, roughly in [-1, 1], from quantised latents; differentiable.
    fn decode(&self, z_q: &Tensor) -> Tensor;
    /// How many pieces `decode` splits into (1: it does not). With `recompute_decoder` the
    /// loop back-propagates them one at a time, each recomputed from its input, so only one
    /// piece's activations are held at once.
    fn decode_stages(&self) -> usize {
        1
    }
    /// Piece `index` of `decode`: pieces `0..decode_stages()` applied in order are `decode`.
    fn decode_stage(&self, index: usize, x: &Tensor) -> Tensor {
        debug_assert_eq!(index, 0, "decode is one piece");
        self.decode(x)
    }
    /// The codebook `[n_embed, C]`, on the model's device.
    fn codebook(&self) -> Tensor;
    /// How many pixels one latent position covers along each side (f).
    fn downsampling_factor(&self) -> i64;
    /// Precision of the weights (e.g. the codebook's kind); the loop hands `decode` latents of
    /// this kind.
    fn kind(&self) -> Kind;
}
