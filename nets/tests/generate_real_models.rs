//! The generation loop on tiny instances of the real networks, made by the reference code with
//! its own initialisation (scripts/fixtures): OpenAI CLIP's architecture judging,
//! taming-transformers' VQGAN decoding, end to end through `render`.

use tessera_nets::fixtures;

use image::RgbImage;
use tch::{Device, Kind, Tensor};
use tessera_core::prompt::PromptSpec;
use tessera_nets::clip::Clip;
use tessera_nets::generate::loss::spherical_distance;
use tessera_nets::generate::{render, Settings};
use tessera_nets::vqgan::VqModel;

/// The tiny CLIP and VQGAN the farm tests also use; the directory lives as long as the models.
fn tiny_models() -> (Clip, VqModel, tempfile::TempDir) {
    let dir = fixtures::tiny_generation_models();
    let clip = Clip::load(&dir.path().join("vit.pt"), Device::Cpu, Kind::Float).unwrap();
    let vq = VqModel::load(
        &dir.path().join("vq.yaml"),
        &dir.path().join("vq.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    (clip, vq, dir)
}

fn settings(prompt: &str, seed: u64, iterations: u32) -> Settings {
    let mut s = Settings::new(PromptSpec::parse(prompt, "", "").unwrap(), seed);
    s.width = 32;
    s.height = 32;
    s.iterations = iterations;
    s.cutn = 8;
    s
}

/// CLIP's spherical distance between the whole picture (no cutouts, no augmentation, so no
/// randomness) and the prompt.
fn whole_image_distance(clip: &Clip, image: &RgbImage, prompt: &str) -> f64 {
    let (w, h) = image.dimensions();
    let pixels = Tensor::from_slice(image.as_raw())
        .view([i64::from(h), i64::from(w), 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0;
    let embed = clip.encode_image(&clip.preprocess(&pixels));
    let text = clip.encode_text(&[prompt]).unwrap();
    spherical_distance(&embed, &text).double_value(&[0, 0])
}

#[test]
fn a_text_prompt_pulls_the_picture_towards_it_through_clip_and_vqgan() {
    let (clip, vq, _dir) = tiny_models();
    let prompt = "a red lighthouse at dusk";
    let start = render(&settings(prompt, 3, 0), &clip, &vq, &mut |_| {}).unwrap();
    let mut reports = 0;
    let out = render(&settings(prompt, 3, 30), &clip, &vq, &mut |_| reports += 1).unwrap();
    assert_eq!((out.image.width(), out.image.height()), (32, 32));
    assert_eq!(reports, 30, "one progress report per iteration");
    // Measured 1.75 -> 1.27 here; each iteration only sees 8 random cutouts, so the per-step
    // loss is noisy, but the whole picture must end up clearly nearer the prompt.
    let before = whole_image_distance(&clip, &start.image, prompt);
    let after = whole_image_distance(&clip, &out.image, prompt);
    assert!(
        after < before - 0.1,
        "distance went from {before} to {after}"
    );
    let again = render(&settings(prompt, 3, 30), &clip, &vq, &mut |_| {}).unwrap();
    assert_eq!(out.png, again.png, "same seed, same picture");
}

#[test]
fn back_propagating_vqgan_stage_by_stage_gives_the_same_picture() {
    let (clip, vq, _dir) = tiny_models();
    let mut s = settings("a red lighthouse at dusk|fog:-0.5", 4, 6);
    let kept = render(&s, &clip, &vq, &mut |_| {}).unwrap();
    s.recompute_decoder = true;
    let staged = render(&s, &clip, &vq, &mut |_| {}).unwrap();
    assert!(
        vq.decode_stage_count() > 3,
        "the tiny VQGAN has several stages"
    );
    assert_eq!(kept.image, staged.image);
    assert_eq!(kept.losses, staged.losses);
}

#[test]
fn a_prompt_longer_than_clips_context_is_refused_with_the_count() {
    let (clip, vq, _dir) = tiny_models();
    let long = "word ".repeat(100);
    let err = render(&settings(&long, 1, 1), &clip, &vq, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("too many"), "{err}");
}
