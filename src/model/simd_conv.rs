//! A direct stride-1 3D correlation, hand-vectorised for AVX-512 and AVX2/FMA in float32: the dense `Conv3d`'s
//! forward pass and (as the correlation of the output gradient with the flipped, transposed kernel)
//! its input gradient. Unlike the column-matrix route it reads each input frame only for the output
//! frames that exist (no products for padded frames that are then dropped) and keeps no `(frames x
//! pixels x kernel frames x channels)` intermediate, which did not fit in cache on real sizes.
//!
//! Two register-blocked kernels, chosen by the number of output channels:
//! - channels last (a multiple of 8): with AVX-512 and a multiple of 16, rectangles of up to 4 rows x
//!   8 output pixels (at most 24) x 16 channels, each row read through one pointer (1.5-1.7x the
//!   AVX2 speed on `zoo_conv_separable`'s layers); with AVX2, 6 output pixels x 16 channels (or 12 x
//!   8) per block, each input value broadcast once for 2 weight vectors;
//! - pixels along x (any channel count, e.g. the stimulus' 1 or 2 channels of an input gradient):
//!   6 vectors of 8 neighbouring output pixels of one channel per block, each weight broadcast once.
//!
//! Each block of outputs visits only the kernel taps that land on real (not padding) input values:
//! the input gradient's correlation runs on an output gradient padded by nearly a kernel per side, and
//! on small frames most taps would multiply zeros. Long float32 sums lose precision, so products are
//! summed in blocks of about 128 taps, then the block sums added up. Used when the CPU has AVX2 and
//! FMA (else the portable code in `conv3d.rs`).

use crate::model::config::Padding;
use crate::model::scratch::Scratch;

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
                if c.out_channels.is_multiple_of(16) && super::simd::avx512() {
                    // SAFETY: AVX-512F is present (checked above); `Geometry` sizes the padded input
                    // with slack for the widest vector read and the kernels stay inside it.
                    return Some(unsafe { x86::correlate_avx512(&geometry, c, &xpad) });
                }
                // SAFETY: as above, with AVX2 and FMA.
                return Some(unsafe { x86::correlate_avx2(&geometry, c, &xpad) });
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

    fn pad(&self, input: &[f32], [t_in, h_in, w_in]: [usize; 3], padding: Padding) -> Scratch<f32> {
        let [tp, hp, wp] = self.padded;
        let mut xpad = Scratch::zeroed(self.m * tp * hp * wp + SLACK);
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

    use super::{Correlation, Geometry, Scratch, Taps};
    use crate::model::simd_lanes::{Vector, Ymm, Zmm};

    /// Vectors of 8 pixels per block of the pixels-along-x kernel.
    const VECTORS: usize = 6;

    /// Expands to a `match` of the block width `n` onto `pixel_block::<$v, n, 2>` (`$wide`) or
    /// `pixel_block::<$v, n, 1>`, for the listed widths (register blocks are compile-time sizes).
    macro_rules! block_of_width {
        ($n:expr, $wide:expr, $block:expr, $v:ty, [$($w1:literal)*], [$($w2:literal)*]) => {
            if $wide {
                match $n {
                    $($w2 => pixel_block::<$v, $w2, 2>($block),)*
                    _ => unreachable!("block width {} above the largest", $n),
                }
            } else {
                match $n {
                    $($w1 => pixel_block::<$v, $w1, 1>($block),)*
                    _ => unreachable!("block width {} above the largest", $n),
                }
            }
        };
    }

    /// Output channels in 8-lane vectors: blocks of up to 6 pixels x 2 vectors or 12 pixels x 1 (12
    /// of the 16 registers); other channel counts along x.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn correlate_avx2(g: &Geometry, c: &Correlation<'_, f32>, xpad: &[f32]) -> Vec<f32> {
        if g.c.is_multiple_of(8) {
            channels_last::<Ymm>(g, c.weights_channels_last, xpad, [12, 6], |n, wide, block| {
                block_of_width!(n, wide, block, Ymm, [1 2 3 4 5 6 7 8 9 10 11 12], [1 2 3 4 5 6])
            })
        } else {
            let [to, ho, wo] = g.out;
            let mut out = vec![0.0f32; g.c * to * ho * wo];
            pixels_along_x(g, c.weights, xpad, &mut out);
            out
        }
    }

    /// Output channels a multiple of 16, one 16-lane vector per block, in rectangles of up to 4 rows
    /// x 8 pixels and at most 24 pixels (of the 32 registers); rows of a rectangle are read through
    /// one pointer each, its pixels at constant offsets (24 pointers did not fit in registers).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn correlate_avx512(g: &Geometry, c: &Correlation<'_, f32>, xpad: &[f32]) -> Vec<f32> {
        rectangles::<Zmm>(g, c.weights_channels_last, xpad, [4, 8], 24, |rows, columns, block| {
            macro_rules! rect {
                ($(($r:literal, $x:literal))*) => {
                    match (rows, columns) {
                        $(($r, $x) => rect_block::<Zmm, $r, $x>(block),)*
                        _ => unreachable!("rectangle of {rows} x {columns} pixels"),
                    }
                };
            }
            rect!((1, 1) (1, 2) (1, 3) (1, 4) (1, 5) (1, 6) (1, 7) (1, 8)
                  (2, 1) (2, 2) (2, 3) (2, 4) (2, 5) (2, 6) (2, 7) (2, 8)
                  (3, 1) (3, 2) (3, 3) (3, 4) (3, 5) (3, 6) (3, 7) (3, 8)
                  (4, 1) (4, 2) (4, 3) (4, 4) (4, 5) (4, 6))
        })
    }

    /// One rectangle of `rectangles`: its top-left output pixel at `corner` in the padded input, at
    /// `out` in the channels-last output, lanes from `lane0`.
    struct Rect<'a> {
        taps: &'a Taps,
        c: usize,
        w_cl: *const f32,
        xpad: *const f32,
        corner: usize,
        /// Padded input row length, output row length (pixels).
        wp: usize,
        wo: usize,
        lane0: usize,
        out: *mut f32,
    }

    /// The correlation channels last (`out[q][o]`, output pixels `q` in `(t, y, x)` order, then moved
    /// to `(o, t, y, x)`), one vector of channels at a time, each output frame cut into rectangles of
    /// at most `most` `[rows, columns]` and `pixels` pixels, as equal as possible; `run(rows,
    /// columns, rect)` runs one.
    #[inline(always)]
    unsafe fn rectangles<V: Vector>(g: &Geometry, w_cl: &[f32], xpad: &[f32], most: [usize; 2], pixels: usize, run: impl Fn(usize, usize, &Rect<'_>)) -> Vec<f32> {
        let [to, ho, wo] = g.out;
        let [_, hp, wp] = g.padded;
        let frame = ho * wo;
        let mut out_cl = Scratch::<f32>::zeroed(to * frame * g.c);
        let mut taps = Taps::default();
        let segments = wo.div_ceil(most[1]);
        let widest = wo.div_ceil(segments);
        let bands = ho.div_ceil(most[0].min(pixels / widest));
        for t in 0..to {
            let mut y = 0;
            for band in 0..bands {
                let rows = ho / bands + usize::from(band < ho % bands);
                let mut x = 0;
                for segment in 0..segments {
                    let columns = wo / segments + usize::from(segment < wo % segments);
                    g.taps([(t, t), (y, y + rows - 1), (x, x + columns - 1)], &mut taps);
                    let out = out_cl.as_mut_ptr().add(((t * ho + y) * wo + x) * g.c);
                    let corner = (t * hp + y) * wp + x;
                    for lane0 in (0..g.c).step_by(V::LANES) {
                        let rect = Rect { taps: &taps, c: g.c, w_cl: w_cl.as_ptr(), xpad: xpad.as_ptr(), corner, wp, wo, lane0, out };
                        run(rows, columns, &rect);
                    }
                    x += columns;
                }
                y += rows;
            }
        }
        to_channels_first::<V>(&out_cl, g.c)
    }

    /// `R x X` output pixels x one vector of channels: each run of taps summed in registers, then
    /// added to the output (zero at the start).
    #[inline(always)]
    unsafe fn rect_block<V: Vector, const R: usize, const X: usize>(b: &Rect<'_>) {
        let (c, taps) = (b.c, b.taps);
        let w_ptr = b.w_cl.add(b.lane0);
        let mut rows = [b.xpad; R];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = b.xpad.add(b.corner + r * b.wp);
        }
        for chunk in taps.rows.chunks(taps.rows_per_sum()) {
            let mut acc = [[V::zero(); X]; R];
            for &(offset, tap) in chunk {
                let mut w = w_ptr.add(tap * c);
                for dx in 0..taps.width {
                    let wv = V::load(w);
                    for r in 0..R {
                        let src = rows[r].add(offset + dx);
                        for j in 0..X {
                            acc[r][j] = V::fma(V::splat(src.add(j)), wv, acc[r][j]);
                        }
                    }
                    w = w.add(c);
                }
            }
            for r in 0..R {
                for j in 0..X {
                    let o = b.out.add((r * b.wo + j) * c + b.lane0);
                    V::add(V::load(o), acc[r][j]).store(o);
                }
            }
        }
    }

    /// `(q, o)` values as `(o, q)`.
    #[inline(always)]
    unsafe fn to_channels_first<V: Vector>(out_cl: &[f32], c: usize) -> Vec<f32> {
        let n = out_cl.len() / c;
        let mut out = vec![0.0f32; out_cl.len()];
        V::transpose(out_cl.as_ptr(), c, out.as_mut_ptr(), n, n, c);
        out
    }

    /// One register block of `channels_last`: output pixels at `bases` in the padded input, lanes
    /// from `lane0`, the first pixel's output at `out`.
    struct Block<'a> {
        taps: &'a Taps,
        c: usize,
        w_cl: *const f32,
        xpad: *const f32,
        bases: &'a [usize],
        lane0: usize,
        out: *mut f32,
    }

    /// The correlation channels last (`out[q][o]`, output pixels `q` in `(t, y, x)` order), then
    /// moved to `(o, t, y, x)`. Each frame is cut into blocks of as equal a size as possible, at most
    /// `most[0]` pixels for one vector of channels, `most[1]` for two; `run(n, wide, block)` runs a
    /// block of `n` pixels with two vectors (`wide`) or one.
    #[inline(always)]
    unsafe fn channels_last<V: Vector>(g: &Geometry, w_cl: &[f32], xpad: &[f32], most: [usize; 2], run: impl Fn(usize, bool, &Block<'_>)) -> Vec<f32> {
        let [to, ho, wo] = g.out;
        let [_, hp, wp] = g.padded;
        let frame = ho * wo;
        let mut out_cl = Scratch::<f32>::zeroed(to * frame * g.c);
        let mut taps = Taps::default();
        let mut bases = vec![0usize; most[0].max(most[1])];
        let pixels = if g.c >= 2 * V::LANES { most[1] } else { most[0] };
        let blocks = frame.div_ceil(pixels);
        for t in 0..to {
            let mut p = 0;
            for b in 0..blocks {
                let n = frame / blocks + usize::from(b < frame % blocks);
                let (y0, y1) = (p / wo, (p + n - 1) / wo);
                let xs = if y0 == y1 { (p % wo, (p + n - 1) % wo) } else { (0, wo - 1) };
                g.taps([(t, t), (y0, y1), xs], &mut taps);
                for (j, b) in bases[..n].iter_mut().enumerate() {
                    *b = (t * hp + (p + j) / wo) * wp + (p + j) % wo;
                }
                let out_p = out_cl.as_mut_ptr().add((t * frame + p) * g.c);
                let mut lane0 = 0;
                while lane0 < g.c {
                    let wide = lane0 + 2 * V::LANES <= g.c;
                    let block = Block { taps: &taps, c: g.c, w_cl: w_cl.as_ptr(), xpad: xpad.as_ptr(), bases: &bases[..n], lane0, out: out_p };
                    run(n, wide, &block);
                    lane0 += if wide { 2 * V::LANES } else { V::LANES };
                }
                p += n;
            }
        }
        to_channels_first::<V>(&out_cl, g.c)
    }

    /// `P` output pixels x `NV` vectors of channels from `lane0`: each run of taps summed in
    /// registers, then added to the output (zero at the start; pixel `j` at `out + j * c`).
    #[inline(always)]
    unsafe fn pixel_block<V: Vector, const P: usize, const NV: usize>(b: &Block<'_>) {
        let (c, taps) = (b.c, b.taps);
        let w_ptr = b.w_cl.add(b.lane0);
        let mut inputs = [b.xpad; P];
        for j in 0..P {
            inputs[j] = b.xpad.add(b.bases[j]);
        }
        for rows in taps.rows.chunks(taps.rows_per_sum()) {
            let mut acc = [[V::zero(); NV]; P];
            for &(offset, tap) in rows {
                let mut w = w_ptr.add(tap * c);
                for dx in 0..taps.width {
                    let mut wv = [V::zero(); NV];
                    for v in 0..NV {
                        wv[v] = V::load(w.add(v * V::LANES));
                    }
                    for j in 0..P {
                        let p = V::splat(inputs[j].add(offset + dx));
                        for v in 0..NV {
                            acc[j][v] = V::fma(p, wv[v], acc[j][v]);
                        }
                    }
                    w = w.add(c);
                }
            }
            for j in 0..P {
                for v in 0..NV {
                    let o = b.out.add(j * c + b.lane0 + v * V::LANES);
                    V::add(V::load(o), acc[j][v]).store(o);
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
