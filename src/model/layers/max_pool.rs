//! `MaxPool3d((1, 2, 2))`: floor mode, no padding; the gradient goes to the first maximum of each
//! window (PyTorch's choice).

use crate::error::Result;
use crate::model::layer::{WorkValues, BackwardValues, Layer, LayerState, Needs, Reach, Shape};
use crate::model::Float;

#[derive(Debug, Clone, Copy, Default)]
pub struct MaxPoolSpace2;

impl<F: Float> Layer<F> for MaxPoolSpace2 {
    fn work_values(&self, _: Shape) -> Option<WorkValues> {
        Some(WorkValues::NONE)
    }

    fn describe(&self) -> String {
        "MaxPool3d((1, 2, 2))".into()
    }

    fn output_shape(&self, [c, t, h, w]: Shape) -> Result<Shape> {
        if h < 2 || w < 2 {
            bail!("input {h}x{w} is too small for a 2x2 max-pool; use a larger stimulus");
        }
        Ok([c, t, h / 2, w / 2])
    }

    fn forward(&self, x: &[F], [c, t, h, w]: Shape, _: Option<&str>) -> (Vec<F>, LayerState) {
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![F::zero(); c * t * ho * wo];
        for ct in 0..c * t {
            let src = &x[ct * h * w..];
            for y in 0..ho {
                for xx in 0..wo {
                    let mut m = src[(2 * y) * w + 2 * xx];
                    for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                        let v = src[(2 * y + dy) * w + 2 * xx + dx];
                        if v > m {
                            m = v;
                        }
                    }
                    out[(ct * ho + y) * wo + xx] = m;
                }
            }
        }
        (out, None)
    }

    fn needs(&self) -> Needs {
        Needs::Input
    }

    fn backward(&self, v: BackwardValues<'_, F>, grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        let x = v.input.expect("max-pool keeps its input");
        let [c, t, h, w] = v.input_shape;
        let (ho, wo) = (h / 2, w / 2);
        let mut g = vec![F::zero(); x.len()];
        for ct in 0..c * t {
            let base = ct * h * w;
            for y in 0..ho {
                for xx in 0..wo {
                    let mut best = base + (2 * y) * w + 2 * xx;
                    for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                        let idx = base + (2 * y + dy) * w + 2 * xx + dx;
                        if x[idx] > x[best] {
                            best = idx;
                        }
                    }
                    g[best] += grad[(ct * ho + y) * wo + xx];
                }
            }
        }
        g
    }

    fn reach(&self) -> Reach {
        Reach::SameFrame
    }
}
