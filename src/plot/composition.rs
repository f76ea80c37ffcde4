//! The numbers of the MEI figure, as openretina's `plot_stimulus_composition` computes them: per colour
//! channel a rank-1 space-time decomposition of the stimulus (`decompose_kernel`), the spectrum of its
//! temporal trace after a zero-phase Butterworth low-pass (`calculate_fft`), and the weight-averaged
//! frequency of that spectrum (`weighted_main_frequency`). Pure functions in f64, no drawing.
//!
//! Sign rule: a singular vector pair is only defined up to a joint sign. Like openretina, the pair is
//! oriented so that the mean of the spatial component's centre block is not negative; the block is
//! rows `[h/2 - 3, h/2 + 2)` and columns `[w/2 - 3, w/2 + 2)` with Python slice semantics (a negative
//! start counts from the end, an empty block never flips).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// openretina's low-pass cutoff for the spectrum, in Hz.
pub const LOWPASS_CUTOFF_HZ: f64 = 10.0;
/// openretina's Butterworth filter order.
const BUTTERWORTH_ORDER: usize = 5;

/// What the MEI figure shows for one colour channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelComposition {
    /// Temporal component, one value per frame: the first left singular vector scaled by the singular
    /// value and by the spatial component's largest |value|.
    pub temporal: Vec<f64>,
    /// Spatial component `(h, w)`, scaled so that its largest |value| is 1, centre block positive.
    pub spatial: Tensor<f64>,
    /// Frequencies (Hz) of the first `T / 2` FFT bins.
    pub fft_freqs: Vec<f64>,
    /// |FFT| of the low-passed temporal component at those frequencies.
    pub fft_weights: Vec<f64>,
    /// Frequency averaged with the FFT magnitudes as weights (0 when all weights are 0).
    pub main_frequency: f64,
}

/// The composition of every colour channel of a stimulus `(C, T, H, W)` sampled at `frame_rate` Hz.
pub fn mei_composition<F: Copy + Into<f64>>(stimulus: &Tensor<F>, frame_rate: f64) -> Result<Vec<ChannelComposition>> {
    let &[channels, frames, height, width] = stimulus.shape.as_slice() else {
        return Err(Error::new(format!(
            "MEI composition needs a stimulus of shape (C, T, H, W), got {:?}",
            stimulus.shape
        )));
    };
    if channels * frames * height * width == 0 {
        return Err(Error::new(format!("MEI composition got an empty stimulus of shape {:?}", stimulus.shape)));
    }
    if stimulus.data.len() != channels * frames * height * width {
        return Err(Error::new(format!(
            "MEI stimulus of shape {:?} holds {} values",
            stimulus.shape,
            stimulus.data.len()
        )));
    }
    let filter = Butterworth::lowpass(BUTTERWORTH_ORDER, LOWPASS_CUTOFF_HZ, frame_rate)?;
    let per_channel = frames * height * width;
    let compositions = stimulus
        .data
        .chunks_exact(per_channel)
        .map(|channel| {
            let kernel: Vec<f64> = channel.iter().map(|&v| v.into()).collect();
            let (temporal, spatial) = decompose_kernel(&kernel, frames, height, width);
            let filtered = filter.filtfilt(&temporal);
            let (fft_freqs, fft_weights) = half_spectrum(&filtered, frame_rate);
            let main_frequency = weighted_main_frequency(&fft_freqs, &fft_weights);
            ChannelComposition {
                temporal,
                spatial: Tensor { shape: vec![height, width], data: spatial },
                fft_freqs,
                fft_weights,
                main_frequency,
            }
        })
        .collect();
    Ok(compositions)
}

/// Rank-1 decomposition of a space-time kernel `(t, h, w)` (row-major): returns the temporal component
/// `(t)` and the spatial component `(h * w)`, scaled and oriented as described in the module docs.
/// An all-zero kernel gives zeros.
pub fn decompose_kernel(kernel: &[f64], t: usize, h: usize, w: usize) -> (Vec<f64>, Vec<f64>) {
    let (sigma, mut temporal, mut spatial) = top_singular_triplet(kernel, t, h * w);
    let abs_max = spatial.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if sigma == 0.0 || abs_max == 0.0 {
        return (vec![0.0; t], vec![0.0; h * w]);
    }
    spatial.iter_mut().for_each(|v| *v /= abs_max);
    temporal.iter_mut().for_each(|v| *v *= abs_max * sigma);
    if centre_block_mean(&spatial, h, w, false) < 0.0 {
        spatial.iter_mut().for_each(|v| *v = -*v);
        temporal.iter_mut().for_each(|v| *v = -*v);
    }
    (temporal, spatial)
}

/// Mean of openretina's centre block of an `(h, w)` map: rows `[h/2 - 3, h/2 + 2)`, columns
/// `[w/2 - 3, w/2 + 2)`. `clamp_start` clamps negative starts to 0 (the convolution weight figure does);
/// otherwise they count from the end, as Python slicing does in `decompose_kernel`. NaN for an
/// empty block, which never flips anything.
pub(crate) fn centre_block_mean(map: &[f64], h: usize, w: usize, clamp_start: bool) -> f64 {
    let start = |len: usize| {
        let s = len as isize / 2 - 3;
        if clamp_start {
            s.max(0)
        } else {
            s
        }
    };
    let rows = python_slice(start(h), h as isize / 2 + 2, h);
    let cols = python_slice(start(w), w as isize / 2 + 2, w);
    let count = rows.len() * cols.len();
    let sum: f64 = rows.flat_map(|r| cols.clone().map(move |c| map[r * w + c])).sum();
    sum / count as f64
}

/// The indices `a[start:end]` selects in Python for a sequence of length `len`.
fn python_slice(start: isize, end: isize, len: usize) -> std::ops::Range<usize> {
    let clamp = |i: isize| -> usize {
        let i = if i < 0 { i + len as isize } else { i };
        i.clamp(0, len as isize) as usize
    };
    let (s, e) = (clamp(start), clamp(end));
    s..e.max(s)
}

/// Largest singular value of the row-major `rows x cols` matrix `a`, with its left (length `rows`)
/// and right (length `cols`) singular vectors. The left vector is the top eigenvector of the small
/// Gram matrix `a a^T` (Jacobi eigenvalue iterations: robust when singular values are close); the
/// right one follows as `a^T u / sigma`.
fn top_singular_triplet(a: &[f64], rows: usize, cols: usize) -> (f64, Vec<f64>, Vec<f64>) {
    let row = |i: usize| &a[i * cols..(i + 1) * cols];
    let mut gram = vec![0.0; rows * rows];
    for i in 0..rows {
        for j in 0..=i {
            let dot: f64 = row(i).iter().zip(row(j)).map(|(x, y)| x * y).sum();
            gram[i * rows + j] = dot;
            gram[j * rows + i] = dot;
        }
    }
    let left = top_eigenvector(gram, rows);
    let mut right = vec![0.0; cols];
    for (i, &u) in left.iter().enumerate() {
        right.iter_mut().zip(row(i)).for_each(|(r, &x)| *r += u * x);
    }
    let sigma = right.iter().map(|x| x * x).sum::<f64>().sqrt();
    if sigma == 0.0 {
        return (0.0, vec![0.0; rows], vec![0.0; cols]);
    }
    right.iter_mut().for_each(|r| *r /= sigma);
    (sigma, left, right)
}

/// Unit eigenvector of the largest eigenvalue of the symmetric `n x n` matrix `m` (row-major), by
/// cyclic Jacobi rotations (with the usual thresholds: small elements are skipped in early sweeps and
/// zeroed once they no longer change the diagonal) until the off-diagonal part vanishes.
fn top_eigenvector(mut m: Vec<f64>, n: usize) -> Vec<f64> {
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    for sweep in 0..50 {
        let off: f64 = (0..n).map(|p| (p + 1..n).map(|q| m[p * n + q].abs()).sum::<f64>()).sum();
        if off == 0.0 || !off.is_finite() {
            break;
        }
        let threshold = if sweep < 3 { 0.2 * off / (n * n) as f64 } else { 0.0 };
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                let g = 100.0 * apq.abs();
                if sweep > 3 && app.abs() + g == app.abs() && aqq.abs() + g == aqq.abs() {
                    m[p * n + q] = 0.0;
                    m[q * n + p] = 0.0;
                    continue;
                }
                if apq.abs() <= threshold {
                    continue;
                }
                let h = aqq - app;
                let tan = if h.abs() + g == h.abs() {
                    apq / h
                } else {
                    let theta = 0.5 * h / apq;
                    let t = 1.0 / (theta.abs() + (1.0 + theta * theta).sqrt());
                    if theta < 0.0 {
                        -t
                    } else {
                        t
                    }
                };
                let cos = 1.0 / (1.0 + tan * tan).sqrt();
                let sin = tan * cos;
                let tau = sin / (1.0 + cos);
                m[p * n + p] -= tan * apq;
                m[q * n + q] += tan * apq;
                m[p * n + q] = 0.0;
                m[q * n + p] = 0.0;
                // Rows (and, by symmetry, columns) p and q of m, columns p and q of v.
                for k in (0..n).filter(|&k| k != p && k != q) {
                    let (akp, akq) = (m[k * n + p], m[k * n + q]);
                    let (new_p, new_q) = (akp - sin * (akq + akp * tau), akq + sin * (akp - akq * tau));
                    m[k * n + p] = new_p;
                    m[p * n + k] = new_p;
                    m[k * n + q] = new_q;
                    m[q * n + k] = new_q;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = vkp - sin * (vkq + vkp * tau);
                    v[k * n + q] = vkq + sin * (vkp - vkq * tau);
                }
            }
        }
    }
    let top = (0..n).fold(0, |best, j| if m[j * n + j] > m[best * n + best] { j } else { best });
    (0..n).map(|k| v[k * n + top]).collect()
}

/// Frequencies (Hz) and |FFT| of the first `n / 2` bins of a real signal sampled at `rate` Hz.
pub fn half_spectrum(signal: &[f64], rate: f64) -> (Vec<f64>, Vec<f64>) {
    let n = signal.len();
    let bins = n / 2;
    let freqs = (0..bins).map(|k| k as f64 * (1.0 / (n as f64 / rate))).collect();
    let weights = (0..bins)
        .map(|k| {
            let (mut re, mut im) = (0.0, 0.0);
            for (j, &x) in signal.iter().enumerate() {
                // Reduce j * k modulo n first so the angle stays exact for long signals.
                let angle = -2.0 * std::f64::consts::PI * ((j * k) % n) as f64 / n as f64;
                re += x * angle.cos();
                im += x * angle.sin();
            }
            re.hypot(im)
        })
        .collect();
    (freqs, weights)
}

/// Frequency averaged with `weights`; 0 when the weights sum to 0 (numpy would raise).
pub fn weighted_main_frequency(freqs: &[f64], weights: &[f64]) -> f64 {
    let total: f64 = weights.iter().sum();
    if total == 0.0 {
        return 0.0;
    }
    freqs.iter().zip(weights).map(|(f, w)| f * w).sum::<f64>() / total
}

/// A digital Butterworth low-pass filter as scipy's `butter(order, cutoff, fs=rate)` designs it,
/// applied forwards and backwards like scipy's `filtfilt` (odd padding, `lfilter_zi` initial state).
#[derive(Debug, Clone)]
pub struct Butterworth {
    b: Vec<f64>,
    a: Vec<f64>,
}

impl Butterworth {
    pub fn lowpass(order: usize, cutoff: f64, rate: f64) -> Result<Self> {
        let wn = 2.0 * cutoff / rate;
        if !(wn > 0.0 && wn < 1.0) {
            return Err(Error::new(format!(
                "a {cutoff} Hz low-pass needs a frame rate above {} Hz, got {rate} Hz",
                2.0 * cutoff
            )));
        }
        // Analog prototype poles on the unit circle's left half, pre-warped for the bilinear
        // transform (scipy designs with an internal sampling rate of 2).
        let warped = 4.0 * (std::f64::consts::PI * wn / 2.0).tan();
        let n = order as f64;
        let poles: Vec<Complex> = (0..order)
            .map(|i| {
                let m = -(n - 1.0) + 2.0 * i as f64;
                let theta = std::f64::consts::PI * m / (2.0 * n);
                Complex(-theta.cos() * warped, -theta.sin() * warped)
            })
            .collect();
        // Bilinear transform: analog pole p -> (4 + p) / (4 - p); all zeros go to -1.
        let four = Complex(4.0, 0.0);
        let digital_poles: Vec<Complex> = poles.iter().map(|&p| (four + p).div(four - p)).collect();
        let gain = poles.iter().fold(Complex(warped.powi(order as i32), 0.0), |g, &p| g.div(four - p)).0;
        let b = polynomial(&vec![Complex(-1.0, 0.0); order]).iter().map(|c| gain * c.0).collect();
        let a = polynomial(&digital_poles).iter().map(|c| c.0).collect();
        Ok(Butterworth { b, a })
    }

    /// Numerator and denominator coefficients (`a[0] == 1`).
    pub fn coefficients(&self) -> (&[f64], &[f64]) {
        (&self.b, &self.a)
    }

    /// Zero-phase filtering of `x`. scipy pads by 3 * (order + 1) samples and refuses shorter
    /// signals; here the padding shrinks to `x.len() - 1` instead.
    pub fn filtfilt(&self, x: &[f64]) -> Vec<f64> {
        let n = x.len();
        if n == 0 {
            return Vec::new();
        }
        let pad = (3 * self.a.len().max(self.b.len())).min(n - 1);
        // Odd extension: reflect about the end points.
        let mut ext = Vec::with_capacity(n + 2 * pad);
        ext.extend((1..=pad).rev().map(|i| 2.0 * x[0] - x[i]));
        ext.extend_from_slice(x);
        ext.extend((1..=pad).map(|i| 2.0 * x[n - 1] - x[n - 1 - i]));

        let zi = self.steady_state();
        let forward = self.lfilter(&ext, &zi, ext[0]);
        let reversed: Vec<f64> = forward.iter().rev().copied().collect();
        let backward = self.lfilter(&reversed, &zi, reversed[0]);
        backward.iter().rev().skip(pad).take(n).copied().collect()
    }

    /// scipy's `lfilter_zi`: the filter state for a step response that has settled at 1.
    fn steady_state(&self) -> Vec<f64> {
        let (b, a) = (&self.b, &self.a);
        let m = a.len() - 1;
        // (I - companion(a)^T) zi = b[1:] - a[1:] * b[0]
        let mut matrix = vec![vec![0.0; m]; m];
        for (i, row) in matrix.iter_mut().enumerate() {
            row[i] = 1.0;
            row[0] += a[i + 1];
            if i + 1 < m {
                row[i + 1] = -1.0;
            }
        }
        let rhs: Vec<f64> = (0..m).map(|i| b[i + 1] - a[i + 1] * b[0]).collect();
        solve(matrix, rhs)
    }

    /// Direct form II transposed filtering with initial state `zi * scale`.
    fn lfilter(&self, x: &[f64], zi: &[f64], scale: f64) -> Vec<f64> {
        let (b, a) = (&self.b, &self.a);
        let m = a.len() - 1;
        let mut z: Vec<f64> = zi.iter().map(|v| v * scale).collect();
        x.iter()
            .map(|&xn| {
                let y = b[0] * xn + z[0];
                for i in 0..m {
                    let next = if i + 1 < m { z[i + 1] } else { 0.0 };
                    z[i] = b[i + 1] * xn + next - a[i + 1] * y;
                }
                y
            })
            .collect()
    }
}

/// Solve `m x = rhs` by Gaussian elimination with partial pivoting (small, well-conditioned systems).
fn solve(mut m: Vec<Vec<f64>>, mut rhs: Vec<f64>) -> Vec<f64> {
    let n = rhs.len();
    for col in 0..n {
        let pivot = (col..n).fold(col, |best, r| if m[r][col].abs() > m[best][col].abs() { r } else { best });
        m.swap(col, pivot);
        rhs.swap(col, pivot);
        for r in col + 1..n {
            let factor = m[r][col] / m[col][col];
            let pivot_row = m[col].clone();
            m[r].iter_mut().zip(&pivot_row).skip(col).for_each(|(x, p)| *x -= factor * p);
            rhs[r] -= factor * rhs[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let tail: f64 = (r + 1..n).map(|c| m[r][c] * x[c]).sum();
        x[r] = (rhs[r] - tail) / m[r][r];
    }
    x
}

/// Coefficients (highest power first) of the monic polynomial with the given roots.
fn polynomial(roots: &[Complex]) -> Vec<Complex> {
    let mut coeffs = vec![Complex(1.0, 0.0)];
    for &root in roots {
        let mut next = coeffs.clone();
        next.push(Complex(0.0, 0.0));
        for (i, &c) in coeffs.iter().enumerate() {
            next[i + 1] = next[i + 1] - root * c;
        }
        coeffs = next;
    }
    coeffs
}

#[derive(Debug, Clone, Copy)]
struct Complex(f64, f64);

impl std::ops::Add for Complex {
    type Output = Complex;
    fn add(self, o: Complex) -> Complex {
        Complex(self.0 + o.0, self.1 + o.1)
    }
}

impl std::ops::Sub for Complex {
    type Output = Complex;
    fn sub(self, o: Complex) -> Complex {
        Complex(self.0 - o.0, self.1 - o.1)
    }
}

impl std::ops::Mul for Complex {
    type Output = Complex;
    fn mul(self, o: Complex) -> Complex {
        Complex(self.0 * o.0 - self.1 * o.1, self.0 * o.1 + self.1 * o.0)
    }
}

impl Complex {
    fn div(self, o: Complex) -> Complex {
        let d = o.0 * o.0 + o.1 * o.1;
        Complex((self.0 * o.0 + self.1 * o.1) / d, (self.1 * o.0 - self.0 * o.1) / d)
    }
}
