//! From stored tensors (PyTorch state-dict names) and the typed configuration to a [`Model`].
//!
//! Every tensor is checked against the configuration: missing, extra (other than buffers openretina
//! keeps for training only), mis-shaped and non-finite tensors are reported by name. A tensor's
//! values are read from the file only when a layer takes it with the shape the configuration gives,
//! so an extra or mis-shaped tensor, however large, is refused without being read. As PyTorch's
//! strict `load_state_dict`, the names are compared with what the built architecture takes as a
//! whole: all missing and unexpected names are counted in one line, not the first one found.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::config::{Architecture, ModelConfig};
use super::core::{Block, Core};
use super::layer::Layer;
use super::layers::{avg_pool::AvgPoolDownsample, batch_norm::BatchNormBias, color_squash::ColorSquash, elu::Elu, max_pool::MaxPoolSpace2};
use super::{registry, Float, Model};
use crate::error::{Error, Result};
use crate::formats::{ModelFile, RawModel, RawTensor, TensorStore};

/// Tensors still to be taken, by name: what layer and readout kinds load their weights from.
pub struct StateDict<'a> {
    /// The shapes of the tensors not taken yet.
    shapes: BTreeMap<String, Vec<usize>>,
    /// Where their values are read from.
    store: &'a mut dyn TensorStore,
    /// Names the architecture took that the file does not hold (loading goes on with zeros, so that
    /// every missing name is found).
    missing: Vec<String>,
    /// Values of those zeros so far.
    placeholder_values: u64,
}

/// Most values of zeros standing in for missing tensors (16 Mi, ~40 times the largest real model's
/// parameters): hyper parameters naming a huge architecture over a file that lacks its tensors stop
/// here instead of allocating what they name.
const MAX_PLACEHOLDER_VALUES: u64 = 1 << 24;

impl<'a> StateDict<'a> {
    /// Take a tensor the model does not use (a buffer for training only) without reading it.
    pub fn skip(&mut self, name: &str) {
        self.shapes.remove(name);
    }

    /// A float tensor of exactly `shape`, with finite values. The shape is compared before the
    /// values are read.
    pub fn take<F: Float>(&mut self, name: &str, shape: &[usize]) -> Result<Vec<F>> {
        let Some(stored) = self.shapes.remove(name) else {
            self.missing.push(name.to_string());
            let values = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).unwrap_or(u64::MAX);
            self.placeholder_values = self.placeholder_values.saturating_add(values);
            if self.placeholder_values > MAX_PLACEHOLDER_VALUES {
                bail!(
                    "tensor `{name}` of shape {shape:?} is missing from the model file ({} missing so far): its hyper parameters describe a far larger architecture than the file holds; check that the file and its hyper parameters belong together",
                    self.missing.len()
                );
            }
            return Ok(vec![F::zero(); values as usize]);
        };
        if stored != shape {
            bail!(
                "tensor `{name}` has shape {stored:?}, the configuration needs {shape:?}; check that the file and its hyper parameters belong together"
            );
        }
        let raw = self.store.read(name)?;
        if raw.shape != shape {
            bail!("tensor `{name}` holds shape {:?} where the file's header said {shape:?}; the file is damaged", raw.shape);
        }
        let t = raw.to_float::<f64>(name)?;
        if let Some(bad) = t.data.iter().find(|v| !v.is_finite()) {
            bail!("tensor `{name}` holds a non-finite value ({bad}); the model file is damaged");
        }
        Ok(t.data.into_iter().map(F::from_f64).collect())
    }

    pub fn take_scalar<F: Float>(&mut self, name: &str) -> Result<F> {
        Ok(self.take::<F>(name, &[1])?[0])
    }

    pub fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// Fail on any name the architecture took that the file lacks, and any tensor left that openretina
    /// does not keep as a training-only buffer: one line with the counts and the first few names.
    fn finish(self) -> Result<()> {
        // A training buffer is a counter, a small filter or a scalar: a large one is not one.
        let small = |shape: &[usize]| shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_some_and(|n| n <= MAX_TRAINING_BUFFER_VALUES);
        let unexpected: Vec<&str> =
            self.shapes.iter().filter(|(n, shape)| !(is_training_buffer(n) && small(shape))).map(|(n, _)| n.as_str()).collect();
        let missing: Vec<&str> = self.missing.iter().map(String::as_str).collect();
        let mut parts = Vec::new();
        for (what, names) in [("missing", &missing), ("unexpected", &unexpected)] {
            if !names.is_empty() {
                parts.push(format!("{} {what} tensor{} ({})", names.len(), if names.len() == 1 { "" } else { "s" }, first_names(names)));
            }
        }
        if parts.is_empty() {
            return Ok(());
        }
        bail!(
            "the model file does not match the architecture its configuration builds: {}; check that the file and its hyper parameters belong together",
            parts.join(", ")
        )
    }
}

/// The first few names, quoted, and `…` when there are more.
fn first_names(names: &[&str]) -> String {
    const SHOWN: usize = 3;
    let mut text = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text += ", …";
    }
    text
}

/// Most values of a buffer that only matters for training (the largest real one is a 7 x 7 filter).
const MAX_TRAINING_BUFFER_VALUES: usize = 1024;

/// Buffers that only matter for training (BatchNorm counters, regulariser filters, the legacy core's
/// own copies of the per-session log speeds that its convolutions share).
fn is_training_buffer(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
        || name.starts_with("core._input_weights_regularizer")
        || (name.starts_with("core.log_speed_") && !name.contains(".features."))
}

/// The tensors of a [`RawModel`], already in memory: each is copied when taken.
struct InMemory<'a>(&'a BTreeMap<String, RawTensor>);

impl TensorStore for InMemory<'_> {
    fn read(&mut self, name: &str) -> Result<RawTensor> {
        self.0.get(name).cloned().ok_or_else(|| Error::new(format!("tensor `{name}` is missing from the model file")))
    }
}

/// A model file's tensors, read when taken.
struct FromFile<'a>(&'a mut ModelFile);

impl TensorStore for FromFile<'_> {
    fn read(&mut self, name: &str) -> Result<RawTensor> {
        self.0.read_tensor(name)
    }
}

pub fn model_from_raw<F: Float>(raw: &RawModel) -> Result<Model<F>> {
    let shapes = raw.tensors.iter().map(|(name, t)| (name.clone(), t.shape.clone())).collect();
    build(&raw.model_class, &raw.hyper_parameters, shapes, &mut InMemory(&raw.tensors))
}

/// Build the model a file describes, reading only the tensors it takes (see the module documentation).
pub fn model_from_file<F: Float>(file: &mut ModelFile) -> Result<Model<F>> {
    let (class, hyper_parameters, shapes) = (file.model_class.clone(), file.hyper_parameters.clone(), file.shapes.clone());
    build(&class, &hyper_parameters, shapes, &mut FromFile(file))
}

fn build<F: Float>(class: &str, hyper_parameters: &serde_json::Value, shapes: BTreeMap<String, Vec<usize>>, store: &mut dyn TensorStore) -> Result<Model<F>> {
    let config = ModelConfig::from_hyper_parameters(class, hyper_parameters)?;
    let mut sd = StateDict { shapes, store, missing: Vec::new(), placeholder_values: 0 };
    let core = (registry::core_kind::<F>(&config.core_class)?.load)(&config, &mut sd)?;
    let t = config.train_time_steps.unwrap_or(50);
    let core_out = core.output_shape(config.stimulus_shape(t, 1)[1..].try_into().expect("4 dimensions"))?;
    // The readout's stored in_shape (c, t, h, w) must match the core: t depends on the training
    // stimulus length, so only channels and space are compared.
    if let Some(stored) = &config.readout.in_shape {
        if stored.len() != 4 || stored[0] != core_out[0] || stored[2..] != core_out[2..] {
            bail!(
                "hyper parameter `readout.in_shape` {stored:?} does not match the core output (channels {}, {}x{})",
                core_out[0],
                core_out[2],
                core_out[3]
            );
        }
    }
    let readouts = (registry::readout_kind::<F>(&config.readout.class)?.load)(&config.readout, &mut sd, &config.sessions, core_out)?;
    sd.finish()?;
    Ok(Model { config, core, readouts })
}

/// `SimpleCoreWrapper` (and the legacy `ParametricFactorizedBatchConv3dCore`): optional colour
/// squashing and input downsampling, then per layer `core.features.layer<i>`: convolution ->
/// BatchNorm (eval) + bias -> ELU -> optional max-pool.
pub fn simple_core<F: Float>(config: &ModelConfig, sd: &mut StateDict) -> Result<Core<F>> {
    let legacy = matches!(config.architecture, Architecture::HoeflingEnsembleMember { .. });
    let log_speed_sessions: Vec<String> = if legacy { config.session_names().map(String::from).collect() } else { Vec::new() };
    let mut blocks = Vec::new();
    let mut preprocessing: Vec<Arc<dyn Layer<F>>> = Vec::new();
    if let Some(weights) = &config.color_squashing_weights {
        let name = "core.color_squashing_layer.channel_weights";
        let weights = if sd.has(name) { sd.take(name, &[config.input_channels])? } else { weights.iter().map(|&w| F::from_f64(w)).collect() };
        preprocessing.push(Arc::new(ColorSquash { weights }));
    }
    if let Some(kernel) = config.downsample_input_kernel_size {
        preprocessing.push(Arc::new(AvgPoolDownsample { kernel }));
    }
    if !preprocessing.is_empty() {
        blocks.push(Block { name: None, layers: preprocessing });
    }
    let first_layer = blocks.len();
    for (i, lc) in config.layers.iter().enumerate() {
        let p = format!("core.features.layer{i}");
        let conv = (registry::conv_kind::<F>(&lc.convolution)?.load)(lc, sd, &format!("{p}.conv"), &log_speed_sessions)?;
        let norm = BatchNormBias::<F>::load(sd, &p, lc.out_channels, lc.batch_norm_affine, lc.bias_layer)?;
        let mut layers: Vec<Arc<dyn Layer<F>>> = vec![conv, Arc::new(norm), Arc::new(Elu)];
        if lc.max_pool {
            layers.push(Arc::new(MaxPoolSpace2));
        }
        blocks.push(Block { name: Some(format!("layer{i}")), layers });
    }
    let output_blocks = match &config.architecture {
        Architecture::CoreReadout => None,
        Architecture::HoeflingEnsembleMember { stack } => Some(stack.iter().map(|&l| first_layer + l).collect()),
    };
    Ok(Core::new(blocks, output_blocks, config.cut_first_n_frames))
}
