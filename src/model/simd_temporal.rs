//! The temporal (`kt x 1 x 1`) stage of `TorchSTSeparableConv3D`, hand-vectorised for AVX2/FMA in
//! float32. Each output frame mixes `kt` input frames of every channel at the same pixel, so with
//! values `(channel, frame, pixel)` it is a matrix product over (channel, tap) whose operands are the
//! input shifted by whole frames: `out[c, n] = sum over o, dt of w[c, o, dt] x[o, n + dt * pixels]`
//! for `n = t * pixels + p`, vectorised along `n` with no reordering of the values before or after
//! (the direct correlation of `simd_conv.rs` moved every value to channels-last order and back).
//! Register blocks of 4 output channels x 24 values; products are summed over 8 input channels at a
//! time, then added to the output.

/// `out[c, n] += sum over o < channels[0], dt < kt of weights[c, o, dt] * x[o, n + dt * pixels]` for
/// `n < frames_out * pixels`, with `x` `(channels[0], frames_out + kt - 1, pixels)`, `out`
/// `(channels[1], frames_out, pixels)` and `weights` `(channels[1], channels[0], kt)`. Only the input
/// frames `valid.0 .. valid.1` may be non-zero: taps that read only other frames are skipped (an
/// input gradient's correlation runs on an output gradient padded by `kt - 1` zero frames per side).
pub trait TemporalCorrelation: Sized {
    /// Whether a fast kernel ran (else the caller runs the portable code; `out` is untouched).
    fn temporal_correlate_fast(_weights: &[Self], _channels: [usize; 2], _kt: usize, _x: &[Self], _pixels: usize, _frames_out: usize, _valid: (usize, usize), _out: &mut [Self]) -> bool {
        false
    }
}

impl TemporalCorrelation for f64 {}

impl TemporalCorrelation for f32 {
    #[allow(clippy::too_many_arguments)]
    fn temporal_correlate_fast(weights: &[f32], [inputs, outputs]: [usize; 2], kt: usize, x: &[f32], pixels: usize, frames_out: usize, valid: (usize, usize), out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let n = frames_out * pixels;
            let fits = kt > 0
                && n > 0
                && inputs > 0
                && weights.len() == outputs * inputs * kt
                && x.len() == inputs * (frames_out + kt - 1) * pixels
                && out.len() == outputs * n;
            if fits && super::simd::avx2_fma() {
                // SAFETY: AVX2 and FMA are present (checked above); the sizes are checked above and
                // the kernel reads and writes inside them.
                unsafe { x86::temporal_correlate(weights, [inputs, outputs], kt, x, pixels, n, valid, out) };
                return true;
            }
        }
        let _ = (weights, inputs, outputs, kt, x, pixels, frames_out, valid, out);
        false
    }
}

/// Input channels whose products are summed in registers before being added to the output.
const CHANNELS_PER_SUM: usize = 8;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHANNELS_PER_SUM;

    /// Sizes of one call.
    struct Sizes {
        inputs: usize,
        kt: usize,
        pixels: usize,
        /// Values per input channel, per output channel.
        x_len: usize,
        n: usize,
        valid: (usize, usize),
    }

    impl Sizes {
        /// The taps that read a valid frame for some value of `j .. j + len`.
        fn taps(&self, j: usize, len: usize) -> (usize, usize) {
            let (first, last) = (j / self.pixels, (j + len - 1) / self.pixels);
            let from = self.valid.0.saturating_sub(last);
            (from, self.valid.1.saturating_sub(first).min(self.kt).max(from))
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn temporal_correlate(weights: &[f32], [inputs, outputs]: [usize; 2], kt: usize, x: &[f32], pixels: usize, n: usize, valid: (usize, usize), out: &mut [f32]) {
        let s = Sizes { inputs, kt, pixels, x_len: x.len() / inputs, n, valid };
        let mut c = 0;
        while c < outputs {
            let rows = if outputs - c >= 4 { 4 } else { 1 };
            let mut j = 0;
            while j + 24 <= n {
                if rows == 4 {
                    block::<4, 3>(&s, weights, x, out, c, j);
                } else {
                    block::<1, 3>(&s, weights, x, out, c, j);
                }
                j += 24;
            }
            while j + 8 <= n {
                if rows == 4 {
                    block::<4, 1>(&s, weights, x, out, c, j);
                } else {
                    block::<1, 1>(&s, weights, x, out, c, j);
                }
                j += 8;
            }
            // The last values of a row (fewer than 8), one at a time.
            for r in c..c + rows {
                for jj in j..n {
                    let (dt0, dt1) = s.taps(jj, 1);
                    for o0 in (0..inputs).step_by(CHANNELS_PER_SUM) {
                        let mut sum = 0.0f32;
                        for o in o0..(o0 + CHANNELS_PER_SUM).min(inputs) {
                            for dt in dt0..dt1 {
                                sum += weights[(r * inputs + o) * kt + dt] * x[o * s.x_len + jj + dt * pixels];
                            }
                        }
                        out[r * n + jj] += sum;
                    }
                }
            }
            c += rows;
        }
    }

    /// Output channels `c .. c + R`, values `j .. j + 8 V`.
    #[inline(always)]
    unsafe fn block<const R: usize, const V: usize>(s: &Sizes, weights: &[f32], x: &[f32], out: &mut [f32], c: usize, j: usize) {
        let (w_ptr, x_ptr, out_ptr) = (weights.as_ptr(), x.as_ptr(), out.as_mut_ptr());
        let (dt0, dt1) = s.taps(j, 8 * V);
        let mut o0 = 0;
        while o0 < s.inputs {
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            for o in o0..(o0 + CHANNELS_PER_SUM).min(s.inputs) {
                let src = x_ptr.add(o * s.x_len + j);
                for dt in dt0..dt1 {
                    let mut xv = [_mm256_setzero_ps(); V];
                    for v in 0..V {
                        xv[v] = _mm256_loadu_ps(src.add(dt * s.pixels + 8 * v));
                    }
                    for r in 0..R {
                        let wv = _mm256_broadcast_ss(&*w_ptr.add(((c + r) * s.inputs + o) * s.kt + dt));
                        for v in 0..V {
                            acc[r][v] = _mm256_fmadd_ps(wv, xv[v], acc[r][v]);
                        }
                    }
                }
            }
            for r in 0..R {
                for v in 0..V {
                    let dst = out_ptr.add((c + r) * s.n + j + 8 * v);
                    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), acc[r][v]));
                }
            }
            o0 += CHANNELS_PER_SUM;
        }
    }
}
