//! The differentiable augmentations `generate.py` applies to its cutouts (through kornia), run on
//! the cutouts' device: random affine, random perspective, colour jitter and random erasing.
//!
//! Parameters follow kornia's samplers for the settings `generate.py` uses: each augmentation
//! applies to each cutout with probability 0.7 (erasing: one decision and one rectangle for the
//! whole batch, kornia's `same_on_batch=True`). They are drawn from the run's [`Stream`], so an
//! iteration's augmentations depend only on (seed, iteration). Warps sample bilinearly with zero
//! padding at pixel centres (`align_corners=False`), consistently in every step.

use super::rng::Stream;
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};
pub use tessera_core::loop_options::{Augment, DEFAULT_AUGMENTS};

/// Probability that an augmentation applies to a cutout.
const P: f64 = 0.7;

/// A 3x3 homogeneous transform of pixel coordinates `(x, y, 1)`.
pub type Mat3 = [[f64; 3]; 3];

/// One augmentation's random parameters for a batch of cutouts, as drawn: `None` for a cutout
/// the augmentation skips (its coin came up tails). Kept apart from applying them, so the loop
/// can hand what it drew to a [`super::record::DrawRecorder`] (parity tests replay the draws in
/// the PyTorch reference).
#[derive(Clone, Debug, PartialEq)]
pub enum AugmentDraw {
    /// Affine parameters of each cutout.
    Affine(Vec<Option<AffineParams>>),
    /// Where each cutout's four corners (top-left, top-right, bottom-right, bottom-left) go.
    Perspective(Vec<Option<[(f64, f64); 4]>>),
    /// Colour factors of each cutout and the order of the four adjustments (one for the batch).
    Jitter {
        /// Per-cutout factors.
        factors: Vec<Option<JitterFactors>>,
        /// Indices into (brightness, contrast, saturation, hue).
        order: Vec<usize>,
    },
    /// The rectangle erased from every cutout, if the batch's coin came up.
    Erasing(Option<Rect>),
}

/// Applies `augments` in order to cutouts `[N, 3, R, R]`, drawing parameters from `stream`.
pub fn augment(batch: &Tensor, augments: &[Augment], stream: &mut Stream) -> Tensor {
    let [n, _, h, w] = dims(batch);
    apply_draws(batch, &draw_augments(augments, n, w, h, stream))
}

/// The parameters of `augments`, in order, for `n` cutouts of `w` x `h`: what [`augment`] draws.
pub fn draw_augments(
    augments: &[Augment],
    n: i64,
    w: i64,
    h: i64,
    stream: &mut Stream,
) -> Vec<AugmentDraw> {
    augments
        .iter()
        .map(|&a| draw_augment(a, n, w, h, stream))
        .collect()
}

fn draw_augment(augment: Augment, n: i64, w: i64, h: i64, stream: &mut Stream) -> AugmentDraw {
    match augment {
        Augment::Affine => {
            AugmentDraw::Affine(per_sample(n, stream, |s| AffineParams::sample(s, h)))
        }
        Augment::Perspective => {
            AugmentDraw::Perspective(per_sample(n, stream, |s| perspective_end_points(s, w, h)))
        }
        Augment::Jitter => AugmentDraw::Jitter {
            factors: per_sample(n, stream, JitterFactors::sample),
            order: stream.permutation(4),
        },
        Augment::Erasing => {
            AugmentDraw::Erasing(stream.chance(P).then(|| erasing_rect(stream, w, h)))
        }
    }
}

/// Applies drawn augmentations in order to cutouts `[N, 3, R, R]`.
pub fn apply_draws(batch: &Tensor, draws: &[AugmentDraw]) -> Tensor {
    draws
        .iter()
        .fold(batch.shallow_clone(), |x, d| apply(d, &x))
}

fn apply(draw: &AugmentDraw, x: &Tensor) -> Tensor {
    let [_, _, h, w] = dims(x);
    match draw {
        AugmentDraw::Affine(params) => {
            let mats: Vec<Option<Mat3>> = params
                .iter()
                .map(|p| p.map(|p| affine_matrix(&p, w, h)))
                .collect();
            warp(x, &mats)
        }
        AugmentDraw::Perspective(ends) => {
            let mats: Vec<Option<Mat3>> = ends
                .iter()
                .map(|e| e.map(|e| perspective_matrix(&corners(w, h), &e)))
                .collect();
            warp(x, &mats)
        }
        AugmentDraw::Jitter { factors, order } => jitter(x, factors, order),
        AugmentDraw::Erasing(rect) => erase(x, *rect),
    }
}

fn dims(x: &Tensor) -> [i64; 4] {
    let s = x.size();
    [s[0], s[1], s[2], s[3]]
}

/// For each of `n` samples: a coin flip with probability P, then parameters if it came up.
fn per_sample<T>(
    n: i64,
    stream: &mut Stream,
    mut draw: impl FnMut(&mut Stream) -> T,
) -> Vec<Option<T>> {
    (0..n)
        .map(|_| stream.chance(P).then(|| draw(stream)))
        .collect()
}

/// Applies `f` only to the samples that have parameters (handing it their parameters) and
/// leaves the others untouched, as kornia does with its per-sample probability; the skipped
/// samples cost nothing.
fn on_applied<T: Copy>(
    x: &Tensor,
    params: &[Option<T>],
    f: impl FnOnce(&Tensor, &[T]) -> Tensor,
) -> Tensor {
    let (chosen, values): (Vec<i64>, Vec<T>) = params
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i as i64, p)))
        .unzip();
    if chosen.is_empty() {
        return x.shallow_clone();
    }
    if chosen.len() == params.len() {
        return f(x, &values);
    }
    let index = Tensor::from_slice(&chosen).to_device(x.device());
    x.index_copy(0, &index, &f(&x.index_select(0, &index), &values))
}

/// kornia's RandomAffine(degrees=15, translate=0.1, shear=5) parameters, in degrees and pixels.
///
/// kornia reads a scalar `translate` as the range `[0 − t, 0 + t]` clamped to its bounds
/// `[0, 1]`, that is `(0, 0.1)`, and takes the pair as the largest (horizontal, vertical)
/// fractions: `generate.py`'s cutouts move vertically by up to a tenth of their height and never
/// horizontally, and so do ours.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineParams {
    /// Rotation, degrees (kornia's sign: positive turns clockwise as displayed).
    pub angle: f64,
    /// Translation in pixels (x, y).
    pub translate: (f64, f64),
    /// Shear along x, degrees.
    pub shear_x: f64,
    /// Shear along y, degrees (always 0 for `generate.py`'s scalar shear).
    pub shear_y: f64,
}

impl AffineParams {
    fn sample(s: &mut Stream, h: i64) -> AffineParams {
        AffineParams {
            angle: s.uniform_in(-15.0, 15.0),
            translate: (0.0, s.uniform_in(-0.1, 0.1) * h as f64),
            shear_x: s.uniform_in(-5.0, 5.0),
            shear_y: 0.0,
        }
    }
}

/// The source→destination pixel transform kornia builds for these parameters
/// (`get_affine_matrix2d`: rotation about the centre, translation, then x-then-y shear).
pub fn affine_matrix(p: &AffineParams, w: i64, h: i64) -> Mat3 {
    let (cx, cy) = (w as f64 / 2.0 - 0.5, h as f64 / 2.0 - 0.5);
    let (sin, cos) = (-p.angle * PI / 180.0).sin_cos();
    let rotation = [
        [cos, sin, (1.0 - cos) * cx - sin * cy + p.translate.0],
        [-sin, cos, sin * cx + (1.0 - cos) * cy + p.translate.1],
        [0.0, 0.0, 1.0],
    ];
    let (tx, ty) = (
        (p.shear_x * PI / 180.0).tan(),
        (p.shear_y * PI / 180.0).tan(),
    );
    let shear = [
        [1.0, -tx, tx * cy],
        [-ty, 1.0 + tx * ty, ty * (cx - tx * cy)],
        [0.0, 0.0, 1.0],
    ];
    mat_mul(&rotation, &shear)
}

fn corners(w: i64, h: i64) -> [(f64, f64); 4] {
    let (x, y) = ((w - 1) as f64, (h - 1) as f64);
    [(0.0, 0.0), (x, 0.0), (x, y), (0.0, y)]
}

/// kornia's RandomPerspective(0.7) end points: each corner moves inwards by up to 0.35 of the side.
fn perspective_end_points(s: &mut Stream, w: i64, h: i64) -> [(f64, f64); 4] {
    let (fx, fy) = (0.7 * w as f64 / 2.0, 0.7 * h as f64 / 2.0);
    let inwards = [(1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0)];
    let mut end = corners(w, h);
    for (point, (sx, sy)) in end.iter_mut().zip(inwards) {
        point.0 += fx * s.uniform() * sx;
        point.1 += fy * s.uniform() * sy;
    }
    end
}

/// The homography taking the four `src` points to the four `dst` points (exact solve of the
/// 8x8 system with h33 = 1).
pub fn perspective_matrix(src: &[(f64, f64); 4], dst: &[(f64, f64); 4]) -> Mat3 {
    let mut a = [[0.0f64; 9]; 8];
    for (i, (&(x, y), &(u, v))) in src.iter().zip(dst).enumerate() {
        a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
        a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
    }
    let h = solve8(a);
    [[h[0], h[1], h[2]], [h[3], h[4], h[5]], [h[6], h[7], 1.0]]
}

/// Gauss-Jordan elimination with partial pivoting on an augmented 8x9 system.
fn solve8(mut a: [[f64; 9]; 8]) -> [f64; 8] {
    for col in 0..8 {
        let pivot = (col..8)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let p = a[col][col];
        for value in a[col].iter_mut() {
            *value /= p;
        }
        for row in 0..8 {
            if row != col {
                let factor = a[row][col];
                let pivot_row = a[col];
                for (value, pv) in a[row].iter_mut().zip(pivot_row) {
                    *value -= factor * pv;
                }
            }
        }
    }
    std::array::from_fn(|i| a[i][8])
}

fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

fn mat_inverse(m: &Mat3) -> Mat3 {
    let c = |i: usize, j: usize| {
        let (r0, r1) = ((i + 1) % 3, (i + 2) % 3);
        let (c0, c1) = ((j + 1) % 3, (j + 2) % 3);
        m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]
    };
    let det: f64 = (0..3).map(|j| m[0][j] * c(0, j)).sum();
    std::array::from_fn(|i| std::array::from_fn(|j| c(j, i) / det))
}

/// Pixel → normalised coordinates at pixel centres (`align_corners=False`).
fn to_normalised(w: i64, h: i64) -> Mat3 {
    let (w, h) = (w as f64, h as f64);
    [
        [2.0 / w, 0.0, 1.0 / w - 1.0],
        [0.0, 2.0 / h, 1.0 / h - 1.0],
        [0.0, 0.0, 1.0],
    ]
}

/// Warps every sample by its source→destination pixel transform (`None`: left untouched), as
/// kornia's `warp_perspective`/`warp_affine`: bilinear, zero padding.
pub fn warp(x: &Tensor, src_to_dst: &[Option<Mat3>]) -> Tensor {
    on_applied(x, src_to_dst, warp_all)
}

fn warp_all(x: &Tensor, src_to_dst: &[Mat3]) -> Tensor {
    let [n, _, h, w] = dims(x);
    let norm = to_normalised(w, h);
    let norm_inv = mat_inverse(&norm);
    // For each destination pixel (normalised), where to read in the source (normalised).
    let sample_from: Vec<f32> = src_to_dst
        .iter()
        .flat_map(|m| {
            let g = mat_mul(&mat_mul(&norm, &mat_inverse(m)), &norm_inv);
            g.into_iter()
                .flatten()
                .map(|v| v as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let device = x.device();
    let g = Tensor::from_slice(&sample_from)
        .view([n, 3, 3])
        .to_device(device);
    let grid = projected_grid(&g, h, w, device).to_kind(x.kind());
    Tensor::grid_sampler(x, &grid, 0, 0, false)
}

/// `[N, H, W, 2]` sampling grid: pixel centres pushed through each 3x3 `g` and projected.
fn projected_grid(g: &Tensor, h: i64, w: i64, device: Device) -> Tensor {
    let opts = (Kind::Float, device);
    let xs = Tensor::linspace(-1.0 + 1.0 / w as f64, 1.0 - 1.0 / w as f64, w, opts);
    let ys = Tensor::linspace(-1.0 + 1.0 / h as f64, 1.0 - 1.0 / h as f64, h, opts);
    let grids = Tensor::meshgrid_indexing(&[&ys, &xs], "ij");
    let base =
        Tensor::stack(&[&grids[1], &grids[0], &grids[0].ones_like()], -1).view([1, h * w, 3]);
    let points = base.matmul(&g.transpose(1, 2));
    let xy = points.narrow(2, 0, 2) / points.narrow(2, 2, 1);
    xy.view([-1, h, w, 2])
}

/// Per-sample colour factors of kornia's ColorJitter(0.1, 0.1, 0.1, 0.1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterFactors {
    /// Multiplier of the pixel values.
    pub brightness: f64,
    /// Blend factor against the mean grey level.
    pub contrast: f64,
    /// Blend factor against the grey image.
    pub saturation: f64,
    /// Hue rotation in turns.
    pub hue: f64,
}

impl JitterFactors {
    fn sample(s: &mut Stream) -> JitterFactors {
        // kornia draws brightness, contrast, hue, saturation in that order.
        let brightness = s.uniform_in(0.9, 1.1);
        let contrast = s.uniform_in(0.9, 1.1);
        let hue = s.uniform_in(-0.1, 0.1);
        let saturation = s.uniform_in(0.9, 1.1);
        JitterFactors {
            brightness,
            contrast,
            saturation,
            hue,
        }
    }
}

/// kornia's ColorJitter: clamp, then brightness (0), contrast (1), saturation (2) and hue (3)
/// in `order`, each clamped to [0, 1]; samples without factors are left untouched.
pub fn jitter(x: &Tensor, factors: &[Option<JitterFactors>], order: &[usize]) -> Tensor {
    on_applied(x, factors, |x, factors| jitter_all(x, factors, order))
}

fn jitter_all(x: &Tensor, factors: &[JitterFactors], order: &[usize]) -> Tensor {
    let column = |f: fn(&JitterFactors) -> f64| {
        let values: Vec<f32> = factors.iter().map(|p| f(p) as f32).collect();
        Tensor::from_slice(&values)
            .view([-1, 1, 1, 1])
            .to_device(x.device())
            .to_kind(x.kind())
    };
    let mut out = x.clamp(0.0, 1.0);
    for &step in order {
        out = match step {
            0 => (&out * column(|f| f.brightness)).clamp(0.0, 1.0),
            1 => {
                let c = column(|f| f.contrast);
                let mean = grey(&out).mean_dim([-2i64, -1].as_slice(), true, out.kind());
                (&out * &c + mean * (-&c + 1.0)).clamp(0.0, 1.0)
            }
            2 => {
                let s = column(|f| f.saturation);
                ((-&s + 1.0) * grey(&out) + &s * &out).clamp(0.0, 1.0)
            }
            _ => rotate_hue(&out, &(column(|f| f.hue) * (2.0 * PI))),
        };
    }
    out.clamp(0.0, 1.0)
}

/// ITU-R BT.601 luma `[N, 1, H, W]`.
fn grey(x: &Tensor) -> Tensor {
    let c = |i| x.narrow(1, i, 1);
    c(0) * 0.299 + c(1) * 0.587 + c(2) * 0.114
}

/// Adds `radians` `[N, 1, 1, 1]` to the hue in HSV space (kornia's `adjust_hue`).
fn rotate_hue(rgb: &Tensor, radians: &Tensor) -> Tensor {
    let (h, s, v) = rgb_to_hsv(rgb);
    let two_pi = 2.0 * PI;
    let h = (h + radians).remainder(two_pi);
    let h = h.masked_fill(&h.ge(two_pi), 0.0);
    hsv_to_rgb(&h, &s, &v)
}

/// kornia's `rgb_to_hsv` (hue in radians), each channel `[N, 1, H, W]`.
fn rgb_to_hsv(rgb: &Tensor) -> (Tensor, Tensor, Tensor) {
    let eps = 1e-8;
    let max = rgb.amax([1i64].as_slice(), true);
    let min = rgb.amin([1i64].as_slice(), true);
    let delta = &max - &min;
    let s_divisor = (&max + eps).where_self(&max.ne(0.0), &max.ones_like());
    let s = &delta / s_divisor;
    let deltac = delta.where_self(&delta.ne(0.0), &delta.ones_like());
    let c = |i| rgb.narrow(1, i, 1);
    let (r, g, b) = (c(0), c(1), c(2));
    let (rc, gc, bc) = (&max - &r, &max - &g, &max - &b);
    let h1 = &bc - &gc;
    let h2 = (&rc - &bc) + &deltac * 2.0;
    let h3 = (&gc - &rc) + &deltac * 4.0;
    let red_max = r.ge_tensor(&g).logical_and(&r.ge_tensor(&b));
    let h = h1.where_self(&red_max, &h2.where_self(&g.ge_tensor(&b), &h3)) / &deltac;
    let h = (h / 6.0).remainder(1.0) * (2.0 * PI);
    let h = h.masked_fill(&h.ge(2.0 * PI), 0.0);
    (h, s, max)
}

/// kornia's `hsv_to_rgb` (hue in radians), returning `[N, 3, H, W]`.
fn hsv_to_rgb(h: &Tensor, s: &Tensor, v: &Tensor) -> Tensor {
    let h = h / (2.0 * PI);
    let sector = (&h * 6.0).floor().remainder(6.0);
    let f = (&h * 6.0).remainder(6.0) - &sector;
    let p = v * (1.0 - s);
    let q = v * (1.0 - &f * s);
    let t = v * (1.0 - (1.0 - &f) * s);
    let sector = sector.clamp(0.0, 5.0);
    let pick = |table: [&Tensor; 6]| {
        (0..5).rev().fold(table[5].shallow_clone(), |acc, i| {
            table[i].where_self(&sector.eq(i as f64), &acc)
        })
    };
    let r = pick([v, &q, &p, &p, &t, v]);
    let g = pick([&t, v, v, &q, &p, &p]);
    let b = pick([&p, &p, &t, v, v, &q]);
    Tensor::cat(&[r, g, b], 1)
}

/// A rectangle of pixels: columns `x..x+w`, rows `y..y+h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: i64,
    /// Top row.
    pub y: i64,
    /// Width in pixels.
    pub w: i64,
    /// Height in pixels.
    pub h: i64,
}

/// kornia's RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1/0.3)) rectangle.
fn erasing_rect(s: &mut Stream, w: i64, h: i64) -> Rect {
    let area = s.uniform_in(0.1, 0.4) * (w * h) as f64;
    let narrow = s.uniform_in(0.3, 1.0);
    let wide = s.uniform_in(1.0, 1.0 / 0.3);
    let ratio = if s.uniform() >= 0.5 { narrow } else { wide };
    let rect_h = (area * ratio).sqrt().round().clamp(1.0, h as f64) as i64;
    let rect_w = (area / ratio).sqrt().round().clamp(1.0, w as f64) as i64;
    let x = (s.uniform() * (w - rect_w + 1) as f64).floor() as i64;
    let y = (s.uniform() * (h - rect_h + 1) as f64).floor() as i64;
    Rect {
        x: x.min(w - rect_w),
        y: y.min(h - rect_h),
        w: rect_w,
        h: rect_h,
    }
}

/// Zeroes `rect` in every sample (no gradient flows from the erased pixels).
pub fn erase(x: &Tensor, rect: Option<Rect>) -> Tensor {
    let Some(r) = rect else {
        return x.shallow_clone();
    };
    let [_, _, h, w] = dims(x);
    let keep = Tensor::ones([1, 1, h, w], (Kind::Bool, x.device()));
    let _ = keep.narrow(2, r.y, r.h).narrow(3, r.x, r.w).fill_(0);
    x.where_self(&keep, &x.zeros_like())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::rng::{Purpose, RunRng};

    fn apply(m: &Mat3, (x, y): (f64, f64)) -> (f64, f64) {
        let z = m[2][0] * x + m[2][1] * y + m[2][2];
        (
            (m[0][0] * x + m[0][1] * y + m[0][2]) / z,
            (m[1][0] * x + m[1][1] * y + m[1][2]) / z,
        )
    }

    fn fixture() -> std::collections::HashMap<String, Tensor> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/loop_augment.safetensors");
        Tensor::read_safetensors(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (regenerate with scripts/fixtures/loop_augment.py)",
                    path.display()
                )
            })
            .into_iter()
            .collect()
    }

    fn row(t: &Tensor, i: i64) -> Vec<f64> {
        Vec::<f64>::try_from(t.get(i).to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn assert_close(ours: &Tensor, kornia: &Tensor, what: &str) {
        let diff = (ours - kornia).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{what}: max diff {diff} from kornia");
    }

    #[test]
    fn warps_match_kornia() {
        let f = fixture();
        let x = &f["x"];
        let [n, _, h, w] = dims(x);
        let affine: Vec<Option<Mat3>> = (0..n)
            .map(|i| {
                let p = row(&f["affine"], i);
                let params = AffineParams {
                    angle: p[0],
                    translate: (p[1], p[2]),
                    shear_x: p[3],
                    shear_y: p[4],
                };
                Some(affine_matrix(&params, w, h))
            })
            .collect();
        assert_close(&warp(x, &affine), &f["affine_out"], "affine");
        let perspective: Vec<Option<Mat3>> = (0..n)
            .map(|i| {
                let e = row(&f["perspective_end"], i);
                let end = [(e[0], e[1]), (e[2], e[3]), (e[4], e[5]), (e[6], e[7])];
                Some(perspective_matrix(&corners(w, h), &end))
            })
            .collect();
        assert_close(&warp(x, &perspective), &f["perspective_out"], "perspective");
    }

    #[test]
    fn jitter_matches_kornia() {
        let f = fixture();
        let factors: Vec<Option<JitterFactors>> = (0..f["x"].size()[0])
            .map(|i| {
                let v = row(&f["jitter_factors"], i);
                Some(JitterFactors {
                    brightness: v[0],
                    contrast: v[1],
                    saturation: v[2],
                    hue: v[3],
                })
            })
            .collect();
        let order: Vec<usize> = Vec::<i64>::try_from(&f["jitter_order"])
            .unwrap()
            .into_iter()
            .map(|i| i as usize)
            .collect();
        assert_close(
            &jitter(&f["x"], &factors, &order),
            &f["jitter_out"],
            "jitter",
        );
    }

    #[test]
    fn perspective_matrix_maps_the_corners_onto_the_end_points() {
        let start = corners(32, 24);
        let mut s = RunRng::new(3).stream(0, Purpose::Cutouts);
        let end = perspective_end_points(&mut s, 32, 24);
        let m = perspective_matrix(&start, &end);
        for (a, b) in start.iter().zip(end) {
            let (u, v) = apply(&m, *a);
            assert!((u - b.0).abs() < 1e-9 && (v - b.1).abs() < 1e-9);
        }
    }

    #[test]
    fn affine_matrix_rotates_about_the_centre() {
        let p = AffineParams {
            angle: 90.0,
            translate: (0.0, 0.0),
            shear_x: 0.0,
            shear_y: 0.0,
        };
        let m = affine_matrix(&p, 11, 11);
        let centre = apply(&m, (5.0, 5.0));
        assert!((centre.0 - 5.0).abs() < 1e-12 && (centre.1 - 5.0).abs() < 1e-12);
        // Clockwise as displayed (y down): the point right of the centre moves below it.
        let (x, y) = apply(&m, (6.0, 5.0));
        assert!(
            (x - 5.0).abs() < 1e-12 && (y - 6.0).abs() < 1e-12,
            "{x} {y}"
        );
    }

    #[test]
    fn identity_warp_and_neutral_jitter_keep_the_image() {
        let x =
            crate::torch_rng::exclusive(|| Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)));
        let eye = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let warped = warp(&x, &[Some(eye), None]);
        assert!((&warped - &x).abs().max().double_value(&[]) < 1e-6);
        assert!(
            warped.get(1).equal(&x.get(1)),
            "skipped samples stay bit for bit"
        );
        let neutral = JitterFactors {
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
            hue: 0.0,
        };
        let same = jitter(&x, &[Some(neutral), None], &[3, 2, 1, 0]);
        assert!((&same - &x).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn integer_translation_shifts_pixels() {
        let x =
            crate::torch_rng::exclusive(|| Tensor::rand([1, 3, 6, 6], (Kind::Float, Device::Cpu)));
        let p = AffineParams {
            angle: 0.0,
            translate: (2.0, 1.0),
            shear_x: 0.0,
            shear_y: 0.0,
        };
        let out = warp(&x, &[Some(affine_matrix(&p, 6, 6))]);
        let moved = out.narrow(2, 1, 5).narrow(3, 2, 4);
        let source = x.narrow(2, 0, 5).narrow(3, 0, 4);
        assert!((moved - source).abs().max().double_value(&[]) < 1e-6);
        assert_eq!(out.narrow(3, 0, 2).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn hue_round_trip_and_full_turn_are_identities() {
        let x =
            crate::torch_rng::exclusive(|| Tensor::rand([2, 3, 5, 5], (Kind::Float, Device::Cpu)));
        let full_turn = Tensor::full([2, 1, 1, 1], 2.0 * PI, (Kind::Float, Device::Cpu));
        let out = rotate_hue(&x, &full_turn);
        assert!((&out - &x).abs().max().double_value(&[]) < 1e-5);
        // A third of a turn maps pure red to pure green.
        let red = Tensor::from_slice(&[1.0f32, 0.0, 0.0]).view([1, 3, 1, 1]);
        let third = Tensor::full([1, 1, 1, 1], 2.0 * PI / 3.0, (Kind::Float, Device::Cpu));
        let green = rotate_hue(&red, &third);
        let expected = Tensor::from_slice(&[0.0f32, 1.0, 0.0]).view([1, 3, 1, 1]);
        assert!((green - expected).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn erasing_zeroes_one_rectangle_in_every_sample() {
        let x = crate::torch_rng::exclusive(|| {
            Tensor::rand([3, 3, 10, 10], (Kind::Float, Device::Cpu))
        }) + 0.1;
        let rect = Rect {
            x: 2,
            y: 3,
            w: 4,
            h: 5,
        };
        let out = erase(&x, Some(rect));
        let zeros = out.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(zeros, 3 * 3 * 4 * 5);
        assert_eq!(
            out.narrow(2, 3, 5)
                .narrow(3, 2, 4)
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
        let mut s = RunRng::new(9).stream(0, Purpose::Cutouts);
        for _ in 0..200 {
            let r = erasing_rect(&mut s, 24, 16);
            let area = (r.w * r.h) as f64 / (24.0 * 16.0);
            assert!(
                r.x >= 0 && r.y >= 0 && r.x + r.w <= 24 && r.y + r.h <= 16,
                "{r:?}"
            );
            assert!((0.05..0.5).contains(&area), "{r:?} area {area}");
        }
    }

    #[test]
    fn augmentations_are_differentiable_and_reproducible() {
        let x = crate::torch_rng::exclusive(|| {
            Tensor::rand([4, 3, 12, 12], (Kind::Float, Device::Cpu))
        })
        .set_requires_grad(true);
        let run = |iteration| {
            let mut s = RunRng::new(5).stream(iteration, Purpose::Cutouts);
            augment(&x, &DEFAULT_AUGMENTS, &mut s)
        };
        let (a, b, c) = (run(0), run(0), run(1));
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
        a.sum(Kind::Float).backward();
        assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
