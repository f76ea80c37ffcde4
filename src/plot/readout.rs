//! One readout neuron as openretina draws it for its readout class: where it looks (left) and how it
//! weighs the core's feature channels (right). Mask readouts (Gaussian mask, factorised) show their
//! mask in red-blue; the sampled Gaussian readout shows the density of its learned position's Gaussian
//! in viridis with the position as a dot. Figure: 12 x 6 inches.

use std::path::Path;

use super::axes::{auto_limits, fit_aspect, symmetric_limit, viridis, Axes, TAB_BLUE};
use super::canvas::Canvas;
use super::FigureStyle;
use crate::error::{Error, Result};
use crate::model::readout::{SpatialMap, WeightFigure};
use crate::tensor::Tensor;

const FIGURE_INCHES: (f32, f32) = (12.0, 6.0);
/// matplotlib's `scatter(s=40)`: a marker of area 40 square points.
const DOT_DIAMETER: f32 = 6.3;

/// What one readout neuron reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadoutNeuron {
    /// Mask or sampling density `(h, w)` over the core's output.
    pub mask: Tensor<f32>,
    /// One weight per core feature channel.
    pub feature_weights: Vec<f32>,
    pub neuron: usize,
    /// How its readout class is drawn.
    pub figure: WeightFigure,
}

/// Axis limits shared by all neurons of one session (readout), so that they can be compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadoutLimits {
    /// Colour range `[-mask, mask]`: the session's largest |mask value|.
    pub mask: f32,
    /// Bar chart y-limits: the session's smallest and largest feature weight, and largest |weight|.
    pub feature_min: f32,
    pub feature_max: f32,
    pub feature_abs: f32,
}

impl ReadoutLimits {
    /// The limits over all neurons of a session.
    pub fn of_session(neurons: &[ReadoutNeuron]) -> ReadoutLimits {
        let mask = neurons.iter().flat_map(|n| &n.mask.data).fold(0.0f32, |m, v| m.max(v.abs()));
        let weights = || neurons.iter().flat_map(|n| n.feature_weights.iter().copied());
        ReadoutLimits {
            mask,
            feature_min: weights().fold(f32::INFINITY, f32::min),
            feature_max: weights().fold(f32::NEG_INFINITY, f32::max),
            feature_abs: weights().fold(0.0f32, |m, v| m.max(v.abs())),
        }
    }
}

/// Draw the figure of one neuron to `path`.
pub fn draw_readout_neuron(neuron: &ReadoutNeuron, limits: &ReadoutLimits, style: &FigureStyle, path: &Path) -> Result<()> {
    readout_canvas(neuron, limits)?.save(style, path)
}

pub(crate) fn readout_canvas(neuron: &ReadoutNeuron, limits: &ReadoutLimits) -> Result<Canvas> {
    let (rows, cols) = match neuron.mask.shape.as_slice() {
        &[h, w] if h * w == neuron.mask.data.len() && h * w > 0 => (h, w),
        shape => {
            return Err(Error::new(format!(
                "the readout mask of neuron {} must be a non-empty (h, w) map, got shape {shape:?} with {} values",
                neuron.neuron,
                neuron.mask.data.len()
            )))
        }
    };
    let mut canvas = Canvas::new(FIGURE_INCHES.0, FIGURE_INCHES.1)?;
    let (left, right, top, bottom, gap) = (35.0, 15.0, 30.0, 30.0, 55.0);
    let column_w = (canvas.width - left - right - gap) / 2.0;
    let height = canvas.height - top - bottom;

    let (x, y, w, h) = fit_aspect(left, top, column_w, height, rows, cols);
    let spatial = Axes { x, y, w, h, xlim: (-0.5, cols as f64 - 0.5), ylim: (rows as f64 - 0.5, -0.5) };
    let values: Vec<f64> = neuron.mask.data.iter().map(|&v| v as f64).collect();
    let title = match neuron.figure.spatial {
        SpatialMap::Mask => {
            spatial.heat_map(&mut canvas, &values, cols, symmetric_limit(limits.mask as f64));
            "Readout Mask"
        }
        SpatialMap::SamplingDensity => {
            // imshow's default normalisation: the neuron's own smallest to largest value.
            let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let span = if hi > lo { hi - lo } else { 1.0 };
            spatial.cells(&mut canvas, &values, cols, |v| viridis((v - lo) / span));
            "Sampling Density"
        }
    };
    if let Some([px, py]) = neuron.figure.position {
        spatial.dot(&mut canvas, px as f64, py as f64, DOT_DIAMETER);
    }
    spatial.frame(&mut canvas);
    spatial.x_ticks(&mut canvas, true);
    spatial.y_ticks(&mut canvas, true);
    spatial.title(&mut canvas, title);

    let n = neuron.feature_weights.len();
    let (lo, hi) = if neuron.figure.symmetric_features {
        (-limits.feature_abs as f64, limits.feature_abs as f64)
    } else {
        (limits.feature_min as f64, limits.feature_max as f64)
    };
    // A session whose weights are all equal (or all zero) still gets a visible range.
    let ylim = if hi > lo { (lo, hi) } else { auto_limits(lo.min(0.0), hi.max(0.0)) };
    let features = Axes { x: left + column_w + gap, y: top, w: column_w, h: height, xlim: auto_limits(-0.4, n.max(1) as f64 - 0.6), ylim };
    let weights: Vec<f64> = neuron.feature_weights.iter().map(|&v| v as f64).collect();
    features.bars(&mut canvas, &weights, TAB_BLUE);
    features.frame(&mut canvas);
    features.x_ticks(&mut canvas, true);
    features.y_ticks(&mut canvas, false);
    features.title(&mut canvas, "Readout Feature Weights");
    Ok(canvas)
}
