//! Parity of our ESRGAN-family networks with the upstream PyTorch modules (BasicSR's RRDBNet,
//! Real-ESRGAN's SRVGGNetCompact) on random weights in every official key layout and file format.
//! Fixtures: scripts/fixtures/make_esrgan_fixtures.py.

mod common;

use std::collections::HashMap;

use common::{esrgan_fixture, max_abs_diff, run_python};
use tch::{Device, Tensor};
use tessera_worker::esrgan::{SrError, SrModel};

/// Tolerance in fp32, as the issue asks.
const TOLERANCE: f64 = 1e-4;

/// Loads `weights`, runs the fixture input of `case`, compares with upstream's output.
fn assert_parity(weights: &std::path::Path, case: &str, description: &str, scale: i64) {
    let model = SrModel::load(weights, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.description(), description);
    assert_eq!(model.scale(), scale);
    let io: HashMap<String, Tensor> =
        Tensor::read_safetensors(esrgan_fixture(&format!("{case}_io.safetensors")))
            .unwrap()
            .into_iter()
            .collect();
    let ours = model.forward(&io["input"]);
    let diff = max_abs_diff(&ours, &io["output"]);
    println!("{} ({case}): max abs diff {diff:.2e}", weights.display());
    assert!(
        diff <= TOLERANCE,
        "{}: max abs diff {diff} > {TOLERANCE}",
        weights.display()
    );
}

#[test]
fn rrdbnet_x4_basicsr_safetensors() {
    let weights = esrgan_fixture("rrdb_x4_basicsr.safetensors");
    assert_parity(
        &weights,
        "rrdb_x4",
        "RRDBNet 2 blocks, 6 feat, 4 grow, x4",
        4,
    );
}

#[test]
fn rrdbnet_x4_original_esrgan_pth() {
    let weights = esrgan_fixture("rrdb_x4_original.pth");
    assert_parity(
        &weights,
        "rrdb_x4",
        "RRDBNet 2 blocks, 6 feat, 4 grow, x4",
        4,
    );
}

#[test]
fn rrdbnet_x4_old_architecture_pth() {
    let weights = esrgan_fixture("rrdb_x4_old_arch.pth");
    assert_parity(
        &weights,
        "rrdb_x4",
        "RRDBNet 2 blocks, 6 feat, 4 grow, x4",
        4,
    );
}

#[test]
fn rrdbnet_x2_pixel_unshuffle() {
    let weights = esrgan_fixture("rrdb_x2_basicsr.safetensors");
    assert_parity(
        &weights,
        "rrdb_x2",
        "RRDBNet 1 blocks, 6 feat, 4 grow, x2",
        2,
    );
}

#[test]
fn rrdbnet_x1_pixel_unshuffle() {
    let weights = esrgan_fixture("rrdb_x1_basicsr.safetensors");
    assert_parity(
        &weights,
        "rrdb_x1",
        "RRDBNet 1 blocks, 6 feat, 4 grow, x1",
        1,
    );
}

#[test]
fn srvgg_compact_safetensors_and_pth() {
    for file in ["srvgg_x4.safetensors", "srvgg_x4.pth"] {
        assert_parity(
            &esrgan_fixture(file),
            "srvgg_x4",
            "SRVGGNetCompact 4 conv, 16 feat, x4",
            4,
        );
    }
}

/// An official checkpoint nests its tensors under `params_ema`: loading it names the conversion
/// command, and the converted file loads and matches the reference.
#[test]
fn nested_official_checkpoint_converts_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("RealESRGAN_tiny.pth");
    let converted = dir.path().join("RealESRGAN_tiny.safetensors");
    let source = esrgan_fixture("rrdb_x4_basicsr.safetensors");
    run_python(&[
        "-c",
        "import sys, torch; from safetensors.torch import load_file; \
         torch.save({'params_ema': load_file(sys.argv[1]), 'iter': 5}, sys.argv[2])",
        source.to_str().unwrap(),
        nested.to_str().unwrap(),
    ]);
    let error = SrModel::load(&nested, Device::Cpu)
        .err()
        .expect("nested checkpoint must not load");
    assert!(matches!(error, SrError::NestedCheckpoint { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("RealESRGAN_tiny.pth")
            && message.contains("scripts/convert_checkpoint.py"),
        "{message}"
    );
    run_python(&[
        "scripts/convert_checkpoint.py",
        nested.to_str().unwrap(),
        converted.to_str().unwrap(),
    ]);
    assert_parity(
        &converted,
        "rrdb_x4",
        "RRDBNet 2 blocks, 6 feat, 4 grow, x4",
        4,
    );
}
