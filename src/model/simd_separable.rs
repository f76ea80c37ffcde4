//! The separable convolution of `st_separable.rs` with its temporal kernel applied first, hand-vectorised
//! for float32 (AVX-512, or AVX2/FMA).
//!
//! Each (out, in) pair's kernel is `temporal x spatial`, so the two stages can run in either order.
//! Spatial first (the portable code) applies every spatial kernel to all `tp` padded input frames;
//! temporal first applies them to the `to` output frames only (`to = tp - kt + 1`, e.g. 10 of 20 for
//! Karamanlis' last layer), at the price of a temporal step on input pixels and a spatial step that no
//! longer shares an input pixel across output channels: a per-(in, out) "depthwise" correlation, one
//! vector of 16 output channels per pixel. The layer picks the order with fewer products.
//!
//! Work is done one output frame and one group of 16 output channels at a time, so the values a
//! step reads (one input channel's temporal result, one output frame) stay in cache; nothing of the
//! size `(in, frames, pixels, out)` is kept. The input gradient runs the transposed steps in the
//! opposite order: the spatial adjoint (a correlation of the zero-padded output gradient with the
//! flipped kernels, the same kernel as the forward step), then the temporal adjoint, summing over
//! output channels. Output channels are padded to a multiple of 16 with zero weights.

use crate::model::config::Padding;

/// Output channels per vector group.
pub const GROUP: usize = 16;

/// One separable convolution's weights laid out for these kernels, and its sizes.
pub struct TemporalFirst<'a, F> {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kt: usize,
    pub k: usize,
    pub padding: Padding,
    /// `[in][dt][out rounded up to 16]`.
    pub temporal: &'a [F],
    /// `[in][group][dy * k + dx][16]`.
    pub spatial: &'a [F],
    /// The same with the taps flipped: `[in][group][(k - 1 - dy) * k + (k - 1 - dx)][16]`.
    pub spatial_flipped: &'a [F],
}

impl<F> TemporalFirst<'_, F> {
    pub fn groups(&self) -> usize {
        self.out_channels.div_ceil(GROUP)
    }

    /// Output `(to, ho, wo)` for an input `(t, h, w)` (the kernel must fit).
    fn output(&self, [t, h, w]: [usize; 3]) -> [usize; 3] {
        let [(t0, t1), (h0, h1), (w0, w1)] = self.padding;
        [t + t0 + t1 + 1 - self.kt, h + h0 + h1 + 1 - self.k, w + w0 + w1 + 1 - self.k]
    }

    fn weights_fit(&self) -> bool {
        let g = self.groups() * GROUP;
        self.temporal.len() == self.in_channels * self.kt * g
            && self.spatial.len() == self.in_channels * g * self.k * self.k
            && self.spatial_flipped.len() == self.spatial.len()
    }

    /// Values these kernels allocate beyond input and output, `(forward, backward)`; None if that
    /// overflows.
    pub fn work_values(&self, input: [usize; 3]) -> Option<(u64, u64)> {
        let [to, ho, wo] = self.output(input);
        let [_, h, w] = input;
        let g = self.groups() * GROUP;
        let (hp, wp) = (h + self.padding[1].0 + self.padding[1].1, w + self.padding[2].0 + self.padding[2].1);
        let count = |dims: &[usize]| dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        // Forward: one output frame of every group, one padded temporal-step frame.
        let forward = count(&[g, ho, wo])?.checked_add(count(&[hp, wp, GROUP])?)?;
        // Backward: the padded output gradient, one input channel's spatial adjoint.
        let padded = count(&[g, to, ho + 2 * (self.k - 1), wo + 2 * (self.k - 1)])?;
        let backward = padded.checked_add(count(&[g, to, h, w])?)?;
        Some((forward, backward))
    }
}

pub trait SeparableKernels: Sized {
    /// Whether `temporal_first_forward` and `_backward` run for this type on this CPU (they may
    /// still refuse inconsistent sizes).
    fn temporal_first_available() -> bool {
        false
    }

    /// The convolution `(out, to, ho, wo)` of `x` `(in, t, h, w)`, if a fast kernel exists for this
    /// type and CPU (else `None`, and the caller runs the portable code).
    fn temporal_first_forward(_conv: &TemporalFirst<'_, Self>, _x: &[Self], _input: [usize; 3]) -> Option<Vec<Self>> {
        None
    }

    /// The gradient `(in, t, h, w)` with respect to the input, given the output's `grad` `(out, to,
    /// ho, wo)`, if a fast kernel exists.
    fn temporal_first_backward(_conv: &TemporalFirst<'_, Self>, _grad: &[Self], _input: [usize; 3]) -> Option<Vec<Self>> {
        None
    }
}

impl SeparableKernels for f64 {}

impl SeparableKernels for f32 {
    fn temporal_first_available() -> bool {
        super::simd::avx2_fma()
    }

    fn temporal_first_forward(conv: &TemporalFirst<'_, f32>, x: &[f32], input: [usize; 3]) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        if conv.weights_fit() && x.len() == conv.in_channels * input.iter().product::<usize>() {
            if super::simd::avx512() {
                // SAFETY: AVX-512F is present (checked above); the sizes are checked above and every
                // buffer is allocated inside from them.
                return Some(unsafe { x86::forward_avx512(conv, x, input) });
            }
            if super::simd::avx2_fma() {
                // SAFETY: as above, with AVX2 and FMA.
                return Some(unsafe { x86::forward_avx2(conv, x, input) });
            }
        }
        let _ = (conv, x, input);
        None
    }

    fn temporal_first_backward(conv: &TemporalFirst<'_, f32>, grad: &[f32], input: [usize; 3]) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        if conv.weights_fit() && grad.len() == conv.out_channels * conv.output(input).iter().product::<usize>() {
            if super::simd::avx512() {
                // SAFETY: AVX-512F is present (checked above); sizes as in the forward pass.
                return Some(unsafe { x86::backward_avx512(conv, grad, input) });
            }
            if super::simd::avx2_fma() {
                // SAFETY: as above, with AVX2 and FMA.
                return Some(unsafe { x86::backward_avx2(conv, grad, input) });
            }
        }
        let _ = (conv, grad, input);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{TemporalFirst, GROUP};
    use crate::model::simd_lanes::{Vector, YmmPair, Zmm};

    /// Input pixels per tile of the temporal adjoint (64 pixels x 16 channels x 4 bytes = 4 KiB per
    /// group and frame).
    const ADJOINT_TILE: usize = 64;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn forward_avx512(conv: &TemporalFirst<'_, f32>, x: &[f32], input: [usize; 3]) -> Vec<f32> {
        forward::<Zmm, 12>(conv, x, input)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn forward_avx2(conv: &TemporalFirst<'_, f32>, x: &[f32], input: [usize; 3]) -> Vec<f32> {
        forward::<YmmPair, 6>(conv, x, input)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn backward_avx512(conv: &TemporalFirst<'_, f32>, grad: &[f32], input: [usize; 3]) -> Vec<f32> {
        backward::<Zmm, 12>(conv, grad, input)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn backward_avx2(conv: &TemporalFirst<'_, f32>, grad: &[f32], input: [usize; 3]) -> Vec<f32> {
        backward::<YmmPair, 6>(conv, grad, input)
    }

    /// Per output frame and group of 16 output channels: for each input channel, its temporal step
    /// into a zero-bordered padded frame `u`, then the spatial correlation of `u` added to the frame.
    #[inline(always)]
    unsafe fn forward<V: Vector, const B: usize>(conv: &TemporalFirst<'_, f32>, x: &[f32], input: [usize; 3]) -> Vec<f32> {
        let [t_in, h, w] = input;
        let [to, ho, wo] = conv.output(input);
        let (kt, k) = (conv.kt, conv.k);
        let [(pad_t, _), (pad_h, pad_h1), (pad_w, pad_w1)] = conv.padding;
        let (hp, wp) = (h + pad_h + pad_h1, w + pad_w + pad_w1);
        let (groups, p, pin) = (conv.groups(), ho * wo, h * w);
        let g16 = groups * GROUP;
        let o_n = conv.out_channels;
        let mut frame = vec![0f32; groups * p * GROUP];
        let mut u = vec![0f32; hp * wp * GROUP];
        let mut out = vec![0f32; o_n * to * p];
        for t_out in 0..to {
            frame.iter_mut().for_each(|v| *v = 0.0);
            // Input frames `t_out + dt - pad_t` that exist.
            let dts = pad_t.saturating_sub(t_out)..kt.min((t_in + pad_t).saturating_sub(t_out));
            for g in 0..groups {
                let acc = frame.as_mut_ptr().add(g * p * GROUP);
                for i in 0..conv.in_channels {
                    let x_i = x.as_ptr().add(i * t_in * pin);
                    let tw = conv.temporal.as_ptr().add(i * kt * g16 + g * GROUP);
                    for y in 0..h {
                        let dst = u.as_mut_ptr().add(((y + pad_h) * wp + pad_w) * GROUP);
                        temporal_row::<V>(x_i.add(y * w), t_out, pad_t, pin, dts.clone(), tw, g16, dst, w);
                    }
                    let sw = conv.spatial.as_ptr().add((i * groups + g) * k * k * GROUP);
                    correlate::<V, B>(u.as_ptr(), wp, (0, 0), sw, k, acc, ho, wo, true);
                }
            }
            for o in 0..o_n {
                let (g, c) = (o / GROUP, o % GROUP);
                let dst = &mut out[(o * to + t_out) * p..][..p];
                for (q, d) in dst.iter_mut().enumerate() {
                    *d = frame[(g * p + q) * GROUP + c];
                }
            }
        }
        out
    }

    /// `dst[x][c] = sum_{dt in dts} tw[dt * stride + c] * x_i[t_out + dt - pad_t][x]` for the `w`
    /// pixels of one row (`x_row` is the row in frame 0; frames are `pin` apart).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn temporal_row<V: Vector>(
        x_row: *const f32,
        t_out: usize,
        pad_t: usize,
        pin: usize,
        dts: std::ops::Range<usize>,
        tw: *const f32,
        stride: usize,
        dst: *mut f32,
        w: usize,
    ) {
        let mut x = 0;
        while x + 4 <= w {
            let mut acc = [V::zero(); 4];
            for dt in dts.clone() {
                let wv = V::load(tw.add(dt * stride));
                let src = x_row.add((t_out + dt - pad_t) * pin + x);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = V::fma(V::splat(src.add(j)), wv, *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                a.store(dst.add((x + j) * GROUP));
            }
            x += 4;
        }
        while x < w {
            let mut a = V::zero();
            for dt in dts.clone() {
                let src = x_row.add((t_out + dt - pad_t) * pin + x);
                a = V::fma(V::splat(src), V::load(tw.add(dt * stride)), a);
            }
            a.store(dst.add(x * GROUP));
            x += 1;
        }
    }

    /// The per-channel correlation of a frame of 16-channel pixels `src` (rows of `src_w` pixels) with
    /// 16-channel kernels `sw` `[dy * k + dx][16]`: `dst[y][x] (+)= sum_{dy,dx} sw[dy, dx] * src[y0 + y +
    /// dy][x0 + x + dx]` for the `oh x ow` pixels of `dst`, added to `dst` when `accumulate`. In
    /// vertical strips of at most `B` pixels (as equal as possible), top to bottom: a block of a strip
    /// shares each weight load across its pixels, and the `k` input rows it reads are mostly those the
    /// block above read, still in the L1 cache.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn correlate<V: Vector, const B: usize>(
        src: *const f32,
        src_w: usize,
        (y0, x0): (usize, usize),
        sw: *const f32,
        k: usize,
        dst: *mut f32,
        oh: usize,
        ow: usize,
        accumulate: bool,
    ) {
        let strips = ow.div_ceil(B);
        let mut x = 0;
        for s in 0..strips {
            let width = ow / strips + usize::from(s < ow % strips);
            let (col, out) = (src.add((y0 * src_w + x0 + x) * GROUP), dst.add(x * GROUP));
            let strip = Strip { col, src_w, sw, k, out, ow, oh, accumulate };
            match width {
                1 => strip.run::<V, 1>(),
                2 => strip.run::<V, 2>(),
                3 => strip.run::<V, 3>(),
                4 => strip.run::<V, 4>(),
                5 => strip.run::<V, 5>(),
                6 => strip.run::<V, 6>(),
                7 => strip.run::<V, 7>(),
                8 => strip.run::<V, 8>(),
                9 => strip.run::<V, 9>(),
                10 => strip.run::<V, 10>(),
                11 => strip.run::<V, 11>(),
                _ => strip.run::<V, 12>(),
            }
            x += width;
        }
    }

    /// One vertical strip of `correlate`'s output: `col` is its top-left input pixel, `out` its
    /// top-left output pixel.
    struct Strip {
        col: *const f32,
        src_w: usize,
        sw: *const f32,
        k: usize,
        out: *mut f32,
        ow: usize,
        oh: usize,
        accumulate: bool,
    }

    impl Strip {
        #[inline(always)]
        unsafe fn run<V: Vector, const N: usize>(&self) {
            for y in 0..self.oh {
                let row = self.col.add(y * self.src_w * GROUP);
                block::<V, N>(row, self.src_w, self.sw, self.k, self.out.add(y * self.ow * GROUP), self.accumulate);
            }
        }
    }

    /// `N` neighbouring output pixels of `correlate`, accumulators in registers.
    #[inline(always)]
    unsafe fn block<V: Vector, const N: usize>(row: *const f32, src_w: usize, sw: *const f32, k: usize, out: *mut f32, accumulate: bool) {
        let mut acc = [V::zero(); N];
        if accumulate {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = V::load(out.add(j * GROUP));
            }
        }
        for dy in 0..k {
            let r = row.add(dy * src_w * GROUP);
            let wr = sw.add(dy * k * GROUP);
            for dx in 0..k {
                let wv = V::load(wr.add(dx * GROUP));
                let rx = r.add(dx * GROUP);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = V::fma(V::load(rx.add(j * GROUP)), wv, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            a.store(out.add(j * GROUP));
        }
    }

    /// The transposed steps in reverse order. The output gradient, channels in groups of 16 and zero
    /// padded by `k - 1` on each side, is correlated with the flipped spatial kernels of one input
    /// channel (the spatial adjoint, over input pixels); the temporal adjoint then sums over output
    /// frames and channels per input pixel.
    #[inline(always)]
    unsafe fn backward<V: Vector, const B: usize>(conv: &TemporalFirst<'_, f32>, grad: &[f32], input: [usize; 3]) -> Vec<f32> {
        let [t_in, h, w] = input;
        let [to, ho, wo] = conv.output(input);
        let (kt, k) = (conv.kt, conv.k);
        let [(pad_t, _), (pad_h, _), (pad_w, _)] = conv.padding;
        let (groups, p, pin) = (conv.groups(), ho * wo, h * w);
        let g16 = groups * GROUP;
        let (gh, gw) = (ho + 2 * (k - 1), wo + 2 * (k - 1));
        let gframe = gh * gw * GROUP;
        let mut gpad = vec![0f32; groups * to * gframe];
        for o in 0..conv.out_channels {
            let (g, c) = (o / GROUP, o % GROUP);
            for t_out in 0..to {
                let src = &grad[(o * to + t_out) * p..][..p];
                let base = (g * to + t_out) * gframe;
                for y in 0..ho {
                    for x in 0..wo {
                        gpad[base + ((y + k - 1) * gw + x + k - 1) * GROUP + c] = src[y * wo + x];
                    }
                }
            }
        }
        // The spatial adjoint of one input channel, every group and output frame: `[g][t_out][pin][16]`.
        let mut gu = vec![0f32; groups * to * pin * GROUP];
        let mut grad_x = vec![0f32; conv.in_channels * t_in * pin];
        for i in 0..conv.in_channels {
            for g in 0..groups {
                let sw = conv.spatial_flipped.as_ptr().add((i * groups + g) * k * k * GROUP);
                for t_out in 0..to {
                    let src = gpad.as_ptr().add((g * to + t_out) * gframe);
                    let dst = gu.as_mut_ptr().add((g * to + t_out) * pin * GROUP);
                    correlate::<V, B>(src, gw, (pad_h, pad_w), sw, k, dst, h, w, false);
                }
            }
            // Temporal adjoint: grad_x[i][t][q] = sum_{g, dt} temporal[i][dt][g] . gu[g][t + pad_t - dt][q].
            // In tiles of pixels, so that the tile's `gu` values (every group and frame) stay in cache
            // while every input frame reads them.
            let tw = conv.temporal.as_ptr().add(i * kt * g16);
            let gx = grad_x.as_mut_ptr().add(i * t_in * pin);
            for q0 in (0..pin).step_by(ADJOINT_TILE) {
                let q1 = (q0 + ADJOINT_TILE).min(pin);
                for t in 0..t_in {
                    // Output frames t_out = t + pad_t - dt that exist.
                    let dts = (t + pad_t + 1).saturating_sub(to)..kt.min(t + pad_t + 1);
                    let mut q = q0;
                    while q + 8 <= q1 {
                        let mut acc = [V::zero(); 8];
                        for g in 0..groups {
                            for dt in dts.clone() {
                                let wv = V::load(tw.add(dt * g16 + g * GROUP));
                                let src = gu.as_ptr().add(((g * to + t + pad_t - dt) * pin + q) * GROUP);
                                for (j, a) in acc.iter_mut().enumerate() {
                                    *a = V::fma(V::load(src.add(j * GROUP)), wv, *a);
                                }
                            }
                        }
                        for (j, a) in acc.iter().enumerate() {
                            *gx.add(t * pin + q + j) = a.sum();
                        }
                        q += 8;
                    }
                    while q < q1 {
                        let mut a = V::zero();
                        for g in 0..groups {
                            for dt in dts.clone() {
                                let wv = V::load(tw.add(dt * g16 + g * GROUP));
                                a = V::fma(V::load(gu.as_ptr().add(((g * to + t + pad_t - dt) * pin + q) * GROUP)), wv, a);
                            }
                        }
                        *gx.add(t * pin + q) = a.sum();
                        q += 1;
                    }
                }
            }
        }
        grad_x
    }
}
