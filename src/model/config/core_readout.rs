//! openretina's `models/core_readout.py` classes: `ExampleCoreReadout` (flat hyper parameters, the
//! readout's keys prefixed `readout_`) and `UnifiedCoreReadout` (the `core` and `readout` config dicts,
//! their classes chosen by `_target_` in `registry.rs`); both with `SimpleCoreWrapper`'s layout here.

use serde_json::{Map, Value};

use super::options::{obj, Options};
use super::{conv_type, core_options, input_shape, sessions, validate, Architecture, CoreLayout, LayerConfig, ModelConfig, ReadoutConfig};
use crate::error::{Error, Result};
use crate::model::registry;

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

pub(super) fn example_core_readout(hp: &Map<String, Value>) -> Result<ModelConfig> {
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

pub(super) fn unified_core_readout(hp: &Map<String, Value>) -> Result<ModelConfig> {
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
