//! Cutouts: the many small views of the picture that CLIP judges each iteration, as
//! `generate.py` makes them.
//!
//! - `latest` (its default `MakeCutouts`): the whole image average- and max-pooled to CLIP's
//!   resolution, repeated `cutn` times, augmented, plus per-cutout Gaussian noise.
//! - `original` (`MakeCutoutsOrig`): `cutn` random square crops whose side follows `cut_pow`,
//!   each Lanczos-prefiltered and bicubically resized to CLIP's resolution, no augmentation;
//!   the caller applies `clamp_with_grad` to them.

use super::augment::{apply_draws, draw_augments, Augment, AugmentDraw};
use super::rng::Stream;
use std::f64::consts::PI;
use tch::Tensor;
pub use tessera_core::loop_options::CutMethod;

/// Everything that shapes an iteration's cutouts.
#[derive(Clone, Copy, Debug)]
pub struct Cutter<'a> {
    /// How cutouts are made.
    pub method: CutMethod,
    /// Side of each cutout (CLIP's input resolution).
    pub cut_size: i64,
    /// Number of cutouts.
    pub cutn: i64,
    /// Exponent of the crop-size distribution (`original`); above 1 favours small crops.
    pub cut_pow: f64,
    /// Augmentations applied in order (`latest`).
    pub augments: &'a [Augment],
    /// Largest standard deviation of the per-cutout noise (`latest`); 0 disables it.
    pub noise_fac: f64,
}

/// One square crop of the `original` method, in pixels of the picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    /// Side of the square.
    pub size: i64,
    /// Left column.
    pub x: i64,
    /// Top row.
    pub y: i64,
}

/// The random draws of one set of cutouts, kept apart from making them so the loop can show a
/// [`super::record::DrawRecorder`] what it drew (parity tests replay them in the reference).
#[derive(Debug)]
pub enum CutDraws {
    /// `latest`: the augmentations' parameters and the noise.
    Latest {
        /// Each augmentation's parameters, in order.
        augments: Vec<AugmentDraw>,
        /// Each cutout's noise level and the standard normal noise `[cutn, 3, R, R]`, unless
        /// `noise_fac` is 0.
        noise: Option<(Vec<f64>, Tensor)>,
    },
    /// `original`: the crops.
    Original(Vec<Crop>),
}

impl Cutter<'_> {
    /// Cutouts `[cutn, 3, R, R]` of `image` `[1, 3, H, W]`; `stream` gives the geometry and
    /// augmentation parameters, `normal(shape)` the noise.
    pub fn cut(
        &self,
        image: &Tensor,
        stream: &mut Stream,
        normal: impl FnOnce(&[i64]) -> Tensor,
    ) -> Tensor {
        let (side_y, side_x) = (image.size()[2], image.size()[3]);
        self.apply(image, &self.draw(side_x, side_y, stream, normal))
    }

    /// What [`Cutter::cut`] draws for a picture of `side_x` x `side_y`.
    pub fn draw(
        &self,
        side_x: i64,
        side_y: i64,
        stream: &mut Stream,
        normal: impl FnOnce(&[i64]) -> Tensor,
    ) -> CutDraws {
        match self.method {
            CutMethod::Latest => {
                let (n, r) = (self.cutn, self.cut_size);
                let augments = draw_augments(self.augments, n, r, r, stream);
                let noise = (self.noise_fac != 0.0).then(|| {
                    let facs = (0..n)
                        .map(|_| stream.uniform_in(0.0, self.noise_fac))
                        .collect();
                    (facs, normal(&[n, 3, r, r]))
                });
                CutDraws::Latest { augments, noise }
            }
            CutMethod::Original => CutDraws::Original(self.draw_crops(side_x, side_y, stream)),
        }
    }

    fn draw_crops(&self, side_x: i64, side_y: i64, stream: &mut Stream) -> Vec<Crop> {
        let max_size = side_x.min(side_y);
        let min_size = max_size.min(self.cut_size);
        (0..self.cutn)
            .map(|_| {
                let fraction = stream.uniform().powf(self.cut_pow);
                let size = (fraction * (max_size - min_size) as f64 + min_size as f64) as i64;
                let x = stream.below((side_x - size + 1) as u64) as i64;
                let y = stream.below((side_y - size + 1) as u64) as i64;
                Crop { size, x, y }
            })
            .collect()
    }

    /// Cutouts `[cutn, 3, R, R]` of `image` `[1, 3, H, W]` under `draws` (made by
    /// [`Cutter::draw`] for this cutter and picture size).
    pub fn apply(&self, image: &Tensor, draws: &CutDraws) -> Tensor {
        match draws {
            CutDraws::Latest { augments, noise } => self.pooled(image, augments, noise.as_ref()),
            CutDraws::Original(crops) => {
                let cutouts: Vec<Tensor> = crops
                    .iter()
                    .map(|c| {
                        let crop = image.narrow(2, c.y, c.size).narrow(3, c.x, c.size);
                        resample(&crop, self.cut_size, self.cut_size)
                    })
                    .collect();
                Tensor::cat(&cutouts, 0)
            }
        }
    }

    fn pooled(
        &self,
        image: &Tensor,
        augments: &[AugmentDraw],
        noise: Option<&(Vec<f64>, Tensor)>,
    ) -> Tensor {
        let size = [self.cut_size, self.cut_size];
        let pooled = (image.adaptive_avg_pool2d(size) + image.adaptive_max_pool2d(size).0) / 2.0;
        let batch = apply_draws(&pooled.repeat([self.cutn, 1, 1, 1]), augments);
        let Some((facs, normal)) = noise else {
            return batch;
        };
        let facs: Vec<f32> = facs.iter().map(|&f| f as f32).collect();
        let facs = Tensor::from_slice(&facs)
            .view([-1, 1, 1, 1])
            .to_device(batch.device())
            .to_kind(batch.kind());
        &batch + facs * normal.to_kind(batch.kind())
    }
}

/// Resizes `[N, C, H, W]` to `[N, C, dh, dw]`: a Lanczos-2 low-pass along each axis that
/// shrinks, then bicubic interpolation with aligned corners (`generate.py`'s `resample`).
pub fn resample(input: &Tensor, dh: i64, dw: i64) -> Tensor {
    let [n, c, h, w]: [i64; 4] = input.size().try_into().expect("4-d image");
    let mut x = input.reshape([n * c, 1, h, w]);
    if dh < h {
        let kernel = lanczos_kernel(dh as f64 / h as f64, &x);
        let pad = (kernel.size()[0] - 1) / 2;
        x = x.reflection_pad2d([0, 0, pad, pad]).conv2d(
            &kernel.view([1, 1, -1, 1]),
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        );
    }
    if dw < w {
        let kernel = lanczos_kernel(dw as f64 / w as f64, &x);
        let pad = (kernel.size()[0] - 1) / 2;
        x = x.reflection_pad2d([pad, pad, 0, 0]).conv2d(
            &kernel.view([1, 1, 1, -1]),
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        );
    }
    x.reshape([n, c, h, w])
        .upsample_bicubic2d([dh, dw], true, None, None)
}

/// The normalised Lanczos-2 taps for shrinking by `ratio`, on `like`'s device and kind.
fn lanczos_kernel(ratio: f64, like: &Tensor) -> Tensor {
    let taps: Vec<f32> = ramp(ratio, 2.0)
        .into_iter()
        .map(|x| lanczos(x, 2.0))
        .collect::<Vec<f64>>()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let sum: f32 = taps.iter().sum();
    let taps: Vec<f32> = taps.iter().map(|v| v / sum).collect();
    Tensor::from_slice(&taps)
        .to_device(like.device())
        .to_kind(like.kind())
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    }
}

fn lanczos(x: f64, a: f64) -> f64 {
    if -a < x && x < a {
        sinc(x) * sinc(x / a)
    } else {
        0.0
    }
}

/// Sample positions `−k·ratio … k·ratio` covering `width` input pixels, without the two ends
/// (`generate.py`'s `ramp`).
fn ramp(ratio: f64, width: f64) -> Vec<f64> {
    let n = (width / ratio + 1.0).ceil() as usize;
    // Accumulated in double and stored in single precision, as the reference does.
    let half: Vec<f64> = (0..n)
        .scan(0.0f64, |cur, _| {
            let value = *cur as f32 as f64;
            *cur += ratio;
            Some(value)
        })
        .collect();
    let full: Vec<f64> = half[1..]
        .iter()
        .rev()
        .map(|v| -v)
        .chain(half.iter().copied())
        .collect();
    full[1..full.len() - 1].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::augment::DEFAULT_AUGMENTS;
    use crate::generate::rng::{Purpose, RunRng};
    use tch::{Device, Kind};

    fn cutter(method: CutMethod) -> Cutter<'static> {
        Cutter {
            method,
            cut_size: 8,
            cutn: 5,
            cut_pow: 1.0,
            augments: &DEFAULT_AUGMENTS,
            noise_fac: 0.1,
        }
    }

    #[test]
    fn lanczos_taps_are_symmetric_and_sum_to_one() {
        let k = lanczos_kernel(0.25, &Tensor::zeros([1], (Kind::Float, Device::Cpu)));
        let taps: Vec<f32> = Vec::try_from(&k).unwrap();
        assert_eq!(taps.len() % 2, 1);
        assert!((taps.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        for (a, b) in taps.iter().zip(taps.iter().rev()) {
            assert!((a - b).abs() < 1e-7);
        }
    }

    #[test]
    fn resample_keeps_a_constant_image_constant() {
        let x = Tensor::full([1, 3, 40, 30], 0.25, (Kind::Float, Device::Cpu));
        let y = resample(&x, 8, 8);
        assert_eq!(y.size(), vec![1, 3, 8, 8]);
        assert!((y - 0.25).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn both_methods_give_cutn_cutouts_of_the_cut_size() {
        let image = crate::torch_rng::exclusive(|| {
            Tensor::rand([1, 3, 20, 28], (Kind::Float, Device::Cpu))
        });
        let rng = RunRng::new(4);
        for method in [CutMethod::Latest, CutMethod::Original] {
            let mut s = rng.stream(0, Purpose::Cutouts);
            let cuts = cutter(method).cut(&image, &mut s, |shape| {
                rng.randn(0, Purpose::CutoutNoise, shape, Device::Cpu)
            });
            assert_eq!(cuts.size(), vec![5, 3, 8, 8], "{method:?}");
        }
    }

    #[test]
    fn latest_without_augments_or_noise_is_the_pooled_image() {
        let image = crate::torch_rng::exclusive(|| {
            Tensor::rand([1, 3, 16, 16], (Kind::Float, Device::Cpu))
        });
        let plain = Cutter {
            augments: &[],
            noise_fac: 0.0,
            ..cutter(CutMethod::Latest)
        };
        let mut s = RunRng::new(1).stream(0, Purpose::Cutouts);
        let cuts = plain.cut(&image, &mut s, |_| unreachable!("no noise requested"));
        // 16 -> 8: each output pixel pools a 2x2 block.
        let block = image.get(0).get(1).narrow(0, 0, 2).narrow(1, 0, 2);
        let expected = (block.mean(Kind::Float) + block.max()) / 2.0;
        let got = cuts.get(3).get(1).get(0).get(0);
        assert!((got - expected).abs().double_value(&[]) < 1e-6);
    }
}
