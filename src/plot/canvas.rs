//! A figure as a flat list of shapes in points (1/72 inch, y down), and the two ways of turning it
//! into a file: rasterised (tiny-skia, then JPEG or PNG) or written as SVG. Text uses the embedded
//! DejaVu Sans (matplotlib's default font), so figures look the same on machines without fonts.

use std::fmt::Write as _;
use std::path::Path;

use ab_glyph::{Font, FontRef, OutlineCurve};
use tiny_skia::{FillRule, LineCap, LineJoin, Paint, PathBuilder, Pixmap, Stroke, Transform};

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
            format => self.rasterise(style.dpi)?.encode(format),
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

    /// Draw the figure into pixels at `dpi`.
    pub fn rasterise(&self, dpi: u32) -> Result<Raster, String> {
        let (w, h) = self.pixel_size(dpi)?;
        let scale = dpi as f32 / 72.0;
        let mut pixmap = Pixmap::new(w, h).ok_or_else(|| format!("cannot allocate a {w} x {h} image"))?;
        pixmap.fill(tiny_skia::Color::WHITE);
        let to_px = Transform::from_scale(scale, scale);
        for shape in &self.shapes {
            match shape {
                Shape::Rect { x0, y0, x1, y1, fill } => {
                    // Snapped to the pixel grid: thin frames stay crisp and cells tile exactly.
                    let snap = |v: f32| (v * scale).round();
                    let (x0, y0, x1, y1) = (snap(*x0), snap(*y0), snap(*x1), snap(*y1));
                    // Never let a thin rectangle vanish.
                    let (x1, y1) = (x1.max(x0 + 1.0), y1.max(y0 + 1.0));
                    if let Some(r) = tiny_skia::Rect::from_ltrb(x0, y0, x1, y1) {
                        pixmap.fill_rect(r, &paint(*fill, false), Transform::identity(), None);
                    }
                }
                Shape::Line { points, width, colour } => {
                    let mut pb = PathBuilder::new();
                    pb.move_to(points[0].0, points[0].1);
                    points[1..].iter().for_each(|&(x, y)| pb.line_to(x, y));
                    if let Some(path) = pb.finish() {
                        let stroke = Stroke {
                            width: *width,
                            line_cap: LineCap::Butt,
                            line_join: LineJoin::Round,
                            ..Default::default()
                        };
                        pixmap.stroke_path(&path, &paint(*colour, true), &stroke, to_px, None);
                    }
                }
                Shape::Text { x, y, size, align, text, colour } => {
                    let left = x - align_offset(*align, self.text_width(text, *size));
                    if let Some(path) = self.glyph_path(text, left, *y, *size) {
                        pixmap.fill_path(&path, &paint(*colour, true), FillRule::Winding, to_px, None);
                    }
                }
            }
        }
        // The background is opaque white, so premultiplied RGBA equals plain RGBA: drop alpha.
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        for (out, rgba) in rgb.chunks_exact_mut(3).zip(pixmap.data().chunks_exact(4)) {
            out.copy_from_slice(&rgba[..3]);
        }
        Ok(Raster { width: w, height: h, dpi, rgb })
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

/// A rasterised figure: RGB pixels, row by row.
pub(crate) struct Raster {
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
    pub rgb: Vec<u8>,
}

impl Raster {
    /// The pixels as a JPEG or PNG file.
    pub fn encode(&self, format: ImageFormat) -> Result<Vec<u8>, String> {
        let (rgb, w, h, dpi) = (&self.rgb, self.width, self.height, self.dpi);
        match format {
            ImageFormat::Jpg => encode_jpeg(rgb, w, h, dpi),
            ImageFormat::Png => encode_png(rgb, w, h, dpi),
            ImageFormat::Svg => Err("an SVG is drawn from shapes, not pixels".to_string()),
        }
    }
}

fn encode_png(rgb: &[u8], w: u32, h: u32, dpi: u32) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, w, h);
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
    let mut writer = encoder.write_header().map_err(|e| format!("cannot encode PNG: {e}"))?;
    writer.write_image_data(rgb).map_err(|e| format!("cannot encode PNG: {e}"))?;
    writer.finish().map_err(|e| format!("cannot encode PNG: {e}"))?;
    Ok(bytes)
}

fn encode_jpeg(rgb: &[u8], w: u32, h: u32, dpi: u32) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, JPEG_QUALITY);
    let dpi = dpi.min(u16::MAX as u32) as u16;
    encoder.set_density(jpeg_encoder::Density::Inch { x: dpi, y: dpi });
    // 4:2:0 chroma, as PIL writes for matplotlib: half the work, and figures have few colour edges.
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    encoder
        .encode(rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| format!("cannot encode JPEG: {e}"))?;
    Ok(bytes)
}
