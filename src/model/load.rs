//! From stored tensors (PyTorch state-dict names) and the typed configuration to a [`Model`].
//!
//! Every tensor is checked against the configuration: missing, extra (other than buffers openretina
//! keeps for training only), mis-shaped and non-finite tensors are reported by name.

use std::collections::BTreeMap;

use super::config::{Architecture, ModelConfig};
use super::conv::{SeparableConv3d, SUBSAMPLING_FACTOR};
use super::core::{Core, CoreLayer, BATCH_NORM_EPS};
use super::readout::GaussianReadout;
use super::{Float, Model};
use crate::error::{Error, Result};
use crate::formats::{RawModel, RawTensor};

/// Tensors still to be taken, by name.
struct StateDict<'a> {
    tensors: BTreeMap<&'a str, &'a RawTensor>,
}

impl<'a> StateDict<'a> {
    fn take_raw(&mut self, name: &str) -> Result<&'a RawTensor> {
        self.tensors.remove(name).ok_or_else(|| Error::new(format!("tensor `{name}` is missing from the model file")))
    }

    /// A float tensor of exactly `shape`, with finite values.
    fn take<F: Float>(&mut self, name: &str, shape: &[usize]) -> Result<Vec<F>> {
        let raw = self.take_raw(name)?;
        if raw.shape != shape {
            bail!("tensor `{name}` has shape {:?}, the configuration needs {shape:?}", raw.shape);
        }
        let t = raw.to_float::<f64>(name)?;
        if let Some(bad) = t.data.iter().find(|v| !v.is_finite()) {
            bail!("tensor `{name}` holds a non-finite value ({bad}); the model file is damaged");
        }
        Ok(t.data.into_iter().map(F::from_f64).collect())
    }

    fn take_scalar<F: Float>(&mut self, name: &str) -> Result<F> {
        Ok(self.take::<F>(name, &[1])?[0])
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Fail on any tensor left that openretina does not keep as a training-only buffer.
    fn finish(self) -> Result<()> {
        let unexpected: Vec<&str> = self.tensors.keys().copied().filter(|n| !is_training_buffer(n)).collect();
        match unexpected.as_slice() {
            [] => Ok(()),
            [one] => bail!("unexpected tensor `{one}`: the model file does not match its configuration"),
            [first, ..] => bail!(
                "{} unexpected tensors, e.g. `{first}`: the model file does not match its configuration",
                unexpected.len()
            ),
        }
    }
}

/// Buffers that only matter for training (BatchNorm counters, regulariser filters, the legacy core's
/// own copies of the per-session log speeds that its convolutions share).
fn is_training_buffer(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
        || name.starts_with("core._input_weights_regularizer")
        || (name.starts_with("core.log_speed_") && !name.contains(".features."))
}

pub fn model_from_raw<F: Float>(raw: &RawModel) -> Result<Model<F>> {
    let config = ModelConfig::from_hyper_parameters(&raw.model_class, &raw.hyper_parameters)?;
    let mut sd = StateDict { tensors: raw.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect() };
    let legacy = matches!(config.architecture, Architecture::HoeflingEnsembleMember { .. });

    let mut layers = Vec::with_capacity(config.layers.len());
    for (i, lc) in config.layers.iter().enumerate() {
        let p = format!("core.features.layer{i}");
        let (o, c) = (lc.out_channels, lc.in_channels);
        let nk = lc.temporal_kernel / SUBSAMPLING_FACTOR;
        let k = lc.spatial_kernel;
        let mut log_speeds = BTreeMap::new();
        if legacy {
            for session in config.session_names() {
                log_speeds.insert(session.to_string(), sd.take_scalar(&format!("{p}.conv.log_speed_{session}"))?);
            }
        }
        let conv = SeparableConv3d {
            in_channels: c,
            out_channels: o,
            temporal_kernel: lc.temporal_kernel,
            spatial_kernel: k,
            padding: lc.padding,
            sin_weights: sd.take(&format!("{p}.conv.sin_weights"), &[o, c, nk])?,
            cos_weights: sd.take(&format!("{p}.conv.cos_weights"), &[o, c, nk])?,
            spatial_weights: sd.take(&format!("{p}.conv.weight_spatial"), &[o, c, 1, k, k])?,
            log_speed_default: sd.take_scalar(&format!("{p}.conv._log_speed_default"))?,
            log_speeds,
        };
        let mean: Vec<f64> = sd.take(&format!("{p}.norm.running_mean"), &[o])?;
        let var: Vec<f64> = sd.take(&format!("{p}.norm.running_var"), &[o])?;
        if let Some(v) = var.iter().find(|&&v| v < 0.0) {
            bail!("tensor `{p}.norm.running_var` holds a negative variance ({v}); the model file is damaged");
        }
        let (weight, bn_bias): (Vec<f64>, Vec<f64>) = if lc.batch_norm_affine {
            (sd.take(&format!("{p}.norm.weight"), &[o])?, sd.take(&format!("{p}.norm.bias"), &[o])?)
        } else {
            (vec![1.0; o], vec![0.0; o])
        };
        let extra_bias: Vec<f64> =
            if lc.bias_layer { sd.take(&format!("{p}.bias.bias"), &[1, o, 1, 1, 1])? } else { vec![0.0; o] };
        // Eval-mode BatchNorm then bias: y = (x - mean) / sqrt(var + eps) * weight + bias + extra.
        // Folded in float64, rounded once.
        let scale: Vec<f64> = (0..o).map(|j| weight[j] / (var[j] + BATCH_NORM_EPS).sqrt()).collect();
        let shift: Vec<F> = (0..o).map(|j| F::from_f64(bn_bias[j] - mean[j] * scale[j] + extra_bias[j])).collect();
        layers.push(CoreLayer { conv, scale: scale.into_iter().map(F::from_f64).collect(), shift, max_pool: lc.max_pool });
    }

    let mut core = Core::from_config(&config, layers);
    if config.color_squashing_weights.is_some() {
        let n = config.input_channels;
        let name = "core.color_squashing_layer.channel_weights";
        if sd.has(name) {
            core.color_squashing_weights = Some(sd.take(name, &[n])?);
        }
    }

    let t = config.train_time_steps.unwrap_or(50);
    let [channels, _, height, width] = config.core_output_shape(t)?;
    let mut readouts = BTreeMap::new();
    for (session, neurons) in &config.sessions {
        let p = format!("readout.{session}");
        let n = *neurons;
        let rc = &config.readout;
        let mut features: Vec<F> = sd.take(&format!("{p}.features"), &[1, channels, 1, n])?;
        if rc.positive {
            features.iter_mut().for_each(|f| *f = if *f < F::zero() { F::zero() } else { *f });
        }
        // The scale parameter is `scale_param` in openretina's readout and `scale` in the legacy one.
        let scale_name = if legacy { format!("{p}.scale") } else { format!("{p}.scale_param") };
        let scale = if rc.scale || (!legacy && sd.has(&scale_name)) { sd.take(&scale_name, &[n])? } else { vec![F::one(); n] };
        let bias = if rc.bias || (!legacy && sd.has(&format!("{p}.bias"))) {
            sd.take(&format!("{p}.bias"), &[n])?
        } else {
            vec![F::zero(); n]
        };
        let readout = GaussianReadout::new(
            channels,
            height,
            width,
            sd.take(&format!("{p}.mask_mean"), &[n, 2])?,
            sd.take(&format!("{p}.mask_log_var"), &[n])?,
            sd.take(&format!("{p}.grid"), &[n, height, width, 2])?,
            F::from_f64(rc.gaussian_mean_scale),
            F::from_f64(rc.gaussian_var_scale),
            features,
            scale,
            bias,
        );
        readouts.insert(session.clone(), readout);
    }
    sd.finish()?;
    Ok(Model { config, core, readouts })
}
