//! openretina's `GRU_Module` around a `ConvGRUCell` (the `gru` child of `ConvGRUCore`): a
//! convolutional GRU run frame by frame over time, its state starting at zero. Per frame `t`, with
//! input `x` and previous state `h` (all gates 2-D convolutions with bias):
//!
//! ```text
//! u = sigmoid(Wu x + Uu h)    r = sigmoid(Wr x + Ur h)    n = tanh(Wo x + Uo (h * r))
//! h' = h (1 - u) + n u        (the output at t is h')
//! ```
//!
//! The three input convolutions read the same input, so they run once over all frames as one
//! convolution with `3 x rec_channels` outputs; the state convolutions (those of `u` and `r` stacked)
//! run per frame. The state is a few pixels (4x2 in openretina's config), where most taps of a 5x5
//! kernel fall outside it: in float32 with AVX2/FMA all of these run as the direct correlation of
//! `simd_frame.rs`, which visits only the taps inside the frame (all 119 MEIs of `zoo_gru_enabled`,
//! one thread: 5.6 -> 4.4 CPU seconds, before the vectorised ELU); otherwise as matrix products over column matrices (`Conv3d`
//! for the input gates). The input gradient is backpropagation through time: the state's gradient
//! flows from the last frame to the first, so nothing of the input can be cropped away.

use crate::error::Result;
use crate::model::layer::{BackwardValues, Layer, LayerState, Needs, Reach, Shape};
use crate::model::linalg::{gemm, Layout};
use crate::model::load::StateDict;
use crate::model::Float;

use super::conv3d::Conv3d;

/// The cell's sizes, as `gru_kwargs` give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GruSize {
    pub in_channels: usize,
    pub rec_channels: usize,
    pub input_kern: usize,
    pub rec_kern: usize,
    /// The input convolutions pad by `input_kern / 2` (else they shrink space by `input_kern - 1`).
    pub pad_input: bool,
}

#[derive(Debug, Clone)]
pub struct ConvGruCell<F> {
    pub size: GruSize,
    /// `update_gate_input`, `reset_gate_input`, `out_gate_input` stacked along the output channels.
    input_gates: Conv3d<F>,
    /// The same as frame convolutions, when padded (same size): in float32 the direct correlation
    /// over all frames at once (pixels of 8 frames together) of `simd_frame.rs`.
    input_frames: Option<FrameConv<F>>,
    /// `update_gate_hidden` and `reset_gate_hidden` stacked along the output channels.
    state_gates: FrameConv<F>,
    /// `out_gate_hidden`, applied to `h * r`.
    out_hidden: FrameConv<F>,
}

/// A 2-D convolution of one frame `(inputs, h, w)` that keeps its size (odd kernel, padding k / 2),
/// with bias. In float32 with AVX2/FMA the direct correlation of `simd_frame.rs` (forward, and the
/// input gradient as the correlation with the flipped, transposed kernels); otherwise every input
/// channel's patches in one column matrix, then one matrix product.
#[derive(Debug, Clone)]
struct FrameConv<F> {
    inputs: usize,
    outputs: usize,
    k: usize,
    /// `(outputs, inputs * k * k)`, as PyTorch stores it.
    weight: Vec<F>,
    bias: Vec<F>,
    /// For the direct correlation: `(k * k, inputs, outputs)`, and flipped in space with inputs and
    /// outputs swapped, `(k * k, outputs, inputs)`.
    taps_first: Vec<F>,
    flipped_taps_first: Vec<F>,
}

impl<F: Float> FrameConv<F> {
    fn new(inputs: usize, outputs: usize, k: usize, weight: Vec<F>, bias: Vec<F>) -> Self {
        let kk = k * k;
        let mut taps_first = vec![F::zero(); weight.len()];
        let mut flipped_taps_first = vec![F::zero(); weight.len()];
        for o in 0..outputs {
            for c in 0..inputs {
                for tap in 0..kk {
                    let v = weight[(o * inputs + c) * kk + tap];
                    taps_first[(tap * inputs + c) * outputs + o] = v;
                    flipped_taps_first[((kk - 1 - tap) * outputs + o) * inputs + c] = v;
                }
            }
        }
        FrameConv { inputs, outputs, k, weight, bias, taps_first, flipped_taps_first }
    }

    /// For each pixel `(y, x)` and column `(c, dy, dx)`, the index of the input value it reads, if
    /// inside the frame; `visit(row, column, input index)`.
    fn patches(&self, h: usize, w: usize, mut visit: impl FnMut(usize, usize, usize)) {
        let (k, pad) = (self.k, self.k / 2);
        let cols = self.inputs * k * k;
        for y in 0..h {
            for x in 0..w {
                let row = (y * w + x) * cols;
                for dy in 0..k {
                    let Some(iy) = (y + dy).checked_sub(pad).filter(|&iy| iy < h) else { continue };
                    for dx in 0..k {
                        let Some(ix) = (x + dx).checked_sub(pad).filter(|&ix| ix < w) else { continue };
                        for c in 0..self.inputs {
                            visit(row, c * k * k + dy * k + dx, (c * h + iy) * w + ix);
                        }
                    }
                }
            }
        }
    }

    fn forward(&self, x: &[F], h: usize, w: usize) -> Vec<F> {
        let (p, cols) = (h * w, self.inputs * self.k * self.k);
        let mut out: Vec<F> = self.bias.iter().flat_map(|&b| std::iter::repeat_n(b, p)).collect();
        if F::frame_correlate_fast(&self.taps_first, [self.inputs, self.outputs], self.k, x, [1, h, w], &mut out) {
            return out;
        }
        let mut col = vec![F::zero(); p * cols];
        self.patches(h, w, |row, j, i| col[row + j] = x[i]);
        gemm(&self.weight, Layout::row_major(self.outputs, cols), &col, Layout::row_major(p, cols).t(), F::one(), &mut out, Layout::row_major(self.outputs, p));
        out
    }

    /// Gradient with respect to the input, given the output's `grad` `(outputs, h, w)`.
    fn backward(&self, grad: &[F], h: usize, w: usize) -> Vec<F> {
        let (p, cols) = (h * w, self.inputs * self.k * self.k);
        let mut g_x = vec![F::zero(); self.inputs * p];
        if F::frame_correlate_fast(&self.flipped_taps_first, [self.outputs, self.inputs], self.k, grad, [1, h, w], &mut g_x) {
            return g_x;
        }
        let mut g_col = vec![F::zero(); p * cols];
        gemm(grad, Layout::row_major(self.outputs, p).t(), &self.weight, Layout::row_major(self.outputs, cols), F::zero(), &mut g_col, Layout::row_major(p, cols));
        self.patches(h, w, |row, j, i| g_x[i] += g_col[row + j]);
        g_x
    }

    /// The convolution of every frame of `x` `(inputs, frames, h, w)`, if the direct correlation runs
    /// (float32 with AVX2/FMA).
    fn forward_frames_fast(&self, x: &[F], shape: [usize; 3]) -> Option<Vec<F>> {
        let values: usize = shape.iter().product();
        let mut out: Vec<F> = self.bias.iter().flat_map(|&b| std::iter::repeat_n(b, values)).collect();
        F::frame_correlate_fast(&self.taps_first, [self.inputs, self.outputs], self.k, x, shape, &mut out).then_some(out)
    }

    /// Its input gradient for every frame, given the output's `grad` `(outputs, frames, h, w)`.
    fn backward_frames_fast(&self, grad: &[F], shape: [usize; 3]) -> Option<Vec<F>> {
        let mut g_x = vec![F::zero(); self.inputs * shape.iter().product::<usize>()];
        F::frame_correlate_fast(&self.flipped_taps_first, [self.outputs, self.inputs], self.k, grad, shape, &mut g_x).then_some(g_x)
    }

    fn flop_count(&self, h: usize, w: usize) -> f64 {
        2.0 * (h * w * self.inputs * self.k * self.k * self.outputs) as f64
    }
}

/// Per frame the gate values the backward pass reads, each `(rec_channels, pixels)`, frame-major.
struct Gates<F> {
    update: Vec<F>,
    reset: Vec<F>,
    candidate: Vec<F>,
}

fn sigmoid<F: Float>(x: F) -> F {
    F::one() / (F::one() + (-x).exp())
}

impl<F: Float> ConvGruCell<F> {
    /// `{prefix}.{update,reset,out}_gate_{input,hidden}.{weight,bias}` (PyTorch `Conv2d`, groups 1).
    pub fn load(sd: &mut StateDict, prefix: &str, size: GruSize) -> Result<Self> {
        let GruSize { in_channels: c, rec_channels: r, input_kern: ki, rec_kern: kr, .. } = size;
        let mut take = |gate: &str, part: &str, inputs: usize, k: usize| -> Result<(Vec<F>, Vec<F>)> {
            let p = format!("{prefix}.{gate}_gate_{part}");
            Ok((sd.take(&format!("{p}.weight"), &[r, inputs, k, k])?, sd.take(&format!("{p}.bias"), &[r])?))
        };
        let mut input = Vec::new();
        let mut hidden = Vec::new();
        for gate in ["update", "reset", "out"] {
            input.push(take(gate, "input", c, ki)?);
            hidden.push(take(gate, "hidden", r, kr)?);
        }
        Ok(Self::new(size, input, hidden))
    }

    /// From the `(weight (r, in, k, k), bias (r))` of the update, reset and out gates' input and
    /// hidden convolutions.
    pub fn new(size: GruSize, input: Vec<(Vec<F>, Vec<F>)>, hidden: Vec<(Vec<F>, Vec<F>)>) -> Self {
        let GruSize { in_channels: c, rec_channels: r, input_kern: ki, rec_kern: kr, pad_input } = size;
        let stack = |parts: &[(Vec<F>, Vec<F>)]| -> (Vec<F>, Vec<F>) {
            (parts.iter().flat_map(|p| p.0.iter().copied()).collect(), parts.iter().flat_map(|p| p.1.iter().copied()).collect())
        };
        assert!(kr % 2 == 1, "the state convolutions keep the state's size (odd kernel)");
        let pi = if pad_input { ki / 2 } else { 0 };
        let (wi, bi) = stack(&input);
        let (wh, bh) = stack(&hidden[..2]);
        let [_, _, (w_out, b_out)]: [(Vec<F>, Vec<F>); 3] = hidden.try_into().expect("three gates");
        let input_frames = (pad_input && ki % 2 == 1).then(|| FrameConv::new(c, 3 * r, ki, wi.clone(), bi.clone()));
        ConvGruCell {
            size,
            input_gates: Conv3d::new(c, 3 * r, [1, ki, ki], [(0, 0), (pi, pi), (pi, pi)], wi, Some(bi), "ConvGRUCell gate"),
            input_frames,
            state_gates: FrameConv::new(r, 2 * r, kr, wh, bh),
            out_hidden: FrameConv::new(r, r, kr, w_out, b_out),
        }
    }

    /// A state convolution of `h` `(channels, height, width)`, or only its bias when `h` is the zero
    /// start state.
    fn state_conv(conv: &FrameConv<F>, h: Option<&[F]>, [height, width]: [usize; 2]) -> Vec<F> {
        match h {
            Some(h) => conv.forward(h, height, width),
            None => conv.bias.iter().flat_map(|&b| std::iter::repeat_n(b, height * width)).collect(),
        }
    }
}

impl<F: Float> Layer<F> for ConvGruCell<F> {
    fn describe(&self) -> String {
        let s = &self.size;
        format!(
            "ConvGRUCell (GRU_Module) {} -> {} channels, input kernel {k}x{k}{}, recurrent kernel {r}x{r}, state from zero at the first frame",
            s.in_channels,
            s.rec_channels,
            if s.pad_input { " (padded)" } else { " (unpadded)" },
            k = s.input_kern,
            r = s.rec_kern,
        )
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        let [_, t, h, w] = self.input_gates.output_shape(input)?;
        Ok([self.size.rec_channels, t, h, w])
    }

    fn forward(&self, x: &[F], shape: Shape, _: Option<&str>) -> (Vec<F>, LayerState) {
        let r = self.size.rec_channels;
        let [_, t_n, h, w] = self.output_shape(shape).expect("shapes checked before the forward pass");
        let p = h * w;
        let frame_shape = [h, w];
        // (3r, t, p): the input's contribution to every gate at every frame.
        let frames_fast = self.input_frames.as_ref().and_then(|f| f.forward_frames_fast(x, [shape[1], shape[2], shape[3]]));
        let gx = frames_fast.unwrap_or_else(|| self.input_gates.forward_values(x, shape));
        let at = |g: usize, c: usize, t: usize| ((g * r + c) * t_n + t) * p;
        let mut out = vec![F::zero(); r * t_n * p];
        let mut gates = Gates { update: vec![F::zero(); t_n * r * p], reset: vec![F::zero(); t_n * r * p], candidate: vec![F::zero(); t_n * r * p] };
        let mut prev: Option<Vec<F>> = None;
        for t in 0..t_n {
            let gh = Self::state_conv(&self.state_gates, prev.as_deref(), frame_shape);
            let f = t * r * p;
            let mut hr = vec![F::zero(); r * p];
            for c in 0..r {
                for j in 0..p {
                    let u = sigmoid(gx[at(0, c, t) + j] + gh[c * p + j]);
                    let rg = sigmoid(gx[at(1, c, t) + j] + gh[(r + c) * p + j]);
                    gates.update[f + c * p + j] = u;
                    gates.reset[f + c * p + j] = rg;
                    hr[c * p + j] = prev.as_ref().map_or(F::zero(), |h| h[c * p + j]) * rg;
                }
            }
            let go = Self::state_conv(&self.out_hidden, prev.as_ref().map(|_| hr.as_slice()), frame_shape);
            let mut next = vec![F::zero(); r * p];
            for c in 0..r {
                for j in 0..p {
                    let i = c * p + j;
                    let n = (gx[at(2, c, t) + j] + go[i]).tanh();
                    let u = gates.update[f + i];
                    let h_prev = prev.as_ref().map_or(F::zero(), |h| h[i]);
                    gates.candidate[f + i] = n;
                    next[i] = h_prev * (F::one() - u) + n * u;
                    out[(c * t_n + t) * p + j] = next[i];
                }
            }
            prev = Some(next);
        }
        (out, Some(Box::new(gates)))
    }

    fn needs(&self) -> Needs {
        Needs::Output
    }

    fn backward(&self, v: BackwardValues<'_, F>, grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        let out = v.output.expect("the GRU keeps its output (the states)");
        let gates = v.state.and_then(|s| s.downcast_ref::<Gates<F>>()).expect("the GRU keeps its gates");
        let r = self.size.rec_channels;
        let [_, t_n, h, w] = v.output_shape;
        let p = h * w;
        let state = |c: usize, t: usize| &out[(c * t_n + t) * p..(c * t_n + t + 1) * p];
        // Gradients of the gates' pre-activations, laid out as the input convolutions' output.
        let mut g_gx = vec![F::zero(); 3 * r * t_n * p];
        let at = |g: usize, c: usize, t: usize| ((g * r + c) * t_n + t) * p;
        // Gradient of the state at frame t coming back from frame t + 1.
        let mut carry = vec![F::zero(); r * p];
        for t in (0..t_n).rev() {
            let f = t * r * p;
            let mut g_h = vec![F::zero(); r * p];
            let mut g_o = vec![F::zero(); r * p];
            let mut g_u = vec![F::zero(); r * p];
            for c in 0..r {
                for j in 0..p {
                    let i = c * p + j;
                    let g = grad[(c * t_n + t) * p + j] + carry[i];
                    let (u, n) = (gates.update[f + i], gates.candidate[f + i]);
                    let h_prev = if t > 0 { state(c, t - 1)[j] } else { F::zero() };
                    g_o[i] = g * u * (F::one() - n * n);
                    g_u[i] = g * (n - h_prev) * u * (F::one() - u);
                    g_h[i] = g * (F::one() - u);
                    g_gx[at(2, c, t) + j] = g_o[i];
                    g_gx[at(0, c, t) + j] = g_u[i];
                }
            }
            // At the first frame the state is the constant zero: no gradient flows through it.
            if t == 0 {
                break;
            }
            let g_hr = self.out_hidden.backward(&g_o, h, w);
            let mut g_pre = g_u;
            g_pre.resize(2 * r * p, F::zero());
            for c in 0..r {
                let h_prev = state(c, t - 1);
                for j in 0..p {
                    let i = c * p + j;
                    let rg = gates.reset[f + i];
                    g_h[i] += g_hr[i] * rg;
                    let g_r = g_hr[i] * h_prev[j] * rg * (F::one() - rg);
                    g_pre[r * p + i] = g_r;
                    g_gx[at(1, c, t) + j] = g_r;
                }
            }
            let g_state = self.state_gates.backward(&g_pre, h, w);
            g_h.iter_mut().zip(&g_state).for_each(|(a, &b)| *a += b);
            carry = g_h;
        }
        let [_, t_in, h_in, w_in] = v.input_shape;
        let frames_fast = self.input_frames.as_ref().and_then(|f| f.backward_frames_fast(&g_gx, [t_in, h_in, w_in]));
        frames_fast.unwrap_or_else(|| self.input_gates.backward_values(&g_gx, v.input_shape))
    }

    fn reach(&self) -> Reach {
        // Each output frame depends on every earlier input frame through the state.
        Reach::Everything
    }

    /// Forward: the input gates of every frame, then per frame the state convolutions and a few
    /// state-sized buffers; the gates of every frame are kept. Backward: the gate gradients of every
    /// frame, then per frame the state convolutions' transposes and a few state-sized buffers.
    fn work_values(&self, input: Shape) -> Option<crate::model::layer::WorkValues> {
        use crate::model::layer::{count, WorkValues};
        let out = self.output_shape(input).ok()?;
        let (state, all_gates) = (count(&[self.size.rec_channels, out[2], out[3]])?, count(&out)?.checked_mul(3)?);
        let gates_in = Layer::<F>::work_values(&self.input_gates, input)?;
        // A frame convolution's column matrix and its output (or input gradient).
        let frame_conv = |c: &FrameConv<F>| count(&[out[2], out[3], c.inputs * c.k * c.k])?.checked_add(count(&[out[2], out[3], c.outputs.max(c.inputs)])?);
        let per_frame = state.checked_mul(8)?.checked_add(frame_conv(&self.state_gates)?.max(frame_conv(&self.out_hidden)?))?;
        Some(WorkValues {
            state: all_gates,
            forward: all_gates.checked_add(gates_in.forward.max(per_frame))?,
            backward: all_gates.checked_add(gates_in.backward.max(per_frame))?,
        })
    }

    fn flops(&self, shape: Shape) -> f64 {
        let Ok(out) = self.output_shape(shape) else { return 0.0 };
        let [_, t, h, w] = out;
        self.input_gates.flop_count(shape) + t as f64 * (self.state_gates.flop_count(h, w) + self.out_hidden.flop_count(h, w))
    }
}
