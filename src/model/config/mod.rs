//! The typed model configuration, built from the hyper parameters openretina stores with a model.
//!
//! Three classes are understood: `ExampleCoreReadout` (flat hyper parameters), `UnifiedCoreReadout`
//! (core and readout given as config dicts; `core_readout.rs`) and the legacy Hoefling 2024 ensemble
//! member `SFB3d_core_SxF3d_readout` (`model_config` + per-session input dimensions;
//! `hoefling_member.rs`). Anything else, and any option `retina` does not implement, is an error that
//! names the option (`options.rs` reads the stored values).

mod core_readout;
mod hoefling_member;
mod options;

use serde_json::{Map, Value};

use super::registry;
use crate::error::{Error, Result};

pub(crate) use core_readout::simple_core_layout_unified;
pub(crate) use options::{as_usize, conv_type, core_options, options, Options};
use options::obj;

/// Zero padding before and after, per dimension (time, height, width).
pub type Padding = [(usize, usize); 3];

#[derive(Debug, Clone, PartialEq)]
pub struct LayerConfig {
    /// The `convolution_type` option: which convolution kind of `registry.rs` the layer has.
    pub convolution: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub temporal_kernel: usize,
    pub spatial_kernel: usize,
    pub padding: Padding,
    /// The padding was given as "same" (`True`): convolutions built of stages pad each stage "same".
    pub padding_same: bool,
    /// BatchNorm3d has learned weight and bias (`affine=True`).
    pub batch_norm_affine: bool,
    /// A `Bias3DLayer` follows the BatchNorm.
    pub bias_layer: bool,
    /// `MaxPool3d((1, 2, 2))` after the non-linearity.
    pub max_pool: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    /// `SimpleCoreWrapper` + `MultiGaussianMaskReadout` (`ExampleCoreReadout`, `UnifiedCoreReadout`).
    CoreReadout,
    /// `ParametricFactorizedBatchConv3dCore` + `SpatialXFeature3d` readouts, with a temporal log speed
    /// per session; `stack` lists the layers whose outputs are concatenated for the readout.
    HoeflingEnsembleMember { stack: Vec<usize> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadoutConfig {
    /// The readout class of `registry.rs` (openretina's `readout._target_` class name).
    pub class: String,
    /// The stored `in_shape` `(channels, t, h, w)` of the core output the readout was built for.
    pub in_shape: Option<Vec<usize>>,
    pub gaussian_mean_scale: f64,
    pub gaussian_var_scale: f64,
    /// Feature weights are clamped at 0.
    pub positive: bool,
    /// A learned per-neuron scale exists (otherwise 1).
    pub scale: bool,
    /// A learned per-neuron bias exists (otherwise 0).
    pub bias: bool,
    /// The readout's own options as stored (`readout.*` of `UnifiedCoreReadout`; empty otherwise):
    /// kinds with options beyond the Gaussian mask's read them here (see [`ReadoutConfig::options`]).
    pub options: Map<String, Value>,
}

impl ReadoutConfig {
    /// The stored `readout.*` options, read with errors that name the option.
    pub(crate) fn options(&self) -> Options<'_> {
        Options { map: &self.options, prefix: "readout." }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub model_class: String,
    /// The core class of `registry.rs` (openretina's `core._target_` class name).
    pub core_class: String,
    pub architecture: Architecture,
    /// Stimulus channels (colours), height and width.
    pub input_channels: usize,
    pub height: usize,
    pub width: usize,
    /// Time steps the model was trained with (informational; any length that the kernels allow works).
    pub train_time_steps: Option<usize>,
    pub layers: Vec<LayerConfig>,
    /// Weighted channel sum to one grey channel before the core.
    pub color_squashing_weights: Option<Vec<f64>>,
    /// `avg_pool3d` kernel (= stride) applied to the input before the core.
    pub downsample_input_kernel_size: Option<[usize; 3]>,
    pub cut_first_n_frames: usize,
    /// Sessions sorted by name (openretina's `readout_keys()` order) with their neuron counts.
    pub sessions: Vec<(String, usize)>,
    pub readout: ReadoutConfig,
    /// The core's own options as stored (`core.*` of `UnifiedCoreReadout`; empty otherwise): core
    /// kinds with blocks beyond the convolution layers read them here (see [`core_options`]).
    pub core_options: Map<String, Value>,
}

/// What a core class's options say about its convolution layers and input preprocessing: the
/// `layout` of a core kind in `registry.rs`.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreLayout {
    pub layers: Vec<LayerConfig>,
    pub color_squashing_weights: Option<Vec<f64>>,
    pub downsample_input_kernel_size: Option<[usize; 3]>,
    pub cut_first_n_frames: usize,
}

impl ModelConfig {
    pub fn from_hyper_parameters(model_class: &str, hp: &Value) -> Result<Self> {
        let hp = hp.as_object().ok_or_else(|| Error::new("hyper_parameters is not a JSON object"))?;
        match model_class {
            "ExampleCoreReadout" => core_readout::example_core_readout(hp),
            "UnifiedCoreReadout" => core_readout::unified_core_readout(hp),
            "SFB3d_core_SxF3d_readout" => hoefling_member::hoefling_ensemble_member(hp),
            other => Err(Error::new(format!(
                "unknown model_class `{other}`; retina runs ExampleCoreReadout, UnifiedCoreReadout and SFB3d_core_SxF3d_readout"
            ))),
        }
    }

    pub fn session_names(&self) -> impl Iterator<Item = &str> {
        self.sessions.iter().map(|(s, _)| s.as_str())
    }

    pub fn neurons(&self, session: &str) -> Option<usize> {
        self.sessions.iter().find(|(s, _)| s == session).map(|(_, n)| *n)
    }

    /// The stimulus shape `(batch, channels, time, height, width)`, as openretina's `stimulus_shape`.
    pub fn stimulus_shape(&self, time_steps: usize, batch: usize) -> [usize; 5] {
        [batch, self.input_channels, time_steps, self.height, self.width]
    }

    /// Output shape `(channels, time, height, width)` of each core layer for a stimulus of `time_steps`
    /// frames, or an error naming the layer whose kernel does not fit.
    pub fn layer_output_shapes(&self, time_steps: usize) -> Result<Vec<[usize; 4]>> {
        let mut shape = [self.input_channels, time_steps, self.height, self.width];
        if self.color_squashing_weights.is_some() {
            shape[0] = 1;
        }
        if let Some(k) = self.downsample_input_kernel_size {
            for d in 0..3 {
                shape[d + 1] /= k[d];
            }
        }
        let mut shapes = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            // The convolution kind's window (validated when the config was built).
            let (kernel, padding) = registry::conv_kind::<f32>(&layer.convolution).map(|k| (k.window)(layer))?;
            let mut out = [layer.out_channels, 0, 0, 0];
            for d in 0..3 {
                let padded = shape[d + 1] + padding[d].0 + padding[d].1;
                if padded < kernel[d] {
                    let what = ["time steps", "height", "width"][d];
                    return Err(Error::new(format!(
                        "core_features_layer{i}: input {what} {} (padded {padded}) is smaller than its kernel {}; use a longer stimulus",
                        shape[d + 1], kernel[d]
                    )));
                }
                out[d + 1] = padded - kernel[d] + 1;
            }
            if layer.max_pool {
                out[2] /= 2;
                out[3] /= 2;
            }
            shapes.push(out);
            shape = out;
        }
        Ok(shapes)
    }

    /// Shape `(channels, time, height, width)` of the core output the readouts see.
    pub fn core_output_shape(&self, time_steps: usize) -> Result<[usize; 4]> {
        let shapes = self.layer_output_shapes(time_steps)?;
        let mut out = match &self.architecture {
            Architecture::CoreReadout => *shapes.last().expect("at least one layer"),
            Architecture::HoeflingEnsembleMember { stack } => {
                let first = shapes[stack[0]];
                let channels = stack.iter().map(|&l| shapes[l][0]).sum();
                for &l in stack {
                    if shapes[l][1..] != first[1..] {
                        bail!("stack: layers {:?} have different output sizes and cannot be concatenated", stack);
                    }
                }
                [channels, first[1], first[2], first[3]]
            }
        };
        if out[1] <= self.cut_first_n_frames {
            bail!(
                "cut_first_n_frames {} leaves no core output for {time_steps} time steps; use a longer stimulus",
                self.cut_first_n_frames
            );
        }
        out[1] -= self.cut_first_n_frames;
        Ok(out)
    }
}

/// Sessions and neuron counts from `n_neurons_dict`, sorted by name.
pub(super) fn sessions(hp: &Options) -> Result<Vec<(String, usize)>> {
    let dict = hp
        .get("n_neurons_dict")
        .or_else(|| hp.get("data_info").and_then(|d| d.get("n_neurons_dict")))
        .ok_or_else(|| Error::new("hyper parameter `n_neurons_dict` is missing"))?;
    let dict = obj(dict, "n_neurons_dict")?;
    if dict.is_empty() {
        bail!("hyper parameter `n_neurons_dict` is empty: the model has no sessions");
    }
    let mut sessions = dict
        .iter()
        .map(|(k, v)| {
            as_usize(v)
                .filter(|&n| n > 0)
                .map(|n| (k.clone(), n))
                .ok_or_else(|| Error::new(format!("hyper parameter `n_neurons_dict.{k}`: expected a positive integer, got {v}")))
        })
        .collect::<Result<Vec<_>>>()?;
    sessions.sort();
    Ok(sessions)
}

/// `(channels, height, width)` of the stimulus and the training time steps, from `in_shape`
/// (`[C, T, H, W]`) checked against `data_info.input_shape` (`[C, H, W]`) when both exist.
pub(super) fn input_shape(hp: &Options) -> Result<([usize; 3], Option<usize>)> {
    let in_shape = hp.get("in_shape").map(|_| hp.usize_list("in_shape", None)).transpose()?;
    let info_shape = hp
        .get("data_info")
        .and_then(|d| d.get("input_shape"))
        .map(|v| {
            v.as_array()
                .and_then(|a| a.iter().map(as_usize).collect::<Option<Vec<_>>>())
                .ok_or_else(|| Error::new("hyper parameter `data_info.input_shape`: expected three integers"))
        })
        .transpose()?;
    match (in_shape.as_deref(), info_shape.as_deref()) {
        (Some([c, t, h, w]), Some([c2, h2, w2])) if (c, h, w) != (c2, h2, w2) => {
            bail!("hyper parameters disagree: in_shape {:?} vs data_info.input_shape {:?}", [c, t, h, w], [c2, h2, w2])
        }
        (Some([c, t, h, w]), _) => Ok(([*c, *h, *w], Some(*t))),
        (None, Some([c, h, w])) => Ok(([*c, *h, *w], None)),
        (Some(other), _) => bail!("hyper parameter `in_shape`: expected [channels, time, height, width], got {other:?}"),
        (None, Some(other)) => bail!("hyper parameter `data_info.input_shape`: expected three integers, got {other:?}"),
        (None, None) => bail!("hyper parameter `in_shape` is missing"),
    }
}

/// Checks shared by all classes.
pub(super) fn validate(config: ModelConfig) -> Result<ModelConfig> {
    if config.input_channels == 0 || config.height == 0 || config.width == 0 {
        bail!("hyper parameters: the stimulus shape has a zero dimension");
    }
    let mut config = config;
    if let Some(w) = &config.color_squashing_weights {
        // openretina squashes colour stimuli into one grey channel: the core takes 1 channel and the
        // stimulus has one channel per weight.
        if config.layers[0].in_channels != 1 {
            bail!("hyper parameter `color_squashing_weights` needs a core with 1 input channel");
        }
        if w.is_empty() {
            bail!("hyper parameter `color_squashing_weights` is empty");
        }
        config.input_channels = w.len();
    } else if config.layers[0].in_channels != config.input_channels {
        bail!(
            "hyper parameters disagree: the core takes {} channels but the stimulus has {}",
            config.layers[0].in_channels,
            config.input_channels
        );
    }
    // Shapes must work for the training length (or a 50-frame stimulus when it is unknown).
    config.core_output_shape(config.train_time_steps.unwrap_or(50))?;
    Ok(config)
}
