//! ELU (`exp(x) - 1` below zero) on whole float32 buffers, vectorised for AVX2/FMA: the cores apply it
//! to every layer output, and the scalar `expm1f` of the C library took 7-10% of an MEI.
//!
//! Each `exp(x) - 1` is computed in float64 (`2^k (1 + expm1(r)) - 1`, `|r| <= ln 2 / 2`, a degree-12
//! Taylor polynomial: relative error below 1e-14) and rounded once to float32: the correctly rounded
//! result except in cases a 1e-14 error can tip, where the C library's `expm1f` (within 1 ulp) may also
//! differ by one ulp.

pub trait VectorMath: Sized {
    /// ELU (alpha 1) in place, if a fast kernel exists for this type and CPU.
    fn elu_fast(_x: &mut [Self]) -> bool {
        false
    }
}

impl VectorMath for f64 {}

impl VectorMath for f32 {
    fn elu_fast(x: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if super::simd::avx2_fma() {
            // SAFETY: AVX2 and FMA are present (checked above).
            unsafe { x86::elu(x) };
            return true;
        }
        let _ = x;
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `1 / n!` for n = 2 ..= 12, highest first (Horner).
    const INVERSE_FACTORIALS: [f64; 11] = [
        1.0 / 479001600.0,
        1.0 / 39916800.0,
        1.0 / 3628800.0,
        1.0 / 362880.0,
        1.0 / 40320.0,
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn elu(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(4);
        for chunk in &mut chunks {
            let v = _mm_loadu_ps(chunk.as_ptr());
            _mm_storeu_ps(chunk.as_mut_ptr(), elu4(v));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut tmp = [0.0f32; 4];
            tmp[..rest.len()].copy_from_slice(rest);
            let v = elu4(_mm_loadu_ps(tmp.as_ptr()));
            _mm_storeu_ps(tmp.as_mut_ptr(), v);
            rest.copy_from_slice(&tmp[..rest.len()]);
        }
    }

    /// ELU of 4 floats: `x` where it is not below zero (zeros keep their sign, NaN stays NaN, as
    /// the scalar code), else `exp(x) - 1`.
    #[inline(always)]
    unsafe fn elu4(v: __m128) -> __m128 {
        let e = _mm256_cvtpd_ps(expm1(_mm256_cvtps_pd(v)));
        let keep = _mm_cmp_ps::<_CMP_NLT_UQ>(v, _mm_setzero_ps());
        _mm_blendv_ps(e, v, keep)
    }

    /// `exp(x) - 1` of 4 doubles below zero (clamped to [-40, 0]: below -40 the result is -1 to
    /// float32 precision and so is this).
    #[inline(always)]
    unsafe fn expm1(x: __m256d) -> __m256d {
        const LN2_HI: f64 = 6.931_471_803_691_238_2e-1;
        const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
        let x = _mm256_min_pd(_mm256_max_pd(x, _mm256_set1_pd(-40.0)), _mm256_setzero_pd());
        let k = _mm256_round_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_pd(x, _mm256_set1_pd(std::f64::consts::LOG2_E)));
        let r = _mm256_fnmadd_pd(k, _mm256_set1_pd(LN2_HI), x);
        let r = _mm256_fnmadd_pd(k, _mm256_set1_pd(LN2_LO), r);
        // expm1(r) = r + r^2 (1/2 + r (1/6 + ...)).
        let mut p = _mm256_set1_pd(INVERSE_FACTORIALS[0]);
        for &c in &INVERSE_FACTORIALS[1..] {
            p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(c));
        }
        let em1 = _mm256_fmadd_pd(_mm256_mul_pd(r, r), p, r);
        // 2^k from its exponent bits (k is between -58 and 0).
        let k32 = _mm256_cvtpd_epi32(k);
        let bits = _mm256_slli_epi64::<52>(_mm256_add_epi64(_mm256_cvtepi32_epi64(k32), _mm256_set1_epi64x(1023)));
        let two_k = _mm256_castsi256_pd(bits);
        // 2^k (1 + em1) - 1 = (2^k - 1) + 2^k em1; for k = 0 exactly em1.
        _mm256_fmadd_pd(two_k, em1, _mm256_sub_pd(two_k, _mm256_set1_pd(1.0)))
    }
}
