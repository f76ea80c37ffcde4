//! The FFT route of the dense convolution (`fft_conv.rs`) against the direct one (AVX2 correlation in
//! float32 where the CPU has it, else the portable code; the portable code in float64): forward and
//! input gradient, float32 and float64, odd and even sizes, one to sixteen channels, padding narrower
//! and wider than the kernel.

mod common;

use retina::model::fft_conv::{fft_pays, grid_size};
use retina::model::fft_lines::{LineDft, RealLineDft};
use retina::model::layers::conv3d::{Conv3d, ConvRoute};
use retina::model::{simd, Float};
use rustfft::num_complex::Complex;

/// `(in, out, kernel, input (t, h, w), padding)`.
type Case = (usize, usize, [usize; 3], [usize; 3], [(usize, usize); 3]);

const CASES: [Case; 7] = [
    // `zoo_conv_full`'s two layers on a 50-frame stimulus.
    (2, 16, [21, 11, 11], [50, 18, 16], [(0, 0); 3]),
    (16, 16, [11, 5, 5], [30, 8, 6], [(0, 0), (2, 2), (2, 2)]),
    // Odd sizes, asymmetric padding, grids rounded up to 2-3-5 sizes (13 -> 15, 11 -> 12).
    (3, 5, [4, 3, 3], [11, 11, 9], [(1, 2), (2, 0), (0, 2)]),
    // One frame, a kernel as wide as the padded input (one output column).
    (1, 8, [1, 7, 7], [1, 13, 5], [(0, 0), (3, 3), (1, 1)]),
    (6, 1, [5, 5, 5], [7, 9, 8], [(0, 0); 3]),
    // Padding wider than the kernel (the separable time stage's spatial padding).
    (2, 3, [3, 1, 1], [6, 5, 4], [(0, 0), (2, 2), (2, 2)]),
    // A large prime size (rounded up to 35 along t, 14 along x).
    (4, 7, [9, 3, 3], [31, 6, 13], [(0, 0), (1, 1), (0, 0)]),
];

fn values<F: Float>(n: usize, seed: u64) -> Vec<F> {
    common::random_stimulus([n, 1, 1, 1], seed).into_iter().map(F::from_f64).collect()
}

fn to_f64<F: Float>(v: &[F]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// The largest relative difference (to the largest direct value) of forward and input gradient.
fn fft_vs_direct<F: Float>((m, c, kernel, input, padding): Case, seed: u64) -> (f64, f64) {
    let weights = values::<F>(c * m * kernel.iter().product::<usize>(), seed);
    let bias = Some(values::<F>(c, seed + 1));
    let conv = |route| Conv3d::new(m, c, [kernel[0], kernel[1], kernel[2]], padding, weights.clone(), bias.clone(), "test").with_route(route);
    let (fft, direct) = (conv(ConvRoute::Fft), conv(ConvRoute::Direct));
    let shape = [m, input[0], input[1], input[2]];
    let x = values::<F>(m * input.iter().product::<usize>(), seed + 2);
    let (y_fft, y_direct) = (fft.forward_values(&x, shape), direct.forward_values(&x, shape));
    assert_eq!(y_fft.len(), y_direct.len());
    let g = values::<F>(y_direct.len(), seed + 3);
    let (gx_fft, gx_direct) = (fft.backward_values(&g, shape), direct.backward_values(&g, shape));
    assert_eq!(gx_fft.len(), x.len());
    assert_eq!(gx_direct.len(), x.len());
    // Twice: the second call takes the kernel spectra from the cache.
    assert_eq!(fft.forward_values(&x, shape), y_fft);
    assert_eq!(fft.backward_values(&g, shape), gx_fft);
    (common::rel_max_diff(&to_f64(&y_fft), &to_f64(&y_direct)), common::rel_max_diff(&to_f64(&gx_fft), &to_f64(&gx_direct)))
}

/// The AVX-512 switch is global: tests that turn it off hold this, so that no other test's
/// repeated calls see both variants.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn fft_route_matches_direct_route() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for (i, case) in CASES.into_iter().enumerate() {
        // Float32: FFT rounding grows like 1e-7 x log2(grid points) relative to the largest values
        // (the sums here have up to 32000 terms); 1e-5 is two orders above that and orders below any
        // indexing mistake (a wrong or shifted tap changes outputs by ~10%). Short lines of some
        // lengths are transformed by a matrix product (`fft_lines.rs`), AVX-512 or AVX2: both.
        for avx512 in [true, false] {
            simd::set_avx512_kernels(avx512);
            let (forward, backward) = fft_vs_direct::<f32>(case, 10 * i as u64);
            simd::set_avx512_kernels(true);
            assert!(forward <= 1e-5 && backward <= 1e-5, "case {i} float32 (AVX-512 {avx512}): forward {forward:e}, gradient {backward:e}");
        }
        // Float64 runs float64 transforms: ~1e-16 x log2(points).
        let (forward, backward) = fft_vs_direct::<f64>(case, 10 * i as u64 + 5);
        assert!(forward <= 1e-12 && backward <= 1e-12, "case {i} float64: forward {forward:e}, gradient {backward:e}");
    }
}

#[test]
fn grids_are_smooth_and_large_enough() {
    assert_eq!(grid_size([50, 18, 16]), [50, 18, 16]);
    // Even along the real transform's axis: the longer of t and x.
    assert_eq!(grid_size([31, 13, 13]), [32, 15, 15]);
    assert_eq!(grid_size([5, 9, 13]), [5, 9, 16]);
    assert_eq!(grid_size([1, 7, 1]), [2, 8, 1]);
}

#[test]
fn large_dense_kernels_take_the_fft_route_and_small_ones_do_not() {
    let none = [(0, 0); 3];
    let both = |m, c, kernel, input, padding| fft_pays(m, c, kernel, input, padding, false) && fft_pays(m, c, kernel, input, padding, true);
    // `zoo_conv_full`'s layers on its whole stimulus and on an output neuron's 40 frames.
    assert!(both(2, 16, [21, 11, 11], [50, 18, 16], none));
    assert!(both(16, 16, [11, 5, 5], [30, 8, 6], [(0, 0), (2, 2), (2, 2)]));
    assert!(both(2, 16, [21, 11, 11], [40, 18, 16], none));
    // An inner channel's receptive field (one output pixel): the forward pass stays direct, the
    // stimulus gradient (2 channels, mostly zero taps for the direct code) goes by FFT.
    assert!(!fft_pays(2, 16, [21, 11, 11], [30, 11, 11], none, false));
    assert!(fft_pays(2, 16, [21, 11, 11], [30, 11, 11], none, true));
    // The finite-difference check of tests/synthetic.rs on a large-kernel `full` model: its first
    // layer (2 -> 8 channels, 15x9x9 kernels) on the whole stimulus (temporal padding: no cropping)
    // and the stimulus gradient of an inner channel's 24x9x9 receptive field.
    assert!(both(2, 8, [15, 9, 9], [30, 16, 14], none));
    assert!(fft_pays(2, 8, [15, 9, 9], [24, 9, 9], none, true));
    // A long stimulus (kernel spectra beyond 16 MiB per grid) stays direct.
    assert!(!fft_pays(2, 16, [21, 11, 11], [1024, 18, 16], none, false));
    // A 1x1x1 projection and small kernels stay direct.
    assert!(!both(32, 32, [1, 1, 1], [20, 4, 2], none));
    assert!(!both(16, 16, [1, 5, 5], [20, 8, 6], [(0, 0), (2, 2), (2, 2)]));
    assert!(!both(16, 16, [11, 1, 1], [20, 8, 6], none));
}

/// The line transforms of the 3D FFT (`fft_lines.rs`: rustfft or, for short lines, a matrix product
/// restricted to the non-zero inputs and the wanted outputs) against a float64 DFT, for every length
/// up to 48, forward and inverse, several input and output ranges, with the AVX-512 and the AVX2
/// matrix kernels.
#[test]
fn line_transforms_match_a_float64_dft() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let mut planner = rustfft::FftPlanner::<f32>::new();
    for n in 1..=48 {
        for inverse in [false, true] {
            let dft = LineDft::new(&mut planner, n, inverse);
            let ranges = [(0..n, 0..n), (0..n.div_ceil(2), 0..n), (0..n, n / 3..n / 3 + n.div_ceil(2)), (n / 2..n, 1.min(n - 1)..n)];
            for (r, (inputs, outputs)) in ranges.into_iter().enumerate() {
                let lines = 3;
                let values = common::random_stimulus([lines * n * 2, 1, 1, 1], (n * 10 + r) as u64);
                let original: Vec<Complex<f32>> = values.chunks_exact(2).map(|v| Complex::new(v[0] as f32, v[1] as f32)).collect();
                // Exact sums of the float32 values: only the inputs count, values elsewhere must be ignored.
                let sign = if inverse { 1.0 } else { -1.0 };
                let mut expected = Vec::new();
                for line in original.chunks_exact(n) {
                    for o in outputs.clone() {
                        let mut sum = (0.0f64, 0.0f64);
                        for i in inputs.clone() {
                            let phase = sign * 2.0 * std::f64::consts::PI * ((i * o) % n) as f64 / n as f64;
                            let (re, im) = (line[i].re as f64, line[i].im as f64);
                            sum.0 += re * phase.cos() - im * phase.sin();
                            sum.1 += re * phase.sin() + im * phase.cos();
                        }
                        expected.extend([sum.0, sum.1]);
                    }
                }
                for avx512 in [true, false] {
                    simd::set_avx512_kernels(avx512);
                    let mut data = original.clone();
                    let mut scratch = vec![Complex::new(0.0f32, 0.0); dft.scratch_len()];
                    dft.process(&mut data, inputs.clone(), outputs.clone(), &mut scratch);
                    simd::set_avx512_kernels(true);
                    let got: Vec<f64> = data.chunks_exact(n).flat_map(|line| line[outputs.clone()].iter().flat_map(|v| [v.re as f64, v.im as f64])).collect();
                    // Float32 sums of up to 48 terms (twiddles rounded to float32, FFT or matrix):
                    // ~1e-7 x sqrt(n) relative to the largest output; 1e-5 leaves room and still fails
                    // for any wrong twiddle, index or range (errors of order 1).
                    let d = common::rel_max_diff(&got, &expected);
                    assert!(d <= 1e-5, "n {n} inverse {inverse} inputs {inputs:?} outputs {outputs:?} AVX-512 {avx512}: differs by {d:e}");
                }
            }
        }
    }
}

/// The real transforms along the first axis (`RealLineDft`: realfft or, for short lines, matrix
/// products over the non-zero inputs or the wanted outputs) against a float64 DFT, every length up to
/// 48, with AVX-512 on and off (then realfft).
#[test]
fn real_line_transforms_match_a_float64_dft() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let mut planner = realfft::RealFftPlanner::<f32>::new();
    for n in 1..=48 {
        let dft = RealLineDft::new(&mut planner, n);
        let half = n / 2 + 1;
        let mut scratch = vec![Complex::new(0.0f32, 0.0); dft.scratch_len()];
        for (r, range) in [0..n, 0..n.div_ceil(2), n / 3..n].into_iter().enumerate() {
            let values: Vec<f32> = common::random_stimulus([n + 2 * half, 1, 1, 1], (n * 10 + r) as u64).into_iter().map(|v| v as f32).collect();
            let (line, spectrum) = values.split_at(n);
            // Forward: only the values in `range` count.
            let mut expected = Vec::new();
            for k in 0..half {
                let phase = |t: usize| -2.0 * std::f64::consts::PI * ((t * k) % n) as f64 / n as f64;
                let re: f64 = range.clone().map(|t| line[t] as f64 * phase(t).cos()).sum();
                let im: f64 = range.clone().map(|t| line[t] as f64 * phase(t).sin()).sum();
                expected.extend([re, im]);
            }
            // Inverse of a spectrum (imaginary parts of the first and, even n, last bins ignored):
            // the real line `sum_k c_k Re(X_k w^(-t k))` at the values of `range`.
            let bins: Vec<Complex<f32>> = spectrum.chunks_exact(2).map(|v| Complex::new(v[0], v[1])).collect();
            let inverse: Vec<f64> = range
                .clone()
                .map(|t| {
                    (0..half)
                        .map(|k| {
                            let twice = if k == 0 || 2 * k == n { 1.0 } else { 2.0 };
                            let im = if k == 0 || 2 * k == n { 0.0 } else { bins[k].im as f64 };
                            let phase = 2.0 * std::f64::consts::PI * ((t * k) % n) as f64 / n as f64;
                            twice * (bins[k].re as f64 * phase.cos() - im * phase.sin())
                        })
                        .sum()
                })
                .collect();
            for avx512 in [true, false] {
                simd::set_avx512_kernels(avx512);
                let mut row = line.to_vec();
                let mut out = vec![Complex::new(0.0f32, 0.0); half];
                dft.forward(&mut row, range.clone(), &mut out, &mut scratch);
                let mut back = vec![0.0f32; n];
                let mut spectrum = bins.clone();
                dft.inverse(&mut spectrum, range.clone(), &mut back, &mut scratch);
                simd::set_avx512_kernels(true);
                // Float32 sums of up to 48 terms: ~1e-7 x sqrt(n) of the largest value; 1e-5 still
                // fails for any wrong twiddle, index, range or bin weight (errors of order 1).
                let got: Vec<f64> = out.iter().flat_map(|v| [v.re as f64, v.im as f64]).collect();
                let d = common::rel_max_diff(&got, &expected);
                assert!(d <= 1e-5, "n {n} forward, inputs {range:?}, AVX-512 {avx512}: differs by {d:e}");
                let got: Vec<f64> = back[range.clone()].iter().map(|&v| v as f64).collect();
                let d = common::rel_max_diff(&got, &inverse);
                assert!(d <= 1e-5, "n {n} inverse, outputs {range:?}, AVX-512 {avx512}: differs by {d:e}");
            }
        }
    }
}
