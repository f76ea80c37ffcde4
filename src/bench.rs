//! `retina bench`: speed of the model and of MEIs on this machine, against openretina's numbers
//! measured on the same machine kind (2 cores) and against the machine's own sgemm peak.

use std::time::Instant;

use rayon::prelude::*;

use crate::mei::{self, MeiSettings, MeiTarget, Objective};
use crate::model::linalg::{gemm, Layout};
use crate::model::Model;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// openretina 1.1.1 on this machine kind (2 threads), from the issues: one output-neuron MEI (10 SGD
/// steps, batch 1) took 0.179 s (median of 8); one MEI step took 15 ms at batch 1 and 11.7 ms per
/// stimulus at batch 32.
pub const OPENRETINA_MEI_SECONDS: f64 = 0.179;
pub const OPENRETINA_STEP_SECONDS_BATCH1: f64 = 0.015;
pub const OPENRETINA_STEP_SECONDS_BATCH32: f64 = 0.0117;

/// Median of `runs` timings of `f`, in seconds.
fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// Floating-point operations of the first `blocks` core blocks for one stimulus of `shape`
/// `(channels, t, h, w)`, as this crate computes them. The backward pass costs the same again.
pub fn conv_flops(model: &Model<f32>, shape: [usize; 4], blocks: usize) -> f64 {
    model.core.flops(shape, blocks)
}

/// Peak single-precision matrix product rate of this machine with all threads, in FLOP/s.
pub fn sgemm_peak() -> f64 {
    let n = 512;
    let threads = rayon::current_num_threads();
    let mut rng = Rng::new(1);
    let a: Vec<f32> = (0..n * n).map(|_| rng.uniform() as f32).collect();
    let b = a.clone();
    let secs = median_seconds(5, || {
        (0..threads).into_par_iter().for_each(|_| {
            let mut c = vec![0.0f32; n * n];
            for _ in 0..4 {
                gemm(&a, Layout::row_major(n, n), &b, Layout::row_major(n, n), 0.0, &mut c, Layout::row_major(n, n));
            }
        })
    });
    (threads * 4) as f64 * 2.0 * (n * n * n) as f64 / secs
}

pub struct BenchReport {
    pub lines: Vec<String>,
}

/// Time forward and forward+backward per stimulus at batch 1 and 32, and all MEIs of the model.
pub fn run(model: &Model<f32>, time_steps: usize) -> crate::Result<BenchReport> {
    let mut lines = Vec::new();
    let threads = rayon::current_num_threads();
    lines.push(format!("threads: {threads}; stimulus: {:?}", model.config.stimulus_shape(time_steps, 1)));
    let peak = sgemm_peak();
    lines.push(format!("sgemm peak (matrixmultiply, {threads} threads): {:.1} GFLOP/s", peak / 1e9));

    let session = model.sessions().next().expect("sessions").to_string();
    let target = MeiTarget::OutputNeuron { session: session.clone(), neuron: 0 };
    let objective = Objective::new(model, target, time_steps)?;
    let full_shape = model.config.stimulus_shape(time_steps, 1);
    let full = [full_shape[1], full_shape[2], full_shape[3], full_shape[4]];
    let flops_fwd = conv_flops(model, full, model.core.blocks.len());
    let (gradient_shape, gradient_layers) = objective.gradient_work();
    let flops_step = 2.0 * conv_flops(model, gradient_shape, gradient_layers);
    let mut rng = Rng::new(2);
    let shape = model.config.stimulus_shape(time_steps, 1);
    for batch in [1usize, 32] {
        let n: usize = shape.iter().product();
        let stimuli: Vec<Vec<f32>> = (0..batch).map(|_| (0..n).map(|_| rng.uniform() as f32).collect()).collect();
        let runs = if batch == 1 { 21 } else { 5 };
        let fwd = median_seconds(runs, || {
            stimuli.par_iter().for_each(|x| {
                objective.evaluate(x);
            })
        }) / batch as f64;
        let step = median_seconds(runs, || {
            stimuli.par_iter().for_each(|x| {
                objective.gradient(x);
            })
        }) / batch as f64;
        let openretina = if batch == 1 { OPENRETINA_STEP_SECONDS_BATCH1 } else { OPENRETINA_STEP_SECONDS_BATCH32 };
        lines.push(format!(
            "batch {batch:>2}: forward {:.3} ms/stimulus ({:.0}% of peak), MEI step (forward+backward of neuron 0's objective) {:.3} ms/stimulus ({:.1}x openretina's {:.1} ms; {:.0}% of peak)",
            fwd * 1e3,
            100.0 * flops_fwd / fwd / peak,
            step * 1e3,
            openretina / step,
            openretina * 1e3,
            100.0 * flops_step / step / peak
        ));
    }

    let settings = MeiSettings { time_steps, ..MeiSettings::openretina(model.config.input_channels) };
    let targets = mei::all_targets(model);
    // Median of 7: the machine kind this is measured on (2 shared cores) varies by ±15% run to run.
    let secs = median_seconds(7, || {
        mei::optimize_all(model, &targets, &settings, &|| {}).expect("MEIs");
    });
    let per_mei = secs / targets.len() as f64;
    // Work actually done: each step a forward and backward on the objective's part of the stimulus,
    // then one full forward for the final response.
    let total_flops: f64 = targets
        .iter()
        .map(|t| {
            let objective = Objective::new(model, t.clone(), time_steps).expect("valid target");
            let (shape, layers) = objective.gradient_work();
            settings.iterations as f64 * 2.0 * conv_flops(model, shape, layers) + flops_fwd
        })
        .sum();
    lines.push(format!(
        "all {} MEIs ({} steps each): {:.3} s, {:.2} ms per MEI, {:.0} MEIs/s ({:.1}x openretina's {:.0} ms per MEI; ~{:.0}% of sgemm peak)",
        targets.len(),
        settings.iterations,
        secs,
        per_mei * 1e3,
        1.0 / per_mei,
        OPENRETINA_MEI_SECONDS / per_mei,
        OPENRETINA_MEI_SECONDS * 1e3,
        100.0 * total_flops / secs / peak
    ));
    Ok(BenchReport { lines })
}

/// A stimulus for benchmarks and demos: uniform in [0, 1).
pub fn random_stimulus(shape: [usize; 5], seed: u64) -> Tensor<f32> {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    Tensor { shape: shape.to_vec(), data: (0..n).map(|_| rng.uniform() as f32).collect() }
}
