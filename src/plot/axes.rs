//! Plot panels on a [`Canvas`]: a box in points with data limits, and the matplotlib-like pieces
//! openretina's figures use (lines, bars, heat maps, ticks, titles, legend, colour bar). Sizes follow
//! matplotlib's defaults so the figures read the same.

use super::canvas::{Align, Canvas, Colour, BLACK, WHITE};

/// Tick labels, axis labels, legend.
pub(crate) const FONT_SIZE: f32 = 10.0;
/// Panel titles and figure titles.
pub(crate) const TITLE_SIZE: f32 = 12.0;
pub(crate) const LINE_WIDTH: f32 = 1.5;
const SPINE_WIDTH: f32 = 0.8;
const TICK_LENGTH: f32 = 3.5;
const TICK_PAD: f32 = 3.5;
const TITLE_PAD: f32 = 6.0;
const LABEL_PAD: f32 = 4.0;
/// Fraction of the font size below the baseline (DejaVu Sans descent).
const DESCENT: f32 = 0.24;

/// matplotlib's first two default line colours (tab:blue, tab:orange).
pub(crate) const TAB_BLUE: Colour = [0x1f, 0x77, 0xb4];
pub(crate) const TAB_ORANGE: Colour = [0xff, 0x7f, 0x0e];
/// Black at 10 % opacity over white: openretina's shading of the objective window.
pub(crate) const SHADE: Colour = [230, 230, 230];
const LEGEND_EDGE: Colour = [204, 204, 204];

/// A panel: its box on the canvas (points, y down) and the data range it shows. `ylim.0` is drawn at
/// the bottom and `ylim.1` at the top, so an image whose rows go down uses `(rows - 0.5, -0.5)`.
pub(crate) struct Axes {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    pub xlim: (f64, f64),
    pub ylim: (f64, f64),
}

impl Axes {
    pub fn to_x(&self, v: f64) -> f32 {
        self.x + ((v - self.xlim.0) / (self.xlim.1 - self.xlim.0)) as f32 * self.w
    }

    pub fn to_y(&self, v: f64) -> f32 {
        self.y + self.h - ((v - self.ylim.0) / (self.ylim.1 - self.ylim.0)) as f32 * self.h
    }

    /// A line through `(xs[i], ys[i])` with increasing `xs`, cut off at the x limits (the y limits
    /// are chosen to hold the data).
    pub fn plot(&self, canvas: &mut Canvas, xs: &[f64], ys: &[f64], colour: Colour) {
        let (lo, hi) = (self.xlim.0.min(self.xlim.1), self.xlim.0.max(self.xlim.1));
        let mut points = Vec::with_capacity(xs.len() + 2);
        let mut previous: Option<(f64, f64)> = None;
        for (&x, &y) in xs.iter().zip(ys) {
            if let Some((px, py)) = previous {
                // Where the segment from the previous point crosses a limit, add the crossing.
                for edge in [lo, hi] {
                    if (px - edge) * (x - edge) < 0.0 {
                        let t = (edge - px) / (x - px);
                        points.push((self.to_x(edge), self.to_y(py + t * (y - py))));
                    }
                }
            }
            if (lo..=hi).contains(&x) {
                points.push((self.to_x(x), self.to_y(y)));
            }
            previous = Some((x, y));
        }
        canvas.line(points, LINE_WIDTH, colour);
    }

    /// Bars of width 0.8 centred on 0, 1, 2, ... from 0 to each value, clipped to the y limits.
    pub fn bars(&self, canvas: &mut Canvas, values: &[f64], colour: Colour) {
        let (lo, hi) = (self.ylim.0.min(self.ylim.1), self.ylim.0.max(self.ylim.1));
        for (i, &v) in values.iter().enumerate() {
            let (a, b) = (v.min(0.0).clamp(lo, hi), v.max(0.0).clamp(lo, hi));
            if b > a {
                let (x0, x1) = (self.to_x(i as f64 - 0.4), self.to_x(i as f64 + 0.4));
                let (top, bottom) = (self.to_y(b), self.to_y(a));
                canvas.rect(x0, top, x1 - x0, bottom - top, colour);
            }
        }
    }

    /// A grey band over the whole height between data x values `x0` and `x1`.
    pub fn shade_x(&self, canvas: &mut Canvas, x0: f64, x1: f64) {
        let (a, b) = (self.to_x(x0).max(self.x), self.to_x(x1).min(self.x + self.w));
        if b > a {
            canvas.rect(a, self.y, b - a, self.h, SHADE);
        }
    }

    /// A `rows x cols` map (row-major) as RdBu_r cells centred on integer coordinates, coloured on
    /// the symmetric range `[-limit, limit]`.
    pub fn heat_map(&self, canvas: &mut Canvas, values: &[f64], cols: usize, limit: f64) {
        let colours = RdBuR::new();
        self.cells(canvas, values, cols, |v| colours.colour(v, limit));
    }

    /// A `rows x cols` map (row-major) as cells centred on integer coordinates, coloured by `colour`.
    pub fn cells(&self, canvas: &mut Canvas, values: &[f64], cols: usize, colour: impl Fn(f64) -> Colour) {
        for (i, &v) in values.iter().enumerate() {
            let (r, c) = ((i / cols) as f64, (i % cols) as f64);
            let (x0, x1) = (self.to_x(c - 0.5), self.to_x(c + 0.5));
            let (y0, y1) = (self.to_y(r - 0.5), self.to_y(r + 0.5));
            canvas.rect_between(x0, y0, x1, y1, colour(v));
        }
    }

    /// A white dot with a black edge at data point `(x, y)`, `diameter` points wide (matplotlib's
    /// `scatter(c="white", edgecolors="black")`). Drawn with strokes only: a ring of width r around
    /// radius r/2 fills the disc.
    pub fn dot(&self, canvas: &mut Canvas, x: f64, y: f64, diameter: f32) {
        let (cx, cy, r) = (self.to_x(x), self.to_y(y), diameter / 2.0);
        let circle = |radius: f32| -> Vec<(f32, f32)> {
            (0..=32).map(|i| i as f32 * std::f32::consts::TAU / 32.0).map(|a| (cx + radius * a.cos(), cy + radius * a.sin())).collect()
        };
        canvas.line(circle(r / 2.0), r, WHITE);
        canvas.line(circle(r), 1.0, BLACK);
    }

    pub fn frame(&self, canvas: &mut Canvas) {
        canvas.outline(self.x, self.y, self.w, self.h, SPINE_WIDTH, BLACK);
    }

    /// Ticks and labels below the panel; `integer` restricts ticks to whole numbers (image pixels).
    pub fn x_ticks(&self, canvas: &mut Canvas, integer: bool) {
        let max_intervals = (self.w / (FONT_SIZE * 3.0)).floor().clamp(1.0, 9.0) as usize;
        let bottom = self.y + self.h;
        let baseline = bottom + TICK_LENGTH + TICK_PAD + Canvas::CAP_HEIGHT * FONT_SIZE;
        for (value, label) in nice_ticks(self.xlim.0, self.xlim.1, max_intervals, integer) {
            let x = self.to_x(value);
            canvas.rect(x - SPINE_WIDTH / 2.0, bottom, SPINE_WIDTH, TICK_LENGTH, BLACK);
            canvas.text(x, baseline, FONT_SIZE, Align::Centre, label);
        }
    }

    /// Ticks and labels left of the panel.
    pub fn y_ticks(&self, canvas: &mut Canvas, integer: bool) {
        let max_intervals = (self.h / (FONT_SIZE * 2.0)).floor().clamp(1.0, 9.0) as usize;
        let right = self.x - TICK_LENGTH - TICK_PAD;
        for (value, label) in nice_ticks(self.ylim.0, self.ylim.1, max_intervals, integer) {
            let y = self.to_y(value);
            canvas.rect(self.x - TICK_LENGTH, y - SPINE_WIDTH / 2.0, TICK_LENGTH, SPINE_WIDTH, BLACK);
            canvas.text(right, y + Canvas::CAP_HEIGHT * FONT_SIZE / 2.0, FONT_SIZE, Align::Right, label);
        }
    }

    pub fn title(&self, canvas: &mut Canvas, text: &str) {
        let baseline = self.y - TITLE_PAD - DESCENT * TITLE_SIZE;
        canvas.text(self.x + self.w / 2.0, baseline, TITLE_SIZE, Align::Centre, text);
    }

    /// Axis label under the x tick labels.
    pub fn x_label(&self, canvas: &mut Canvas, text: &str) {
        let tick_labels_bottom = self.y + self.h + TICK_LENGTH + TICK_PAD + (Canvas::CAP_HEIGHT + DESCENT) * FONT_SIZE;
        let baseline = tick_labels_bottom + LABEL_PAD + Canvas::CAP_HEIGHT * FONT_SIZE;
        canvas.text(self.x + self.w / 2.0, baseline, FONT_SIZE, Align::Centre, text);
    }

    /// A framed legend in the upper right corner: a line sample and a label per entry.
    pub fn legend(&self, canvas: &mut Canvas, entries: &[(&str, Colour)]) {
        let em = FONT_SIZE;
        let (border, sample, gap, spacing) = (0.4 * em, 2.0 * em, 0.8 * em, 0.5 * em);
        let text_w = entries.iter().map(|(t, _)| canvas.text_width(t, em)).fold(0.0, f32::max);
        let w = 2.0 * border + sample + gap + text_w + 0.4 * em;
        let n = entries.len() as f32;
        let h = 2.0 * border + n * em + (n - 1.0).max(0.0) * spacing + 0.4 * em;
        let (x, y) = (self.x + self.w - 0.5 * em - w, self.y + 0.5 * em);
        canvas.rect(x, y, w, h, WHITE);
        canvas.outline(x, y, w, h, SPINE_WIDTH, LEGEND_EDGE);
        for (i, (label, colour)) in entries.iter().enumerate() {
            let centre = y + border + 0.2 * em + i as f32 * (em + spacing) + em / 2.0;
            let sx = x + border + 0.2 * em;
            canvas.line(vec![(sx, centre), (sx + sample, centre)], LINE_WIDTH, *colour);
            let baseline = centre + Canvas::CAP_HEIGHT * em / 2.0;
            canvas.text(sx + sample + gap, baseline, em, Align::Left, *label);
        }
    }
}

/// A vertical RdBu_r colour bar for `[-limit, limit]` in the box `(x, y, w, h)`, ticks on the right.
pub(crate) fn colour_bar(canvas: &mut Canvas, x: f32, y: f32, w: f32, h: f32, limit: f64) {
    let colours = RdBuR::new();
    let edge = |i: usize| y + h - h * i as f32 / colours.table.len() as f32;
    for (i, colour) in colours.table.iter().enumerate() {
        // Index 0 (most negative) at the bottom.
        canvas.rect_between(x, edge(i), x + w, edge(i + 1), *colour);
    }
    let axis = Axes { x, y, w, h, xlim: (0.0, 1.0), ylim: (-limit, limit) };
    let max_intervals = (h / (FONT_SIZE * 2.0)).floor().clamp(1.0, 9.0) as usize;
    let left = x + w + TICK_LENGTH + TICK_PAD;
    for (value, label) in nice_ticks(-limit, limit, max_intervals, false) {
        let ty = axis.to_y(value);
        canvas.rect(x + w, ty - SPINE_WIDTH / 2.0, TICK_LENGTH, SPINE_WIDTH, BLACK);
        canvas.text(left, ty + Canvas::CAP_HEIGHT * FONT_SIZE / 2.0, FONT_SIZE, Align::Left, label);
    }
    axis.frame(canvas);
}

/// The largest box with `rows : cols` cell proportions (square cells) centred in `(x, y, w, h)`.
pub(crate) fn fit_aspect(x: f32, y: f32, w: f32, h: f32, rows: usize, cols: usize) -> (f32, f32, f32, f32) {
    let cell = (w / cols.max(1) as f32).min(h / rows.max(1) as f32);
    let (bw, bh) = (cell * cols as f32, cell * rows as f32);
    (x + (w - bw) / 2.0, y + (h - bh) / 2.0, bw, bh)
}

/// matplotlib's automatic limits for data spanning `[lo, hi]`: 5 % margins on both sides, and a
/// unit range around a constant.
pub(crate) fn auto_limits(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (-1.0, 1.0);
    }
    if hi <= lo {
        let pad = if lo == 0.0 { 1.0 } else { 0.05 * lo.abs() };
        return (lo - pad, hi + pad);
    }
    let margin = 0.05 * (hi - lo);
    (lo - margin, hi + margin)
}

/// Symmetric limit for data whose largest |value| is `abs_max`; 1 when there is nothing to show.
pub(crate) fn symmetric_limit(abs_max: f64) -> f64 {
    if abs_max > 0.0 && abs_max.is_finite() {
        abs_max
    } else {
        1.0
    }
}

/// Round tick positions in `[lo, hi]` at most `max_intervals` apart in count, with labels that all
/// show the same number of decimals (like matplotlib's MaxNLocator and ScalarFormatter).
pub(crate) fn nice_ticks(lo: f64, hi: f64, max_intervals: usize, integer: bool) -> Vec<(f64, String)> {
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return Vec::new();
    }
    let raw = span / max_intervals.max(1) as f64;
    let mut exponent = raw.log10().floor() as i32;
    let mut mantissa = 10.0;
    'search: for _ in 0..2 {
        for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
            let step = m * 10f64.powi(exponent);
            let allowed = !integer || (step >= 1.0 && step.fract() == 0.0);
            if allowed && step >= raw * (1.0 - 1e-9) {
                mantissa = m;
                break 'search;
            }
        }
        exponent += 1;
    }
    if mantissa == 10.0 {
        mantissa = 1.0;
        exponent += 1;
    }
    let step = mantissa * 10f64.powi(exponent);
    let decimals = ((-exponent).max(0) + (mantissa == 2.5) as i32) as usize;
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last)
        .map(|k| {
            let value = k as f64 * step;
            (value, format_number(value, decimals))
        })
        .collect()
}

/// A number with `decimals` decimals and a typographic minus sign, as matplotlib prints it.
pub(crate) fn format_number(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value);
    // No "-0.0": a value that rounds to zero is shown as zero.
    if text.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        return text.trim_start_matches('-').to_string();
    }
    text.replace('-', "\u{2212}")
}

/// matplotlib's RdBu_r colour map: ColorBrewer's 11 RdBu colours, blue to red, interpolated linearly
/// into 256 entries and truncated to bytes as matplotlib does.
pub(crate) struct RdBuR {
    table: [Colour; 256],
}

impl RdBuR {
    pub fn new() -> RdBuR {
        // ColorBrewer RdBu, reversed (matplotlib stores these as byte / 255).
        const ANCHORS: [[u8; 3]; 11] = [
            [5, 48, 97],
            [33, 102, 172],
            [67, 147, 195],
            [146, 197, 222],
            [209, 229, 240],
            [247, 247, 247],
            [253, 219, 199],
            [244, 165, 130],
            [214, 96, 77],
            [178, 24, 43],
            [103, 0, 31],
        ];
        let mut table = [[0u8; 3]; 256];
        for (i, colour) in table.iter_mut().enumerate() {
            let position = i as f64 / 255.0 * 10.0;
            let k = (position.floor() as usize).min(9);
            let f = position - k as f64;
            for (channel, out) in colour.iter_mut().enumerate() {
                let (a, b) = (ANCHORS[k][channel] as f64 / 255.0, ANCHORS[k + 1][channel] as f64 / 255.0);
                let v = a + f * (b - a);
                *out = (v * 255.0) as u8;
            }
        }
        RdBuR { table }
    }

    /// The colour of `value` on `[-limit, limit]`: values outside are clipped, NaN is white.
    pub fn colour(&self, value: f64, limit: f64) -> Colour {
        if value.is_nan() {
            return WHITE;
        }
        let t = (value + limit) / (2.0 * limit);
        self.table[(t * 256.0).floor().clamp(0.0, 255.0) as usize]
    }
}

/// matplotlib's viridis colour map, from 17 evenly spaced entries of its 256-entry table
/// interpolated linearly (within a few byte levels of the full table).
pub(crate) fn viridis(t: f64) -> Colour {
    const ANCHORS: [[f64; 3]; 17] = [
        [0.267004, 0.004874, 0.329415],
        [0.282327, 0.094955, 0.417331],
        [0.278826, 0.17549, 0.483397],
        [0.258965, 0.251537, 0.524736],
        [0.229739, 0.322361, 0.545706],
        [0.19943, 0.387607, 0.554642],
        [0.172719, 0.448791, 0.557885],
        [0.149039, 0.508051, 0.55725],
        [0.127568, 0.566949, 0.550556],
        [0.120638, 0.625828, 0.533488],
        [0.157851, 0.683765, 0.501686],
        [0.24607, 0.73891, 0.452024],
        [0.369214, 0.788888, 0.382914],
        [0.515992, 0.831158, 0.294279],
        [0.678489, 0.863742, 0.189503],
        [0.845561, 0.887322, 0.099702],
        [0.993248, 0.906157, 0.143936],
    ];
    if t.is_nan() {
        return WHITE;
    }
    let position = t.clamp(0.0, 1.0) * 16.0;
    let k = (position.floor() as usize).min(15);
    let f = position - k as f64;
    let (a, b) = (ANCHORS[k], ANCHORS[k + 1]);
    [0, 1, 2].map(|c| ((a[c] + f * (b[c] - a[c])) * 255.0) as u8)
}
