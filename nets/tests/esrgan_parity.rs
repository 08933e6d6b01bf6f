//! Parity of our ESRGAN-family networks with the upstream PyTorch modules (BasicSR's RRDBNet,
//! Real-ESRGAN's SRVGGNetCompact) on random weights in every official key layout and file format.
//! Fixtures: scripts/fixtures/make_esrgan_fixtures.py.

use std::collections::HashMap;

use tch::{Device, Tensor};
use tessera_nets::esrgan::{SrError, SrModel};
use tessera_nets::fixtures::{esrgan_fixture, max_abs_diff, run_python};

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

/// Checkpoints tch cannot read (official ones nest their tensors under `params_ema`; files from
/// before PyTorch 1.6, like the original `RRDB_ESRGAN_x4.pth`, use the legacy format): loading one
/// names the conversion command, and the converted file loads and matches the reference.
#[test]
fn nested_and_legacy_checkpoints_convert_and_load() {
    let cases = [
        (
            "params_ema_nested.pth",
            "{'params_ema': t, 'iter': 5}",
            "True",
            "nested checkpoint",
        ),
        ("legacy_format.pth", "t", "False", "legacy (before 1.6)"),
    ];
    for (name, saved, zip_format, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join(name);
        let converted = dir.path().join("converted.safetensors");
        let source = esrgan_fixture("rrdb_x4_original.pth");
        let script = format!(
            "import sys, torch; t = torch.load(sys.argv[1]); \
             torch.save({saved}, sys.argv[2], _use_new_zipfile_serialization={zip_format})"
        );
        run_python(&[
            "-c",
            &script,
            source.to_str().unwrap(),
            checkpoint.to_str().unwrap(),
        ]);
        let error = SrModel::load(&checkpoint, Device::Cpu)
            .err()
            .expect("must not load");
        assert!(matches!(error, SrError::NeedsConversion { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(name)
                && message.contains(reason)
                && message.contains("scripts/convert_checkpoint.py"),
            "{message}"
        );
        run_python(&[
            "scripts/convert_checkpoint.py",
            checkpoint.to_str().unwrap(),
            converted.to_str().unwrap(),
        ]);
        assert_parity(
            &converted,
            "rrdb_x4",
            "RRDBNet 2 blocks, 6 feat, 4 grow, x4",
            4,
        );
    }
}

/// The pass a farm tile runs, which asks between blocks whether the work is still wanted:
/// never stopped it equals the plain pass bit for bit, having asked once per block; told to
/// stop, it stops before the next block and gives nothing.
#[test]
fn a_pass_asked_to_stop_stops_between_blocks_and_otherwise_changes_nothing() {
    use std::cell::Cell;
    for file in ["rrdb_x4_basicsr.safetensors", "srvgg_x4.safetensors"] {
        let model = SrModel::load(&esrgan_fixture(file), Device::Cpu).unwrap();
        let input = Tensor::rand([1, 3, 12, 12], (tch::Kind::Float, Device::Cpu));
        let plain = model.forward(&input);
        let asked = Cell::new(0);
        let whole = model
            .forward_unless(&input, &|| {
                asked.set(asked.get() + 1);
                false
            })
            .expect("never told to stop");
        assert!(whole.equal(&plain), "{file}");
        assert!(asked.get() > 1, "{file}: asked {} times", asked.get());

        let blocks = asked.get();
        asked.set(0);
        let stopped = model.forward_unless(&input, &|| {
            asked.set(asked.get() + 1);
            true
        });
        assert!(stopped.is_none(), "{file}");
        assert!(
            asked.get() == 1 && blocks > 1,
            "{file}: stopped after asking {} of {blocks} times",
            asked.get()
        );
    }
}
