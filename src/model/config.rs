//! The typed model configuration, built from the hyper parameters openretina stores with a model.
//!
//! Three classes are understood: `ExampleCoreReadout` (flat hyper parameters), `UnifiedCoreReadout`
//! (core and readout given as config dicts) and the legacy Hoefling 2024 ensemble member
//! `SFB3d_core_SxF3d_readout` (`model_config` + per-session input dimensions). Anything else, and any
//! option `retina` does not implement, is an error that names the option.

use serde_json::{Map, Value};

use super::registry;
use crate::error::{Error, Result};

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
            "ExampleCoreReadout" => example_core_readout(hp),
            "UnifiedCoreReadout" => unified_core_readout(hp),
            "SFB3d_core_SxF3d_readout" => hoefling_ensemble_member(hp),
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

// ---- reading JSON values with errors that name the option ----

pub(crate) struct Options<'a> {
    map: &'a Map<String, Value>,
    /// Prefix for error messages, e.g. "core." for UnifiedCoreReadout's core dict.
    prefix: &'a str,
}

impl<'a> Options<'a> {
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn err(&self, key: &str, expected: &str) -> Error {
        let got = self.map.get(key).map(|v| v.to_string()).unwrap_or_else(|| "nothing".into());
        Error::new(format!("hyper parameter `{}{key}`: expected {expected}, got {got}", self.prefix))
    }

    pub(crate) fn required(&self, key: &str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| {
            Error::new(format!("hyper parameter `{}{key}` is missing; is this an openretina model?", self.prefix))
        })
    }

    pub(crate) fn usize(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match self.get(key) {
            None => default.ok_or_else(|| self.required(key).unwrap_err()),
            Some(v) => as_usize(v).ok_or_else(|| self.err(key, "a non-negative integer")),
        }
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| as_usize(v).ok_or_else(|| self.err(key, "a non-negative integer"))).transpose()
    }

    pub(crate) fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, "a number")),
        }
    }

    pub(crate) fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, "true or false")),
        }
    }

    /// A list of integers; a single integer is repeated `n` times when `n` is given.
    pub(crate) fn usize_list(&self, key: &str, repeat: Option<usize>) -> Result<Vec<usize>> {
        let v = self.required(key)?;
        if let (Some(n), Some(x)) = (repeat, as_usize(v)) {
            return Ok(vec![x; n]);
        }
        v.as_array()
            .and_then(|a| a.iter().map(as_usize).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.err(key, "a list of non-negative integers"))
    }

    pub(crate) fn opt_f64_list(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.get(key)
            .map(|v| {
                v.as_array()
                    .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| self.err(key, "a list of numbers"))
            })
            .transpose()
    }

    pub(crate) fn opt_triple(&self, key: &str) -> Result<Option<[usize; 3]>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let list = v.as_array().and_then(|a| a.iter().map(as_usize).collect::<Option<Vec<_>>>());
                match list.as_deref() {
                    Some([a, b, c]) if *a > 0 && *b > 0 && *c > 0 => Ok(Some([*a, *b, *c])),
                    _ => Err(self.err(key, "three positive integers")),
                }
            }
        }
    }

    pub(crate) fn str(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.err(key, "a string")),
        }
    }

    /// A padding option as openretina's `SimpleCoreWrapper` takes it: `True` = "same", `False` = 0,
    /// an int, a 3-tuple, or the strings "same" / "valid".
    fn padding(&self, key: &str, default: &Value, kernel: [usize; 3]) -> Result<Padding> {
        let v = self.get(key).unwrap_or(default);
        let same = || kernel.map(|k| ((k - 1) / 2, (k - 1) - (k - 1) / 2));
        let sym = |p: [usize; 3]| p.map(|x| (x, x));
        let padding = match v {
            Value::Bool(true) => Ok(same()),
            Value::Bool(false) => Ok([(0, 0); 3]),
            Value::String(s) if s == "same" => Ok(same()),
            Value::String(s) if s == "valid" => Ok([(0, 0); 3]),
            Value::Number(_) => as_usize(v).map(|p| sym([p; 3])).ok_or_else(|| self.err(key, "a padding")),
            Value::Array(a) => match a.iter().map(as_usize).collect::<Option<Vec<_>>>().as_deref() {
                Some([t, h, w]) => Ok(sym([*t, *h, *w])),
                _ => Err(self.err(key, "a padding of three non-negative integers")),
            },
            _ => Err(self.err(key, "a padding (true, false, \"same\", \"valid\", an integer or three integers)")),
        }?;
        // More padding than kernel only adds outputs that see no input; a huge value would overflow
        // the shape arithmetic. Either way the file is not a model openretina trained.
        if (0..3).any(|d| padding[d].0.max(padding[d].1) > kernel[d]) {
            return Err(self.err(key, &format!("a padding no larger than the kernel {kernel:?}")));
        }
        Ok(padding)
    }
}

/// A core's stored options (`core.*`), read with errors that name the option.
pub(crate) fn core_options(map: &Map<String, Value>) -> Options<'_> {
    options(map, "core.")
}

/// Stored options under `prefix` (e.g. `core.gru_kwargs.`), read with errors that name the option.
pub(crate) fn options<'a>(map: &'a Map<String, Value>, prefix: &'a str) -> Options<'a> {
    Options { map, prefix }
}

pub(crate) fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().map(|x| x as usize).or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as usize))
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| Error::new(format!("hyper parameter `{what}`: expected an object")))
}

/// Sessions and neuron counts from `n_neurons_dict`, sorted by name.
fn sessions(hp: &Options) -> Result<Vec<(String, usize)>> {
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
fn input_shape(hp: &Options) -> Result<([usize; 3], Option<usize>)> {
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

/// The convolution type option, checked against the kinds `registry.rs` knows.
pub(crate) fn conv_type(opts: &Options, key: &str) -> Result<String> {
    let name = opts.str(key, "custom_separable")?;
    registry::conv_kind::<f32>(name).map_err(|e| Error::new(format!("hyper parameter `{}{key}`: {e}", opts.prefix)))?;
    Ok(name.to_string())
}

/// The layers of a `SimpleCoreWrapper`.
#[allow(clippy::too_many_arguments)]
fn simple_core_layers(
    opts: &Options,
    convolution: &str,
    channels: &[usize],
    temporal: &[usize],
    spatial: &[usize],
    input_padding_key: &str,
    hidden_padding_key: &str,
    maxpool_every_n_layers: Option<usize>,
) -> Result<Vec<LayerConfig>> {
    if channels.len() < 2 {
        bail!("hyper parameters: at least one core layer is needed, got channels {channels:?}");
    }
    let n = channels.len() - 1;
    if temporal.len() != n || spatial.len() != n {
        bail!(
            "hyper parameters: {n} core layers but {} temporal and {} spatial kernel sizes",
            temporal.len(),
            spatial.len()
        );
    }
    if maxpool_every_n_layers == Some(0) {
        bail!("hyper parameter `maxpool_every_n_layers` must be positive");
    }
    (0..n)
        .map(|i| {
            let kernel = [temporal[i], spatial[i], spatial[i]];
            if kernel.contains(&0) || channels[i] == 0 || channels[i + 1] == 0 {
                bail!("hyper parameters: layer {i} has a zero-sized kernel or channel count");
            }
            if temporal[i] < 3 && convolution == "custom_separable" {
                bail!("hyper parameters: temporal kernel size {} of layer {i} is below the subsampling factor 3", temporal[i]);
            }
            let (key, default) = if i == 0 {
                (input_padding_key, Value::Bool(false))
            } else {
                (hidden_padding_key, Value::Bool(true))
            };
            Ok(LayerConfig {
                convolution: convolution.to_string(),
                in_channels: channels[i],
                out_channels: channels[i + 1],
                temporal_kernel: temporal[i],
                spatial_kernel: spatial[i],
                padding: opts.padding(key, &default, kernel)?,
                padding_same: matches!(opts.get(key).unwrap_or(&default), Value::Bool(true)) || opts.get(key).and_then(Value::as_str) == Some("same"),
                batch_norm_affine: true,
                bias_layer: true,
                max_pool: maxpool_every_n_layers.is_some_and(|m| i % m == 0),
            })
        })
        .collect()
}

fn example_core_readout(hp: &Map<String, Value>) -> Result<ModelConfig> {
    let o = Options { map: hp, prefix: "" };
    let mut channels = vec![input_shape(&o)?.0[0]];
    channels.extend(o.usize_list("hidden_channels", None)?);
    // ExampleCoreReadout's own defaults (the readout keys carry a `readout_` prefix).
    let defaults = ReadoutConfig {
        class: "MultiGaussianMaskReadout".into(),
        in_shape: None,
        gaussian_mean_scale: 6.0,
        gaussian_var_scale: 4.0,
        positive: true,
        scale: true,
        bias: true,
        options: Map::new(),
    };
    let keys = CoreKeys { input_padding: "core_input_padding", hidden_padding: "core_hidden_padding", cut: "cut_first_n_frames_in_core" };
    let layout = simple_core_layout(&o, &keys, &channels)?;
    core_readout("ExampleCoreReadout", &o, layout, &channels, gaussian_readout(&o, "readout_", defaults)?)
}

/// Names of the core options that differ between the two classes.
struct CoreKeys {
    input_padding: &'static str,
    hidden_padding: &'static str,
    cut: &'static str,
}

/// A `MultiGaussianMaskReadout`'s options, `{prefix}gaussian_mean_scale` etc.
fn gaussian_readout(o: &Options, prefix: &str, defaults: ReadoutConfig) -> Result<ReadoutConfig> {
    let key = |name: &str| format!("{prefix}{name}");
    Ok(ReadoutConfig {
        class: defaults.class.clone(),
        in_shape: None,
        gaussian_mean_scale: o.f64(&key("gaussian_mean_scale"), defaults.gaussian_mean_scale)?,
        gaussian_var_scale: o.f64(&key("gaussian_var_scale"), defaults.gaussian_var_scale)?,
        positive: o.bool(&key("positive"), defaults.positive)?,
        scale: o.bool(&key("scale"), defaults.scale)?,
        bias: o.bool(&key("bias"), defaults.bias)?,
        options: defaults.options,
    })
}

/// `SimpleCoreWrapper`'s layers and preprocessing from its options (`keys` name the options that
/// differ between ExampleCoreReadout and UnifiedCoreReadout).
fn simple_core_layout(core: &Options, keys: &CoreKeys, channels: &[usize]) -> Result<CoreLayout> {
    let convolution = conv_type(core, "convolution_type")?;
    let layers = simple_core_layers(
        core,
        &convolution,
        channels,
        &core.usize_list("temporal_kernel_sizes", None)?,
        &core.usize_list("spatial_kernel_sizes", None)?,
        keys.input_padding,
        keys.hidden_padding,
        core.opt_usize("maxpool_every_n_layers")?,
    )?;
    Ok(CoreLayout {
        layers,
        color_squashing_weights: core.opt_f64_list("color_squashing_weights")?,
        downsample_input_kernel_size: core.opt_triple("downsample_input_kernel_size")?,
        cut_first_n_frames: core.usize(keys.cut, Some(30))?,
    })
}

/// `SimpleCoreWrapper`'s layout from a `UnifiedCoreReadout`'s `core` options (its core kind's `layout`).
pub(crate) fn simple_core_layout_unified(core: &Map<String, Value>, channels: &[usize]) -> Result<CoreLayout> {
    let keys = CoreKeys { input_padding: "input_padding", hidden_padding: "hidden_padding", cut: "cut_first_n_frames" };
    simple_core_layout(&core_options(core), &keys, channels)
}

/// A model of a core `layout` + readout, with the stimulus shape and sessions from `top`.
fn core_readout(model_class: &str, top: &Options, layout: CoreLayout, channels: &[usize], readout: ReadoutConfig) -> Result<ModelConfig> {
    let ([c, h, w], t) = input_shape(top)?;
    if channels[0] != c {
        bail!("hyper parameters disagree: the core's channels start with {} but the stimulus has {c} channels", channels[0]);
    }
    validate(ModelConfig {
        model_class: model_class.into(),
        core_class: "SimpleCoreWrapper".into(),
        architecture: Architecture::CoreReadout,
        input_channels: c,
        height: h,
        width: w,
        train_time_steps: t,
        layers: layout.layers,
        color_squashing_weights: layout.color_squashing_weights,
        downsample_input_kernel_size: layout.downsample_input_kernel_size,
        cut_first_n_frames: layout.cut_first_n_frames,
        sessions: sessions(top)?,
        readout,
        core_options: Map::new(),
    })
}

fn unified_core_readout(hp: &Map<String, Value>) -> Result<ModelConfig> {
    let o = Options { map: hp, prefix: "" };
    let core = Options { map: obj(o.required("core")?, "core")?, prefix: "core." };
    let readout = Options { map: obj(o.required("readout")?, "readout")?, prefix: "readout." };

    let core_target = core.str("_target_", "")?;
    let core_kind = registry::core_kind::<f32>(core_target).map_err(|e| Error::new(format!("hyper parameter `core._target_`: {e}")))?;
    let readout_target = readout.str("_target_", "")?;
    let readout_class =
        registry::readout_kind::<f32>(readout_target).map_err(|e| Error::new(format!("hyper parameter `readout._target_`: {e}")))?.class;
    // As in openretina, `hidden_channels` (when given) overrides `core.channels`.
    let channels = match o.get("hidden_channels") {
        Some(_) => {
            let mut ch = vec![input_shape(&o)?.0[0]];
            ch.extend(o.usize_list("hidden_channels", None)?);
            ch
        }
        None => core.usize_list("channels", None)?,
    };
    // The readout class's own defaults.
    let defaults = ReadoutConfig {
        class: readout_class.into(),
        in_shape: None,
        gaussian_mean_scale: 1.0,
        gaussian_var_scale: 1.0,
        positive: false,
        scale: false,
        bias: true,
        options: readout.map.clone(),
    };
    let layout = (core_kind.layout)(core.map, &channels)?;
    let mut config = core_readout("UnifiedCoreReadout", &o, layout, &channels, gaussian_readout(&readout, "", defaults)?)?;
    config.core_class = core_kind.class.into();
    config.core_options = core.map.clone();
    // Checked against the core's output when the model is built.
    config.readout.in_shape = readout.get("in_shape").map(|_| readout.usize_list("in_shape", None)).transpose()?;
    Ok(config)
}

fn hoefling_ensemble_member(hp: &Map<String, Value>) -> Result<ModelConfig> {
    let top = Options { map: hp, prefix: "" };
    let mc = Options { map: obj(top.required("model_config")?, "model_config")?, prefix: "model_config." };
    let convolution = conv_type(&mc, "conv_type")?;
    if mc.str("nonlinearity", "ELU")? != "ELU" {
        bail!("hyper parameter `model_config.nonlinearity`: retina implements only ELU");
    }
    if !mc.bool("final_nonlinearity", true)? {
        bail!("hyper parameter `model_config.final_nonlinearity` = false is not implemented");
    }
    if !mc.bool("batch_norm", true)? {
        bail!("hyper parameter `model_config.batch_norm` = false is not implemented");
    }
    if mc.bool("initialize_from_roi_masks", false)? || !mc.bool("gaussian_masks", false)? {
        bail!("hyper parameter `model_config.gaussian_masks` must be true: retina implements Gaussian mask readouts only");
    }
    let core_bias = mc.bool("core_bias", false)?;
    let batch_norm_scale = mc.bool("batch_norm_scale", false)?;
    if !core_bias && batch_norm_scale {
        bail!("hyper parameters `model_config.core_bias` = false with `batch_norm_scale` = true (a scale layer) are not implemented");
    }
    let n_layers = mc.usize("layers", Some(1))?;
    let hidden = mc.usize_list("hidden_channels", Some(n_layers))?;
    let temporal = mc.usize_list("temporal_kernel_size", Some(n_layers))?;
    let spatial = mc.usize_list("spatial_kernel_size", Some(n_layers))?;
    if hidden.len() < n_layers || temporal.len() < n_layers || spatial.len() < n_layers {
        bail!("hyper parameters: `model_config.layers` = {n_layers} but fewer channel or kernel sizes are given");
    }

    // Input dimensions per session: all must agree on (channels, height, width).
    let dims = obj(top.required("input_dimensions")?, "input_dimensions")?;
    let mut shape: Option<[usize; 3]> = None;
    let mut time = None;
    for (session, v) in dims {
        let d: Vec<usize> = v
            .as_array()
            .and_then(|a| a.iter().map(as_usize).collect())
            .filter(|d: &Vec<usize>| d.len() == 5)
            .ok_or_else(|| Error::new(format!("hyper parameter `input_dimensions.{session}`: expected 5 integers")))?;
        let s = [d[1], d[3], d[4]];
        if shape.is_some_and(|x| x != s) {
            bail!("hyper parameter `input_dimensions`: sessions disagree on the stimulus shape");
        }
        shape = Some(s);
        time = Some(d[2]);
    }
    let [c, h, w] = shape.ok_or_else(|| Error::new("hyper parameter `input_dimensions` is empty"))?;

    let mut channels = vec![c];
    channels.extend(&hidden[..n_layers]);
    let input_padding = mc.bool("input_padding", false)?;
    let hidden_padding = mc.bool("hidden_padding", true)?;
    let layers = (0..n_layers)
        .map(|i| {
            let k = spatial[i];
            // The legacy core pads space only, by k // 2 on each side.
            let pad = if (i == 0 && input_padding) || (i > 0 && hidden_padding && n_layers > 1) { k / 2 } else { 0 };
            if temporal[i] < 3 {
                bail!("hyper parameters: temporal kernel size {} of layer {i} is below the subsampling factor 3", temporal[i]);
            }
            Ok(LayerConfig {
                convolution: convolution.clone(),
                in_channels: channels[i],
                out_channels: channels[i + 1],
                temporal_kernel: temporal[i],
                spatial_kernel: k,
                padding: [(0, 0), (pad, pad), (pad, pad)],
                padding_same: false,
                batch_norm_affine: core_bias && batch_norm_scale,
                bias_layer: core_bias && !batch_norm_scale,
                max_pool: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    // `stack`: None = all layers, an int = that layer (negative counts from the end), a list = those.
    let resolve = |v: &Value| -> Result<usize> {
        let i = v.as_i64().ok_or_else(|| Error::new("hyper parameter `model_config.stack`: expected integers"))?;
        let idx = if i < 0 { n_layers as i64 + i } else { i };
        if idx < 0 || idx >= n_layers as i64 {
            bail!("hyper parameter `model_config.stack` = {i} is out of range for {n_layers} layers");
        }
        Ok(idx as usize)
    };
    let stack = match mc.get("stack") {
        None => (0..n_layers).collect(),
        Some(Value::Array(a)) if !a.is_empty() => a.iter().map(resolve).collect::<Result<Vec<_>>>()?,
        Some(v) => vec![resolve(v)?],
    };

    let config = ModelConfig {
        model_class: "SFB3d_core_SxF3d_readout".into(),
        core_class: "ParametricFactorizedBatchConv3dCore".into(),
        architecture: Architecture::HoeflingEnsembleMember { stack },
        input_channels: c,
        height: h,
        width: w,
        train_time_steps: time,
        layers,
        color_squashing_weights: None,
        downsample_input_kernel_size: None,
        cut_first_n_frames: 0,
        sessions: sessions(&top)?,
        readout: ReadoutConfig {
            class: "SpatialXFeature3d".into(),
            in_shape: None,
            gaussian_mean_scale: mc.f64("gaussian_mean_scale", 1.0)?,
            gaussian_var_scale: mc.f64("gaussian_var_scale", 1.0)?,
            positive: mc.bool("readout_positive", false)?,
            scale: mc.bool("readout_scale", false)?,
            bias: mc.bool("readout_bias", true)?,
            options: Map::new(),
        },
        core_options: Map::new(),
    };
    let names: Vec<&str> = config.session_names().collect();
    if dims.len() != names.len() || !names.iter().all(|s| dims.contains_key(*s)) {
        bail!("hyper parameters disagree: `input_dimensions` and `n_neurons_dict` name different sessions");
    }
    validate(config)
}

/// Checks shared by all classes.
fn validate(config: ModelConfig) -> Result<ModelConfig> {
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
