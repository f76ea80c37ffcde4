//! `avg_pool3d` with kernel = stride: openretina's input downsampling before the core.

use crate::error::Result;
use crate::model::layer::{WorkValues, BackwardValues, Layer, LayerState, Reach, Shape};
use crate::model::Float;

#[derive(Debug, Clone, Copy)]
pub struct AvgPoolDownsample {
    pub kernel: [usize; 3],
}

impl<F: Float> Layer<F> for AvgPoolDownsample {
    fn work_values(&self, _: Shape) -> Option<WorkValues> {
        Some(WorkValues::NONE)
    }

    fn describe(&self) -> String {
        let [a, b, c] = self.kernel;
        format!("input downsampling avg_pool3d({a}, {b}, {c})")
    }

    fn output_shape(&self, [c, t, h, w]: Shape) -> Result<Shape> {
        let k = self.kernel;
        if t < k[0] || h < k[1] || w < k[2] {
            bail!("input {t}x{h}x{w} is smaller than the downsampling kernel {k:?}");
        }
        Ok([c, t / k[0], h / k[1], w / k[2]])
    }

    fn forward(&self, x: &[F], [c, t, h, w]: Shape, _: Option<&str>) -> (Vec<F>, LayerState) {
        let k = self.kernel;
        let [to, ho, wo] = [t / k[0], h / k[1], w / k[2]];
        let inv = F::one() / F::from_f64((k[0] * k[1] * k[2]) as f64);
        let mut out = vec![F::zero(); c * to * ho * wo];
        for ch in 0..c {
            for ot in 0..to {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut sum = F::zero();
                        for dt in 0..k[0] {
                            for dy in 0..k[1] {
                                for dx in 0..k[2] {
                                    sum += x[((ch * t + ot * k[0] + dt) * h + oy * k[1] + dy) * w + ox * k[2] + dx];
                                }
                            }
                        }
                        out[((ch * to + ot) * ho + oy) * wo + ox] = sum * inv;
                    }
                }
            }
        }
        (out, None)
    }

    fn backward(&self, v: BackwardValues<'_, F>, grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        let k = self.kernel;
        let [c, t, h, w] = v.input_shape;
        let [to, ho, wo] = [t / k[0], h / k[1], w / k[2]];
        let inv = F::one() / F::from_f64((k[0] * k[1] * k[2]) as f64);
        let mut g = vec![F::zero(); c * t * h * w];
        for ch in 0..c {
            for ot in 0..to {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let v = grad[((ch * to + ot) * ho + oy) * wo + ox] * inv;
                        for dt in 0..k[0] {
                            for dy in 0..k[1] {
                                for dx in 0..k[2] {
                                    g[((ch * t + ot * k[0] + dt) * h + oy * k[1] + dy) * w + ox * k[2] + dx] += v;
                                }
                            }
                        }
                    }
                }
            }
        }
        g
    }

    /// Strided in time and space: no part of the input can be left out.
    fn reach(&self) -> Reach {
        Reach::Everything
    }
}
