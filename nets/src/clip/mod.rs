//! OpenAI CLIP in libtorch: the model VQGAN+CLIP steers images with. Both towers (ViT or
//! ModifiedResNet for images, the causal transformer for text), loaded straight from OpenAI's
//! checkpoints with the hyper-parameters read off the tensor shapes as `clip.model.build_model`
//! does, and the exact tokenizer.
//!
//! Checkpoints: OpenAI publishes TorchScript archives (`ViT-B-32.pt`, `RN50.pt`, ...; the URLs are
//! in the `_MODELS` table of `clip/clip.py` in github.com/openai/CLIP or any of its PyPI
//! repackagings such as `clip-anytorch`). [`Clip::load`] reads those as well as plain state dicts
//! (`.safetensors`, or a flat `torch.save`d dict, e.g. from `scripts/convert_checkpoint.py`).

pub mod resnet;
pub mod text;
mod text_fix;
pub mod tokenizer;
mod torchscript;
mod transformer;
pub mod vision;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::weights::{load_weights, WeightError};
use tch::nn::{self, Init};
use tch::{Device, Kind, TchError, Tensor};

pub use resnet::{ModifiedResNet, ModifiedResNetConfig};
pub use text::{TextTransformer, TextTransformerConfig};
pub use tokenizer::Tokenizer;
pub use vision::{VisionTransformer, VisionTransformerConfig};

/// CLIP's per-channel pixel mean (RGB), from `clip.clip._transform`.
const PIXEL_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// CLIP's per-channel pixel standard deviation (RGB).
const PIXEL_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Everything that can go wrong loading or using CLIP, each naming the culprit.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// The checkpoint file could not be read in any supported format.
    #[error("cannot read CLIP checkpoint {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// The weights do not fit the architecture inferred from them (see [`crate::weights`]).
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The tensors do not describe an OpenAI CLIP model.
    #[error("unrecognised CLIP architecture: {0}")]
    UnrecognisedArchitecture(String),
    /// A prompt has more tokens than the model's context, and truncation was not asked for.
    #[error(
        "prompt {prompt:?} is {tokens} tokens long with its start and end tokens, {excess} too many for the context length {context_length}",
        excess = tokens - context_length
    )]
    PromptTooLong {
        prompt: String,
        tokens: usize,
        context_length: usize,
    },
    /// The bundled BPE vocabulary is unusable (a build problem, not a user one).
    #[error("CLIP tokenizer vocabulary: {0}")]
    Vocabulary(String),
    /// libtorch refused an operation.
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

/// Which image tower a model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionConfig {
    /// `clip.model.VisionTransformer` (the ViT-* models).
    Transformer(VisionTransformerConfig),
    /// `clip.model.ModifiedResNet` (the RN* models).
    ResNet(ModifiedResNetConfig),
}

/// The full hyper-parameters of a CLIP model; [`ClipConfig::infer`] reads them off a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipConfig {
    /// The image tower.
    pub vision: VisionConfig,
    /// The text tower.
    pub text: TextTransformerConfig,
}

impl ClipConfig {
    /// OpenAI's ViT-B/32, the VQGAN+CLIP default.
    pub fn vit_b_32() -> Self {
        ClipConfig {
            vision: VisionConfig::Transformer(VisionTransformerConfig::vit_b_32()),
            text: TextTransformerConfig::base(),
        }
    }

    /// Side of the square images the image tower takes.
    pub fn input_resolution(&self) -> i64 {
        match self.vision {
            VisionConfig::Transformer(vit) => vit.input_resolution,
            VisionConfig::ResNet(resnet) => resnet.input_resolution,
        }
    }

    /// `clip.model.build_model`'s inference, with errors instead of asserts: the tower types from
    /// which keys exist, widths from leading dimensions, depths from counting blocks, resolutions
    /// from positional embeddings.
    pub fn infer(shapes: &HashMap<String, Vec<i64>>) -> Result<ClipConfig, ClipError> {
        let text_width = dim(shapes, "ln_final.weight", 0)?;
        let text = TextTransformerConfig {
            context_length: dim(shapes, "positional_embedding", 0)?,
            vocab_size: dim(shapes, "token_embedding.weight", 0)?,
            width: text_width,
            layers: count_blocks(shapes, "transformer.resblocks."),
            output_dim: dim(shapes, "text_projection", 1)?,
        };
        check_heads("text transformer", text_width)?;
        if text.layers == 0 {
            return Err(ClipError::UnrecognisedArchitecture(
                "no `transformer.resblocks.N` blocks in the text tower".into(),
            ));
        }
        let vision = if shapes.contains_key("visual.proj") {
            VisionConfig::Transformer(infer_vision_transformer(shapes, text.output_dim)?)
        } else if shapes.contains_key("visual.layer1.0.conv1.weight") {
            VisionConfig::ResNet(infer_resnet(shapes, text.output_dim)?)
        } else {
            return Err(ClipError::UnrecognisedArchitecture(
                "neither `visual.proj` (a VisionTransformer) nor `visual.layer1.0.conv1.weight` (a ModifiedResNet) is present".into(),
            ));
        };
        Ok(ClipConfig { vision, text })
    }
}

fn shape<'a>(shapes: &'a HashMap<String, Vec<i64>>, name: &str) -> Result<&'a [i64], ClipError> {
    shapes.get(name).map(Vec::as_slice).ok_or_else(|| {
        ClipError::UnrecognisedArchitecture(format!("no tensor `{name}` to infer it from"))
    })
}

/// Dimension `axis` of tensor `name` (negative counts from the end).
fn dim(shapes: &HashMap<String, Vec<i64>>, name: &str, axis: i64) -> Result<i64, ClipError> {
    let dims = shape(shapes, name)?;
    let index = if axis < 0 {
        dims.len() as i64 + axis
    } else {
        axis
    };
    usize::try_from(index)
        .ok()
        .and_then(|i| dims.get(i).copied())
        .ok_or_else(|| {
            ClipError::UnrecognisedArchitecture(format!(
                "tensor `{name}` has shape {dims:?}, too few dimensions"
            ))
        })
}

/// Distinct `N` among keys `prefix N.…`, `len(set(k.split(".")[2] ...))` in the reference.
fn count_blocks(shapes: &HashMap<String, Vec<i64>>, prefix: &str) -> i64 {
    let blocks: HashSet<&str> = shapes
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next())
        .collect();
    blocks.len() as i64
}

fn check_heads(tower: &str, width: i64) -> Result<(), ClipError> {
    if width <= 0 || width % 64 != 0 {
        return Err(ClipError::UnrecognisedArchitecture(format!(
            "{tower} width {width} is not a positive multiple of 64 (CLIP's attention heads are 64 wide)"
        )));
    }
    Ok(())
}

/// Side of a square grid whose cells plus one class/mean token make `rows` positions.
fn grid_side(shapes: &HashMap<String, Vec<i64>>, name: &str) -> Result<i64, ClipError> {
    let rows = dim(shapes, name, 0)?;
    let side = ((rows - 1).max(0) as f64).sqrt().round() as i64;
    if side == 0 || side * side + 1 != rows {
        return Err(ClipError::UnrecognisedArchitecture(format!(
            "`{name}` has {rows} rows, not a square grid plus one"
        )));
    }
    Ok(side)
}

fn infer_vision_transformer(
    shapes: &HashMap<String, Vec<i64>>,
    output_dim: i64,
) -> Result<VisionTransformerConfig, ClipError> {
    let width = dim(shapes, "visual.conv1.weight", 0)?;
    check_heads("vision transformer", width)?;
    let patch_size = dim(shapes, "visual.conv1.weight", -1)?;
    let layers = shapes
        .keys()
        .filter(|k| k.starts_with("visual.") && k.ends_with(".attn.in_proj_weight"))
        .count() as i64;
    if layers == 0 {
        return Err(ClipError::UnrecognisedArchitecture(
            "no `visual.transformer.resblocks.N` blocks".into(),
        ));
    }
    let input_resolution = patch_size * grid_side(shapes, "visual.positional_embedding")?;
    Ok(VisionTransformerConfig {
        input_resolution,
        patch_size,
        width,
        layers,
        output_dim,
    })
}

fn infer_resnet(
    shapes: &HashMap<String, Vec<i64>>,
    output_dim: i64,
) -> Result<ModifiedResNetConfig, ClipError> {
    let mut layers = [0; 4];
    for (stage, count) in layers.iter_mut().enumerate() {
        *count = count_blocks(shapes, &format!("visual.layer{}.", stage + 1));
        if *count == 0 {
            return Err(ClipError::UnrecognisedArchitecture(format!(
                "ModifiedResNet stage `visual.layer{}` has no blocks",
                stage + 1
            )));
        }
    }
    let width = dim(shapes, "visual.layer1.0.conv1.weight", 0)?;
    check_heads("ModifiedResNet attention pool", width * 32)?;
    let input_resolution = 32 * grid_side(shapes, "visual.attnpool.positional_embedding")?;
    Ok(ModifiedResNetConfig {
        input_resolution,
        layers,
        width,
        output_dim,
    })
}

/// The image tower in use.
#[derive(Debug)]
enum Visual {
    Transformer(VisionTransformer),
    ResNet(ModifiedResNet),
}

/// A CLIP model ready to embed prompts and (differentiably) images.
pub struct Clip {
    vs: nn::VarStore,
    config: ClipConfig,
    visual: Visual,
    text: TextTransformer,
    logit_scale: Tensor,
    tokenizer: Tokenizer,
    pixel_mean: Tensor,
    pixel_std: Tensor,
}

impl std::fmt::Debug for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clip")
            .field("config", &self.config)
            .field("kind", &self.vs.kind())
            .finish()
    }
}

impl Clip {
    /// Loads an OpenAI checkpoint: a TorchScript archive (`ViT-B-32.pt`, ...) or a plain state dict
    /// (`.safetensors`, flat `.pt`/`.pth`). Hyper-parameters are inferred from shapes; every
    /// tensor is checked by name and shape, then converted to `kind` on `device`.
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<Clip, ClipError> {
        let tensors = read_tensors(path)?;
        let shapes = tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.size()))
            .collect();
        let config = ClipConfig::infer(&shapes)?;
        let mut clip = Clip::build(&config, device)?;
        load_weights(&clip.vs, path, tensors, "")?;
        clip.finish(kind);
        Ok(clip)
    }

    /// A model of the given shape with random weights (normal with standard deviation 0.02 from
    /// torch's generator seeded with 0; normalisation scales one, biases zero), for benchmarks.
    pub fn random(config: &ClipConfig, device: Device, kind: Kind) -> Result<Clip, ClipError> {
        let mut clip = Clip::build(config, device)?;
        crate::torch_rng::exclusive(|| {
            tch::no_grad(|| {
                tch::manual_seed(0);
                for (name, mut var) in clip.vs.variables() {
                    let is_scale = var.dim() == 1 && name.ends_with(".weight");
                    let init = if is_scale || name.ends_with("running_var") {
                        Init::Const(1.0)
                    } else if name.ends_with("bias") || name.ends_with("running_mean") {
                        Init::Const(0.0)
                    } else {
                        Init::Randn {
                            mean: 0.0,
                            stdev: 0.02,
                        }
                    };
                    var.init(init);
                }
            })
        });
        clip.finish(kind);
        Ok(clip)
    }

    fn build(config: &ClipConfig, device: Device) -> Result<Clip, ClipError> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let visual = match &config.vision {
            VisionConfig::Transformer(vit) => {
                Visual::Transformer(VisionTransformer::new(&(&root / "visual"), vit))
            }
            VisionConfig::ResNet(resnet) => {
                Visual::ResNet(ModifiedResNet::new(&(&root / "visual"), resnet))
            }
        };
        let text = TextTransformer::new(&root, &config.text);
        let logit_scale = root.zeros("logit_scale", &[]);
        let channel = |values: [f64; 3]| {
            Tensor::from_slice(&values)
                .view([1, 3, 1, 1])
                .to_device(device)
        };
        Ok(Clip {
            config: *config,
            visual,
            text,
            logit_scale,
            tokenizer: Tokenizer::new()?,
            pixel_mean: channel(PIXEL_MEAN),
            pixel_std: channel(PIXEL_STD),
            vs,
        })
    }

    /// Freezes the weights (only pixel gradients are wanted) and converts them to `kind`.
    fn finish(&mut self, kind: Kind) {
        self.vs.freeze();
        self.vs.set_kind(kind);
    }

    /// The hyper-parameters in use.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Side of the square images [`Clip::encode_image`] takes (224 for ViT-B/32).
    pub fn input_resolution(&self) -> i64 {
        self.config.input_resolution()
    }

    /// Dimension of the joint embedding space.
    pub fn embed_dim(&self) -> i64 {
        self.config.text.output_dim
    }

    /// The tokenizer, for callers that want ids without encoding.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenizes (a prompt longer than the context is an error saying by how many tokens) and
    /// encodes; returns L2-normalised `[N, embed_dim]` features in the model's dtype.
    pub fn encode_text(&self, texts: &[&str]) -> Result<Tensor, ClipError> {
        let context = self.config.text.context_length as usize;
        let tokens = self
            .tokenizer
            .tokenize_to(texts, context, false)?
            .to_device(self.vs.device());
        Ok(l2_normalise(&self.text.forward(&tokens)))
    }

    /// `pixels`: `[N, 3, R, R]` RGB in `[0, 1]` at [`Clip::input_resolution`]. Applies CLIP's
    /// mean/std normalisation and returns L2-normalised `[N, embed_dim]` features, differentiable
    /// with respect to `pixels` (the weights themselves are frozen).
    pub fn encode_image(&self, pixels: &Tensor) -> Tensor {
        let normalised = ((pixels.to_device(self.vs.device()) - &self.pixel_mean)
            / &self.pixel_std)
            .to_kind(self.vs.kind());
        let features = match &self.visual {
            Visual::Transformer(vit) => vit.forward(&normalised),
            Visual::ResNet(resnet) => resnet.forward(&normalised),
        };
        l2_normalise(&features)
    }

    /// Image-prompt preprocessing as `clip.clip._transform`: bicubic (antialiased) resize of the
    /// shortest side to the input resolution, centre crop; `[3, H, W]` in `[0, 1]` to
    /// `[1, 3, R, R]` in `[0, 1]` (normalisation happens in [`Clip::encode_image`]).
    pub fn preprocess(&self, image: &Tensor) -> Tensor {
        preprocess(image, self.input_resolution())
    }

    /// Precision of the weights, so callers can hand `encode_image` pixels of the same kind.
    pub fn kind(&self) -> Kind {
        self.vs.kind()
    }

    /// The learned temperature `exp(logit_scale)` that scales cosine similarities into logits.
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale
            .to_kind(Kind::Double)
            .exp()
            .double_value(&[])
    }
}

/// `x / ||x||` along the last dimension.
fn l2_normalise(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true)
}

/// See [`Clip::preprocess`]; sizes and crop offsets follow torchvision's `Resize` and `CenterCrop`.
pub fn preprocess(image: &Tensor, resolution: i64) -> Tensor {
    let (_, height, width) = image.size3().expect("an image is [3, H, W]");
    let (short, long) = (height.min(width), height.max(width));
    let scaled_long = resolution * long / short;
    let (new_h, new_w) = if height <= width {
        (resolution, scaled_long)
    } else {
        (scaled_long, resolution)
    };
    let resized = image
        .to_kind(Kind::Float)
        .unsqueeze(0)
        .internal_upsample_bicubic2d_aa([new_h, new_w], false, None, None)
        .clamp(0.0, 1.0);
    let top = round_half_even((new_h - resolution) as f64 / 2.0);
    let left = round_half_even((new_w - resolution) as f64 / 2.0);
    resized
        .narrow(2, top, resolution)
        .narrow(3, left, resolution)
}

/// Python's `round` (ties to even), which torchvision's `center_crop` uses for its offsets.
fn round_half_even(x: f64) -> i64 {
    let rounded = x.round();
    if (x - x.trunc()).abs() == 0.5 && rounded % 2.0 != 0.0 {
        (rounded - x.signum()) as i64
    } else {
        rounded as i64
    }
}

/// A `.pt`/`.pth`: a TorchScript archive or `torch.save`d dict read directly (parameters and
/// buffers), else through libtorch's TorchScript loader (parameters only), else libtorch's loader
/// for a flat dict of tensors.
fn read_torch_file(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    let archive_error = match torchscript::read_module_tensors(path) {
        Ok(tensors) => return Ok(tensors),
        Err(e) => e,
    };
    let module = tch::CModule::load_on_device(path, Device::Cpu)
        .and_then(|module| module.named_parameters());
    let jit_error = match module {
        Ok(parameters) => return Ok(parameters),
        Err(e) => e,
    };
    Tensor::loadz_multi(path).map_err(|dict_error| {
        format!(
            "neither a TorchScript archive ({archive_error}; libtorch: {jit_error}) nor a flat state dict ({dict_error})"
        )
    })
}

/// Reads a checkpoint into name → tensor (on the CPU, dtype as stored).
fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>, ClipError> {
    let read_error = |message: String| ClipError::Read {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(read_error("no such file".into()));
    }
    let is_safetensors = path.extension().is_some_and(|ext| ext == "safetensors");
    let tensors = if is_safetensors {
        Tensor::read_safetensors(path).map_err(|e| read_error(e.to_string()))?
    } else {
        read_torch_file(path).map_err(read_error)?
    };
    Ok(tensors.into_iter().collect())
}
