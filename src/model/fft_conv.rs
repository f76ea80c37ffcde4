//! A stride-1 3D correlation by FFT, for dense kernels large enough that it pays (`Conv3d` chooses per
//! call with [`fft_pays`]): openretina's `TorchFullConv3D` layers of 21x11x11 and 11x5x5 taps on
//! 18x16 frames do 10-100x fewer operations this way than by direct correlation.
//!
//! The padded input `(m, t, h, w)` is transformed on a grid at least its size, so that every valid
//! output of the correlation `y[o] = sum_k xpad[o + k] w[k]` is the circular one (`o + k` never wraps),
//! and the input gradient `gx[n] = sum_o gy[o] w[n - o]`, the output gradient placed at the grid's
//! origin, wraps only onto indices `n - o >= grid - out + 1 >= kernel` where the kernel is zero. So both
//! directions share one grid and one set of kernel spectra (forward multiplies by their conjugates),
//! which are computed once per grid size and cached.
//!
//! Transforms: real-to-complex along x (`realfft`) and complex along y and t (`rustfft`), each axis
//! made contiguous by a transposed copy; rows that are all zero (padding, the output gradient's
//! margin) are not transformed, and the inverse transforms only the rows holding values asked for.
//! Float32 FFTs add rounding of about 1e-7 x log2(grid) relative to the largest values, well inside the
//! tolerances (`tests/fft_conv.rs` compares with the direct path).

use std::any::Any;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::{FftNum, FftPlanner};

use crate::model::config::Padding;
use crate::model::fft_lines::LineDft;

/// Kernel spectra for this many grid sizes are kept per layer (MEIs of one model use a few sizes:
/// the whole stimulus, the frames an output neuron depends on, an inner channel's receptive field).
const CACHED_GRIDS: usize = 4;

/// Whether the FFT route is expected to be faster than the direct correlation (`simd_conv.rs`) for
/// `m` input and `c` output channels, `kernel`, an input `padded` by `padding`, in the forward pass or
/// (`backward`) the input gradient. Both costs are estimates in nanoseconds on this machine kind
/// (AVX2 float32, fitted to timings of both routes on `zoo_conv_full`-like layers); float64 and
/// CPUs without AVX2 use the same choice (their direct code is slower still).
pub fn fft_pays(m: usize, c: usize, kernel: [usize; 3], input: [usize; 3], padding: Padding, backward: bool) -> bool {
    let padded = [0, 1, 2].map(|d| input[d] + padding[d].0 + padding[d].1);
    let out = [0, 1, 2].map(|d| (padded[d] + 1).saturating_sub(kernel[d]).max(1));
    // The direct correlation: backward correlates the output gradient (padded by nearly a kernel)
    // with `m` output channels, and visits only taps that reach its real values.
    let direct = if backward { direct_cost(c, m, kernel, input, out) } else { direct_cost(m, c, kernel, out, padded) };
    let n = grid_size(padded);
    if (m * c) as f64 * bins(n) as f64 > MAX_KERNEL_SPECTRA as f64 {
        return false;
    }
    let points: f64 = n.iter().map(|&v| v as f64).product();
    let bins = bins(n) as f64;
    let fft = FFT_NS_PER_POINT_LOG * (m + c) as f64 * points * points.log2() + PRODUCT_NS * (m * c) as f64 * bins;
    fft < direct
}

/// At most this many complex values of kernel spectra per grid (16 MiB in float32): a long stimulus
/// (hundreds of frames) takes the direct route rather than caching spectra of its length.
const MAX_KERNEL_SPECTRA: usize = 1 << 21;

/// Complex bins of one channel's spectrum on grid `n`.
fn bins(n: [usize; 3]) -> usize {
    n[0] * n[1] * (n[2] / 2 + 1)
}

/// Values (real numbers) the FFT route allocates for `m` input and `c` output channels on an input
/// padded to `padded`: both sides' spectra, one channel's planes, and the kernel spectra it caches
/// (up to `CACHED_GRIDS` grids of at most `MAX_KERNEL_SPECTRA`, counted once at this size).
pub fn work_values(m: usize, c: usize, padded: [usize; 3]) -> Option<u64> {
    let bins = bins(grid_size(padded)).div_ceil(LANES) as u64 * LANES as u64;
    let spectra = (m as u64 + c as u64 + 1).checked_mul(bins)?;
    let kernels = (m as u64).checked_mul(c as u64)?.checked_mul(bins)?;
    spectra.checked_add(kernels)?.checked_mul(2)
}

/// Nanoseconds per point and log2(points) of one real 3D transform, and per complex product.
const FFT_NS_PER_POINT_LOG: f64 = 0.3;
const PRODUCT_NS: f64 = 1.0;
/// Nanoseconds per vector multiply-add of the direct correlation.
const DIRECT_NS_PER_FMA: f64 = 0.46;

/// The direct correlation's time: its register blocks (6 pixels x 8 channels, or 6 rows x 8 pixels
/// of one channel when the output channels are not a multiple of 8) times the taps a block visits.
fn direct_cost(m: usize, c: usize, kernel: [usize; 3], out: [usize; 3], data: [usize; 3]) -> f64 {
    let [to, ho, wo] = out;
    let (vectors, block) = if c.is_multiple_of(8) {
        (to * (ho * wo).div_ceil(6) * 6 * c / 8, [1, 1, wo.min(6)])
    } else {
        (to * ho.div_ceil(6) * 6 * wo.div_ceil(8) * c, [1, ho.min(6), wo.min(8)])
    };
    let taps: usize = (0..3).map(|d| kernel[d].min(data[d] + block[d] - 1)).product();
    DIRECT_NS_PER_FMA * (vectors * m * taps) as f64
}

/// The FFT grid for a padded input: per axis the smallest size at least as large whose prime
/// factors are 2, 3 and 5 (fast `rustfft` butterflies), even along x (real-to-complex).
pub fn grid_size(padded: [usize; 3]) -> [usize; 3] {
    let smooth = |mut v: usize| {
        for p in [2, 3, 5] {
            while v.is_multiple_of(p) {
                v /= p;
            }
        }
        v == 1
    };
    let next = |v: usize, even: bool| (v.max(1)..).find(|&n| smooth(n) && (!even || n.is_multiple_of(2))).expect("smooth sizes exist");
    [next(padded[0], false), next(padded[1], false), next(padded[2], true)]
}

/// Plans of one grid `(t, h, w)`.
struct Grid<F: FftNum> {
    n: [usize; 3],
    /// Complex bins along x: `w / 2 + 1`.
    wc: usize,
    r2c: Arc<dyn RealToComplex<F>>,
    c2r: Arc<dyn ComplexToReal<F>>,
    fy: LineDft<F>,
    iy: LineDft<F>,
    ft: LineDft<F>,
    it: LineDft<F>,
}

/// Bins per block of the spectrum products (one AVX vector of float32 complex values).
const LANES: usize = 4;

/// Temporaries of one transform call.
struct Work<F> {
    row: Vec<F>,
    bins: Vec<Complex<F>>,
    /// One channel in `(t, kx, ky)` order.
    planes: Vec<Complex<F>>,
    scratch: Vec<Complex<F>>,
}

/// The buffers of one call through the spectra, kept with the kernel spectra for the next call.
struct Buffers<F> {
    work: Work<F>,
    spectrum: Vec<Complex<F>>,
    product: Vec<Complex<F>>,
}

impl<F: FftNum + FftKernels> Grid<F> {
    fn new(n: [usize; 3]) -> Self {
        let mut real = RealFftPlanner::<F>::new();
        let mut complex = FftPlanner::<F>::new();
        Grid {
            n,
            wc: n[2] / 2 + 1,
            r2c: real.plan_fft_forward(n[2]),
            c2r: real.plan_fft_inverse(n[2]),
            fy: LineDft::new(&mut complex, n[1], false),
            iy: LineDft::new(&mut complex, n[1], true),
            ft: LineDft::new(&mut complex, n[0], false),
            it: LineDft::new(&mut complex, n[0], true),
        }
    }

    /// Complex values of one channel's spectrum, in `(kx, ky, kt)` order.
    fn bins(&self) -> usize {
        self.wc * self.n[1] * self.n[0]
    }

    /// Blocks of `LANES` bins per channel (the last one padded with zeros).
    fn blocks(&self) -> usize {
        self.bins().div_ceil(LANES)
    }

    /// Distance between the spectra of consecutive channels.
    fn stride(&self) -> usize {
        self.blocks() * LANES
    }

    fn work(&self) -> Work<F> {
        let scratch = [
            self.r2c.get_scratch_len(),
            self.c2r.get_scratch_len(),
            self.fy.scratch_len(),
            self.iy.scratch_len(),
            self.ft.scratch_len(),
            self.it.scratch_len(),
        ];
        let zero = Complex::new(F::zero(), F::zero());
        Work {
            row: vec![F::zero(); self.n[2]],
            bins: vec![zero; self.wc],
            planes: vec![zero; self.n[0] * self.wc * self.n[1]],
            scratch: vec![zero; scratch.into_iter().max().unwrap_or(0)],
        }
    }

    /// The spectra of `channels` real arrays `(t, h, w)` of `shape` (consecutive in `input`), each
    /// placed at `offset` on the grid (zero elsewhere), into `spectra` (`channels x bins`).
    fn forward(&self, input: &[F], shape: [usize; 3], offset: [usize; 3], spectra: &mut [Complex<F>], work: &mut Work<F>) {
        let [nt, nh, _] = self.n;
        let wc = self.wc;
        let len = shape.iter().product::<usize>();
        let bins = self.bins();
        let (rows, frames) = (offset[1]..offset[1] + shape[1], offset[0]..offset[0] + shape[0]);
        for (x, spectrum) in input.chunks_exact(len).zip(spectra.chunks_exact_mut(self.stride())) {
            let spectrum = &mut spectrum[..bins];
            // Along x, the rows holding values, into the planes (t, kx, ky); the y transform takes
            // the other rows as zero.
            let planes = &mut work.planes[..shape[0] * wc * nh];
            let (before, after) = (offset[2], self.n[2] - offset[2] - shape[2]);
            work.row[..before].fill(F::zero());
            work.row[before + shape[2]..].fill(F::zero());
            debug_assert_eq!(work.row.len(), before + shape[2] + after);
            for t in 0..shape[0] {
                for y in 0..shape[1] {
                    let src = (t * shape[1] + y) * shape[2];
                    work.row[before..before + shape[2]].copy_from_slice(&x[src..src + shape[2]]);
                    self.r2c.process_with_scratch(&mut work.row, &mut work.bins, &mut work.scratch).expect("buffer sizes match the plan");
                    let plane = &mut planes[t * wc * nh..];
                    for (kx, &v) in work.bins.iter().enumerate() {
                        plane[kx * nh + y + offset[1]] = v;
                    }
                }
            }
            // Along y, every (t, kx) row of the planes.
            self.fy.process(planes, rows.clone(), 0..nh, &mut work.scratch);
            // Along t: (kx, ky, t) order; the t transform takes frames without values as zero.
            for t in 0..shape[0] {
                for (q, &v) in planes[t * wc * nh..(t + 1) * wc * nh].iter().enumerate() {
                    spectrum[q * nt + t + offset[0]] = v;
                }
            }
            self.ft.process(spectrum, frames.clone(), 0..nt, &mut work.scratch);
        }
    }

    /// The inverse transforms (unscaled) of `channels` spectra (destroyed), the values of the box
    /// `[lo, lo + shape)` of the grid written to `out` (`channels x shape`).
    fn inverse(&self, spectra: &mut [Complex<F>], lo: [usize; 3], shape: [usize; 3], out: &mut [F], work: &mut Work<F>) {
        let [nt, nh, _] = self.n;
        let wc = self.wc;
        let len = shape.iter().product::<usize>();
        let bins = self.bins();
        for (spectrum, o) in spectra.chunks_exact_mut(self.stride()).zip(out.chunks_exact_mut(len)) {
            let spectrum = &mut spectrum[..bins];
            self.it.process(spectrum, 0..nt, lo[0]..lo[0] + shape[0], &mut work.scratch);
            let planes = &mut work.planes[..shape[0] * wc * nh];
            for t in 0..shape[0] {
                for (q, v) in planes[t * wc * nh..(t + 1) * wc * nh].iter_mut().enumerate() {
                    *v = spectrum[q * nt + t + lo[0]];
                }
            }
            self.iy.process(planes, 0..nh, lo[1]..lo[1] + shape[1], &mut work.scratch);
            for t in 0..shape[0] {
                let plane = &planes[t * wc * nh..];
                for y in 0..shape[1] {
                    for (kx, b) in work.bins.iter_mut().enumerate() {
                        *b = plane[kx * nh + y + lo[1]];
                    }
                    // The imaginary parts of the first and (even length) last bins are rounding
                    // noise of a real signal's spectrum: realfft ignores them and says so.
                    match self.c2r.process_with_scratch(&mut work.bins, &mut work.row, &mut work.scratch) {
                        Ok(()) | Err(realfft::FftError::InputValues(..)) => {}
                        Err(e) => panic!("buffer sizes match the plan: {e}"),
                    }
                    let dst = (t * shape[1] + y) * shape[2];
                    o[dst..dst + shape[2]].copy_from_slice(&work.row[lo[2]..lo[2] + shape[2]]);
                }
            }
        }
    }
}

/// The conjugated kernel spectra of one grid, scaled by `1 / points` (the inverse transform's
/// factor), in blocks of `LANES` bins: `(block, c, m, LANES)`.
struct KernelSpectra<F: FftNum> {
    grid: Grid<F>,
    spectra: Vec<Complex<F>>,
    /// Buffers of finished calls, one per thread that used this grid.
    pool: Mutex<Vec<Buffers<F>>>,
}

/// The correlation of one layer by FFT, kernel spectra cached per grid size.
pub struct FftCorrelation<F> {
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 3],
    /// `(c, m, kt, kh, kw)`.
    weights: Vec<F>,
    /// `KernelSpectra<F>`, most recently used last. Type-erased so that the layers holding this need
    /// not carry the `FftNum` bound in their own definitions.
    cache: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
}

impl<F> std::fmt::Debug for FftCorrelation<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FftCorrelation({} -> {}, kernel {:?})", self.in_channels, self.out_channels, self.kernel)
    }
}

impl<F: Clone> Clone for FftCorrelation<F> {
    /// The same weights, an empty cache.
    fn clone(&self) -> Self {
        let (in_channels, out_channels, kernel) = (self.in_channels, self.out_channels, self.kernel);
        FftCorrelation { in_channels, out_channels, kernel, weights: self.weights.clone(), cache: Mutex::new(Vec::new()) }
    }
}

impl<F> FftCorrelation<F> {
    /// Kernels `weights` `(c, m, kt, kh, kw)`.
    pub fn new(in_channels: usize, out_channels: usize, kernel: [usize; 3], weights: Vec<F>) -> Self {
        FftCorrelation { in_channels, out_channels, kernel, weights, cache: Mutex::new(Vec::new()) }
    }
}

impl<F: FftNum + FftKernels> FftCorrelation<F> {
    fn spectra(&self, n: [usize; 3]) -> Arc<KernelSpectra<F>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let typed = |entry: &Arc<dyn Any + Send + Sync>| entry.clone().downcast::<KernelSpectra<F>>().ok();
        if let Some(pos) = cache.iter().position(|s| typed(s).is_some_and(|s| s.grid.n == n)) {
            let found = cache.remove(pos);
            cache.push(found.clone());
            return typed(&found).expect("checked above");
        }
        let grid = Grid::new(n);
        let (m, c, stride) = (self.in_channels, self.out_channels, grid.stride());
        let zero = Complex::new(F::zero(), F::zero());
        let mut plain = vec![zero; c * m * stride];
        let mut work = grid.work();
        grid.forward(&self.weights, self.kernel, [0; 3], &mut plain, &mut work);
        let scale = F::one() / F::from_usize(n.iter().product()).expect("grid size fits the float type");
        // Blocks of LANES bins, all channel pairs of a block together: `(block, c, m, LANES)`.
        let mut spectra = vec![zero; c * m * stride];
        for (pair, spectrum) in plain.chunks_exact(stride).enumerate() {
            for (block, values) in spectrum.chunks_exact(LANES).enumerate() {
                for (l, v) in values.iter().enumerate() {
                    spectra[(block * c * m + pair) * LANES + l] = v.conj() * scale;
                }
            }
        }
        let entry = Arc::new(KernelSpectra { grid, spectra, pool: Mutex::new(Vec::new()) });
        if cache.len() == CACHED_GRIDS {
            cache.remove(0);
        }
        cache.push(entry.clone());
        entry
    }

    /// The correlation `(c, t', h', w')` of `input` `(m, t, h, w)` zero-padded by `padding`.
    pub fn forward(&self, input: &[F], shape: [usize; 3], padding: Padding) -> Vec<F> {
        let (padded, out) = self.padded_and_output(shape, padding);
        self.through_spectra(padded, (input, shape, padding.map(|p| p.0)), false, ([0; 3], out))
    }

    /// The gradient with respect to the (unpadded) input of `shape`, given the output gradient.
    pub fn backward(&self, grad: &[F], shape: [usize; 3], padding: Padding) -> Vec<F> {
        let (padded, out) = self.padded_and_output(shape, padding);
        self.through_spectra(padded, (grad, out, [0; 3]), true, (padding.map(|p| p.0), shape))
    }

    fn padded_and_output(&self, shape: [usize; 3], padding: Padding) -> ([usize; 3], [usize; 3]) {
        let padded = [0, 1, 2].map(|d| shape[d] + padding[d].0 + padding[d].1);
        (padded, [0, 1, 2].map(|d| padded[d] + 1 - self.kernel[d]))
    }

    /// Both directions on the grid of `padded`: transform `data` (its shape, placed at an offset),
    /// multiply by the kernel spectra (their adjoint for the input gradient) and keep the box of the
    /// result at `(offset, shape)`.
    fn through_spectra(&self, padded: [usize; 3], data: (&[F], [usize; 3], [usize; 3]), adjoint: bool, keep: ([usize; 3], [usize; 3])) -> Vec<F> {
        let ks = self.spectra(grid_size(padded));
        let grid = &ks.grid;
        let (c, m) = (self.out_channels, self.in_channels);
        let (from, to) = if adjoint { (c, m) } else { (m, c) };
        let stride = grid.stride();
        let zero = Complex::new(F::zero(), F::zero());
        let pooled = ks.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buffers = pooled.unwrap_or_else(|| Buffers { work: grid.work(), spectrum: Vec::new(), product: Vec::new() });
        // Every bin of a channel is written before it is read: no zeroing of reused buffers.
        buffers.spectrum.resize(from * stride, zero);
        buffers.product.resize(to * stride, zero);
        let Buffers { work, spectrum, product } = &mut buffers;
        grid.forward(data.0, data.1, data.2, &mut spectrum[..from * stride], work);
        F::spectrum_products(&ks.spectra, &spectrum[..from * stride], &mut product[..to * stride], [c, m], stride, adjoint);
        let mut result = vec![F::zero(); to * keep.1.iter().product::<usize>()];
        grid.inverse(&mut product[..to * stride], keep.0, keep.1, &mut result, work);
        ks.pool.lock().unwrap_or_else(|e| e.into_inner()).push(buffers);
        result
    }
}

/// The FFT correlation for the float types (`rustfft`'s `FftNum` is not a bound of `Float` itself:
/// its numeric traits would clash with `Float`'s own method names).
pub trait FftKernels: Sized {
    fn fft_forward(c: &FftCorrelation<Self>, input: &[Self], shape: [usize; 3], padding: Padding) -> Vec<Self>;
    fn fft_backward(c: &FftCorrelation<Self>, grad: &[Self], shape: [usize; 3], padding: Padding) -> Vec<Self>;

    /// The products of the spectra with the kernel spectra `k` `(block, c, m, LANES)` of `[c, m]`
    /// channel pairs, summed: forward `out[o] = sum_i a[i] k[o, i]` (`a` has `m` channels, `out`
    /// `c`), else `out[i] = sum_o a[o] conj(k[o, i])` (`a` has `c`, `out` `m`); channels `stride`
    /// apart.
    fn spectrum_products(k: &[Complex<Self>], a: &[Complex<Self>], out: &mut [Complex<Self>], channels: [usize; 2], stride: usize, backward: bool);

    /// Whether line DFTs by matrix product exist for this type (`fft_lines.rs`: float32 only).
    const MATRIX_DFT: bool = false;

    /// Complex values per vector of the matrix product on this CPU, if it runs here now.
    fn matrix_lanes() -> Option<usize> {
        None
    }

    /// `LineDft::process` by the matrix (`column` floats per column): only called where
    /// `matrix_lanes` is `Some`.
    fn matrix_lines(_matrix: &[f32], _column: usize, _n: usize, _lines: &mut [Complex<Self>], _inputs: Range<usize>, _outputs: Range<usize>) {
        unreachable!("no matrix DFT for this float type")
    }
}

impl FftKernels for f64 {
    fn fft_forward(c: &FftCorrelation<f64>, input: &[f64], shape: [usize; 3], padding: Padding) -> Vec<f64> {
        c.forward(input, shape, padding)
    }
    fn fft_backward(c: &FftCorrelation<f64>, grad: &[f64], shape: [usize; 3], padding: Padding) -> Vec<f64> {
        c.backward(grad, shape, padding)
    }
    fn spectrum_products(k: &[Complex<f64>], a: &[Complex<f64>], out: &mut [Complex<f64>], channels: [usize; 2], stride: usize, backward: bool) {
        products_portable(k, a, out, channels, stride, backward);
    }
}

impl FftKernels for f32 {
    fn fft_forward(c: &FftCorrelation<f32>, input: &[f32], shape: [usize; 3], padding: Padding) -> Vec<f32> {
        c.forward(input, shape, padding)
    }
    fn fft_backward(c: &FftCorrelation<f32>, grad: &[f32], shape: [usize; 3], padding: Padding) -> Vec<f32> {
        c.backward(grad, shape, padding)
    }
    fn spectrum_products(k: &[Complex<f32>], a: &[Complex<f32>], out: &mut [Complex<f32>], channels: [usize; 2], stride: usize, backward: bool) {
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx2_fma() {
            // SAFETY: AVX2 and FMA are present; the slices hold whole blocks (checked inside).
            unsafe { x86::spectrum_products(k, a, out, channels, stride, backward) };
            return;
        }
        products_portable(k, a, out, channels, stride, backward);
    }

    const MATRIX_DFT: bool = true;

    fn matrix_lanes() -> Option<usize> {
        if crate::model::simd::avx512() {
            Some(8)
        } else if crate::model::simd::avx2_fma() {
            Some(4)
        } else {
            None
        }
    }

    fn matrix_lines(matrix: &[f32], column: usize, n: usize, lines: &mut [Complex<f32>], inputs: Range<usize>, outputs: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::model::fft_lines::x86;
            if crate::model::simd::avx512() {
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA; the kernel checks the sizes.
                unsafe { x86::lines_avx512(matrix, column, n, lines, inputs, outputs) };
                return;
            } else if crate::model::simd::avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA; the kernel checks the sizes.
                unsafe { x86::lines_avx2(matrix, column, n, lines, inputs, outputs) };
                return;
            }
        }
        let _ = (matrix, column, n, lines, inputs, outputs);
        unreachable!("matrix_lanes said no matrix DFT runs here")
    }
}

fn products_portable<F: FftNum>(k: &[Complex<F>], a: &[Complex<F>], out: &mut [Complex<F>], [c, m]: [usize; 2], stride: usize, backward: bool) {
    let zero = Complex::new(F::zero(), F::zero());
    for block in 0..stride / LANES {
        let kb = &k[block * c * m * LANES..(block + 1) * c * m * LANES];
        let at = |ch: usize| block * LANES + ch * stride;
        if backward {
            for i in 0..m {
                let mut acc = [zero; LANES];
                for o in 0..c {
                    for l in 0..LANES {
                        acc[l] = acc[l] + a[at(o) + l] * kb[(o * m + i) * LANES + l].conj();
                    }
                }
                out[at(i)..at(i) + LANES].copy_from_slice(&acc);
            }
        } else {
            for o in 0..c {
                let mut acc = [zero; LANES];
                for i in 0..m {
                    for l in 0..LANES {
                        acc[l] = acc[l] + a[at(i) + l] * kb[(o * m + i) * LANES + l];
                    }
                }
                out[at(o)..at(o) + LANES].copy_from_slice(&acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use rustfft::num_complex::Complex;

    use super::LANES;

    /// `products_portable` with one AVX vector per block (4 complex float32, interleaved): per
    /// product two FMAs on the real and imaginary parts of `k` duplicated, combined at the end of
    /// the sum by one add-subtract.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spectrum_products(k: &[Complex<f32>], a: &[Complex<f32>], out: &mut [Complex<f32>], [c, m]: [usize; 2], stride: usize, backward: bool) {
        let blocks = stride / LANES;
        let (n_a, n_out) = if backward { (c, m) } else { (m, c) };
        assert!(k.len() >= blocks * c * m * LANES && a.len() >= n_a * stride && out.len() >= n_out * stride);
        let (kp, ap, op) = (k.as_ptr() as *const f32, a.as_ptr() as *const f32, out.as_mut_ptr() as *mut f32);
        let mut values = vec![_mm256_setzero_ps(); n_a];
        let mut swapped = vec![_mm256_setzero_ps(); n_a];
        let sign = _mm256_set1_ps(-0.0);
        for block in 0..blocks {
            for ch in 0..n_a {
                let v = _mm256_loadu_ps(ap.add(2 * (ch * stride + block * LANES)));
                values[ch] = v;
                swapped[ch] = _mm256_permute_ps(v, 0b1011_0001);
            }
            let kb = kp.add(2 * block * c * m * LANES);
            for q in 0..n_out {
                let (mut re, mut im) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for p in 0..n_a {
                    // Forward: out o = q, a channel i = p; backward: out i = q, a channel o = p.
                    let pair = if backward { p * m + q } else { q * m + p };
                    let kv = _mm256_loadu_ps(kb.add(2 * pair * LANES));
                    re = _mm256_fmadd_ps(values[p], _mm256_moveldup_ps(kv), re);
                    im = _mm256_fmadd_ps(swapped[p], _mm256_movehdup_ps(kv), im);
                }
                let im = if backward { _mm256_xor_ps(im, sign) } else { im };
                _mm256_storeu_ps(op.add(2 * (q * stride + block * LANES)), _mm256_addsub_ps(re, im));
            }
        }
    }
}
