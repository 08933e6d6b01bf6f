//! The two custom gradients of the loop: vector quantisation with a straight-through gradient,
//! and `clamp_with_grad`.
//!
//! tch has no custom autograd functions. The straight-through estimator is exact with a detach
//! trick (`x_q + (x − x)`: forward x_q to the bit, gradient the identity). `clamp_with_grad`'s
//! gradient depends on the incoming gradient itself, which no composition of ordinary ops
//! expresses, so [`ClampBoundary`] splits the graph: the clamped values become a fresh leaf,
//! everything downstream runs and back-propagates into that leaf, then the rule is applied to
//! the leaf's gradient and the result is pushed on into the upstream graph.

use tch::{Kind, Tensor};

/// Index of the nearest codebook row (squared Euclidean distance) for every row of `x` `[M, C]`.
pub fn nearest_codes(x: &Tensor, codebook: &Tensor) -> Tensor {
    let distances = x
        .pow_tensor_scalar(2)
        .sum_dim_intlist(-1, true, Kind::Float)
        + codebook
            .pow_tensor_scalar(2)
            .sum_dim_intlist(1, false, Kind::Float)
        - x.matmul(&codebook.tr()) * 2.0;
    distances.argmin(-1, false)
}

/// Replaces every latent vector of `z` `[B, C, h, w]` by its nearest codebook entry; the gradient
/// passes straight through to `z` (`generate.py`'s `vector_quantize`).
pub fn vector_quantize(z: &Tensor, codebook: &Tensor) -> Tensor {
    let x = z.movedim([1], [3]);
    let channels = codebook.size()[1];
    let indices = tch::no_grad(|| nearest_codes(&x.detach().reshape([-1, channels]), codebook));
    let x_q = codebook.index_select(0, &indices).view_as(&x);
    straight_through(&x_q, &x).movedim([3], [1])
}

/// `forward`'s values with `backward`'s gradient (both the same shape): `generate.py`'s
/// `replace_grad`. `x − x.detach()` is an exact zero, so the values are `forward` to the bit.
pub fn straight_through(forward: &Tensor, backward: &Tensor) -> Tensor {
    forward.detach() + (backward - backward.detach())
}

/// A cut in the autograd graph at `clamp_with_grad(x, 0, 1)`.
///
/// Use [`ClampBoundary::leaf`] downstream, back-propagate the loss, then call
/// [`ClampBoundary::propagate`]: where `x` is outside [0, 1] the gradient passes only if a
/// descent step would move `x` back towards the range. A boundary made with
/// [`ClampBoundary::recomputable`] keeps no upstream graph (saving its memory while the
/// downstream runs); its gradient goes into a recomputation of the upstream instead.
#[derive(Debug)]
pub struct ClampBoundary {
    /// The unclamped values, without graph.
    values: Tensor,
    /// The graph that produced them, when kept.
    upstream: Option<Tensor>,
    leaf: Tensor,
}

impl ClampBoundary {
    /// Cuts the graph after `upstream`, keeping it (when it requires gradients at all).
    pub fn new(upstream: Tensor) -> ClampBoundary {
        let kept = upstream.requires_grad().then(|| upstream.shallow_clone());
        ClampBoundary::build(upstream.detach(), kept)
    }

    /// A cut after values computed without a graph; the caller back-propagates
    /// [`ClampBoundary::masked_leaf_gradient`] through a recomputation of the upstream, which
    /// must produce the same values.
    pub fn recomputable(values: Tensor) -> ClampBoundary {
        ClampBoundary::build(values.detach(), None)
    }

    fn build(values: Tensor, upstream: Option<Tensor>) -> ClampBoundary {
        let leaf = values.clamp(0.0, 1.0).set_requires_grad(true);
        ClampBoundary {
            values,
            upstream,
            leaf,
        }
    }

    /// The clamped values, a leaf that collects the downstream gradient.
    pub fn leaf(&self) -> &Tensor {
        &self.leaf
    }

    /// The gradient `clamp_with_grad` passes upstream, given the gradient at the leaf:
    /// `g · [g · (x − clamp(x)) ≥ 0]`.
    pub fn masked_gradient(&self, leaf_grad: &Tensor) -> Tensor {
        let overshoot = &self.values - self.values.clamp(0.0, 1.0);
        let pushes_back = (leaf_grad * overshoot).ge(0.0).to_kind(leaf_grad.kind());
        leaf_grad * pushes_back
    }

    /// The leaf's gradient masked by the rule, once the downstream has been back-propagated
    /// (`None` when nothing reached the leaf).
    pub fn masked_leaf_gradient(&self) -> Option<Tensor> {
        let grad = self.leaf.grad();
        grad.defined().then(|| self.masked_gradient(&grad))
    }

    /// Back-propagates the leaf's gradient, masked by the rule, into the kept upstream graph.
    pub fn propagate(self) {
        let (Some(upstream), Some(masked)) = (&self.upstream, self.masked_leaf_gradient()) else {
            return;
        };
        // d/dx Σ x·g = g exactly: the multiplication's backward is g·1.
        (upstream * masked).sum(Kind::Float).backward();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn quantize_picks_the_nearest_entry_and_passes_the_gradient_straight() {
        let codebook = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 1.0, -1.0, 2.0]).view([3, 2]);
        // z [1, 2, 1, 3]: the three vectors (0.9, 0.8), (-0.7, 1.9), (0.1, -0.2).
        let z = Tensor::from_slice(&[0.9f32, -0.7, 0.1, 0.8, 1.9, -0.2])
            .view([1, 2, 1, 3])
            .set_requires_grad(true);
        let q = vector_quantize(&z, &codebook);
        let expected = Tensor::from_slice(&[1.0f32, -1.0, 0.0, 1.0, 2.0, 0.0]).view([1, 2, 1, 3]);
        assert!(q.equal(&expected));
        let weights =
            crate::torch_rng::exclusive(|| Tensor::randn([1, 2, 1, 3], (Kind::Float, Device::Cpu)));
        (&q * &weights).sum(Kind::Float).backward();
        assert!(z.grad().equal(&weights));
    }

    #[test]
    fn clamp_gradient_passes_inside_and_only_back_towards_the_range_outside() {
        let x = Tensor::from_slice(&[-0.5f32, -0.5, 0.5, 0.5, 1.5, 1.5]).set_requires_grad(true);
        let upstream = &x * 1.0;
        let boundary = ClampBoundary::new(upstream);
        assert!(boundary
            .leaf()
            .equal(&Tensor::from_slice(&[0.0f32, 0.0, 0.5, 0.5, 1.0, 1.0])));
        // Loss gradients: descent moves x by -g. Below the range, g < 0 pushes back up.
        let g = Tensor::from_slice(&[-1.0f32, 1.0, -1.0, 1.0, -1.0, 1.0]);
        (boundary.leaf() * &g).sum(Kind::Float).backward();
        boundary.propagate();
        let expected = Tensor::from_slice(&[-1.0f32, 0.0, -1.0, 1.0, 0.0, 1.0]);
        assert!(x.grad().equal(&expected), "{:?}", x.grad());
    }
}
