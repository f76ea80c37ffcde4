//! The Core + Readout model.

pub mod config;
pub mod conv;
pub mod core;
pub mod linalg;
pub mod load;
pub mod readout;
pub mod simd;

use std::collections::BTreeMap;

use rayon::prelude::*;

pub use self::config::ModelConfig;
use self::core::Core;
use self::readout::GaussianReadout;
use crate::error::{Error, Result};
use crate::formats::RawModel;
use crate::tensor::Tensor;

/// A Core + Readout retina model in float type `F`.
#[derive(Debug, Clone)]
pub struct Model<F = f32> {
    pub config: ModelConfig,
    pub core: Core<F>,
    /// One readout per session, by name (sorted, as openretina's `readout_keys()`).
    pub readouts: BTreeMap<String, GaussianReadout<F>>,
}

/// Most values a stimulus may have (4 GiB as f32; every core layer's output is kept as well).
pub const MAX_STIMULUS_VALUES: usize = 1 << 30;

/// Outputs of a forward pass over a batch.
#[derive(Debug, Clone)]
pub struct ForwardOutput<F> {
    /// Output of each core layer `(batch, channels, t, h, w)`, openretina's `core_features_layer<i>`.
    pub layers: Vec<Tensor<F>>,
    /// Responses `(batch, t, neurons)` of the session's readout.
    pub responses: Tensor<F>,
}

impl<F: Float> Model<F> {
    pub fn from_raw(raw: &RawModel) -> Result<Self> {
        load::model_from_raw(raw)
    }

    /// openretina's hook names of the core layers: `core_features_layer0`, ...
    pub fn layer_names(&self) -> Vec<String> {
        (0..self.core.layers.len()).map(|i| format!("core_features_layer{i}")).collect()
    }

    /// The index of a layer given by hook name (`core_features_layer1`) or number (`1`).
    pub fn layer_index(&self, name: &str) -> Result<usize> {
        let n = self.core.layers.len();
        name.strip_prefix("core_features_layer")
            .unwrap_or(name)
            .parse::<usize>()
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| Error::new(format!("unknown layer `{name}`; this model has core_features_layer0 … core_features_layer{}", n - 1)))
    }

    pub fn sessions(&self) -> impl Iterator<Item = &str> {
        self.readouts.keys().map(String::as_str)
    }

    pub fn readout(&self, session: &str) -> Result<&GaussianReadout<F>> {
        self.readouts.get(session).ok_or_else(|| {
            let known: Vec<&str> = self.sessions().collect();
            Error::new(format!("unknown session `{session}`; this model has {}", known.join(", ")))
        })
    }

    /// Move every readout's Gaussian mean to (0, 0), as openretina's `Center(target_mean=(0, 0))`.
    pub fn center_readouts(&mut self) {
        for r in self.readouts.values_mut() {
            r.center([F::zero(), F::zero()]);
        }
    }

    /// Check a stimulus `(batch, channels, time, height, width)` against the model.
    pub fn check_stimulus(&self, shape: &[usize]) -> Result<[usize; 4]> {
        let c = &self.config;
        // Refuse absurd sizes (e.g. `--time-steps 99999999999`) here, before anything is allocated:
        // otherwise the allocation aborts the process instead of giving an error.
        let values = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_STIMULUS_VALUES);
        if values.is_none() {
            bail!(
                "stimulus of shape {shape:?} is too large: at most {MAX_STIMULUS_VALUES} values per run; use fewer frames or a smaller batch"
            );
        }
        match shape {
            [b, ch, t, h, w] if *b > 0 && *ch == c.input_channels && *h == c.height && *w == c.width => {
                c.core_output_shape(*t)?;
                Ok([*ch, *t, *h, *w])
            }
            _ => bail!(
                "stimulus has shape {shape:?}; this model needs (batch, {}, time, {}, {})",
                c.input_channels,
                c.height,
                c.width
            ),
        }
    }

    /// Forward pass of a batch for one session (its readout, and its temporal log speed on legacy
    /// ensemble members).
    pub fn forward(&self, stimulus: &Tensor<F>, session: &str) -> Result<ForwardOutput<F>> {
        let shape = self.check_stimulus(&stimulus.shape)?;
        let readout = self.readout(session)?;
        let kernels = self.core.kernels(Some(session));
        let per_sample = stimulus.numel() / stimulus.shape[0];
        let results: Vec<_> = stimulus
            .data
            .par_chunks_exact(per_sample)
            .map(|x| {
                let tape = self.core.forward(&kernels, x, shape);
                let (out, [_, t, _, _]) = self.core.output(&tape);
                let (responses, _) = readout.forward(&out, t);
                (tape, responses, t)
            })
            .collect();
        let b = stimulus.shape[0];
        let t_out = results[0].2;
        let mut layers = Vec::new();
        for l in 0..self.core.layers.len() {
            let [c, t, h, w] = results[0].0.output_shapes[l];
            let data = results.iter().flat_map(|r| r.0.outputs[l].iter().copied()).collect();
            layers.push(Tensor::new(vec![b, c, t, h, w], data)?);
        }
        let data = results.into_iter().flat_map(|r| r.1).collect();
        let responses = Tensor::new(vec![b, t_out, readout.neurons], data)?;
        Ok(ForwardOutput { layers, responses })
    }
}

/// The float types the model runs in: f32 (the tool) and f64 (exactness checks).
pub trait Float:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + std::iter::Sum
    + linalg::Gemm
    + simd::FastKernels
    + 'static
{
    /// The largest finite value, as f64.
    const MAX: f64;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn exp_m1(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    fn one() -> Self {
        Self::from_f64(1.0)
    }
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            const MAX: f64 = <$t>::MAX as f64;
            fn from_f64(x: f64) -> Self { x as $t }
            fn to_f64(self) -> f64 { self as f64 }
            fn exp(self) -> Self { <$t>::exp(self) }
            fn ln(self) -> Self { <$t>::ln(self) }
            fn ln_1p(self) -> Self { <$t>::ln_1p(self) }
            fn exp_m1(self) -> Self { <$t>::exp_m1(self) }
            fn sqrt(self) -> Self { <$t>::sqrt(self) }
            fn sin(self) -> Self { <$t>::sin(self) }
            fn cos(self) -> Self { <$t>::cos(self) }
        }
    };
}
impl_float!(f32);
impl_float!(f64);
