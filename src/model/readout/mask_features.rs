//! The computation shared by the readouts that weight the whole core output with a spatial mask per
//! neuron and then its channels with feature weights (the Gaussian mask readout, whose mask is a
//! Gaussian, and the factorised readout, whose mask is free): per neuron n and frame t,
//! `softplus(scale[n] * sum_c features[c, n] * sum_p core[c, t, p] * mask[n, p] + bias[n])`.
//! Each neuron uses only its own row of every array, so a subset of neurons is just those rows.
//! A readout kind of this family implements [`MaskReadout`] (what differs: its class, its figure,
//! how its rows are selected or re-centred) and gets [`Readout`] from the one impl here.

use std::fmt::Debug;
use std::sync::Arc;

use super::{softplus, softplus_derivative, NeuronWeights, Readout, ReadoutState, WeightFigure};
use crate::model::layer::Shape;
use crate::model::linalg::{gemm, Layout};
use crate::model::Float;
use crate::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct MaskFeatures<F> {
    pub neurons: usize,
    pub channels: usize,
    /// Pixels of the core output a mask covers (height x width).
    pub pixels: usize,
    /// `(neurons, pixels)`.
    pub masks: Vec<F>,
    /// `(channels, neurons)`, as openretina stores them (constraints such as `positive` applied).
    pub features: Vec<F>,
    /// `(neurons)`: 1 where the model has no scale.
    pub scale: Vec<F>,
    /// `(neurons)`: 0 where the model has no bias.
    pub bias: Vec<F>,
}

/// What the forward pass keeps for the backward pass: the pre-softplus values `(t, neurons)`.
pub struct Tape<F> {
    pre_activation: Vec<F>,
}

impl<F: Float> MaskFeatures<F> {
    /// Responses `(t, neurons)` for one core output `(channels, t, pixels)`.
    pub fn forward(&self, core_out: &[F], t: usize) -> (Vec<F>, Tape<F>) {
        let (c_n, n_n, hw) = (self.channels, self.neurons, self.pixels);
        // a[c, t, n] = sum_p core[c, t, p] * mask[n, p]: one matrix product for all neurons.
        let mut a = vec![F::zero(); c_n * t * n_n];
        gemm(core_out, Layout::row_major(c_n * t, hw), &self.masks, Layout::row_major(n_n, hw).t(), F::zero(), &mut a, Layout::row_major(c_n * t, n_n));
        // Summed over channels in order, as openretina's `(y * features).sum(1)`.
        let mut pre = vec![F::zero(); t * n_n];
        for c in 0..c_n {
            let f = &self.features[c * n_n..(c + 1) * n_n];
            for ti in 0..t {
                let src = &a[(c * t + ti) * n_n..][..n_n];
                let dst = &mut pre[ti * n_n..][..n_n];
                for n in 0..n_n {
                    dst[n] += src[n] * f[n];
                }
            }
        }
        for row in pre.chunks_exact_mut(n_n) {
            for ((v, &scale), &bias) in row.iter_mut().zip(&self.scale).zip(&self.bias) {
                *v = *v * scale + bias;
            }
        }
        let out = pre.iter().map(|&x| softplus(x)).collect();
        (out, Tape { pre_activation: pre })
    }

    /// Gradient with respect to the core output, given the gradient of the responses `(t, neurons)`.
    pub fn backward(&self, tape: &Tape<F>, grad_out: &[F], t: usize) -> Vec<F> {
        let (c_n, n_n, hw) = (self.channels, self.neurons, self.pixels);
        let g_y: Vec<F> = grad_out
            .iter()
            .zip(&tape.pre_activation)
            .enumerate()
            .map(|(i, (&g, &x))| g * softplus_derivative(x) * self.scale[i % n_n])
            .collect();
        let mut g_a = vec![F::zero(); c_n * t * n_n];
        for c in 0..c_n {
            let f = &self.features[c * n_n..(c + 1) * n_n];
            for ti in 0..t {
                for n in 0..n_n {
                    g_a[(c * t + ti) * n_n + n] = g_y[ti * n_n + n] * f[n];
                }
            }
        }
        let mut g_core = vec![F::zero(); c_n * t * hw];
        gemm(&g_a, Layout::row_major(c_n * t, n_n), &self.masks, Layout::row_major(n_n, hw), F::zero(), &mut g_core, Layout::row_major(c_n * t, hw));
        g_core
    }

    /// The rows of `neurons`, in that order.
    pub fn select(&self, neurons: &[usize]) -> Self {
        let hw = self.pixels;
        MaskFeatures {
            neurons: neurons.len(),
            channels: self.channels,
            pixels: hw,
            masks: neurons.iter().flat_map(|&n| self.masks[n * hw..(n + 1) * hw].iter().copied()).collect(),
            features: (0..self.channels).flat_map(|c| neurons.iter().map(move |&n| (c, n))).map(|(c, n)| self.features[c * self.neurons + n]).collect(),
            scale: neurons.iter().map(|&n| self.scale[n]).collect(),
            bias: neurons.iter().map(|&n| self.bias[n]).collect(),
        }
    }

    /// Neuron `n`'s mask `(pixels)` and feature weights `(channels)`, as f32 for figures.
    pub fn neuron_row(&self, n: usize) -> (Vec<f32>, Vec<f32>) {
        let hw = self.pixels;
        (
            self.masks[n * hw..(n + 1) * hw].iter().map(|v| v.to_f64() as f32).collect(),
            (0..self.channels).map(|c| self.features[c * self.neurons + n].to_f64() as f32).collect(),
        )
    }
}

/// A readout kind whose computation is a [`MaskFeatures`]; it supplies only what differs between kinds.
/// (`F` is an associated type, not a parameter, so that no other crate can implement this trait for
/// the other readouts and the impl of [`Readout`] below stays theirs alone.)
pub trait MaskReadout: Debug + Send + Sync + Sized + 'static {
    type F: Float;
    /// openretina's per-session class, e.g. `GaussianMaskReadout`.
    const CLASS_NAME: &'static str;
    /// Whether its weight figure draws the feature bars within plus/minus the largest |weight|.
    const SYMMETRIC_FEATURES: bool;

    fn rows(&self) -> &MaskFeatures<Self::F>;

    /// `(height, width)` of a mask.
    fn mask_shape(&self) -> [usize; 2];

    /// The same readout with only `neurons` (see [`Readout::select`]).
    fn select_rows(&self, neurons: &[usize]) -> Self;

    /// A copy whose masks all sit at `target` (see [`Readout::centered`]); `None` for free masks.
    fn recentered(&self, _target: [f64; 2]) -> Option<Self> {
        None
    }
}

impl<F: Float, R: MaskReadout<F = F>> Readout<F> for R {
    fn class_name(&self) -> &'static str {
        R::CLASS_NAME
    }

    fn neurons(&self) -> usize {
        self.rows().neurons
    }

    fn forward(&self, core_out: &[F], [_, t, _, _]: Shape) -> (Vec<F>, ReadoutState) {
        let (out, tape) = self.rows().forward(core_out, t);
        (out, Box::new(tape))
    }

    fn backward(&self, state: &ReadoutState, grad_out: &[F], [_, t, _, _]: Shape) -> Vec<F> {
        let tape = state.downcast_ref::<Tape<F>>().expect("the state of this readout's forward pass");
        self.rows().backward(tape, grad_out, t)
    }

    fn select(&self, neurons: &[usize]) -> Arc<dyn Readout<F>> {
        Arc::new(self.select_rows(neurons))
    }

    fn centered(&self, target: [f64; 2]) -> Option<Arc<dyn Readout<F>>> {
        self.recentered(target).map(|r| Arc::new(r) as Arc<dyn Readout<F>>)
    }

    fn neuron_weights(&self, neuron: usize) -> NeuronWeights {
        let (mask, features) = self.rows().neuron_row(neuron);
        let spatial = Tensor { shape: self.mask_shape().to_vec(), data: mask };
        NeuronWeights { spatial, features, figure: WeightFigure::mask(R::SYMMETRIC_FEATURES) }
    }
}
