//! `retina bench`: speed of the model and of MEIs on this machine, against openretina's numbers
//! measured on the same machine kind (2 cores) and against the machine's own sgemm peak.

use std::collections::BTreeMap;
use std::time::Instant;

use rayon::prelude::*;

use crate::formats::{RawModel, RawTensor};
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

/// openretina's times for the model being measured: ratios are printed against these only.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenretinaTimes {
    pub mei_seconds: f64,
    /// Per-stimulus MEI step at batch 1 and 32, where measured.
    pub step_seconds: Option<(f64, f64)>,
    /// Where the numbers come from, printed with the ratios.
    pub source: String,
}

/// openretina's times for `model_path`: `given` (from the command line); else for `demo` the numbers
/// measured on it; else the `timing.mei_float32_seconds_median_of_3` of a fixture's `manifest.json`
/// beside the model file; else none (no ratios: another model's numbers would mislead).
pub fn openretina_reference(model_path: &str, given: Option<f64>) -> crate::Result<Option<OpenretinaTimes>> {
    if let Some(mei_seconds) = given {
        if !(mei_seconds.is_finite() && mei_seconds > 0.0) {
            bail!("--openretina-mei-seconds {mei_seconds}: expected a positive number of seconds");
        }
        return Ok(Some(OpenretinaTimes { mei_seconds, step_seconds: None, source: "--openretina-mei-seconds".into() }));
    }
    if model_path == "demo" {
        return Ok(Some(OpenretinaTimes {
            mei_seconds: OPENRETINA_MEI_SECONDS,
            step_seconds: Some((OPENRETINA_STEP_SECONDS_BATCH1, OPENRETINA_STEP_SECONDS_BATCH32)),
            source: "openretina on demo's architecture".into(),
        }));
    }
    let manifest = std::path::Path::new(model_path).parent().map(|d| d.join("manifest.json"));
    let timing = manifest
        .filter(|m| m.is_file())
        .and_then(|m| std::fs::read(&m).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v["timing"]["mei_float32_seconds_median_of_3"].as_f64())
        .filter(|s| s.is_finite() && *s > 0.0);
    Ok(timing.map(|mei_seconds| OpenretinaTimes { mei_seconds, step_seconds: None, source: "the fixture's manifest.json".into() }))
}

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

/// Time forward and forward+backward per stimulus at batch 1 and 32, and all MEIs of the model; with
/// `one_mei`, batch 1 only and, instead of all MEIs, output neuron 0 of the first session (the MEI the
/// fixtures' openretina timings use), one copy per thread run together (as `visualize` runs MEIs):
/// for the real-size models, where all MEIs take many minutes.
pub fn run(model: &Model<f32>, time_steps: usize, openretina: Option<&OpenretinaTimes>, one_mei: bool) -> crate::Result<BenchReport> {
    let mut lines = Vec::new();
    let threads = rayon::current_num_threads();
    lines.push(format!("threads: {threads}; stimulus: {:?}", model.config.stimulus_shape(time_steps, 1)));
    let peak = sgemm_peak();
    lines.push(format!("sgemm peak (matrixmultiply, {threads} threads): {:.1} GFLOP/s", peak / 1e9));

    let session = model.sessions().next().expect("sessions").to_string();
    let target = MeiTarget::OutputNeuron { session: session.clone(), neuron: 0 };
    let objective = Objective::new(model, target.clone(), time_steps)?;
    let full_shape = model.config.stimulus_shape(time_steps, 1);
    let full = [full_shape[1], full_shape[2], full_shape[3], full_shape[4]];
    let flops_fwd = conv_flops(model, full, model.core.blocks.len());
    let (gradient_shape, gradient_layers) = objective.gradient_work();
    let flops_step = 2.0 * conv_flops(model, gradient_shape, gradient_layers);
    let mut rng = Rng::new(2);
    let shape = model.config.stimulus_shape(time_steps, 1);
    let batches: &[usize] = if one_mei { &[1] } else { &[1, 32] };
    for &batch in batches {
        let n: usize = shape.iter().product();
        let stimuli: Vec<Vec<f32>> = (0..batch).map(|_| (0..n).map(|_| rng.uniform() as f32).collect()).collect();
        let runs = if one_mei { 3 } else if batch == 1 { 21 } else { 5 };
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
        let ratio = match openretina.and_then(|o| o.step_seconds) {
            Some((b1, b32)) => {
                let o = if batch == 1 { b1 } else { b32 };
                format!("{:.1}x openretina's {:.1} ms; ", o / step, o * 1e3)
            }
            None => String::new(),
        };
        lines.push(format!(
            "batch {batch:>2}: forward {:.3} ms/stimulus ({:.0}% of peak as direct-convolution work), MEI step (forward+backward of neuron 0's objective) {:.3} ms/stimulus ({ratio}{:.0}% of peak as direct-convolution work)",
            fwd * 1e3,
            100.0 * flops_fwd / fwd / peak,
            step * 1e3,
            100.0 * flops_step / step / peak
        ));
    }

    let settings = MeiSettings { time_steps, ..MeiSettings::openretina(model.config.input_channels) };
    let targets = if one_mei { vec![target; threads] } else { mei::all_targets(model) };
    // Median of 7 (3 for one MEI): the machine kind this is measured on (2 shared cores) varies by
    // ±15% run to run.
    let mut failed = None;
    let runs = if one_mei { 3 } else { 7 };
    let cpu_before = process_cpu_seconds();
    let secs = median_seconds(runs, || {
        if let Err(e) = mei::optimize_all(model, &targets, &settings, &|| {}) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let per_mei = secs / targets.len() as f64;
    // CPU seconds per MEI: on a loaded machine the wall time depends on what else runs.
    let cpu_per_mei = match (cpu_before, process_cpu_seconds()) {
        (Some(a), Some(b)) => format!(", CPU {:.3} s per MEI", (b - a) / (runs * targets.len()) as f64),
        _ => String::new(),
    };
    // Work actually done, counted as direct convolution: each step a forward and backward on the
    // objective's part of the stimulus, then one full forward for the final response. Layers that run
    // by FFT do less arithmetic than that, so their models can show more than 100% of the peak.
    let total_flops: f64 = targets
        .iter()
        .map(|t| {
            let objective = Objective::new(model, t.clone(), time_steps).expect("valid target");
            let (shape, layers) = objective.gradient_work();
            settings.iterations as f64 * 2.0 * conv_flops(model, shape, layers) + flops_fwd
        })
        .sum();
    let ratio = match openretina {
        Some(o) => format!("{:.1}x openretina's {:.0} ms per MEI from {}; ", o.mei_seconds / per_mei, o.mei_seconds * 1e3, o.source),
        None => "no openretina time for this model: pass --openretina-mei-seconds for a ratio; ".into(),
    };
    let which = if one_mei {
        format!("{} copies of output neuron 0's MEI ({} steps each, one per thread)", targets.len(), settings.iterations)
    } else {
        format!("all {} MEIs ({} steps each)", targets.len(), settings.iterations)
    };
    lines.push(format!(
        "{which}: {:.3} s, {:.2} ms per MEI{cpu_per_mei}, {:.2} MEIs/s ({ratio}direct-convolution work at ~{:.0}% of sgemm peak)",
        secs,
        per_mei * 1e3,
        1.0 / per_mei,
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

/// A model with one session of `neurons` neurons, for measuring how cost grows with the readout: the
/// core of `raw` and its first session's readout tiled to `neurons` rows, each neuron's Gaussian mean
/// spread uniformly over the field (seeded, so every call gives the same model).
pub fn tiled_model(raw: &RawModel, neurons: usize) -> crate::Result<RawModel> {
    let original = Model::<f32>::from_raw(raw)?;
    let session = original.sessions().next().expect("a model has sessions").to_string();
    let n0 = original.readouts[&session].neurons();
    let mean_scale = original.config.readout.gaussian_mean_scale.max(1e-6);
    let prefix = format!("readout.{session}.");
    let mut tiled = RawModel { model_class: raw.model_class.clone(), hyper_parameters: raw.hyper_parameters.clone(), tensors: BTreeMap::new() };
    let mut rng = Rng::new(7);
    for (name, t) in &raw.tensors {
        if !name.starts_with("readout.") {
            tiled.tensors.insert(name.clone(), t.clone());
            continue;
        }
        if !name.starts_with(&prefix) {
            continue; // other sessions
        }
        let values: Vec<f64> = t.to_float::<f64>(name)?.data;
        // The neuron axis: last for `features` (1, C, 1, n), first for everything else.
        let axis = if name.ends_with(".features") { t.shape.len() - 1 } else { 0 };
        if t.shape.get(axis) != Some(&n0) {
            crate::bail!("{name}: shape {:?} has no axis of {n0} neurons to tile", t.shape);
        }
        let outer: usize = t.shape[..axis].iter().product();
        let inner: usize = t.shape[axis + 1..].iter().product();
        let mut data = Vec::with_capacity(outer * neurons * inner);
        for o in 0..outer {
            for n in 0..neurons {
                let at = (o * n0 + n % n0) * inner;
                data.extend_from_slice(&values[at..at + inner]);
            }
        }
        if name.ends_with(".mask_mean") {
            for v in &mut data {
                *v = (rng.uniform() * 2.0 - 1.0) / mean_scale;
            }
        }
        let mut shape = t.shape.clone();
        shape[axis] = neurons;
        tiled.tensors.insert(name.clone(), RawTensor::f32(shape, data.iter().map(|&v| v as f32).collect()));
    }
    one_session(&mut tiled.hyper_parameters, &session, neurons);
    Model::<f32>::from_raw(&tiled).map_err(|e| crate::error::Error::new(format!("the model tiled to {neurons} neurons: {e}")))?;
    Ok(tiled)
}

/// Keep only `session` in every per-session table of the hyper parameters; its neuron count is `neurons`.
fn one_session(value: &mut serde_json::Value, session: &str, neurons: usize) {
    match value {
        serde_json::Value::Object(map) => {
            if map.contains_key(session) {
                map.retain(|k, _| k == session);
            }
            for (k, v) in map.iter_mut() {
                if k == "n_neurons_dict" {
                    if let Some(m) = v.as_object_mut() {
                        m.retain(|s, _| s == session);
                        m.insert(session.to_string(), neurons.into());
                    }
                } else {
                    one_session(v, session, neurons);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| one_session(v, session, neurons)),
        _ => {}
    }
}

/// Output MEIs measured per size in `neurons_per_mei`.
const SAMPLED_MEIS: usize = 16;

/// Time per output-neuron MEI on `raw`'s core with one session of N neurons, for each N in `sizes`:
/// the median of 3 runs over 16 neurons spread over the session.
pub fn per_mei_by_neurons(raw: &RawModel, sizes: &[usize], time_steps: usize) -> crate::Result<BenchReport> {
    let mut lines = vec![format!(
        "output-neuron MEIs on {}'s core with one session tiled to N neurons ({SAMPLED_MEIS} MEIs spread over the session, {} threads, median of 3):",
        raw.model_class,
        rayon::current_num_threads()
    )];
    let mut first: Option<(usize, f64)> = None;
    for &n in sizes {
        let model = Model::<f32>::from_raw(&tiled_model(raw, n)?)?;
        let settings = MeiSettings { time_steps, ..MeiSettings::openretina(model.config.input_channels) };
        let session = model.sessions().next().expect("one session").to_string();
        let k = SAMPLED_MEIS.min(n);
        let targets: Vec<MeiTarget> =
            (0..k).map(|i| MeiTarget::OutputNeuron { session: session.clone(), neuron: i * n / k }).collect();
        let secs = median_seconds(3, || {
            mei::optimize_all(&model, &targets, &settings, &|| {}).expect("MEIs");
        }) / k as f64;
        let base = *first.get_or_insert((n, secs));
        lines.push(format!(
            "  N = {n:>5}: {:.2} ms per MEI ({:.2}x the time at N = {}; openretina not measured on tiled models)",
            secs * 1e3,
            secs / base.1,
            base.0
        ));
    }
    Ok(BenchReport { lines })
}

/// Peak resident memory of this process so far (`VmHWM`), where the system reports it (Linux).
/// CPU time (user + system, all threads) of this process so far, in seconds (Linux; else `None`).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Linux reports them in USER_HZ, 100 on every architecture it supports.
    Some(ticks / 100.0)
}

pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
