//! The residual attention transformer both CLIP towers share (`clip.model.Transformer`): pre-norm
//! blocks of multi-head self-attention and a QuickGELU MLP. Activations are batch-first
//! `[N, L, D]` (the reference runs `[L, N, D]`; the arithmetic is the same) so attention goes
//! straight into libtorch's fused `scaled_dot_product_attention`.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `clip.model.LayerNorm`: layer normalisation computed in fp32 whatever the model's dtype, cast
/// back afterwards, so fp16/bf16 models keep the reference's numerics.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    /// Creates `weight` and `bias` under `path`, as `nn.LayerNorm(width)` names them.
    pub fn new(path: &nn::Path, width: i64) -> LayerNorm {
        LayerNorm {
            weight: path.ones("weight", &[width]),
            bias: path.zeros("bias", &[width]),
        }
    }

    /// Normalises over the last dimension with PyTorch's default epsilon.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let width = self.weight.size()[0];
        x.to_kind(Kind::Float)
            .layer_norm(
                [width],
                Some(self.weight.to_kind(Kind::Float)),
                Some(self.bias.to_kind(Kind::Float)),
                1e-5,
                true,
            )
            .to_kind(x.kind())
    }
}

/// `nn.Linear(in_dim, out_dim)` under `path`, zero-initialised: every CLIP weight comes from a
/// checkpoint (or [`super::Clip::random`]), so paying for a random init would be wasted time.
pub fn linear(path: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(path, in_dim, out_dim, config)
}

/// `x * sigmoid(1.702 x)`, the GELU approximation CLIP was trained with.
pub fn quick_gelu(x: &Tensor) -> Tensor {
    x * (x * 1.702).sigmoid()
}

/// Splits `[N, L, heads * head_dim]` into `[N, heads, L, head_dim]`.
pub fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (n, l, d) = x.size3().expect("attention input is [N, L, D]");
    x.view([n, l, heads, d / heads]).transpose(1, 2)
}

/// Inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (n, heads, l, head_dim) = x.size4().expect("attention output is [N, H, L, Dh]");
    x.transpose(1, 2).reshape([n, l, heads * head_dim])
}

/// `nn.MultiheadAttention` with packed `in_proj_weight`/`in_proj_bias`, self-attention only.
#[derive(Debug)]
struct SelfAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    heads: i64,
}

impl SelfAttention {
    fn new(path: &nn::Path, width: i64, heads: i64) -> SelfAttention {
        SelfAttention {
            in_proj_weight: path.zeros("in_proj_weight", &[3 * width, width]),
            in_proj_bias: path.zeros("in_proj_bias", &[3 * width]),
            out_proj: linear(path / "out_proj", width, width),
            heads,
        }
    }

    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let qkv = x.linear(&self.in_proj_weight, Some(&self.in_proj_bias));
        let parts = qkv.chunk(3, -1);
        let [q, k, v] = [&parts[0], &parts[1], &parts[2]].map(|t| split_heads(t, self.heads));
        let attended = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            causal,
            None,
            false,
        );
        merge_heads(&attended).apply(&self.out_proj)
    }
}

/// `clip.model.ResidualAttentionBlock`.
#[derive(Debug)]
struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: SelfAttention,
    ln_2: LayerNorm,
    c_fc: nn::Linear,
    c_proj: nn::Linear,
}

impl ResidualAttentionBlock {
    fn new(path: &nn::Path, width: i64, heads: i64) -> ResidualAttentionBlock {
        let mlp = path / "mlp";
        ResidualAttentionBlock {
            ln_1: LayerNorm::new(&(path / "ln_1"), width),
            attn: SelfAttention::new(&(path / "attn"), width, heads),
            ln_2: LayerNorm::new(&(path / "ln_2"), width),
            c_fc: linear(&mlp / "c_fc", width, 4 * width),
            c_proj: linear(&mlp / "c_proj", 4 * width, width),
        }
    }

    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.attn.forward(&self.ln_1.forward(x), causal);
        let hidden = quick_gelu(&self.c_fc.forward(&self.ln_2.forward(&x)));
        &x + self.c_proj.forward(&hidden)
    }
}

/// `clip.model.Transformer`: `layers` blocks under `resblocks.N`.
#[derive(Debug)]
pub struct Transformer {
    resblocks: Vec<ResidualAttentionBlock>,
    causal: bool,
}

impl Transformer {
    /// `causal` masks attention to earlier positions (the text tower's mask).
    pub fn new(path: &nn::Path, width: i64, layers: i64, heads: i64, causal: bool) -> Transformer {
        let blocks = path / "resblocks";
        let resblocks = (0..layers)
            .map(|i| ResidualAttentionBlock::new(&(&blocks / i), width, heads))
            .collect();
        Transformer { resblocks, causal }
    }

    /// Runs the blocks on batch-first `[N, L, width]` activations.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.resblocks
            .iter()
            .fold(x.shallow_clone(), |x, block| block.forward(&x, self.causal))
    }
}
