//! Readouts: what maps the core output to each session's neurons. A readout kind is one file here
//! implementing [`Readout`] (forward, gradient with respect to the core output, and what `info` and
//! the figures show), plus one line in `registry.rs` that matches openretina's class name to it.

pub mod factorized;
pub mod gaussian_mask;
pub mod mask_features;
pub mod point_gaussian;

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use super::layer::Shape;
use super::Float;
use crate::tensor::Tensor;

/// What a readout keeps from its forward pass for its backward pass.
pub type ReadoutState = Box<dyn Any + Send + Sync>;

/// What one neuron reads, for its weight figure.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronWeights {
    /// Where the neuron looks, `(h, w)` over the core output (a mask, or a map of its position).
    pub spatial: Tensor<f32>,
    /// One weight per core feature channel.
    pub features: Vec<f32>,
    /// How openretina's figure for this readout class shows them.
    pub figure: WeightFigure,
}

/// The per-class choices of a readout weight figure (openretina draws each class its own way).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightFigure {
    pub spatial: SpatialMap,
    /// A point the neuron reads at, in pixels `(x, y)` of the spatial map.
    pub position: Option<[f32; 2]>,
    /// Feature bars within plus/minus the session's largest |weight| (otherwise its smallest to largest).
    pub symmetric_features: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpatialMap {
    /// Signed weights: "Readout Mask", red-blue within plus/minus the session's largest |value|.
    Mask,
    /// A sampling density: "Sampling Density", viridis over the neuron's own range.
    SamplingDensity,
}

impl WeightFigure {
    /// A mask readout's figure.
    pub fn mask(symmetric_features: bool) -> Self {
        WeightFigure { spatial: SpatialMap::Mask, position: None, symmetric_features }
    }
}

/// The readout of one session.
pub trait Readout<F: Float>: Debug + Send + Sync {
    /// openretina's per-session class, e.g. `GaussianMaskReadout`.
    fn class_name(&self) -> &'static str;

    fn neurons(&self) -> usize;

    /// Responses `(t, neurons)` for one core output of `shape` `(channels, t, height, width)`.
    fn forward(&self, core_out: &[F], shape: Shape) -> (Vec<F>, ReadoutState);

    /// Gradient with respect to the core output, given the gradient of the responses `(t, neurons)`.
    fn backward(&self, state: &ReadoutState, grad_out: &[F], shape: Shape) -> Vec<F>;

    /// A readout of only `neurons` (indices into this one, in that order): its response k is neuron
    /// `neurons[k]`'s, computed from that neuron's own weights alone. Output-neuron MEIs run on it, so
    /// that each costs its own readout row rather than the whole session's.
    fn select(&self, neurons: &[usize]) -> Arc<dyn Readout<F>>;

    /// A copy whose neurons all look at `target` (openretina's `Center`), for readouts with a
    /// learned position; `None` for readouts without one.
    fn centered(&self, _target: [f64; 2]) -> Option<Arc<dyn Readout<F>>> {
        None
    }

    /// The weights of one neuron, for its figure.
    fn neuron_weights(&self, neuron: usize) -> NeuronWeights;
}

/// PyTorch's softplus (beta 1, threshold 20).
pub fn softplus<F: Float>(x: F) -> F {
    if x > F::from_f64(20.0) {
        x
    } else {
        x.exp().ln_1p()
    }
}

pub fn softplus_derivative<F: Float>(x: F) -> F {
    if x > F::from_f64(20.0) {
        F::one()
    } else {
        let z = x.exp();
        z / (z + F::one())
    }
}

/// `torch.nan_to_num`: NaN → 0, ±inf → the largest finite value of the type.
pub fn nan_to_num<F: Float>(x: F) -> F {
    let v = x.to_f64();
    if v.is_nan() {
        F::zero()
    } else if v.is_infinite() {
        F::from_f64(if v > 0.0 { F::MAX } else { -F::MAX })
    } else {
        x
    }
}
