//! The upscaler on the real Real-ESRGAN weights installed by `scripts/setup.sh`: seamless
//! tiling, every picture kind, and the `tessera-worker upscale` command's errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_core::tiles::TileSpec;
use tessera_nets::esrgan::SrModel;
use tessera_nets::imageio::{self, Picture};
use tessera_nets::models::ModelDir;
use tessera_nets::upscale::{crop_rgb, Upscaler};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn models() -> ModelDir {
    let dir = ModelDir::resolve(None);
    if dir.root().is_absolute() {
        dir
    } else {
        ModelDir::new(workspace().join(dir.root()))
    }
}

/// A crop of a real photo from scikit-image (installed by the set-up), as a picture.
fn photo(name: &str, x: u32, y: u32, width: u32, height: u32) -> Picture {
    let path = workspace().join(".deps/photos").join(format!("{name}.png"));
    let full = imageio::read(&path)
        .unwrap_or_else(|e| panic!("{e}: run scripts/setup.sh to install the test photos"));
    let rect = tessera_core::tiles::Rect {
        x,
        y,
        width,
        height,
    };
    let mut picture =
        Picture::from_rgb(width, height, crop_rgb(&full.rgb, full.width, rect)).unwrap();
    picture.grey = full.grey;
    picture
}

fn upscaler(model: &str, tile: u32) -> Upscaler {
    let file = models()
        .find(model)
        .expect("run scripts/setup.sh to install the models");
    let model = SrModel::load(&file.path, tch::Device::Cpu).unwrap();
    let spec = TileSpec {
        tile,
        ..TileSpec::default()
    };
    Upscaler::new(model, spec, tch::Device::Cpu)
}

/// Largest difference in 8-bit levels between two results.
fn worst_levels(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let level = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round();
    a.iter()
        .zip(b)
        .map(|(x, y)| (level(*x) - level(*y)).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tiled_result_matches_untiled_within_one_level_everywhere() {
    let picture = photo("astronaut", 180, 60, 88, 72);
    let untiled = upscaler("realesrgan-x4plus", 0)
        .upscale_rgb(&picture.rgb, picture.width, picture.height)
        .unwrap();
    let tiled_upscaler = upscaler("realesrgan-x4plus", 32);
    let plan = tiled_upscaler.plan(picture.width, picture.height).unwrap();
    assert!(
        plan.tiles.len() >= 9,
        "the test must cross tile borders both ways"
    );
    let tiled = tiled_upscaler
        .upscale_rgb(&picture.rgb, picture.width, picture.height)
        .unwrap();
    let worst = worst_levels(&untiled, &tiled);
    assert!(worst <= 1.0, "tiled differs from untiled by {worst} levels");
}

#[test]
fn hard_pasted_tiles_would_show_seams() {
    // The same comparison without overlap or context: proves the test above can fail.
    let picture = photo("astronaut", 180, 60, 64, 64);
    let whole = upscaler("realesrgan-x4plus", 0);
    let pasted = Upscaler::new(
        SrModel::load(
            &models().find("realesrgan-x4plus").unwrap().path,
            tch::Device::Cpu,
        )
        .unwrap(),
        TileSpec {
            tile: 32,
            pad: 0,
            overlap: 0,
        },
        tch::Device::Cpu,
    );
    let a = whole.upscale_rgb(&picture.rgb, 64, 64).unwrap();
    let b = pasted.upscale_rgb(&picture.rgb, 64, 64).unwrap();
    assert!(worst_levels(&a, &b) > 1.0);
}

#[test]
fn alpha_grey_and_sixteen_bit_pictures_keep_their_kind() {
    let up = upscaler("realesr-animevideov3-x4", 0);
    let mut rgba = photo("coffee", 100, 100, 24, 20);
    rgba.alpha = Some((0..24 * 20).map(|i| (i % 24) as f32 / 23.0).collect());
    let out = up.upscale_picture(&rgba, None).unwrap();
    assert_eq!((out.width, out.height), (96, 80));
    let alpha = out.alpha.as_ref().expect("alpha is upscaled too");
    // The alpha ramp runs left to right: the upscaled one must too.
    assert!(
        alpha[0] < 0.1 && alpha[95] > 0.9,
        "{} {}",
        alpha[0],
        alpha[95]
    );

    let mut grey = photo("camera", 200, 200, 20, 16);
    grey.sixteen_bit = true;
    let out = up.upscale_picture(&grey, Some(2.0)).unwrap();
    assert_eq!(
        (out.width, out.height, out.grey, out.sixteen_bit),
        (40, 32, true, true)
    );
}

fn worker(models: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-worker"));
    command.arg("--models").arg(models);
    command
}

fn run_fails_with(command: &mut Command, expected: &str) {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded unexpectedly: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected '{expected}' in: {stderr}"
    );
}

#[test]
fn command_upscales_jpeg_and_webp_to_png() {
    let dir = tempfile::tempdir().unwrap();
    let picture = photo("chelsea", 200, 100, 40, 30);
    let png = dir.path().join("in.png");
    imageio::write_png(&png, &picture).unwrap();
    let decoded = image::open(&png).unwrap();
    for ext in ["jpg", "webp"] {
        let input = dir.path().join(format!("in.{ext}"));
        decoded.save(&input).unwrap();
        let output = dir.path().join(format!("out-{ext}.png"));
        let status = worker(models().root())
            .args([
                "upscale",
                "--model",
                "realesr-animevideov3-x4",
                "--tile",
                "24",
                "--tile-overlap",
                "8",
            ])
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .status()
            .unwrap();
        assert!(status.success());
        let result = imageio::read(&output).unwrap();
        assert_eq!((result.width, result.height), (160, 120));
    }
}

#[test]
fn command_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    imageio::write_png(&input, &photo("coffee", 0, 0, 20, 20)).unwrap();
    let out = dir.path().join("out.png");
    let installed = models();
    let upscale = |model: &str, input: &Path, extra: &[&str]| {
        let mut c = worker(installed.root());
        c.args(["upscale", "--model", model])
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&out)
            .args(extra);
        c
    };
    run_fails_with(
        &mut upscale("realesrgan-x4plus", &dir.path().join("absent.png"), &[]),
        "absent.png",
    );
    run_fails_with(
        &mut upscale("no-such-model", &input, &[]),
        "unknown model 'no-such-model'",
    );
    run_fails_with(
        &mut upscale("realesrgan-x4plus", &input, &["--tile", "8"]),
        "tile size 8 is too small",
    );
    run_fails_with(
        &mut upscale("realesrgan-x4plus", &input, &["--device", "gpu"]),
        "unknown device 'gpu'",
    );

    // Truncated weights in a models directory of their own.
    let broken = dir.path().join("models");
    std::fs::create_dir(&broken).unwrap();
    let real = models().find("realesr-animevideov3-x4").unwrap().path;
    std::fs::copy(&real, broken.join("cut.param")).unwrap();
    let bin = std::fs::read(real.with_extension("bin")).unwrap();
    std::fs::write(broken.join("cut.bin"), &bin[..bin.len() - 100]).unwrap();
    let mut command = worker(&broken);
    command
        .args(["upscale", "--model", "cut", "--output", "x.png"])
        .arg("--input")
        .arg(&input);
    run_fails_with(&mut command, "cut.bin");
}
