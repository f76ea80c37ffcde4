//! Float32 vectors of 8 (AVX2), 16 (AVX-512, or two AVX2 registers) lanes behind one trait, so that
//! a kernel of `simd_conv.rs`, `simd_temporal.rs`, `simd_spatial.rs` or `simd_separable.rs` is
//! written once and compiled for both:
//! everything here is `inline(always)` into entry points that enable the instruction set, and each
//! entry point picks its own register blocks (32 AVX-512 registers hold twice the accumulators of
//! AVX2's 16). Which one runs is decided by `simd::avx512()`.

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Vector, Ymm, YmmPair, Zmm};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    pub trait Vector: Copy {
        const LANES: usize;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        /// The first `n < LANES` lanes from `p`, the others zero (reads nothing past them).
        unsafe fn load_first(p: *const f32, n: usize) -> Self;
        /// The first `n < LANES` lanes to `p` (writes nothing past them).
        unsafe fn store_first(self, p: *mut f32, n: usize);
        /// `*p` in every lane.
        unsafe fn splat(p: *const f32) -> Self;
        /// `a * b + c`.
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
        unsafe fn add(a: Self, b: Self) -> Self;
        /// The sum of all lanes.
        unsafe fn sum(self) -> f32;

        /// `dst[c * dst_stride + r] = src[r * src_stride + c]` for `r < rows`, `c < cols`.
        #[inline(always)]
        unsafe fn transpose(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize, rows: usize, cols: usize) {
            transpose_scalar(src, src_stride, dst, dst_stride, (0, rows), (0, cols));
        }
    }

    /// `Vector::transpose` for rows `r.0 .. r.1` and columns `c.0 .. c.1`, one value at a time.
    #[inline(always)]
    unsafe fn transpose_scalar(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize, r: (usize, usize), c: (usize, usize)) {
        for row in r.0..r.1 {
            for col in c.0..c.1 {
                *dst.add(col * dst_stride + row) = *src.add(row * src_stride + col);
            }
        }
    }

    /// Eight lanes, AVX2 and FMA.
    #[derive(Clone, Copy)]
    pub struct Ymm(__m256);

    impl Ymm {
        #[inline(always)]
        unsafe fn mask(n: usize) -> __m256i {
            _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
        }
    }

    impl Vector for Ymm {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Ymm(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Ymm(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            Ymm(_mm256_maskload_ps(p, Self::mask(n)))
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            _mm256_maskstore_ps(p, Self::mask(n), self.0)
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            Ymm(_mm256_broadcast_ss(&*p))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Ymm(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Ymm(_mm256_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            let sum4 = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps(self.0, 1));
            let sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
            _mm_cvtss_f32(_mm_add_ss(sum2, _mm_shuffle_ps(sum2, sum2, 1)))
        }
    }

    /// Sixteen lanes as two AVX2 registers: kernels written for 16-channel groups run on AVX2 too.
    #[derive(Clone, Copy)]
    pub struct YmmPair(Ymm, Ymm);

    impl Vector for YmmPair {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            YmmPair(Ymm::zero(), Ymm::zero())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            YmmPair(Ymm::load(p), Ymm::load(p.add(8)))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            self.0.store(p);
            self.1.store(p.add(8));
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            if n >= 8 {
                YmmPair(Ymm::load(p), Ymm::load_first(p.add(8), n - 8))
            } else {
                YmmPair(Ymm::load_first(p, n), Ymm::zero())
            }
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            if n >= 8 {
                self.0.store(p);
                self.1.store_first(p.add(8), n - 8);
            } else {
                self.0.store_first(p, n);
            }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            let v = Ymm::splat(p);
            YmmPair(v, v)
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            YmmPair(Ymm::fma(a.0, b.0, c.0), Ymm::fma(a.1, b.1, c.1))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            YmmPair(Ymm::add(a.0, b.0), Ymm::add(a.1, b.1))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            Ymm::add(self.0, self.1).sum()
        }
    }

    /// Sixteen lanes, AVX-512F.
    #[derive(Clone, Copy)]
    pub struct Zmm(__m512);

    impl Vector for Zmm {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Zmm(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Zmm(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            Zmm(_mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p))
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, self.0)
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            Zmm(_mm512_set1_ps(*p))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Zmm(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Zmm(_mm512_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            _mm512_reduce_add_ps(self.0)
        }

        /// Blocks of 16 x 16 values transposed in registers, the edges one value at a time (value by
        /// value, the compiler made scatters of the strided stores: a tenth of the spatial
        /// gradient's time).
        #[inline(always)]
        unsafe fn transpose(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize, rows: usize, cols: usize) {
            let (rows16, cols16) = (rows - rows % 16, cols - cols % 16);
            for r0 in (0..rows16).step_by(16) {
                for c0 in (0..cols16).step_by(16) {
                    let mut v = [_mm512_setzero_ps(); 16];
                    for (i, v) in v.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(src.add((r0 + i) * src_stride + c0));
                    }
                    transpose16(&mut v);
                    for (i, v) in v.iter().enumerate() {
                        _mm512_storeu_ps(dst.add((c0 + i) * dst_stride + r0), *v);
                    }
                }
            }
            transpose_scalar(src, src_stride, dst, dst_stride, (0, rows16), (cols16, cols));
            transpose_scalar(src, src_stride, dst, dst_stride, (rows16, rows), (0, cols));
        }
    }

    /// The 16 x 16 matrix of rows `r` transposed in place: pairs of rows interleaved by floats, then
    /// by pairs of floats (each 128-bit lane `k` of row `4i + e` then holds column `4k + e` of rows
    /// `4i .. 4i + 4`), then 128-bit lanes gathered across the four row groups.
    #[inline(always)]
    unsafe fn transpose16(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let pd = |v: __m512| _mm512_castps_pd(v);
        for i in 0..4 {
            let (a, b, c, d) = (pd(t[4 * i]), pd(t[4 * i + 1]), pd(t[4 * i + 2]), pd(t[4 * i + 3]));
            r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
            r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
            r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
            r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
        }
        let rows = *r;
        for e in 0..4 {
            let (a, b, c, d) = (rows[e], rows[4 + e], rows[8 + e], rows[12 + e]);
            let u0 = _mm512_shuffle_f32x4::<0x44>(a, b);
            let u1 = _mm512_shuffle_f32x4::<0x44>(c, d);
            let u2 = _mm512_shuffle_f32x4::<0xEE>(a, b);
            let u3 = _mm512_shuffle_f32x4::<0xEE>(c, d);
            r[e] = _mm512_shuffle_f32x4::<0x88>(u0, u1);
            r[4 + e] = _mm512_shuffle_f32x4::<0xDD>(u0, u1);
            r[8 + e] = _mm512_shuffle_f32x4::<0x88>(u2, u3);
            r[12 + e] = _mm512_shuffle_f32x4::<0xDD>(u2, u3);
        }
    }
}
