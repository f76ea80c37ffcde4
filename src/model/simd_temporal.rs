//! The temporal (`kt x 1 x 1`) stage of `TorchSTSeparableConv3D`, hand-vectorised for AVX-512 and
//! AVX2/FMA in float32. Each output frame mixes `kt` input frames of every channel at the same pixel, so with
//! values `(channel, frame, pixel)` it is a matrix product over (channel, tap) whose operands are the
//! input shifted by whole frames: `out[c, n] = sum over o, dt of w[c, o, dt] x[o, n + dt * pixels]`
//! for `n = t * pixels + p`, vectorised along `n` with no reordering of the values before or after
//! (the direct correlation of `simd_conv.rs` moved every value to channels-last order and back).
//! Register blocks of 8 output channels x 48 values with AVX-512 (4 x 24 with AVX2: 3.1x faster on
//! `zoo_conv_separable`'s layers, ~90% of the FMA units' peak); products are summed over 8 input
//! channels at a time, then added to the output.

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
            if fits && super::simd::avx512() {
                // SAFETY: AVX-512F is present (checked above); the sizes are checked above and the
                // kernel reads and writes inside them.
                unsafe { x86::temporal_correlate_avx512(weights, [inputs, outputs], kt, x, pixels, n, valid, out) };
                return true;
            }
            if fits && super::simd::avx2_fma() {
                // SAFETY: as above, with AVX2 and FMA.
                unsafe { x86::temporal_correlate_avx2(weights, [inputs, outputs], kt, x, pixels, n, valid, out) };
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
    use super::CHANNELS_PER_SUM;
    use crate::model::simd_lanes::{Vector, Ymm, Zmm};

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

    /// Register blocks of 4 output channels x 3 vectors (24 values).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn temporal_correlate_avx2(weights: &[f32], channels: [usize; 2], kt: usize, x: &[f32], pixels: usize, n: usize, valid: (usize, usize), out: &mut [f32]) {
        correlate::<Ymm, 4, 3>(weights, channels, kt, x, pixels, n, valid, out)
    }

    /// Register blocks of 8 output channels x 3 vectors (48 values): 24 of the 32 registers.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn temporal_correlate_avx512(weights: &[f32], channels: [usize; 2], kt: usize, x: &[f32], pixels: usize, n: usize, valid: (usize, usize), out: &mut [f32]) {
        correlate::<Zmm, 8, 3>(weights, channels, kt, x, pixels, n, valid, out)
    }

    /// Output channels in blocks of `R` (then 4, then 1), values in blocks of `B` vectors, then of
    /// one, then the last few with masked loads and stores.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn correlate<V: Vector, const R: usize, const B: usize>(
        weights: &[f32],
        [inputs, outputs]: [usize; 2],
        kt: usize,
        x: &[f32],
        pixels: usize,
        n: usize,
        valid: (usize, usize),
        out: &mut [f32],
    ) {
        let s = Sizes { inputs, kt, pixels, x_len: x.len() / inputs, n, valid };
        let mut c = 0;
        while c < outputs {
            let rows = if outputs - c >= R {
                R
            } else if outputs - c >= 4 {
                4
            } else {
                1
            };
            match rows {
                r if r == R => row_block::<V, R, B>(&s, weights, x, out, c),
                4 => row_block::<V, 4, B>(&s, weights, x, out, c),
                _ => row_block::<V, 1, B>(&s, weights, x, out, c),
            }
            c += rows;
        }
    }

    /// Output channels `c .. c + R`, all values.
    #[inline(always)]
    unsafe fn row_block<V: Vector, const R: usize, const B: usize>(s: &Sizes, weights: &[f32], x: &[f32], out: &mut [f32], c: usize) {
        let mut j = 0;
        while j + B * V::LANES <= s.n {
            block::<V, R, B, false>(s, weights, x, out, c, j, V::LANES);
            j += B * V::LANES;
        }
        while j + V::LANES <= s.n {
            block::<V, R, 1, false>(s, weights, x, out, c, j, V::LANES);
            j += V::LANES;
        }
        if j < s.n {
            block::<V, R, 1, true>(s, weights, x, out, c, j, s.n - j);
        }
    }

    /// Output channels `c .. c + R`, values `j .. j + (B - 1) LANES + last`: `last` is `LANES`, or
    /// fewer with `B = 1` and `MASKED` (then read and written with masks).
    #[inline(always)]
    unsafe fn block<V: Vector, const R: usize, const B: usize, const MASKED: bool>(s: &Sizes, weights: &[f32], x: &[f32], out: &mut [f32], c: usize, j: usize, last: usize) {
        let (w_ptr, x_ptr, out_ptr) = (weights.as_ptr(), x.as_ptr(), out.as_mut_ptr());
        let len = (B - 1) * V::LANES + last;
        let (dt0, dt1) = s.taps(j, len);
        let full = !MASKED;
        let mut o0 = 0;
        while o0 < s.inputs {
            let mut acc = [[V::zero(); B]; R];
            for o in o0..(o0 + CHANNELS_PER_SUM).min(s.inputs) {
                let src = x_ptr.add(o * s.x_len + j);
                for dt in dt0..dt1 {
                    let mut xv = [V::zero(); B];
                    for v in 0..B {
                        let p = src.add(dt * s.pixels + v * V::LANES);
                        xv[v] = if full { V::load(p) } else { V::load_first(p, last) };
                    }
                    for r in 0..R {
                        let wv = V::splat(w_ptr.add(((c + r) * s.inputs + o) * s.kt + dt));
                        for v in 0..B {
                            acc[r][v] = V::fma(wv, xv[v], acc[r][v]);
                        }
                    }
                }
            }
            for r in 0..R {
                for v in 0..B {
                    let dst = out_ptr.add((c + r) * s.n + j + v * V::LANES);
                    if full {
                        V::add(V::load(dst), acc[r][v]).store(dst);
                    } else {
                        V::add(V::load_first(dst, last), acc[r][v]).store_first(dst, last);
                    }
                }
            }
            o0 += CHANNELS_PER_SUM;
        }
    }
}
