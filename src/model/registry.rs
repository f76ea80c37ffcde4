//! The one place where openretina's classes and options are matched to retina's kinds: core classes
//! (`core._target_`), convolution types (`convolution_type`) and readout classes (`readout._target_`).
//! Adding a kind is one line here plus its file; config parsing, loading, `info`, the MEI code and the
//! figures go through these tables and the `Layer` / `Readout` traits.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::config::{LayerConfig, ModelConfig, ReadoutConfig};
use super::core::Core;
use super::layer::{Layer, Shape};
use super::layers;
use super::load::StateDict;
use super::readout::{self, Readout};
use super::Float;
use crate::error::{Error, Result};

/// A core class: builds the core's blocks from the config and the tensors `core.*`.
pub struct CoreKind<F> {
    /// The class name `core._target_` ends with.
    pub class: &'static str,
    pub load: fn(&ModelConfig, &mut StateDict) -> Result<Core<F>>,
}

/// A convolution of a core layer, chosen by the core's `convolution_type` option.
pub struct ConvKind<F> {
    pub option: &'static str,
    /// The PyTorch module openretina builds for it.
    pub class: &'static str,
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
        CoreKind { class: "SimpleCoreWrapper", load: super::load::simple_core },
        // The legacy Hoefling 2024 ensemble member's core: the same layers, per-session log speeds.
        CoreKind { class: "ParametricFactorizedBatchConv3dCore", load: super::load::simple_core },
    ]
}

pub fn conv_kinds<F: Float>() -> Vec<ConvKind<F>> {
    vec![ConvKind { option: "custom_separable", class: "STSeparableBatchConv3d", load: load_st_separable }]
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
