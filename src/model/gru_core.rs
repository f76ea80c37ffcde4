//! openretina's `ConvGRUCore` (`modules/core/gru_core.py`): convolution layers `layer<i>` (conv ->
//! BatchNorm -> ELU), with `use_projections` a 1x1x1 `TorchFullConv3D` + ELU after `layer0`
//! (`projection`), and with `use_gru` a convolutional GRU over time at the end (`gru`). The core
//! cuts no frames and feeds its last block to the readout.
//!
//! Reproduced as openretina 1.1.1 builds it, because that is the architecture its weights were
//! trained with:
//! - Padding: `input_padding` and `hidden_padding` count only as true or false (their values are
//!   ignored). Layer `i >= 1` takes the padding openretina computed for layer `i - 1`: none for
//!   layer 1 (layer 0's entry is always 0) and `spatial_kernel_sizes[i - 1] // 2` in space for later
//!   layers. So `GRU_core_readout.yaml`'s `hidden_padding: [0, 2, 2]` gives layer 1 no padding.
//! - Layer 0 has its ELU only when `final_nonlinearity` is true (later layers: unless last).
//! - Kernel sizes may list more entries than layers (only the first ones are used).

use std::sync::Arc;

use serde_json::Value;

use super::config::{self, as_usize, CoreLayout, LayerConfig, ModelConfig, Options};
use super::core::{Block, Core};
use super::layer::Layer;
use super::layers::{batch_norm::BatchNormBias, conv3d::Conv3d, conv_gru::ConvGruCell, conv_gru::GruSize, elu::Elu, pointwise::Pointwise};
use super::load::StateDict;
use super::{registry, Float};
use crate::error::Result;

/// Python's truthiness of an option value (`0`, `[]`, `false`, `""`, `None` are false).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// `key` as openretina takes kernel sizes: one integer for every layer, or a list with at least
/// one entry per layer.
fn kernel_sizes(core: &Options, key: &str, layers: usize, default: usize) -> Result<Vec<usize>> {
    let sizes = match core.get(key) {
        None => vec![default],
        Some(v) if as_usize(v).is_some() => return Ok(vec![as_usize(v).unwrap_or(default); layers]),
        Some(_) => core.usize_list(key, None)?,
    };
    if sizes.len() < layers || sizes[..layers].contains(&0) {
        return Err(core.err(key, &format!("a positive kernel size for each of the {layers} layers")));
    }
    Ok(sizes[..layers].to_vec())
}

/// The layers of a `ConvGRUCore` from its options (its core kind's `layout`).
pub fn layout(map: &serde_json::Map<String, Value>, channels: &[usize]) -> Result<CoreLayout> {
    let core = config::core_options(map);
    let convolution = config::conv_type(&core, "convolution_type")?;
    if channels.len() < 2 || channels.contains(&0) {
        bail!("hyper parameters: ConvGRUCore needs at least one layer of positive channel counts, got channels {channels:?}");
    }
    let n = channels.len() - 1;
    let temporal = kernel_sizes(&core, "temporal_kernel_sizes", n, 21)?;
    let spatial = kernel_sizes(&core, "spatial_kernel_sizes", n, 14)?;
    if core.str("nonlinearity", "ELU")? != "ELU" {
        return Err(core.err("nonlinearity", "\"ELU\" (the only non-linearity retina implements)"));
    }
    if !core.bool("batch_norm", true)? {
        bail!("hyper parameter `core.batch_norm` = false is not implemented for ConvGRUCore");
    }
    if core.bool("batch_adaptation", false)? {
        bail!("hyper parameter `core.batch_adaptation` = true (per-session log speeds) is not implemented for ConvGRUCore");
    }
    let bias = core.bool("bias", true)?;
    let batch_norm_scale = core.bool("batch_norm_scale", true)?;
    if !bias && batch_norm_scale {
        bail!("hyper parameters `core.bias` = false with `core.batch_norm_scale` = true (openretina's scale layers) are not implemented");
    }
    let input_padding = truthy(map.get("input_padding"));
    let hidden_padding = map.get("hidden_padding").map_or(true, |v| truthy(Some(v)));
    // openretina's padding list: entry 0 is 0, entry x > 0 pads space by spatial[x] // 2.
    let hidden_pad = |x: usize| if hidden_padding && x > 0 { spatial[x] / 2 } else { 0 };
    let layers = (0..n)
        .map(|i| {
            if temporal[i] < 3 && convolution == "custom_separable" {
                bail!("hyper parameters: temporal kernel size {} of layer {i} is below the subsampling factor 3", temporal[i]);
            }
            let pad = match i {
                0 if input_padding => spatial[0] / 2,
                0 => 0,
                _ => hidden_pad(i - 1),
            };
            Ok(LayerConfig {
                convolution: convolution.clone(),
                in_channels: channels[i],
                out_channels: channels[i + 1],
                temporal_kernel: temporal[i],
                spatial_kernel: spatial[i],
                padding: [(0, 0), (pad, pad), (pad, pad)],
                padding_same: false,
                batch_norm_affine: bias && batch_norm_scale,
                bias_layer: bias && !batch_norm_scale,
                max_pool: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    gru_size(&core, channels[n])?;
    Ok(CoreLayout { layers, color_squashing_weights: None, downsample_input_kernel_size: None, cut_first_n_frames: 0 })
}

/// The GRU's sizes when `use_gru` is set. Even kernels are refused: openretina 1.1.1 cannot run
/// them (the gate convolution grows the state by one pixel), so no trained model has them.
fn gru_size(core: &Options, in_channels: usize) -> Result<Option<GruSize>> {
    if !core.bool("use_gru", false)? {
        return Ok(None);
    }
    let map = core.get("gru_kwargs").and_then(Value::as_object).ok_or_else(|| core.err("gru_kwargs", "an object (use_gru is true)"))?;
    let kw = config::options(map, "core.gru_kwargs.");
    let size = GruSize {
        in_channels,
        rec_channels: kw.usize("rec_channels", None)?,
        input_kern: kw.usize("input_kern", None)?,
        rec_kern: kw.usize("rec_kern", None)?,
        pad_input: kw.bool("pad_input", true)?,
    };
    if kw.usize("groups", Some(1))? != 1 {
        return Err(kw.err("groups", "1 (grouped GRU convolutions are not implemented)"));
    }
    if size.rec_channels == 0 {
        return Err(kw.err("rec_channels", "a positive integer"));
    }
    for (key, k, padded) in [("input_kern", size.input_kern, size.pad_input), ("rec_kern", size.rec_kern, true)] {
        if k == 0 || (padded && k % 2 == 0) {
            return Err(kw.err(
                key,
                "an odd kernel size (openretina 1.1.1 fails on even ones: its padded gate convolutions grow the state by a pixel, \
                 \"The size of tensor a must match the size of tensor b\"), so no trained model has one",
            ));
        }
    }
    Ok(Some(size))
}

/// Builds the blocks from `core.features.*` (the core kind's `load`).
pub fn load<F: Float>(config: &ModelConfig, sd: &mut StateDict) -> Result<Core<F>> {
    let core = config::core_options(&config.core_options);
    let final_nonlinearity = core.bool("final_nonlinearity", true)?;
    let n = config.layers.len();
    let mut blocks = Vec::new();
    for (i, lc) in config.layers.iter().enumerate() {
        let p = format!("core.features.layer{i}");
        let conv = (registry::conv_kind::<F>(&lc.convolution)?.load)(lc, sd, &format!("{p}.conv"), &[])?;
        let norm = BatchNormBias::<F>::load(sd, &p, lc.out_channels, lc.batch_norm_affine, lc.bias_layer)?;
        let mut layers: Vec<Arc<dyn Layer<F>>> = vec![conv, Arc::new(norm)];
        if final_nonlinearity || (i > 0 && i + 1 < n) {
            layers.push(Arc::new(Elu));
        }
        blocks.push(Block { name: Some(format!("layer{i}")), layers });
        if i == 0 && core.bool("use_projections", false)? {
            let p = "core.features.projection.0";
            // TorchFullConv3D keeps a log speed buffer it does not use.
            sd.take_scalar::<F>(&format!("{p}._log_speed_default"))?;
            let c = lc.out_channels;
            let conv = Conv3d::load(sd, &format!("{p}.conv"), c, c, [1, 1, 1], [(0, 0); 3], false, "TorchFullConv3D (projection)")?;
            blocks.push(Block { name: Some("projection".into()), layers: vec![Arc::new(Pointwise::new(conv)), Arc::new(Elu)] });
        }
    }
    if let Some(size) = gru_size(&core, config.layers[n - 1].out_channels)? {
        let gru = ConvGruCell::<F>::load(sd, "core.features.gru.gru", size)?;
        blocks.push(Block { name: Some("gru".into()), layers: vec![Arc::new(gru)] });
    }
    Ok(Core::new(blocks, None, 0))
}
