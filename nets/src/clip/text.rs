//! CLIP's text tower (the text half of `clip.model.CLIP`): token and position embeddings, a
//! causally masked transformer, and the projection of the end-of-text token's output into the
//! joint embedding space.

use tch::nn;
use tch::{Kind, Tensor};

use super::transformer::{LayerNorm, Transformer};

/// Shape of the text transformer, as `clip.model.build_model` reads it off a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTransformerConfig {
    /// Tokens per prompt (77 for every released model).
    pub context_length: i64,
    /// Rows of `token_embedding.weight` (49408).
    pub vocab_size: i64,
    /// Transformer width; heads are 64 wide.
    pub width: i64,
    /// Number of residual attention blocks.
    pub layers: i64,
    /// Dimension of the joint embedding (columns of `text_projection`).
    pub output_dim: i64,
}

impl TextTransformerConfig {
    /// The text tower of ViT-B/32, ViT-B/16 and RN101.
    pub fn base() -> Self {
        TextTransformerConfig {
            context_length: 77,
            vocab_size: 49408,
            width: 512,
            layers: 12,
            output_dim: 512,
        }
    }

    /// Attention heads, `transformer_width // 64` as in `build_model`.
    pub fn heads(&self) -> i64 {
        self.width / 64
    }
}

/// The text encoder; its variables sit at the top level of the checkpoint.
#[derive(Debug)]
pub struct TextTransformer {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
}

impl TextTransformer {
    /// Creates the variables with the reference's names and shapes under `path` (the root).
    pub fn new(path: &nn::Path, config: &TextTransformerConfig) -> TextTransformer {
        let width = config.width;
        TextTransformer {
            token_embedding: (path / "token_embedding")
                .zeros("weight", &[config.vocab_size, width]),
            positional_embedding: path
                .zeros("positional_embedding", &[config.context_length, width]),
            transformer: Transformer::new(
                &(path / "transformer"),
                width,
                config.layers,
                config.heads(),
                true,
            ),
            ln_final: LayerNorm::new(&(path / "ln_final"), width),
            text_projection: path.zeros("text_projection", &[width, config.output_dim]),
        }
    }

    /// Token ids `[N, context_length]` (int64) to unnormalised text features `[N, output_dim]`,
    /// taken at each row's end-of-text token (its highest id).
    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        let embedded = Tensor::embedding(&self.token_embedding, tokens, -1, false, false)
            + &self.positional_embedding;
        let encoded = self.ln_final.forward(&self.transformer.forward(&embedded));
        let end_of_text = tokens.argmax(-1, false);
        let rows = Tensor::arange(tokens.size()[0], (Kind::Int64, tokens.device()));
        let pooled = encoded.index(&[Some(rows), Some(end_of_text)]);
        pooled.matmul(&self.text_projection)
    }
}
