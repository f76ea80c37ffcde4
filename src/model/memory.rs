//! How much memory a computation needs, estimated from the config's layer shapes before anything is
//! allocated, and the budget it must fit in: a request that would not fit (`--time-steps 100000`) is
//! refused with one line saying how much it would need, instead of aborting on a failed allocation.
//!
//! The estimate follows the buffers of `core.rs`, `conv.rs` and `readout.rs`: per stimulus the tape
//! (every layer's activation and output) is kept, and the largest layer's temporaries (padded frames,
//! im2col columns, the spatial-step result of every (in, out) channel pair) come on top while it runs.

use super::config::ModelConfig;
use super::{Float, Model};
use crate::error::{Error, Result};

/// Default budget: 4 GiB. Every real model at normal sizes needs far less (the demo model: ~5 MB for
/// a 50-frame forward pass, ~100 MB for 1000 frames; a whole `visualize`: ~50 MB), and 4 GiB fits on
/// any machine that runs openretina, which needs more than that for the same jobs.
pub const DEFAULT_BUDGET_BYTES: u64 = 4 << 30;
/// Environment variable that sets another budget, in GiB (e.g. `RETINA_MEMORY_GB=16`).
pub const BUDGET_VARIABLE: &str = "RETINA_MEMORY_GB";

/// What is computed on each stimulus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A forward pass whose layer outputs and responses are returned (and written by the caller).
    Forward,
    /// A forward pass and the gradient with respect to the stimulus (one MEI step).
    Gradient,
}

/// The memory budget in bytes: `RETINA_MEMORY_GB` if set, else [`DEFAULT_BUDGET_BYTES`].
pub fn budget_bytes() -> Result<u64> {
    match std::env::var(BUDGET_VARIABLE) {
        Err(_) => Ok(DEFAULT_BUDGET_BYTES),
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|gb| (1..=1 << 20).contains(gb))
            .map(|gb| gb << 30)
            .ok_or_else(|| Error::new(format!("{BUDGET_VARIABLE}={text}: give the memory budget as whole GiB, 1 … 1048576"))),
    }
}

/// Refuse `bytes` (None: beyond counting) of work described by `what` if it exceeds the budget.
pub fn check_bytes(bytes: Option<u64>, what: &str) -> Result<()> {
    let budget = budget_bytes()?;
    match bytes {
        Some(b) if b <= budget => Ok(()),
        _ => bail!(
            "{what} would need {} of memory, more than the budget of {}; ask for less (fewer frames, stimuli or MEIs) or raise {BUDGET_VARIABLE}",
            bytes.map_or_else(|| "more bytes than can be counted".to_string(), format_bytes),
            format_bytes(budget)
        ),
    }
}

/// `1536 MiB` -> `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

impl<F: Float> Model<F> {
    /// Bytes that `work` on `batch` stimuli of `time_steps` frames needs at its peak, with up to
    /// `threads` stimuli in flight at once; None if the count overflows.
    pub fn work_bytes(&self, time_steps: usize, batch: usize, threads: usize, work: Work) -> Option<u64> {
        let mut per = per_stimulus_values(&self.config, time_steps)?;
        let other = self.other_block_values(time_steps)?;
        per.tape = per.tape.checked_add(other.checked_mul(4)?)?;
        per.gradients = per.gradients.checked_add(other.checked_mul(2)?)?;
        let size = std::mem::size_of::<F>() as u64;
        let in_flight = batch.min(threads.max(1)) as u64;
        let (kept, transient) = match work {
            // Tapes of the whole batch are collected, then copied into the returned tensors, which
            // the caller serialises once more.
            Work::Forward => (per.stimulus + per.tape + 2 * per.outputs, per.forward_temporaries),
            // MEIs are one stimulus each: tape, the gradients flowing back, the stimulus and its
            // gradient copies.
            Work::Gradient => (0, per.tape + per.gradients + 4 * per.stimulus + per.forward_temporaries.max(per.backward_temporaries)),
        };
        let values = (batch as u64).checked_mul(kept)?.checked_add(in_flight.checked_mul(transient)?)?;
        values.checked_mul(size)
    }

    /// Output values of the core blocks the config's layers do not describe (`ConvGRUCore`'s
    /// `projection` and `gru`). Each keeps up to four values per output on the tape (the GRU: its
    /// state and three gates; a projection: its convolution and ELU outputs). 0 when the stimulus
    /// is too short (refused elsewhere with the config's message).
    fn other_block_values(&self, time_steps: usize) -> Option<u64> {
        let c = &self.config;
        let Ok(shapes) = self.core.block_output_shapes([c.input_channels, time_steps, c.height, c.width]) else { return Some(0) };
        let mut values = 0u64;
        for (b, block) in self.core.blocks.iter().enumerate() {
            if block.name.is_some() && !self.core.layer_blocks.contains(&b) {
                let n = shapes[b].iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))?;
                values = values.checked_add(n)?;
            }
        }
        Some(values)
    }

    /// Refuse `work` that would not fit in the memory budget, before anything is allocated (and
    /// frames too few for the kernels, with the config's message).
    pub fn check_work(&self, time_steps: usize, batch: usize, work: Work) -> Result<()> {
        self.config.core_output_shape(time_steps)?;
        let bytes = self.work_bytes(time_steps, batch, rayon::current_num_threads(), work);
        let what = match work {
            Work::Forward => "a forward pass",
            Work::Gradient => "an MEI",
        };
        let stimuli = if batch == 1 { "stimulus" } else { "stimuli" };
        check_bytes(bytes, &format!("{what} over {batch} {stimuli} of {time_steps} frames"))
    }
}

/// Values (not bytes) of the buffers of one stimulus.
struct PerStimulus {
    stimulus: u64,
    /// Activations and outputs of every layer, the preprocessed stimulus, the readout's buffers.
    tape: u64,
    /// Layer outputs and responses handed back by a forward pass.
    outputs: u64,
    /// Gradients of every layer's activation (the backward pass holds about one per layer at once).
    gradients: u64,
    /// The largest layer's temporaries during the forward and the backward pass.
    forward_temporaries: u64,
    backward_temporaries: u64,
}

fn per_stimulus_values(c: &ModelConfig, time_steps: usize) -> Option<PerStimulus> {
    let mul = |a: u64, b: u64| a.checked_mul(b);
    let stimulus = [c.input_channels, time_steps, c.height, c.width].iter().try_fold(1u64, |n, &d| mul(n, d as u64))?;
    let mut per = PerStimulus { stimulus, tape: stimulus, outputs: 0, gradients: 0, forward_temporaries: 0, backward_temporaries: 0 };
    // The shape walk of `ModelConfig::layer_output_shapes`, keeping the conv output before pooling.
    let mut shape = [c.input_channels, time_steps, c.height, c.width].map(|d| d as u64);
    if c.color_squashing_weights.is_some() {
        shape[0] = 1;
    }
    if let Some(k) = c.downsample_input_kernel_size {
        for d in 0..3 {
            shape[d + 1] /= k[d].max(1) as u64;
        }
    }
    for layer in &c.layers {
        let kernel = [layer.temporal_kernel, layer.spatial_kernel, layer.spatial_kernel].map(|k| k as u64);
        let mut padded = [0u64; 3];
        let mut conv = [0u64; 3];
        for d in 0..3 {
            padded[d] = shape[d + 1].checked_add(layer.padding[d].0 as u64)?.checked_add(layer.padding[d].1 as u64)?;
            conv[d] = padded[d].checked_sub(kernel[d])? + 1;
        }
        let (ci, co) = (layer.in_channels as u64, layer.out_channels as u64);
        let pixels = mul(conv[1], conv[2])?;
        let kk = mul(kernel[1], kernel[2])?;
        let input = mul(ci, mul(shape[1], mul(shape[2], shape[3])?)?)?;
        let activation = mul(co, mul(conv[0], pixels)?)?;
        let (pooled_h, pooled_w) = if layer.max_pool { (conv[1] / 2, conv[2] / 2) } else { (conv[1], conv[2]) };
        let output = mul(co, mul(conv[0], mul(pooled_h, pooled_w)?)?)?;
        let rows = mul(padded[0], pixels)?;
        let padded_frames = mul(padded[0], mul(padded[1], padded[2])?)?;
        // Forward: padded input, im2col columns, spatial step of every (in, out) pair, the result in
        // two layouts.
        let forward = padded_frames.checked_add(mul(rows, kk)?)?.checked_add(mul(ci, mul(rows, co)?)?)?.checked_add(2 * activation)?;
        // Backward: the gradient in two layouts, the transposed temporal step, its columns, the input
        // gradient.
        let backward = (2 * activation).checked_add(mul(rows, co)?)?.checked_add(mul(rows, kk)?)?.checked_add(input)?;
        per.tape = per.tape.checked_add(activation)?.checked_add(output)?;
        per.outputs = per.outputs.checked_add(output)?;
        per.gradients = per.gradients.checked_add(activation)?.checked_add(input)?;
        per.forward_temporaries = per.forward_temporaries.max(forward);
        per.backward_temporaries = per.backward_temporaries.max(backward);
        shape = [co, conv[0], pooled_h, pooled_w];
    }
    // The readout: per session (one at a time) channels x frames x neurons, and the responses.
    let neurons = c.sessions.iter().map(|(_, n)| *n as u64).max().unwrap_or(0);
    let readout = mul(shape[0].checked_add(2)?, mul(shape[1], neurons)?)?;
    per.tape = per.tape.checked_add(readout)?;
    per.outputs = per.outputs.checked_add(mul(shape[1], c.sessions.iter().map(|(_, n)| *n as u64).sum())?)?;
    Some(per)
}
