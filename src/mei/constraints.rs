//! What keeps an MEI a plausible stimulus: openretina's post-processor
//! (`ChangeNormJointlyClipRangeSeparately`, applied after every step) and its range penalty
//! (`RangeRegularizationLoss`, added to the loss).
//!
//! Norms are accumulated in f64: whether the norm penalty is active is decided by comparing the norm
//! with its bound, and float32 accumulation makes that comparison a coin flip right after
//! renormalisation; f64 agrees with openretina's float64 reference.

use crate::model::Float;

/// The stimulus constraints of one optimisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraints {
    /// L2 norm each stimulus is rescaled to, and above which the penalty grows.
    pub norm: Option<f64>,
    /// Value range per colour channel; `None` = unbounded.
    pub ranges: Vec<Option<(f64, f64)>>,
    /// Weight of the range penalty in the loss.
    pub penalty_factor: f64,
}

/// Hoefling 2024's stimulus range constraints (openretina `STIMULUS_RANGE_CONSTRAINTS`).
pub const HOEFLING_NORM: f64 = 30.0;
pub const HOEFLING_GREEN_RANGE: (f64, f64) = (-0.654, 6.269);
pub const HOEFLING_UV_RANGE: (f64, f64) = (-0.913, 6.269);

impl Constraints {
    /// openretina's choice: Hoefling's norm and ranges for 2-channel models, nothing otherwise
    /// (openretina itself crashes on 3-channel models; we leave them unconstrained).
    pub fn openretina_default(channels: usize) -> Self {
        if channels == 2 {
            Constraints {
                norm: Some(HOEFLING_NORM),
                ranges: vec![Some(HOEFLING_GREEN_RANGE), Some(HOEFLING_UV_RANGE)],
                penalty_factor: 0.1,
            }
        } else {
            Constraints { norm: None, ranges: vec![None; channels], penalty_factor: 0.1 }
        }
    }

    /// Rescale to the norm, then clip each channel to its range. `x` is one stimulus `(c, t, h, w)`.
    pub fn postprocess<F: Float>(&self, x: &mut [F]) {
        if x.is_empty() || self.ranges.is_empty() {
            return;
        }
        if let Some(target) = self.norm {
            let norm = l2_norm(x);
            let factor = target / norm;
            for v in x.iter_mut() {
                *v = F::from_f64(v.to_f64() * factor);
            }
        }
        let per_channel = x.len() / self.ranges.len();
        for (chunk, range) in x.chunks_exact_mut(per_channel).zip(&self.ranges) {
            if let Some((lo, hi)) = *range {
                let (lo, hi) = (F::from_f64(lo), F::from_f64(hi));
                for v in chunk {
                    *v = if *v < lo { lo } else if *v > hi { hi } else { *v };
                }
            }
        }
    }

    /// The penalty (already multiplied by `penalty_factor`) and its gradient added into `grad`.
    /// A factor of 0 turns it off (nothing is evaluated).
    pub fn penalty<F: Float>(&self, x: &[F], grad: &mut [F]) -> f64 {
        if x.is_empty() || self.ranges.is_empty() {
            return 0.0;
        }
        let factor = self.penalty_factor;
        if factor == 0.0 {
            return 0.0;
        }
        let mut loss = 0.0;
        let per_channel = x.len() / self.ranges.len();
        for (c, range) in self.ranges.iter().enumerate() {
            let Some((lo, hi)) = *range else { continue };
            // The bounds as the post-processor clamps to them (rounded to the working precision), so
            // that a clipped pixel sits exactly on its bound and adds relu(0) = 0 with no gradient.
            let (lo, hi) = (F::from_f64(lo).to_f64(), F::from_f64(hi).to_f64());
            let span = c * per_channel..(c + 1) * per_channel;
            for (v, g) in x[span.clone()].iter().zip(&mut grad[span]) {
                let v64 = v.to_f64();
                if v64 < lo {
                    loss += lo - v64;
                    *g += F::from_f64(-factor);
                } else if v64 > hi {
                    loss += v64 - hi;
                    *g += F::from_f64(factor);
                }
            }
        }
        if let Some(max_norm) = self.norm {
            let norm = l2_norm(x);
            if norm > max_norm {
                loss += norm - max_norm;
                for (v, g) in x.iter().zip(grad.iter_mut()) {
                    *g += F::from_f64(factor * v.to_f64() / norm);
                }
            }
        }
        loss * factor
    }
}

pub fn l2_norm<F: Float>(x: &[F]) -> f64 {
    x.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>().sqrt()
}
