//! What every core layer kind provides: its forward pass on one stimulus, the gradient with respect
//! to its input, its output shape, how far its outputs reach into its input (for the MEI code's
//! cropped gradients), and, for convolutions, its weights for the figures.
//!
//! A layer kind is one file in `layers/` implementing [`Layer`], plus one line in `registry.rs`.
//! Nothing else in the crate matches on kinds: the core runs a sequence of `dyn Layer`s.

use std::any::Any;
use std::fmt::Debug;

use super::config::Padding;
use super::Float;
use crate::error::Result;

/// Shape `(channels, time, height, width)` of one stimulus or feature map.
pub type Shape = [usize; 4];

/// What a layer keeps from its forward pass for its backward pass, beyond its input and output.
pub type LayerState = Option<Box<dyn Any + Send + Sync>>;

/// Which forward values a layer's backward pass reads (the core keeps only those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Neither input nor output (linear layers: convolutions, affine maps).
    Nothing,
    Input,
    Output,
}

/// How an output value depends on the input, per axis (time, height, width).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reach {
    /// Stride 1: output index `o` reads input indices `[o - pad.0, o - pad.0 + kernel)` (zero outside).
    /// Elementwise and channel-mixing layers are `Window { kernel: [1, 1, 1], padding: 0 }`.
    Window { kernel: [usize; 3], padding: Padding },
    /// Output frame `t` reads input frame `t` only, but space is not a stride-1 window (pooling).
    SameFrame,
    /// Anything else (recurrence over time, strided time pooling): no part of the input can be left out.
    Everything,
}

impl Reach {
    pub const POINTWISE: Reach = Reach::Window { kernel: [1, 1, 1], padding: [(0, 0); 3] };
}

/// The weights of one (input channel, output channel) pair of a convolution, for figures.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelView {
    /// Spatial weight `(h, w)` (for non-separable kernels: the frame where the kernel is largest).
    pub spatial: Vec<f32>,
    pub spatial_shape: [usize; 2],
    /// Temporal kernel, one value per frame (for non-separable kernels: at the spatial peak).
    pub temporal: Vec<f32>,
    /// The sine and cosine weights the temporal kernel is built from, where it is (else empty).
    pub sin: Vec<f32>,
    pub cos: Vec<f32>,
    /// What the spatial and temporal panels show where it is not the whole kernel, e.g. `frame 7 of
    /// 21` (drawn after the panel titles).
    pub spatial_note: Option<String>,
    pub temporal_note: Option<String>,
}

/// What one layer allocates on one stimulus beyond its input and output, in values (not bytes), for
/// the memory check (`model::memory`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkValues {
    /// Kept from the forward pass for the backward pass (its `LayerState`).
    pub state: u64,
    /// Temporaries alive at once at the peak of the forward pass.
    pub forward: u64,
    /// Temporaries alive at once at the peak of the backward pass (beyond the output gradient it gets
    /// and the input gradient it returns).
    pub backward: u64,
}

impl WorkValues {
    /// Nothing beyond input and output (elementwise layers, pooling).
    pub const NONE: WorkValues = WorkValues { state: 0, forward: 0, backward: 0 };
}

/// The number of values of a buffer of these dimensions; None if it overflows.
pub fn count(dims: &[usize]) -> Option<u64> {
    dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))
}

/// The sum of buffer sizes; None if it overflows.
pub fn total(parts: &[u64]) -> Option<u64> {
    parts.iter().try_fold(0u64, |n, &p| n.checked_add(p))
}

/// One layer kind of the core, on one stimulus at a time (batches are parallel maps over stimuli).
pub trait Layer<F: Float>: Debug + Send + Sync {
    /// openretina's class (and option) this layer stands for, as `retina info` prints it.
    fn describe(&self) -> String;

    /// Output shape for an input shape, or an error saying what does not fit (e.g. a kernel larger
    /// than its padded input).
    fn output_shape(&self, input: Shape) -> Result<Shape>;

    /// The forward pass on one input of `shape`, with the session (for per-session weights).
    fn forward(&self, x: &[F], shape: Shape, session: Option<&str>) -> (Vec<F>, LayerState);

    /// The forward pass reusing the input buffer where the layer can (elementwise layers).
    fn forward_owned(&self, x: Vec<F>, shape: Shape, session: Option<&str>) -> (Vec<F>, LayerState) {
        self.forward(&x, shape, session)
    }

    /// Which forward values `backward` reads.
    fn needs(&self) -> Needs {
        Needs::Nothing
    }

    /// Gradient with respect to the input, given the gradient `grad` of the output. `input` and
    /// `output` are given when `needs()` asks for them.
    fn backward(&self, values: BackwardValues<'_, F>, grad: Vec<F>, session: Option<&str>) -> Vec<F>;

    fn reach(&self) -> Reach {
        Reach::Everything
    }

    /// What the layer allocates on one stimulus of `input` shape beyond its input and output (None:
    /// beyond counting, or the kernel does not fit). No default: every kind answers for its own
    /// buffers, since the commands refuse work beyond the memory budget from these numbers.
    fn work_values(&self, input: Shape) -> Option<WorkValues>;

    /// Floating-point operations of the forward pass for an input of `shape` (the backward pass
    /// costs about the same); 0 for layers whose cost is negligible next to the convolutions.
    fn flops(&self, _shape: Shape) -> f64 {
        0.0
    }

    /// `(input, output)` channels of a convolution whose weights the figures draw.
    fn kernel_channels(&self) -> Option<(usize, usize)> {
        None
    }

    /// The weights of one channel pair (when `kernel_channels` is given).
    fn kernel(&self, _input: usize, _output: usize) -> Option<KernelView> {
        None
    }
}

/// What the backward pass of one layer gets from the forward pass.
pub struct BackwardValues<'a, F> {
    pub input: Option<&'a [F]>,
    pub input_shape: Shape,
    pub output: Option<&'a [F]>,
    pub output_shape: Shape,
    pub state: Option<&'a (dyn Any + Send + Sync)>,
}
