//! The one place where openretina's classes and options are matched to retina's kinds: core classes
//! (`core._target_`), convolution types (`convolution_type`) and readout classes (`readout._target_`).
//! Adding a kind is one line here plus its file; config parsing, loading, `info`, the MEI code and the
//! figures go through these tables and the `Layer` / `Readout` traits.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::config::{simple_core_layout_unified, CoreLayout, LayerConfig, ModelConfig, Padding, ReadoutConfig};
use super::core::Core;
use super::layer::{Layer, Shape};
use super::layers;
use super::layers::conv3d::Conv3d;
use super::layers::torch_separable::TorchSeparableConv3d;
use super::load::StateDict;
use super::readout::{self, Readout};
use super::Float;
use crate::error::{Error, Result};

/// A core class: builds the core's blocks from the config and the tensors `core.*`.
pub struct CoreKind<F> {
    /// The class name `core._target_` ends with.
    pub class: &'static str,
    /// Its convolution layers from `UnifiedCoreReadout`'s `core` options and channel counts.
    pub layout: fn(&serde_json::Map<String, serde_json::Value>, &[usize]) -> Result<CoreLayout>,
    pub load: fn(&ModelConfig, &mut StateDict) -> Result<Core<F>>,
}

/// A convolution of a core layer, chosen by the core's `convolution_type` option.
pub struct ConvKind<F> {
    pub option: &'static str,
    /// The PyTorch module openretina builds for it.
    pub class: &'static str,
    /// The stride-1 window `(kernel, padding)` of `(time, height, width)` the layer's outputs read
    /// (what sets its output shape before any weights are loaded).
    pub window: fn(&LayerConfig) -> ([usize; 3], Padding),
    /// Loads `{prefix}.*` (and per-session tensors for the sessions given).
    #[allow(clippy::type_complexity)]
    pub load: fn(&LayerConfig, &mut StateDict, &str, &[String]) -> Result<Arc<dyn Layer<F>>>,
}

/// A readout class: builds every session's readout from the tensors `readout.<session>.*`.
pub struct ReadoutKind<F> {
    /// The class name `readout._target_` ends with.
    pub class: &'static str,
    #[allow(clippy::type_complexity)]
    pub load: fn(&ReadoutConfig, &mut StateDict, &[(String, usize)], Shape) -> Result<BTreeMap<String, Arc<dyn Readout<F>>>>,
}

pub fn core_kinds<F: Float>() -> Vec<CoreKind<F>> {
    vec![
        CoreKind { class: "SimpleCoreWrapper", layout: simple_core_layout_unified, load: super::load::simple_core },
        // The legacy Hoefling 2024 ensemble member's core: the same layers, per-session log speeds.
        CoreKind { class: "ParametricFactorizedBatchConv3dCore", layout: simple_core_layout_unified, load: super::load::simple_core },
        CoreKind { class: "ConvGRUCore", layout: super::gru_core::layout, load: super::gru_core::load },
    ]
}

pub fn conv_kinds<F: Float>() -> Vec<ConvKind<F>> {
    vec![
        ConvKind { option: "custom_separable", class: "STSeparableBatchConv3d", window: configured_window, load: load_st_separable },
        ConvKind { option: "full", class: "TorchFullConv3D", window: configured_window, load: load_full },
        ConvKind { option: "separable", class: "TorchSTSeparableConv3D", window: separable_window, load: load_torch_separable },
        ConvKind { option: "time_independent", class: "TimeIndependentConv3D", window: time_independent_window, load: load_time_independent },
    ]
}

pub fn readout_kinds<F: Float>() -> Vec<ReadoutKind<F>> {
    vec![
        ReadoutKind { class: "MultiGaussianMaskReadout", load: readout::gaussian_mask::load_sessions },
        ReadoutKind { class: "SpatialXFeature3d", load: readout::gaussian_mask::load_sessions_legacy },
        ReadoutKind { class: "MultiFactorizedReadout", load: readout::factorized::load_sessions },
        ReadoutKind { class: "MultiSampledGaussianReadout", load: readout::point_gaussian::load_sessions },
    ]
}

fn load_st_separable<F: Float>(lc: &LayerConfig, sd: &mut StateDict, prefix: &str, sessions: &[String]) -> Result<Arc<dyn Layer<F>>> {
    Ok(Arc::new(layers::st_separable::SeparableConv3d::load(lc, sd, prefix, sessions)?))
}

/// The layer's kernel and padding as configured.
fn configured_window(lc: &LayerConfig) -> ([usize; 3], Padding) {
    ([lc.temporal_kernel, lc.spatial_kernel, lc.spatial_kernel], lc.padding)
}

fn time_independent_window(lc: &LayerConfig) -> ([usize; 3], Padding) {
    ([1, lc.spatial_kernel, lc.spatial_kernel], [(0, 0), lc.padding[1], lc.padding[2]])
}

/// The two stages' paddings: "same" pads each stage for its own kernel; any other padding is given
/// to both stages, as openretina does.
fn separable_stage_paddings(lc: &LayerConfig) -> (Padding, Padding) {
    let p = lc.padding;
    if lc.padding_same {
        ([(0, 0), p[1], p[2]], [p[0], (0, 0), (0, 0)])
    } else {
        (p, p)
    }
}

/// Two stride-1 windows in a row: kernels add (minus 1), paddings add.
fn separable_window(lc: &LayerConfig) -> ([usize; 3], Padding) {
    let (a, b) = separable_stage_paddings(lc);
    ([lc.temporal_kernel, lc.spatial_kernel, lc.spatial_kernel], [0, 1, 2].map(|d| (a[d].0 + b[d].0, a[d].1 + b[d].1)))
}

fn load_full<F: Float>(lc: &LayerConfig, sd: &mut StateDict, prefix: &str, _: &[String]) -> Result<Arc<dyn Layer<F>>> {
    // openretina keeps a `_log_speed_default` buffer it does not use for this class.
    sd.take_scalar::<F>(&format!("{prefix}._log_speed_default"))?;
    let kernel = [lc.temporal_kernel, lc.spatial_kernel, lc.spatial_kernel];
    let conv = Conv3d::load(sd, &format!("{prefix}.conv"), lc.in_channels, lc.out_channels, kernel, lc.padding, false, "TorchFullConv3D (full)")?;
    Ok(Arc::new(conv))
}

fn load_time_independent<F: Float>(lc: &LayerConfig, sd: &mut StateDict, prefix: &str, _: &[String]) -> Result<Arc<dyn Layer<F>>> {
    let kernel = [1, lc.spatial_kernel, lc.spatial_kernel];
    let padding = [(0, 0), lc.padding[1], lc.padding[2]];
    let class = "TimeIndependentConv3D (time_independent)";
    Ok(Arc::new(Conv3d::load(sd, &format!("{prefix}.conv"), lc.in_channels, lc.out_channels, kernel, padding, false, class)?))
}

fn load_torch_separable<F: Float>(lc: &LayerConfig, sd: &mut StateDict, prefix: &str, _: &[String]) -> Result<Arc<dyn Layer<F>>> {
    let (space, time) = separable_stage_paddings(lc);
    Ok(Arc::new(TorchSeparableConv3d::load(lc, sd, prefix, space, time)?))
}

/// The entry of `kinds` whose `key` matches, or an error naming what is known.
fn find<T>(kinds: Vec<T>, key: impl Fn(&T) -> bool, names: impl Fn(&T) -> &'static str, what: &str, given: &str) -> Result<T> {
    let known: Vec<&str> = kinds.iter().map(&names).collect();
    let known = known.join(", ");
    kinds.into_iter().find(key).ok_or_else(|| Error::new(format!("{what} \"{given}\" is not implemented; retina knows {known}")))
}

/// The core class whose name `target` (a `_target_` path or a bare class name) ends with.
pub fn core_kind<F: Float>(target: &str) -> Result<CoreKind<F>> {
    find(core_kinds(), |k| class_matches(target, k.class), |k| k.class, "core class", target)
}

pub fn conv_kind<F: Float>(option: &str) -> Result<ConvKind<F>> {
    find(conv_kinds(), |k| k.option == option, |k| k.option, "convolution_type", option)
}

pub fn readout_kind<F: Float>(target: &str) -> Result<ReadoutKind<F>> {
    find(readout_kinds(), |k| class_matches(target, k.class), |k| k.class, "readout class", target)
}

/// `openretina.modules.core.base_core.SimpleCoreWrapper` and `SimpleCoreWrapper` both name the class.
fn class_matches(target: &str, class: &str) -> bool {
    target.rsplit('.').next() == Some(class)
}
