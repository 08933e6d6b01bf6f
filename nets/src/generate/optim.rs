//! The optimisers `generate.py` offers for the latent, written over plain tensors with torch's
//! own update formulas (its single-tensor CPU code paths, op for op).
//!
//! tch's `COptimizer` keeps its moments inside libtorch where they cannot be read out, so a
//! checkpoint could not carry them; here every moment is an ordinary tensor and the step count
//! an integer, both saved and restored by `state.rs`. Hyper-parameters other than the learning
//! rate are torch's defaults, as in `generate.py`.

use tch::Tensor;
pub use tessera_core::loop_options::OptimiserKind;

const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;
const ADAMW_WEIGHT_DECAY: f64 = 1e-2;
const ADAGRAD_EPS: f64 = 1e-10;
const RMSPROP_ALPHA: f64 = 0.99;
const RMSPROP_EPS: f64 = 1e-8;

/// One parameter's optimiser: its rule, learning rate, step count and moment tensors.
#[derive(Debug)]
pub struct Optimiser {
    kind: OptimiserKind,
    lr: f64,
    step: u64,
    buffers: Vec<Tensor>,
}

/// Optimiser state that does not fit the rule it is restored into.
#[derive(Debug, thiserror::Error)]
#[error("optimiser state for {kind:?} needs {expected} tensors shaped like the latent {shape:?}, got {got}")]
pub struct OptimiserStateError {
    kind: OptimiserKind,
    expected: usize,
    shape: Vec<i64>,
    got: String,
}

impl Optimiser {
    /// A fresh optimiser for a parameter shaped like `param` (moments start at zero).
    pub fn new(kind: OptimiserKind, lr: f64, param: &Tensor) -> Optimiser {
        let buffers = kind
            .buffer_names()
            .iter()
            .map(|_| param.detach().zeros_like())
            .collect();
        Optimiser {
            kind,
            lr,
            step: 0,
            buffers,
        }
    }

    /// Rebuilds an optimiser from saved state, checking it fits `param`.
    pub fn restore(
        kind: OptimiserKind,
        lr: f64,
        step: u64,
        buffers: Vec<Tensor>,
        param: &Tensor,
    ) -> Result<Optimiser, OptimiserStateError> {
        let fits = buffers.len() == kind.buffer_names().len()
            && buffers
                .iter()
                .all(|b| b.size() == param.size() && b.kind() == param.kind());
        if !fits {
            return Err(OptimiserStateError {
                kind,
                expected: kind.buffer_names().len(),
                shape: param.size(),
                got: format!(
                    "{:?}",
                    buffers
                        .iter()
                        .map(|b| (b.size(), b.kind()))
                        .collect::<Vec<_>>()
                ),
            });
        }
        let device = param.device();
        Ok(Optimiser {
            kind,
            lr,
            step,
            buffers: buffers.into_iter().map(|b| b.to_device(device)).collect(),
        })
    }

    /// The rule this optimiser applies.
    pub fn kind(&self) -> OptimiserKind {
        self.kind
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The state tensors, named by [`OptimiserKind::buffer_names`].
    pub fn buffers(&self) -> &[Tensor] {
        &self.buffers
    }

    /// Applies one update to `param` in place from `grad`, as torch's `opt.step()` would.
    pub fn step(&mut self, param: &mut Tensor, grad: &Tensor) {
        self.step += 1;
        let updated = tch::no_grad(|| {
            let param = param.detach();
            match self.kind {
                OptimiserKind::Adam => self.adam(&param, grad),
                OptimiserKind::AdamW => {
                    self.adam(&(&param * (1.0 - self.lr * ADAMW_WEIGHT_DECAY)), grad)
                }
                OptimiserKind::Adagrad => self.adagrad(&param, grad),
                OptimiserKind::RMSprop => self.rmsprop(&param, grad),
            }
        });
        tch::no_grad(|| param.copy_(&updated));
    }

    fn adam(&mut self, param: &Tensor, grad: &Tensor) -> Tensor {
        let (beta1, beta2) = ADAM_BETAS;
        let exp_avg = self.buffers[0].lerp(grad, 1.0 - beta1);
        let exp_avg_sq = addcmul(&(&self.buffers[1] * beta2), grad, grad, 1.0 - beta2);
        let step = self.step as f64;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let step_size = self.lr / bias_correction1;
        let denom = exp_avg_sq.sqrt() / bias_correction2.sqrt() + ADAM_EPS;
        let updated = addcdiv(param, &exp_avg, &denom, -step_size);
        self.buffers = vec![exp_avg, exp_avg_sq];
        updated
    }

    fn adagrad(&mut self, param: &Tensor, grad: &Tensor) -> Tensor {
        // lr_decay is 0, so the clipped learning rate is the learning rate.
        let sum = addcmul(&self.buffers[0], grad, grad, 1.0);
        let std = sum.sqrt() + ADAGRAD_EPS;
        let updated = addcdiv(param, grad, &std, -self.lr);
        self.buffers = vec![sum];
        updated
    }

    fn rmsprop(&mut self, param: &Tensor, grad: &Tensor) -> Tensor {
        let square_avg = addcmul(
            &(&self.buffers[0] * RMSPROP_ALPHA),
            grad,
            grad,
            1.0 - RMSPROP_ALPHA,
        );
        let avg = square_avg.sqrt() + RMSPROP_EPS;
        let updated = addcdiv(param, grad, &avg, -self.lr);
        self.buffers = vec![square_avg];
        updated
    }
}

/// torch's `addcmul(self, t1, t2, value)`. tch's binding has no `value`, so it is folded into
/// `t1` first: the kernel computes `self + (value·t1)·t2` (fused on CPUs with FMA), and
/// `value·t1` rounds the same whether the kernel or `mul` computes it.
fn addcmul(base: &Tensor, t1: &Tensor, t2: &Tensor, value: f64) -> Tensor {
    base.addcmul(&(t1 * value), t2)
}

/// torch's `addcdiv(self, t1, t2, value)`, with `value` folded into `t1` as in [`addcmul`].
fn addcdiv(base: &Tensor, t1: &Tensor, t2: &Tensor, value: f64) -> Tensor {
    base.addcdiv(&(t1 * value), t2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch.optim's trajectories, made by `scripts/fixtures/loop_optim.py` on this machine:
    /// libtorch's element-wise kernels round differently on different CPUs (an Adam step made
    /// on another machine differed here by one float32 ulp), and the claim is bit-equality with
    /// PyTorch on the same machine and libtorch.
    fn fixture() -> std::collections::HashMap<String, Tensor> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loop_optim.safetensors");
        crate::fixtures::run_python(&["scripts/fixtures/loop_optim.py", path.to_str().unwrap()]);
        Tensor::read_safetensors(&path)
            .expect("loop_optim.py writes safetensors")
            .into_iter()
            .collect()
    }

    /// Runs each rule over the fixture's gradients and compares with torch.optim's trajectory.
    #[test]
    fn matches_torch_optim_step_for_step() {
        let f = fixture();
        let grads = &f["grads"];
        for (kind, name) in [
            (OptimiserKind::Adam, "Adam"),
            (OptimiserKind::AdamW, "AdamW"),
            (OptimiserKind::Adagrad, "Adagrad"),
            (OptimiserKind::RMSprop, "RMSprop"),
        ] {
            let mut param = f["param"].copy();
            let mut opt = Optimiser::new(kind, 0.1, &param);
            let expected = &f[name];
            for t in 0..grads.size()[0] {
                opt.step(&mut param, &grads.get(t));
                let diff = (&param - expected.get(t)).abs().max().double_value(&[]);
                assert_eq!(diff, 0.0, "{name} step {t}: max diff {diff}");
            }
            assert_eq!(opt.steps(), grads.size()[0] as u64);
        }
    }

    #[test]
    fn restore_rejects_state_of_another_shape() {
        let param = Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
        let wrong = vec![Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu))];
        let err = Optimiser::restore(OptimiserKind::Adagrad, 0.1, 4, wrong, &param).unwrap_err();
        assert!(
            err.to_string()
                .contains("needs 1 tensors shaped like the latent [2, 3]"),
            "{err}"
        );
    }
}
