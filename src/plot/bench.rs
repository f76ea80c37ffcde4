//! Timing of the figures at a given style, for `examples/bench_plot.rs` and the CLI's bench
//! command, with deterministic sample inputs shaped like the `hoefling_2024_base_low_res` model's.

use std::path::Path;
use std::time::{Duration, Instant};

use super::canvas::Canvas;
use super::composition::mei_composition;
use super::conv_weights::conv_weights_canvas;
use super::mei::mei_canvas;
use super::readout::readout_canvas;
use super::{ConvWeightLimits, ConvWeights, FigureStyle, MeiFigureInput, ReadoutLimits, ReadoutNeuron};
use crate::error::{Error, Result};
use crate::output::write_atomic;
use crate::tensor::Tensor;

/// How long one kind of figure took to compute, draw, encode and write (medians over the repeats).
#[derive(Debug, Clone)]
pub struct FigureTiming {
    pub figure: &'static str,
    /// Size of the written file, in bytes.
    pub file_bytes: u64,
    /// The whole of `draw_*`: numbers, layout, pixels, encoding, writing.
    pub median: Duration,
    pub fastest: Duration,
    /// Numbers and layout (for the MEI figure mostly its composition).
    pub median_layout: Duration,
    /// Pixels and file encoding (drawn band by band while encoding), or the SVG text.
    pub median_encode: Duration,
}

/// Draw each kind of figure `repeats` times into `dir` (one file per kind, overwritten) and time it,
/// along the same path as the `draw_*` functions.
pub fn bench_figures(style: &FigureStyle, repeats: usize, dir: &Path) -> Result<Vec<FigureTiming>> {
    let mei = sample_mei_input();
    let conv = sample_conv_weights();
    let conv_limits = ConvWeightLimits::of_layer(std::slice::from_ref(&conv));
    let neuron = sample_readout_neuron();
    let readout_limits = ReadoutLimits::of_session(std::slice::from_ref(&neuron));
    let kinds: [(&'static str, &dyn Fn() -> Result<Canvas>); 3] = [
        ("mei", &|| mei_canvas(&mei, &mei_composition(&mei.stimulus, mei.frame_rate)?)),
        ("conv_weights", &|| conv_weights_canvas(&conv, &conv_limits)),
        ("readout_neuron", &|| readout_canvas(&neuron, &readout_limits)),
    ];
    let mut timings = Vec::new();
    for (figure, make_canvas) in kinds {
        let path = dir.join(format!("{figure}.{}", style.format.extension()));
        let mut phases = Vec::with_capacity(repeats.max(1));
        for _ in 0..repeats.max(1) {
            let started = Instant::now();
            let canvas = make_canvas()?;
            let laid_out = Instant::now();
            let bytes = canvas.encode(style).map_err(|e| Error::file(&path, e))?;
            let encoded = Instant::now();
            write_atomic(&path, &bytes)?;
            phases.push([started.elapsed(), laid_out - started, encoded - laid_out]);
        }
        let median = |k: usize| {
            let mut times: Vec<Duration> = phases.iter().map(|p| p[k]).collect();
            times.sort();
            times[times.len() / 2]
        };
        timings.push(FigureTiming {
            figure,
            file_bytes: bytes_on_disk(&path),
            median: median(0),
            fastest: phases.iter().map(|p| p[0]).min().unwrap_or_default(),
            median_layout: median(1),
            median_encode: median(2),
        });
    }
    Ok(timings)
}

fn bytes_on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// A small deterministic pseudo-random sequence in [-1, 1) (no dependency, same on every machine).
fn noise(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Difference of Gaussians on an `h x w` grid, centred.
fn centre_surround(h: usize, w: usize, x: usize, y: usize) -> f32 {
    let (dy, dx) = (y as f32 - (h as f32 - 1.0) / 2.0, x as f32 - (w as f32 - 1.0) / 2.0);
    let r2 = dx * dx + dy * dy;
    (-r2 / 4.0).exp() - 0.5 * (-r2 / 16.0).exp()
}

/// An MEI-like stimulus (2 colour channels, 50 frames of 18 x 16): a centre-surround blob that
/// oscillates towards the end, plus noise; with a response trace of 30 frames.
pub fn sample_mei_input() -> MeiFigureInput {
    let (c, t, h, w) = (2, 50, 18, 16);
    let mut next = noise(7);
    let mut data = Vec::with_capacity(c * t * h * w);
    for ch in 0..c {
        for f in 0..t {
            let envelope = (-((f as f32 - 40.0) / 8.0).powi(2)).exp();
            let wave = (f as f32 * (0.5 + 0.3 * ch as f32)).sin() * envelope;
            for y in 0..h {
                for x in 0..w {
                    data.push(2.0 * wave * centre_surround(h, w, x, y) + 0.05 * next());
                }
            }
        }
    }
    let response = (0..30).map(|i| 1.0 + (i as f32 / 4.0).sin() * (i as f32 / 30.0)).collect();
    MeiFigureInput {
        stimulus: Tensor { shape: vec![c, t, h, w], data },
        response: Some(response),
        window: (40, 50),
        frame_rate: 30.0,
    }
}

/// Weights of one channel pair shaped like the first layer of the low resolution model.
pub fn sample_conv_weights() -> ConvWeights {
    let (h, w) = (11, 11);
    let mut next = noise(3);
    let spatial = (0..h * w).map(|i| 0.2 * centre_surround(h, w, i % w, i / w) + 0.02 * next()).collect();
    ConvWeights {
        spatial: Tensor { shape: vec![h, w], data: spatial },
        temporal: (0..21).map(|i| (i as f32 * 0.6).sin() * (-(i as f32) / 8.0).exp()).collect(),
        sin: (0..7).map(|_| 0.5 * next()).collect(),
        cos: (0..7).map(|_| 0.5 * next()).collect(),
        in_channel: 1,
        out_channel: 0,
        spatial_note: None,
        temporal_note: None,
    }
}

/// A readout neuron with a Gaussian mask on an 8 x 6 grid and 16 feature weights.
pub fn sample_readout_neuron() -> ReadoutNeuron {
    let (h, w) = (8, 6);
    let mut next = noise(5);
    let mask = (0..h * w)
        .map(|i| {
            let (y, x) = ((i / w) as f32 - 2.0, (i % w) as f32 - 3.0);
            (-(x * x + y * y) / 3.0).exp() / 10.0
        })
        .collect();
    ReadoutNeuron {
        mask: Tensor { shape: vec![h, w], data: mask },
        feature_weights: (0..16).map(|_| 0.15 + 0.12 * next()).collect(),
        neuron: 0,
        figure: crate::model::readout::WeightFigure::mask(false),
    }
}
