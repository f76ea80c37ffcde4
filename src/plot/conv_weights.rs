//! The weights of one (in channel, out channel) pair of a core convolution, 6 inches high and 6 wide
//! per panel, the panels chosen by what the kernel has:
//! - sine/cosine weights (`custom_separable`): openretina's `STSeparableBatchConv3d.plot_weights`,
//!   spatial weight, temporal kernel and the sine/cosine weights (18 x 6);
//! - one frame (`time_independent`): openretina's `TimeIndependentConv3D.plot_weights`, the spatial
//!   weight in the pair's own colour range and an empty "No temporal filter" panel (12 x 6);
//! - a free temporal kernel (`full`, `separable`; openretina has no figure for them): spatial weight
//!   and temporal kernel, in the layer's ranges (12 x 6).

use std::path::Path;

use super::axes::{colour_bar, fit_aspect, symmetric_limit, Axes, TAB_BLUE, TAB_ORANGE, TITLE_SIZE};
use super::canvas::{Align, Canvas, Colour};
use super::composition::centre_block_mean;
use super::FigureStyle;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Inches per panel, and the figure's height.
const PANEL_INCHES: f32 = 6.0;

/// The weights of one channel pair, as stored in the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvWeights {
    /// Spatial weight `(h, w)`.
    pub spatial: Tensor<f32>,
    /// Temporal kernel (at the default log speed), one value per frame; one value for kernels
    /// without a temporal extent.
    pub temporal: Vec<f32>,
    pub sin: Vec<f32>,
    pub cos: Vec<f32>,
    pub in_channel: usize,
    pub out_channel: usize,
    /// Added to the panel titles where a panel shows part of the kernel, e.g. `frame 7 of 21`.
    pub spatial_note: Option<String>,
    pub temporal_note: Option<String>,
}

impl ConvWeights {
    /// The weights as openretina shows them: all four negated when the mean of the spatial weight's
    /// centre block (rows `[max(h/2 - 3, 0), h/2 + 2)`, same for columns) is negative, so that the
    /// figure's centre is positive. The kernel's effect is unchanged: it is a product of the two.
    pub fn centre_positive(&self) -> Result<ConvWeights> {
        let &[h, w] = self.spatial.shape.as_slice() else {
            return Err(Error::new(format!(
                "the spatial weight of in_channel={} out_channel={} must be (h, w), got shape {:?}",
                self.in_channel, self.out_channel, self.spatial.shape
            )));
        };
        if h * w != self.spatial.data.len() || h * w == 0 {
            return Err(Error::new(format!(
                "the spatial weight of in_channel={} out_channel={} has shape {:?} but {} values",
                self.in_channel,
                self.out_channel,
                self.spatial.shape,
                self.spatial.data.len()
            )));
        }
        let spatial: Vec<f64> = self.spatial.data.iter().map(|&v| v as f64).collect();
        let mut oriented = self.clone();
        if centre_block_mean(&spatial, h, w, true) < 0.0 {
            for values in [&mut oriented.spatial.data, &mut oriented.temporal, &mut oriented.sin, &mut oriented.cos] {
                values.iter_mut().for_each(|v| *v = -*v);
            }
        }
        Ok(oriented)
    }
}

/// Axis limits shared by all figures of one layer, so that they can be compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvWeightLimits {
    /// Colour range `[-spatial, spatial]`: the layer's largest |spatial weight|.
    pub spatial: f32,
    /// Temporal y-limits `[-temporal, temporal]`: the layer's largest |temporal kernel value|.
    pub temporal: f32,
    /// Sine/cosine y-limits `[-sin_cos, sin_cos]`: 1.1 x the layer's largest |sin| or |cos| weight.
    pub sin_cos: f32,
}

impl ConvWeightLimits {
    /// The limits over all channel pairs of a layer.
    pub fn of_layer(layer: &[ConvWeights]) -> ConvWeightLimits {
        let abs_max = |values: &mut dyn Iterator<Item = &f32>| values.fold(0.0f32, |m, v| m.max(v.abs()));
        ConvWeightLimits {
            spatial: abs_max(&mut layer.iter().flat_map(|w| &w.spatial.data)),
            temporal: abs_max(&mut layer.iter().flat_map(|w| &w.temporal)),
            sin_cos: 1.1 * abs_max(&mut layer.iter().flat_map(|w| w.sin.iter().chain(&w.cos))),
        }
    }
}

/// Draw the figure of one channel pair (oriented with [`ConvWeights::centre_positive`]) to `path`.
pub fn draw_conv_weights(
    weights: &ConvWeights,
    limits: &ConvWeightLimits,
    style: &FigureStyle,
    path: &Path,
) -> Result<()> {
    conv_weights_canvas(weights, limits)?.save(style, path)
}

/// Which panels a kernel's figure has (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    SinCos,
    NoTemporalFilter,
    SpaceTime,
}

impl Layout {
    fn of(w: &ConvWeights) -> Layout {
        if !w.sin.is_empty() || !w.cos.is_empty() {
            Layout::SinCos
        } else if w.temporal.len() <= 1 {
            Layout::NoTemporalFilter
        } else {
            Layout::SpaceTime
        }
    }

    fn panels(self) -> usize {
        if self == Layout::SinCos {
            3
        } else {
            2
        }
    }
}

pub(crate) fn conv_weights_canvas(weights: &ConvWeights, limits: &ConvWeightLimits) -> Result<Canvas> {
    let w = weights.centre_positive()?;
    let layout = Layout::of(&w);
    let panels = layout.panels();
    let (rows, cols) = (w.spatial.shape[0], w.spatial.shape[1]);
    let mut canvas = Canvas::new(PANEL_INCHES * panels as f32, PANEL_INCHES)?;

    let title = format!("Weights for in_channel={} out_channel={}", w.in_channel, w.out_channel);
    canvas.text(canvas.width / 2.0, 8.0 + 0.73 * TITLE_SIZE, TITLE_SIZE, Align::Centre, title);

    // Equal columns under the title, room for tick labels left of and under each.
    let (left, right, top, bottom, gap) = (40.0, 15.0, 62.0, 30.0, 60.0);
    let column_w = (canvas.width - left - right - (panels - 1) as f32 * gap) / panels as f32;
    let height = canvas.height - top - bottom;
    let column_x = |i: usize| left + i as f32 * (column_w + gap);

    // Spatial weight: square cells, colour bar on the right. openretina's time-independent figure
    // scales each pair's colours to its own largest |weight|, the others to the layer's.
    let bar_w = 15.0;
    let bar_space = bar_w + 15.0 + 45.0;
    let (x, y, iw, ih) = fit_aspect(column_x(0), top, column_w - bar_space, height, rows, cols);
    let image = Axes { x, y, w: iw, h: ih, xlim: (-0.5, cols as f64 - 0.5), ylim: (rows as f64 - 0.5, -0.5) };
    let spatial: Vec<f64> = w.spatial.data.iter().map(|&v| v as f64).collect();
    let own_max = spatial.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let spatial_limit = symmetric_limit(if layout == Layout::NoTemporalFilter { own_max } else { limits.spatial as f64 });
    image.heat_map(&mut canvas, &spatial, cols, spatial_limit);
    image.frame(&mut canvas);
    image.x_ticks(&mut canvas, true);
    image.y_ticks(&mut canvas, true);
    image.title(&mut canvas, &panel_title("Spatial Weight", &w.spatial_note));
    colour_bar(&mut canvas, x + iw + 15.0, y, bar_w, ih, spatial_limit);

    if layout == Layout::NoTemporalFilter {
        // matplotlib's empty axes: 0 to 1 both ways.
        let empty = Axes { x: column_x(1), y: top, w: column_w, h: height, xlim: (0.0, 1.0), ylim: (0.0, 1.0) };
        empty.frame(&mut canvas);
        empty.x_ticks(&mut canvas, false);
        empty.y_ticks(&mut canvas, false);
        empty.title(&mut canvas, "No temporal filter");
        return Ok(canvas);
    }

    // Temporal kernel.
    let temporal_limit = symmetric_limit(limits.temporal as f64);
    let frames = w.temporal.len().max(2) as f64;
    let temporal = Axes {
        x: column_x(1),
        y: top,
        w: column_w,
        h: height,
        xlim: (-0.05 * (frames - 1.0), 1.05 * (frames - 1.0)),
        ylim: (-temporal_limit, temporal_limit),
    };
    line_by_index(&temporal, &mut canvas, &w.temporal, TAB_BLUE);
    temporal.frame(&mut canvas);
    temporal.x_ticks(&mut canvas, false);
    temporal.y_ticks(&mut canvas, false);
    temporal.title(&mut canvas, &panel_title("Temporal Weight", &w.temporal_note));
    if layout == Layout::SpaceTime {
        return Ok(canvas);
    }

    // Sine and cosine weights.
    let sin_cos_limit = symmetric_limit(limits.sin_cos as f64);
    let n = w.sin.len().max(w.cos.len()).max(2) as f64;
    let sin_cos = Axes {
        x: column_x(2),
        y: top,
        w: column_w,
        h: height,
        xlim: (-0.05 * (n - 1.0), 1.05 * (n - 1.0)),
        ylim: (-sin_cos_limit, sin_cos_limit),
    };
    line_by_index(&sin_cos, &mut canvas, &w.sin, TAB_BLUE);
    line_by_index(&sin_cos, &mut canvas, &w.cos, TAB_ORANGE);
    sin_cos.frame(&mut canvas);
    sin_cos.x_ticks(&mut canvas, false);
    sin_cos.y_ticks(&mut canvas, false);
    sin_cos.title(&mut canvas, "Sin/Cos Weights");
    sin_cos.legend(&mut canvas, &[("sin", TAB_BLUE), ("cos", TAB_ORANGE)]);
    Ok(canvas)
}

/// `title (note)`, or `title` alone.
fn panel_title(title: &str, note: &Option<String>) -> String {
    match note {
        Some(note) => format!("{title} ({note})"),
        None => title.to_string(),
    }
}

/// `values` against their indices 0, 1, 2, ...
fn line_by_index(axes: &Axes, canvas: &mut Canvas, values: &[f32], colour: Colour) {
    let xs: Vec<f64> = (0..values.len()).map(|i| i as f64).collect();
    let ys: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    axes.plot(canvas, &xs, &ys, colour);
}
