//! CLIP against OpenAI's reference code: fixtures made by `scripts/fixtures/make_clip_fixtures.py`
//! with the `clip-anytorch` package (tokenizer ids, tiny random models of each family with their
//! embeddings and pixel gradients), TorchScript archives generated on the fly by the same script
//! in the project venv, and malformed checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tessera_nets::clip::{Clip, ClipError, Tokenizer};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn read(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(name);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn io() -> HashMap<String, Tensor> {
    read("io.safetensors")
}

/// The fixture script's stand-in for random token embeddings, computed with the same ops.
fn token_embedding(vocab: i64, width: i64) -> Tensor {
    let rows = Tensor::arange(vocab, (Kind::Double, Device::Cpu)).unsqueeze(1);
    let cols = Tensor::arange(width, (Kind::Double, Device::Cpu)).unsqueeze(0);
    ((rows * 0.37 + cols * 1.13).sin() * 0.02).to_kind(Kind::Float)
}

/// The tiny model of `family` ("vit" or "resnet") as one state dict.
fn state_dict(family: &str) -> HashMap<String, Tensor> {
    let mut state = read("text.safetensors");
    state.extend(read(&format!("{family}.safetensors")));
    state.insert("token_embedding.weight".into(), token_embedding(49408, 64));
    state
}

fn save(state: &HashMap<String, Tensor>, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let tensors: Vec<(&String, &Tensor)> = state.iter().collect();
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

fn load_tiny(family: &str, kind: Kind) -> Clip {
    let dir = tempfile::tempdir().unwrap();
    let path = save(&state_dict(family), dir.path(), "model.safetensors");
    Clip::load(&path, Device::Cpu, kind).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, tolerance: f64) {
    let diff = max_abs_diff(ours, reference);
    assert!(
        diff <= tolerance,
        "{what}: max |ours - reference| = {diff:e} > {tolerance:e}"
    );
}

#[derive(Deserialize)]
struct TokenizerCase {
    text: String,
    ids: Vec<i64>,
    too_long: bool,
    truncated: Vec<i64>,
}

#[test]
fn tokenizer_matches_reference_on_hard_strings() {
    let cases: Vec<TokenizerCase> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer.json")).unwrap())
            .unwrap();
    assert!(cases.len() >= 200, "only {} strings", cases.len());
    let tokenizer = Tokenizer::new().unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let ids = tokenizer.encode(&case.text);
        if ids != case.ids {
            failures.push(format!(
                "{:?}: ours {ids:?}, reference {:?}",
                case.text, case.ids
            ));
            continue;
        }
        let truncated =
            Vec::<i64>::try_from(tokenizer.tokenize(&[&case.text], true).unwrap().view([-1]))
                .unwrap();
        if truncated != case.truncated {
            failures.push(format!("{:?}: truncated rows differ", case.text));
        }
        match (tokenizer.tokenize(&[&case.text], false), case.too_long) {
            (Err(ClipError::PromptTooLong { tokens, .. }), true) => {
                assert_eq!(tokens, case.ids.len() + 2)
            }
            (Ok(_), false) => {}
            (result, _) => failures.push(format!(
                "{:?}: too_long {} but got {:?}",
                case.text,
                case.too_long,
                result.err()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} strings differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn token_embedding_formula_matches_the_fixture_script() {
    let sample = token_embedding(49408, 64).slice(0, 0, None, 4096);
    assert_close(
        "token embedding sample",
        &sample,
        &io()["token_embedding.sample"],
        1e-7,
    );
}

/// Embeddings of the fixture images and d(embedding . direction)/d(pixels) against the reference.
fn check_image_parity(family: &str, clip: &Clip) {
    let io = io();
    let pixels = io[&format!("{family}.pixels")].set_requires_grad(true);
    let features = clip.encode_image(&pixels);
    assert_close(
        &format!("{family} image features"),
        &features,
        &io[&format!("{family}.image_features")],
        TOLERANCE,
    );
    let objective = (&features * &io[&format!("{family}.direction")]).sum(Kind::Float);
    let gradient = Tensor::run_backward(&[objective], &[&pixels], false, false).remove(0);
    assert_close(
        &format!("{family} pixel gradient"),
        &gradient,
        &io[&format!("{family}.pixel_grad")],
        TOLERANCE,
    );
}

fn check_text_parity(family: &str, clip: &Clip) {
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("prompts.json")).unwrap())
            .unwrap();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let features = clip.encode_text(&prompts).unwrap();
    assert_close(
        &format!("{family} text features"),
        &features,
        &io()[&format!("{family}.text_features")],
        TOLERANCE,
    );
}

#[test]
fn vision_transformer_matches_reference() {
    let clip = load_tiny("vit", Kind::Float);
    assert_eq!((clip.input_resolution(), clip.embed_dim()), (32, 32));
    assert!(
        (clip.logit_scale() - 1.0 / 0.07).abs() < 1e-4,
        "logit scale {}",
        clip.logit_scale()
    );
    check_image_parity("vit", &clip);
    check_text_parity("vit", &clip);
}

#[test]
fn modified_resnet_matches_reference() {
    let clip = load_tiny("resnet", Kind::Float);
    assert_eq!((clip.input_resolution(), clip.embed_dim()), (64, 32));
    check_image_parity("resnet", &clip);
    check_text_parity("resnet", &clip);
}

#[test]
fn bfloat16_follows_fp32() {
    let clip = load_tiny("vit", Kind::BFloat16);
    let io = io();
    let features = clip.encode_image(&io["vit.pixels"]);
    assert_eq!(features.kind(), Kind::BFloat16);
    assert_close(
        "bf16 image features",
        &features,
        &io["vit.image_features"],
        0.05,
    );
    let text = clip.encode_text(&["a photo of a cat"]).unwrap();
    assert_close(
        "bf16 text features",
        &text,
        &io["vit.text_features"].narrow(0, 0, 1),
        0.05,
    );
}

#[test]
fn preprocess_matches_torchvision_resize_and_crop() {
    let io = io();
    let clip = load_tiny("vit", Kind::Float);
    assert_close(
        "preprocessed image",
        &clip.preprocess(&io["preprocess.image"]),
        &io["preprocess.expected"],
        TOLERANCE,
    );
}

fn venv_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    python
}

/// Runs the fixture script with `args` in the project venv.
fn fixture_script(args: &[&str]) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fixtures/make_clip_fixtures.py");
    let output = Command::new(venv_python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fixture script {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn tiny_torchscript_archives_and_torch_save_dicts_load() {
    let dir = tempfile::tempdir().unwrap();
    fixture_script(&["checkpoints", dir.path().to_str().unwrap()]);
    for family in ["vit", "resnet"] {
        for extension in ["pt", "pth"] {
            let clip = Clip::load(
                &dir.path().join(format!("{family}.{extension}")),
                Device::Cpu,
                Kind::Float,
            )
            .unwrap();
            check_image_parity(family, &clip);
            check_text_parity(family, &clip);
        }
    }
}

#[test]
fn full_size_vit_b_32_torchscript_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    fixture_script(&["vit-b-32", dir.path().to_str().unwrap()]);
    let clip = Clip::load(&dir.path().join("ViT-B-32.pt"), Device::Cpu, Kind::Float).unwrap();
    assert_eq!((clip.input_resolution(), clip.embed_dim()), (224, 512));
    let io = read_dir_io(dir.path());
    let image = clip.encode_image(&io["pixels"]);
    assert_close(
        "ViT-B/32 image features",
        &image,
        &io["image_features"],
        TOLERANCE,
    );
    let text = clip.encode_text(&["a photo of a cat"]).unwrap();
    assert_close(
        "ViT-B/32 text features",
        &text,
        &io["text_features"],
        TOLERANCE,
    );
}

fn read_dir_io(dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn load_error(state: &HashMap<String, Tensor>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = save(state, dir.path(), "model.safetensors");
    Clip::load(&path, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_tensor_is_named() {
    let mut state = state_dict("vit");
    state.remove("visual.transformer.resblocks.1.mlp.c_fc.bias");
    let err = load_error(&state);
    assert!(
        err.contains("lacks tensor `visual.transformer.resblocks.1.mlp.c_fc.bias`"),
        "{err}"
    );
}

#[test]
fn misshapen_tensor_is_named_with_both_shapes() {
    let mut state = state_dict("resnet");
    state.insert(
        "visual.layer2.0.bn2.running_var".into(),
        Tensor::ones([3], (Kind::Float, Device::Cpu)),
    );
    let err = load_error(&state);
    assert!(
        err.contains("`visual.layer2.0.bn2.running_var` has shape [3], expected [8]"),
        "{err}"
    );
}

#[test]
fn unrecognised_architectures_say_why() {
    let mut no_tower = state_dict("vit");
    no_tower.remove("visual.proj");
    let err = load_error(&no_tower);
    assert!(
        err.contains("unrecognised CLIP architecture") && err.contains("visual.proj"),
        "{err}"
    );

    let mut odd_width = state_dict("vit");
    odd_width.insert(
        "ln_final.weight".into(),
        Tensor::ones([48], (Kind::Float, Device::Cpu)),
    );
    let err = load_error(&odd_width);
    assert!(
        err.contains("text transformer width 48 is not a positive multiple of 64"),
        "{err}"
    );

    let mut odd_grid = state_dict("vit");
    odd_grid.insert(
        "visual.positional_embedding".into(),
        Tensor::zeros([20, 64], (Kind::Float, Device::Cpu)),
    );
    let err = load_error(&odd_grid);
    assert!(
        err.contains("`visual.positional_embedding` has 20 rows, not a square grid plus one"),
        "{err}"
    );
}

#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pt");
    let err = Clip::load(&missing, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.pt") && err.contains("no such file"),
        "{err}"
    );
    let garbage = dir.path().join("garbage.pt");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    let err = Clip::load(&garbage, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("garbage.pt") && err.contains("neither a TorchScript archive"),
        "{err}"
    );
}

#[test]
fn too_long_prompt_says_by_how_many_tokens() {
    let clip = load_tiny("vit", Kind::Float);
    let prompt = "a photo of a cat ".repeat(20);
    let err = clip
        .encode_text(&["fine", &prompt])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("102 tokens") && err.contains("25 too many for the context length 77"),
        "{err}"
    );
}
