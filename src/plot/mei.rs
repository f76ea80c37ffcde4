//! The MEI figure, as openretina's `plot_stimulus_composition` lays it out on a 2 x 2 grid of a
//! 21 x 12 inch figure: temporal components (objective window shaded), their low-passed spectra,
//! spatial components side by side; openretina leaves the fourth panel empty, here it shows the
//! model's response to the MEI when the caller gives it.

use std::path::Path;

use super::axes::{auto_limits, fit_aspect, format_number, symmetric_limit, Axes, TITLE_SIZE};
use super::canvas::{Align, Canvas, Colour, BLACK};
use super::composition::{mei_composition, ChannelComposition, LOWPASS_CUTOFF_HZ};
use super::FigureStyle;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const FIGURE_INCHES: (f32, f32) = (21.0, 12.0);
/// Width of the boxes around the spatial components, in points.
const BOX_WIDTH: f32 = 2.0;

/// What the MEI figure needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MeiFigureInput {
    /// The stimulus `(C, T, H, W)`.
    pub stimulus: Tensor<f32>,
    /// The model's response to the stimulus, one value per output frame. The model's output is
    /// aligned with the end of the stimulus: `response[i]` is drawn at stimulus frame
    /// `T - response.len() + i`.
    pub response: Option<Vec<f32>>,
    /// Stimulus frames `[start, end)` the objective averages over; shaded in the time panels.
    pub window: (usize, usize),
    /// Frames per second (openretina's models: 30).
    pub frame_rate: f64,
}

/// Draw the MEI figure to `path`.
pub fn draw_mei(input: &MeiFigureInput, style: &FigureStyle, path: &Path) -> Result<()> {
    let compositions = mei_composition(&input.stimulus, input.frame_rate)?;
    draw_mei_with(input, &compositions, style, path)
}

/// [`draw_mei`] with the stimulus' composition already computed (`mei_composition`).
pub fn draw_mei_with(input: &MeiFigureInput, compositions: &[ChannelComposition], style: &FigureStyle, path: &Path) -> Result<()> {
    mei_canvas(input, compositions)?.save(style, path)
}

/// What a figure adds to the MEI figure: labelled response traces for the fourth panel (e.g. the
/// two groups of neurons of a most discriminative stimulus), drawn instead of `input.response`
/// with a legend, and a note under the fourth panel's title (e.g. how the stimulus was optimised).
#[derive(Debug, Clone, Default)]
pub struct MeiAnnotations {
    pub traces: Vec<(String, Vec<f32>)>,
    pub note: Option<String>,
}

/// [`draw_mei_with`] with annotations.
pub fn draw_mei_annotated(
    input: &MeiFigureInput,
    compositions: &[ChannelComposition],
    annotations: &MeiAnnotations,
    style: &FigureStyle,
    path: &Path,
) -> Result<()> {
    mei_canvas_annotated(input, compositions, annotations)?.save(style, path)
}

/// Line colours and names of the colour channels, as openretina picks them by channel count.
fn channel_looks(channels: usize) -> Vec<(Colour, String)> {
    let named: &[(Colour, &str)] = match channels {
        1 => &[([0, 0, 0], "Grey")],
        2 => &[([0x00, 0x64, 0x00], "Green"), ([0x94, 0x00, 0xd3], "UV")],
        3 => &[([0xff, 0, 0], "Red"), ([0, 0x80, 0], "Green"), ([0, 0, 0xff], "Blue")],
        // openretina stops here; more channels get matplotlib's default colour cycle.
        _ => &[],
    };
    if !named.is_empty() {
        return named.iter().map(|(c, n)| (*c, n.to_string())).collect();
    }
    const CYCLE: [Colour; 10] = [
        [0x1f, 0x77, 0xb4],
        [0xff, 0x7f, 0x0e],
        [0x2c, 0xa0, 0x2c],
        [0xd6, 0x27, 0x28],
        [0x94, 0x67, 0xbd],
        [0x8c, 0x56, 0x4b],
        [0xe3, 0x77, 0xc2],
        [0x7f, 0x7f, 0x7f],
        [0xbc, 0xbd, 0x22],
        [0x17, 0xbe, 0xcf],
    ];
    (0..channels).map(|c| (CYCLE[c % CYCLE.len()], format!("Channel {c}"))).collect()
}

pub(crate) fn mei_canvas(input: &MeiFigureInput, compositions: &[ChannelComposition]) -> Result<Canvas> {
    mei_canvas_annotated(input, compositions, &MeiAnnotations::default())
}

pub(crate) fn mei_canvas_annotated(
    input: &MeiFigureInput,
    compositions: &[ChannelComposition],
    annotations: &MeiAnnotations,
) -> Result<Canvas> {
    // mei_composition accepted the stimulus, so it is (C, T, H, W) and not empty.
    let &[channels, frames, height, width] = input.stimulus.shape.as_slice() else {
        return Err(Error::new(format!("an MEI must have shape (C, T, H, W), got {:?}", input.stimulus.shape)));
    };
    let (start, end) = input.window;
    if !(start < end && end <= frames) {
        return Err(Error::new(format!(
            "the objective window [{start}, {end}) must be a non-empty range of the stimulus' {frames} frames"
        )));
    }
    let looks = channel_looks(channels);
    let names: Vec<&str> = looks.iter().map(|(_, n)| n.as_str()).collect();
    let names = names.join("/");

    // openretina's time axis: `frames` points evenly from 0 to frames / frame_rate seconds.
    let duration = frames as f64 / input.frame_rate;
    let time_step = if frames > 1 { duration / (frames - 1) as f64 } else { 0.0 };
    let times: Vec<f64> = (0..frames).map(|i| i as f64 * time_step).collect();
    let time_limits = auto_limits(0.0, times[frames - 1]);
    let (window_from, window_to) = (times[start], times[end - 1]);

    let mut canvas = Canvas::new(FIGURE_INCHES.0, FIGURE_INCHES.1)?;
    let (left, right, top, bottom, column_gap, row_gap) = (40.0, 15.0, 30.0, 35.0, 60.0, 70.0);
    let panel_w = (canvas.width - left - right - column_gap) / 2.0;
    let panel_h = (canvas.height - top - bottom - row_gap) / 2.0;
    let panel =
        |col: usize, row: usize| (left + col as f32 * (panel_w + column_gap), top + row as f32 * (panel_h + row_gap));

    // Temporal components.
    let temporal_max = compositions.iter().flat_map(|c| &c.temporal).fold(0.0f64, |m, v| m.max(v.abs()));
    let temporal_limit = 1.1 * symmetric_limit(temporal_max);
    let (x, y) = panel(0, 0);
    let temporal = Axes { x, y, w: panel_w, h: panel_h, xlim: time_limits, ylim: (-temporal_limit, temporal_limit) };
    temporal.shade_x(&mut canvas, window_from, window_to);
    for (composition, (colour, _)) in compositions.iter().zip(&looks) {
        temporal.plot(&mut canvas, &times, &composition.temporal, *colour);
    }
    temporal.frame(&mut canvas);
    temporal.x_ticks(&mut canvas, false);
    temporal.y_ticks(&mut canvas, false);
    temporal.title(&mut canvas, "Temporal Trace of the Stimulus");
    temporal.x_label(&mut canvas, "Time [s]");

    // Spectra of the low-passed temporal components.
    let (lo, hi) = compositions
        .iter()
        .flat_map(|c| &c.fft_weights)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (x, y) = panel(1, 0);
    let spectrum =
        Axes { x, y, w: panel_w, h: panel_h, xlim: (0.0, LOWPASS_CUTOFF_HZ + 1.0), ylim: auto_limits(lo, hi) };
    for (composition, (colour, _)) in compositions.iter().zip(&looks) {
        spectrum.plot(&mut canvas, &composition.fft_freqs, &composition.fft_weights, *colour);
    }
    spectrum.frame(&mut canvas);
    spectrum.x_ticks(&mut canvas, false);
    spectrum.y_ticks(&mut canvas, false);
    let frequencies: Vec<String> = compositions.iter().map(|c| format_number(c.main_frequency, 1)).collect();
    spectrum.title(&mut canvas, &format!("Weighted Frequency: {} Hz ({names})", frequencies.join("/")));
    spectrum.x_label(&mut canvas, "Frequency [Hz]");

    // Spatial components side by side.
    let (x, y) = panel(0, 1);
    draw_spatial_components(&mut canvas, compositions, (x, y, panel_w, panel_h), height, width, &names);

    // The model's response to the MEI, or the annotations' labelled traces.
    let single: Vec<(String, Vec<f32>)> = input.response.iter().map(|r| (String::new(), r.clone())).collect();
    let traces = if annotations.traces.is_empty() { &single } else { &annotations.traces };
    if !traces.is_empty() {
        const TRACE_COLOURS: [Colour; 4] = [BLACK, [0xd6, 0x27, 0x28], [0x1f, 0x77, 0xb4], [0x2c, 0xa0, 0x2c]];
        let (x, y) = panel(1, 1);
        let (lo, hi) = traces
            .iter()
            .flat_map(|(_, r)| r)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v as f64), hi.max(v as f64)));
        let axes = Axes { x, y, w: panel_w, h: panel_h, xlim: time_limits, ylim: auto_limits(lo, hi) };
        axes.shade_x(&mut canvas, window_from, window_to);
        for (i, (_, response)) in traces.iter().enumerate() {
            let offset = frames.saturating_sub(response.len());
            let response_times: Vec<f64> = (0..response.len()).map(|i| (offset + i) as f64 * time_step).collect();
            let values: Vec<f64> = response.iter().map(|&v| v as f64).collect();
            axes.plot(&mut canvas, &response_times, &values, TRACE_COLOURS[i % TRACE_COLOURS.len()]);
        }
        axes.frame(&mut canvas);
        axes.x_ticks(&mut canvas, false);
        axes.y_ticks(&mut canvas, false);
        let title = if traces.len() > 1 { "Model Responses to the Stimulus" } else { "Model Response to the Stimulus" };
        let title = match &annotations.note {
            Some(note) => format!("{title} ({note})"),
            None => title.to_string(),
        };
        axes.title(&mut canvas, &title);
        axes.x_label(&mut canvas, "Time [s]");
        let entries: Vec<(&str, Colour)> = traces
            .iter()
            .enumerate()
            .filter(|(_, (label, _))| !label.is_empty())
            .map(|(i, (label, _))| (label.as_str(), TRACE_COLOURS[i % TRACE_COLOURS.len()]))
            .collect();
        if !entries.is_empty() {
            axes.legend(&mut canvas, &entries);
        }
    }
    Ok(canvas)
}

/// The spatial components next to each other on one colour scale, a box around each, and a scale
/// bar of 50 µm (one pixel of the low resolution stimulus, four of the high resolution one).
fn draw_spatial_components(
    canvas: &mut Canvas,
    compositions: &[ChannelComposition],
    (x, y, w, h): (f32, f32, f32, f32),
    rows: usize,
    cols: usize,
    names: &str,
) {
    let total_cols = cols * compositions.len();
    let mut side_by_side = Vec::with_capacity(rows * total_cols);
    for r in 0..rows {
        for c in compositions {
            side_by_side.extend_from_slice(&c.spatial.data[r * cols..(r + 1) * cols]);
        }
    }
    let limit = symmetric_limit(side_by_side.iter().fold(0.0f64, |m, v| m.max(v.abs())));
    let (x, y, w, h) = fit_aspect(x, y + 2.0 * BOX_WIDTH, w, h - 4.0 * BOX_WIDTH, rows, total_cols);
    let image = Axes { x, y, w, h, xlim: (-0.5, total_cols as f64 - 0.5), ylim: (rows as f64 - 0.5, -0.5) };
    image.heat_map(canvas, &side_by_side, total_cols, limit);
    let cell = w / total_cols as f32;
    for k in 0..compositions.len() {
        canvas.outline(x + (k * cols) as f32 * cell, y, cols as f32 * cell, h, BOX_WIDTH, BLACK);
    }
    // openretina puts the bar at pixel (6, 15) of an 18 x 16 stimulus with its label one row above.
    let bar_cols = if cols > 20 { 4 } else { 1 };
    let bar_x = 6.min(cols.saturating_sub(bar_cols)) as f64;
    let bar_y = rows.saturating_sub(3) as f64;
    let (bx, by) = (image.to_x(bar_x - 0.5), image.to_y(bar_y - 0.5));
    canvas.rect(bx, by, bar_cols as f32 * cell, cell, BLACK);
    canvas.text(bx, image.to_y(bar_y - 1.5), TITLE_SIZE - 2.0, Align::Left, "50 µm");
    let title_box = Axes { x, y: y - BOX_WIDTH, w, h, xlim: (0.0, 1.0), ylim: (0.0, 1.0) };
    title_box.title(canvas, &format!("Spatial Component ({names})"));
}
