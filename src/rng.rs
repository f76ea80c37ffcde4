//! A small, fixed random number generator (SplitMix64) so that seeded runs give the same bytes on
//! every machine and every version of this crate's dependencies.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator for one item (e.g. one MEI) derived from a global seed and the item's name, so
    /// that the item gets the same numbers whatever else runs.
    pub fn for_item(seed: u64, item: &str) -> Self {
        // FNV-1a of the name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in item.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut r = Rng(seed ^ h);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let n1 = self.next_u64() >> 11;
        let n2 = self.next_u64() >> 11;
        box_muller(n1, n2)
    }

    /// `out.len()` draws of [`normal`](Self::normal), the same values: eight at a time, so that the
    /// arithmetic runs in vector lanes (an MEI's start stimulus is 28800 of them).
    pub fn fill_normal(&mut self, out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx2_fma() {
            // SAFETY: `avx2_fma` checked that the CPU has AVX2.
            return unsafe { self.fill_normal_avx2(out) };
        }
        self.fill_normal_kernel(out)
    }

    // The same code built for AVX2 (no fused multiply-adds: the same results).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fill_normal_avx2(&mut self, out: &mut [f64]) {
        self.fill_normal_kernel(out)
    }

    #[inline(always)]
    fn fill_normal_kernel(&mut self, out: &mut [f64]) {
        for chunk in out.chunks_mut(8) {
            let (mut n1, mut n2) = ([0u64; 8], [0u64; 8]);
            for (a, b) in n1.iter_mut().zip(&mut n2).take(chunk.len()) {
                *a = self.next_u64() >> 11;
                *b = self.next_u64() >> 11;
            }
            for ((o, &a), &b) in chunk.iter_mut().zip(&n1).zip(&n2) {
                *o = box_muller(a, b);
            }
        }
    }
}

/// A standard normal from two uniforms given as their 53 bits (`u = n / 2^53`, as [`Rng::uniform`]):
/// `sqrt(-2 ln u1) cos(2 pi u2)` with `u1 = 1 - n1 / 2^53` in (0, 1] (keeps ln finite).
#[inline(always)]
fn box_muller(n1: u64, n2: u64) -> f64 {
    let u1 = 1.0 - n1 as f64 * (1.0 / (1u64 << 53) as f64);
    (-2.0 * ln_unit(u1)).sqrt() * cos_two_pi(n2)
}

// The logarithm and cosine of Box-Muller are computed here from +, -, *, / only (no fused
// multiply-add): the same bits on every machine, where the C library's `ln` and `cos` differ between
// platforms, and inlined (a start stimulus of 28800 normals took 1.7 ms through the library calls,
// 6% of a small model's MEI). Both are within about one ulp (tests below: against the library).

/// `ln x` for `x` in (0, 1] with at least 53 - 11 bits of fraction (what `normal` draws): `x = 2^k m`
/// with `m` in (sqrt(2)/2, sqrt(2)], `ln m = 2 atanh(s)` with `s = f / (2 + f)`, `f = m - 1`, by the
/// minimax polynomial of fdlibm's `__ieee754_log` (|error| < 2^-58.45 on its interval).
#[inline(always)]
fn ln_unit(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238_164_9e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
    const LG: [f64; 7] = [
        6.666_666_666_666_735_130e-1,
        3.999_999_999_940_941_908e-1,
        2.857_142_874_366_239_149e-1,
        2.222_219_843_214_978_396e-1,
        1.818_357_216_161_805_012e-1,
        1.531_383_769_920_937_332e-1,
        1.479_819_860_511_658_591e-1,
    ];
    // Without branches (a mispredicted one costs as much as the polynomial): halving m is one off
    // its exponent field.
    let bits = x.to_bits();
    let m_bits = (bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000;
    let above = (f64::from_bits(m_bits) > std::f64::consts::SQRT_2) as u64;
    let m = f64::from_bits(m_bits - (above << 52));
    let k = (bits >> 52) as i64 - 1023 + above as i64;
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG[1] + w * (LG[3] + w * LG[5]));
    let t2 = z * (LG[0] + w * (LG[2] + w * (LG[4] + w * LG[6])));
    let r = t1 + t2;
    let half_f_sq = 0.5 * f * f;
    let k = k as f64;
    k * LN2_HI - ((half_f_sq - (s * (half_f_sq + r) + k * LN2_LO)) - f)
}

/// `cos(2 pi u)` for `u = n / 2^53` in [0, 1): `u = q / 4 + r` with `|r| <= 1/8`, both exact from
/// the integer, then the sine or cosine of `2 pi r` (|.| <= pi/4) by the minimax polynomials of
/// fdlibm's `__kernel_sin` and `__kernel_cos`, the quadrant picked without a branch.
#[inline(always)]
fn cos_two_pi(n: u64) -> f64 {
    const S: [f64; 6] = [
        -1.666_666_666_666_663_243_48e-1,
        8.333_333_333_322_489_461_24e-3,
        -1.984_126_982_985_794_931_34e-4,
        2.755_731_370_707_006_767_89e-6,
        -2.505_076_025_340_686_341_95e-8,
        1.589_690_995_211_550_102_21e-10,
    ];
    const C: [f64; 6] = [
        4.166_666_666_666_660_190_37e-2,
        -1.388_888_888_887_410_957_49e-3,
        2.480_158_728_947_672_941_78e-5,
        -2.755_731_435_139_066_330_35e-7,
        2.087_572_321_298_174_827_90e-9,
        -1.135_964_755_778_819_482_65e-11,
    ];
    // q = round(4u) (halves up), r = u - q / 4 = (n - q 2^51) / 2^53.
    let q = (n + (1 << 50)) >> 51;
    let r = (n as i64 - (q << 51) as i64) as f64 * (1.0 / (1u64 << 53) as f64);
    let x = r * std::f64::consts::TAU;
    let z = x * x;
    let sin = x + z * x * (S[0] + z * (S[1] + z * (S[2] + z * (S[3] + z * (S[4] + z * S[5])))));
    let cos = 1.0 - (0.5 * z - z * (z * (C[0] + z * (C[1] + z * (C[2] + z * (C[3] + z * (C[4] + z * C[5])))))));
    // cos(x + q pi/2) for q = 0 ..= 4: sin for odd q, negated for q = 1, 2 (a sign-bit flip).
    let value = if q & 1 == 1 { sin } else { cos };
    let negate = ((q + 1) >> 1) & 1;
    f64::from_bits(value.to_bits() ^ (negate << 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 pi minus its f64 value.
    const TAU_LO: f64 = 2.449_293_598_294_706_4e-16;

    /// Within about one ulp of the C library's functions (which are within one ulp of the truth)
    /// over a million draws, and exact where the answer is: ln 1 = 0, cos 0 = 1. A wrong constant or
    /// quadrant fails it.
    #[test]
    fn ln_and_cos_match_the_library() {
        let mut rng = Rng::new(3);
        let (mut worst_ln, mut worst_cos) = (0.0f64, 0.0f64);
        for i in 0..1_000_000 {
            // Both ends of (0, 1] and everything between, also tiny values.
            let x = match i % 3 {
                0 => 1.0 - rng.uniform(),
                1 => (1.0 - rng.uniform()) * 2f64.powi(-(i % 60)),
                _ => 1.0 - rng.uniform() * 1e-6,
            };
            let expected = x.ln();
            let ulp = f64::EPSILON * expected.abs().max(f64::MIN_POSITIVE);
            worst_ln = worst_ln.max((ln_unit(x) - expected).abs() / ulp);
            // The library's cos at 2 pi u in double-double (hi + lo), to first order in lo: a rounded
            // argument alone would be up to 3e-16 off.
            let n = rng.next_u64() >> 11;
            let u = n as f64 / (1u64 << 53) as f64;
            let hi = std::f64::consts::TAU * u;
            let lo = std::f64::consts::TAU.mul_add(u, -hi) + TAU_LO * u;
            let expected = hi.cos() - hi.sin() * lo;
            worst_cos = worst_cos.max((cos_two_pi(n) - expected).abs() / f64::EPSILON);
        }
        // Measured: ln 1.0, cos 1.0 (in units of 2^-52 relative and absolute).
        assert!(worst_ln <= 1.5, "ln: {worst_ln} x 2^-52 relative");
        assert!(worst_cos <= 2.0, "cos: {worst_cos} x 2^-52");
        assert_eq!(ln_unit(1.0), 0.0);
        // The batch gives the draws of `normal`, bit for bit, also for a length not a multiple of 8.
        let (mut a, mut b) = (Rng::new(11), Rng::new(11));
        let mut batch = vec![0.0; 1003];
        a.fill_normal(&mut batch);
        assert!(batch.iter().all(|&v| v.to_bits() == b.normal().to_bits()));
        assert_eq!(a.next_u64(), b.next_u64());
        assert_eq!(cos_two_pi(0), 1.0);
        assert_eq!(cos_two_pi(1 << 52), -1.0);
        // The last quadrant's top end: u = 1 - 2^-53.
        assert!((cos_two_pi((1 << 53) - 1) - 1.0).abs() <= f64::EPSILON);
    }
}
