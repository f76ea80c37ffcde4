//! The Core + Readout model.

pub mod config;
pub mod core;
pub mod fft_conv;
pub mod fft_lines;
pub mod gru_core;
pub mod layer;
pub mod layers;
pub mod linalg;
pub mod load;
pub mod memory;
pub mod readout;
pub mod registry;
pub(crate) mod scratch;
pub mod simd;
pub mod simd_conv;
pub mod simd_frame;
pub(crate) mod simd_lanes;
pub mod simd_math;
pub mod simd_spatial;
pub mod simd_temporal;
pub mod simd_separable;

use std::collections::BTreeMap;
use std::sync::Arc;

use rayon::prelude::*;

pub use self::config::ModelConfig;
use self::core::Core;
use self::readout::Readout;
use crate::error::{Error, Result};
use crate::formats::{ModelFile, RawModel};
use crate::tensor::Tensor;

/// A Core + Readout retina model in float type `F`.
#[derive(Debug, Clone)]
pub struct Model<F = f32> {
    pub config: ModelConfig,
    pub core: Core<F>,
    /// One readout per session, by name (sorted, as openretina's `readout_keys()`).
    pub readouts: BTreeMap<String, Arc<dyn Readout<F>>>,
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

impl<F: Float> ForwardOutput<F> {
    /// Weights and stimulus are finite (both are checked when read), but values can still overflow
    /// to infinity on the way: name the first layer where that happens instead of returning NaNs.
    pub fn check_finite(&self, session: &str) -> Result<()> {
        let finite = |t: &Tensor<F>| t.data.iter().all(|v| v.to_f64().is_finite());
        if let Some(l) = self.layers.iter().position(|t| !finite(t)) {
            bail!("the forward pass overflows: core_features_layer{l} holds NaN or infinite values; the model's weights are too large for this stimulus");
        }
        if !finite(&self.responses) {
            bail!("the forward pass overflows: the responses of session {session} hold NaN or infinite values; its readout weights are too large for this stimulus");
        }
        Ok(())
    }
}

impl<F: Float> Model<F> {
    pub fn from_raw(raw: &RawModel) -> Result<Self> {
        load::model_from_raw(raw)
    }

    /// The model of an opened file, reading only the tensors the architecture takes, each after its
    /// shape was checked (`formats::open_model`).
    pub fn from_file(file: &mut ModelFile) -> Result<Self> {
        load::model_from_file(file)
    }

    /// openretina's hook names of the core layers whose channels `visualize` optimises:
    /// `core_features_layer0`, ...
    pub fn layer_names(&self) -> Vec<String> {
        self.core.layer_blocks.iter().map(|&b| self.core.blocks[b].hook().expect("layer blocks are named")).collect()
    }

    /// The index of a layer given by hook name (`core_features_layer1`) or number (`1`).
    pub fn layer_index(&self, name: &str) -> Result<usize> {
        let n = self.core.n_layers();
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

    pub fn readout(&self, session: &str) -> Result<&dyn Readout<F>> {
        self.readouts.get(session).map(|r| r.as_ref()).ok_or_else(|| {
            let known: Vec<&str> = self.sessions().collect();
            Error::new(format!("unknown session `{session}`; this model has {}", known.join(", ")))
        })
    }

    /// Move every readout's position to (0, 0), as openretina's `Center(target_mean=(0, 0))`
    /// (readouts without a learned position are left as they are).
    pub fn center_readouts(&mut self) {
        for r in self.readouts.values_mut() {
            if let Some(centred) = r.centered([0.0, 0.0]) {
                *r = centred;
            }
        }
    }

    /// Output shape `(channels, time, height, width)` of each core layer for `time_steps` frames.
    pub fn layer_output_shapes(&self, time_steps: usize) -> Result<Vec<[usize; 4]>> {
        self.core.layer_output_shapes(self.input_shape(time_steps))
    }

    /// Shape `(channels, time, height, width)` of the core output the readouts see.
    pub fn core_output_shape(&self, time_steps: usize) -> Result<[usize; 4]> {
        self.core.output_shape(self.input_shape(time_steps))
    }

    fn input_shape(&self, time_steps: usize) -> [usize; 4] {
        let c = &self.config;
        [c.input_channels, time_steps, c.height, c.width]
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
                self.core_output_shape(*t)?;
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
        let per_sample = stimulus.numel() / stimulus.shape[0];
        let results: Vec<_> = stimulus
            .data
            .par_chunks_exact(per_sample)
            .map(|x| {
                let tape = self.core.forward(x, shape, Some(session));
                let (out, out_shape) = self.core.output(&tape);
                let (responses, _) = readout.forward(&out, out_shape);
                (tape, responses, out_shape[1])
            })
            .collect();
        let b = stimulus.shape[0];
        let t_out = results[0].2;
        let mut layers = Vec::new();
        for &block in &self.core.layer_blocks {
            let (_, [c, t, h, w]) = results[0].0.block_output(block);
            let data = results.iter().flat_map(|r| r.0.block_output(block).0.iter().copied()).collect();
            layers.push(Tensor::new(vec![b, c, t, h, w], data)?);
        }
        let data = results.into_iter().flat_map(|r| r.1).collect();
        let responses = Tensor::new(vec![b, t_out, readout.neurons()], data)?;
        let out = ForwardOutput { layers, responses };
        out.check_finite(session)?;
        Ok(out)
    }
}

/// The core's blocks, one line each with its layers and output shape for the training length, as
/// `retina info` prints them.
pub fn describe_core<F: Float>(model: &Model<F>) -> String {
    let c = &model.config;
    let input = [c.input_channels, c.train_time_steps.unwrap_or(50), c.height, c.width];
    let shapes = model.core.block_output_shapes(input).unwrap_or_default();
    let mut s = String::new();
    for (b, block) in model.core.blocks.iter().enumerate() {
        let layers: Vec<String> = block.layers.iter().map(|l| l.describe()).collect();
        s += &format!(
            "  {}: {}{}\n",
            block.hook().unwrap_or_else(|| "input".into()),
            layers.join(" -> "),
            shapes.get(b).map(|o| format!(", output {o:?}")).unwrap_or_default()
        );
    }
    s
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
    + simd_conv::DirectConv
    + simd_frame::FrameCorrelation
    + simd_math::VectorMath
    + simd_spatial::SpatialGradient
    + simd_temporal::TemporalCorrelation
    + fft_conv::FftKernels
    + simd_separable::SeparableKernels
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
    fn tanh(self) -> Self;
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
            fn tanh(self) -> Self { <$t>::tanh(self) }
        }
    };
}
impl_float!(f32);
impl_float!(f64);
