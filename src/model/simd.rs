//! Hand-vectorised float32 kernel for the hottest loop of MEI optimisation: applying all spatial
//! kernels of one input channel to every frame. The portable path (column matrix + `gemm`) computes
//! the same sums; this one skips building and packing the column matrix, which cost more than the
//! arithmetic. Used for float32 when the CPU has AVX2 and FMA and the output channels come in groups of
//! 8; results differ from the portable path only by FMA rounding.

/// Sizes of the spatial step on one zero-padded input channel `(tp, hp, wp)`.
#[derive(Debug, Clone, Copy)]
pub struct SpatialShape {
    pub tp: usize,
    pub hp: usize,
    pub wp: usize,
    pub ho: usize,
    pub wo: usize,
    pub k: usize,
}

pub trait SpatialStep: Sized {
    /// `s[(t, y, x)][o] = sum_{dy,dx} weights[(dy, dx)][o] * xpad[t, y + dy, x + dx]` if a fast kernel
    /// exists for this type and CPU; returns false (and does nothing) otherwise.
    fn spatial_step_fast(_shape: SpatialShape, _xpad: &[Self], _weights: &[Self], _outputs: usize, _s: &mut [Self]) -> bool {
        false
    }
}

impl SpatialStep for f64 {}

impl SpatialStep for f32 {
    fn spatial_step_fast(shape: SpatialShape, xpad: &[f32], weights: &[f32], outputs: usize, s: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let SpatialShape { tp, hp, wp, ho, wo, k } = shape;
            let fits = outputs % 8 == 0
                && xpad.len() >= tp * hp * wp
                && weights.len() >= k * k * outputs
                && s.len() >= tp * ho * wo * outputs
                && ho + k - 1 <= hp
                && wo + k - 1 <= wp;
            if fits && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: AVX2 and FMA are present (checked above) and `fits` bounds every access.
                unsafe { x86::spatial_step(shape, xpad, weights, outputs, s) };
                return true;
            }
        }
        let _ = (shape, xpad, weights, outputs, s);
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::SpatialShape;

    /// 4 output pixels of a row x 8 output channels per block, accumulators in registers.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spatial_step(shape: SpatialShape, xpad: &[f32], weights: &[f32], outputs: usize, s: &mut [f32]) {
        let SpatialShape { tp, hp, wp, ho, wo, k } = shape;
        let x_ptr = xpad.as_ptr();
        let w_ptr = weights.as_ptr();
        let s_ptr = s.as_mut_ptr();
        for t in 0..tp {
            for y in 0..ho {
                let in_base = x_ptr.add((t * hp + y) * wp);
                let out_base = s_ptr.add((t * ho + y) * wo * outputs);
                for lane0 in (0..outputs).step_by(8) {
                    let mut x = 0;
                    while x + 4 <= wo {
                        let (mut a0, mut a1, mut a2, mut a3) =
                            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
                        for dy in 0..k {
                            let row = in_base.add(dy * wp + x);
                            let w_row = w_ptr.add(dy * k * outputs + lane0);
                            for dx in 0..k {
                                let w = _mm256_loadu_ps(w_row.add(dx * outputs));
                                let r = row.add(dx);
                                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*r), w, a0);
                                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*r.add(1)), w, a1);
                                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*r.add(2)), w, a2);
                                a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*r.add(3)), w, a3);
                            }
                        }
                        let out = out_base.add(x * outputs + lane0);
                        _mm256_storeu_ps(out, a0);
                        _mm256_storeu_ps(out.add(outputs), a1);
                        _mm256_storeu_ps(out.add(2 * outputs), a2);
                        _mm256_storeu_ps(out.add(3 * outputs), a3);
                        x += 4;
                    }
                    while x < wo {
                        let mut a0 = _mm256_setzero_ps();
                        for dy in 0..k {
                            let row = in_base.add(dy * wp + x);
                            let w_row = w_ptr.add(dy * k * outputs + lane0);
                            for dx in 0..k {
                                let w = _mm256_loadu_ps(w_row.add(dx * outputs));
                                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*row.add(dx)), w, a0);
                            }
                        }
                        _mm256_storeu_ps(out_base.add(x * outputs + lane0), a0);
                        x += 1;
                    }
                }
            }
        }
    }
}
