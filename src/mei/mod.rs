//! Most exciting inputs (MEIs): gradient ascent on the stimulus, as `openretina visualize` does it.
//!
//! Per MEI: start from standard normal noise x 0.1 passed through the post-processor, then for each
//! step compute loss = -objective + range penalty, take one plain SGD step on the stimulus and apply
//! the post-processor again. MEIs are independent, so many run in parallel (one per core); each one's
//! result does not depend on which others run with it, and its seed derives from the global seed and
//! its own name, so a subset run gives the same MEIs as a full one.

pub mod constraints;
pub mod objective;

use rayon::prelude::*;

pub use self::constraints::Constraints;
pub use self::objective::{MeiTarget, Objective};
use crate::error::{Error, Result};
use crate::model::{Float, Model};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// How MEIs are optimised. `MeiSettings::openretina(channels)` gives `openretina visualize`'s values.
#[derive(Debug, Clone, PartialEq)]
pub struct MeiSettings {
    /// Frames of the stimulus (`--time-steps-stimulus`, 50).
    pub time_steps: usize,
    /// SGD steps (10).
    pub iterations: usize,
    /// SGD learning rate (100).
    pub learning_rate: f64,
    pub constraints: Constraints,
    /// Seed of the initial noise.
    pub seed: u64,
}

impl MeiSettings {
    pub fn openretina(channels: usize) -> Self {
        MeiSettings {
            time_steps: 50,
            iterations: 10,
            learning_rate: 100.0,
            constraints: Constraints::openretina_default(channels),
            seed: 0,
        }
    }
}

/// One optimised stimulus and how it got there.
#[derive(Debug, Clone)]
pub struct Mei {
    pub target: MeiTarget,
    /// `(1, channels, time, height, width)`.
    pub stimulus: Tensor<f32>,
    /// The loss at each step, evaluated before that step's update (as openretina reports it).
    pub losses: Vec<f64>,
    /// The objective of the final stimulus.
    pub objective: f64,
    /// The objective's time series for the final stimulus (the response trace of the figure).
    pub response: Vec<f32>,
    /// Stimulus frames `[first, last]` whose responses the objective averages.
    pub highlighted_frames: (usize, usize),
}

/// The starting stimulus of an MEI: seeded noise x 0.1, post-processed.
pub fn initial_stimulus<F: Float>(model: &Model<F>, target: &MeiTarget, settings: &MeiSettings) -> Tensor<F> {
    let shape = model.config.stimulus_shape(settings.time_steps, 1).to_vec();
    let n = shape.iter().product();
    let mut rng = Rng::for_item(settings.seed, &target.id());
    let mut data: Vec<F> = (0..n).map(|_| F::from_f64(rng.normal() * 0.1)).collect();
    settings.constraints.postprocess(&mut data);
    Tensor { shape, data }
}

/// Optimise one MEI from `init` (already post-processed, shape `(1, C, T, H, W)`).
pub fn optimize<F: Float>(model: &Model<F>, target: &MeiTarget, init: Tensor<F>, settings: &MeiSettings) -> Result<Mei> {
    let objective = Objective::new(model, target.clone(), settings.time_steps)?;
    let expected = model.config.stimulus_shape(settings.time_steps, 1);
    if init.shape != expected {
        return Err(Error::new(format!("initial stimulus has shape {:?}; expected {expected:?}", init.shape)));
    }
    if settings.constraints.ranges.len() != expected[1] {
        return Err(Error::new(format!(
            "{} value ranges given for a {}-channel model",
            settings.constraints.ranges.len(),
            expected[1]
        )));
    }
    let lr = F::from_f64(settings.learning_rate);
    let mut x = init.data;
    let mut losses = Vec::with_capacity(settings.iterations);
    for _ in 0..settings.iterations {
        let (value, gradient) = objective.gradient(&x);
        // loss = -objective + penalty; its gradient = -d objective + d penalty.
        let mut grad: Vec<F> = gradient.into_iter().map(|g| -g).collect();
        let penalty = settings.constraints.penalty(&x, &mut grad);
        losses.push(-value + penalty);
        for (v, g) in x.iter_mut().zip(&grad) {
            *v = *v - lr * *g;
        }
        settings.constraints.postprocess(&mut x);
    }
    let (final_objective, series) = objective.evaluate(&x);
    Ok(Mei {
        target: target.clone(),
        stimulus: Tensor { shape: expected.to_vec(), data: x.iter().map(|v| v.to_f64() as f32).collect() },
        losses,
        objective: final_objective,
        response: series.iter().map(|v| v.to_f64() as f32).collect(),
        highlighted_frames: objective.highlighted_frames(),
    })
}

/// Optimise many MEIs in parallel, each from its seeded initial stimulus. `on_done` is called after
/// each one (e.g. to advance a progress bar).
pub fn optimize_all<F: Float>(
    model: &Model<F>,
    targets: &[MeiTarget],
    settings: &MeiSettings,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Mei>> {
    targets
        .par_iter()
        .map(|target| {
            let init = initial_stimulus(model, target, settings);
            let mei = optimize(model, target, init, settings);
            on_done();
            mei
        })
        .collect()
}

/// Every MEI `openretina visualize` computes: each channel of each core layer, then each neuron of
/// each session.
pub fn all_targets<F: Float>(model: &Model<F>) -> Vec<MeiTarget> {
    let mut targets = Vec::new();
    for (layer, l) in model.core.layers.iter().enumerate() {
        for channel in 0..l.conv.out_channels {
            targets.push(MeiTarget::InnerChannel { layer, channel });
        }
    }
    for (session, readout) in &model.readouts {
        for neuron in 0..readout.neurons {
            targets.push(MeiTarget::OutputNeuron { session: session.clone(), neuron });
        }
    }
    targets
}
