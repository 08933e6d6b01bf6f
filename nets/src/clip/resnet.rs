//! CLIP's image tower for the ResNet models (`clip.model.ModifiedResNet`): a three-convolution
//! stem, anti-aliased bottleneck stages (average pooling instead of strided convolutions) and a
//! multi-head attention pooling layer in place of global average pooling.

use tch::nn::{self, Module};
use tch::Tensor;

use super::transformer::{linear, merge_heads, split_heads};

/// Output channels of a bottleneck are four times its inner width, as in torchvision.
const EXPANSION: i64 = 4;

/// Shape of a ModifiedResNet, as `clip.model.build_model` reads it off a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModifiedResNetConfig {
    /// Side of the square input image in pixels (32 times the attention-pool grid).
    pub input_resolution: i64,
    /// Bottleneck blocks in each of the four stages.
    pub layers: [i64; 4],
    /// Stem width; stage `i` has inner width `width * 2^i`.
    pub width: i64,
    /// Dimension of the joint embedding (the attention pool's output).
    pub output_dim: i64,
}

impl ModifiedResNetConfig {
    /// OpenAI's RN50.
    pub fn rn50() -> Self {
        ModifiedResNetConfig {
            input_resolution: 224,
            layers: [3, 4, 6, 3],
            width: 64,
            output_dim: 1024,
        }
    }

    /// OpenAI's RN101.
    pub fn rn101() -> Self {
        ModifiedResNetConfig {
            input_resolution: 224,
            layers: [3, 4, 23, 3],
            width: 64,
            output_dim: 512,
        }
    }

    /// OpenAI's RN50x4.
    pub fn rn50x4() -> Self {
        ModifiedResNetConfig {
            input_resolution: 288,
            layers: [4, 6, 10, 6],
            width: 80,
            output_dim: 640,
        }
    }

    /// OpenAI's RN50x16.
    pub fn rn50x16() -> Self {
        ModifiedResNetConfig {
            input_resolution: 384,
            layers: [6, 8, 18, 8],
            width: 96,
            output_dim: 768,
        }
    }

    /// OpenAI's RN50x64.
    pub fn rn50x64() -> Self {
        ModifiedResNetConfig {
            input_resolution: 448,
            layers: [3, 15, 36, 10],
            width: 128,
            output_dim: 1024,
        }
    }

    /// Channels entering the attention pool.
    pub fn feature_dim(&self) -> i64 {
        self.width * 32
    }

    /// Attention-pool heads, 64 wide as `CLIP.__init__` sets them.
    pub fn heads(&self) -> i64 {
        self.feature_dim() / 64
    }
}

/// A bias-free convolution with "same" padding; only the stem's first one is strided.
fn conv(
    path: nn::Path,
    in_channels: i64,
    out_channels: i64,
    (kernel, stride): (i64, i64),
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding: kernel / 2,
        bias: false,
        ws_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(path, in_channels, out_channels, kernel, config)
}

/// `nn.AvgPool2d(size)`, or the identity for `size == 1` as in the reference.
fn avg_pool(x: &Tensor, size: i64) -> Tensor {
    if size == 1 {
        return x.shallow_clone();
    }
    x.avg_pool2d([size, size], [size, size], [0, 0], false, true, None)
}

/// A convolution (kernel, stride) followed by eval-mode batch normalisation.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBn {
    /// `conv` and `bn` are the reference's attribute names (`conv1`/`bn1`, or `0`/`1` in `downsample`).
    fn new(
        path: &nn::Path,
        (conv_name, bn_name): (&str, &str),
        in_ch: i64,
        out_ch: i64,
        kernel: (i64, i64),
    ) -> ConvBn {
        ConvBn {
            conv: conv(path / conv_name, in_ch, out_ch, kernel),
            bn: nn::batch_norm2d(path / bn_name, out_ch, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(x).apply_t(&self.bn, false)
    }
}

/// `clip.model.Bottleneck`.
#[derive(Debug)]
struct Bottleneck {
    reduce: ConvBn,
    inner: ConvBn,
    expand: ConvBn,
    downsample: Option<ConvBn>,
    stride: i64,
}

impl Bottleneck {
    fn new(path: &nn::Path, in_channels: i64, planes: i64, stride: i64) -> Bottleneck {
        let out_channels = planes * EXPANSION;
        let needs_downsample = stride > 1 || in_channels != out_channels;
        Bottleneck {
            reduce: ConvBn::new(path, ("conv1", "bn1"), in_channels, planes, (1, 1)),
            inner: ConvBn::new(path, ("conv2", "bn2"), planes, planes, (3, 1)),
            expand: ConvBn::new(path, ("conv3", "bn3"), planes, out_channels, (1, 1)),
            downsample: needs_downsample.then(|| {
                ConvBn::new(
                    &(path / "downsample"),
                    ("0", "1"),
                    in_channels,
                    out_channels,
                    (1, 1),
                )
            }),
            stride,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let out = self.reduce.forward(x).relu();
        let out = avg_pool(&self.inner.forward(&out).relu(), self.stride);
        let out = self.expand.forward(&out);
        let identity = match &self.downsample {
            Some(downsample) => downsample.forward(&avg_pool(x, self.stride)),
            None => x.shallow_clone(),
        };
        (out + identity).relu()
    }
}

/// `clip.model.AttentionPool2d`: the mean feature attends over all positions.
#[derive(Debug)]
struct AttentionPool2d {
    positional_embedding: Tensor,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    c_proj: nn::Linear,
    heads: i64,
}

impl AttentionPool2d {
    fn new(path: &nn::Path, config: &ModifiedResNetConfig) -> AttentionPool2d {
        let (dim, grid) = (config.feature_dim(), config.input_resolution / 32);
        AttentionPool2d {
            positional_embedding: path.zeros("positional_embedding", &[grid * grid + 1, dim]),
            q_proj: linear(path / "q_proj", dim, dim),
            k_proj: linear(path / "k_proj", dim, dim),
            v_proj: linear(path / "v_proj", dim, dim),
            c_proj: linear(path / "c_proj", dim, config.output_dim),
            heads: config.heads(),
        }
    }

    fn forward(&self, features: &Tensor) -> Tensor {
        let positions = features.flatten(2, 3).transpose(1, 2);
        let tokens = Tensor::cat(&[positions.mean_dim(1, true, None), positions], 1)
            + &self.positional_embedding;
        let query = split_heads(&self.q_proj.forward(&tokens.narrow(1, 0, 1)), self.heads);
        let key = split_heads(&self.k_proj.forward(&tokens), self.heads);
        let value = split_heads(&self.v_proj.forward(&tokens), self.heads);
        let pooled = Tensor::scaled_dot_product_attention(
            &query,
            &key,
            &value,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        self.c_proj.forward(&merge_heads(&pooled)).squeeze_dim(1)
    }
}

/// The ResNet image encoder, variables under `visual.`.
#[derive(Debug)]
pub struct ModifiedResNet {
    /// The three stem convolutions, each followed by ReLU.
    stem: Vec<ConvBn>,
    stages: Vec<Vec<Bottleneck>>,
    attnpool: AttentionPool2d,
}

impl ModifiedResNet {
    /// Creates the variables with the reference's names and shapes under `path` (`visual`).
    pub fn new(path: &nn::Path, config: &ModifiedResNetConfig) -> ModifiedResNet {
        let width = config.width;
        let stem = vec![
            ConvBn::new(path, ("conv1", "bn1"), 3, width / 2, (3, 2)),
            ConvBn::new(path, ("conv2", "bn2"), width / 2, width / 2, (3, 1)),
            ConvBn::new(path, ("conv3", "bn3"), width / 2, width, (3, 1)),
        ];
        let mut in_channels = width;
        let mut stages = Vec::with_capacity(4);
        for (stage, &blocks) in (0..4).zip(&config.layers) {
            let stage_path = path / format!("layer{}", stage + 1);
            let planes = width << stage;
            let first_stride = if stage == 0 { 1 } else { 2 };
            let stage_blocks = (0..blocks)
                .map(|i| {
                    let block = Bottleneck::new(
                        &(&stage_path / i),
                        in_channels,
                        planes,
                        if i == 0 { first_stride } else { 1 },
                    );
                    in_channels = planes * EXPANSION;
                    block
                })
                .collect();
            stages.push(stage_blocks);
        }
        ModifiedResNet {
            stem,
            stages,
            attnpool: AttentionPool2d::new(&(path / "attnpool"), config),
        }
    }

    /// Normalised pixels `[N, 3, R, R]` to unnormalised image features `[N, output_dim]`.
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let stem = self
            .stem
            .iter()
            .fold(pixels.shallow_clone(), |x, layer| layer.forward(&x).relu());
        let mut x = avg_pool(&stem, 2);
        for block in self.stages.iter().flatten() {
            x = block.forward(&x);
        }
        self.attnpool.forward(&x)
    }
}
