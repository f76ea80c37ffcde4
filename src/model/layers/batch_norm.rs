//! `BatchNorm3d` in eval mode followed by openretina's `Bias3DLayer` (either optional), folded into
//! one per-channel affine map `y = scale * x + shift`.

use crate::error::Result;
use crate::model::layer::{WorkValues, BackwardValues, Layer, LayerState, Reach, Shape};
use crate::model::load::StateDict;
use crate::model::Float;

/// BatchNorm3d's epsilon.
pub const BATCH_NORM_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
pub struct BatchNormBias<F> {
    pub scale: Vec<F>,
    pub shift: Vec<F>,
    /// What the map stands for, for `retina info`.
    what: String,
}

impl<F: Float> BatchNormBias<F> {
    /// `{prefix}.norm.*` (running statistics; `weight` and `bias` when `affine`) and, when
    /// `bias_layer`, `{prefix}.bias.bias`.
    pub fn load(sd: &mut StateDict, prefix: &str, channels: usize, affine: bool, bias_layer: bool) -> Result<Self> {
        let (p, o) = (prefix, channels);
        let mean: Vec<f64> = sd.take(&format!("{p}.norm.running_mean"), &[o])?;
        let var: Vec<f64> = sd.take(&format!("{p}.norm.running_var"), &[o])?;
        if let Some(v) = var.iter().find(|&&v| v < 0.0) {
            bail!("tensor `{p}.norm.running_var` holds a negative variance ({v}); the model file is damaged");
        }
        let (weight, bn_bias): (Vec<f64>, Vec<f64>) = if affine {
            (sd.take(&format!("{p}.norm.weight"), &[o])?, sd.take(&format!("{p}.norm.bias"), &[o])?)
        } else {
            (vec![1.0; o], vec![0.0; o])
        };
        let extra: Vec<f64> = if bias_layer { sd.take(&format!("{p}.bias.bias"), &[1, o, 1, 1, 1])? } else { vec![0.0; o] };
        // y = (x - mean) / sqrt(var + eps) * weight + bias + extra, folded in float64, rounded once.
        let scale: Vec<f64> = (0..o).map(|j| weight[j] / (var[j] + BATCH_NORM_EPS).sqrt()).collect();
        let shift = (0..o).map(|j| F::from_f64(bn_bias[j] - mean[j] * scale[j] + extra[j])).collect();
        let what = match (affine, bias_layer) {
            (true, true) => "BatchNorm3d (eval) + Bias3DLayer",
            (true, false) => "BatchNorm3d (eval)",
            (false, true) => "BatchNorm3d (eval, affine=False) + Bias3DLayer",
            (false, false) => "BatchNorm3d (eval, affine=False)",
        };
        Ok(BatchNormBias { scale: scale.into_iter().map(F::from_f64).collect(), shift, what: what.into() })
    }

    fn apply(&self, mut x: Vec<F>, with_shift: bool) -> Vec<F> {
        let frame = x.len() / self.scale.len();
        for (o, chunk) in x.chunks_exact_mut(frame).enumerate() {
            let (a, b) = (self.scale[o], if with_shift { self.shift[o] } else { F::zero() });
            chunk.iter_mut().for_each(|v| *v = a * *v + b);
        }
        x
    }
}

impl<F: Float> Layer<F> for BatchNormBias<F> {
    fn work_values(&self, _: Shape) -> Option<WorkValues> {
        Some(WorkValues::NONE)
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        if input[0] != self.scale.len() {
            bail!("input has {} channels, the BatchNorm has {}", input[0], self.scale.len());
        }
        Ok(input)
    }

    fn forward(&self, x: &[F], shape: Shape, session: Option<&str>) -> (Vec<F>, LayerState) {
        self.forward_owned(x.to_vec(), shape, session)
    }

    fn forward_owned(&self, x: Vec<F>, _: Shape, _: Option<&str>) -> (Vec<F>, LayerState) {
        (self.apply(x, true), None)
    }

    fn backward(&self, _: BackwardValues<'_, F>, grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        self.apply(grad, false)
    }

    fn reach(&self) -> Reach {
        Reach::POINTWISE
    }
}
