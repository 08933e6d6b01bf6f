//! CLIP's image tower for the ViT models (`clip.model.VisionTransformer`): patchify with a strided
//! convolution, prepend a class token, add positions, run the transformer and project the class
//! token's output into the joint embedding space.

use tch::nn::{self, Module};
use tch::Tensor;

use super::transformer::{LayerNorm, Transformer};

/// Shape of a VisionTransformer, as `clip.model.build_model` reads it off a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionTransformerConfig {
    /// Side of the square input image in pixels.
    pub input_resolution: i64,
    /// Side of a square patch (the stride of `conv1`).
    pub patch_size: i64,
    /// Transformer width; heads are 64 wide.
    pub width: i64,
    /// Number of residual attention blocks.
    pub layers: i64,
    /// Dimension of the joint embedding (columns of `proj`).
    pub output_dim: i64,
}

impl VisionTransformerConfig {
    /// OpenAI's ViT-B/32.
    pub fn vit_b_32() -> Self {
        VisionTransformerConfig {
            input_resolution: 224,
            patch_size: 32,
            width: 768,
            layers: 12,
            output_dim: 512,
        }
    }

    /// OpenAI's ViT-B/16.
    pub fn vit_b_16() -> Self {
        VisionTransformerConfig {
            patch_size: 16,
            ..Self::vit_b_32()
        }
    }

    /// OpenAI's ViT-L/14.
    pub fn vit_l_14() -> Self {
        VisionTransformerConfig {
            input_resolution: 224,
            patch_size: 14,
            width: 1024,
            layers: 24,
            output_dim: 768,
        }
    }

    /// OpenAI's ViT-L/14@336px.
    pub fn vit_l_14_336() -> Self {
        VisionTransformerConfig {
            input_resolution: 336,
            ..Self::vit_l_14()
        }
    }

    /// Attention heads: CLIP's are always 64 wide.
    pub fn heads(&self) -> i64 {
        self.width / 64
    }

    /// Patches per side.
    pub fn grid(&self) -> i64 {
        self.input_resolution / self.patch_size
    }
}

/// The ViT image encoder, variables under `visual.`.
#[derive(Debug)]
pub struct VisionTransformer {
    conv1: nn::Conv2D,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    transformer: Transformer,
    ln_post: LayerNorm,
    proj: Tensor,
}

impl VisionTransformer {
    /// Creates the variables with the reference's names and shapes under `path` (`visual`).
    pub fn new(path: &nn::Path, config: &VisionTransformerConfig) -> VisionTransformer {
        let width = config.width;
        let conv = nn::ConvConfig {
            stride: config.patch_size,
            bias: false,
            ws_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        VisionTransformer {
            conv1: nn::conv2d(path / "conv1", 3, width, config.patch_size, conv),
            class_embedding: path.zeros("class_embedding", &[width]),
            positional_embedding: path.zeros(
                "positional_embedding",
                &[config.grid() * config.grid() + 1, width],
            ),
            ln_pre: LayerNorm::new(&(path / "ln_pre"), width),
            transformer: Transformer::new(
                &(path / "transformer"),
                width,
                config.layers,
                config.heads(),
                false,
            ),
            ln_post: LayerNorm::new(&(path / "ln_post"), width),
            proj: path.zeros("proj", &[width, config.output_dim]),
        }
    }

    /// Normalised pixels `[N, 3, R, R]` to unnormalised image features `[N, output_dim]`.
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let patches = self.conv1.forward(pixels).flatten(2, 3).transpose(1, 2);
        let (n, _, width) = patches.size3().expect("patch embeddings are [N, L, D]");
        let class_token = self
            .class_embedding
            .view([1, 1, width])
            .expand([n, 1, width], false);
        let tokens = Tensor::cat(&[class_token, patches], 1) + &self.positional_embedding;
        let encoded = self.transformer.forward(&self.ln_pre.forward(&tokens));
        self.ln_post
            .forward(&encoded.select(1, 0))
            .matmul(&self.proj)
    }
}
