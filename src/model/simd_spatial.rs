//! The input gradient of a spatial (`1 x kh x kw`) convolution, vectorised over time for AVX-512 and
//! AVX2/FMA in float32: the stimulus gradient of `TorchSTSeparableConv3D`'s spatial stage (1 or 2 input channels,
//! 11x11 kernels on 18x16 frames for openretina's low-res models).
//!
//! The kernel is the same at every frame, so frames are the vector lanes: with the output gradient
//! laid out `(pixel, out, frame)`, each input pixel gathers, over the taps that reach it from a real
//! output pixel, `weight x 8 (16) frames` products; neighbouring input pixels (4 with AVX-512, 2 with
//! AVX2) share each loaded vector of the output gradient. Products of taps outside the kernel, only
//! at the ends of a block, are all that is computed in vain; the direct correlation along rows
//! (`simd_conv.rs`) had to multiply the zeros around the small output gradient for each 8-pixel
//! vector. Products are summed per kernel row, then the rows' sums added up.

/// The sizes of one spatial stage: `m` input and `o` output channels, kernel `(kh, kw)`, padding per
/// side of rows and columns, input frames `(h, w)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpatialGeometry {
    pub channels: [usize; 2],
    pub kernel: [usize; 2],
    pub padding: [(usize, usize); 2],
    pub input: [usize; 2],
}

impl SpatialGeometry {
    /// Output frame `(ho, wo)`, if the kernel fits the padded input.
    pub fn output(&self) -> Option<[usize; 2]> {
        let [h, w] = self.input;
        let ho = (h + self.padding[0].0 + self.padding[0].1 + 1).checked_sub(self.kernel[0]).filter(|&n| n > 0)?;
        let wo = (w + self.padding[1].0 + self.padding[1].1 + 1).checked_sub(self.kernel[1]).filter(|&n| n > 0)?;
        Some([ho, wo])
    }
}

pub trait SpatialGradient: Sized {
    /// The input gradient `(m, frames, h, w)` given the output gradient `(o, frames, ho, wo)` and the
    /// weights taps-first `(m, kh, kw, o)`, if a fast kernel exists for this type and CPU.
    fn spatial_input_gradient_fast(_g: &SpatialGeometry, _weights: &[Self], _grad: &[Self], _frames: usize) -> Option<Vec<Self>> {
        None
    }
}

impl SpatialGradient for f64 {}

impl SpatialGradient for f32 {
    fn spatial_input_gradient_fast(g: &SpatialGeometry, weights: &[f32], grad: &[f32], frames: usize) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        {
            let [m, o] = g.channels;
            let [ho, wo] = g.output()?;
            let fits = weights.len() == m * g.kernel[0] * g.kernel[1] * o && grad.len() == o * frames * ho * wo && frames > 0 && m > 0 && o > 0;
            if fits && super::simd::avx512() {
                // SAFETY: AVX-512F is present (checked above), sizes checked above.
                return Some(unsafe { x86::spatial_input_gradient_avx512(g, weights, grad, frames, [ho, wo]) });
            }
            if fits && super::simd::avx2_fma() {
                // SAFETY: AVX2 and FMA are present (checked above), sizes checked above.
                return Some(unsafe { x86::spatial_input_gradient_avx2(g, weights, grad, frames, [ho, wo]) });
            }
        }
        let _ = (g, weights, grad, frames);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::SpatialGeometry;
    use crate::model::scratch::Scratch;
    use crate::model::simd_lanes::{Vector, Ymm, Zmm};

    /// Blocks of 2 input pixels x 2 input channels x up to 3 vectors of 8 frames (12 of the 16
    /// registers).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spatial_input_gradient_avx2(g: &SpatialGeometry, weights: &[f32], grad: &[f32], frames: usize, out_size: [usize; 2]) -> Vec<f32> {
        gradient::<Ymm, 2, 3>(g, weights, grad, frames, out_size)
    }

    /// Blocks of 4 input pixels x 2 input channels x up to 3 vectors of 16 frames (24 of the 32
    /// registers).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn spatial_input_gradient_avx512(g: &SpatialGeometry, weights: &[f32], grad: &[f32], frames: usize, out_size: [usize; 2]) -> Vec<f32> {
        gradient::<Zmm, 4, 3>(g, weights, grad, frames, out_size)
    }

    /// Sizes of one call, and the current block: input channels from `i`, frames from `t0`.
    struct Sizes {
        o: usize,
        kh: usize,
        /// Columns of the widened kernel: `J - 1` zero columns on each side.
        kw_wide: usize,
        wo: usize,
        stride: usize,
        i: usize,
        t0: usize,
        /// Floats per input pixel and channel in `row`.
        pass: usize,
    }

    /// Per block of `J` neighbouring input pixels of a row, input channels in pairs and `NV` vectors
    /// of frames: for every output pixel that one of them reaches, its frames of each output channel
    /// are loaded once and multiplied by the `J x 2` weights of the taps that connect them (a zero
    /// weight where a pixel's tap falls outside the kernel: the kernel is widened by `J - 1` zero
    /// columns per side). Loading each output gradient vector once per pixel had been bound by the
    /// cache's bandwidth (2 products per load).
    #[inline(always)]
    unsafe fn gradient<V: Vector, const J: usize, const NV: usize>(g: &SpatialGeometry, weights: &[f32], grad: &[f32], frames: usize, [ho, wo]: [usize; 2]) -> Vec<f32> {
        let [m, o] = g.channels;
        let [kh, kw] = g.kernel;
        let [h, w] = g.input;
        let (top, left) = (g.padding[0].0, g.padding[1].0);
        let (p_out, p_in) = (ho * wo, h * w);
        // The output gradient `(pixel, out, frame)`, frames padded to whole vectors.
        let stride = frames.div_ceil(V::LANES) * V::LANES;
        let mut g_t = Scratch::<f32>::zeroed(p_out * o * stride);
        for c in 0..o {
            V::transpose(grad.as_ptr().add(c * frames * p_out), p_out, g_t.as_mut_ptr().add(c * stride), o * stride, frames, p_out);
        }
        // The weights `(m, kh, kw + 2 (J - 1), o)`, zero in the added columns.
        let kw_wide = kw + 2 * (J - 1);
        let mut wide = Scratch::<f32>::zeroed(m * kh * kw_wide * o);
        for (row, src) in weights.chunks_exact(kw * o).enumerate() {
            wide[(row * kw_wide + J - 1) * o..][..kw * o].copy_from_slice(src);
        }
        let mut out = vec![0.0f32; m * frames * p_in];
        let pass = NV * V::LANES;
        // One row of input pixels `(channel of the pair, x, frame of the pass)`.
        let mut row = Scratch::<f32>::zeroed(2 * (w + J) * pass);
        for t0 in (0..stride).step_by(pass) {
            let vectors = (stride - t0) / V::LANES;
            let n = (frames - t0).min(pass);
            for i in (0..m).step_by(2) {
                let pair = (m - i).min(2);
                let s = Sizes { o, kh, kw_wide, wo, stride, i, t0, pass };
                for y in 0..h {
                    // Kernel rows dy that reach input row y from output row y + top - dy.
                    let dys = (y + top + 1).saturating_sub(ho)..(y + top + 1).min(kh);
                    row.iter_mut().for_each(|v| *v = 0.0);
                    for x0 in (0..w).step_by(J) {
                        // Output columns that some pixel x0 .. x0 + J reaches (x + left - ox < kw).
                        let last = (x0 + J - 1).min(w - 1) + left;
                        let oxs = (x0 + left + 1).saturating_sub(kw)..(last + 1).min(wo);
                        let dst = row.as_mut_ptr().add(x0 * pass);
                        for dy in dys.clone() {
                            let at = (y + top - dy, dy, x0 + left);
                            match (pair, vectors) {
                                (2, 1) => block::<V, J, 2, 1>(&s, at, oxs.clone(), &wide, &g_t, dst, (w + J) * pass),
                                (2, 2) => block::<V, J, 2, 2>(&s, at, oxs.clone(), &wide, &g_t, dst, (w + J) * pass),
                                (2, _) => block::<V, J, 2, NV>(&s, at, oxs.clone(), &wide, &g_t, dst, (w + J) * pass),
                                (_, 1) => block::<V, J, 1, 1>(&s, at, oxs.clone(), &wide, &g_t, dst, (w + J) * pass),
                                (_, 2) => block::<V, J, 1, 2>(&s, at, oxs.clone(), &wide, &g_t, dst, (w + J) * pass),
                                _ => block::<V, J, 1, NV>(&s, at, oxs.clone(), &wide, &g_t, dst, (w + J) * pass),
                            }
                        }
                    }
                    for k in 0..pair {
                        let dst = out.as_mut_ptr().add(((i + k) * frames + t0) * p_in + y * w);
                        V::transpose(row.as_ptr().add(k * (w + J) * pass), pass, dst, p_in, w, n);
                    }
                }
            }
        }
        out
    }

    /// Kernel row `dy` for input pixels `x .. x + J` (padded coordinates; `at` = `(oy, dy, x)`) and
    /// input channels `i .. i + M`, `NV` vectors of frames: the products with output row `oy`,
    /// columns `oxs`, summed in registers, then added to `dst` (pixel `j`, channel `k` at
    /// `dst + k * channel + j * pass`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn block<V: Vector, const J: usize, const M: usize, const NV: usize>(
        s: &Sizes,
        (oy, dy, x): (usize, usize, usize),
        oxs: std::ops::Range<usize>,
        wide: &[f32],
        g_t: &[f32],
        dst: *mut f32,
        channel: usize,
    ) {
        let (o, stride) = (s.o, s.stride);
        let taps = s.kh * s.kw_wide * o;
        let mut acc = [[[V::zero(); NV]; M]; J];
        for ox in oxs {
            let src = g_t.as_ptr().add((oy * s.wo + ox) * o * stride + s.t0);
            // Pixel j's tap is x + j - ox, in the widened kernel x + j - ox + J - 1 (>= 0: ox <= x + J - 1).
            let w_row = wide.as_ptr().add(((s.i * s.kh + dy) * s.kw_wide + x + J - 1 - ox) * o);
            for c in 0..o {
                let mut gv = [V::zero(); NV];
                for v in 0..NV {
                    gv[v] = V::load(src.add(c * stride + v * V::LANES));
                }
                for k in 0..M {
                    for j in 0..J {
                        let wv = V::splat(w_row.add(k * taps + j * o + c));
                        for v in 0..NV {
                            acc[j][k][v] = V::fma(wv, gv[v], acc[j][k][v]);
                        }
                    }
                }
            }
        }
        for j in 0..J {
            for k in 0..M {
                for v in 0..NV {
                    let d = dst.add(k * channel + j * s.pass + v * V::LANES);
                    V::add(V::load(d), acc[j][k][v]).store(d);
                }
            }
        }
    }
}
