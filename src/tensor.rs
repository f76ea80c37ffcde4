//! A minimal dense, row-major, owned n-d array. The model code works on plain slices for speed; this
//! type only carries data and shape across module boundaries (files, MEIs, figures).

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<F = f32> {
    pub shape: Vec<usize>,
    pub data: Vec<F>,
}

impl<F: Copy + Default> Tensor<F> {
    pub fn new(shape: Vec<usize>, data: Vec<F>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::new(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor { shape, data: vec![F::default(); n] }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn map<G: Copy + Default>(&self, f: impl Fn(F) -> G) -> Tensor<G> {
        Tensor { shape: self.shape.clone(), data: self.data.iter().map(|&x| f(x)).collect() }
    }
}
