//! Putting a checkpoint's tensors into a model's variables: one loader and one policy for every
//! network, so CLIP, VQGAN and the upscalers refuse a wrong file the same way and with the same
//! words.
//!
//! The policy:
//! - every variable of the model must be in the file under its state-dict name, with the same
//!   shape (a missing or misshapen tensor is an error naming the file, the tensor and both
//!   shapes); values are converted to the variable's kind (CLIP ships float16 weights);
//! - a tensor of the file under one of the model's own top-level modules (the first component of
//!   some variable's name) that the model has no variable for is an error: the file describes a
//!   different architecture than the one configured, and ignoring it would run the wrong network;
//! - everything else in the file is not the model's and is left alone: the other parts of a
//!   Lightning checkpoint (a VQGAN's discriminator under `loss.`), hyper-parameters saved as
//!   tensors (CLIP's `input_resolution`), and PyTorch's BatchNorm counters
//!   (`num_batches_tracked`), which inference never reads.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use tch::{nn, TchError, Tensor};

/// A checkpoint that does not fit the model it is loaded into, naming the file and the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The model has a variable the file does not hold.
    #[error("{}: lacks tensor `{tensor}`", file.display())]
    Missing {
        /// The checkpoint file.
        file: PathBuf,
        /// The state-dict name the model looked for.
        tensor: String,
    },
    /// The file holds a tensor under the model's modules that the model has no variable for.
    #[error("{}: unexpected tensor `{tensor}`: the configured network has no such parameter", file.display())]
    Unexpected {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor's state-dict name.
        tensor: String,
    },
    /// A tensor's shape differs from the variable's (the configuration and the file disagree).
    #[error("{}: tensor `{tensor}` has shape {found:?}, expected {expected:?}", file.display())]
    Shape {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor's state-dict name.
        tensor: String,
        /// The variable's shape.
        expected: Vec<i64>,
        /// The file's shape.
        found: Vec<i64>,
    },
    /// libtorch could not copy or convert the tensor.
    #[error("{}: cannot copy tensor `{tensor}`: {source}", file.display())]
    Torch {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor's state-dict name.
        tensor: String,
        /// What libtorch said.
        source: TchError,
    },
}

/// PyTorch's BatchNorm step counter: saved in state dicts, never read at inference.
const BATCH_NORM_COUNTER: &str = "num_batches_tracked";

/// Copies the tensors of `file` named `prefix` + a variable's name into `vars`, by the policy of
/// this module (names in errors are the file's, prefix included).
pub fn load_weights(
    vars: &nn::VarStore,
    file: &Path,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    prefix: &str,
) -> Result<(), WeightError> {
    let mut table: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter_map(|(name, tensor)| Some((name.strip_prefix(prefix)?.to_string(), tensor)))
        .collect();
    let mut variables: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let modules: BTreeSet<String> = variables.iter().map(|(n, _)| module_of(n)).collect();
    let full = |name: &str| format!("{prefix}{name}");
    for (name, mut variable) in variables {
        let source = table.remove(&name).ok_or_else(|| WeightError::Missing {
            file: file.to_path_buf(),
            tensor: full(&name),
        })?;
        if source.size() != variable.size() {
            return Err(WeightError::Shape {
                file: file.to_path_buf(),
                tensor: full(&name),
                expected: variable.size(),
                found: source.size(),
            });
        }
        tch::no_grad(|| variable.f_copy_(&source.f_to_kind(variable.kind())?)).map_err(
            |source| WeightError::Torch {
                file: file.to_path_buf(),
                tensor: full(&name),
                source,
            },
        )?;
    }
    let mut leftovers: Vec<String> = table
        .into_keys()
        .filter(|name| modules.contains(&module_of(name)) && !name.ends_with(BATCH_NORM_COUNTER))
        .collect();
    leftovers.sort();
    match leftovers.into_iter().next() {
        Some(name) => Err(WeightError::Unexpected {
            file: file.to_path_buf(),
            tensor: full(&name),
        }),
        None => Ok(()),
    }
}

/// The top-level module of a state-dict name (`decoder` of `decoder.up.1.attn.0.k.bias`).
fn module_of(name: &str) -> String {
    name.split('.').next().unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn model() -> nn::VarStore {
        let vars = nn::VarStore::new(Device::Cpu);
        let root = vars.root();
        let _body = root.sub("body").zeros("weight", &[2, 3]);
        let _head = root.sub("head").zeros("bias", &[2]);
        vars
    }

    fn tensors(extra: &[(&str, &[i64])]) -> Vec<(String, Tensor)> {
        let mut all = vec![
            (
                "m.body.weight".to_string(),
                Tensor::ones([2, 3], (Kind::Half, Device::Cpu)),
            ),
            (
                "m.head.bias".to_string(),
                Tensor::ones([2], (Kind::Float, Device::Cpu)),
            ),
        ];
        for (name, shape) in extra {
            all.push((
                name.to_string(),
                Tensor::zeros(*shape, (Kind::Float, Device::Cpu)),
            ));
        }
        all
    }

    fn load(tensors: Vec<(String, Tensor)>) -> Result<nn::VarStore, String> {
        let vars = model();
        load_weights(&vars, Path::new("m.safetensors"), tensors, "m.")
            .map(|()| vars)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_variable_is_copied_in_the_variable_s_kind() {
        let vars = load(tensors(&[])).unwrap();
        for (_, variable) in vars.variables() {
            assert_eq!(variable.kind(), Kind::Float);
            assert_eq!(
                variable.sum(Kind::Double).double_value(&[]),
                variable.numel() as f64
            );
        }
    }

    #[test]
    fn a_missing_tensor_is_named_with_the_file_and_prefix() {
        let mut all = tensors(&[]);
        all.truncate(1);
        assert_eq!(
            load(all).unwrap_err(),
            "m.safetensors: lacks tensor `m.head.bias`"
        );
    }

    #[test]
    fn a_misshapen_tensor_names_both_shapes() {
        let mut all = tensors(&[]);
        all[0].1 = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        assert_eq!(
            load(all).unwrap_err(),
            "m.safetensors: tensor `m.body.weight` has shape [3, 2], expected [2, 3]"
        );
    }

    #[test]
    fn leftovers_under_the_model_s_modules_are_refused_and_the_rest_left_alone() {
        let others = [
            ("loss.disc.weight", &[4][..]),
            ("m.input_resolution", &[]),
            ("m.body.num_batches_tracked", &[]),
            ("other.body.extra", &[1]),
        ];
        assert!(load(tensors(&others)).is_ok());
        let error = load(tensors(&[("m.body.extra", &[1])])).unwrap_err();
        assert_eq!(
            error,
            "m.safetensors: unexpected tensor `m.body.extra`: the configured network has no such parameter"
        );
    }
}
