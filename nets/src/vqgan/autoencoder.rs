//! taming-transformers' convolutional Encoder and Decoder (`taming/modules/diffusionmodules/model.py`).
//!
//! Variable paths mirror the upstream state-dict keys (`down.{level}.block.{i}.norm1.weight`,
//! `mid.attn_1.q.weight`, `up.{level}.upsample.conv.bias`, ...), so official checkpoints load
//! without renaming. Dropout is left out: every published model uses 0.0 and we only run inference
//! (and gradients with respect to the latent, never training).

use tch::nn::{self, Module};
use tch::Tensor;

use super::VqConfig;

/// Counts trainable numbers, so a model can prove it has the published architecture's size.
pub(crate) trait ParameterCount {
    /// Number of scalar parameters in this module and its children.
    fn parameter_count(&self) -> i64;
}

impl ParameterCount for nn::Conv2D {
    fn parameter_count(&self) -> i64 {
        self.ws.numel() as i64 + self.bs.as_ref().map_or(0, |b| b.numel() as i64)
    }
}

impl ParameterCount for nn::GroupNorm {
    fn parameter_count(&self) -> i64 {
        let weight = self.ws.as_ref().map_or(0, |w| w.numel() as i64);
        weight + self.bs.as_ref().map_or(0, |b| b.numel() as i64)
    }
}

impl<T: ParameterCount> ParameterCount for Option<T> {
    fn parameter_count(&self) -> i64 {
        self.as_ref().map_or(0, T::parameter_count)
    }
}

impl<T: ParameterCount> ParameterCount for Vec<T> {
    fn parameter_count(&self) -> i64 {
        self.iter().map(T::parameter_count).sum()
    }
}

/// GroupNorm with 32 groups, eps 1e-6 and an affine part: upstream's `Normalize`.
fn normalize(vs: nn::Path, channels: i64) -> nn::GroupNorm {
    let config = nn::GroupNormConfig {
        eps: 1e-6,
        affine: true,
        ..Default::default()
    };
    nn::group_norm(vs, 32, channels, config)
}

/// A 3x3 convolution that keeps the spatial size (padding 1), as used throughout the networks.
fn conv3x3(vs: nn::Path, in_channels: i64, out_channels: i64) -> nn::Conv2D {
    let config = nn::ConvConfig {
        padding: 1,
        ..Default::default()
    };
    nn::conv2d(vs, in_channels, out_channels, 3, config)
}

/// A 1x1 convolution (channel mixing only).
pub(crate) fn conv1x1(vs: nn::Path, in_channels: i64, out_channels: i64) -> nn::Conv2D {
    nn::conv2d(vs, in_channels, out_channels, 1, Default::default())
}

/// Normalisation followed by swish, the pre-activation every block and both network ends use.
fn norm_swish(norm: &nn::GroupNorm, x: &Tensor) -> Tensor {
    norm.forward(x).silu()
}

/// Two pre-activated 3x3 convolutions with a residual connection; a 1x1 `nin_shortcut` adapts the
/// residual when the channel count changes.
#[derive(Debug)]
pub(crate) struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    nin_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock {
    fn new(vs: nn::Path, in_channels: i64, out_channels: i64) -> Self {
        let nin_shortcut = (in_channels != out_channels)
            .then(|| conv1x1(&vs / "nin_shortcut", in_channels, out_channels));
        Self {
            norm1: normalize(&vs / "norm1", in_channels),
            conv1: conv3x3(&vs / "conv1", in_channels, out_channels),
            norm2: normalize(&vs / "norm2", out_channels),
            conv2: conv3x3(&vs / "conv2", out_channels, out_channels),
            nin_shortcut,
        }
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&norm_swish(&self.norm1, x));
        let h = self.conv2.forward(&norm_swish(&self.norm2, &h));
        match &self.nin_shortcut {
            Some(shortcut) => shortcut.forward(x) + h,
            None => x + h,
        }
    }
}

impl ParameterCount for ResnetBlock {
    fn parameter_count(&self) -> i64 {
        self.norm1.parameter_count()
            + self.conv1.parameter_count()
            + self.norm2.parameter_count()
            + self.conv2.parameter_count()
            + self.nin_shortcut.parameter_count()
    }
}

/// Single-head self-attention over all positions with 1x1 projections and a residual connection.
#[derive(Debug)]
pub(crate) struct AttnBlock {
    norm: nn::GroupNorm,
    q: nn::Conv2D,
    k: nn::Conv2D,
    v: nn::Conv2D,
    proj_out: nn::Conv2D,
}

impl AttnBlock {
    fn new(vs: nn::Path, channels: i64) -> Self {
        Self {
            norm: normalize(&vs / "norm", channels),
            q: conv1x1(&vs / "q", channels, channels),
            k: conv1x1(&vs / "k", channels, channels),
            v: conv1x1(&vs / "v", channels, channels),
            proj_out: conv1x1(&vs / "proj_out", channels, channels),
        }
    }
}

/// [b, c, h, w] -> [b, 1, h*w, c]: one attention head whose tokens are the pixels.
fn to_tokens(x: &Tensor) -> Tensor {
    x.flatten(2, 3).unsqueeze(1).transpose(-1, -2)
}

impl Module for AttnBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.norm.forward(x);
        let (q, k, v) = (self.q.forward(&h), self.k.forward(&h), self.v.forward(&h));
        // softmax(q k^T / sqrt(c)) v, which upstream spells out with two bmm calls; the fused
        // kernel computes the same thing with less memory.
        let attended = Tensor::scaled_dot_product_attention(
            &to_tokens(&q),
            &to_tokens(&k),
            &to_tokens(&v),
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let attended = attended.squeeze_dim(1).transpose(-1, -2).reshape(x.size());
        x + self.proj_out.forward(&attended)
    }
}

impl ParameterCount for AttnBlock {
    fn parameter_count(&self) -> i64 {
        [&self.q, &self.k, &self.v, &self.proj_out]
            .iter()
            .map(|c| c.parameter_count())
            .sum::<i64>()
            + self.norm.parameter_count()
    }
}

/// Halves the resolution: zero padding on the right and bottom only, then a stride-2 3x3 conv.
#[derive(Debug)]
struct Downsample {
    conv: nn::Conv2D,
}

impl Downsample {
    fn new(vs: nn::Path, channels: i64) -> Self {
        let config = nn::ConvConfig {
            stride: 2,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(&vs / "conv", channels, channels, 3, config),
        }
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
    }
}

/// Doubles the resolution: nearest-neighbour upsampling, then a 3x3 conv.
#[derive(Debug)]
pub(crate) struct Upsample {
    conv: nn::Conv2D,
}

impl Upsample {
    fn new(vs: nn::Path, channels: i64) -> Self {
        Self {
            conv: conv3x3(&vs / "conv", channels, channels),
        }
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (height, width) = (x.size()[2], x.size()[3]);
        self.conv
            .forward(&x.upsample_nearest2d([2 * height, 2 * width], 2.0, 2.0))
    }
}

/// The residual blocks of one resolution level, each followed by attention at the levels the
/// config lists in `attn_resolutions`.
#[derive(Debug)]
struct Level {
    block: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
}

impl Level {
    fn new(
        vs: &nn::Path,
        blocks: i64,
        in_channels: i64,
        out_channels: i64,
        with_attn: bool,
    ) -> Self {
        let block = (0..blocks)
            .map(|i| {
                let channels_in = if i == 0 { in_channels } else { out_channels };
                ResnetBlock::new(vs / "block" / i, channels_in, out_channels)
            })
            .collect();
        let attn_count = if with_attn { blocks } else { 0 };
        let attn = (0..attn_count)
            .map(|i| AttnBlock::new(vs / "attn" / i, out_channels))
            .collect();
        Self { block, attn }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, block) in self.block.iter().enumerate() {
            h = block.forward(&h);
            if let Some(attn) = self.attn.get(i) {
                h = attn.forward(&h);
            }
        }
        h
    }
}

impl ParameterCount for Level {
    fn parameter_count(&self) -> i64 {
        self.block.parameter_count() + self.attn.parameter_count()
    }
}

/// The bottleneck both networks share: resnet, attention, resnet at the lowest resolution.
#[derive(Debug)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(vs: nn::Path, channels: i64) -> Self {
        Self {
            block_1: ResnetBlock::new(&vs / "block_1", channels, channels),
            attn_1: AttnBlock::new(&vs / "attn_1", channels),
            block_2: ResnetBlock::new(&vs / "block_2", channels, channels),
        }
    }
}

impl Module for Mid {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.block_2
            .forward(&self.attn_1.forward(&self.block_1.forward(x)))
    }
}

impl ParameterCount for Mid {
    fn parameter_count(&self) -> i64 {
        self.block_1.parameter_count()
            + self.attn_1.parameter_count()
            + self.block_2.parameter_count()
    }
}

/// Channel count of resolution level `level`.
fn level_channels(cfg: &VqConfig, level: usize) -> i64 {
    cfg.ch * cfg.ch_mult[level]
}

/// Image -> latent (`z_channels`; VQ models never use `double_z`) at 1/2^(levels-1) resolution.
#[derive(Debug)]
pub(crate) struct Encoder {
    conv_in: nn::Conv2D,
    down: Vec<(Level, Option<Downsample>)>,
    mid: Mid,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    /// Builds the encoder under `vs` (normally `encoder`). `cfg` must have been validated.
    pub(crate) fn new(vs: nn::Path, cfg: &VqConfig) -> Self {
        let levels = cfg.ch_mult.len();
        let mut resolution = cfg.resolution;
        let mut block_in = cfg.ch;
        let mut down = Vec::with_capacity(levels);
        for level in 0..levels {
            let path = &vs / "down" / level;
            let block_out = level_channels(cfg, level);
            let with_attn = cfg.attn_resolutions.contains(&resolution);
            let stage = Level::new(&path, cfg.num_res_blocks, block_in, block_out, with_attn);
            block_in = block_out;
            let downsample = (level + 1 != levels).then(|| {
                resolution /= 2;
                Downsample::new(&path / "downsample", block_in)
            });
            down.push((stage, downsample));
        }
        Self {
            conv_in: conv3x3(&vs / "conv_in", cfg.in_channels, cfg.ch),
            down,
            mid: Mid::new(&vs / "mid", block_in),
            norm_out: normalize(&vs / "norm_out", block_in),
            conv_out: conv3x3(&vs / "conv_out", block_in, cfg.z_channels),
        }
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for (level, downsample) in &self.down {
            h = level.forward(&h);
            if let Some(downsample) = downsample {
                h = downsample.forward(&h);
            }
        }
        let h = self.mid.forward(&h);
        self.conv_out.forward(&norm_swish(&self.norm_out, &h))
    }
}

impl ParameterCount for Encoder {
    fn parameter_count(&self) -> i64 {
        let down: i64 = self
            .down
            .iter()
            .map(|(l, d)| l.parameter_count() + d.parameter_count())
            .sum();
        self.conv_in.parameter_count()
            + down
            + self.mid.parameter_count()
            + self.norm_out.parameter_count()
            + self.conv_out.parameter_count()
    }
}

/// Latent (`z_channels`) -> image (`out_ch`), mirroring the encoder with one extra block per level.
#[derive(Debug)]
pub(crate) struct Decoder {
    conv_in: nn::Conv2D,
    mid: Mid,
    /// Indexed by level like upstream's `decoder.up.{level}` (level 0 = full resolution), and run
    /// from the last level to the first.
    up: Vec<(Level, Option<Upsample>)>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    /// Builds the decoder under `vs` (normally `decoder`). `cfg` must have been validated.
    pub(crate) fn new(vs: nn::Path, cfg: &VqConfig) -> Self {
        let levels = cfg.ch_mult.len();
        let mut block_in = level_channels(cfg, levels - 1);
        let mut resolution = cfg.resolution >> (levels - 1);
        let conv_in = conv3x3(&vs / "conv_in", cfg.z_channels, block_in);
        let mid = Mid::new(&vs / "mid", block_in);
        let mut up = Vec::with_capacity(levels);
        for level in (0..levels).rev() {
            let path = &vs / "up" / level;
            let block_out = level_channels(cfg, level);
            let with_attn = cfg.attn_resolutions.contains(&resolution);
            let stage = Level::new(
                &path,
                cfg.num_res_blocks + 1,
                block_in,
                block_out,
                with_attn,
            );
            block_in = block_out;
            let upsample = (level != 0).then(|| {
                resolution *= 2;
                Upsample::new(&path / "upsample", block_in)
            });
            up.push((stage, upsample));
        }
        up.reverse();
        Self {
            conv_in,
            mid,
            up,
            norm_out: normalize(&vs / "norm_out", block_in),
            conv_out: conv3x3(&vs / "conv_out", block_in, cfg.out_ch),
        }
    }
}

impl Decoder {
    /// The decoder's forward pass in pieces, in order: the bottleneck, every resnet block (with
    /// its attention) and upsampling from the lowest resolution up, then the output layers.
    pub(crate) fn stages(&self) -> Vec<DecoderStage<'_>> {
        let mut stages = vec![DecoderStage::Entry(self)];
        for (level, upsample) in self.up.iter().rev() {
            for (i, block) in level.block.iter().enumerate() {
                stages.push(DecoderStage::Block(block, level.attn.get(i)));
            }
            stages.extend(upsample.as_ref().map(DecoderStage::Upsample));
        }
        stages.push(DecoderStage::Exit(self));
        stages
    }
}

/// One piece of the decoder's forward pass. The generation loop back-propagates the decoder
/// piece by piece, each recomputed from its input (activation checkpointing), so that only one
/// piece's activations are held at a time instead of the whole decoder's.
#[derive(Debug)]
pub(crate) enum DecoderStage<'a> {
    /// `conv_in` and the bottleneck.
    Entry(&'a Decoder),
    /// One resnet block of a level, then its attention block when the level has them.
    Block(&'a ResnetBlock, Option<&'a AttnBlock>),
    /// A level's doubling of the resolution.
    Upsample(&'a Upsample),
    /// Normalisation, swish and `conv_out`.
    Exit(&'a Decoder),
}

impl DecoderStage<'_> {
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            DecoderStage::Entry(d) => d.mid.forward(&d.conv_in.forward(x)),
            DecoderStage::Block(block, attn) => {
                let h = block.forward(x);
                attn.map_or(h.shallow_clone(), |attn| attn.forward(&h))
            }
            DecoderStage::Upsample(upsample) => upsample.forward(x),
            DecoderStage::Exit(d) => d.conv_out.forward(&norm_swish(&d.norm_out, x)),
        }
    }
}

impl ParameterCount for Decoder {
    fn parameter_count(&self) -> i64 {
        let up: i64 = self
            .up
            .iter()
            .map(|(l, u)| l.parameter_count() + u.parameter_count())
            .sum();
        self.conv_in.parameter_count()
            + self.mid.parameter_count()
            + up
            + self.norm_out.parameter_count()
            + self.conv_out.parameter_count()
    }
}

impl ParameterCount for Downsample {
    fn parameter_count(&self) -> i64 {
        self.conv.parameter_count()
    }
}

impl ParameterCount for Upsample {
    fn parameter_count(&self) -> i64 {
        self.conv.parameter_count()
    }
}
