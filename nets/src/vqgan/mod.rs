//! taming-transformers' VQGAN first stage (`taming.models.vqgan.VQModel` / `GumbelVQ`): the image
//! model the VQGAN+CLIP generation loop optimises a latent grid through.
//!
//! Checkpoints: the official Lightning `.ckpt` nests its tensors under `state_dict`; convert it once
//! with `.deps/venv/bin/python scripts/convert_checkpoint.py model.ckpt model.safetensors`, then
//! [`VqModel::load`] it with the model's published YAML. Tensors the first stage does not use
//! (`loss.*`, the discriminator, a transformer's `transformer.*` / `cond_stage_model.*`) are ignored.

mod autoencoder;
mod quantize;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, TchError, Tensor};

use crate::weights::{load_weights, WeightError};
use autoencoder::{conv1x1, Decoder, Encoder, ParameterCount};
use quantize::{lookup, GumbelQuantize, Quantizer, VectorQuantizer};

/// Everything that can go wrong building, loading or feeding a VQGAN, each naming its culprit.
#[derive(Debug, thiserror::Error)]
pub enum VqError {
    /// The YAML file could not be read.
    #[error("cannot read VQGAN config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML text is not a usable taming-transformers model config.
    #[error("invalid VQGAN config: {0}")]
    Config(String),
    /// The weights file could not be read as safetensors.
    #[error("cannot read VQGAN weights {path}: {source}")]
    ReadWeights { path: PathBuf, source: TchError },
    /// The weights do not fit the config's architecture (see [`crate::weights`]).
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The image is not [N, in_channels, H, W].
    #[error("expected an image of shape [N, {channels}, H, W], got {shape:?}")]
    ImageShape { channels: i64, shape: Vec<i64> },
    /// The image size is not a positive multiple of the downsampling factor.
    #[error("image size {height}x{width} is not a positive multiple of the model's downsampling factor {factor}")]
    SizeNotMultiple {
        height: i64,
        width: i64,
        factor: i64,
    },
    /// libtorch failed while copying weights.
    #[error("libtorch error: {0}")]
    Torch(#[from] TchError),
}

const VQ_MODEL: &str = "taming.models.vqgan.VQModel";
const GUMBEL_VQ: &str = "taming.models.vqgan.GumbelVQ";
const NET2NET: &str = "taming.models.cond_transformer.Net2NetTransformer";
/// Where a Net2NetTransformer checkpoint keeps its first stage.
const NET2NET_PREFIX: &str = "first_stage_model.";
/// The architecture of a VQGAN first stage: upstream's `ddconfig` plus the codebook size, and
/// where the checkpoint keeps it. Build it with a named constructor or from the published YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VqConfig {
    /// Base channel count (level channels are `ch * ch_mult[level]`).
    pub ch: i64,
    /// Image channels the decoder produces.
    pub out_ch: i64,
    /// Channel multiplier per resolution level; `len - 1` halvings.
    pub ch_mult: Vec<i64>,
    /// Residual blocks per encoder level (the decoder has one more).
    pub num_res_blocks: i64,
    /// Resolutions (relative to `resolution`) whose levels carry attention blocks.
    pub attn_resolutions: Vec<i64>,
    /// Image channels the encoder reads.
    pub in_channels: i64,
    /// Training resolution; only decides which levels get attention, not the usable image size.
    pub resolution: i64,
    /// Channels of the latent between encoder/decoder and the quant convs.
    pub z_channels: i64,
    /// Channels of a codebook vector.
    pub embed_dim: i64,
    /// Codebook size.
    pub n_embed: i64,
    /// GumbelQuantize (`quantize.proj`, `quantize.embed`) instead of VectorQuantizer.
    pub gumbel: bool,
    /// Prefix of the first stage's keys in the checkpoint: empty for a VQModel checkpoint,
    /// `first_stage_model.` for a Net2NetTransformer one (coco, faceshq, sflckr).
    pub state_dict_prefix: String,
}

impl VqConfig {
    /// The f16 architecture every published VQModel shares (ch 128, ch_mult [1,1,2,2,4]).
    fn f16(n_embed: i64, state_dict_prefix: &str) -> Self {
        Self {
            ch: 128,
            out_ch: 3,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            in_channels: 3,
            resolution: 256,
            z_channels: 256,
            embed_dim: 256,
            n_embed,
            gumbel: false,
            state_dict_prefix: state_dict_prefix.to_string(),
        }
    }

    /// vqgan_imagenet_f16_16384, the farm's default model.
    pub fn imagenet_f16_16384() -> Self {
        Self::f16(16384, "")
    }

    /// vqgan_imagenet_f16_1024.
    pub fn imagenet_f16_1024() -> Self {
        Self::f16(1024, "")
    }

    /// WikiArt 16384 (the imagenet f16_16384 architecture fine-tuned on paintings).
    pub fn wikiart_16384() -> Self {
        Self::f16(16384, "")
    }

    /// The COCO scene transformer's first stage (8192 codes).
    pub fn coco() -> Self {
        Self::f16(8192, NET2NET_PREFIX)
    }

    /// The FacesHQ transformer's first stage (1024 codes).
    pub fn faceshq() -> Self {
        Self::f16(1024, NET2NET_PREFIX)
    }

    /// The S-FLCKR transformer's first stage (1024 codes).
    pub fn sflckr() -> Self {
        Self::f16(1024, NET2NET_PREFIX)
    }

    /// vqgan_gumbel_f8_8192: f8, attention at 32, Gumbel quantiser with 8192 codes.
    pub fn gumbel_f8_8192() -> Self {
        Self {
            ch_mult: vec![1, 1, 2, 4],
            attn_resolutions: vec![32],
            n_embed: 8192,
            gumbel: true,
            ..Self::f16(0, "")
        }
    }

    /// Reads a published taming-transformers YAML: a `VQModel` or `GumbelVQ`, or a
    /// `Net2NetTransformer` whose `first_stage_config` is one of those.
    pub fn from_yaml(text: &str) -> Result<Self, VqError> {
        let file: YamlFile =
            serde_norway::from_str(text).map_err(|e| VqError::Config(e.to_string()))?;
        let config = Self::from_stage(&file.model, "model")?;
        config.validate()?;
        Ok(config)
    }

    fn from_stage(stage: &YamlStage, at: &str) -> Result<Self, VqError> {
        let params = |what: &str| format!("{at}.params ({}): ", stage.target) + what;
        match stage.target.as_str() {
            VQ_MODEL | GUMBEL_VQ => {
                let p: FirstStageParams = serde_norway::from_value(stage.params.clone())
                    .map_err(|e| VqError::Config(params(&e.to_string())))?;
                if p.ddconfig.double_z {
                    return Err(VqError::Config(params(
                        "ddconfig.double_z must be false for a VQ model",
                    )));
                }
                Ok(p.into_config(stage.target == GUMBEL_VQ))
            }
            NET2NET => {
                let p: TransformerParams = serde_norway::from_value(stage.params.clone())
                    .map_err(|e| VqError::Config(params(&e.to_string())))?;
                let mut config = Self::from_stage(
                    &p.first_stage_config,
                    &format!("{at}.params.first_stage_config"),
                )?;
                config.state_dict_prefix = NET2NET_PREFIX.to_string() + &config.state_dict_prefix;
                Ok(config)
            }
            other => Err(VqError::Config(format!(
                "{at}.target is `{other}`; supported: {VQ_MODEL}, {GUMBEL_VQ}, {NET2NET}"
            ))),
        }
    }

    /// Rejects configs the networks cannot be built from (instead of panicking in libtorch).
    fn validate(&self) -> Result<(), VqError> {
        let fail = |what: String| Err(VqError::Config(what));
        let positive = [
            ("ch", self.ch),
            ("out_ch", self.out_ch),
            ("in_channels", self.in_channels),
            ("resolution", self.resolution),
            ("z_channels", self.z_channels),
            ("embed_dim", self.embed_dim),
            ("n_embed", self.n_embed),
        ];
        if let Some((field, value)) = positive.iter().find(|(_, v)| *v <= 0) {
            return fail(format!("{field} must be positive, got {value}"));
        }
        if self.ch_mult.is_empty() || self.num_res_blocks < 1 {
            return fail("ddconfig needs a non-empty ch_mult and num_res_blocks >= 1".into());
        }
        if let Some(m) = self
            .ch_mult
            .iter()
            .find(|m| **m <= 0 || (self.ch * **m) % 32 != 0)
        {
            return fail(format!(
                "ch * ch_mult ({} * {m}) must be a positive multiple of 32 (GroupNorm groups)",
                self.ch
            ));
        }
        if self.gumbel && self.embed_dim != self.z_channels {
            return fail(format!(
                "GumbelVQ needs embed_dim == z_channels (got {} and {})",
                self.embed_dim, self.z_channels
            ));
        }
        Ok(())
    }

    /// How many image pixels one latent position covers along each side (2^(levels-1)).
    pub fn downsampling_factor(&self) -> i64 {
        1 << (self.ch_mult.len() - 1)
    }
}

#[derive(Deserialize)]
struct YamlFile {
    model: YamlStage,
}

#[derive(Deserialize)]
struct YamlStage {
    target: String,
    params: serde_norway::Value,
}

#[derive(Deserialize)]
struct TransformerParams {
    first_stage_config: YamlStage,
}

#[derive(Deserialize)]
struct FirstStageParams {
    embed_dim: i64,
    n_embed: i64,
    ddconfig: DdConfig,
}

#[derive(Deserialize)]
struct DdConfig {
    ch: i64,
    out_ch: i64,
    #[serde(default = "default_ch_mult")]
    ch_mult: Vec<i64>,
    num_res_blocks: i64,
    attn_resolutions: Vec<i64>,
    in_channels: i64,
    resolution: i64,
    z_channels: i64,
    #[serde(default = "default_double_z")]
    double_z: bool,
}

/// Upstream's Encoder/Decoder default.
fn default_ch_mult() -> Vec<i64> {
    vec![1, 2, 4, 8]
}

/// Upstream's Encoder default.
fn default_double_z() -> bool {
    true
}

impl FirstStageParams {
    fn into_config(self, gumbel: bool) -> VqConfig {
        let d = self.ddconfig;
        VqConfig {
            ch: d.ch,
            out_ch: d.out_ch,
            ch_mult: d.ch_mult,
            num_res_blocks: d.num_res_blocks,
            attn_resolutions: d.attn_resolutions,
            in_channels: d.in_channels,
            resolution: d.resolution,
            z_channels: d.z_channels,
            embed_dim: self.embed_dim,
            n_embed: self.n_embed,
            gumbel,
            state_dict_prefix: String::new(),
        }
    }
}

/// A VQGAN first stage: image <-> latent grid <-> codebook indices.
#[derive(Debug)]
pub struct VqModel {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: nn::Conv2D,
    post_quant_conv: nn::Conv2D,
    quantize: Quantizer,
    in_channels: i64,
    factor: i64,
}

impl VqModel {
    /// Builds the model with fresh weights under `vs`; variable names are the upstream state-dict
    /// keys (`encoder.down.0.block.0.norm1.weight`, `quantize.embedding.weight`, ...). `cfg` must be
    /// valid (the named constructors and [`VqConfig::from_yaml`] are).
    pub fn new(vs: &nn::Path, cfg: &VqConfig) -> Self {
        let quantize = if cfg.gumbel {
            Quantizer::Gumbel(GumbelQuantize::new(
                &(vs / "quantize"),
                cfg.z_channels,
                cfg.n_embed,
                cfg.embed_dim,
            ))
        } else {
            Quantizer::Vector(VectorQuantizer::new(
                &(vs / "quantize"),
                cfg.n_embed,
                cfg.embed_dim,
            ))
        };
        Self {
            encoder: Encoder::new(vs / "encoder", cfg),
            decoder: Decoder::new(vs / "decoder", cfg),
            quant_conv: conv1x1(vs / "quant_conv", cfg.z_channels, cfg.embed_dim),
            post_quant_conv: conv1x1(vs / "post_quant_conv", cfg.embed_dim, cfg.z_channels),
            quantize,
            in_channels: cfg.in_channels,
            factor: cfg.downsampling_factor(),
        }
    }

    /// Loads YAML config + weights (.safetensors from scripts/convert_checkpoint.py, which
    /// flattens the Lightning `state_dict`; loss.* / discriminator tensors are ignored). The
    /// weights are frozen: gradients flow to inputs (the latent), never into the model.
    pub fn load(config_yaml: &Path, weights: &Path, device: Device) -> Result<VqModel, VqError> {
        let text = std::fs::read_to_string(config_yaml).map_err(|source| VqError::ReadConfig {
            path: config_yaml.to_path_buf(),
            source,
        })?;
        let cfg = VqConfig::from_yaml(&text)?;
        let tensors = Tensor::read_safetensors(weights).map_err(|source| VqError::ReadWeights {
            path: weights.to_path_buf(),
            source,
        })?;
        let mut vs = nn::VarStore::new(device);
        let model = crate::torch_rng::exclusive(|| VqModel::new(&vs.root(), &cfg));
        load_weights(&vs, weights, tensors, &cfg.state_dict_prefix)?;
        vs.freeze();
        Ok(model)
    }

    /// Image [N, 3, H, W] in [-1, 1] -> latent z before quantisation (after `quant_conv`),
    /// [N, embed_dim, H/f, W/f]. H and W must be multiples of the downsampling factor f.
    pub fn encode(&self, image: &Tensor) -> Result<Tensor, VqError> {
        let shape = image.size();
        if shape.len() != 4 || shape[1] != self.in_channels {
            return Err(VqError::ImageShape {
                channels: self.in_channels,
                shape,
            });
        }
        let (height, width) = (shape[2], shape[3]);
        if height == 0 || width == 0 || height % self.factor != 0 || width % self.factor != 0 {
            return Err(VqError::SizeNotMultiple {
                height,
                width,
                factor: self.factor,
            });
        }
        Ok(self.quant_conv.forward(&self.encoder.forward(image)))
    }

    /// Snaps z [N, embed_dim, h, w] to the codebook: (z_q with a straight-through gradient into
    /// z, indices [N, h, w]).
    pub fn quantize(&self, z: &Tensor) -> (Tensor, Tensor) {
        self.quantize.quantize(z)
    }

    /// Latent [N, embed_dim, h, w] -> image [N, out_ch, h*f, w*f], roughly in [-1, 1];
    /// differentiable with respect to `z_q`.
    pub fn decode(&self, z_q: &Tensor) -> Tensor {
        (0..self.decode_stage_count()).fold(z_q.shallow_clone(), |h, i| self.decode_stage(i, &h))
    }

    /// How many pieces [`VqModel::decode`] runs in (see [`VqModel::decode_stage`]).
    pub fn decode_stage_count(&self) -> usize {
        self.decoder.stages().len()
    }

    /// Piece `index` of [`VqModel::decode`]: `post_quant_conv` and the decoder's bottleneck,
    /// then each resnet block and upsampling, then the output layers. Applied in order they are
    /// `decode`; the generation loop back-propagates them one at a time to save memory.
    pub fn decode_stage(&self, index: usize, x: &Tensor) -> Tensor {
        let stages = self.decoder.stages();
        if index == 0 {
            stages[0].forward(&self.post_quant_conv.forward(x))
        } else {
            stages[index].forward(x)
        }
    }

    /// Codebook indices [N, h, w] -> image, for replaying a stored token grid.
    pub fn decode_indices(&self, indices: &Tensor) -> Tensor {
        self.decode(&lookup(self.codebook_ref(), indices))
    }

    /// The codebook [n_embed, embed_dim] (quantize.embedding.weight, or quantize.embed.weight for
    /// gumbel) — the generation loop quantises with it and clamps z per channel to its min/max.
    pub fn codebook(&self) -> Tensor {
        self.codebook_ref().shallow_clone()
    }

    fn codebook_ref(&self) -> &Tensor {
        self.quantize.codebook()
    }

    /// Pixels per latent position along each side (16 for the f16 models, 8 for gumbel f8).
    pub fn downsampling_factor(&self) -> i64 {
        self.factor
    }

    /// Number of scalar parameters of the first stage, to check an architecture against the
    /// published one.
    pub fn parameter_count(&self) -> i64 {
        self.encoder.parameter_count()
            + self.decoder.parameter_count()
            + self.quant_conv.parameter_count()
            + self.post_quant_conv.parameter_count()
            + self.quantize.parameter_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets/vqgan")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn named_constructors_equal_the_published_yaml() {
        let cases: [(&str, VqConfig); 7] = [
            (
                "vqgan_imagenet_f16_16384.yaml",
                VqConfig::imagenet_f16_16384(),
            ),
            (
                "vqgan_imagenet_f16_1024.yaml",
                VqConfig::imagenet_f16_1024(),
            ),
            ("vqgan_gumbel_f8_8192.yaml", VqConfig::gumbel_f8_8192()),
            ("wikiart_16384.yaml", VqConfig::wikiart_16384()),
            ("coco.yaml", VqConfig::coco()),
            ("faceshq.yaml", VqConfig::faceshq()),
            ("sflckr.yaml", VqConfig::sflckr()),
        ];
        for (file, expected) in cases {
            assert_eq!(
                VqConfig::from_yaml(&asset(file)).unwrap(),
                expected,
                "{file}"
            );
        }
    }

    #[test]
    fn downsampling_factors_follow_ch_mult() {
        assert_eq!(VqConfig::imagenet_f16_16384().downsampling_factor(), 16);
        assert_eq!(VqConfig::gumbel_f8_8192().downsampling_factor(), 8);
    }

    #[test]
    fn unsupported_target_is_named() {
        let err =
            VqConfig::from_yaml("model:\n  target: taming.models.vqgan.Other\n  params: {}\n")
                .unwrap_err();
        assert!(
            err.to_string().contains("taming.models.vqgan.Other"),
            "{err}"
        );
    }

    #[test]
    fn missing_ddconfig_field_is_named() {
        let text = asset("vqgan_imagenet_f16_1024.yaml").replace("      ch: 128\n", "");
        let err = VqConfig::from_yaml(&text).unwrap_err();
        assert!(err.to_string().contains("missing field `ch`"), "{err}");
    }

    #[test]
    fn group_norm_incompatible_width_is_rejected() {
        let text = asset("vqgan_imagenet_f16_1024.yaml").replace("ch: 128", "ch: 100");
        let err = VqConfig::from_yaml(&text).unwrap_err();
        assert!(err.to_string().contains("multiple of 32"), "{err}");
    }

    #[test]
    fn encode_rejects_sizes_off_the_factor() {
        let cfg = VqConfig {
            ch: 32,
            ch_mult: vec![1, 2],
            z_channels: 8,
            embed_dim: 8,
            n_embed: 16,
            ..VqConfig::imagenet_f16_1024()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = crate::torch_rng::exclusive(|| VqModel::new(&vs.root(), &cfg));
        let err = model
            .encode(&Tensor::zeros(
                [1, 3, 8, 9],
                (tch::Kind::Float, Device::Cpu),
            ))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "image size 8x9 is not a positive multiple of the model's downsampling factor 2"
        );
        let err = model
            .encode(&Tensor::zeros(
                [1, 4, 8, 8],
                (tch::Kind::Float, Device::Cpu),
            ))
            .unwrap_err();
        assert!(
            matches!(err, VqError::ImageShape { channels: 3, .. }),
            "{err}"
        );
    }
}
