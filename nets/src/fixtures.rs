//! Fixtures for tests of the networks, here and in the worker: the workspace's paths, the
//! project's Python (the upstream reference code runs in it), the parity fixtures under
//! `nets/tests/fixtures/`, and tiny models in the official file formats. Public so the worker's
//! process tests build the same tiny models instead of a second copy of this code; these panic
//! on failure because only tests call them.

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

/// The repository root (the workspace above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("nets/ sits in the workspace")
        .to_path_buf()
}

/// A file of the ESRGAN parity fixtures (made by scripts/fixtures/make_esrgan_fixtures.py).
pub fn esrgan_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/esrgan")
        .join(name)
}

/// The project's Python (scripts/setup.sh creates it); fails loudly when set-up has not run.
pub fn venv_python() -> PathBuf {
    let python = workspace_root().join(".deps/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh first",
        python.display()
    );
    python
}

/// Runs the venv's Python with `args` from the repository root; panics with its stderr on failure.
pub fn run_python(args: &[&str]) -> String {
    let output = Command::new(venv_python())
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("cannot start the venv's python");
    assert!(
        output.status.success(),
        "python {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The installed real weights: `$TESSERA_MODELS`, else `<workspace>/.deps/models`.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("TESSERA_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".deps/models"));
    assert!(
        dir.join("realesrgan-x4plus.param").exists(),
        "real weights not found in {} (set TESSERA_MODELS or run scripts/setup.sh, which installs them)",
        dir.display()
    );
    dir
}

/// Largest absolute element-wise difference of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

/// A models directory with a tiny CLIP (`vit.pt`, an OpenAI-style TorchScript archive) and a
/// tiny VQGAN (`vq.safetensors` converted from a taming-transformers checkpoint, `vq.yaml`).
pub fn tiny_generation_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    run_python(&["scripts/fixtures/make_clip_fixtures.py", "checkpoints", d]);
    let fixtures = workspace_root().join("nets/tests/fixtures/vqgan");
    let converted = dir.path().join("vq.safetensors");
    run_python(&[
        "scripts/convert_checkpoint.py",
        fixtures.join("vq.ckpt").to_str().unwrap(),
        converted.to_str().unwrap(),
    ]);
    std::fs::copy(fixtures.join("vq.yaml"), dir.path().join("vq.yaml")).unwrap();
    dir
}

/// The render settings a PNG records in its `Tessera settings` chunk.
pub fn recorded_settings(png: &[u8]) -> crate::generate::Settings {
    let reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let chunk = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == crate::generate::png::SETTINGS_KEYWORD)
        .expect("settings chunk");
    serde_json::from_str(&chunk.text).unwrap()
}
