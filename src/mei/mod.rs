//! Most exciting inputs (MEIs) and their relatives: gradient-based stimulus optimisation, as
//! openretina's `optimize_stimulus` does it.
//!
//! Per stimulus: start from standard normal noise x 0.1 passed through the post-processors, then for
//! each step compute loss = -objective + range penalty, take one optimiser step (SGD or Adam), apply
//! the post-processors (norm/range, then the optional temporal low-pass) and ask the stopper
//! (fixed steps or early stopping) whether to go on. The pieces are small types: [`Objective`]
//! (increase / decrease / contrastive), [`Constraints`] and [`TemporalLowPass`] (post-processors and
//! penalty), [`OptimizerKind`] and [`Stopper`]; [`optimize`] is the one loop that runs them.
//! MEIs are independent, so many run in parallel (one per core); each one's result does not depend on
//! which others run with it, and its seed derives from the global seed and its own name, so a subset
//! run gives the same MEIs as a full one.

pub mod constraints;
pub mod ensemble;
pub mod lowpass;
pub mod objective;
pub mod optimizer;
pub mod stopper;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

pub use self::constraints::Constraints;
pub use self::ensemble::MeanObjective;
pub use self::lowpass::TemporalLowPass;
pub use self::objective::{Direction, MeiTarget, Objective, DEFAULT_TEMPERATURE};
pub use self::optimizer::OptimizerKind;
pub use self::stopper::{EarlyStop, Stopper};
use crate::error::{Error, Result};
use crate::model::memory::{check_bytes, Work};
use crate::model::{Float, Model};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// How MEIs are optimised. `MeiSettings::openretina(channels)` gives `openretina visualize`'s values.
#[derive(Debug, Clone, PartialEq)]
pub struct MeiSettings {
    /// Frames of the stimulus (`--time-steps-stimulus`, 50).
    pub time_steps: usize,
    /// Optimiser steps (10); with early stopping, the most steps.
    pub iterations: usize,
    /// Learning rate (100).
    pub learning_rate: f64,
    /// Norm/range post-processor and range penalty.
    pub constraints: Constraints,
    /// Seed of the initial noise.
    pub seed: u64,
    /// Maximise (MEI) or minimise (most depressing input) the objective.
    pub direction: Direction,
    /// SGD (openretina visualize's) or Adam.
    pub optimizer: OptimizerKind,
    /// Stop early when the loss stops improving; `None` = always `iterations` steps.
    pub early_stop: Option<EarlyStop>,
    /// Temporal low-pass applied after the norm/range post-processor.
    pub lowpass: Option<TemporalLowPass>,
    /// Temperature of contrastive (MDS) objectives.
    pub temperature: f64,
}

impl MeiSettings {
    pub fn openretina(channels: usize) -> Self {
        MeiSettings {
            time_steps: 50,
            iterations: 10,
            learning_rate: 100.0,
            constraints: Constraints::openretina_default(channels),
            seed: 0,
            direction: Direction::Increase,
            optimizer: OptimizerKind::Sgd,
            early_stop: None,
            lowpass: None,
            temperature: DEFAULT_TEMPERATURE,
        }
    }

    /// openretina's `most_discriminative_stimulus` notebook: SGD at lr 100 for 10 steps, temperature
    /// 1.6, the clipper ranges (-0.6, 6.2) and (-0.9, 6.2) at norm 30 (2-channel models), then a
    /// temporal low-pass (sigma 0.5, 5 frames), no penalty.
    pub fn mds_notebook(channels: usize) -> Self {
        let mut settings = MeiSettings::openretina(channels);
        if channels == 2 {
            settings.constraints.ranges = vec![Some(MDS_GREEN_RANGE), Some(MDS_UV_RANGE)];
        }
        settings.constraints.penalty_factor = 0.0;
        settings.lowpass = Some(TemporalLowPass { sigma: 0.5, kernel_size: 5 });
        settings
    }

    /// All post-processors in order on one stimulus `(channels, t, h, w)`.
    pub fn postprocess<F: Float>(&self, x: &mut [F], shape: [usize; 4]) {
        self.constraints.postprocess(x);
        if let Some(lowpass) = &self.lowpass {
            lowpass.apply(x, shape);
        }
    }
}

/// The clipper ranges of openretina's `most_discriminative_stimulus` notebook (green, UV).
pub const MDS_GREEN_RANGE: (f64, f64) = (-0.6, 6.2);
pub const MDS_UV_RANGE: (f64, f64) = (-0.9, 6.2);

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
    let mut noise = vec![0.0; n];
    Rng::for_item(settings.seed, &target.id()).fill_normal(&mut noise);
    let mut data: Vec<F> = noise.iter().map(|v| F::from_f64(v * 0.1)).collect();
    // openretina's notebooks and visualize pass the noise through the clipper only.
    settings.constraints.postprocess(&mut data);
    Tensor { shape, data }
}

/// The objective `settings` ask for on `target`.
pub fn objective<'m, F: Float>(model: &'m Model<F>, target: &MeiTarget, settings: &MeiSettings) -> Result<Objective<'m, F>> {
    Ok(Objective::new(model, target.clone(), settings.time_steps)?
        .with_direction(settings.direction)
        .with_temperature(settings.temperature))
}

/// Optimise one stimulus from `init` (already post-processed, shape `(1, C, T, H, W)`).
pub fn optimize<F: Float>(model: &Model<F>, target: &MeiTarget, init: Tensor<F>, settings: &MeiSettings) -> Result<Mei> {
    optimize_mean(std::slice::from_ref(model), target, init, settings)
}

/// The objective `settings` ask for on `target`, averaged over `models` (e.g. ensemble members).
pub fn mean_objective<'m, F: Float>(models: &'m [Model<F>], target: &MeiTarget, settings: &MeiSettings) -> Result<MeanObjective<'m, F>> {
    if models.is_empty() {
        return Err(Error::new("no models to average over"));
    }
    Ok(MeanObjective::new(models.iter().map(|m| objective(m, target, settings)).collect::<Result<_>>()?))
}

/// Optimise one stimulus for the mean objective over `models` (the members of an ensemble); with one
/// model, [`optimize`].
pub fn optimize_mean<F: Float>(models: &[Model<F>], target: &MeiTarget, init: Tensor<F>, settings: &MeiSettings) -> Result<Mei> {
    optimize_mean_or_fail(models, target, init, settings)?
}

/// [`optimize_mean`] with the two kinds of error apart: the outer one is a fault of the request (it
/// would fail for every MEI), the inner one this MEI's own failure (its values left the finite numbers),
/// after which other MEIs of the same model can still succeed.
fn optimize_mean_or_fail<F: Float>(models: &[Model<F>], target: &MeiTarget, init: Tensor<F>, settings: &MeiSettings) -> Result<Result<Mei>> {
    let objective = mean_objective(models, target, settings)?;
    let model = &models[0];
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
    let shape = [expected[1], expected[2], expected[3], expected[4]];
    let mut x = init.data;
    if !all_finite(&x) {
        bail!("MEI {}: the initial stimulus holds NaN or infinite values", target.id());
    }
    let mut optimizer = settings.optimizer.start::<F>(settings.learning_rate, x.len());
    let mut stopper = Stopper::new(settings.early_stop);
    // Grows as steps are taken: the iteration count is the user's, nothing is reserved for it.
    let mut losses = Vec::new();
    for step in 0..settings.iterations {
        let (value, gradient) = objective.gradient(&x);
        // loss = -objective + penalty; its gradient = -d objective + d penalty.
        let mut grad = gradient;
        grad.iter_mut().for_each(|g| *g = -*g);
        let penalty = settings.constraints.penalty(&x, &mut grad);
        let loss = -value + penalty;
        if !loss.is_finite() {
            return Ok(Err(non_finite(target, &format!("its loss is {loss} at step {step}"))));
        }
        losses.push(loss);
        optimizer.step(&mut x, &grad);
        settings.postprocess(&mut x, shape);
        if !all_finite(&x) {
            return Ok(Err(non_finite(target, &format!("its stimulus holds NaN or infinite values after step {step}"))));
        }
        // As openretina: the stopper sees the loss of the stimulus before this step, after the step.
        if stopper.should_stop(loss) {
            break;
        }
    }
    let (final_objective, series) = objective.evaluate(&x);
    if !final_objective.is_finite() || !all_finite(&series) {
        return Ok(Err(non_finite(target, &format!("its final response is {final_objective}"))));
    }
    Ok(Ok(Mei {
        target: target.clone(),
        stimulus: Tensor { shape: expected.to_vec(), data: x.iter().map(|v| v.to_f64() as f32).collect() },
        losses,
        objective: final_objective,
        response: series.iter().map(|v| v.to_f64() as f32).collect(),
        highlighted_frames: objective.first().highlighted_frames(),
    }))
}

/// No early exit: a loop that reads everything runs in vector lanes (this runs on every step).
fn all_finite<F: Float>(x: &[F]) -> bool {
    x.iter().fold(true, |finite, v| finite & v.to_f64().is_finite())
}

/// The error of an MEI that left the finite numbers.
fn non_finite(target: &MeiTarget, what: &str) -> Error {
    Error::new(format!(
        "MEI {} stopped: {what}; the model's responses overflow (check its weights) or --lr is too large",
        target.id()
    ))
}

/// Bytes that `meis` MEIs of `settings` need at their peak (None: beyond counting): the ones in flight
/// (one per thread) and the results kept (stimulus, losses and response of each, and their serialised
/// copy).
pub fn memory_bytes<F: Float>(model: &Model<F>, meis: usize, settings: &MeiSettings) -> Option<u64> {
    let threads = rayon::current_num_threads();
    let in_flight = model.work_bytes(settings.time_steps, 1, 1, Work::Gradient { window: objective::WINDOW_LENGTH })?.checked_mul(meis.min(threads) as u64)?;
    let stimulus = model.config.stimulus_shape(settings.time_steps, 1).iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))?;
    let result = stimulus.checked_add(settings.time_steps as u64)?.checked_mul(4)?.checked_add((settings.iterations as u64).checked_mul(8)?)?;
    in_flight.checked_add(result.checked_mul(2)?.checked_mul(meis as u64)?)
}

/// Refuse MEIs that would not fit in the memory budget (and too few frames for the kernels), before
/// anything is allocated.
pub fn check_memory<F: Float>(model: &Model<F>, meis: usize, settings: &MeiSettings) -> Result<()> {
    model.config.core_output_shape(settings.time_steps)?;
    let what = format!(
        "{meis} MEI{} of {} frames and {} steps",
        if meis == 1 { "" } else { "s" },
        settings.time_steps,
        settings.iterations
    );
    check_bytes(memory_bytes(model, meis, settings), &what)
}

/// Optimise many MEIs in parallel, each from its seeded initial stimulus. `on_done` is called after
/// each one (e.g. to advance a progress bar).
pub fn optimize_all<F: Float>(
    model: &Model<F>,
    targets: &[MeiTarget],
    settings: &MeiSettings,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Mei>> {
    optimize_all_mean(std::slice::from_ref(model), targets, settings, on_done)
}

/// [`optimize_all`] for the mean objective over `models`.
pub fn optimize_all_mean<F: Float>(
    models: &[Model<F>],
    targets: &[MeiTarget],
    settings: &MeiSettings,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Mei>> {
    optimize_each_mean(models, targets, settings, on_done)?.into_iter().collect()
}

/// [`optimize_all_mean`] that goes on when single MEIs fail: the outer error is a fault of the request,
/// each inner one the failure of that target's MEI (its values left the finite numbers).
pub fn optimize_each_mean<F: Float>(
    models: &[Model<F>],
    targets: &[MeiTarget],
    settings: &MeiSettings,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Result<Mei>>> {
    let model = models.first().ok_or_else(|| Error::new("no models to optimise on"))?;
    check_memory(model, targets.len(), settings)?;
    // One queue that every thread takes the next MEI from, the costliest first: rayon's split of the
    // list into runs left a core idle while the other finished its run of output-neuron MEIs (the
    // costliest, last in the list). Now the last MEIs are the cheapest.
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cost_rank(&targets[i])));
    let next = AtomicUsize::new(0);
    let done: Vec<OnceLock<Result<Result<Mei>>>> = targets.iter().map(|_| OnceLock::new()).collect();
    (0..rayon::current_num_threads().min(targets.len())).into_par_iter().for_each(|_| {
        while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            let target = &targets[i];
            let init = initial_stimulus(model, target, settings);
            let _ = done[i].set(optimize_mean_or_fail(models, target, init, settings));
            on_done();
        }
    });
    done.into_iter().map(|mei| mei.into_inner().expect("every MEI was taken from the queue")).collect()
}

/// Orders MEIs by cost, highest first: readout objectives run the whole core on the whole stimulus,
/// an inner channel's only up to its layer and on its receptive field (smaller for lower layers).
fn cost_rank(target: &MeiTarget) -> usize {
    match target {
        MeiTarget::OutputNeuron { .. } | MeiTarget::Contrastive { .. } => usize::MAX,
        MeiTarget::InnerChannel { layer, .. } => *layer,
    }
}

/// Every MEI `openretina visualize` computes: each channel of each core layer, then each neuron of
/// each session.
pub fn all_targets<F: Float>(model: &Model<F>) -> Vec<MeiTarget> {
    let mut targets = Vec::new();
    // Shapes for the training length (or 50 frames): only the channel counts are used.
    let shapes = model.layer_output_shapes(model.config.train_time_steps.unwrap_or(50)).unwrap_or_default();
    for (layer, shape) in shapes.iter().enumerate() {
        for channel in 0..shape[0] {
            targets.push(MeiTarget::InnerChannel { layer, channel });
        }
    }
    for (session, readout) in &model.readouts {
        for neuron in 0..readout.neurons() {
            targets.push(MeiTarget::OutputNeuron { session: session.clone(), neuron });
        }
    }
    targets
}
