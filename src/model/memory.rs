//! How much memory a computation needs, estimated from the config's layer shapes before anything is
//! allocated, and the budget it must fit in: a request that would not fit (`--time-steps 100000`) is
//! refused with one line saying how much it would need, instead of aborting on a failed allocation.
//!
//! The estimate walks the core as `core.rs` runs it: per stimulus the tape (the outputs a backward
//! pass reads, every block's output, the layers' kept states) is kept, and the largest layer's input,
//! output and temporaries come on top while it runs. Each layer kind states its own temporaries
//! (`Layer::work_values`, a required method), so a new kind cannot be left out. An MEI's gradient
//! steps run on the frames its objective's window depends on where the layers' windows bound them
//! (`Core::temporal_reach`, the crop of `mei::objective`), so only its final forward pass spans the
//! whole stimulus.

use super::layer::{count, total, Needs};
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
    /// MEI steps (a forward pass and the gradient with respect to the stimulus) of an objective that
    /// averages `window` frames of its series, then a forward pass over the whole stimulus.
    Gradient { window: usize },
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
    /// `threads` stimuli in flight at once; None if the count overflows (or the frames are too few).
    pub fn work_bytes(&self, time_steps: usize, batch: usize, threads: usize, work: Work) -> Option<u64> {
        let per = self.per_stimulus_values(time_steps)?;
        let size = std::mem::size_of::<F>() as u64;
        let in_flight = batch.min(threads.max(1)) as u64;
        let (kept, transient) = match work {
            // Tapes of the whole batch are collected, then copied into the returned tensors, which
            // the caller serialises once more.
            Work::Forward => (total(&[per.stimulus, per.tape, 2 * per.outputs])?, per.forward),
            // MEIs are one stimulus each: the stimulus and its gradient copies, and the larger of a
            // step's peak and the final forward pass's. A step peaks in its forward pass (the tape
            // growing while the largest layer runs) or in its backward pass (the whole tape, and the
            // largest layer's gradients and temporaries).
            Work::Gradient { window } => {
                let frames = self.gradient_frames(time_steps, window);
                let step = if frames < time_steps {
                    // On the cropped frames: their copy, its gradient, and both passes over them.
                    let cropped = self.per_stimulus_values(frames)?;
                    total(&[2 * cropped.stimulus, cropped.forward_peak.max(total(&[cropped.tape, cropped.backward])?)])?
                } else {
                    per.forward_peak.max(total(&[per.tape, per.backward])?)
                };
                (0, total(&[4 * per.stimulus, step.max(per.forward_peak)])?)
            }
        };
        let values = (batch as u64).checked_mul(kept)?.checked_add(in_flight.checked_mul(transient)?)?;
        values.checked_mul(size)
    }

    /// The frames an MEI's gradient is computed on: those its `window` (of the output series, after
    /// the cut frames) depends on, which bound every objective's (an inner channel's window reaches
    /// back through fewer layers and no cut; `mei::objective` crops to exactly that), or all frames
    /// when the layers' windows do not bound them.
    fn gradient_frames(&self, time_steps: usize, window: usize) -> usize {
        match self.core.temporal_reach(self.core.blocks.len()) {
            Some(reach) => window.saturating_add(self.core.cut_first_n_frames).saturating_add(reach).min(time_steps),
            None => time_steps,
        }
    }

    /// Refuse `work` that would not fit in the memory budget, before anything is allocated (and
    /// frames too few for the kernels, with the config's message).
    pub fn check_work(&self, time_steps: usize, batch: usize, work: Work) -> Result<()> {
        self.config.core_output_shape(time_steps)?;
        let bytes = self.work_bytes(time_steps, batch, rayon::current_num_threads(), work);
        let what = match work {
            Work::Forward => "a forward pass",
            Work::Gradient { .. } => "an MEI",
        };
        let stimuli = if batch == 1 { "stimulus" } else { "stimuli" };
        check_bytes(bytes, &format!("{what} over {batch} {stimuli} of {time_steps} frames"))
    }

    /// The buffers of one stimulus, walking the core's layers as `Core::forward_blocks` runs them:
    /// each layer answers for its own temporaries (`Layer::work_values`), the walk for inputs, outputs
    /// and what the tape keeps.
    fn per_stimulus_values(&self, time_steps: usize) -> Option<PerStimulus> {
        let c = &self.config;
        let input = [c.input_channels, time_steps, c.height, c.width];
        let stimulus = count(&input)?;
        // The tape holds its own copy of the stimulus only if the first layer reads its input
        // backwards (or the first block has none); the stimulus itself is the caller's.
        let first = self.core.blocks.first().map(|b| b.layers.first());
        let stimulus_kept = matches!(first, Some(None)) || matches!(first, Some(Some(l)) if l.needs() == Needs::Input);
        let mut per = PerStimulus { stimulus, tape: if stimulus_kept { stimulus } else { 0 }, outputs: 0, forward: 0, backward: 0, forward_peak: 0 };
        let mut shape = input;
        // Whether the current layer's input is on the tape (then it is not counted twice).
        let mut input_kept = true;
        for (b, block) in self.core.blocks.iter().enumerate() {
            for (j, layer) in block.layers.iter().enumerate() {
                let next = layer.output_shape(shape).ok()?;
                let (i_values, o_values) = (count(&shape)?, count(&next)?);
                let work = layer.work_values(shape)?;
                // While a layer runs, its input and output (or their gradients) are alive too.
                per.forward = per.forward.max(total(&[i_values, o_values, work.forward])?);
                per.backward = per.backward.max(total(&[i_values, o_values, work.backward])?);
                // In a forward pass, on top of the tape so far: the input unless the tape holds it,
                // the output, the temporaries.
                let input_alive = if input_kept { 0 } else { i_values };
                per.forward_peak = per.forward_peak.max(total(&[per.tape, input_alive, o_values, work.forward])?);
                // Kept on the tape: what a backward pass reads, and every block's output.
                let read_next = block.layers.get(j + 1).is_some_and(|l| l.needs() == Needs::Input);
                input_kept = j + 1 == block.layers.len() || read_next || layer.needs() == Needs::Output;
                if input_kept {
                    per.tape = per.tape.checked_add(o_values)?;
                }
                per.tape = per.tape.checked_add(work.state)?;
                shape = next;
            }
            if self.core.layer_blocks.contains(&b) {
                per.outputs = per.outputs.checked_add(count(&shape)?)?;
            }
        }
        // The readout: per session (one at a time) channels x frames x neurons, and the responses.
        let [channels, frames, ..] = self.core.output_shape(input).ok()?;
        let neurons = c.sessions.iter().map(|(_, n)| *n as u64).max().unwrap_or(0);
        let readout = (channels as u64).checked_add(2)?.checked_mul(frames as u64)?.checked_mul(neurons)?;
        per.tape = per.tape.checked_add(readout)?;
        per.forward_peak = per.forward_peak.max(per.tape);
        per.outputs = per.outputs.checked_add((frames as u64).checked_mul(c.sessions.iter().map(|(_, n)| *n as u64).sum())?)?;
        Some(per)
    }
}

/// Values (not bytes) of the buffers of one stimulus.
struct PerStimulus {
    stimulus: u64,
    /// Layer outputs a backward pass reads and block outputs, the readout's buffers (and a copy of
    /// the stimulus where the first layer reads it backwards).
    tape: u64,
    /// Layer outputs and responses handed back by a forward pass.
    outputs: u64,
    /// The largest layer's input, output and temporaries during the forward and the backward pass.
    forward: u64,
    backward: u64,
    /// The most a forward pass holds at once: the tape so far and the running layer's input (where
    /// the tape does not hold it), output and temporaries; at the end the whole tape.
    forward_peak: u64,
}
