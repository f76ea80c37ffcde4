//! The input gradient of a spatial (`1 x kh x kw`) convolution, vectorised over time for AVX2/FMA in
//! float32: the stimulus gradient of `TorchSTSeparableConv3D`'s spatial stage (1 or 2 input channels,
//! 11x11 kernels on 18x16 frames for openretina's low-res models).
//!
//! The kernel is the same at every frame, so frames are the vector lanes: with the output gradient
//! laid out `(pixel, out, frame)`, each input pixel gathers, over the taps that reach it from a real
//! output pixel, `weight x 8 frames` products. Only real products are computed; the direct correlation
//! along rows (`simd_conv.rs`) had to multiply the zeros around the small output gradient for each
//! 8-pixel vector. Products are summed per kernel row, then the rows' sums added up.

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
            if fits && super::simd::avx2_fma() {
                // SAFETY: AVX2 and FMA are present (checked above), sizes checked above.
                return Some(unsafe { x86::spatial_input_gradient(g, weights, grad, frames, [ho, wo]) });
            }
        }
        let _ = (g, weights, grad, frames);
        None
    }
}

/// Frames per pass: up to 4 vectors of 8.
const FRAMES_PER_PASS: usize = 32;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{SpatialGeometry, FRAMES_PER_PASS};

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spatial_input_gradient(g: &SpatialGeometry, weights: &[f32], grad: &[f32], frames: usize, [ho, wo]: [usize; 2]) -> Vec<f32> {
        let [m, o] = g.channels;
        let [kh, kw] = g.kernel;
        let [h, w] = g.input;
        let (top, left) = (g.padding[0].0, g.padding[1].0);
        let (p_out, p_in) = (ho * wo, h * w);
        // The output gradient `(pixel, out, frame)`, frames padded to whole vectors.
        let stride = frames.div_ceil(8) * 8;
        let mut g_t = vec![0.0f32; p_out * o * stride];
        for c in 0..o {
            for t in 0..frames {
                let src = &grad[(c * frames + t) * p_out..][..p_out];
                for (q, &v) in src.iter().enumerate() {
                    *g_t.get_unchecked_mut((q * o + c) * stride + t) = v;
                }
            }
        }
        let mut out = vec![0.0f32; m * frames * p_in];
        // Per input channel of the pair, the frames of the pass.
        let mut column;
        for t0 in (0..stride).step_by(FRAMES_PER_PASS) {
            let vectors = ((stride - t0) / 8).min(FRAMES_PER_PASS / 8);
            let n = (frames - t0).min(FRAMES_PER_PASS);
            for i in (0..m).step_by(2) {
                let pair = (m - i).min(2);
                for y in 0..h {
                    // Kernel rows dy that reach input row y from output row y + top - dy.
                    let dy = ((y + top + 1).saturating_sub(ho), (y + top + 1).min(kh));
                    for x in 0..w {
                        let dx = ((x + left + 1).saturating_sub(wo), (x + left + 1).min(kw));
                        let pixel = Pixel { dy, dx, y: y + top, x: x + left, wo, o, kh, kw, i, stride, t0 };
                        column = [[0.0; FRAMES_PER_PASS]; 2];
                        match (pair, vectors) {
                            (2, 1) => gather::<2, 1>(&pixel, weights, &g_t, &mut column),
                            (2, 2) => gather::<2, 2>(&pixel, weights, &g_t, &mut column),
                            (2, 3) => gather::<2, 3>(&pixel, weights, &g_t, &mut column),
                            (2, _) => gather::<2, 4>(&pixel, weights, &g_t, &mut column),
                            (_, 1) => gather::<1, 1>(&pixel, weights, &g_t, &mut column),
                            (_, 2) => gather::<1, 2>(&pixel, weights, &g_t, &mut column),
                            (_, 3) => gather::<1, 3>(&pixel, weights, &g_t, &mut column),
                            _ => gather::<1, 4>(&pixel, weights, &g_t, &mut column),
                        }
                        for (k, values) in column[..pair].iter().enumerate() {
                            for (dt, &v) in values[..n].iter().enumerate() {
                                *out.get_unchecked_mut(((i + k) * frames + t0 + dt) * p_in + y * w + x) = v;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// One input pixel: the kernel rows and columns that reach it, its position in padded coordinates
    /// and the sizes to index with.
    struct Pixel {
        dy: (usize, usize),
        dx: (usize, usize),
        y: usize,
        x: usize,
        wo: usize,
        o: usize,
        kh: usize,
        kw: usize,
        i: usize,
        stride: usize,
        t0: usize,
    }

    /// Input channels `i .. i + M` of one pixel, `V` vectors of frames from `t0`: per kernel row, the
    /// products over its columns and all output channels summed in registers, then added to `column`.
    #[inline(always)]
    unsafe fn gather<const M: usize, const V: usize>(p: &Pixel, weights: &[f32], g_t: &[f32], column: &mut [[f32; FRAMES_PER_PASS]; 2]) {
        let (w_ptr, g_ptr) = (weights.as_ptr(), g_t.as_ptr());
        let taps = p.kh * p.kw * p.o;
        for dy in p.dy.0..p.dy.1 {
            let oy = p.y - dy;
            let mut acc = [[_mm256_setzero_ps(); V]; M];
            for dx in p.dx.0..p.dx.1 {
                let q = oy * p.wo + p.x - dx;
                let w_tap = w_ptr.add(((p.i * p.kh + dy) * p.kw + dx) * p.o);
                let src = g_ptr.add(q * p.o * p.stride + p.t0);
                for c in 0..p.o {
                    let mut gv = [_mm256_setzero_ps(); V];
                    for v in 0..V {
                        gv[v] = _mm256_loadu_ps(src.add(c * p.stride + 8 * v));
                    }
                    for k in 0..M {
                        let wv = _mm256_broadcast_ss(&*w_tap.add(k * taps + c));
                        for v in 0..V {
                            acc[k][v] = _mm256_fmadd_ps(wv, gv[v], acc[k][v]);
                        }
                    }
                }
            }
            for k in 0..M {
                for v in 0..V {
                    let dst = column[k].as_mut_ptr().add(8 * v);
                    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), acc[k][v]));
                }
            }
        }
    }
}
