//! The generation loop's hot spot, measured: forward plus backward (to the pixels) of the ViT-B/32
//! image encoder on a batch of 32 cutouts, for `tessera-worker bench clip` to compare with
//! `scripts/bench/clip_reference.py` (the same work in PyTorch).

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use tessera_nets::clip::{Clip, ClipConfig};

/// Cutouts per step, as VQGAN+CLIP's default `cutn`.
const BATCH: i64 = 32;

/// Milliseconds per forward+backward of a random-weight ViT-B/32 image encoder on 32 images of
/// 224x224 (fp32, on the GPU when there is one), averaged over `iters` after one warm-up step.
pub fn image_forward_backward_ms(iters: u32) -> f64 {
    let device = Device::cuda_if_available();
    let clip = Clip::random(&ClipConfig::vit_b_32(), device, Kind::Float)
        .expect("a random ViT-B/32 needs only the bundled vocabulary");
    let resolution = clip.input_resolution();
    let pixels = tessera_nets::torch_rng::exclusive(|| {
        Tensor::rand([BATCH, 3, resolution, resolution], (Kind::Float, device))
    })
    .set_requires_grad(true);
    let step = || {
        let loss = clip.encode_image(&pixels).sum(Kind::Float);
        let gradients = Tensor::run_backward(&[loss], &[&pixels], false, false);
        synchronize(device);
        gradients
    };
    step();
    let iters = iters.max(1);
    let start = Instant::now();
    for _ in 0..iters {
        step();
    }
    start.elapsed().as_secs_f64() * 1000.0 / f64::from(iters)
}

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}
