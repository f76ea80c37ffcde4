//! Figures and videos: what `visualize` writes for people to look at.
//!
//! Figures follow openretina 1.1.1's (weights of a space-time separable convolution, a readout
//! neuron, the composition of an MEI) with the same figure sizes in inches, drawn at a chosen dpi.
//! Numbers and pixels are kept apart: [`composition`], [`ConvWeights::centre_positive`] and the
//! `*Limits` helpers compute what a figure shows; the `draw_*` functions only lay it out and draw it.
//! Everything here is thread-safe and free of global state, so callers can draw many figures in
//! parallel; [`bench::bench_figures`] times them.
//!
//! Inside: `canvas` holds a figure as shapes in points and turns it into SVG, or into pixels band by
//! band (tiny-skia, embedded DejaVu Sans) for `jpeg` (an encoder specialised for mostly flat figures)
//! or PNG; `axes` draws matplotlib-like panels; one module per figure.

mod axes;
pub mod bench;
mod canvas;
pub mod composition;
mod conv_weights;
mod jpeg;
mod mei;
mod readout;
pub mod video;

use std::str::FromStr;

use crate::error::{Error, Result};

pub use composition::{mei_composition, ChannelComposition};
pub use conv_weights::{draw_conv_weights, ConvWeightLimits, ConvWeights};
pub use mei::{draw_mei, draw_mei_annotated, draw_mei_with, MeiAnnotations, MeiFigureInput};
pub use readout::{draw_readout_neuron, ReadoutLimits, ReadoutNeuron};

/// File format of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// openretina's default.
    #[default]
    Jpg,
    Png,
    Svg,
}

impl ImageFormat {
    /// File name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Svg => "svg",
        }
    }
}

impl FromStr for ImageFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().trim_start_matches('.') {
            "jpg" | "jpeg" => Ok(ImageFormat::Jpg),
            "png" => Ok(ImageFormat::Png),
            "svg" => Ok(ImageFormat::Svg),
            other => Err(Error::new(format!("unknown image format '{other}'; use jpg, png or svg"))),
        }
    }
}

/// How figures are written: format and resolution. A figure of `w x h` inches becomes
/// `round(w * dpi) x round(h * dpi)` pixels (SVG: the same size, as a scalable drawing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FigureStyle {
    pub format: ImageFormat,
    /// Pixels per inch; openretina writes 300.
    pub dpi: u32,
}

impl Default for FigureStyle {
    fn default() -> Self {
        FigureStyle { format: ImageFormat::Jpg, dpi: 100 }
    }
}
