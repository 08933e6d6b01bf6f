//! SRVGGNetCompact, exactly as Real-ESRGAN's `realesrgan/archs/srvgg_arch.py` (with PReLU).
//!
//! Why: realesr-animevideov3 and realesr-general-x4v3 are this small plain network (a chain of
//! 3x3 convolutions and PReLUs, a pixel shuffle, plus the nearest-upsampled input), far
//! cheaper than RRDBNet. Variable paths are the state-dict keys `body.N.weight` / `body.N.bias`.

use std::fmt;
use std::path::Path;

use tch::nn::{self, Module};
use tch::Tensor;

use super::{
    expect_conv3x3, expect_kind, expect_nearest_upsample, expect_plain_add, graph_error,
    graph_output, inferred_shape, input_of, numbered_len, upsample_nearest, FusedActivation,
    SrError, TensorTable,
};
use crate::ncnn::NcnnModel;

/// Hyper-parameters of an SRVGGNetCompact (Real-ESRGAN's constructor arguments, PReLU activation).
#[derive(Debug, Clone, PartialEq)]
pub struct SrvggConfig {
    /// Input channels (3, RGB).
    pub num_in_ch: i64,
    /// Output channels (3, RGB).
    pub num_out_ch: i64,
    /// Feature channels of every body convolution.
    pub num_feat: i64,
    /// Body convolutions between the first and the last one.
    pub num_conv: i64,
    /// Pixel-shuffle factor.
    pub upscale: i64,
}

impl SrvggConfig {
    /// realesr-animevideov3: 64 features, 16 convolutions, x4.
    pub fn realesr_animevideov3() -> SrvggConfig {
        SrvggConfig {
            num_in_ch: 3,
            num_out_ch: 3,
            num_feat: 64,
            num_conv: 16,
            upscale: 4,
        }
    }

    /// realesr-general-x4v3: 64 features, 32 convolutions, x4.
    pub fn realesr_general_x4v3() -> SrvggConfig {
        SrvggConfig {
            num_conv: 32,
            ..SrvggConfig::realesr_animevideov3()
        }
    }

    /// Infers the configuration from `body.N` tensors: even N are convolutions, odd N PReLUs.
    pub fn from_tensors(file: &Path, table: &TensorTable) -> Result<SrvggConfig, SrError> {
        let unsupported = |problem: String| SrError::Unsupported {
            file: file.to_path_buf(),
            problem,
        };
        let first = inferred_shape(file, table, "body.0.weight", 4)?;
        let modules = numbered_len(table, "body.");
        if modules < 3 || modules % 2 == 0 {
            return Err(unsupported(format!(
                "SRVGGNetCompact body ends at body.{}, expected an even index (conv, PReLU, ..., conv)",
                modules - 1
            )));
        }
        if !table.contains_key("body.1.weight") {
            return Err(unsupported(
                "SRVGGNetCompact without PReLU weights (act_type relu/leakyrelu) is not supported"
                    .into(),
            ));
        }
        let last_name = format!("body.{}.weight", modules - 1);
        let last = inferred_shape(file, table, &last_name, 4)?;
        let upscale = (1..=8).find(|u| 3 * u * u == last[0]).ok_or_else(|| {
            unsupported(format!(
                "{last_name} gives {} channels, expected 3 x upscale^2 (RGB)",
                last[0]
            ))
        })?;
        if first[1] != 3 {
            return Err(unsupported(format!(
                "body.0.weight takes {} channels, expected 3 (RGB)",
                first[1]
            )));
        }
        Ok(SrvggConfig {
            num_in_ch: 3,
            num_out_ch: 3,
            num_feat: first[0],
            num_conv: (modules - 3) / 2,
            upscale,
        })
    }
}

impl fmt::Display for SrvggConfig {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SRVGGNetCompact {} conv, {} feat, x{}",
            self.num_conv, self.num_feat, self.upscale
        )
    }
}

/// One entry of the body list.
#[derive(Debug)]
enum BodyLayer {
    Conv(nn::Conv2D),
    /// Per-channel PReLU slopes.
    Prelu(Tensor),
}

/// The SRVGGNetCompact network.
#[derive(Debug)]
pub struct SrvggNet {
    config: SrvggConfig,
    body: Vec<BodyLayer>,
}

impl SrvggNet {
    /// Creates the network's variables under `path` with Real-ESRGAN's names (`body.N`).
    pub fn new(path: &nn::Path, config: &SrvggConfig) -> SrvggNet {
        let body_path = path / "body";
        let feat = config.num_feat;
        let out = config.num_out_ch * config.upscale * config.upscale;
        let conv_channels = std::iter::once((config.num_in_ch, feat))
            .chain((0..config.num_conv).map(|_| (feat, feat)))
            .chain(std::iter::once((feat, out)));
        let conv_config = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let mut body = Vec::new();
        for (i, (in_channels, out_channels)) in conv_channels.enumerate() {
            let index = body.len();
            body.push(BodyLayer::Conv(nn::conv2d(
                &body_path / index,
                in_channels,
                out_channels,
                3,
                conv_config,
            )));
            if i as i64 <= config.num_conv {
                let slopes =
                    (&body_path / (index + 1)).var("weight", &[feat], nn::Init::Const(0.25));
                body.push(BodyLayer::Prelu(slopes));
            }
        }
        SrvggNet {
            config: config.clone(),
            body,
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &SrvggConfig {
        &self.config
    }

    /// N x 3 x H x W to N x 3 x uH x uW.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_unless(x, &|| false)
            .expect("a pass that is never stopped ends")
    }

    /// [`SrvggNet::forward`], asking `stop` before each layer: `None` once it says to stop.
    pub fn forward_unless(&self, x: &Tensor, stop: &dyn Fn() -> bool) -> Option<Tensor> {
        let mut features = x.shallow_clone();
        for layer in &self.body {
            if stop() {
                return None;
            }
            features = match layer {
                BodyLayer::Conv(conv) => conv.forward(&features),
                BodyLayer::Prelu(slopes) => features.prelu(slopes),
            };
        }
        Some(features.pixel_shuffle(self.config.upscale) + upsample_nearest(x, self.config.upscale))
    }
}

/// Names the layers of an ncnn SRVGGNetCompact graph by walking it back from its output:
/// output = PixelShuffle(conv chain) + nearest-upsampled input; the chain alternates conv and PReLU.
pub(super) fn ncnn_module_names(model: &NcnnModel) -> Result<Vec<(usize, String)>, SrError> {
    let output = graph_output(model)?;
    let [a, b] = expect_plain_add(model, output)?;
    let (shuffle, upsample) = if model.layers[a].kind == "PixelShuffle" {
        (a, b)
    } else {
        (b, a)
    };
    expect_kind(model, shuffle, "PixelShuffle")?;
    let problem = |index: usize, p: String| graph_error(model, index, p);
    let factor = model.layers[shuffle]
        .int(0, 1)
        .map_err(|p| problem(shuffle, p))?;
    if model.layers[shuffle]
        .int(1, 0)
        .map_err(|p| problem(shuffle, p))?
        != 0
    {
        return Err(problem(
            shuffle,
            "only PyTorch's PixelShuffle channel order (1=0) is supported".into(),
        ));
    }
    expect_nearest_upsample(model, upsample, factor as f32)?;
    let input = input_of(model, upsample, 0)?;
    expect_kind(model, input, "Input")?;

    let mut chain = Vec::new();
    let mut current = input_of(model, shuffle, 0)?;
    loop {
        expect_conv3x3(model, current, FusedActivation::None)?;
        chain.push(current);
        let source = input_of(model, current, 0)?;
        if source == input {
            break;
        }
        expect_kind(model, source, "PReLU")?;
        chain.push(source);
        current = input_of(model, source, 0)?;
    }
    chain.reverse();
    Ok(chain
        .into_iter()
        .enumerate()
        .map(|(n, layer)| (layer, format!("body.{n}")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_published_parameter_counts() {
        let count = |config: &SrvggConfig| {
            let vars = nn::VarStore::new(tch::Device::Cpu);
            crate::torch_rng::exclusive(|| SrvggNet::new(&vars.root(), config));
            vars.variables().values().map(|t| t.numel()).sum::<usize>()
        };
        assert_eq!(count(&SrvggConfig::realesr_animevideov3()), 621_424);
        assert_eq!(count(&SrvggConfig::realesr_general_x4v3()), 1_213_296);
    }
}
