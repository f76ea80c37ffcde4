//! The legacy Hoefling 2024 ensemble member `SFB3d_core_SxF3d_readout` (nnfabrik layout): a
//! `ParametricFactorizedBatchConv3dCore` from `model_config` with per-session input dimensions and
//! `SpatialXFeature3d` readouts.

use serde_json::{Map, Value};

use super::options::{obj, Options};
use super::{as_usize, conv_type, sessions, validate, Architecture, LayerConfig, ModelConfig, ReadoutConfig};
use crate::error::{Error, Result};

pub(super) fn hoefling_ensemble_member(hp: &Map<String, Value>) -> Result<ModelConfig> {
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
