//! Super-resolution networks of the ESRGAN family, loaded from whatever file a user has.
//!
//! Why: the farm's last stage upscales every picture 4x. The weights exist in several layouts
//! (BasicSR/Real-ESRGAN state dicts, the original ESRGAN release, its older `model.N` layout, and
//! ncnn's `.param`/`.bin`), so loading infers the architecture and its hyper-parameters from the
//! tensors themselves and renames them to BasicSR's keys, which are our variable paths.

pub mod rrdbnet;
pub mod srvgg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{nn, Device, Tensor};

use crate::ncnn::{NcnnError, NcnnModel};
use crate::torch_rng;
use crate::weights::{load_weights, WeightError};
use rrdbnet::{RrdbConfig, RrdbLayout, RrdbNet};
use srvgg::{SrvggConfig, SrvggNet};

/// Tensors by name, sorted so that error messages are deterministic.
pub type TensorTable = BTreeMap<String, Tensor>;

/// Why a super-resolution model could not be loaded; each names the file and the culprit.
#[derive(Debug, thiserror::Error)]
pub enum SrError {
    /// The file cannot be opened.
    #[error("cannot read {}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// libtorch could not parse the file.
    #[error("cannot load tensors from {}: {message}", file.display())]
    Unreadable { file: PathBuf, message: String },
    /// A `.pth` tch cannot read but PyTorch can: official checkpoints nest their tensors
    /// (`params_ema`, `params`) and files from before PyTorch 1.6 use the legacy format.
    #[error(
        "{} is {reason}, which the worker cannot read; convert it once with: \
         .deps/venv/bin/python scripts/convert_checkpoint.py {} OUT.safetensors",
        file.display(), file.display()
    )]
    NeedsConversion { file: PathBuf, reason: &'static str },
    /// The file extension is none of the supported formats.
    #[error(
        "{}: unsupported model file type; expected .param/.bin (ncnn), .safetensors, .pth or .pt",
        file.display()
    )]
    UnsupportedFormat { file: PathBuf },
    /// The tensor names match no known network layout.
    #[error(
        "{}: unknown layout: tensor names match neither RRDBNet (BasicSR, original ESRGAN, old \
         architecture) nor SRVGGNetCompact; first names: {}",
        file.display(), first_names.join(", ")
    )]
    UnknownLayout {
        file: PathBuf,
        first_names: Vec<String>,
    },
    /// The weights do not fit the network inferred from them (see [`crate::weights`]).
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The tensors describe a variant of the network that is not supported.
    #[error("{}: unsupported network: {problem}", file.display())]
    Unsupported { file: PathBuf, problem: String },
    /// The ncnn files cannot be read.
    #[error(transparent)]
    Ncnn(#[from] NcnnError),
    /// The ncnn graph is not one of the networks we implement.
    #[error("{}: layer {layer}: {problem}", file.display())]
    NcnnGraph {
        file: PathBuf,
        layer: String,
        problem: String,
    },
}

/// The network inside an [`SrModel`].
enum Network {
    Rrdb(Box<RrdbNet>),
    Srvgg(SrvggNet),
}

/// A loaded super-resolution network, ready to run.
pub struct SrModel {
    /// Owns the parameters the network's modules refer to.
    vars: nn::VarStore,
    network: Network,
}

impl SrModel {
    /// Loads weights from a file: `.param`/`.bin` pair (give either path; ncnn), `.safetensors`, or
    /// a flat `.pth`/`.pt` (`torch.save` of a tensor dict). Architecture and hyper-parameters are
    /// inferred from the tensors' names and shapes, so any of the supported layouts just loads.
    pub fn load(path: &Path, device: Device) -> Result<SrModel, SrError> {
        let table = read_tensor_table(path)?;
        let mut vars = nn::VarStore::new(device);
        let network = match detect_layout(&table) {
            Some(Layout::Rrdb(layout)) => {
                let table = rrdbnet::to_basicsr_names(path, layout, table)?;
                let config = RrdbConfig::from_tensors(path, &table)?;
                let network = torch_rng::exclusive(|| RrdbNet::new(&vars.root(), &config));
                load_weights(&vars, path, table, "")?;
                Network::Rrdb(Box::new(network))
            }
            Some(Layout::Srvgg) => {
                let config = SrvggConfig::from_tensors(path, &table)?;
                let network = torch_rng::exclusive(|| SrvggNet::new(&vars.root(), &config));
                load_weights(&vars, path, table, "")?;
                Network::Srvgg(network)
            }
            None => {
                return Err(SrError::UnknownLayout {
                    file: path.to_path_buf(),
                    first_names: table.keys().take(5).cloned().collect(),
                })
            }
        };
        vars.freeze();
        Ok(SrModel { vars, network })
    }

    /// The network's own upscaling factor (1, 2, 3 or 4).
    pub fn scale(&self) -> i64 {
        match &self.network {
            Network::Rrdb(net) => net.config().scale,
            Network::Srvgg(net) => net.config().upscale,
        }
    }

    /// Input height and width must be multiples of this (x2/x1 RRDBNets pixel-unshuffle first).
    pub fn input_multiple(&self) -> i64 {
        match &self.network {
            Network::Rrdb(net) => net.config().unshuffle_factor(),
            Network::Srvgg(_) => 1,
        }
    }

    /// Number of scalar parameters (checked against the published counts).
    pub fn parameter_count(&self) -> i64 {
        self.vars
            .variables()
            .values()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// Human-readable architecture summary, e.g. "RRDBNet 23 blocks, 64 feat, 32 grow, x4".
    pub fn description(&self) -> String {
        match &self.network {
            Network::Rrdb(net) => net.config().to_string(),
            Network::Srvgg(net) => net.config().to_string(),
        }
    }

    /// Upscales `x`: N x 3 x H x W RGB in [0, 1] (moved to the model's device if elsewhere).
    /// Returns N x 3 x sH x sW on the model's device, not clamped. Runs without autograd.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_unless(x, &|| false)
            .expect("a pass that is never stopped ends")
    }

    /// [`SrModel::forward`], asking `stop` between the network's blocks: `None` once it says
    /// to stop (a farm tile whose lease is gone), instead of finishing work nobody wants.
    pub fn forward_unless(&self, x: &Tensor, stop: &dyn Fn() -> bool) -> Option<Tensor> {
        let x = x.to_device(self.vars.device());
        tch::no_grad(|| match &self.network {
            Network::Rrdb(net) => net.forward_unless(&x, stop),
            Network::Srvgg(net) => net.forward_unless(&x, stop),
        })
    }
}

/// Which family of key names a tensor table uses.
enum Layout {
    Rrdb(RrdbLayout),
    Srvgg,
}

/// Recognises the layout from characteristic names; `None` when nothing matches.
fn detect_layout(table: &TensorTable) -> Option<Layout> {
    let has_prefix = |prefix: &str| table.keys().any(|k| k.starts_with(prefix));
    if has_prefix("RRDB_trunk.") {
        Some(Layout::Rrdb(RrdbLayout::Original))
    } else if has_prefix("model.1.sub.") {
        Some(Layout::Rrdb(RrdbLayout::OldArch))
    } else if table
        .keys()
        .any(|k| k.starts_with("body.") && k.contains(".rdb"))
    {
        Some(Layout::Rrdb(RrdbLayout::BasicSr))
    } else if table.contains_key("body.0.weight") {
        Some(Layout::Srvgg)
    } else {
        None
    }
}

/// Reads the file's tensors by name; ncnn graphs come back under BasicSR / Real-ESRGAN names.
fn read_tensor_table(path: &Path) -> Result<TensorTable, SrError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let loaded = match extension.as_deref() {
        Some("param") | Some("bin") => return ncnn_tensor_table(&NcnnModel::load(path)?),
        Some("safetensors") => must_exist(path).map(|()| Tensor::read_safetensors(path))?,
        Some("pth") | Some("pt") => must_exist(path).map(|()| Tensor::loadz_multi(path))?,
        _ => {
            return Err(SrError::UnsupportedFormat {
                file: path.to_path_buf(),
            })
        }
    };
    loaded
        .map(|tensors| tensors.into_iter().collect())
        .map_err(|error| unreadable(path, &error.to_string()))
}

/// The error for a file libtorch refused, naming the conversion when PyTorch could read it.
fn unreadable(path: &Path, message: &str) -> SrError {
    let reason = if message.contains("Expected Tensor but got GenericDict") {
        Some("a nested checkpoint (tensors under params_ema/params)")
    } else if starts_with(path, LEGACY_TORCH_MAGIC) {
        Some("in PyTorch's legacy (before 1.6) torch.save format")
    } else {
        None
    };
    match reason {
        Some(reason) => SrError::NeedsConversion {
            file: path.to_path_buf(),
            reason,
        },
        None => SrError::Unreadable {
            file: path.to_path_buf(),
            message: message.lines().next().unwrap_or_default().to_string(),
        },
    }
}

/// First bytes of a legacy `torch.save` file: pickle protocol 2, then the long `0x1950a86a20f9469cfc6c`.
const LEGACY_TORCH_MAGIC: &[u8] = &[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20];

/// Whether the file begins with `magic` (false when it cannot be read).
fn starts_with(path: &Path, magic: &[u8]) -> bool {
    let mut head = vec![0; magic.len()];
    std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut head))
        .is_ok_and(|()| head == magic)
}

/// Checks the file is there: libtorch's own message for a missing file is a C++ backtrace.
fn must_exist(path: &Path) -> Result<(), SrError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| SrError::Io {
            file: path.to_path_buf(),
            source,
        })
}

/// Names every weight of an ncnn graph after its BasicSR module, using the graph's structure.
fn ncnn_tensor_table(model: &NcnnModel) -> Result<TensorTable, SrError> {
    let has = |kind: &str| model.layers.iter().any(|l| l.kind == kind);
    let modules = if has("PReLU") || has("PixelShuffle") {
        srvgg::ncnn_module_names(model)?
    } else if has("Concat") && has("Eltwise") {
        rrdbnet::ncnn_module_names(model)?
    } else {
        return Err(graph_error(
            model,
            model.layers.len().saturating_sub(1),
            "graph is neither an RRDBNet (Concat/Eltwise) nor an SRVGGNetCompact (PReLU/PixelShuffle)",
        ));
    };
    let mut table = TensorTable::new();
    for (index, module) in modules {
        let layer = &model.layers[index];
        match layer.kind.as_str() {
            "Convolution" => {
                let out = layer.weights[0].numel() as i64 / 9;
                let out_channels =
                    i64::from(layer.int(0, 0).map_err(|p| graph_error(model, index, p))?);
                if out % out_channels != 0 {
                    return Err(graph_error(
                        model,
                        index,
                        "kernel size is not out x in x 3 x 3",
                    ));
                }
                let kernel = layer.weights[0].reshape([out_channels, out / out_channels, 3, 3]);
                table.insert(format!("{module}.weight"), kernel);
                if let Some(bias) = layer.weights.get(1) {
                    table.insert(format!("{module}.bias"), bias.shallow_clone());
                }
            }
            _ => {
                table.insert(format!("{module}.weight"), layer.weights[0].shallow_clone());
            }
        }
    }
    Ok(table)
}

/// Activation fused into an ncnn Convolution (`9=` type, `-23310=` parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
enum FusedActivation {
    None,
    LeakyRelu02,
}

/// Checks that layer `index` is a 3x3, stride-1, padding-1 convolution with the given fused activation.
fn expect_conv3x3(
    model: &NcnnModel,
    index: usize,
    activation: FusedActivation,
) -> Result<(), SrError> {
    let layer = &model.layers[index];
    let problem = |p: String| graph_error(model, index, p);
    if layer.kind != "Convolution" {
        return Err(problem(format!(
            "expected a Convolution, found {}",
            layer.kind
        )));
    }
    let kernel = layer.int(1, 0).map_err(problem)?;
    let pad = layer.int(4, 0).map_err(problem)?;
    let geometry = [
        ("kernel_h (11=)", layer.int(11, kernel), 3),
        ("kernel_w (1=)", Ok(kernel), 3),
        ("dilation (2=)", layer.int(2, 1), 1),
        ("dilation_h (12=)", layer.int(12, 1), 1),
        ("stride (3=)", layer.int(3, 1), 1),
        ("stride_h (13=)", layer.int(13, 1), 1),
        ("pad (4=)", Ok(pad), 1),
        ("pad_top (14=)", layer.int(14, pad), 1),
        ("pad_right (15=)", layer.int(15, pad), 1),
        ("pad_bottom (16=)", layer.int(16, pad), 1),
    ];
    for (what, value, wanted) in geometry {
        let value = value.map_err(problem)?;
        if value != wanted {
            return Err(problem(format!(
                "{what} is {value}, the network needs {wanted}"
            )));
        }
    }
    let fused = match (
        layer.int(9, 0).map_err(problem)?,
        layer.array(10).map_err(problem)?,
    ) {
        (0, _) => FusedActivation::None,
        (2, [slope]) if (slope - 0.2).abs() < 1e-6 => FusedActivation::LeakyRelu02,
        (kind, params) => {
            return Err(problem(format!(
                "unsupported fused activation {kind} with parameters {params:?}"
            )))
        }
    };
    if fused != activation {
        return Err(problem(format!(
            "expected activation {activation:?}, found {fused:?}"
        )));
    }
    Ok(())
}

/// Checks that layer `index` has the given type.
fn expect_kind(model: &NcnnModel, index: usize, kind: &str) -> Result<(), SrError> {
    let found = &model.layers[index].kind;
    if found == kind {
        Ok(())
    } else {
        Err(graph_error(
            model,
            index,
            format!("expected a {kind} layer, found {found}"),
        ))
    }
}

/// The layer feeding input `slot` of layer `index`, or an error naming the dangling blob.
fn input_of(model: &NcnnModel, index: usize, slot: usize) -> Result<usize, SrError> {
    model
        .input_producer(index, slot)
        .ok_or_else(|| graph_error(model, index, format!("input {slot} has no producing layer")))
}

/// Checks that layer `index` adds its two inputs plainly; returns their producers.
fn expect_plain_add(model: &NcnnModel, index: usize) -> Result<[usize; 2], SrError> {
    let layer = &model.layers[index];
    let problem = |p: String| graph_error(model, index, p);
    let plain = match layer.kind.as_str() {
        "BinaryOp" => {
            layer.int(0, 0).map_err(problem)? == 0 && layer.int(1, 0).map_err(problem)? == 0
        }
        "Eltwise" => {
            let coefficients = layer.array(1).map_err(problem)?;
            layer.int(0, 1).map_err(problem)? == 1 && coefficients.iter().all(|&c| c == 1.0)
        }
        _ => false,
    };
    if !plain || layer.inputs.len() != 2 {
        return Err(problem(format!(
            "expected a plain two-input addition, found {}",
            layer.kind
        )));
    }
    Ok([input_of(model, index, 0)?, input_of(model, index, 1)?])
}

/// Checks that layer `index` is a nearest-neighbour Interp by `factor` in both directions.
fn expect_nearest_upsample(model: &NcnnModel, index: usize, factor: f32) -> Result<(), SrError> {
    expect_kind(model, index, "Interp")?;
    let layer = &model.layers[index];
    let problem = |p: String| graph_error(model, index, p);
    let resize = layer.int(0, 0).map_err(problem)?;
    let scales = [
        layer.float(1, 1.0).map_err(problem)?,
        layer.float(2, 1.0).map_err(problem)?,
    ];
    if resize != 1 || scales != [factor, factor] {
        return Err(problem(format!(
            "expected nearest (0=1) upsampling by {factor}, found mode {resize} and scales {scales:?}"
        )));
    }
    Ok(())
}

/// The layer computing the graph's single output.
fn graph_output(model: &NcnnModel) -> Result<usize, SrError> {
    model.output_layer().map_err(|problem| SrError::NcnnGraph {
        file: model.param_path.clone(),
        layer: "(output)".to_string(),
        problem,
    })
}

/// An [`SrError::NcnnGraph`] naming layer `index`.
fn graph_error(model: &NcnnModel, index: usize, problem: impl Into<String>) -> SrError {
    SrError::NcnnGraph {
        file: model.param_path.clone(),
        layer: model.layers.get(index).map_or_else(
            || "(none)".to_string(),
            |l| format!("{} ({})", l.name, l.kind),
        ),
        problem: problem.into(),
    }
}

/// Shape of a tensor the configuration is inferred from, checking its rank.
fn inferred_shape(
    file: &Path,
    table: &TensorTable,
    name: &str,
    rank: usize,
) -> Result<Vec<i64>, SrError> {
    let tensor = table.get(name).ok_or_else(|| WeightError::Missing {
        file: file.to_path_buf(),
        tensor: name.to_string(),
    })?;
    let shape = tensor.size();
    if shape.len() != rank {
        return Err(SrError::Unsupported {
            file: file.to_path_buf(),
            problem: format!("tensor {name} has shape {shape:?}, expected {rank} dimensions"),
        });
    }
    Ok(shape)
}

/// Largest `N` among names `prefix.N.*`, plus one (the length of a numbered module list).
fn numbered_len(table: &TensorTable, prefix: &str) -> i64 {
    table
        .keys()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .max()
        .map_or(0, |n| n + 1)
}

/// LeakyReLU with slope 0.2 in one kernel: libtorch's leaky-ReLU backward with the input as its own
/// gradient computes `x > 0 ? x : 0.2 x` (tch exposes the forward only with the default slope).
fn leaky_relu_02(x: &Tensor) -> Tensor {
    x.leaky_relu_backward(x, 0.2, false)
}

/// Nearest-neighbour upsampling by an integer factor, as `F.interpolate(mode='nearest')`.
fn upsample_nearest(x: &Tensor, factor: i64) -> Tensor {
    let (height, width) = (x.size()[2], x.size()[3]);
    let f = factor as f64;
    x.upsample_nearest2d([height * factor, width * factor], f, f)
}
