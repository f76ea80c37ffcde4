//! A `1 x 1 x 1` convolution without padding or bias (`ConvGRUCore`'s projections): a matrix of
//! channel weights applied at every frame and pixel. In float32 with AVX2/FMA it runs as the
//! temporal kernel of `simd_temporal.rs` with one tap, along each channel's values in place (no
//! padded copy, no channels-last round trip); otherwise, and for everything but the passes, as the
//! `Conv3d` it wraps.

use crate::error::Result;
use crate::model::layer::{BackwardValues, KernelView, Layer, LayerState, Reach, Shape, WorkValues};
use crate::model::Float;

use super::conv3d::Conv3d;

#[derive(Debug, Clone)]
pub struct Pointwise<F> {
    pub conv: Conv3d<F>,
    /// The weights `(in, out)`: the input gradient's channel mixing.
    transposed: Vec<F>,
}

impl<F: Float> Pointwise<F> {
    /// `conv` must be `1 x 1 x 1`, unpadded and without bias.
    pub fn new(conv: Conv3d<F>) -> Self {
        assert!(conv.kernel == [1, 1, 1] && conv.padding == [(0, 0); 3] && conv.bias.is_none(), "a pointwise convolution");
        let (i_n, o_n) = (conv.in_channels, conv.out_channels);
        let mut transposed = vec![F::zero(); conv.weight.len()];
        for o in 0..o_n {
            for i in 0..i_n {
                transposed[i * o_n + o] = conv.weight[o * i_n + i];
            }
        }
        Pointwise { conv, transposed }
    }
}

impl<F: Float> Layer<F> for Pointwise<F> {
    fn describe(&self) -> String {
        Layer::<F>::describe(&self.conv)
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.conv.output_shape(input)
    }

    fn forward(&self, x: &[F], shape: Shape, _: Option<&str>) -> (Vec<F>, LayerState) {
        let values = shape[1] * shape[2] * shape[3];
        let (i_n, o_n) = (self.conv.in_channels, self.conv.out_channels);
        let mut out = vec![F::zero(); o_n * values];
        if F::temporal_correlate_fast(&self.conv.weight, [i_n, o_n], 1, x, values, 1, (0, 1), &mut out) {
            return (out, None);
        }
        (self.conv.forward_values(x, shape), None)
    }

    fn backward(&self, v: BackwardValues<'_, F>, grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        let shape = v.input_shape;
        let values = shape[1] * shape[2] * shape[3];
        let (i_n, o_n) = (self.conv.in_channels, self.conv.out_channels);
        let mut g_x = vec![F::zero(); i_n * values];
        if F::temporal_correlate_fast(&self.transposed, [o_n, i_n], 1, &grad, values, 1, (0, 1), &mut g_x) {
            return g_x;
        }
        self.conv.backward_values(&grad, shape)
    }

    fn reach(&self) -> Reach {
        Layer::<F>::reach(&self.conv)
    }

    fn work_values(&self, input: Shape) -> Option<WorkValues> {
        Layer::<F>::work_values(&self.conv, input)
    }

    fn flops(&self, shape: Shape) -> f64 {
        self.conv.flop_count(shape)
    }

    fn kernel_channels(&self) -> Option<(usize, usize)> {
        Layer::<F>::kernel_channels(&self.conv)
    }

    fn kernel(&self, input: usize, output: usize) -> Option<KernelView> {
        Layer::<F>::kernel(&self.conv, input, output)
    }
}
