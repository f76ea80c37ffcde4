//! The ELU non-linearity (alpha 1) of openretina's cores.

use crate::error::Result;
use crate::model::layer::{WorkValues, BackwardValues, Layer, LayerState, Needs, Reach, Shape};
use crate::model::Float;

#[derive(Debug, Clone, Copy, Default)]
pub struct Elu;

pub fn elu<F: Float>(x: F) -> F {
    if x > F::zero() {
        x
    } else {
        x.exp_m1()
    }
}

/// d ELU / dx written with the output z: 1 for x > 0, exp(x) = z + 1 otherwise.
pub fn elu_derivative_from_output<F: Float>(z: F) -> F {
    if z > F::zero() {
        F::one()
    } else {
        z + F::one()
    }
}

impl<F: Float> Layer<F> for Elu {
    fn work_values(&self, _: Shape) -> Option<WorkValues> {
        Some(WorkValues::NONE)
    }

    fn describe(&self) -> String {
        "ELU".into()
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        Ok(input)
    }

    fn forward(&self, x: &[F], shape: Shape, session: Option<&str>) -> (Vec<F>, LayerState) {
        self.forward_owned(x.to_vec(), shape, session)
    }

    fn forward_owned(&self, mut x: Vec<F>, _: Shape, _: Option<&str>) -> (Vec<F>, LayerState) {
        // In float32 with AVX2/FMA vectorised (`simd_math.rs`).
        if F::elu_fast(&mut x) {
            return (x, None);
        }
        x.iter_mut().for_each(|v| *v = elu(*v));
        (x, None)
    }

    fn needs(&self) -> Needs {
        Needs::Output
    }

    fn backward(&self, v: BackwardValues<'_, F>, mut grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        let out = v.output.expect("ELU keeps its output");
        grad.iter_mut().zip(out).for_each(|(g, &z)| *g *= elu_derivative_from_output(z));
        grad
    }

    fn reach(&self) -> Reach {
        Reach::POINTWISE
    }
}
