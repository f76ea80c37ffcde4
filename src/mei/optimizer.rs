//! How a step moves the stimulus: plain SGD (what `openretina visualize` uses) or Adam with
//! PyTorch's update rule. The optimiser's state lives across steps and, as in openretina, across the
//! post-processing that replaces the stimulus after each step.

use crate::model::Float;

/// Which optimiser, with its parameters besides the learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// `x -= lr * grad` (`torch.optim.SGD` without momentum).
    Sgd,
    /// `torch.optim.Adam` (no weight decay, no amsgrad).
    Adam { beta1: f64, beta2: f64, eps: f64 },
}

impl OptimizerKind {
    /// Adam with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8.
    pub const ADAM: OptimizerKind = OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 };

    /// A fresh optimiser for a stimulus of `len` values.
    pub fn start<F: Float>(&self, learning_rate: f64, len: usize) -> Optimizer<F> {
        let state = match *self {
            OptimizerKind::Sgd => State::Sgd,
            OptimizerKind::Adam { beta1, beta2, eps } => State::Adam {
                beta1,
                beta2,
                eps,
                step: 0,
                first_moment: vec![F::zero(); len],
                second_moment: vec![F::zero(); len],
            },
        };
        Optimizer { learning_rate, state }
    }

    /// The name the CLI and reports use.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam { .. } => "adam",
        }
    }
}

/// An optimiser with its running state.
pub struct Optimizer<F> {
    learning_rate: f64,
    state: State<F>,
}

enum State<F> {
    Sgd,
    Adam { beta1: f64, beta2: f64, eps: f64, step: i32, first_moment: Vec<F>, second_moment: Vec<F> },
}

impl<F: Float> Optimizer<F> {
    /// One step on `x` against the loss gradient `grad`.
    pub fn step(&mut self, x: &mut [F], grad: &[F]) {
        let lr = self.learning_rate;
        match &mut self.state {
            State::Sgd => {
                let lr = F::from_f64(lr);
                for (v, g) in x.iter_mut().zip(grad) {
                    *v = *v - lr * *g;
                }
            }
            State::Adam { beta1, beta2, eps, step, first_moment, second_moment } => {
                // PyTorch's single-tensor Adam: the moments are updated in the working precision, the
                // bias corrections and step size are Python floats (f64) used as scalars.
                *step += 1;
                let correction1 = 1.0 - beta1.powi(*step);
                let correction2_sqrt = (1.0 - beta2.powi(*step)).sqrt();
                let step_size = F::from_f64(lr / correction1);
                let (w1, b2, w2) = (F::from_f64(1.0 - *beta1), F::from_f64(*beta2), F::from_f64(1.0 - *beta2));
                let (c2, eps) = (F::from_f64(correction2_sqrt), F::from_f64(*eps));
                for (((v, &g), m), s) in x.iter_mut().zip(grad).zip(first_moment.iter_mut()).zip(second_moment.iter_mut()) {
                    // lerp(m, g, 1 - beta1) with a weight below 0.5: m + w (g - m).
                    *m = *m + w1 * (g - *m);
                    *s = *s * b2 + w2 * g * g;
                    let denominator = s.sqrt() / c2 + eps;
                    *v = *v - step_size * (*m / denominator);
                }
            }
        }
    }
}
