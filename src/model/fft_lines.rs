//! One axis of the 3D transforms of `fft_conv.rs`: the DFT of many lines of length `n`, of which only
//! the values at `inputs` can be non-zero and only those at `outputs` are wanted.
//!
//! `rustfft`'s AVX code is fast for some lengths (8, 12, 16, 24, 32, 48: 0.4-0.5 ns per point on this
//! machine) and 4-8x slower for others that the grids need (10, 15, 18, 20, 30: 2-4 ns per point). For
//! short lines a product with the DFT matrix, restricted to the non-zero inputs and the wanted
//! outputs, costs less (float32 with AVX2 or AVX-512: one vector FMA per 4 or 8 outputs and input, and
//! no zero padding to fill); each call takes the cheaper of the two by the per-line costs below.

use std::ops::Range;
use std::sync::Arc;

use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftNum, FftPlanner};

use super::fft_conv::FftKernels;

/// Longest line the matrix product is used for (its outputs are then at most 10 AVX2 accumulators).
pub const MATRIX_MAX: usize = 40;

/// Floats per matrix column: `n` interleaved complex values and room for a whole vector past any
/// output range's start.
fn column_len(n: usize) -> usize {
    2 * n + 16
}

/// The DFT (forward or inverse, unscaled) along lines of length `n`.
pub struct LineDft<F: FftNum> {
    n: usize,
    fft: Arc<dyn Fft<F>>,
    /// For the matrix product (float32 only): per input index `i`, the column `w^(i o)` over the
    /// outputs `o` as interleaved `(re, im)`, then the same with `(-im, re)`, each `column_len(n)`
    /// floats (zeros past `n`).
    matrix: Vec<f32>,
}

impl<F: FftNum + FftKernels> LineDft<F> {
    pub fn new(planner: &mut FftPlanner<F>, n: usize, inverse: bool) -> Self {
        let fft = if inverse { planner.plan_fft_inverse(n) } else { planner.plan_fft_forward(n) };
        let mut matrix = Vec::new();
        if F::MATRIX_DFT && n <= MATRIX_MAX {
            let len = column_len(n);
            matrix = vec![0.0f32; 2 * len * n];
            let sign = if inverse { 1.0 } else { -1.0 };
            for i in 0..n {
                let (column, swapped) = matrix[2 * len * i..2 * len * (i + 1)].split_at_mut(len);
                for o in 0..n {
                    // The exact phase of `i o mod n`, in float64, rounded once.
                    let phase = sign * 2.0 * std::f64::consts::PI * ((i * o) % n) as f64 / n as f64;
                    let (re, im) = (phase.cos() as f32, phase.sin() as f32);
                    column[2 * o] = re;
                    column[2 * o + 1] = im;
                    swapped[2 * o] = -im;
                    swapped[2 * o + 1] = re;
                }
            }
        }
        LineDft { n, fft, matrix }
    }

    pub fn scratch_len(&self) -> usize {
        self.fft.get_inplace_scratch_len()
    }

    /// Transform every line of `lines` (consecutive, `n` values each) in place. Values outside
    /// `inputs` are taken as zero whatever they hold; values outside `outputs` are left undefined.
    pub fn process(&self, lines: &mut [Complex<F>], inputs: Range<usize>, outputs: Range<usize>, scratch: &mut [Complex<F>]) {
        let n = self.n;
        debug_assert!(inputs.end <= n && outputs.end <= n && lines.len().is_multiple_of(n));
        if lines.is_empty() || outputs.is_empty() {
            return;
        }
        if !self.matrix.is_empty() {
            if let Some(lanes) = F::matrix_lanes() {
                let fits = lanes == 8 || outputs.len() <= x86_limits::AVX2_MAX_OUTPUTS;
                if fits && matrix_ns(inputs.len(), outputs.len(), lanes) < fft_ns(n) {
                    F::matrix_lines(&self.matrix, column_len(n), n, lines, inputs, outputs);
                    return;
                }
            }
        }
        if inputs != (0..n) {
            let zero = Complex::new(F::zero(), F::zero());
            for line in lines.chunks_exact_mut(n) {
                line[..inputs.start].fill(zero);
                line[inputs.end..].fill(zero);
            }
        }
        self.fft.process_with_scratch(lines, scratch);
    }
}

/// The real-to-complex DFT along lines of length `n` (`n / 2 + 1` bins) and its inverse, one line
/// at a time: `realfft`, or for short lines a matrix product over the non-zero inputs (forward) or
/// the wanted outputs (inverse) only; `realfft` runs a complex FFT of `n / 2` values, slow for the
/// lengths of 2 x 10, 2 x 15, 2 x 20 that grids along time take.
pub struct RealLineDft<F: FftNum> {
    n: usize,
    r2c: Arc<dyn RealToComplex<F>>,
    c2r: Arc<dyn ComplexToReal<F>>,
    /// Per input `t`: the bins' `w^(t k)` as interleaved `(re, im)`, `column_len(n / 2 + 1)` floats.
    forward_matrix: Vec<f32>,
    /// Per bin `k`: `c_k cos(2 pi t k / n)` over the outputs `t`, then `-c_k sin(...)`, `n + 16`
    /// floats each (`c_k` = 2 for the bins that stand for two, else 1).
    inverse_matrix: Vec<f32>,
}

impl<F: FftNum + FftKernels> RealLineDft<F> {
    pub fn new(planner: &mut RealFftPlanner<F>, n: usize) -> Self {
        let (r2c, c2r) = (planner.plan_fft_forward(n), planner.plan_fft_inverse(n));
        let half = n / 2 + 1;
        let (mut forward_matrix, mut inverse_matrix) = (Vec::new(), Vec::new());
        if F::MATRIX_DFT && n <= MATRIX_MAX {
            let phase = |t: usize, k: usize| 2.0 * std::f64::consts::PI * ((t * k) % n) as f64 / n as f64;
            let len = column_len(half);
            forward_matrix = vec![0.0f32; len * n];
            for t in 0..n {
                for k in 0..half {
                    forward_matrix[t * len + 2 * k] = phase(t, k).cos() as f32;
                    forward_matrix[t * len + 2 * k + 1] = -phase(t, k).sin() as f32;
                }
            }
            let len = n + 16;
            inverse_matrix = vec![0.0f32; 2 * len * half];
            for k in 0..half {
                let twice = if k == 0 || 2 * k == n { 1.0 } else { 2.0 };
                for t in 0..n {
                    inverse_matrix[2 * k * len + t] = (twice * phase(t, k).cos()) as f32;
                    // Zero for the first and (even length) last bins: their imaginary parts are ignored.
                    let sin = if k == 0 || 2 * k == n { 0.0 } else { phase(t, k).sin() };
                    inverse_matrix[(2 * k + 1) * len + t] = (-twice * sin) as f32;
                }
            }
        }
        RealLineDft { n, r2c, c2r, forward_matrix, inverse_matrix }
    }

    pub fn scratch_len(&self) -> usize {
        self.r2c.get_scratch_len().max(self.c2r.get_scratch_len())
    }

    /// The bins of `row` (length `n`), whose values outside `inputs` are taken as zero whatever
    /// they hold; `row` is left undefined.
    pub fn forward(&self, row: &mut [F], inputs: Range<usize>, bins: &mut [Complex<F>], scratch: &mut [Complex<F>]) {
        let half = self.n / 2 + 1;
        if !self.forward_matrix.is_empty() {
            if let Some(lanes) = F::matrix_lanes() {
                if lanes == 8 && real_matrix_ns(inputs.len(), half) < real_fft_ns(self.n) {
                    F::real_matrix_forward(&self.forward_matrix, column_len(half), row, inputs, bins);
                    return;
                }
            }
        }
        row[..inputs.start].fill(F::zero());
        row[inputs.end..].fill(F::zero());
        self.r2c.process_with_scratch(row, bins, scratch).expect("buffer sizes match the plan");
    }

    /// The real line (unscaled inverse) of `bins` (left undefined) at `outputs`, into `row`
    /// (length `n`; values elsewhere undefined). The imaginary parts of the first and (even
    /// length) last bins are ignored: rounding noise of a real signal's spectrum.
    pub fn inverse(&self, bins: &mut [Complex<F>], outputs: Range<usize>, row: &mut [F], scratch: &mut [Complex<F>]) {
        let half = self.n / 2 + 1;
        if !self.inverse_matrix.is_empty() {
            if let Some(lanes) = F::matrix_lanes() {
                if lanes == 8 && real_matrix_ns(half, outputs.len()) < real_fft_ns(self.n) {
                    F::real_matrix_inverse(&self.inverse_matrix, self.n + 16, bins, outputs, row);
                    return;
                }
            }
        }
        // realfft says when it ignored those imaginary parts.
        match self.c2r.process_with_scratch(bins, row, scratch) {
            Ok(()) | Err(realfft::FftError::InputValues(..)) => {}
            Err(e) => panic!("buffer sizes match the plan: {e}"),
        }
    }
}

/// Nanoseconds per line of the real matrix products, `inputs` x `outputs` complex values (CPU time
/// on this machine, lines of 10-50 values, the call included).
fn real_matrix_ns(inputs: usize, outputs: usize) -> f64 {
    0.33 * (inputs * outputs.div_ceil(8)) as f64 + 12.0
}

/// Nanoseconds per line of `realfft` (forward; its inverse costs about the same), which runs the
/// complex transform of half the length and a pass over it (CPU time on this machine).
fn real_fft_ns(n: usize) -> f64 {
    match n {
        10 => 15.0,
        12 => 25.0,
        16 => 20.0,
        20 => 50.0,
        40 => 75.0,
        50 => 95.0,
        _ if n.is_multiple_of(2) => fft_ns(n / 2) + 0.5 * n as f64 + 10.0,
        _ => fft_ns(n) + 10.0,
    }
}

#[cfg(target_arch = "x86_64")]
use x86 as x86_limits;
#[cfg(not(target_arch = "x86_64"))]
mod x86_limits {
    pub const AVX2_MAX_OUTPUTS: usize = 0;
}

/// Nanoseconds per line of the matrix product with `inputs` x `outputs` values, `lanes` complex
/// values per vector (fitted to its CPU time on this machine, lines of 10-40 values; the AVX-512
/// kernel takes two lines at a time).
fn matrix_ns(inputs: usize, outputs: usize, lanes: usize) -> f64 {
    let vectors = (inputs * outputs.div_ceil(lanes)) as f64;
    if lanes == 8 { 0.45 * vectors + 3.0 } else { 0.65 * vectors + 5.0 }
}

/// Nanoseconds per line of `rustfft`'s float32 transform of length `n` (AVX, CPU time on this
/// machine, lines in batches of ~4000 values).
fn fft_ns(n: usize) -> f64 {
    match n {
        1 => 0.0,
        4 | 5 | 8 => 2.8,
        6 | 9 | 12 | 16 => 5.0,
        10 => 29.0,
        15 => 36.0,
        18 => 34.0,
        20 => 37.5,
        24 => 12.0,
        25 => 71.0,
        27 => 22.5,
        30 => 62.0,
        32 => 15.0,
        36 => 20.0,
        40 => 35.0,
        _ => 1.5 * n as f64 * (n as f64).log2(),
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use rustfft::num_complex::Complex;

    /// Outputs the AVX2 kernel takes (6 vectors of 4 complex values, 12 accumulators).
    pub const AVX2_MAX_OUTPUTS: usize = 24;

    /// `LineDft::process` by the matrix: per line, the outputs in vectors of 8 complex values
    /// (AVX-512), `NV` of them, held in registers as four partial sums (real and imaginary parts of
    /// the inputs, even and odd inputs: independent FMA chains); the line is overwritten only after
    /// all its inputs are read.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn lines_avx512(matrix: &[f32], len: usize, n: usize, lines: &mut [Complex<f32>], inputs: Range<usize>, outputs: Range<usize>) {
        match (2 * outputs.len()).div_ceil(16) {
            1 => lines_avx512_n::<1>(matrix, len, n, lines, inputs, outputs),
            2 => lines_avx512_n::<2>(matrix, len, n, lines, inputs, outputs),
            3 => lines_avx512_n::<3>(matrix, len, n, lines, inputs, outputs),
            4 => lines_avx512_n::<4>(matrix, len, n, lines, inputs, outputs),
            _ => lines_avx512_n::<5>(matrix, len, n, lines, inputs, outputs),
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn lines_avx512_n<const NV: usize>(matrix: &[f32], len: usize, n: usize, lines: &mut [Complex<f32>], inputs: Range<usize>, outputs: Range<usize>) {
        assert!(outputs.end <= n && n <= super::MATRIX_MAX && 2 * outputs.len() <= 16 * NV && len >= 2 * outputs.start + 16 * NV);
        assert!(inputs.end <= n && matrix.len() >= 2 * len * n && lines.len().is_multiple_of(n));
        let values = 2 * outputs.len();
        // The last vector's lanes that hold outputs.
        let tail: __mmask16 = if values.is_multiple_of(16) { 0xffff } else { (1u16 << (values % 16)) - 1 };
        let m = matrix.as_ptr().add(2 * outputs.start);
        let store = |out: *mut f32, v: usize, sum: __m512| {
            if v + 1 < NV {
                _mm512_storeu_ps(out.add(16 * v), sum);
            } else {
                _mm512_mask_storeu_ps(out.add(16 * v), tail, sum);
            }
        };
        // Two lines at a time: each matrix vector loaded once for both (two FMAs per load), two
        // partial sums per line (real and imaginary parts of the inputs).
        let mut pairs = lines.chunks_exact_mut(2 * n);
        for pair in &mut pairs {
            let (l0, l1) = (pair.as_mut_ptr() as *mut f32, pair.as_mut_ptr().add(n) as *mut f32);
            let mut acc = [[_mm512_setzero_ps(); NV]; 4];
            for i in inputs.clone() {
                let (r0, i0) = (_mm512_set1_ps(*l0.add(2 * i)), _mm512_set1_ps(*l0.add(2 * i + 1)));
                let (r1, i1) = (_mm512_set1_ps(*l1.add(2 * i)), _mm512_set1_ps(*l1.add(2 * i + 1)));
                let column = m.add(2 * len * i);
                for v in 0..NV {
                    let (c, s) = (_mm512_loadu_ps(column.add(16 * v)), _mm512_loadu_ps(column.add(len + 16 * v)));
                    acc[0][v] = _mm512_fmadd_ps(r0, c, acc[0][v]);
                    acc[1][v] = _mm512_fmadd_ps(i0, s, acc[1][v]);
                    acc[2][v] = _mm512_fmadd_ps(r1, c, acc[2][v]);
                    acc[3][v] = _mm512_fmadd_ps(i1, s, acc[3][v]);
                }
            }
            for v in 0..NV {
                store(l0.add(2 * outputs.start), v, _mm512_add_ps(acc[0][v], acc[1][v]));
                store(l1.add(2 * outputs.start), v, _mm512_add_ps(acc[2][v], acc[3][v]));
            }
        }
        // The last line alone: four partial sums (even and odd inputs apart), independent chains.
        for line in pairs.into_remainder().chunks_exact_mut(n) {
            let lp = line.as_mut_ptr() as *mut f32;
            let mut acc = [[_mm512_setzero_ps(); NV]; 4];
            let step = |acc: &mut [[__m512; NV]; 4], u: usize, i: usize| {
                let (re, im) = (_mm512_set1_ps(*lp.add(2 * i)), _mm512_set1_ps(*lp.add(2 * i + 1)));
                let column = m.add(2 * len * i);
                for v in 0..NV {
                    acc[2 * u][v] = _mm512_fmadd_ps(re, _mm512_loadu_ps(column.add(16 * v)), acc[2 * u][v]);
                    acc[2 * u + 1][v] = _mm512_fmadd_ps(im, _mm512_loadu_ps(column.add(len + 16 * v)), acc[2 * u + 1][v]);
                }
            };
            let mut i = inputs.start;
            while i + 1 < inputs.end {
                step(&mut acc, 0, i);
                step(&mut acc, 1, i + 1);
                i += 2;
            }
            if i < inputs.end {
                step(&mut acc, 0, i);
            }
            for v in 0..NV {
                store(lp.add(2 * outputs.start), v, _mm512_add_ps(_mm512_add_ps(acc[0][v], acc[1][v]), _mm512_add_ps(acc[2][v], acc[3][v])));
            }
        }
    }

    /// `RealLineDft::forward` by the matrix: the inputs broadcast one at a time (read in place),
    /// the bins in vectors of 8, two partial sums (even and odd inputs).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn real_forward_avx512(matrix: &[f32], len: usize, row: &[f32], inputs: Range<usize>, bins: &mut [Complex<f32>]) {
        match (2 * bins.len()).div_ceil(16) {
            1 => real_forward_n::<1>(matrix, len, row, inputs, bins),
            2 => real_forward_n::<2>(matrix, len, row, inputs, bins),
            3 => real_forward_n::<3>(matrix, len, row, inputs, bins),
            4 => real_forward_n::<4>(matrix, len, row, inputs, bins),
            5 => real_forward_n::<5>(matrix, len, row, inputs, bins),
            _ => panic!("lines of at most {} values", super::MATRIX_MAX),
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn real_forward_n<const NV: usize>(matrix: &[f32], len: usize, row: &[f32], inputs: Range<usize>, bins: &mut [Complex<f32>]) {
        let values = 2 * bins.len();
        assert!(values <= 16 * NV && len >= 16 * NV && inputs.end <= row.len() && matrix.len() >= len * row.len());
        let tail: __mmask16 = if values.is_multiple_of(16) { 0xffff } else { (1u16 << (values % 16)) - 1 };
        let mut acc = [[_mm512_setzero_ps(); NV]; 2];
        let step = |acc: &mut [__m512; NV], t: usize| {
            let x = _mm512_set1_ps(*row.get_unchecked(t));
            let column = matrix.as_ptr().add(t * len);
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(x, _mm512_loadu_ps(column.add(16 * v)), *a);
            }
        };
        let mut t = inputs.start;
        while t + 1 < inputs.end {
            step(&mut acc[0], t);
            step(&mut acc[1], t + 1);
            t += 2;
        }
        if t < inputs.end {
            step(&mut acc[0], t);
        }
        let out = bins.as_mut_ptr() as *mut f32;
        for v in 0..NV {
            let sum = _mm512_add_ps(acc[0][v], acc[1][v]);
            if v + 1 < NV {
                _mm512_storeu_ps(out.add(16 * v), sum);
            } else {
                _mm512_mask_storeu_ps(out.add(16 * v), tail, sum);
            }
        }
    }

    /// `RealLineDft::inverse` by the matrix: per bin two FMAs per vector of 16 outputs.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn real_inverse_avx512(matrix: &[f32], len: usize, bins: &[Complex<f32>], outputs: Range<usize>, row: &mut [f32]) {
        match outputs.len().div_ceil(16) {
            1 => real_inverse_n::<1>(matrix, len, bins, outputs, row),
            2 => real_inverse_n::<2>(matrix, len, bins, outputs, row),
            3 => real_inverse_n::<3>(matrix, len, bins, outputs, row),
            _ => panic!("lines of at most {} values", super::MATRIX_MAX),
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn real_inverse_n<const NV: usize>(matrix: &[f32], len: usize, bins: &[Complex<f32>], outputs: Range<usize>, row: &mut [f32]) {
        let values = outputs.len();
        assert!(values <= 16 * NV && len >= outputs.start + 16 * NV && outputs.end <= row.len() && matrix.len() >= 2 * len * bins.len());
        let tail: __mmask16 = if values.is_multiple_of(16) { 0xffff } else { (1u16 << (values % 16)) - 1 };
        // Four partial sums (real and imaginary parts, even and odd bins): independent FMA chains.
        let mut acc = [[_mm512_setzero_ps(); NV]; 4];
        let m = matrix.as_ptr().add(outputs.start);
        let step = |acc: &mut [[__m512; NV]; 4], u: usize, k: usize| {
            let (re, im) = (_mm512_set1_ps(bins.get_unchecked(k).re), _mm512_set1_ps(bins.get_unchecked(k).im));
            let (cos, sin) = (m.add(2 * k * len), m.add((2 * k + 1) * len));
            for v in 0..NV {
                acc[2 * u][v] = _mm512_fmadd_ps(re, _mm512_loadu_ps(cos.add(16 * v)), acc[2 * u][v]);
                acc[2 * u + 1][v] = _mm512_fmadd_ps(im, _mm512_loadu_ps(sin.add(16 * v)), acc[2 * u + 1][v]);
            }
        };
        let mut k = 0;
        while k + 1 < bins.len() {
            step(&mut acc, 0, k);
            step(&mut acc, 1, k + 1);
            k += 2;
        }
        if k < bins.len() {
            step(&mut acc, 0, k);
        }
        let out = row.as_mut_ptr().add(outputs.start);
        for v in 0..NV {
            let sum = _mm512_add_ps(_mm512_add_ps(acc[0][v], acc[1][v]), _mm512_add_ps(acc[2][v], acc[3][v]));
            if v + 1 < NV {
                _mm512_storeu_ps(out.add(16 * v), sum);
            } else {
                _mm512_mask_storeu_ps(out.add(16 * v), tail, sum);
            }
        }
    }

    /// The same with AVX2 vectors of 4 complex values and two partial sums (real and imaginary
    /// parts of the inputs), at most `AVX2_MAX_OUTPUTS` outputs.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn lines_avx2(matrix: &[f32], len: usize, n: usize, lines: &mut [Complex<f32>], inputs: Range<usize>, outputs: Range<usize>) {
        match (2 * outputs.len()).div_ceil(8) {
            1 => lines_avx2_n::<1>(matrix, len, n, lines, inputs, outputs),
            2 => lines_avx2_n::<2>(matrix, len, n, lines, inputs, outputs),
            3 => lines_avx2_n::<3>(matrix, len, n, lines, inputs, outputs),
            4 => lines_avx2_n::<4>(matrix, len, n, lines, inputs, outputs),
            5 => lines_avx2_n::<5>(matrix, len, n, lines, inputs, outputs),
            _ => lines_avx2_n::<6>(matrix, len, n, lines, inputs, outputs),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn lines_avx2_n<const NV: usize>(matrix: &[f32], len: usize, n: usize, lines: &mut [Complex<f32>], inputs: Range<usize>, outputs: Range<usize>) {
        assert!(outputs.end <= n && n <= super::MATRIX_MAX && 2 * outputs.len() <= 8 * NV && len >= 2 * outputs.start + 8 * NV);
        assert!(inputs.end <= n && matrix.len() >= 2 * len * n && lines.len().is_multiple_of(n));
        let values = 2 * outputs.len();
        let full = values / 8;
        let m = matrix.as_ptr().add(2 * outputs.start);
        let mut rest = [0.0f32; 8];
        for line in lines.chunks_exact_mut(n) {
            let lp = line.as_mut_ptr() as *mut f32;
            let mut acc = [[_mm256_setzero_ps(); NV]; 2];
            for i in inputs.clone() {
                let (re, im) = (_mm256_set1_ps(*lp.add(2 * i)), _mm256_set1_ps(*lp.add(2 * i + 1)));
                let column = m.add(2 * len * i);
                for v in 0..NV {
                    acc[0][v] = _mm256_fmadd_ps(re, _mm256_loadu_ps(column.add(8 * v)), acc[0][v]);
                    acc[1][v] = _mm256_fmadd_ps(im, _mm256_loadu_ps(column.add(len + 8 * v)), acc[1][v]);
                }
            }
            let out = lp.add(2 * outputs.start);
            for v in 0..NV {
                let sum = _mm256_add_ps(acc[0][v], acc[1][v]);
                if v < full {
                    _mm256_storeu_ps(out.add(8 * v), sum);
                } else {
                    _mm256_storeu_ps(rest.as_mut_ptr(), sum);
                    std::ptr::copy_nonoverlapping(rest.as_ptr(), out.add(8 * v), values - 8 * v);
                }
            }
        }
    }
}
