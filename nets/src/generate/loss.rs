//! The loss terms of the loop: each prompt's spherical distance to the cutouts' embeddings, and
//! the `init_weight` pull back towards the initial latent, and the `tv_weight` smoothness term.

use tch::{Kind, Tensor};

/// One target embedding set with its weight: a text, an image prompt or a noise prompt.
#[derive(Debug)]
pub struct Target {
    /// What the target is, for progress reports (`text:a cat`, `image:x.png`, `noise:42`).
    pub label: String,
    /// Target embeddings `[K, D]`, float32; every cutout is compared with every row.
    pub embed: Tensor,
    /// Strength; negative pushes the image away from the target.
    pub weight: f64,
    /// Signed distance below which the prompt stops pulling (`None`: never).
    pub stop: Option<f64>,
}

/// `x / max(||x||, 1e-12)` along `dim`, as torch's `F.normalize`.
fn normalize(x: &Tensor, dim: i64) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2, [dim].as_slice(), true)
        .clamp_min(1e-12);
    x / norm.expand_as(x)
}

/// Squared great-circle distance `2·arcsin(|a−b|/2)²` between every row of `input` `[N, D]` and
/// every row of `embed` `[K, D]`, both normalised first: `[N, K]`.
pub fn spherical_distance(input: &Tensor, embed: &Tensor) -> Tensor {
    let a = normalize(&input.unsqueeze(1), 2);
    let b = normalize(&embed.unsqueeze(0), 2);
    (a - b)
        .norm_scalaropt_dim(2, [2i64].as_slice(), false)
        .divide_scalar(2.0)
        .arcsin()
        .pow_tensor_scalar(2)
        .multiply_scalar(2.0)
}

/// The prompt's loss over the cutouts' embeddings `[N, D]`: |w| · mean(sign(w) · distance), with
/// the gradient of every (cutout, target) pair whose signed distance is below `stop` removed —
/// `generate.py`'s `replace_grad(dists, maximum(dists, stop))`. The forward value is exactly the
/// distance (`d + (m − m)` adds an exact zero); the gradient is that of `clamp_min(d, stop)`
/// (which differs from `maximum` only on exact ties, where it passes the whole gradient).
pub fn prompt_loss(image_embeds: &Tensor, target: &Target) -> Tensor {
    let sign = target.weight.signum() * f64::from(target.weight != 0.0);
    let dists = spherical_distance(image_embeds, &target.embed) * sign;
    let dists = match target.stop {
        Some(stop) => {
            let floored = dists.clamp_min(stop);
            dists.detach() + (&floored - floored.detach())
        }
        None => dists,
    };
    dists.mean(Kind::Float) * target.weight.abs()
}

/// The original notebook's `init_weight` term: MSE(z, z_orig) · weight / 2.
pub fn init_loss(z: &Tensor, z_orig: &Tensor, weight: f64) -> Tensor {
    z.mse_loss(z_orig, tch::Reduction::Mean) * weight / 2.0
}

/// Total variation of pictures `[B, C, H, W]` as CLIP-guided notebooks define it (Disco
/// Diffusion's `tv_loss`): the picture padded by one replicated row and column, then the mean
/// over every pixel and channel of the squared differences to its right and lower neighbours.
/// One value per picture, `[B]`.
pub fn total_variation(pictures: &Tensor) -> Tensor {
    let (h, w) = (pictures.size()[2], pictures.size()[3]);
    let padded = pictures.replication_pad2d([0, 1, 0, 1]);
    let here = padded.narrow(2, 0, h).narrow(3, 0, w);
    let right = padded.narrow(2, 0, h).narrow(3, 1, w) - &here;
    let below = padded.narrow(2, 1, h).narrow(3, 0, w) - &here;
    (right.square() + below.square()).mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(rows: &[&[f32]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    fn target(embed: Tensor, weight: f64, stop: Option<f64>) -> Target {
        Target {
            label: "t".into(),
            embed,
            weight,
            stop,
        }
    }

    #[test]
    fn distance_is_the_squared_half_angle_times_two() {
        // Orthogonal unit vectors are 90° apart: |a-b| = √2, 2·asin(√2/2)² = 2·(π/4)² = π²/8.
        let d = spherical_distance(&t(&[&[3.0, 0.0]]), &t(&[&[0.0, 0.5], &[2.0, 0.0]]));
        let v: Vec<f32> = Vec::try_from(d.flatten(0, -1)).unwrap();
        assert!((v[0] as f64 - std::f64::consts::PI.powi(2) / 8.0).abs() < 1e-6);
        assert!(v[1].abs() < 1e-6);
    }

    #[test]
    fn negative_weight_flips_the_sign_and_keeps_the_size() {
        let input =
            crate::torch_rng::exclusive(|| Tensor::randn([4, 8], (Kind::Float, Device::Cpu)));
        let embed =
            crate::torch_rng::exclusive(|| Tensor::randn([1, 8], (Kind::Float, Device::Cpu)));
        let plus = prompt_loss(&input, &target(embed.shallow_clone(), 2.0, None));
        let minus = prompt_loss(&input, &target(embed, -2.0, None));
        assert!(plus.double_value(&[]) > 0.0);
        assert_eq!(plus.double_value(&[]), -minus.double_value(&[]));
    }

    #[test]
    fn stop_keeps_the_value_and_removes_the_gradient_below_it() {
        let input =
            crate::torch_rng::exclusive(|| Tensor::randn([6, 8], (Kind::Float, Device::Cpu)))
                .set_requires_grad(true);
        let embed =
            crate::torch_rng::exclusive(|| Tensor::randn([1, 8], (Kind::Float, Device::Cpu)));
        let d = spherical_distance(&input.detach(), &embed);
        let stop = d.median().double_value(&[]);
        let free = prompt_loss(&input, &target(embed.shallow_clone(), 1.0, None));
        let stopped = prompt_loss(&input, &target(embed, 1.0, Some(stop)));
        assert_eq!(free.double_value(&[]), stopped.double_value(&[]));
        let grad = |loss: &Tensor| {
            Tensor::run_backward(&[loss], &[&input], true, false)
                .pop()
                .unwrap()
        };
        let (g_free, g_stop) = (grad(&free), grad(&stopped));
        for row in 0..6 {
            let below = d.double_value(&[row, 0]) < stop;
            let g = g_stop.get(row);
            if below {
                assert_eq!(g.abs().max().double_value(&[]), 0.0, "row {row}");
            } else {
                assert!(g.equal(&g_free.get(row)), "row {row}");
            }
        }
    }

    #[test]
    fn init_loss_is_half_weighted_mse() {
        let z = t(&[&[1.0, 2.0]]);
        let orig = t(&[&[0.0, 0.0]]);
        assert_eq!(init_loss(&z, &orig, 4.0).double_value(&[]), 2.5 * 4.0 / 2.0);
    }

    #[test]
    fn total_variation_is_the_mean_squared_step_to_the_right_and_below() {
        // One channel, 2x2: [[0, 1], [3, 5]]. Steps right: 1, 0 (padded), 2, 0; below: 3, 4,
        // 0, 0. Squares sum to 1 + 4 + 9 + 16 = 30 over 4 pixels.
        let picture = Tensor::from_slice(&[0.0f32, 1.0, 3.0, 5.0]).reshape([1, 1, 2, 2]);
        let tv = total_variation(&picture).double_value(&[0]);
        assert!((tv - 7.5).abs() < 1e-6, "{tv}");
        let flat = Tensor::ones([2, 3, 4, 4], (Kind::Float, tch::Device::Cpu));
        assert_eq!(total_variation(&flat).size(), vec![2]);
        assert_eq!(total_variation(&flat).abs().max().double_value(&[]), 0.0);
    }
}
