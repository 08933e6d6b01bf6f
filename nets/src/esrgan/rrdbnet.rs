//! RRDBNet, the ESRGAN generator, exactly as BasicSR's `basicsr/archs/rrdbnet_arch.py`.
//!
//! Why: RealESRGAN_x4plus, RealESRNet_x4plus, RealESRGAN_x4plus_anime_6B, RealESRGAN_x2plus and the
//! original ESRGAN are all this network with different hyper-parameters. Variable paths are BasicSR's
//! state-dict keys; the original ESRGAN release and the old `model.N` layout are renamed to them by
//! one table ([`MODULE_NAMES`]) at load time.

use std::fmt;
use std::path::Path;

use tch::nn::{self, Module};
use tch::Tensor;

use super::{
    expect_conv3x3, expect_kind, expect_nearest_upsample, expect_plain_add, graph_error,
    graph_output, inferred_shape, input_of, leaky_relu_02, numbered_len, upsample_nearest,
    FusedActivation, SrError, TensorTable,
};
use crate::ncnn::NcnnModel;
use crate::weights::WeightError;

/// Hyper-parameters of an RRDBNet (BasicSR's constructor arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct RrdbConfig {
    /// Input channels before pixel-unshuffle (3, RGB).
    pub num_in_ch: i64,
    /// Output channels (3, RGB).
    pub num_out_ch: i64,
    /// Upscaling factor: 4, or 2 / 1 with a pixel-unshuffle by 2 / 4 first.
    pub scale: i64,
    /// Trunk feature channels.
    pub num_feat: i64,
    /// Number of RRDB blocks in the trunk.
    pub num_block: i64,
    /// Channels each dense-block convolution adds.
    pub num_grow_ch: i64,
}

impl RrdbConfig {
    /// RealESRGAN_x4plus and RealESRNet_x4plus (and the original ESRGAN x4): 23 blocks, 64 features.
    pub fn realesrgan_x4plus() -> RrdbConfig {
        RrdbConfig {
            num_in_ch: 3,
            num_out_ch: 3,
            scale: 4,
            num_feat: 64,
            num_block: 23,
            num_grow_ch: 32,
        }
    }

    /// RealESRGAN_x4plus_anime_6B: the x4plus network with 6 blocks.
    pub fn realesrgan_x4plus_anime_6b() -> RrdbConfig {
        RrdbConfig {
            num_block: 6,
            ..RrdbConfig::realesrgan_x4plus()
        }
    }

    /// RealESRGAN_x2plus: 23 blocks behind a pixel-unshuffle by 2.
    pub fn realesrgan_x2plus() -> RrdbConfig {
        RrdbConfig {
            scale: 2,
            ..RrdbConfig::realesrgan_x4plus()
        }
    }

    /// The pixel-unshuffle factor in front of `conv_first` (1 for x4).
    pub fn unshuffle_factor(&self) -> i64 {
        4 / self.scale
    }

    /// Infers the configuration from BasicSR-named tensors (`conv_first`, `body.N.rdb1.conv1`, ...).
    pub fn from_tensors(file: &Path, table: &TensorTable) -> Result<RrdbConfig, SrError> {
        let first = inferred_shape(file, table, "conv_first.weight", 4)?;
        let grow = inferred_shape(file, table, "body.0.rdb1.conv1.weight", 4)?;
        let last = inferred_shape(file, table, "conv_last.weight", 4)?;
        let num_in_ch = 3;
        let scale = match first[1] {
            3 => 4,
            12 => 2,
            48 => 1,
            channels => {
                return Err(SrError::Unsupported {
                    file: file.to_path_buf(),
                    problem: format!(
                        "conv_first.weight takes {channels} channels; RGB RRDBNets take 3 (x4), \
                         12 (x2) or 48 (x1)"
                    ),
                })
            }
        };
        if last[0] != 3 {
            return Err(SrError::Unsupported {
                file: file.to_path_buf(),
                problem: format!(
                    "conv_last.weight gives {} channels, expected 3 (RGB)",
                    last[0]
                ),
            });
        }
        Ok(RrdbConfig {
            num_in_ch,
            num_out_ch: last[0],
            scale,
            num_feat: first[0],
            num_block: numbered_len(table, "body."),
            num_grow_ch: grow[0],
        })
    }
}

impl fmt::Display for RrdbConfig {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "RRDBNet {} blocks, {} feat, {} grow, x{}",
            self.num_block, self.num_feat, self.num_grow_ch, self.scale
        )
    }
}

/// A 3x3, stride-1, padding-1 convolution with bias, as `nn.Conv2d(in, out, 3, 1, 1)`.
fn conv3x3(path: nn::Path, in_channels: i64, out_channels: i64) -> nn::Conv2D {
    let config = nn::ConvConfig {
        padding: 1,
        ..Default::default()
    };
    nn::conv2d(path, in_channels, out_channels, 3, config)
}

/// Five densely connected convolutions with a 0.2-scaled residual (`ResidualDenseBlock`).
#[derive(Debug)]
struct ResidualDenseBlock {
    convs: Vec<nn::Conv2D>,
}

impl ResidualDenseBlock {
    fn new(path: nn::Path, num_feat: i64, num_grow_ch: i64) -> ResidualDenseBlock {
        let convs = (0..5)
            .map(|i| {
                let out = if i == 4 { num_feat } else { num_grow_ch };
                conv3x3(
                    &path / format!("conv{}", i + 1),
                    num_feat + i * num_grow_ch,
                    out,
                )
            })
            .collect();
        ResidualDenseBlock { convs }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut dense = x.shallow_clone();
        for conv in &self.convs[..4] {
            let grown = leaky_relu_02(&conv.forward(&dense));
            dense = Tensor::cat(&[dense, grown], 1);
        }
        self.convs[4].forward(&dense) * 0.2 + x
    }
}

/// Three dense blocks with a 0.2-scaled residual around them (`RRDB`).
#[derive(Debug)]
struct Rrdb {
    rdbs: Vec<ResidualDenseBlock>,
}

impl Rrdb {
    fn new(path: nn::Path, num_feat: i64, num_grow_ch: i64) -> Rrdb {
        let rdbs = (1..=3)
            .map(|k| ResidualDenseBlock::new(&path / format!("rdb{k}"), num_feat, num_grow_ch))
            .collect();
        Rrdb { rdbs }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let out = self
            .rdbs
            .iter()
            .fold(x.shallow_clone(), |h, rdb| rdb.forward(&h));
        out * 0.2 + x
    }
}

/// The RRDBNet generator.
#[derive(Debug)]
pub struct RrdbNet {
    config: RrdbConfig,
    conv_first: nn::Conv2D,
    body: Vec<Rrdb>,
    conv_body: nn::Conv2D,
    conv_up1: nn::Conv2D,
    conv_up2: nn::Conv2D,
    conv_hr: nn::Conv2D,
    conv_last: nn::Conv2D,
}

impl RrdbNet {
    /// Creates the network's variables under `path` with BasicSR's names.
    pub fn new(path: &nn::Path, config: &RrdbConfig) -> RrdbNet {
        let feat = config.num_feat;
        let in_channels = config.num_in_ch * config.unshuffle_factor().pow(2);
        let body_path = path / "body";
        RrdbNet {
            config: config.clone(),
            conv_first: conv3x3(path / "conv_first", in_channels, feat),
            body: (0..config.num_block)
                .map(|n| Rrdb::new(&body_path / n, feat, config.num_grow_ch))
                .collect(),
            conv_body: conv3x3(path / "conv_body", feat, feat),
            conv_up1: conv3x3(path / "conv_up1", feat, feat),
            conv_up2: conv3x3(path / "conv_up2", feat, feat),
            conv_hr: conv3x3(path / "conv_hr", feat, feat),
            conv_last: conv3x3(path / "conv_last", feat, config.num_out_ch),
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &RrdbConfig {
        &self.config
    }

    /// N x C x H x W to N x C x sH x sW (H and W multiples of the unshuffle factor).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_unless(x, &|| false)
            .expect("a pass that is never stopped ends")
    }

    /// [`RrdbNet::forward`], asking `stop` before each RRDB block (23 in x4plus): `None` once it
    /// says to stop, so work nobody wants any more frees the device within a block.
    pub fn forward_unless(&self, x: &Tensor, stop: &dyn Fn() -> bool) -> Option<Tensor> {
        let unshuffle = self.config.unshuffle_factor();
        let input = if unshuffle == 1 {
            x.shallow_clone()
        } else {
            x.pixel_unshuffle(unshuffle)
        };
        let feat = self.conv_first.forward(&input);
        let mut trunk = feat.shallow_clone();
        for block in &self.body {
            if stop() {
                return None;
            }
            trunk = block.forward(&trunk);
        }
        let feat = feat + self.conv_body.forward(&trunk);
        let feat = leaky_relu_02(&self.conv_up1.forward(&upsample_nearest(&feat, 2)));
        let feat = leaky_relu_02(&self.conv_up2.forward(&upsample_nearest(&feat, 2)));
        Some(
            self.conv_last
                .forward(&leaky_relu_02(&self.conv_hr.forward(&feat))),
        )
    }
}

/// The key layouts RRDBNet checkpoints come in (columns of [`MODULE_NAMES`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RrdbLayout {
    /// BasicSR / Real-ESRGAN (`conv_first`, `body.N.rdbK.convJ`, ...): our variable paths.
    BasicSr = 0,
    /// The original ESRGAN release, e.g. `RRDB_ESRGAN_x4.pth` (`RRDB_trunk.N.RDBk.convj`, ...).
    Original = 1,
    /// The old ESRGAN architecture (`model.0`, `model.1.sub.N.RDBk.convj.0`, ...).
    OldArch = 2,
}

/// Each module's name in the three layouts. `{n}` (block), `{k}` (dense block) and `{j}` (conv)
/// carry over; in the old layout `model.1.sub.{n}` without children is the trunk's closing conv.
pub const MODULE_NAMES: [[&str; 3]; 7] = [
    ["conv_first", "conv_first", "model.0"],
    [
        "body.{n}.rdb{k}.conv{j}",
        "RRDB_trunk.{n}.RDB{k}.conv{j}",
        "model.1.sub.{n}.RDB{k}.conv{j}.0",
    ],
    ["conv_body", "trunk_conv", "model.1.sub.{n}"],
    ["conv_up1", "upconv1", "model.3"],
    ["conv_up2", "upconv2", "model.6"],
    ["conv_hr", "HRconv", "model.8"],
    ["conv_last", "conv_last", "model.10"],
];

/// Translates one tensor name (`module.weight` / `module.bias`) between layouts, `None` if unknown.
pub fn rename(key: &str, from: RrdbLayout, to: RrdbLayout) -> Option<String> {
    let (module, parameter) = key.rsplit_once('.')?;
    if parameter != "weight" && parameter != "bias" {
        return None;
    }
    MODULE_NAMES.iter().find_map(|names| {
        let captures = match_template(names[from as usize], module)?;
        let renamed = fill_template(names[to as usize], &captures)?;
        Some(format!("{renamed}.{parameter}"))
    })
}

/// Matches `name` against a template; returns the `{x}` placeholders' digit strings.
fn match_template<'a>(template: &str, name: &'a str) -> Option<Vec<(char, &'a str)>> {
    let template_parts: Vec<&str> = template.split('.').collect();
    let name_parts: Vec<&str> = name.split('.').collect();
    if template_parts.len() != name_parts.len() {
        return None;
    }
    let mut captures = Vec::new();
    for (pattern, part) in template_parts.iter().zip(&name_parts) {
        match pattern.split_once('{') {
            None if pattern == part => {}
            Some((literal, placeholder)) => {
                let digits = part.strip_prefix(literal)?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                captures.push((placeholder.chars().next()?, digits));
            }
            None => return None,
        }
    }
    Some(captures)
}

/// Writes a template with its placeholders filled; `None` if one was not captured.
fn fill_template(template: &str, captures: &[(char, &str)]) -> Option<String> {
    let parts = template
        .split('.')
        .map(|pattern| match pattern.split_once('{') {
            None => Some(pattern.to_string()),
            Some((literal, placeholder)) => {
                let name = placeholder.chars().next()?;
                let (_, value) = captures.iter().find(|(c, _)| *c == name)?;
                Some(format!("{literal}{value}"))
            }
        });
    parts.collect::<Option<Vec<_>>>().map(|p| p.join("."))
}

/// Renames a checkpoint's tensors to BasicSR names; a name outside the layout is an error.
pub(super) fn to_basicsr_names(
    file: &Path,
    layout: RrdbLayout,
    table: TensorTable,
) -> Result<TensorTable, SrError> {
    if layout == RrdbLayout::BasicSr {
        return Ok(table);
    }
    table
        .into_iter()
        .map(
            |(key, tensor)| match rename(&key, layout, RrdbLayout::BasicSr) {
                Some(name) => Ok((name, tensor)),
                None => Err(WeightError::Unexpected {
                    file: file.to_path_buf(),
                    tensor: key,
                }
                .into()),
            },
        )
        .collect()
}

/// Names the convolutions of an ncnn RRDBNet graph by walking it back from its output, checking
/// every connection, activation and residual scale against BasicSR's network on the way.
pub(super) fn ncnn_module_names(model: &NcnnModel) -> Result<Vec<(usize, String)>, SrError> {
    let problem = |index: usize, text: String| graph_error(model, index, text);
    let conv_last = graph_output(model)?;
    expect_conv3x3(model, conv_last, FusedActivation::None)?;
    let conv_hr = input_of(model, conv_last, 0)?;
    expect_conv3x3(model, conv_hr, FusedActivation::LeakyRelu02)?;
    let conv_up2 = input_of(model, conv_hr, 0)?;
    expect_conv3x3(model, conv_up2, FusedActivation::LeakyRelu02)?;
    let upsample2 = input_of(model, conv_up2, 0)?;
    expect_nearest_upsample(model, upsample2, 2.0)?;
    let conv_up1 = input_of(model, upsample2, 0)?;
    expect_conv3x3(model, conv_up1, FusedActivation::LeakyRelu02)?;
    let upsample1 = input_of(model, conv_up1, 0)?;
    expect_nearest_upsample(model, upsample1, 2.0)?;
    let sum = input_of(model, upsample1, 0)?;
    let [a, b] = expect_plain_add(model, sum)?;
    let is_first = |i: usize| {
        model
            .input_producer(i, 0)
            .is_some_and(|p| model.layers[p].kind == "Input")
    };
    let (conv_first, conv_body) = if is_first(a) { (a, b) } else { (b, a) };
    expect_conv3x3(model, conv_first, FusedActivation::None)?;
    expect_kind(model, input_of(model, conv_first, 0)?, "Input")?;
    expect_conv3x3(model, conv_body, FusedActivation::None)?;

    let mut blocks = Vec::new();
    let mut block_out = input_of(model, conv_body, 0)?;
    while block_out != conv_first {
        if blocks.len() > model.layers.len() {
            return Err(problem(
                block_out,
                "trunk does not lead back to conv_first".into(),
            ));
        }
        let (convs, block_in) = walk_rrdb(model, block_out)?;
        blocks.push(convs);
        block_out = block_in;
    }
    blocks.reverse();

    let mut names = vec![
        (conv_first, "conv_first".to_string()),
        (conv_body, "conv_body".to_string()),
        (conv_up1, "conv_up1".to_string()),
        (conv_up2, "conv_up2".to_string()),
        (conv_hr, "conv_hr".to_string()),
        (conv_last, "conv_last".to_string()),
    ];
    for (n, block) in blocks.iter().enumerate() {
        for (k, rdb) in block.iter().enumerate() {
            for (j, &conv) in rdb.iter().enumerate() {
                names.push((conv, format!("body.{n}.rdb{}.conv{}", k + 1, j + 1)));
            }
        }
    }
    Ok(names)
}

/// Walks one RRDB back from its output; returns its convolutions (by dense block) and its input.
fn walk_rrdb(model: &NcnnModel, out: usize) -> Result<([[usize; 5]; 3], usize), SrError> {
    let (mut rdb_out, block_in) = expect_scaled_residual(model, out)?;
    let mut rdbs = [[0; 5]; 3];
    for rdb in rdbs.iter_mut().rev() {
        let (convs, rdb_in) = walk_dense_block(model, rdb_out)?;
        *rdb = convs;
        rdb_out = rdb_in;
    }
    if rdb_out != block_in {
        return Err(graph_error(
            model,
            out,
            "RRDB residual does not skip its three dense blocks",
        ));
    }
    Ok((rdbs, block_in))
}

/// Walks one dense block back from its output; returns conv1..conv5 and the block's input.
fn walk_dense_block(model: &NcnnModel, out: usize) -> Result<([usize; 5], usize), SrError> {
    let (conv5, block_in) = expect_scaled_residual(model, out)?;
    expect_conv3x3(model, conv5, FusedActivation::None)?;
    let concat = input_of(model, conv5, 0)?;
    let features = concat_sources(model, concat, 5)?;
    if features[0] != block_in {
        return Err(graph_error(
            model,
            concat,
            "dense concatenation does not start with the block input",
        ));
    }
    let convs = [features[1], features[2], features[3], features[4], conv5];
    for (j, &conv) in convs[..4].iter().enumerate() {
        expect_conv3x3(model, conv, FusedActivation::LeakyRelu02)?;
        let source = input_of(model, conv, 0)?;
        let expected_inputs = &features[..j + 1];
        let actual_inputs = if j == 0 {
            vec![source]
        } else {
            concat_sources(model, source, j + 1)?
        };
        if actual_inputs != expected_inputs {
            return Err(graph_error(
                model,
                conv,
                "dense block convolution reads the wrong features",
            ));
        }
    }
    Ok((convs, block_in))
}

/// Checks an Eltwise `0.2 * branch + skip` (BasicSR's residual scaling); returns (branch, skip).
fn expect_scaled_residual(model: &NcnnModel, index: usize) -> Result<(usize, usize), SrError> {
    expect_kind(model, index, "Eltwise")?;
    let layer = &model.layers[index];
    let problem = |p: String| graph_error(model, index, p);
    let operation = layer.int(0, 1).map_err(problem)?;
    let coefficients = layer.array(1).map_err(problem)?;
    let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
    let branch_first = match coefficients {
        [a, b] if operation == 1 && close(*a, 0.2) && close(*b, 1.0) => true,
        [a, b] if operation == 1 && close(*a, 1.0) && close(*b, 0.2) => false,
        _ => {
            return Err(problem(format!(
                "expected the residual sum 0.2 * x + y, found operation {operation} with \
                 coefficients {coefficients:?}"
            )))
        }
    };
    let (x, y) = (input_of(model, index, 0)?, input_of(model, index, 1)?);
    Ok(if branch_first { (x, y) } else { (y, x) })
}

/// The producers of a channel Concat's `count` inputs.
fn concat_sources(model: &NcnnModel, index: usize, count: usize) -> Result<Vec<usize>, SrError> {
    expect_kind(model, index, "Concat")?;
    let layer = &model.layers[index];
    let axis = layer.int(0, 0).map_err(|p| graph_error(model, index, p))?;
    if axis != 0 || layer.inputs.len() != count {
        return Err(graph_error(
            model,
            index,
            format!("expected a channel concatenation of {count} inputs"),
        ));
    }
    (0..count)
        .map(|slot| input_of(model, index, slot))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use RrdbLayout::*;

    #[test]
    fn renames_original_and_old_layouts_to_basicsr() {
        let cases = [
            ("conv_first.weight", Original, "conv_first.weight"),
            (
                "RRDB_trunk.22.RDB3.conv5.bias",
                Original,
                "body.22.rdb3.conv5.bias",
            ),
            ("trunk_conv.weight", Original, "conv_body.weight"),
            ("upconv1.bias", Original, "conv_up1.bias"),
            ("upconv2.weight", Original, "conv_up2.weight"),
            ("HRconv.weight", Original, "conv_hr.weight"),
            ("conv_last.bias", Original, "conv_last.bias"),
            ("model.0.weight", OldArch, "conv_first.weight"),
            (
                "model.1.sub.5.RDB2.conv1.0.weight",
                OldArch,
                "body.5.rdb2.conv1.weight",
            ),
            ("model.1.sub.23.bias", OldArch, "conv_body.bias"),
            ("model.3.weight", OldArch, "conv_up1.weight"),
            ("model.6.bias", OldArch, "conv_up2.bias"),
            ("model.8.weight", OldArch, "conv_hr.weight"),
            ("model.10.weight", OldArch, "conv_last.weight"),
        ];
        for (key, layout, expected) in cases {
            assert_eq!(
                rename(key, layout, BasicSr).as_deref(),
                Some(expected),
                "{key}"
            );
        }
    }

    #[test]
    fn renaming_round_trips_and_rejects_strangers() {
        let key = "body.12.rdb1.conv4.weight";
        let original = rename(key, BasicSr, Original).unwrap();
        assert_eq!(original, "RRDB_trunk.12.RDB1.conv4.weight");
        assert_eq!(rename(&original, Original, BasicSr).as_deref(), Some(key));
        let old = rename(key, BasicSr, OldArch).unwrap();
        assert_eq!(old, "model.1.sub.12.RDB1.conv4.0.weight");
        assert_eq!(rename(&old, OldArch, BasicSr).as_deref(), Some(key));
        for stranger in [
            "model.2.weight",
            "model.1.sub.x.RDB1.conv1.0.weight",
            "RRDB_trunk.0.RDB1.conv1.running_mean",
            "RRDB_trunk.0.RDB1.conv1",
        ] {
            assert_eq!(rename(stranger, OldArch, BasicSr), None, "{stranger}");
            assert_eq!(rename(stranger, Original, BasicSr), None, "{stranger}");
        }
    }

    #[test]
    fn builds_the_published_parameter_counts() {
        let count = |config: &RrdbConfig| {
            let vars = nn::VarStore::new(tch::Device::Cpu);
            crate::torch_rng::exclusive(|| RrdbNet::new(&vars.root(), config));
            vars.variables().values().map(|t| t.numel()).sum::<usize>()
        };
        assert_eq!(count(&RrdbConfig::realesrgan_x4plus()), 16_697_987);
        assert_eq!(count(&RrdbConfig::realesrgan_x4plus_anime_6b()), 4_467_779);
        assert_eq!(count(&RrdbConfig::realesrgan_x2plus()), 16_703_171);
    }
}
