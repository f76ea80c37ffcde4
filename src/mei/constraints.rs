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
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx2_fma() {
            // SAFETY: `avx2_fma` checked that the CPU has AVX2.
            return unsafe { self.postprocess_avx2(x) };
        }
        self.postprocess_kernel(x)
    }

    /// The penalty (already multiplied by `penalty_factor`) and its gradient added into `grad`.
    /// A factor of 0 turns it off (nothing is evaluated).
    pub fn penalty<F: Float>(&self, x: &[F], grad: &mut [F]) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx2_fma() {
            // SAFETY: `avx2_fma` checked that the CPU has AVX2.
            return unsafe { self.penalty_avx2(x, grad) };
        }
        self.penalty_kernel(x, grad)
    }

    // The same code built for AVX2 (4 f64 lanes instead of SSE2's 2; no fused multiply-adds, so the
    // same results).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn postprocess_avx2<F: Float>(&self, x: &mut [F]) {
        self.postprocess_kernel(x)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn penalty_avx2<F: Float>(&self, x: &[F], grad: &mut [F]) -> f64 {
        self.penalty_kernel(x, grad)
    }

    #[inline(always)]
    fn postprocess_kernel<F: Float>(&self, x: &mut [F]) {
        if x.is_empty() || self.ranges.is_empty() {
            return;
        }
        if let Some(target) = self.norm {
            let factor = target / l2_norm(x);
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

    #[inline(always)]
    fn penalty_kernel<F: Float>(&self, x: &[F], grad: &mut [F]) -> f64 {
        if x.is_empty() || self.ranges.is_empty() {
            return 0.0;
        }
        let factor = self.penalty_factor;
        if factor == 0.0 {
            return 0.0;
        }
        let mut loss = 0.0;
        let per_channel = x.len() / self.ranges.len();
        let (down, up) = (F::from_f64(-factor), F::from_f64(factor));
        for (c, range) in self.ranges.iter().enumerate() {
            let Some((lo, hi)) = *range else { continue };
            // The bounds as the post-processor clamps to them (rounded to the working precision), so
            // that a clipped pixel sits exactly on its bound and adds relu(0) = 0 with no gradient.
            let (lo, hi) = (F::from_f64(lo), F::from_f64(hi));
            let (lo64, hi64) = (lo.to_f64(), hi.to_f64());
            let span = c * per_channel..(c + 1) * per_channel;
            // relu(lo - v) + relu(v - hi): at most one is positive, the other adds an exact 0.
            loss += sum_lanes(&x[span.clone()], |v| (lo64 - v.to_f64()).max(0.0) + (v.to_f64() - hi64).max(0.0));
            // A pixel inside the range keeps its gradient as it is (`+ 0` would turn -0 into +0).
            for (&v, g) in x[span.clone()].iter().zip(&mut grad[span]) {
                *g = if v < lo { *g + down } else if v > hi { *g + up } else { *g };
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

/// Partial sums kept by the reductions below: independent f64 additions run in vector lanes and
/// overlap, where one running sum waits ~4 cycles per value (it took a third of the constraints'
/// time). The order of the additions changes the f64 sums by ~1e-16 relative; the one decision made
/// on them, whether the norm of a float32 stimulus renormalised to 30 is above 30, is ~1e-8 from the
/// bound (the float32 rounding of its values), far beyond that. (Float64 stimuli sit on the bound up
/// to f64 rounding: there the decision is a coin flip in any order, as in openretina; tests/mei.rs.)
const LANES: usize = 8;

/// The sum of `f` over `x`, value `i` into lane `i % LANES`, the lanes then added pairwise.
#[inline(always)]
fn sum_lanes<F: Float>(x: &[F], f: impl Fn(F) -> f64) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += f(v);
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// The L2 norm, accumulated in f64.
#[inline(always)]
pub fn l2_norm<F: Float>(x: &[F]) -> f64 {
    sum_lanes(x, |v| v.to_f64() * v.to_f64()).sqrt()
}
