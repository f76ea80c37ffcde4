//! openretina's `TorchSTSeparableConv3D` (`convolution_type: separable`): a spatial `Conv3d` with
//! kernel `(1, k, k)` (in -> out channels), then a temporal `Conv3d` with kernel `(kt, 1, 1)` (out ->
//! out channels), both with the layer's padding (so a numeric spatial padding is applied twice, as in
//! openretina), times `exp(_log_speed_default)` (folded into the temporal weights).

use crate::error::Result;
use crate::model::config::{LayerConfig, Padding};
use crate::model::layer::{count, WorkValues, BackwardValues, KernelView, Layer, LayerState, Reach, Shape};
use crate::model::load::StateDict;
use crate::model::Float;

use super::conv3d::Conv3d;

#[derive(Debug, Clone)]
pub struct TorchSeparableConv3d<F> {
    pub space: Conv3d<F>,
    pub time: Conv3d<F>,
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
        Ok(TorchSeparableConv3d { space, time: time.scaled(log_speed.exp()) })
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
        (self.time.forward_values(&mid, mid_shape), None)
    }

    fn backward(&self, v: BackwardValues<'_, F>, grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        let mid_shape = self.space.output_shape(v.input_shape).expect("shapes checked before the forward pass");
        let g_mid = self.time.backward_values(&grad, mid_shape);
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
