//! Hand-vectorised float32 kernels for the hottest loops of MEI optimisation: applying all spatial
//! kernels of one input channel to every frame, its adjoint, and the temporal step's frame updates.
//! The portable code (column matrix + `gemm`, plain loops) computes the same sums; these skip building
//! and packing the column matrix, which cost more than the arithmetic. Used for float32 when the CPU
//! has AVX2 and FMA and the output channels come in groups of 8; results differ from the portable code
//! only by summation order and FMA rounding (`tests/kernels.rs`).

use std::sync::atomic::{AtomicBool, Ordering};

static FAST_KERNELS: AtomicBool = AtomicBool::new(true);

/// Turn the hand-vectorised kernels on or off for the whole process (for comparisons and
/// benchmarks; they are on by default).
pub fn set_fast_kernels(enabled: bool) {
    FAST_KERNELS.store(enabled, Ordering::Relaxed);
}

static AVX512_KERNELS: AtomicBool = AtomicBool::new(true);

/// Allow or forbid the AVX-512 variants of the kernels that have one (they then run their AVX2
/// variant): for tests of both on a CPU with AVX-512.
pub fn set_avx512_kernels(enabled: bool) {
    AVX512_KERNELS.store(enabled, Ordering::Relaxed);
}

/// Whether the AVX-512 kernels may run: fast kernels and AVX-512 switched on, and the CPU has it.
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        AVX512_KERNELS.load(Ordering::Relaxed) && avx2_fma() && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2/FMA kernels may run: switched on, and the CPU has both.
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        FAST_KERNELS.load(Ordering::Relaxed) && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

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

pub trait FastKernels: Sized {
    /// Whether `spatial_step_fast` and `spatial_step_backward_fast` run for this many output channels
    /// (then no column matrix is built).
    fn spatial_step_available(_outputs: usize) -> bool {
        false
    }

    /// `s[(t, y, x)][o] = sum_{dy,dx} weights[(dy, dx)][o] * xpad[t, y + dy, x + dx]` if a fast kernel
    /// exists for this type and CPU; returns false (and does nothing) otherwise.
    fn spatial_step_fast(_shape: SpatialShape, _xpad: &[Self], _weights: &[Self], _outputs: usize, _s: &mut [Self]) -> bool {
        false
    }

    /// The adjoint, gathered per input pixel: `grad[t, y, x] = sum_{dy,dx,o} g_s[(t + pad_t, y + pad_h
    /// - dy, x + pad_w - dx)][o] * weights[(dy, dx)][o]` over the output pixels that exist, for an
    /// unpadded input of `input` `(t, h, w)`; returns false (and does nothing) without a fast kernel.
    #[allow(clippy::too_many_arguments)]
    fn spatial_step_backward_fast(
        _shape: SpatialShape,
        _input: [usize; 3],
        _pad: [usize; 3],
        _g_s: &[Self],
        _weights: &[Self],
        _outputs: usize,
        _grad: &mut [Self],
    ) -> bool {
        false
    }

    /// `acc[p][o] += w[o] * src[p][o]` over a channel-last frame, if a fast kernel exists.
    fn scale_add_frame_fast(_acc: &mut [Self], _w: &[Self], _src: &[Self]) -> bool {
        false
    }
}

impl FastKernels for f64 {}

impl FastKernels for f32 {
    fn spatial_step_available(outputs: usize) -> bool {
        outputs.is_multiple_of(8) && avx2_fma()
    }

    fn scale_add_frame_fast(acc: &mut [f32], w: &[f32], src: &[f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let fits = w.len().is_multiple_of(8) && acc.len().is_multiple_of(w.len()) && src.len() >= acc.len();
            if fits && avx2_fma() {
                // SAFETY: AVX2 and FMA are present (checked above); `fits` bounds every access.
                unsafe { x86::scale_add_frame(acc, w, src) };
                return true;
            }
        }
        let _ = (acc, w, src);
        false
    }

    fn spatial_step_fast(shape: SpatialShape, xpad: &[f32], weights: &[f32], outputs: usize, s: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let SpatialShape { tp, hp, wp, ho, wo, k } = shape;
            let fits = outputs.is_multiple_of(8)
                && xpad.len() >= tp * hp * wp
                && weights.len() >= k * k * outputs
                && s.len() >= tp * ho * wo * outputs
                && ho + k - 1 <= hp
                && wo + k - 1 <= wp;
            if fits && avx2_fma() {
                // SAFETY: AVX2 and FMA are present (checked above) and `fits` bounds every access.
                unsafe { x86::spatial_step(shape, xpad, weights, outputs, s) };
                return true;
            }
        }
        let _ = (shape, xpad, weights, outputs, s);
        false
    }

    fn spatial_step_backward_fast(
        shape: SpatialShape,
        input: [usize; 3],
        pad: [usize; 3],
        g_s: &[f32],
        weights: &[f32],
        outputs: usize,
        grad: &mut [f32],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let SpatialShape { tp, ho, wo, k, .. } = shape;
            let [t_in, h_in, w_in] = input;
            let fits = outputs.is_multiple_of(8)
                && g_s.len() >= tp * ho * wo * outputs
                && weights.len() >= k * k * outputs
                && grad.len() >= t_in * h_in * w_in
                && t_in + pad[0] <= tp;
            if fits && avx2_fma() {
                // SAFETY: AVX2 and FMA are present (checked above); `fits` and the tap ranges computed
                // inside bound every access.
                unsafe { x86::spatial_step_backward(shape, input, pad, g_s, weights, outputs, grad) };
                return true;
            }
        }
        let _ = (shape, input, pad, g_s, weights, outputs, grad);
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::SpatialShape;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scale_add_frame(acc: &mut [f32], w: &[f32], src: &[f32]) {
        let o_n = w.len();
        let (a_ptr, s_ptr) = (acc.as_mut_ptr(), src.as_ptr());
        for lane0 in (0..o_n).step_by(8) {
            let wv = _mm256_loadu_ps(w.as_ptr().add(lane0));
            let mut i = lane0;
            while i < acc.len() {
                let a = a_ptr.add(i);
                _mm256_storeu_ps(a, _mm256_fmadd_ps(wv, _mm256_loadu_ps(s_ptr.add(i)), _mm256_loadu_ps(a)));
                i += o_n;
            }
        }
    }

    /// Per input pixel, 8 output channels at a time over every tap that lands on an output pixel, one
    /// horizontal sum at the end.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spatial_step_backward(
        shape: SpatialShape,
        input: [usize; 3],
        pad: [usize; 3],
        g_s: &[f32],
        weights: &[f32],
        outputs: usize,
        grad: &mut [f32],
    ) {
        let SpatialShape { ho, wo, k, .. } = shape;
        let [t_in, h_in, w_in] = input;
        let g_ptr = g_s.as_ptr();
        let w_ptr = weights.as_ptr();
        for t in 0..t_in {
            let g_frame = g_ptr.add((t + pad[0]) * ho * wo * outputs);
            for y in 0..h_in {
                let yp = y + pad[1];
                let dy_range = yp.saturating_sub(ho - 1)..(yp + 1).min(k);
                let mut x = 0;
                while x < w_in {
                    let xp = x + pad[2];
                    // Four neighbouring pixels share the weight loads of the taps they have in common.
                    let dx_ranges = [0, 1, 2, 3].map(|j| (xp + j).saturating_sub(wo - 1)..(xp + j + 1).min(k));
                    if x + 4 <= w_in && dx_ranges[3].start < dx_ranges[0].end {
                        let sums = four_pixels(g_frame, w_ptr, yp, xp, dy_range.clone(), &dx_ranges, k, wo, outputs);
                        let dst = grad.as_mut_ptr().add((t * h_in + y) * w_in + x);
                        std::ptr::copy_nonoverlapping(sums.as_ptr(), dst, 4);
                        x += 4;
                        continue;
                    }
                    let dx_range = xp.saturating_sub(wo - 1)..(xp + 1).min(k);
                    // Two accumulators (16 output channels) per pass over the taps where possible.
                    let (mut acc, mut acc2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                    let mut lane0 = 0;
                    while lane0 + 16 <= outputs {
                        for dy in dy_range.clone() {
                            let g_row = g_frame.add((yp - dy) * wo * outputs + lane0);
                            let w_row = w_ptr.add(dy * k * outputs + lane0);
                            for dx in dx_range.clone() {
                                let g = g_row.add((xp - dx) * outputs);
                                let w = w_row.add(dx * outputs);
                                acc = _mm256_fmadd_ps(_mm256_loadu_ps(g), _mm256_loadu_ps(w), acc);
                                acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(g.add(8)), _mm256_loadu_ps(w.add(8)), acc2);
                            }
                        }
                        lane0 += 16;
                    }
                    if lane0 < outputs {
                        for dy in dy_range.clone() {
                            let g_row = g_frame.add((yp - dy) * wo * outputs + lane0);
                            let w_row = w_ptr.add(dy * k * outputs + lane0);
                            for dx in dx_range.clone() {
                                let g = _mm256_loadu_ps(g_row.add((xp - dx) * outputs));
                                let w = _mm256_loadu_ps(w_row.add(dx * outputs));
                                acc = _mm256_fmadd_ps(g, w, acc);
                            }
                        }
                    }
                    let acc = _mm256_add_ps(acc, acc2);
                    // Horizontal sum of the 8 lanes.
                    let sum4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
                    let sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
                    let sum1 = _mm_add_ss(sum2, _mm_shuffle_ps(sum2, sum2, 1));
                    *grad.get_unchecked_mut((t * h_in + y) * w_in + x) = _mm_cvtss_f32(sum1);
                    x += 1;
                }
            }
        }
    }

    /// `spatial_step_backward` for the input pixels `xp .. xp + 4` (padded coordinates) of row `yp`,
    /// whose horizontal taps are `dx_ranges`: the taps all four have (`dx_ranges[3].start ..
    /// dx_ranges[0].end`, not empty) with shared weight loads, then each pixel's others.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn four_pixels(
        g_frame: *const f32,
        w_ptr: *const f32,
        yp: usize,
        xp: usize,
        dy_range: std::ops::Range<usize>,
        dx_ranges: &[std::ops::Range<usize>; 4],
        k: usize,
        wo: usize,
        outputs: usize,
    ) -> [f32; 4] {
        let common = dx_ranges[3].start..dx_ranges[0].end;
        let z = _mm256_setzero_ps();
        let mut acc = [[z; 2]; 4];
        let mut lane0 = 0;
        while lane0 < outputs {
            let wide = lane0 + 16 <= outputs;
            for dy in dy_range.clone() {
                let g_row = g_frame.add((yp - dy) * wo * outputs + lane0);
                let w_row = w_ptr.add(dy * k * outputs + lane0);
                for dx in common.clone() {
                    let w = w_row.add(dx * outputs);
                    let w0 = _mm256_loadu_ps(w);
                    let g = g_row.add((xp - dx) * outputs);
                    if wide {
                        let w1 = _mm256_loadu_ps(w.add(8));
                        for (j, a) in acc.iter_mut().enumerate() {
                            let gj = g.add(j * outputs);
                            a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(gj), w0, a[0]);
                            a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(gj.add(8)), w1, a[1]);
                        }
                    } else {
                        for (j, a) in acc.iter_mut().enumerate() {
                            a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(g.add(j * outputs)), w0, a[0]);
                        }
                    }
                }
                for (j, a) in acc.iter_mut().enumerate() {
                    let own = &dx_ranges[j];
                    for dx in (own.start..common.start).chain(common.end..own.end) {
                        let w = w_row.add(dx * outputs);
                        let g = g_row.add((xp + j - dx) * outputs);
                        a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(g), _mm256_loadu_ps(w), a[0]);
                        if wide {
                            a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(g.add(8)), _mm256_loadu_ps(w.add(8)), a[1]);
                        }
                    }
                }
            }
            lane0 += if wide { 16 } else { 8 };
        }
        acc.map(|[a, b]| {
            let acc = _mm256_add_ps(a, b);
            let sum4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
            _mm_cvtss_f32(_mm_add_ss(sum2, _mm_shuffle_ps(sum2, sum2, 1)))
        })
    }

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
                // 16 output channels per pass where possible: each broadcast pixel feeds 8 FMAs.
                let mut lane0 = 0;
                while lane0 + 16 <= outputs {
                    let mut x = 0;
                    while x + 4 <= wo {
                        let z = _mm256_setzero_ps();
                        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                        let (mut b0, mut b1, mut b2, mut b3) = (z, z, z, z);
                        for dy in 0..k {
                            let row = in_base.add(dy * wp + x);
                            let w_row = w_ptr.add(dy * k * outputs + lane0);
                            for dx in 0..k {
                                let w = _mm256_loadu_ps(w_row.add(dx * outputs));
                                let v = _mm256_loadu_ps(w_row.add(dx * outputs + 8));
                                let r = row.add(dx);
                                let (p0, p1) = (_mm256_broadcast_ss(&*r), _mm256_broadcast_ss(&*r.add(1)));
                                let (p2, p3) = (_mm256_broadcast_ss(&*r.add(2)), _mm256_broadcast_ss(&*r.add(3)));
                                a0 = _mm256_fmadd_ps(p0, w, a0);
                                a1 = _mm256_fmadd_ps(p1, w, a1);
                                a2 = _mm256_fmadd_ps(p2, w, a2);
                                a3 = _mm256_fmadd_ps(p3, w, a3);
                                b0 = _mm256_fmadd_ps(p0, v, b0);
                                b1 = _mm256_fmadd_ps(p1, v, b1);
                                b2 = _mm256_fmadd_ps(p2, v, b2);
                                b3 = _mm256_fmadd_ps(p3, v, b3);
                            }
                        }
                        let out = out_base.add(x * outputs + lane0);
                        for (q, (a, b)) in [(a0, b0), (a1, b1), (a2, b2), (a3, b3)].into_iter().enumerate() {
                            _mm256_storeu_ps(out.add(q * outputs), a);
                            _mm256_storeu_ps(out.add(q * outputs + 8), b);
                        }
                        x += 4;
                    }
                    // Leftover pixels of the row: one at a time, both halves.
                    while x < wo {
                        let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                        for dy in 0..k {
                            let row = in_base.add(dy * wp + x);
                            let w_row = w_ptr.add(dy * k * outputs + lane0);
                            for dx in 0..k {
                                let p = _mm256_broadcast_ss(&*row.add(dx));
                                a = _mm256_fmadd_ps(p, _mm256_loadu_ps(w_row.add(dx * outputs)), a);
                                b = _mm256_fmadd_ps(p, _mm256_loadu_ps(w_row.add(dx * outputs + 8)), b);
                            }
                        }
                        _mm256_storeu_ps(out_base.add(x * outputs + lane0), a);
                        _mm256_storeu_ps(out_base.add(x * outputs + lane0 + 8), b);
                        x += 1;
                    }
                    lane0 += 16;
                }
                // A last group of 8 output channels.
                if lane0 < outputs {
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
