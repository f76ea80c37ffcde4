//! The core: a sequence of blocks, each a sequence of layer kinds (`dyn Layer`). A block is one of
//! openretina's core children (`layer0`, `projection`, `gru`, ...) whose output its hooks see as
//! `core_features_<name>`; unnamed blocks are input preprocessing (colour squashing, downsampling).
//! Works on one stimulus `(channels, time, height, width)` at a time; batches are parallel maps over
//! stimuli (every layer is per-sample in eval mode).

use std::sync::Arc;

use super::layer::{BackwardValues, Layer, LayerState, Needs, Reach, Shape};
use super::Float;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Block<F> {
    /// openretina's name of the core child (`layer0`, `projection`, ...); `None` for preprocessing.
    pub name: Option<String>,
    pub layers: Vec<Arc<dyn Layer<F>>>,
}

impl<F: Float> Block<F> {
    /// The hook name, `core_features_<name>`.
    pub fn hook(&self) -> Option<String> {
        self.name.as_ref().map(|n| format!("core_features_{n}"))
    }
}

#[derive(Debug, Clone)]
pub struct Core<F> {
    pub blocks: Vec<Block<F>>,
    /// Blocks whose outputs form the core output (concatenated along channels).
    pub output_blocks: Vec<usize>,
    pub cut_first_n_frames: usize,
    /// The blocks `openretina visualize` optimises channels of (`layer<i>`, in order): "layer `i`"
    /// of the MEI code and `ForwardOutput::layers` is block `layer_blocks[i]`.
    pub layer_blocks: Vec<usize>,
}

/// What a forward pass keeps for the backward pass and for hooks.
#[derive(Debug)]
pub struct CoreTape<F> {
    /// `values[j]` is the input of layer `j` (in the order of all blocks' layers), `values[j + 1]` its
    /// output; kept where a backward pass reads it or a block ends there.
    values: Vec<Option<Vec<F>>>,
    shapes: Vec<Shape>,
    states: Vec<LayerState>,
    /// Index into `values` of each block's output, for the blocks that ran.
    block_ends: Vec<usize>,
}

impl<F> CoreTape<F> {
    /// The output of block `b` and its shape.
    pub fn block_output(&self, b: usize) -> (&[F], Shape) {
        let j = self.block_ends[b];
        (self.values[j].as_deref().expect("block outputs are kept"), self.shapes[j])
    }
}

impl<F: Float> Core<F> {
    /// A core whose readout sees `output_blocks` (default: the last block).
    pub fn new(blocks: Vec<Block<F>>, output_blocks: Option<Vec<usize>>, cut_first_n_frames: usize) -> Self {
        let layer_blocks = blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.name.as_deref().is_some_and(is_layer_name))
            .map(|(i, _)| i)
            .collect();
        let output_blocks = output_blocks.unwrap_or_else(|| vec![blocks.len() - 1]);
        Core { blocks, output_blocks, cut_first_n_frames, layer_blocks }
    }

    /// The layer of `layer<i>` whose weights the figures draw (its convolution), if it has one.
    pub fn layer_kernel(&self, layer: usize) -> Option<&dyn Layer<F>> {
        self.blocks[self.layer_blocks[layer]].layers.iter().find(|l| l.kernel_channels().is_some()).map(|l| l.as_ref())
    }

    /// How many frames before an output frame of the first `n_blocks` blocks it depends on: the
    /// layers' temporal kernels minus one, summed; None when their windows do not bound it (temporal
    /// padding, or a layer such as the GRU that reads every earlier frame).
    pub fn temporal_reach(&self, n_blocks: usize) -> Option<usize> {
        self.blocks[..n_blocks].iter().flat_map(|b| &b.layers).try_fold(0, |frames, layer| match layer.reach() {
            Reach::Window { kernel, padding } if padding[0] == (0, 0) => Some(frames + kernel[0] - 1),
            Reach::SameFrame => Some(frames),
            _ => None,
        })
    }

    /// Floating-point operations of the forward pass through the first `n_blocks` blocks for one
    /// stimulus of `shape` (the backward pass costs about the same).
    pub fn flops(&self, shape: Shape, n_blocks: usize) -> f64 {
        let mut shape = shape;
        let mut flops = 0.0;
        for block in &self.blocks[..n_blocks] {
            for layer in &block.layers {
                flops += layer.flops(shape);
                let Ok(next) = layer.output_shape(shape) else { return flops };
                shape = next;
            }
        }
        flops
    }

    /// Number of `layer<i>` blocks.
    pub fn n_layers(&self) -> usize {
        self.layer_blocks.len()
    }

    /// Output shape of every block for one stimulus of `input` shape, or an error naming the block.
    pub fn block_output_shapes(&self, input: Shape) -> Result<Vec<Shape>> {
        let mut shape = input;
        let mut shapes = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            for layer in &block.layers {
                shape = layer.output_shape(shape).map_err(|e| match block.hook() {
                    Some(hook) => Error::new(format!("{hook}: {e}")),
                    None => e,
                })?;
            }
            shapes.push(shape);
        }
        Ok(shapes)
    }

    /// Output shape of each `layer<i>` block.
    pub fn layer_output_shapes(&self, input: Shape) -> Result<Vec<Shape>> {
        let shapes = self.block_output_shapes(input)?;
        Ok(self.layer_blocks.iter().map(|&b| shapes[b]).collect())
    }

    /// Shape of the core output the readouts see.
    pub fn output_shape(&self, input: Shape) -> Result<Shape> {
        let shapes = self.block_output_shapes(input)?;
        let first = shapes[self.output_blocks[0]];
        let mut channels = 0;
        for &b in &self.output_blocks {
            if shapes[b][1..] != first[1..] {
                bail!("the core's output blocks {:?} have different output sizes and cannot be concatenated", self.output_blocks);
            }
            channels += shapes[b][0];
        }
        if first[1] <= self.cut_first_n_frames {
            bail!(
                "cut_first_n_frames {} leaves no core output for {} time steps; use a longer stimulus",
                self.cut_first_n_frames,
                input[1]
            );
        }
        Ok([channels, first[1] - self.cut_first_n_frames, first[2], first[3]])
    }

    /// Every layer in order, with its block.
    fn layers(&self) -> impl Iterator<Item = (usize, &Arc<dyn Layer<F>>)> {
        self.blocks.iter().enumerate().flat_map(|(b, block)| block.layers.iter().map(move |l| (b, l)))
    }

    /// Run every block on one stimulus of `shape` `(channels, t, h, w)`.
    pub fn forward(&self, stimulus: &[F], shape: Shape, session: Option<&str>) -> CoreTape<F> {
        self.forward_blocks(stimulus, shape, session, self.blocks.len())
    }

    /// Run the blocks up to and including `layer<i>` (enough for an objective on that layer).
    pub fn forward_to_layer(&self, stimulus: &[F], shape: Shape, session: Option<&str>, layer: usize) -> CoreTape<F> {
        self.forward_blocks(stimulus, shape, session, self.layer_blocks[layer] + 1)
    }

    fn forward_blocks(&self, stimulus: &[F], shape: Shape, session: Option<&str>, n_blocks: usize) -> CoreTape<F> {
        let layers: Vec<(usize, &Arc<dyn Layer<F>>)> = self.layers().filter(|(b, _)| *b < n_blocks).collect();
        let n = layers.len();
        // Which values to keep: read by a backward pass, or a block's output.
        let mut keep = vec![false; n + 1];
        let mut block_ends = vec![0; n_blocks];
        for (j, (b, layer)) in layers.iter().enumerate() {
            match layer.needs() {
                Needs::Input => keep[j] = true,
                Needs::Output => keep[j + 1] = true,
                Needs::Nothing => {}
            }
            block_ends[*b] = j + 1;
        }
        // A block without layers passes its input on.
        for b in 1..n_blocks {
            if self.blocks[b].layers.is_empty() {
                block_ends[b] = block_ends[b - 1];
            }
        }
        for &j in &block_ends {
            keep[j] = true;
        }
        let mut values: Vec<Option<Vec<F>>> = Vec::with_capacity(n + 1);
        let mut shapes = Vec::with_capacity(n + 1);
        let mut states = Vec::with_capacity(n);
        values.push(keep[0].then(|| stimulus.to_vec()));
        shapes.push(shape);
        let mut current: Option<Vec<F>> = None;
        for (j, (_, layer)) in layers.iter().enumerate() {
            let shape = shapes[j];
            let (out, state) = match current.take() {
                None => layer.forward(stimulus, shape, session),
                Some(x) if keep[j] => {
                    let r = layer.forward(&x, shape, session);
                    values[j] = Some(x);
                    r
                }
                Some(x) => layer.forward_owned(x, shape, session),
            };
            shapes.push(layer.output_shape(shape).expect("shapes checked before the forward pass"));
            states.push(state);
            values.push(None);
            current = Some(out);
        }
        if let Some(x) = current {
            values[n] = Some(x);
        } else if keep[0] {
            // No layers ran: the stimulus is the output (kept above).
        }
        CoreTape { values, shapes, states, block_ends }
    }

    /// The core output (what the readout sees) from a tape: the output blocks concatenated along
    /// channels, first `cut_first_n_frames` frames dropped.
    pub fn output(&self, tape: &CoreTape<F>) -> (Vec<F>, Shape) {
        let (_, [_, t, h, w]) = tape.block_output(self.output_blocks[0]);
        let cut = self.cut_first_n_frames;
        let frame = h * w;
        let mut out = Vec::new();
        let mut channels = 0;
        for &b in &self.output_blocks {
            let (values, [c, ..]) = tape.block_output(b);
            for ch in 0..c {
                out.extend_from_slice(&values[(ch * t + cut) * frame..(ch + 1) * t * frame]);
            }
            channels += c;
        }
        (out, [channels, t - cut, h, w])
    }

    /// Gradient with respect to the stimulus. `layer_grads[i]`, when given, is the gradient of the
    /// objective with respect to the output of `layer<i>`; `output_grad` with respect to `output()`.
    pub fn backward(
        &self,
        tape: &CoreTape<F>,
        layer_grads: Vec<Option<Vec<F>>>,
        output_grad: Option<&[F]>,
        session: Option<&str>,
    ) -> Vec<F> {
        let mut block_grads: Vec<Option<Vec<F>>> = vec![None; self.blocks.len()];
        for (i, g) in layer_grads.into_iter().enumerate() {
            block_grads[self.layer_blocks[i]] = g;
        }
        if let Some(g) = output_grad {
            self.add_output_grad(tape, g, &mut block_grads);
        }
        let top = block_grads.iter().rposition(Option::is_some).expect("some gradient");
        let layers: Vec<(usize, &Arc<dyn Layer<F>>)> = self.layers().filter(|(b, _)| *b <= top).collect();
        // Gradients given at block ends, by value index.
        let mut given: Vec<(usize, Vec<F>)> = Vec::new();
        for (b, g) in block_grads.into_iter().enumerate() {
            if let Some(g) = g {
                given.push((tape.block_ends[b], g));
            }
        }
        let mut grad: Option<Vec<F>> = None;
        for j in (0..=layers.len()).rev() {
            while let Some(pos) = given.iter().position(|(end, _)| *end == j) {
                let (_, g) = given.swap_remove(pos);
                grad = Some(match grad {
                    None => g,
                    Some(mut acc) => {
                        acc.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                        acc
                    }
                });
            }
            if j == 0 {
                break;
            }
            let Some(g) = grad.take() else { continue };
            let (_, layer) = layers[j - 1];
            let values = BackwardValues {
                input: tape.values[j - 1].as_deref(),
                input_shape: tape.shapes[j - 1],
                output: tape.values[j].as_deref(),
                output_shape: tape.shapes[j],
                state: tape.states[j - 1].as_deref(),
            };
            grad = Some(layer.backward(values, g, session));
        }
        grad.expect("some gradient")
    }

    fn add_output_grad(&self, tape: &CoreTape<F>, g: &[F], block_grads: &mut [Option<Vec<F>>]) {
        let cut = self.cut_first_n_frames;
        let mut offset = 0;
        for &b in &self.output_blocks {
            let (_, [c, t, h, w]) = tape.block_output(b);
            let frame = h * w;
            let dst = block_grads[b].get_or_insert_with(|| vec![F::zero(); c * t * frame]);
            for ch in 0..c {
                let n = (t - cut) * frame;
                let src = &g[offset..offset + n];
                for (d, &s) in dst[(ch * t + cut) * frame..(ch + 1) * t * frame].iter_mut().zip(src) {
                    *d += s;
                }
                offset += n;
            }
        }
    }
}

/// openretina's visualize optimises the channels of hooks whose name contains `layer` and ends in a digit.
fn is_layer_name(name: &str) -> bool {
    name.contains("layer") && name.ends_with(|c: char| c.is_ascii_digit())
}
