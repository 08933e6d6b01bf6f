//! Reproducible randomness for renders: every draw is a pure function of (seed, iteration,
//! purpose), never of what was drawn before.
//!
//! That is what makes resume and batching exact: a run resumed at iteration k draws what the
//! uninterrupted run drew at k, and a render batched with others draws what it draws alone,
//! because no stream is shared or carried between iterations. The run's "RNG state" is
//! therefore just its seed and iteration.
//!
//! Small parameters (crop sizes, augmentation angles, coin flips, token ids) come from a
//! SplitMix64 stream in Rust, identical on every device. Large normal draws (the cutout noise,
//! millions of numbers per iteration) are made by torch on the run's device for speed; torch's
//! generator is process-global, so each such draw reseeds it from the key while holding it
//! ([`crate::torch_rng::exclusive`]).

use tch::{Device, Kind, Tensor};

/// What a draw is for; part of the key so different uses never share numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Random codebook tokens, random pixels or gradient colours of the initial latent.
    Init,
    /// Cutout geometry and augmentation parameters of one iteration.
    Cutouts,
    /// The additive noise on one iteration's cutouts.
    CutoutNoise,
    /// Cutouts of the n-th image prompt (geometry and augmentations).
    ImagePrompt(u32),
    /// Noise on the cutouts of the n-th image prompt.
    ImagePromptNoise(u32),
}

impl Purpose {
    fn code(self) -> u64 {
        match self {
            Purpose::Init => 1,
            Purpose::Cutouts => 2,
            Purpose::CutoutNoise => 3,
            Purpose::ImagePrompt(n) => (4 << 32) | u64::from(n),
            Purpose::ImagePromptNoise(n) => (5 << 32) | u64::from(n),
        }
    }
}

/// The random source of one render (one batch element): its seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunRng {
    seed: u64,
}

impl RunRng {
    /// The random source of a render with this seed.
    pub fn new(seed: u64) -> RunRng {
        RunRng { seed }
    }

    fn key(&self, iteration: u64, purpose: Purpose) -> u64 {
        let mut k = splitmix(self.seed ^ 0x7465_7373_6572_6131);
        k = splitmix(k ^ iteration);
        splitmix(k ^ purpose.code())
    }

    /// A fresh stream for the small draws of (iteration, purpose).
    pub fn stream(&self, iteration: u64, purpose: Purpose) -> Stream {
        Stream {
            state: self.key(iteration, purpose),
        }
    }

    /// Standard normal numbers of `shape` drawn by torch on `device` from the key of
    /// (iteration, purpose): the same numbers every time on the same device.
    pub fn randn(&self, iteration: u64, purpose: Purpose, shape: &[i64], device: Device) -> Tensor {
        let key = self.key(iteration, purpose);
        seeded_randn(key, shape, device)
    }
}

/// Standard normal numbers from torch's generator reseeded with `seed` (CPU draws match
/// `torch.Generator().manual_seed(seed)` followed by `normal_`).
pub fn seeded_randn(seed: u64, shape: &[i64], device: Device) -> Tensor {
    crate::torch_rng::exclusive(|| {
        // The C API takes the seed as a signed integer; the bits are what torch uses.
        tch::manual_seed(seed as i64);
        Tensor::randn(shape, (Kind::Float, device))
    })
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SplitMix64 stream: small, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Stream {
    state: u64,
}

impl Stream {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [low, high).
    pub fn uniform_in(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Uniform integer in 0..n (n > 0), by multiply-shift (bias below 2^-32 for our n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability p.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A uniformly random permutation of 0..n (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_depend_only_on_seed_iteration_and_purpose() {
        let rng = RunRng::new(7);
        let a: Vec<u64> = (0..4)
            .map(|_| rng.stream(3, Purpose::Cutouts).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let other_iteration = rng.stream(4, Purpose::Cutouts).next_u64();
        let other_purpose = rng.stream(3, Purpose::Init).next_u64();
        let other_seed = RunRng::new(8).stream(3, Purpose::Cutouts).next_u64();
        assert!(![other_iteration, other_purpose, other_seed].contains(&a[0]));
        assert_ne!(
            rng.stream(0, Purpose::ImagePrompt(0)).next_u64(),
            rng.stream(0, Purpose::ImagePrompt(1)).next_u64()
        );
    }

    #[test]
    fn uniform_draws_cover_their_range() {
        let mut s = RunRng::new(1).stream(0, Purpose::Init);
        let draws: Vec<f64> = (0..10_000).map(|_| s.uniform_in(-2.0, 3.0)).collect();
        assert!(draws.iter().all(|&x| (-2.0..3.0).contains(&x)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
        let counts = (0..6000).fold([0u32; 6], |mut c, _| {
            c[s.below(6) as usize] += 1;
            c
        });
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
        let mut p = s.permutation(5);
        p.sort();
        assert_eq!(p, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn torch_draws_repeat_for_the_same_key() {
        let rng = RunRng::new(11);
        let a = rng.randn(2, Purpose::CutoutNoise, &[3, 17], Device::Cpu);
        let _ = crate::torch_rng::exclusive(|| Tensor::randn([5], (Kind::Float, Device::Cpu)));
        let b = rng.randn(2, Purpose::CutoutNoise, &[3, 17], Device::Cpu);
        assert!(a.equal(&b));
        let c = rng.randn(3, Purpose::CutoutNoise, &[3, 17], Device::Cpu);
        assert!(!a.equal(&c));
    }

    #[test]
    fn draws_on_other_threads_never_land_inside_a_keyed_draw() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let rng = RunRng::new(5);
        let expected = rng.randn(0, Purpose::CutoutNoise, &[64, 64], Device::Cpu);
        let stop = AtomicBool::new(false);
        let repeats = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = crate::torch_rng::exclusive(|| {
                        Tensor::randn([4096], (Kind::Float, Device::Cpu))
                    });
                }
            });
            let repeats = (0..200)
                .filter(|_| {
                    rng.randn(0, Purpose::CutoutNoise, &[64, 64], Device::Cpu)
                        .equal(&expected)
                })
                .count();
            stop.store(true, Ordering::Relaxed);
            repeats
        });
        assert_eq!(repeats, 200);
    }
}
