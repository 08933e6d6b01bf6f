//! The generation loop on tiny random-weight instances of the real networks: OpenAI CLIP's
//! architecture judging, taming-transformers' VQGAN decoding, end to end through `render`.

use tch::{nn::VarStore, Device, Kind};
use tessera_core::prompt::PromptSpec;
use tessera_worker::clip::{
    Clip, ClipConfig, TextTransformerConfig, VisionConfig, VisionTransformerConfig,
};
use tessera_worker::generate::{render, Progress, Settings};
use tessera_worker::vqgan::{VqConfig, VqModel};

const TINY_VQGAN: &str = "model:
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 8
    n_embed: 32
    ddconfig:
      double_z: false
      z_channels: 8
      resolution: 32
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2]
      num_res_blocks: 1
      attn_resolutions: [16]
      dropout: 0.0
";

fn tiny_models() -> (Clip, VqModel, VarStore) {
    tch::manual_seed(7);
    let config = ClipConfig {
        vision: VisionConfig::Transformer(VisionTransformerConfig {
            input_resolution: 32,
            patch_size: 8,
            width: 64,
            layers: 2,
            output_dim: 32,
        }),
        text: TextTransformerConfig {
            context_length: 77,
            vocab_size: 49408,
            width: 64,
            layers: 2,
            output_dim: 32,
        },
    };
    let clip = Clip::random(&config, Device::Cpu, Kind::Float).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let vq = VqModel::new(&vs.root(), &VqConfig::from_yaml(TINY_VQGAN).unwrap());
    // Only the latent is optimised; the loop never steps the networks' weights.
    vs.freeze();
    (clip, vq, vs)
}

fn settings(prompt: &str, seed: u64) -> Settings {
    let mut s = Settings::new(PromptSpec::parse(prompt, "", "").unwrap(), seed);
    s.width = 32;
    s.height = 32;
    s.iterations = 20;
    s.cutn = 4;
    s
}

#[test]
fn a_text_prompt_pulls_the_picture_towards_it_through_clip_and_vqgan() {
    let (clip, vq, _vs) = tiny_models();
    let mut totals = Vec::new();
    let out = render(
        &settings("a red lighthouse at dusk", 3),
        &clip,
        &vq,
        &mut |p: &Progress| totals.push(p.renders[0].total),
    )
    .unwrap();
    assert_eq!((out.image.width(), out.image.height()), (32, 32));
    let (first, last) = (totals[0], *totals.last().unwrap());
    assert!(last < first, "loss went from {first} to {last}");
    let again = render(
        &settings("a red lighthouse at dusk", 3),
        &clip,
        &vq,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out.png, again.png, "same seed, same picture");
}

#[test]
fn a_prompt_longer_than_clips_context_is_refused_with_the_count() {
    let (clip, vq, _vs) = tiny_models();
    let long = "word ".repeat(100);
    let err = render(&settings(&long, 1), &clip, &vq, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("too many"), "{err}");
}
