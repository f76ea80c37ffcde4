//! Drawing one piece of work: an MEI's figure and video, or a weight figure.

use std::collections::BTreeMap;
use std::path::Path;

use super::plan::Item;
use super::{strip_batch, FRAME_RATE};
use crate::error::Result;
use crate::model::{Float, Model};
use crate::plot::video::{write_mei_video, VideoOptions};
use crate::plot::{self, ConvWeightLimits, ConvWeights, FigureStyle, MeiFigureInput, ReadoutLimits, ReadoutNeuron};
use crate::tensor::Tensor;

/// An MEI's figure at `path`; `compositions` from `plot::mei_composition` of its stimulus; `note`
/// goes into the response panel's title.
#[allow(clippy::too_many_arguments)]
pub fn draw_mei(
    stimulus: &Tensor<f32>,
    response: &[f32],
    highlighted_frames: (usize, usize),
    compositions: &[plot::ChannelComposition],
    note: Option<&str>,
    style: &FigureStyle,
    path: &Path,
) -> Result<()> {
    let input = MeiFigureInput {
        stimulus: strip_batch(stimulus),
        response: Some(response.to_vec()),
        window: (highlighted_frames.0, highlighted_frames.1 + 1),
        frame_rate: FRAME_RATE,
    };
    let annotations = plot::MeiAnnotations { traces: Vec::new(), note: note.map(String::from) };
    plot::draw_mei_annotated(&input, compositions, &annotations, style, path)
}

pub fn draw_video(stimulus: &Tensor<f32>, path: &Path) -> Result<()> {
    write_mei_video(&strip_batch(stimulus), path, &VideoOptions::default())
}

/// Axis limits shared by the weight figures of a layer or a session, computed once per run and only
/// for what the run draws.
pub struct WeightLimits {
    conv: BTreeMap<usize, ConvWeightLimits>,
    readout: BTreeMap<String, ReadoutLimits>,
}

impl WeightLimits {
    pub fn for_items<'a>(model: &Model<f32>, items: impl Iterator<Item = &'a Item>) -> WeightLimits {
        let mut limits = WeightLimits { conv: BTreeMap::new(), readout: BTreeMap::new() };
        for item in items {
            match item {
                Item::ConvWeights { layer, .. } if !limits.conv.contains_key(layer) => {
                    limits.conv.insert(*layer, layer_conv_limits(model, *layer));
                }
                Item::ReadoutWeights { session, .. } if !limits.readout.contains_key(session) => {
                    limits.readout.insert(session.clone(), session_readout_limits(model, session));
                }
                _ => {}
            }
        }
        limits
    }
}

/// A weight figure at `path`.
pub fn draw_weights(model: &Model<f32>, item: &Item, limits: &WeightLimits, style: &FigureStyle, path: &Path) -> Result<()> {
    match item {
        Item::ConvWeights { layer, input, output } => {
            let w = conv_weights(model, *layer, *input, *output).centre_positive()?;
            plot::draw_conv_weights(&w, &limits.conv[layer], style, path)
        }
        Item::ReadoutWeights { session, neuron } => {
            plot::draw_readout_neuron(&readout_neuron(model, session, *neuron), &limits.readout[session], style, path)
        }
        _ => unreachable!("MEIs are drawn by draw_mei"),
    }
}

/// The weights of one (in, out) channel pair of a core layer's convolution, temporal kernel at the
/// default log speed.
pub fn conv_weights<F: Float>(model: &Model<F>, layer: usize, input: usize, output: usize) -> ConvWeights {
    let k = model
        .core
        .layer_kernel(layer)
        .and_then(|l| l.kernel(input, output))
        .expect("weight figures are only made for layers with a convolution");
    ConvWeights {
        spatial: Tensor { shape: k.spatial_shape.to_vec(), data: k.spatial },
        temporal: k.temporal,
        sin: k.sin,
        cos: k.cos,
        in_channel: input,
        out_channel: output,
        spatial_note: k.spatial_note,
        temporal_note: k.temporal_note,
    }
}

/// Axis limits shared by every weight figure of a core layer.
pub fn layer_conv_limits<F: Float>(model: &Model<F>, layer: usize) -> ConvWeightLimits {
    let (inputs, outputs) = model.core.layer_kernel(layer).and_then(|l| l.kernel_channels()).unwrap_or((0, 0));
    let all: Vec<ConvWeights> =
        (0..inputs).flat_map(|i| (0..outputs).map(move |o| (i, o))).map(|(i, o)| conv_weights(model, layer, i, o)).collect();
    ConvWeightLimits::of_layer(&all)
}

/// One neuron's spatial weights `(h, w)` and feature weights.
pub fn readout_neuron<F: Float>(model: &Model<F>, session: &str, neuron: usize) -> ReadoutNeuron {
    let w = model.readouts[session].neuron_weights(neuron);
    ReadoutNeuron { mask: w.spatial, feature_weights: w.features, neuron, figure: w.figure }
}

/// Axis limits shared by every readout figure of a session.
pub fn session_readout_limits<F: Float>(model: &Model<F>, session: &str) -> ReadoutLimits {
    let all: Vec<ReadoutNeuron> = (0..model.readouts[session].neurons()).map(|n| readout_neuron(model, session, n)).collect();
    ReadoutLimits::of_session(&all)
}
