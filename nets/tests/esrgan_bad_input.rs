//! Bad weight files give errors that name the file and the culprit, never a panic.

use std::fs;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tessera_nets::esrgan::{SrError, SrModel};
use tessera_nets::fixtures::{esrgan_fixture, models_dir};
use tessera_nets::weights::WeightError;

/// Loads `path`, expecting failure; returns the error's message after checking it names the file.
fn load_error(path: &Path) -> (SrError, String) {
    let error = SrModel::load(path, Device::Cpu)
        .err()
        .expect("loading must fail");
    let message = error.to_string();
    println!("{message}");
    let file_name = path.file_stem().unwrap().to_str().unwrap();
    assert!(
        message.contains(file_name),
        "message does not name {file_name}: {message}"
    );
    (error, message)
}

/// Copies an installed ncnn pair into `dir`, returning the new `.param` and `.bin` paths.
fn copy_ncnn(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let paths = ["param", "bin"].map(|ext| {
        let target = dir.join(format!("{name}.{ext}"));
        fs::copy(models_dir().join(format!("{name}.{ext}")), &target).unwrap();
        target
    });
    let [param, bin] = paths;
    (param, bin)
}

/// The x4 RRDBNet fixture's tensors, edited by `edit`, written to `dir/name`.
fn edited_fixture(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> PathBuf {
    let mut tensors =
        Tensor::read_safetensors(esrgan_fixture("rrdb_x4_basicsr.safetensors")).unwrap();
    edit(&mut tensors);
    let path = dir.join(name);
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn truncated_bin_names_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (param, bin) = copy_ncnn(dir.path(), "realesr-animevideov3-x4");
    let bytes = fs::read(&bin).unwrap();
    fs::write(&bin, &bytes[..bytes.len() - 100]).unwrap();
    let (error, message) = load_error(&param);
    assert!(matches!(error, SrError::Ncnn(_)), "{message}");
    assert!(
        message.contains("Conv_34") && message.contains("truncated"),
        "{message}"
    );
}

#[test]
fn oversized_bin_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bin) = copy_ncnn(dir.path(), "realesr-animevideov3-x4");
    let mut bytes = fs::read(&bin).unwrap();
    bytes.extend_from_slice(&[0; 12]);
    fs::write(&bin, &bytes).unwrap();
    let (_, message) = load_error(&bin);
    assert!(message.contains("12 bytes left over"), "{message}");
}

#[test]
fn unknown_weight_tag_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (param, bin) = copy_ncnn(dir.path(), "realesr-animevideov3-x4");
    let mut bytes = fs::read(&bin).unwrap();
    bytes[..4].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    fs::write(&bin, &bytes).unwrap();
    let (_, message) = load_error(&param);
    assert!(
        message.contains("Conv_0") && message.contains("0xdeadbeef"),
        "{message}"
    );
}

#[test]
fn missing_bin_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (param, bin) = copy_ncnn(dir.path(), "realesr-animevideov3-x4");
    fs::remove_file(&bin).unwrap();
    let (_, message) = load_error(&param);
    assert!(message.contains("realesr-animevideov3-x4.bin"), "{message}");
}

#[test]
fn unexpected_ncnn_graph_names_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (param, _) = copy_ncnn(dir.path(), "realesrgan-x4plus-anime");
    let text = fs::read_to_string(&param).unwrap();
    // The first dense block's residual scaled by 0.3 instead of BasicSR's 0.2.
    let edited = text.replacen(
        "-23301=2,2.000000e-01,1.000000e+00",
        "-23301=2,3.000000e-01,1.000000e+00",
        1,
    );
    fs::write(&param, edited).unwrap();
    let (error, message) = load_error(&param);
    assert!(matches!(error, SrError::NcnnGraph { .. }), "{message}");
    assert!(
        message.contains("Add_16") && message.contains("0.2 * x + y"),
        "{message}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_fixture(dir.path(), "missing.safetensors", |tensors| {
        tensors.retain(|(name, _)| name != "body.1.rdb2.conv3.bias")
    });
    let (error, message) = load_error(&path);
    assert!(
        matches!(error, SrError::Weights(WeightError::Missing { .. })),
        "{message}"
    );
    assert!(message.contains("body.1.rdb2.conv3.bias"), "{message}");
}

#[test]
fn misshapen_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_fixture(dir.path(), "misshapen.safetensors", |tensors| {
        for (name, tensor) in tensors.iter_mut() {
            if name == "body.0.rdb2.conv3.weight" {
                *tensor = Tensor::zeros([4, 13, 3, 3], (Kind::Float, Device::Cpu));
            }
        }
    });
    let (_, message) = load_error(&path);
    assert!(
        message.contains("body.0.rdb2.conv3.weight")
            && message.contains("[4, 13, 3, 3]")
            && message.contains("[4, 14, 3, 3]"),
        "{message}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_fixture(dir.path(), "extra.safetensors", |tensors| {
        tensors.push((
            "body.0.rdb1.conv6.weight".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ))
    });
    let (error, message) = load_error(&path);
    assert!(
        matches!(error, SrError::Weights(WeightError::Unexpected { .. })),
        "{message}"
    );
    assert!(message.contains("body.0.rdb1.conv6.weight"), "{message}");
}

#[test]
fn unknown_layout_lists_the_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_fixture(dir.path(), "encoder.safetensors", |tensors| {
        *tensors = vec![(
            "encoder.conv_in.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        )]
    });
    let (error, message) = load_error(&path);
    assert!(matches!(error, SrError::UnknownLayout { .. }), "{message}");
    assert!(message.contains("encoder.conv_in.weight"), "{message}");
}

#[test]
fn unsupported_input_channels_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_fixture(dir.path(), "five_channels.safetensors", |tensors| {
        for (name, tensor) in tensors.iter_mut() {
            if name == "conv_first.weight" {
                *tensor = Tensor::zeros([6, 5, 3, 3], (Kind::Float, Device::Cpu));
            }
        }
    });
    let (error, message) = load_error(&path);
    assert!(matches!(error, SrError::Unsupported { .. }), "{message}");
    assert!(
        message.contains("conv_first.weight takes 5 channels"),
        "{message}"
    );
}

#[test]
fn unreadable_missing_and_unknown_files() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pth");
    fs::write(&garbage, b"not a zip archive").unwrap();
    let (error, _) = load_error(&garbage);
    assert!(matches!(error, SrError::Unreadable { .. }), "{error}");
    let (error, _) = load_error(&dir.path().join("absent.safetensors"));
    assert!(matches!(error, SrError::Io { .. }), "{error}");
    let (error, _) = load_error(&dir.path().join("model.onnx"));
    assert!(
        matches!(error, SrError::UnsupportedFormat { .. }),
        "{error}"
    );
}
