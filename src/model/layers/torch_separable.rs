//! openretina's `TorchSTSeparableConv3D` (`convolution_type: separable`): a spatial `Conv3d` with
//! kernel `(1, k, k)` (in -> out channels), then a temporal `Conv3d` with kernel `(kt, 1, 1)` (out ->
//! out channels), both with the layer's padding (so a numeric spatial padding is applied twice, as in
//! openretina), times `exp(_log_speed_default)` (folded into the temporal weights).
//!
//! In float32 with AVX2/FMA, two stages have their own kernels (all MEIs of `zoo_conv_separable`,
//! one thread: 1.83 -> 0.97 s): the temporal stage as a product over (channel, tap) along the
//! values of each channel (`simd_temporal.rs`), computing neither the ring of zeros its spatial
//! padding adds nor, for its input gradient, products with the zero frames around the output
//! gradient; and the stimulus gradient of the spatial stage (1 or 2 input channels) vectorised over
//! time (`simd_spatial.rs`). The other passes use `Conv3d`'s direct correlation.

use crate::error::Result;
use crate::model::config::{LayerConfig, Padding};
use crate::model::layer::{count, WorkValues, BackwardValues, KernelView, Layer, LayerState, Reach, Shape};
use crate::model::load::StateDict;
use crate::model::scratch::Scratch;
use crate::model::simd_spatial::SpatialGeometry;
use crate::model::Float;

use super::conv3d::Conv3d;

#[derive(Debug, Clone)]
pub struct TorchSeparableConv3d<F> {
    pub space: Conv3d<F>,
    pub time: Conv3d<F>,
    /// The spatial weights `(in, k, k, out)`, for the input gradient vectorised over time.
    space_taps_first: Vec<F>,
    /// The temporal weights flipped in time with channels swapped, `(in, out, kt)`: the temporal
    /// stage's input gradient as a correlation.
    time_flipped: Vec<F>,
}

impl<F: Float> TorchSeparableConv3d<F> {
    /// `{prefix}.space_conv.*`, `{prefix}.time_conv.*` and `{prefix}._log_speed_default`; the
    /// paddings of both stages are given (resolved per stage kernel for "same").
    pub fn load(lc: &LayerConfig, sd: &mut StateDict, prefix: &str, space_padding: Padding, time_padding: Padding) -> Result<Self> {
        let (i, o, kt, k) = (lc.in_channels, lc.out_channels, lc.temporal_kernel, lc.spatial_kernel);
        let class = "TorchSTSeparableConv3D (separable)";
        let space = Conv3d::load(sd, &format!("{prefix}.space_conv"), i, o, [1, k, k], space_padding, false, &format!("{class} space_conv"))?;
        let time = Conv3d::load(sd, &format!("{prefix}.time_conv"), o, o, [kt, 1, 1], time_padding, false, &format!("{class} time_conv"))?;
        let log_speed: F = sd.take_scalar(&format!("{prefix}._log_speed_default"))?;
        let mut space_taps_first = vec![F::zero(); space.weight.len()];
        let kk = k * k;
        for c in 0..o {
            for m in 0..i {
                for tap in 0..kk {
                    space_taps_first[(m * kk + tap) * o + c] = space.weight[(c * i + m) * kk + tap];
                }
            }
        }
        let time = time.scaled(log_speed.exp());
        let mut time_flipped = vec![F::zero(); time.weight.len()];
        for c in 0..o {
            for m in 0..o {
                for dt in 0..kt {
                    time_flipped[(m * o + c) * kt + kt - 1 - dt] = time.weight[(c * o + m) * kt + dt];
                }
            }
        }
        Ok(TorchSeparableConv3d { space, time, space_taps_first, time_flipped })
    }

    /// The temporal stage's kernel length and output frames for `mid_shape`, where its fast path
    /// (`simd_temporal.rs`) applies: no temporal padding, no bias, a `kt x 1 x 1` kernel.
    fn time_fast_sizes(&self, [_, t, _, _]: Shape) -> Option<(usize, usize)> {
        let time = &self.time;
        let kt = time.kernel[0];
        let simple = time.padding[0] == (0, 0) && time.bias.is_none() && time.kernel[1] == 1 && time.kernel[2] == 1;
        let frames_out = (t + 1).checked_sub(kt).filter(|&n| n > 0)?;
        simple.then_some((kt, frames_out))
    }

    /// The temporal stage: every output frame from the same pixel of `kt` frames of the spatial
    /// stage's output; a spatial padding only adds a ring of zeros (nothing reads it).
    fn time_forward_fast(&self, mid: &[F], mid_shape: Shape) -> Option<Vec<F>> {
        let (kt, frames_out) = self.time_fast_sizes(mid_shape)?;
        let [channels, _, h, w] = mid_shape;
        let outputs = self.time.out_channels;
        let mut interior = Scratch::zeroed(outputs * frames_out * h * w);
        if !F::temporal_correlate_fast(&self.time.weight, [channels, outputs], kt, mid, h * w, frames_out, (0, frames_out + kt - 1), &mut interior) {
            return None;
        }
        let [(top, bottom), (left, right)] = [self.time.padding[1], self.time.padding[2]];
        if top + bottom + left + right == 0 {
            return Some(interior.to_vec());
        }
        let (hp, wp) = (h + top + bottom, w + left + right);
        let mut out = vec![F::zero(); outputs * frames_out * hp * wp];
        for (row, src) in interior.chunks_exact(w).enumerate() {
            let (y, frame) = (row % h, row / h);
            let at = (frame * hp + y + top) * wp + left;
            out[at..at + w].copy_from_slice(src);
        }
        Some(out)
    }

    /// Its input gradient: the output gradient without the ring, padded by `kt - 1` zero frames on
    /// each side, correlated with the flipped kernels.
    fn time_backward_fast(&self, grad: &[F], mid_shape: Shape) -> Option<Vec<F>> {
        let (kt, frames_out) = self.time_fast_sizes(mid_shape)?;
        let [channels, t, h, w] = mid_shape;
        let outputs = self.time.out_channels;
        let [(top, bottom), (left, right)] = [self.time.padding[1], self.time.padding[2]];
        let (hp, wp) = (h + top + bottom, w + left + right);
        let frames = frames_out + 2 * (kt - 1);
        let mut padded = Scratch::zeroed(outputs * frames * h * w);
        for c in 0..outputs {
            for frame in 0..frames_out {
                for y in 0..h {
                    let src = ((c * frames_out + frame) * hp + y + top) * wp + left;
                    let dst = ((c * frames + frame + kt - 1) * h + y) * w;
                    padded[dst..dst + w].copy_from_slice(&grad[src..src + w]);
                }
            }
        }
        let mut g_mid = vec![F::zero(); channels * t * h * w];
        F::temporal_correlate_fast(&self.time_flipped, [outputs, channels], kt, &padded, h * w, t, (kt - 1, kt - 1 + frames_out), &mut g_mid).then_some(g_mid)
    }

    /// The spatial stage's input gradient vectorised over time (`simd_spatial.rs`), where it runs: in
    /// float32 with AVX2/FMA, for input channels not in groups of 8 (the stimulus: the direct
    /// correlation of `simd_conv.rs` is fast for the others) and no temporal padding.
    fn space_backward_fast(&self, g_mid: &[F], input: Shape) -> Option<Vec<F>> {
        let s = &self.space;
        if s.in_channels.is_multiple_of(8) || s.kernel[0] != 1 || s.padding[0] != (0, 0) {
            return None;
        }
        let geometry = SpatialGeometry {
            channels: [s.in_channels, s.out_channels],
            kernel: [s.kernel[1], s.kernel[2]],
            padding: [s.padding[1], s.padding[2]],
            input: [input[2], input[3]],
        };
        F::spatial_input_gradient_fast(&geometry, &self.space_taps_first, g_mid, input[1])
    }
}

impl<F: Float> Layer<F> for TorchSeparableConv3d<F> {
    fn describe(&self) -> String {
        format!("{} -> {}", self.space.describe(), Layer::<F>::describe(&self.time).replace("TorchSTSeparableConv3D (separable) ", ""))
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.time.output_shape(self.space.output_shape(input)?)
    }

    fn forward(&self, x: &[F], shape: Shape, _: Option<&str>) -> (Vec<F>, LayerState) {
        let mid_shape = self.space.output_shape(shape).expect("shapes checked before the forward pass");
        let mid = self.space.forward_values(x, shape);
        let out = self.time_forward_fast(&mid, mid_shape).unwrap_or_else(|| self.time.forward_values(&mid, mid_shape));
        (out, None)
    }

    fn backward(&self, v: BackwardValues<'_, F>, grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        let mid_shape = self.space.output_shape(v.input_shape).expect("shapes checked before the forward pass");
        let g_mid = self.time_backward_fast(&grad, mid_shape).unwrap_or_else(|| self.time.backward_values(&grad, mid_shape));
        if let Some(g_x) = self.space_backward_fast(&g_mid, v.input_shape) {
            return g_x;
        }
        self.space.backward_values(&g_mid, v.input_shape)
    }

    /// Two stride-1 windows in a row read one window: kernels add (minus 1), paddings add.
    fn reach(&self) -> Reach {
        let (a, b) = (self.space.kernel, self.time.kernel);
        let (p, q) = (self.space.padding, self.time.padding);
        Reach::Window {
            kernel: [0, 1, 2].map(|d| a[d] + b[d] - 1),
            padding: [0, 1, 2].map(|d| (p[d].0 + q[d].0, p[d].1 + q[d].1)),
        }
    }

    /// The two convolutions one after the other, with the result between them (and then its
    /// gradient) alive throughout.
    fn work_values(&self, shape: Shape) -> Option<WorkValues> {
        let mid_shape = self.space.output_shape(shape).ok()?;
        let mid = count(&mid_shape)?;
        let (space, time) = (Layer::<F>::work_values(&self.space, shape)?, Layer::<F>::work_values(&self.time, mid_shape)?);
        Some(WorkValues {
            state: 0,
            forward: mid.checked_add(space.forward.max(time.forward))?,
            backward: mid.checked_add(space.backward.max(time.backward))?,
        })
    }

    fn flops(&self, shape: Shape) -> f64 {
        let mid = self.space.output_shape(shape).map(|m| self.time.flop_count(m)).unwrap_or(0.0);
        self.space.flop_count(shape) + mid
    }

    fn kernel_channels(&self) -> Option<(usize, usize)> {
        Some((self.space.in_channels, self.space.out_channels))
    }

    /// The spatial kernel of the pair, and the temporal kernel that output channel applies to its own
    /// spatial stage (the temporal stage also mixes output channels; the figure shows the diagonal).
    fn kernel(&self, input: usize, output: usize) -> Option<KernelView> {
        let mut view = self.space.view(input, output);
        let kt = self.time.kernel[0];
        let o_n = self.time.out_channels;
        view.temporal = (0..kt).map(|dt| self.time.weight[(output * o_n + output) * kt + dt].to_f64() as f32).collect();
        view.temporal_note = Some(format!("time_conv {output} to {output}"));
        Some(view)
    }
}
