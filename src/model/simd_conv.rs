//! A direct stride-1 3D correlation, hand-vectorised for AVX2/FMA in float32: the dense `Conv3d`'s
//! forward pass and (as the correlation of the output gradient with the flipped, transposed kernel)
//! its input gradient. Unlike the column-matrix route it reads each input frame only for the output
//! frames that exist (no products for padded frames that are then dropped) and keeps no `(frames x
//! pixels x kernel frames x channels)` intermediate, which did not fit in cache on real sizes.
//!
//! Two register-blocked kernels, chosen by the number of output channels:
//! - channels last (a multiple of 8): 6 output pixels x 16 channels (or 12 x 8) per block, each input
//!   value broadcast once for 2 weight vectors;
//! - pixels along x (any channel count, e.g. the stimulus' 1 or 2 channels of an input gradient):
//!   6 vectors of 8 neighbouring output pixels of one channel per block, each weight broadcast once.
//!
//! Each block of outputs visits only the kernel taps that land on real (not padding) input values:
//! the input gradient's correlation runs on an output gradient padded by nearly a kernel per side, and
//! on small frames most taps would multiply zeros. Long float32 sums lose precision, so products are
//! summed in blocks of about 128 taps, then the block sums added up. Used when the CPU has AVX2 and
//! FMA (else the portable code in `conv3d.rs`).

use crate::model::config::Padding;

/// A stride-1 correlation of an input `(m, t, h, w)`, zero-padded by `padding`, with `c` kernels
/// `(m, kt, kh, kw)`: `out[c, t, y, x] = sum_{m, dt, dy, dx} w[c, m, dt, dy, dx] * xpad[m, t + dt, y + dy, x + dx]`.
pub struct Correlation<'a, F> {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 3],
    /// `(c, m, kt, kh, kw)`.
    pub weights: &'a [F],
    /// The same, channels last: `(m, kt, kh, kw, c)`.
    pub weights_channels_last: &'a [F],
}

pub trait DirectConv: Sized {
    /// The correlation `(c, t', h', w')` of `input` `(m, t, h, w)`, if a fast kernel exists for this
    /// type and CPU (else `None`, and the caller runs the portable code).
    fn correlate_fast(_c: &Correlation<'_, Self>, _input: &[Self], _shape: [usize; 3], _padding: Padding) -> Option<Vec<Self>> {
        None
    }
}

impl DirectConv for f64 {}

impl DirectConv for f32 {
    fn correlate_fast(c: &Correlation<'_, f32>, input: &[f32], shape: [usize; 3], padding: Padding) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        {
            let [kt, kh, kw] = c.kernel;
            let weights = c.in_channels * kt * kh * kw * c.out_channels;
            let padded = [0, 1, 2].map(|d| shape[d] + padding[d].0 + padding[d].1);
            let fits = input.len() == c.in_channels * shape.iter().product::<usize>()
                && c.weights.len() == weights
                && c.weights_channels_last.len() == weights
                && padded[0] >= kt
                && padded[1] >= kh
                && padded[2] >= kw
                && weights > 0;
            if fits && super::simd::avx2_fma() {
                let geometry = Geometry::new(c, shape, padding);
                let xpad = geometry.pad(input, shape, padding);
                // SAFETY: AVX2 and FMA are present (checked above); `Geometry` sizes the padded input
                // with slack for the widest vector read and the kernels stay inside it.
                return Some(unsafe { x86::correlate(&geometry, c, &xpad) });
            }
        }
        let _ = (c, input, shape, padding);
        None
    }
}

/// Sizes of one correlation call.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    m: usize,
    c: usize,
    kernel: [usize; 3],
    /// Padded input `(tp, hp, wp)`.
    padded: [usize; 3],
    /// Where the real input lies in the padded one, per axis: `[lo, hi)`.
    data: [(usize, usize); 3],
    /// Output `(to, ho, wo)`.
    out: [usize; 3],
}

/// Zero floats after the padded input, so that an 8-wide read at any row start stays inside.
const SLACK: usize = 8;

/// Products summed in registers before the sum is added to the block's total (float32 precision).
const TAPS_PER_SUM: usize = 128;

/// The kernel rows one block of outputs visits: per row `(m, dt, dy)`, its offset in the padded input
/// and its tap index in the weights (both at the first `dx`), and the `dx` range's length.
#[derive(Default)]
struct Taps {
    rows: Vec<(usize, usize)>,
    width: usize,
    /// The tap ranges `rows` was built for (neighbouring blocks mostly share them).
    ranges: Option<[(usize, usize); 3]>,
}

impl Taps {
    /// Rows per partial sum.
    fn rows_per_sum(&self) -> usize {
        (TAPS_PER_SUM / self.width.max(1)).max(1)
    }
}

impl Geometry {
    fn new<F>(c: &Correlation<'_, F>, shape: [usize; 3], padding: Padding) -> Self {
        let padded = [0, 1, 2].map(|d| shape[d] + padding[d].0 + padding[d].1);
        let data = [0, 1, 2].map(|d| (padding[d].0, padding[d].0 + shape[d]));
        let out = [0, 1, 2].map(|d| padded[d] + 1 - c.kernel[d]);
        Geometry { m: c.in_channels, c: c.out_channels, kernel: c.kernel, padded, data, out }
    }

    fn pad(&self, input: &[f32], [t_in, h_in, w_in]: [usize; 3], padding: Padding) -> Vec<f32> {
        let [tp, hp, wp] = self.padded;
        let mut xpad = vec![0.0; self.m * tp * hp * wp + SLACK];
        for i in 0..self.m {
            for t in 0..t_in {
                for y in 0..h_in {
                    let src = ((i * t_in + t) * h_in + y) * w_in;
                    let dst = ((i * tp + t + padding[0].0) * hp + y + padding[1].0) * wp + padding[2].0;
                    xpad[dst..dst + w_in].copy_from_slice(&input[src..src + w_in]);
                }
            }
        }
        xpad
    }

    /// The taps that reach real input for some output of the block, whose output indices span
    /// `[first, last]` per axis: tap `d` of axis `a` reads `out + d`, real in `data[a]`.
    fn taps(&self, span: [(usize, usize); 3], taps: &mut Taps) {
        let range = |a: usize| {
            let ((lo, hi), (first, last), k) = (self.data[a], span[a], self.kernel[a]);
            let from = lo.saturating_sub(last);
            let to = hi.saturating_sub(first).min(k);
            (from, to.max(from))
        };
        let ranges = [range(0), range(1), range(2)];
        if taps.ranges == Some(ranges) {
            return;
        }
        taps.ranges = Some(ranges);
        let [(t0, t1), (y0, y1), (x0, x1)] = ranges;
        let [kt, kh, kw] = self.kernel;
        let [tp, hp, wp] = self.padded;
        taps.rows.clear();
        taps.width = x1 - x0;
        if taps.width == 0 {
            return;
        }
        for i in 0..self.m {
            for dt in t0..t1 {
                for dy in y0..y1 {
                    taps.rows.push((((i * tp + dt) * hp + dy) * wp + x0, ((i * kt + dt) * kh + dy) * kw + x0));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Correlation, Geometry, Taps};

    /// Pixels per block of the channels-last kernel with 2 (16 channels) and 1 (8 channels) vectors.
    const PIXELS_16: usize = 6;
    const PIXELS_8: usize = 12;
    /// Vectors of 8 pixels per block of the pixels-along-x kernel.
    const VECTORS: usize = 6;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn correlate(g: &Geometry, c: &Correlation<'_, f32>, xpad: &[f32]) -> Vec<f32> {
        let [to, ho, wo] = g.out;
        let mut out = vec![0.0f32; g.c * to * ho * wo];
        if g.c.is_multiple_of(8) {
            let mut out_cl = vec![0.0f32; to * ho * wo * g.c];
            channels_last(g, c.weights_channels_last, xpad, &mut out_cl);
            for (q, row) in out_cl.chunks_exact(g.c).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    *out.get_unchecked_mut(o * to * ho * wo + q) = v;
                }
            }
        } else {
            pixels_along_x(g, c.weights, xpad, &mut out);
        }
        out
    }

    /// `out[q][o] = sum over taps of w[tap][o] * xpad[base(q) + tap offset]`, output pixels `q` in
    /// `(t, y, x)` order, channels last; blocks of pixels stay within one frame.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn channels_last(g: &Geometry, w_cl: &[f32], xpad: &[f32], out: &mut [f32]) {
        let [to, ho, wo] = g.out;
        let [_, hp, wp] = g.padded;
        let frame = ho * wo;
        let mut taps = Taps::default();
        for t in 0..to {
            let mut p = 0;
            while p < frame {
                let pixels = if g.c >= 16 { PIXELS_16 } else { PIXELS_8 };
                let n = pixels.min(frame - p);
                let (y0, y1) = (p / wo, (p + n - 1) / wo);
                let xs = if y0 == y1 { (p % wo, (p + n - 1) % wo) } else { (0, wo - 1) };
                g.taps([(t, t), (y0, y1), xs], &mut taps);
                let mut bases = [0usize; PIXELS_8];
                for (j, b) in bases[..n].iter_mut().enumerate() {
                    *b = (t * hp + (p + j) / wo) * wp + (p + j) % wo;
                }
                let out_p = out.as_mut_ptr().add((t * frame + p) * g.c);
                let mut lane0 = 0;
                while lane0 < g.c {
                    let wide = lane0 + 16 <= g.c;
                    match (n == pixels, pixels == PIXELS_16, wide) {
                        (true, true, true) => pixel_block::<PIXELS_16, 2>(g, &taps, w_cl, xpad, &bases, lane0, out_p),
                        (true, true, false) => pixel_block::<PIXELS_16, 1>(g, &taps, w_cl, xpad, &bases, lane0, out_p),
                        (true, false, _) => pixel_block::<PIXELS_8, 1>(g, &taps, w_cl, xpad, &bases, lane0, out_p),
                        (false, _, true) => {
                            for j in 0..n {
                                pixel_block::<1, 2>(g, &taps, w_cl, xpad, &bases[j..], lane0, out_p.add(j * g.c));
                            }
                        }
                        (false, _, false) => {
                            for j in 0..n {
                                pixel_block::<1, 1>(g, &taps, w_cl, xpad, &bases[j..], lane0, out_p.add(j * g.c));
                            }
                        }
                    }
                    lane0 += if wide { 16 } else { 8 };
                }
                p += n;
            }
        }
    }

    /// `P` output pixels x `V` vectors of 8 channels from `lane0`: each run of taps summed in
    /// registers, then added to `out` (zero at the start; pixel `j` at `out + j * c`).
    #[inline(always)]
    unsafe fn pixel_block<const P: usize, const V: usize>(
        g: &Geometry,
        taps: &Taps,
        w_cl: &[f32],
        xpad: &[f32],
        bases: &[usize],
        lane0: usize,
        out: *mut f32,
    ) {
        let c = g.c;
        let (x_ptr, w_ptr) = (xpad.as_ptr(), w_cl.as_ptr().add(lane0));
        let mut inputs = [x_ptr; P];
        for j in 0..P {
            inputs[j] = x_ptr.add(bases[j]);
        }
        for rows in taps.rows.chunks(taps.rows_per_sum()) {
            let mut acc = [[_mm256_setzero_ps(); V]; P];
            for &(offset, tap) in rows {
                let mut w = w_ptr.add(tap * c);
                for dx in 0..taps.width {
                    let mut wv = [_mm256_setzero_ps(); V];
                    for v in 0..V {
                        wv[v] = _mm256_loadu_ps(w.add(8 * v));
                    }
                    for j in 0..P {
                        let p = _mm256_broadcast_ss(&*inputs[j].add(offset + dx));
                        for v in 0..V {
                            acc[j][v] = _mm256_fmadd_ps(p, wv[v], acc[j][v]);
                        }
                    }
                    w = w.add(c);
                }
            }
            for j in 0..P {
                for v in 0..V {
                    let o = out.add(j * c + lane0 + 8 * v);
                    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), acc[j][v]));
                }
            }
        }
    }

    /// One output channel at a time, vectors of 8 neighbouring pixels of a row, blocks of vectors at
    /// the same `(t, x)` in neighbouring rows. A row narrower than 8 reads into the next row (or the
    /// slack) and keeps its first `wo` lanes; a wider one ends with a vector overlapping the one
    /// before (same values written twice).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pixels_along_x(g: &Geometry, weights: &[f32], xpad: &[f32], out: &mut [f32]) {
        let [to, ho, wo] = g.out;
        let [_, hp, wp] = g.padded;
        let lanes = wo.min(8);
        let starts: Vec<usize> = (0..wo.div_ceil(8)).map(|v| if wo >= 8 { (8 * v).min(wo - 8) } else { 0 }).collect();
        let taps_per_channel = g.m * g.kernel.iter().product::<usize>();
        let mut taps = Taps::default();
        for t in 0..to {
            for &x0 in &starts {
                let mut y = 0;
                while y < ho {
                    let n = VECTORS.min(ho - y);
                    g.taps([(t, t), (y, y + n - 1), (x0, x0 + lanes - 1)], &mut taps);
                    // A short block repeats its last row (same values written twice).
                    let mut block = [((t * hp + y + n - 1) * wp + x0, (t * ho + y + n - 1) * wo + x0); VECTORS];
                    for (j, b) in block[..n].iter_mut().enumerate() {
                        *b = ((t * hp + y + j) * wp + x0, (t * ho + y + j) * wo + x0);
                    }
                    for o in 0..g.c {
                        let w_o = weights.as_ptr().add(o * taps_per_channel);
                        let sums = vector_block(&taps, w_o, xpad, &block);
                        let out_o = out.as_mut_ptr().add(o * to * ho * wo);
                        for (j, &(_, dst)) in block.iter().enumerate() {
                            if lanes == 8 {
                                _mm256_storeu_ps(out_o.add(dst), sums[j]);
                            } else {
                                let mut tmp = [0.0f32; 8];
                                _mm256_storeu_ps(tmp.as_mut_ptr(), sums[j]);
                                std::ptr::copy_nonoverlapping(tmp.as_ptr(), out_o.add(dst), lanes);
                            }
                        }
                    }
                    y += n;
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn vector_block(taps: &Taps, w_o: *const f32, xpad: &[f32], block: &[(usize, usize); VECTORS]) -> [__m256; VECTORS] {
        let x_ptr = xpad.as_ptr();
        let mut inputs = [x_ptr; VECTORS];
        for j in 0..VECTORS {
            inputs[j] = x_ptr.add(block[j].0);
        }
        let mut total = [_mm256_setzero_ps(); VECTORS];
        for rows in taps.rows.chunks(taps.rows_per_sum()) {
            let mut acc = [_mm256_setzero_ps(); VECTORS];
            for &(offset, tap) in rows {
                let w = w_o.add(tap);
                for dx in 0..taps.width {
                    let wv = _mm256_broadcast_ss(&*w.add(dx));
                    for j in 0..VECTORS {
                        acc[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(inputs[j].add(offset + dx)), acc[j]);
                    }
                }
            }
            for j in 0..VECTORS {
                total[j] = _mm256_add_ps(total[j], acc[j]);
            }
        }
        total
    }
}
