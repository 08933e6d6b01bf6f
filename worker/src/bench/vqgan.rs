//! Timing of the VQGAN decoder's forward plus backward pass, the cost the generation loop pays per
//! step, so `tessera-worker bench vqgan` can compare it with PyTorch (scripts/bench/vqgan_reference.py).

use std::time::Instant;

use tch::nn;
use tch::{Cuda, Device, Kind, Tensor};

use tessera_nets::vqgan::{VqConfig, VqModel};

/// Milliseconds per decoder forward + backward (gradient with respect to the latent only, weights
/// frozen, as in the generation loop) for a `size`x`size` image with the full-size
/// vqgan_imagenet_f16_16384 architecture and random weights. `size` is rounded down to a multiple
/// of 16. Runs on the GPU when there is one. One untimed warm-up iteration precedes `iters` timed ones.
pub fn decoder_forward_backward_ms(size: i64, iters: u32) -> f64 {
    let device = Device::cuda_if_available();
    let cfg = VqConfig::imagenet_f16_16384();
    let mut vs = nn::VarStore::new(device);
    let side = (size / cfg.downsampling_factor()).max(1);
    let (model, z) = tessera_nets::torch_rng::exclusive(|| {
        tch::manual_seed(0);
        let model = VqModel::new(&vs.root(), &cfg);
        let z = Tensor::randn([1, cfg.embed_dim, side, side], (Kind::Float, device));
        (model, z)
    });
    vs.freeze();
    let mut z = z.set_requires_grad(true);
    let mut step = || {
        let loss = model.decode(&z).square().mean(None);
        z.zero_grad();
        loss.backward();
    };
    step();
    synchronize(device);
    let start = Instant::now();
    for _ in 0..iters {
        step();
    }
    synchronize(device);
    start.elapsed().as_secs_f64() * 1000.0 / f64::from(iters.max(1))
}

/// Waits for queued GPU work so the wall clock measures it.
fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        Cuda::synchronize(index as i64);
    }
}
