//! VQGAN parity with taming-transformers' own modules, on the fixtures written by
//! scripts/fixtures/make_vqgan_fixtures.py: each Lightning-shaped `.ckpt` goes through the documented
//! path (scripts/convert_checkpoint.py as a real process, then `VqModel::load`), and encoder output,
//! quantiser indices, decoder output and the gradient with respect to z must match within 1e-4.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};
use tessera_nets::vqgan::{VqConfig, VqError, VqModel};
use tessera_nets::weights::WeightError;

const TOLERANCE: f64 = 1e-4;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("worker sits in the workspace")
        .to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vqgan")
        .join(name)
}

/// Runs scripts/convert_checkpoint.py on fixture `NAME.ckpt`, as an operator would, once per test
/// run (into Cargo's scratch directory for integration tests).
fn converted(name: &str) -> PathBuf {
    static VQ: OnceLock<PathBuf> = OnceLock::new();
    static GUMBEL: OnceLock<PathBuf> = OnceLock::new();
    let cell = match name {
        "vq" => &VQ,
        "gumbel" => &GUMBEL,
        other => panic!("no fixture checkpoint {other}"),
    };
    cell.get_or_init(|| {
        let root = repo_root();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vqgan_{name}.safetensors"));
        let status = Command::new(root.join(".deps/venv/bin/python"))
            .arg(root.join("scripts/convert_checkpoint.py"))
            .arg(fixture(&format!("{name}.ckpt")))
            .arg(&out)
            .status()
            .expect("run the venv's python (scripts/setup.sh installs it)");
        assert!(
            status.success(),
            "convert_checkpoint.py failed on {name}.ckpt"
        );
        out
    })
    .clone()
}

fn goldens(name: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(&format!("{name}_golden.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

/// Max absolute difference, relative to the golden's scale when that exceeds 1.
fn assert_close(what: &str, ours: &Tensor, golden: &Tensor) {
    assert_eq!(ours.size(), golden.size(), "{what}: shape");
    let scale = golden.abs().max().double_value(&[]).max(1.0);
    let diff = (ours - golden).abs().max().double_value(&[]);
    assert!(
        diff <= TOLERANCE * scale,
        "{what}: max |diff| {diff} > {TOLERANCE} * {scale}"
    );
}

/// Checks every golden of fixture `name` against a model loaded from it.
fn check_parity(name: &str, model: &VqModel) {
    let g = goldens(name);
    let z = model.encode(&g["image"]).unwrap();
    assert_close("encoder output z", &z, &g["z"]);

    let (z_q, indices) = model.quantize(&g["z"]);
    assert_eq!(indices, g["indices"], "quantiser indices");
    assert_close("z_q", &z_q, &g["z_q"]);
    assert_close("decoder output", &model.decode(&z_q), &g["decoded"]);
    assert_close(
        "decode_indices",
        &model.decode_indices(&g["indices"]),
        &g["decoded"],
    );

    let z = g["z"].detach().set_requires_grad(true);
    let (z_q, _) = model.quantize(&z);
    (model.decode(&z_q) - &g["target"])
        .square()
        .sum(Kind::Float)
        .backward();
    assert_close(
        "gradient of the loss with respect to z",
        &z.grad(),
        &g["grad_z"],
    );
}

fn load_fixture(name: &str) -> VqModel {
    VqModel::load(
        &fixture(&format!("{name}.yaml")),
        &converted(name),
        Device::Cpu,
    )
    .unwrap()
}

#[test]
fn vector_quantized_model_matches_taming_transformers() {
    let model = load_fixture("vq");
    assert_eq!(model.downsampling_factor(), 2);
    assert_eq!(model.codebook().size(), [16, 8]);
    check_parity("vq", &model);
}

#[test]
fn gumbel_model_matches_taming_transformers() {
    let model = load_fixture("gumbel");
    assert_eq!(model.codebook().size(), [16, 8]);
    check_parity("gumbel", &model);
}

/// The coco / faceshq / sflckr files are Net2NetTransformer checkpoints whose first stage sits
/// under `first_stage_model.` next to the transformer's own tensors.
#[test]
fn first_stage_of_a_transformer_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(converted("vq"))
        .unwrap()
        .into_iter()
        .map(|(name, tensor)| (format!("first_stage_model.{name}"), tensor))
        .collect();
    tensors.push((
        "transformer.tok_emb.weight".into(),
        Tensor::zeros([16, 4], (Kind::Float, Device::Cpu)),
    ));
    let weights = dir.path().join("transformer.safetensors");
    Tensor::write_safetensors(&tensors, &weights).unwrap();

    let first_stage = std::fs::read_to_string(fixture("vq.yaml")).unwrap();
    let nested: String = first_stage
        .lines()
        .skip(1)
        .map(|line| format!("    {line}\n"))
        .collect();
    let yaml = format!(
        "model:\n  target: taming.models.cond_transformer.Net2NetTransformer\n  params:\n    first_stage_config:\n{nested}"
    );
    let config = dir.path().join("transformer.yaml");
    std::fs::write(&config, yaml).unwrap();

    let model = VqModel::load(&config, &weights, Device::Cpu).unwrap();
    let g = goldens("vq");
    assert_close(
        "encoder output z",
        &model.encode(&g["image"]).unwrap(),
        &g["z"],
    );
}

/// Writes `vq.yaml` with one substitution applied, for configs that disagree with the checkpoint.
fn edited_config(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(fixture("vq.yaml")).unwrap();
    assert!(text.contains(from), "vq.yaml lacks `{from}`");
    let path = dir.join("edited.yaml");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn yaml_disagreeing_with_checkpoint_names_tensor_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let weights = converted("vq");
    let config = edited_config(dir.path(), "n_embed: 16", "n_embed: 32");
    let err = VqModel::load(&config, &weights, Device::Cpu).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: tensor `quantize.embedding.weight` has shape [16, 8], expected [32, 8]",
            weights.display()
        )
    );
}

#[test]
fn checkpoint_tensors_the_config_lacks_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let weights = converted("vq");
    let config = edited_config(
        dir.path(),
        "attn_resolutions:\n      - 16",
        "attn_resolutions: []",
    );
    let err = VqModel::load(&config, &weights, Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, VqError::Weights(WeightError::Unexpected { tensor, .. }) if tensor == "decoder.up.1.attn.0.k.bias"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(converted("vq"))
        .unwrap()
        .into_iter()
        .filter(|(name, _)| name != "decoder.mid.attn_1.q.weight")
        .collect();
    let weights = dir.path().join("incomplete.safetensors");
    Tensor::write_safetensors(&tensors, &weights).unwrap();
    let err = VqModel::load(&fixture("vq.yaml"), &weights, Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("lacks tensor `decoder.mid.attn_1.q.weight`"),
        "{err}"
    );
}

#[test]
fn unreadable_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.safetensors");
    let err = VqModel::load(&fixture("vq.yaml"), &absent, Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, VqError::ReadWeights { path, .. } if *path == absent),
        "{err}"
    );
    let err = VqModel::load(&dir.path().join("absent.yaml"), &absent, Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("absent.yaml"), "{err}");
}

#[test]
fn image_size_off_the_factor_is_rejected() {
    let model = load_fixture("vq");
    let image = Tensor::zeros([1, 3, 32, 31], (Kind::Float, Device::Cpu));
    let err = model.encode(&image).unwrap_err();
    assert!(
        matches!(
            err,
            VqError::SizeNotMultiple {
                height: 32,
                width: 31,
                factor: 2
            }
        ),
        "{err}"
    );
}

fn published_parameter_count(model: &str) -> i64 {
    let text = std::fs::read_to_string(fixture("parameter_counts.json")).unwrap();
    let counts: serde_json::Value = serde_json::from_str(&text).unwrap();
    counts[model]
        .as_i64()
        .unwrap_or_else(|| panic!("parameter_counts.json lacks {model}"))
}

#[test]
fn full_size_f16_16384_decodes_a_31x31_latent_to_496x496() {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = VqModel::new(&vs.root(), &VqConfig::imagenet_f16_16384());
    assert_eq!(
        model.parameter_count(),
        published_parameter_count("vqgan_imagenet_f16_16384")
    );
    assert_eq!(model.codebook().size(), [16384, 256]);
    let z = Tensor::randn([1, 256, 31, 31], (Kind::Float, Device::Cpu));
    let image = tch::no_grad(|| model.decode(&z));
    assert_eq!(image.size(), [1, 3, 496, 496]);
    assert!(bool::try_from(image.isfinite().all()).unwrap());
}

#[test]
fn full_size_gumbel_f8_has_the_published_parameter_count() {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = VqModel::new(&vs.root(), &VqConfig::gumbel_f8_8192());
    assert_eq!(
        model.parameter_count(),
        published_parameter_count("vqgan_gumbel_f8_8192")
    );
    assert_eq!(model.downsampling_factor(), 8);
}
