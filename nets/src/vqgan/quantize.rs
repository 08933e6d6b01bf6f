//! The codebook bottleneck (`taming/modules/vqvae/quantize.py`): `VectorQuantizer2`, which VQModel
//! uses, and `GumbelQuantize`, which the gumbel f8 model uses.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::autoencoder::{conv1x1, ParameterCount};

/// Nearest-codebook-vector quantisation; `quantize.embedding.weight` is the codebook.
#[derive(Debug)]
pub(crate) struct VectorQuantizer {
    embedding: Tensor,
}

impl VectorQuantizer {
    /// Builds the codebook under `vs` (normally `quantize`), initialised like upstream.
    pub(crate) fn new(vs: &nn::Path, n_embed: i64, embed_dim: i64) -> Self {
        let bound = 1.0 / n_embed as f64;
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Self {
            embedding: (vs / "embedding").var("weight", &[n_embed, embed_dim], init),
        }
    }

    /// Index of the nearest codebook vector (squared Euclidean distance) at every position of
    /// `z` [N, embed_dim, h, w]; returns [N, h, w].
    fn nearest(&self, z: &Tensor) -> Tensor {
        let (n, height, width) = (z.size()[0], z.size()[2], z.size()[3]);
        let flat = z
            .permute([0, 2, 3, 1])
            .reshape([-1, self.embedding.size()[1]]);
        // |z|^2 + |e|^2 - 2 z.e, in upstream's order of operations so near-ties break alike.
        let distances: Tensor = flat.square().sum_dim_intlist(1, true, None::<Kind>)
            + self
                .embedding
                .square()
                .sum_dim_intlist(1, false, None::<Kind>)
            - 2.0 * flat.matmul(&self.embedding.tr());
        distances.argmin(1, false).view([n, height, width])
    }

    /// Returns (z_q, indices), z_q with the straight-through gradient `z + (z_q - z).detach()`.
    pub(crate) fn quantize(&self, z: &Tensor) -> (Tensor, Tensor) {
        let indices = self.nearest(z);
        let z_q = lookup(&self.embedding, &indices);
        (z + (z_q - z).detach(), indices)
    }

    pub(crate) fn codebook(&self) -> &Tensor {
        &self.embedding
    }
}

/// Gumbel-softmax quantisation: a 1x1 conv `proj` scores every codebook entry of `embed`.
///
/// Upstream samples Gumbel noise even in eval mode; the render farm needs reproducible codes, so
/// this takes the noise-free limit: the highest-scoring entry, with the straight-through gradient
/// of the (temperature 1) softmax, exactly what `gumbel_softmax(hard=True)` does without noise.
#[derive(Debug)]
pub(crate) struct GumbelQuantize {
    proj: nn::Conv2D,
    embed: Tensor,
}

impl GumbelQuantize {
    /// Builds `proj` (z_channels -> n_embed scores) and `embed` under `vs` (normally `quantize`).
    pub(crate) fn new(vs: &nn::Path, z_channels: i64, n_embed: i64, embed_dim: i64) -> Self {
        Self {
            proj: conv1x1(vs / "proj", z_channels, n_embed),
            embed: (vs / "embed").var(
                "weight",
                &[n_embed, embed_dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
        }
    }

    /// Returns (z_q, indices) with the straight-through softmax gradient into `z`.
    pub(crate) fn quantize(&self, z: &Tensor) -> (Tensor, Tensor) {
        let logits = self.proj.forward(z);
        let indices = logits.argmax(1, false);
        let soft = logits.softmax(1, logits.kind());
        let hard = indices
            .one_hot(self.embed.size()[0])
            .permute([0, 3, 1, 2])
            .to_kind(soft.kind());
        let one_hot = hard - soft.detach() + soft;
        let z_q = Tensor::einsum("bnhw,nd->bdhw", &[&one_hot, &self.embed], None::<&[i64]>);
        (z_q, indices)
    }

    pub(crate) fn codebook(&self) -> &Tensor {
        &self.embed
    }
}

/// Codebook rows for `indices` [N, h, w], laid out as a latent [N, embed_dim, h, w].
pub(crate) fn lookup(codebook: &Tensor, indices: &Tensor) -> Tensor {
    let rows = codebook.index_select(0, &indices.flatten(0, -1));
    let mut shape = indices.size();
    shape.push(codebook.size()[1]);
    rows.view(shape.as_slice())
        .permute([0, 3, 1, 2])
        .contiguous()
}

/// Either kind of bottleneck a VQModel checkpoint can carry.
#[derive(Debug)]
pub(crate) enum Quantizer {
    Vector(VectorQuantizer),
    Gumbel(GumbelQuantize),
}

impl Quantizer {
    /// See [`VectorQuantizer::quantize`] and [`GumbelQuantize::quantize`].
    pub(crate) fn quantize(&self, z: &Tensor) -> (Tensor, Tensor) {
        match self {
            Quantizer::Vector(q) => q.quantize(z),
            Quantizer::Gumbel(q) => q.quantize(z),
        }
    }

    /// The [n_embed, embed_dim] table the indices point into.
    pub(crate) fn codebook(&self) -> &Tensor {
        match self {
            Quantizer::Vector(q) => q.codebook(),
            Quantizer::Gumbel(q) => q.codebook(),
        }
    }
}

impl ParameterCount for Quantizer {
    fn parameter_count(&self) -> i64 {
        let codebook = self.codebook().numel() as i64;
        match self {
            Quantizer::Vector(_) => codebook,
            Quantizer::Gumbel(q) => codebook + q.proj.parameter_count(),
        }
    }
}
