//! A figure as a flat list of shapes in points (1/72 inch, y down), and the two ways of turning it
//! into a file: rasterised (tiny-skia, then JPEG or PNG) or written as SVG. Text uses the embedded
//! DejaVu Sans (matplotlib's default font), so figures look the same on machines without fonts.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use ab_glyph::{Font, FontRef, OutlineCurve};
use tiny_skia::{FillRule, LineCap, Paint, PathBuilder, Pixmap, Stroke, Transform};

use super::jpeg::{self, Bands, BAND_ROWS};
use super::{FigureStyle, ImageFormat};
use crate::error::{Error, Result};
use crate::output::write_atomic;

const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SVG_FONT_FAMILY: &str = "DejaVu Sans, Bitstream Vera Sans, Verdana, sans-serif";
/// JPEG quality: high enough that thin lines and text stay clean.
const JPEG_QUALITY: u8 = 90;
/// Largest side in pixels: JPEG's limit, and a guard against absurd dpi values.
const MAX_SIDE_PX: f64 = 65_000.0;

pub(crate) type Colour = [u8; 3];

pub(crate) const BLACK: Colour = [0, 0, 0];
pub(crate) const WHITE: Colour = [255, 255, 255];

/// Horizontal text alignment relative to the anchor point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Align {
    Left,
    Centre,
    Right,
}

#[derive(Debug, Clone)]
pub(crate) enum Shape {
    /// Filled axis-aligned rectangle between two corners, snapped to whole pixels (heat-map cells,
    /// ticks, frames). Neighbours that share an edge value meet without gaps or overlaps.
    Rect { x0: f32, y0: f32, x1: f32, y1: f32, fill: Colour },
    /// Anti-aliased open polyline.
    Line { points: Vec<(f32, f32)>, width: f32, colour: Colour },
    /// One line of text; `y` is the baseline.
    Text { x: f32, y: f32, size: f32, align: Align, text: String, colour: Colour },
}

/// A figure being drawn: size in points and the shapes in drawing order.
pub(crate) struct Canvas {
    pub width: f32,
    pub height: f32,
    shapes: Vec<Shape>,
    font: FontRef<'static>,
}

impl Canvas {
    /// An empty white figure of `width_in x height_in` inches.
    pub fn new(width_in: f32, height_in: f32) -> Result<Canvas> {
        let font = FontRef::try_from_slice(FONT_BYTES)
            .map_err(|e| Error::new(format!("the embedded font assets/fonts/DejaVuSans.ttf is unreadable: {e}")))?;
        Ok(Canvas { width: width_in * 72.0, height: height_in * 72.0, shapes: Vec::new(), font })
    }

    pub fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, fill: Colour) {
        self.rect_between(x, y, x + w, y + h, fill);
    }

    /// A filled rectangle between corners `(x0, y0)` and `(x1, y1)`, in any order.
    pub fn rect_between(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, fill: Colour) {
        let (x0, x1, y0, y1) = (x0.min(x1), x0.max(x1), y0.min(y1), y0.max(y1));
        self.shapes.push(Shape::Rect { x0, y0, x1, y1, fill });
    }

    /// A rectangle's outline of `width` points, centred on its edges.
    pub fn outline(&mut self, x: f32, y: f32, w: f32, h: f32, width: f32, colour: Colour) {
        let half = width / 2.0;
        self.rect(x - half, y - half, w + width, width, colour);
        self.rect(x - half, y + h - half, w + width, width, colour);
        self.rect(x - half, y - half, width, h + width, colour);
        self.rect(x + w - half, y - half, width, h + width, colour);
    }

    pub fn line(&mut self, points: Vec<(f32, f32)>, width: f32, colour: Colour) {
        if points.len() >= 2 {
            self.shapes.push(Shape::Line { points, width, colour });
        }
    }

    /// Text with its baseline at `y`.
    pub fn text(&mut self, x: f32, y: f32, size: f32, align: Align, text: impl Into<String>) {
        self.shapes.push(Shape::Text { x, y, size, align, text: text.into(), colour: BLACK });
    }

    /// Width in points of `text` at `size` points.
    pub fn text_width(&self, text: &str, size: f32) -> f32 {
        let scale = size / self.font.units_per_em().unwrap_or(2048.0);
        let mut width = 0.0;
        let mut previous = None;
        for c in text.chars() {
            let id = self.font.glyph_id(c);
            if let Some(p) = previous {
                width += self.font.kern_unscaled(p, id);
            }
            width += self.font.h_advance_unscaled(id);
            previous = Some(id);
        }
        width * scale
    }

    /// Height above the baseline of digits and capitals, as a fraction of the font size.
    pub const CAP_HEIGHT: f32 = 0.73;

    /// Write the figure to `path` in `style`'s format and resolution.
    pub fn save(&self, style: &FigureStyle, path: &Path) -> Result<()> {
        let bytes = self.encode(style).map_err(|e| Error::file(path, e))?;
        write_atomic(path, &bytes)
    }

    /// The figure as the bytes of a file in `style`'s format.
    pub fn encode(&self, style: &FigureStyle) -> Result<Vec<u8>, String> {
        match style.format {
            ImageFormat::Svg => {
                let (w, h) = self.pixel_size(style.dpi)?;
                Ok(self.to_svg(w, h).into_bytes())
            }
            format => self.rasteriser(style.dpi)?.encode(format),
        }
    }

    /// Size in pixels at `dpi`, refusing sizes no image format can hold.
    fn pixel_size(&self, dpi: u32) -> Result<(u32, u32), String> {
        let scale = dpi as f64 / 72.0;
        let (w, h) = ((self.width as f64 * scale).round(), (self.height as f64 * scale).round());
        if dpi == 0 || w > MAX_SIDE_PX || h > MAX_SIDE_PX {
            return Err(format!("cannot draw at {dpi} dpi: the figure would be {w} x {h} pixels"));
        }
        Ok((w as u32, h as u32))
    }

    /// The shapes in pixels at `dpi`, ready to be drawn band by band.
    pub fn rasteriser(&self, dpi: u32) -> Result<Rasteriser, String> {
        let (width, height) = self.pixel_size(dpi)?;
        let scale = dpi as f32 / 72.0;
        let mut items = Vec::with_capacity(self.shapes.len());
        for shape in &self.shapes {
            match shape {
                Shape::Rect { x0, y0, x1, y1, fill } => {
                    // Snapped to the pixel grid: thin frames stay crisp and cells tile exactly.
                    let snap = |v: f32| (v * scale).round();
                    let (x0, y0, x1, y1) = (snap(*x0), snap(*y0), snap(*x1), snap(*y1));
                    // Never let a thin rectangle vanish.
                    let (x1, y1) = (x1.max(x0 + 1.0), y1.max(y0 + 1.0));
                    items.push(Item::Rect { x0, y0, x1, y1, colour: *fill });
                }
                Shape::Line { points, width, colour } => {
                    // One stroke per segment, round caps joining them: the rasteriser's cost grows
                    // with a path's bounding box, and a whole trace's box is most of a panel.
                    let stroke = Stroke { width: width * scale, line_cap: LineCap::Round, ..Default::default() };
                    for pair in points.windows(2) {
                        let mut pb = PathBuilder::new();
                        pb.move_to(pair[0].0 * scale, pair[0].1 * scale);
                        pb.line_to(pair[1].0 * scale, pair[1].1 * scale);
                        if let Some(outline) = pb.finish().and_then(|p| p.stroke(&stroke, 1.0)) {
                            items.push(Item::Path { path: outline, colour: *colour });
                        }
                    }
                }
                Shape::Text { x, y, size, align, text, colour } => {
                    let left = x - align_offset(*align, self.text_width(text, *size));
                    let glyphs = self.glyph_path(text, left, *y, *size);
                    if let Some(path) = glyphs.and_then(|p| p.transform(Transform::from_scale(scale, scale))) {
                        items.push(Item::Path { path, colour: *colour });
                    }
                }
            }
        }
        let band =
            Pixmap::new(width, BAND_ROWS).ok_or_else(|| format!("cannot allocate a {width} pixel wide image"))?;
        Ok(Rasteriser { width, height, dpi, items, band })
    }

    /// Outlines of `text` set from `(x, baseline)` at `size` points, as one path in points.
    fn glyph_path(&self, text: &str, x: f32, baseline: f32, size: f32) -> Option<tiny_skia::Path> {
        let scale = size / self.font.units_per_em().unwrap_or(2048.0);
        let mut pb = PathBuilder::new();
        let mut pen = x;
        let mut previous = None;
        for c in text.chars() {
            let id = self.font.glyph_id(c);
            if let Some(p) = previous {
                pen += self.font.kern_unscaled(p, id) * scale;
            }
            previous = Some(id);
            if let Some(outline) = self.font.outline(id) {
                let at = |p: ab_glyph::Point| (pen + p.x * scale, baseline - p.y * scale);
                let mut last_end: Option<(f32, f32)> = None;
                for curve in &outline.curves {
                    let (start, end) = match curve {
                        OutlineCurve::Line(a, b) | OutlineCurve::Quad(a, _, b) | OutlineCurve::Cubic(a, _, _, b) => {
                            (at(*a), at(*b))
                        }
                    };
                    // A curve that does not continue the previous one starts a new contour.
                    if last_end != Some(start) {
                        if last_end.is_some() {
                            pb.close();
                        }
                        pb.move_to(start.0, start.1);
                    }
                    match curve {
                        OutlineCurve::Line(_, _) => pb.line_to(end.0, end.1),
                        OutlineCurve::Quad(_, c, _) => {
                            let c = at(*c);
                            pb.quad_to(c.0, c.1, end.0, end.1)
                        }
                        OutlineCurve::Cubic(_, c1, c2, _) => {
                            let (c1, c2) = (at(*c1), at(*c2));
                            pb.cubic_to(c1.0, c1.1, c2.0, c2.1, end.0, end.1)
                        }
                    }
                    last_end = Some(end);
                }
                if last_end.is_some() {
                    pb.close();
                }
            }
            pen += self.font.h_advance_unscaled(id) * scale;
        }
        pb.finish()
    }

    /// The figure as an SVG document of `w x h` pixels whose user units are points.
    fn to_svg(&self, w: u32, h: u32) -> String {
        let mut s = String::with_capacity(64 * self.shapes.len() + 512);
        let _ = write!(
            s,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
             width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {} {}\">\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n",
            self.width, self.height
        );
        for shape in &self.shapes {
            let _ = match shape {
                Shape::Rect { x0, y0, x1, y1, fill } => writeln!(
                    s,
                    "<rect x=\"{x0:.2}\" y=\"{y0:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"{}\" shape-rendering=\"crispEdges\"/>",
                    x1 - x0,
                    y1 - y0,
                    hex(*fill)
                ),
                Shape::Line { points, width, colour } => {
                    let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x:.2},{y:.2}")).collect();
                    writeln!(
                        s,
                        "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{width}\" stroke-linejoin=\"round\"/>",
                        pts.join(" "),
                        hex(*colour)
                    )
                }
                Shape::Text { x, y, size, align, text, colour } => {
                    let anchor = match align {
                        Align::Left => "start",
                        Align::Centre => "middle",
                        Align::Right => "end",
                    };
                    writeln!(
                        s,
                        "<text x=\"{x:.2}\" y=\"{y:.2}\" font-family=\"{SVG_FONT_FAMILY}\" font-size=\"{size}\" \
                         text-anchor=\"{anchor}\" fill=\"{}\">{}</text>",
                        hex(*colour),
                        xml_escape(text)
                    )
                }
            };
        }
        s.push_str("</svg>\n");
        s
    }
}

fn align_offset(align: Align, width: f32) -> f32 {
    match align {
        Align::Left => 0.0,
        Align::Centre => width / 2.0,
        Align::Right => width,
    }
}

fn paint(colour: Colour, anti_alias: bool) -> Paint<'static> {
    let mut paint = Paint::default();
    paint.set_color_rgba8(colour[0], colour[1], colour[2], 255);
    paint.anti_alias = anti_alias;
    paint
}

fn hex(c: Colour) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A shape in pixels.
enum Item {
    Rect {
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        colour: Colour,
    },
    /// A filled outline (glyphs, stroked line segments), anti-aliased.
    Path {
        path: tiny_skia::Path,
        colour: Colour,
    },
}

/// A figure in pixels, drawn one band of rows at a time so that a 300 dpi figure never needs a
/// full-size pixel buffer: each band is drawn into a small reused pixmap and handed to the encoder.
pub(crate) struct Rasteriser {
    width: u32,
    height: u32,
    dpi: u32,
    items: Vec<Item>,
    band: Pixmap,
}

impl Bands for Rasteriser {
    fn band(&mut self, top: u32) -> &[u8] {
        let (top_f, bottom_f) = (top as f32, (top + BAND_ROWS) as f32);
        self.band.fill(tiny_skia::Color::WHITE);
        let shift = Transform::from_translate(0.0, -top_f);
        for item in &self.items {
            match item {
                Item::Rect { x0, y0, x1, y1, colour } => {
                    if *y1 <= top_f || *y0 >= bottom_f {
                        continue;
                    }
                    if let Some(r) = tiny_skia::Rect::from_ltrb(*x0, y0 - top_f, *x1, y1 - top_f) {
                        self.band.fill_rect(r, &paint(*colour, false), Transform::identity(), None);
                    }
                }
                Item::Path { path, colour } => {
                    let bounds = path.bounds();
                    if bounds.bottom() < top_f || bounds.top() > bottom_f {
                        continue;
                    }
                    self.band.fill_path(path, &paint(*colour, true), FillRule::Winding, shift, None);
                }
            }
        }
        // Rows past the bottom repeat the last row, as encoders pad.
        let row_bytes = self.width as usize * 4;
        let rows = self.height.saturating_sub(top).clamp(1, BAND_ROWS) as usize;
        let data = self.band.data_mut();
        for r in rows..BAND_ROWS as usize {
            data.copy_within((rows - 1) * row_bytes..rows * row_bytes, r * row_bytes);
        }
        // The background is opaque white, so premultiplied RGBA is plain RGBA.
        self.band.data()
    }
}

impl Rasteriser {
    /// The pixels as a JPEG or PNG file.
    pub fn encode(mut self, format: ImageFormat) -> Result<Vec<u8>, String> {
        let (width, height, dpi) = (self.width, self.height, self.dpi);
        match format {
            ImageFormat::Jpg => jpeg::encode(width, height, dpi, JPEG_QUALITY, &mut self),
            ImageFormat::Png => encode_png(width, height, dpi, &mut self),
            ImageFormat::Svg => Err("an SVG is drawn from shapes, not pixels".to_string()),
        }
    }
}

/// PNG of a `width x height` image drawn by `image`.
fn encode_png(width: u32, height: u32, dpi: u32, image: &mut impl Bands) -> Result<Vec<u8>, String> {
    let failed = |e: &dyn std::fmt::Display| format!("cannot encode PNG: {e}");
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Figures are mostly flat colour: fast compression loses little size and saves most time.
    encoder.set_compression(png::Compression::Fast);
    let pixels_per_metre = (dpi as f64 / 0.0254).round() as u32;
    encoder.set_pixel_dims(Some(png::PixelDimensions {
        xppu: pixels_per_metre,
        yppu: pixels_per_metre,
        unit: png::Unit::Meter,
    }));
    let mut writer = encoder.write_header().map_err(|e| failed(&e))?;
    {
        let mut stream = writer.stream_writer().map_err(|e| failed(&e))?;
        let row_bytes = width as usize * 3;
        let mut band = vec![0u8; row_bytes * BAND_ROWS as usize];
        for top in (0..height).step_by(BAND_ROWS as usize) {
            for (rgb, rgba) in band.chunks_exact_mut(3).zip(image.band(top).chunks_exact(4)) {
                rgb.copy_from_slice(&rgba[..3]);
            }
            let rows = (height - top).min(BAND_ROWS) as usize;
            stream.write_all(&band[..rows * row_bytes]).map_err(|e| failed(&e))?;
        }
        stream.finish().map_err(|e| failed(&e))?;
    }
    writer.finish().map_err(|e| failed(&e))?;
    Ok(bytes)
}
