//! openretina's colour squashing: a weighted sum of the stimulus channels into one grey channel
//! before the core (single-channel input passes unchanged, as in openretina).

use crate::error::Result;
use crate::model::layer::{count, WorkValues, BackwardValues, Layer, LayerState, Reach, Shape};
use crate::model::Float;

#[derive(Debug, Clone)]
pub struct ColorSquash<F> {
    pub weights: Vec<F>,
}

impl<F: Float> Layer<F> for ColorSquash<F> {
    /// The grey frame sum before it is spread over the output channels.
    fn work_values(&self, [_, t, h, w]: Shape) -> Option<WorkValues> {
        Some(WorkValues { forward: count(&[t, h, w])?, ..WorkValues::NONE })
    }

    fn describe(&self) -> String {
        format!("colour squashing ({} channels -> 1)", self.weights.len())
    }

    fn output_shape(&self, [c, t, h, w]: Shape) -> Result<Shape> {
        Ok(if c > 1 { [1, t, h, w] } else { [c, t, h, w] })
    }

    fn forward(&self, x: &[F], [c, t, h, w]: Shape, _: Option<&str>) -> (Vec<F>, LayerState) {
        if c == 1 {
            return (x.to_vec(), None);
        }
        let n = t * h * w;
        let mut grey = vec![F::zero(); n];
        for (ch, &wt) in self.weights.iter().enumerate() {
            for (g, &v) in grey.iter_mut().zip(&x[ch * n..(ch + 1) * n]) {
                *g += v * wt;
            }
        }
        (grey, None)
    }

    fn backward(&self, v: BackwardValues<'_, F>, grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        let [c, t, h, w] = v.input_shape;
        if c == 1 {
            return grad;
        }
        let n = t * h * w;
        let mut out = vec![F::zero(); c * n];
        for (ch, &wt) in self.weights.iter().enumerate() {
            for (o, &g) in out[ch * n..(ch + 1) * n].iter_mut().zip(&grad) {
                *o = g * wt;
            }
        }
        out
    }

    fn reach(&self) -> Reach {
        Reach::POINTWISE
    }
}
