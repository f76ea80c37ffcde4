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
//! Transforms: real-to-complex (`realfft`) along the longer of t and x, on the lines holding data
//! only, then complex along y and along the other axis (`fft_lines.rs`: `rustfft`, or for short lines
//! a matrix product over the non-zero inputs and the wanted outputs), each axis made contiguous by a
//! transposed copy; the inverse runs the same steps backwards, keeping only the rows and columns of
//! the values asked for. Spectra and kernel spectra are multiplied in blocks of 16 bins, real and
//! imaginary parts apart (AVX-512, or AVX2). Float32 FFTs add rounding of about 1e-7 x log2(grid)
//! relative to the largest values, well inside the tolerances (`tests/fft_conv.rs` compares with the
//! direct path).

use std::any::Any;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use realfft::RealFftPlanner;
use rustfft::num_complex::Complex;
use rustfft::{FftNum, FftPlanner};

use crate::model::config::Padding;
use crate::model::fft_lines::{LineDft, RealLineDft};

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

/// Complex bins of one channel's spectrum on grid `n` (halved along its real axis).
fn bins(n: [usize; 3]) -> usize {
    let [a, b, c] = transform_order(n);
    (n[a] / 2 + 1) * n[b] * n[c]
}

/// The axes of grid `n` in the order they are transformed: first the real transform along the longer
/// of t and x (it halves that axis, and it runs on the fewest lines: the data's), then y, then the
/// other, contiguous in the spectra.
pub fn transform_order(n: [usize; 3]) -> [usize; 3] {
    if n[0] >= n[2] { [0, 1, 2] } else { [2, 1, 0] }
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
/// Nanoseconds per vector multiply-add of the direct correlation. 0.46 with its AVX2 kernels; its
/// AVX-512 channels-last kernel (output channels a multiple of 16) ran `zoo_conv_full`'s layer shapes
/// 1.84-2.06x faster (one core, CPU time, best of 7: 21x11x11 taps 2 -> 16 channels on 40 frames of
/// 18x16 2079 -> 1008 us; 11x5x5 taps 16 -> 16 on 20 frames of 8x6, padded 857 -> 466 us), so 0.46 /
/// 1.9. The pixels-along-x kernel (a layer's stimulus gradient) has no AVX-512 variant and is slower
/// than this says; its choices had FFT 4-14x ahead on those layers, which this does not reverse.
const DIRECT_NS_PER_FMA: f64 = 0.24;

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
/// factors are 2, 3 and 5 (fast `rustfft` butterflies), even along the real transform's axis.
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
    let mut n = padded.map(|v| next(v, false));
    let real = transform_order(n)[0];
    n[real] = next(padded[real], true);
    n
}

/// Plans of one grid `(t, h, w)`.
struct Grid<F: FftNum> {
    n: [usize; 3],
    /// The axes `[a, b, c]` in transform order (`transform_order`): spectra are `(ka, kb, kc)`,
    /// `ka < n[a] / 2 + 1`.
    order: [usize; 3],
    /// Complex bins along the real axis `a`: `n[a] / 2 + 1`.
    half: usize,
    real: RealLineDft<F>,
    fb: LineDft<F>,
    ib: LineDft<F>,
    fc: LineDft<F>,
    ic: LineDft<F>,
}

/// Bins per block of the spectrum products: one AVX-512 vector of float32 real parts and one of
/// imaginary parts (two AVX2 vectors each).
const LANES: usize = 16;

/// Temporaries of one transform call.
struct Work<F> {
    row: Vec<F>,
    bins: Vec<Complex<F>>,
    /// One channel between the transforms along `b` and `c`: `(ka, c, b)`.
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
        let order = transform_order(n);
        let [a, b, c] = order;
        Grid {
            n,
            order,
            half: n[a] / 2 + 1,
            real: RealLineDft::new(&mut real, n[a]),
            fb: LineDft::new(&mut complex, n[b], false),
            ib: LineDft::new(&mut complex, n[b], true),
            fc: LineDft::new(&mut complex, n[c], false),
            ic: LineDft::new(&mut complex, n[c], true),
        }
    }

    /// Complex values of one channel's spectrum, in `(ka, kb, kc)` order.
    fn bins(&self) -> usize {
        self.half * self.n[self.order[1]] * self.n[self.order[2]]
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
            self.real.scratch_len(),
            self.fb.scratch_len(),
            self.ib.scratch_len(),
            self.fc.scratch_len(),
            self.ic.scratch_len(),
        ];
        let zero = Complex::new(F::zero(), F::zero());
        let [a, b, c] = self.order;
        Work {
            row: vec![F::zero(); self.n[a]],
            bins: vec![zero; self.half],
            planes: vec![zero; self.half * self.n[b] * self.n[c]],
            scratch: vec![zero; scratch.into_iter().max().unwrap_or(0)],
        }
    }

    /// The spectra of `channels` real arrays `(t, h, w)` of `shape` (consecutive in `input`), each
    /// placed at `offset` on the grid (zero elsewhere), into `spectra` (`channels x bins`).
    ///
    /// Along `a` the real lines of the data only (`shape[b] x shape[c]` of them), into lines along
    /// `b` (`(ka, c, b)`); along `b` those lines (their rows without data taken as zero); then in
    /// `(ka, kb, c)` order along `c` (columns without data taken as zero).
    fn forward(&self, input: &[F], shape: [usize; 3], offset: [usize; 3], spectra: &mut [Complex<F>], work: &mut Work<F>) {
        let [a, b, c] = self.order;
        let (nb, nc, half) = (self.n[b], self.n[c], self.half);
        let strides = [shape[1] * shape[2], shape[2], 1];
        let len = shape.iter().product::<usize>();
        let bins = self.bins();
        let (sa, sb, sc) = (shape[a], shape[b], shape[c]);
        let (oa, ob, oc) = (offset[a], offset[b], offset[c]);
        for (x, spectrum) in input.chunks_exact(len).zip(spectra.chunks_exact_mut(self.stride())) {
            let spectrum = &mut spectrum[..bins];
            let lines = &mut work.planes[..half * sc * nb];
            for jb in 0..sb {
                for jc in 0..sc {
                    let base = jb * strides[b] + jc * strides[c];
                    for (ja, v) in work.row[oa..oa + sa].iter_mut().enumerate() {
                        *v = x[base + ja * strides[a]];
                    }
                    self.real.forward(&mut work.row, oa..oa + sa, &mut work.bins, &mut work.scratch);
                    for (ka, &v) in work.bins.iter().enumerate() {
                        lines[(ka * sc + jc) * nb + ob + jb] = v;
                    }
                }
            }
            self.fb.process(lines, ob..ob + sb, 0..nb, &mut work.scratch);
            for ka in 0..half {
                for jc in 0..sc {
                    let line = &lines[(ka * sc + jc) * nb..][..nb];
                    for (kb, &v) in line.iter().enumerate() {
                        spectrum[(ka * nb + kb) * nc + oc + jc] = v;
                    }
                }
            }
            self.fc.process(spectrum, oc..oc + sc, 0..nc, &mut work.scratch);
        }
    }

    /// The inverse transforms (unscaled) of `channels` spectra (destroyed), the values of the box
    /// `[lo, lo + shape)` of the grid written to `out` (`channels x shape`): the steps of `forward`
    /// in reverse, each keeping only the rows and columns of the box.
    fn inverse(&self, spectra: &mut [Complex<F>], lo: [usize; 3], shape: [usize; 3], out: &mut [MaybeUninit<F>], work: &mut Work<F>) {
        let [a, b, c] = self.order;
        let (nb, nc, half) = (self.n[b], self.n[c], self.half);
        let strides = [shape[1] * shape[2], shape[2], 1];
        let len = shape.iter().product::<usize>();
        let bins = self.bins();
        let (sa, sb, sc) = (shape[a], shape[b], shape[c]);
        let (la, lb, lc) = (lo[a], lo[b], lo[c]);
        for (spectrum, o) in spectra.chunks_exact_mut(self.stride()).zip(out.chunks_exact_mut(len)) {
            let spectrum = &mut spectrum[..bins];
            self.ic.process(spectrum, 0..nc, lc..lc + sc, &mut work.scratch);
            let lines = &mut work.planes[..half * sc * nb];
            for ka in 0..half {
                for jc in 0..sc {
                    let line = &mut lines[(ka * sc + jc) * nb..][..nb];
                    for (kb, v) in line.iter_mut().enumerate() {
                        *v = spectrum[(ka * nb + kb) * nc + lc + jc];
                    }
                }
            }
            self.ib.process(lines, 0..nb, lb..lb + sb, &mut work.scratch);
            for jb in 0..sb {
                for jc in 0..sc {
                    for (ka, v) in work.bins.iter_mut().enumerate() {
                        *v = lines[(ka * sc + jc) * nb + lb + jb];
                    }
                    self.real.inverse(&mut work.bins, la..la + sa, &mut work.row, &mut work.scratch);
                    let base = jb * strides[b] + jc * strides[c];
                    for (ja, &v) in work.row[la..la + sa].iter().enumerate() {
                        o[base + ja * strides[a]].write(v);
                    }
                }
            }
        }
    }
}

/// The conjugated kernel spectra of one grid, scaled by `1 / points` (the inverse transform's
/// factor), in blocks of `LANES` bins, real and imaginary parts apart: `(block, c, m, re/im, LANES)`.
struct KernelSpectra<F: FftNum> {
    grid: Grid<F>,
    spectra: Vec<F>,
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
        // Blocks of LANES bins, all channel pairs of a block together, real and imaginary parts
        // apart (products without shuffles): `(block, c, m, re/im, LANES)`.
        let mut spectra = vec![F::zero(); 2 * c * m * stride];
        for (pair, spectrum) in plain.chunks_exact(stride).enumerate() {
            for (block, values) in spectrum.chunks_exact(LANES).enumerate() {
                let at = (block * c * m + pair) * 2 * LANES;
                for (l, v) in values.iter().enumerate() {
                    let v = v.conj() * scale;
                    spectra[at + l] = v.re;
                    spectra[at + LANES + l] = v.im;
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
        // Every bin of a channel is written before it is read: no zeroing of reused buffers, which
        // only grow (forward and input gradient use them with `m` and `c` channels in turn).
        for (buffer, channels) in [(&mut buffers.spectrum, from), (&mut buffers.product, to)] {
            if buffer.len() < channels * stride {
                buffer.resize(channels * stride, zero);
            }
        }
        let Buffers { work, spectrum, product } = &mut buffers;
        grid.forward(data.0, data.1, data.2, &mut spectrum[..from * stride], work);
        F::spectrum_products(&ks.spectra, &spectrum[..from * stride], &mut product[..to * stride], [c, m], stride, adjoint);
        // Every value of the kept box is written by `inverse`: no zeroing first.
        let len = to * keep.1.iter().product::<usize>();
        let mut result = Vec::with_capacity(len);
        grid.inverse(&mut product[..to * stride], keep.0, keep.1, &mut result.spare_capacity_mut()[..len], work);
        // SAFETY: `inverse` wrote all `len` values (every channel's whole box).
        unsafe { result.set_len(len) };
        ks.pool.lock().unwrap_or_else(|e| e.into_inner()).push(buffers);
        result
    }
}

/// The FFT correlation for the float types (`rustfft`'s `FftNum` is not a bound of `Float` itself:
/// its numeric traits would clash with `Float`'s own method names).
pub trait FftKernels: Sized {
    fn fft_forward(c: &FftCorrelation<Self>, input: &[Self], shape: [usize; 3], padding: Padding) -> Vec<Self>;
    fn fft_backward(c: &FftCorrelation<Self>, grad: &[Self], shape: [usize; 3], padding: Padding) -> Vec<Self>;

    /// The products of the spectra with the kernel spectra `k` `(block, c, m, re/im, LANES)` of `[c, m]`
    /// channel pairs, summed: forward `out[o] = sum_i a[i] k[o, i]` (`a` has `m` channels, `out`
    /// `c`), else `out[i] = sum_o a[o] conj(k[o, i])` (`a` has `c`, `out` `m`); channels `stride`
    /// apart.
    fn spectrum_products(k: &[Self], a: &[Complex<Self>], out: &mut [Complex<Self>], channels: [usize; 2], stride: usize, backward: bool);

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

    /// `RealLineDft::forward` by the matrix (AVX-512 only).
    fn real_matrix_forward(_matrix: &[f32], _column: usize, _row: &[Self], _inputs: Range<usize>, _bins: &mut [Complex<Self>]) {
        unreachable!("no matrix DFT for this float type")
    }

    /// `RealLineDft::inverse` by the matrix (AVX-512 only).
    fn real_matrix_inverse(_matrix: &[f32], _column: usize, _bins: &[Complex<Self>], _outputs: Range<usize>, _row: &mut [Self]) {
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
    fn spectrum_products(k: &[f64], a: &[Complex<f64>], out: &mut [Complex<f64>], channels: [usize; 2], stride: usize, backward: bool) {
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
    fn spectrum_products(k: &[f32], a: &[Complex<f32>], out: &mut [Complex<f32>], channels: [usize; 2], stride: usize, backward: bool) {
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx512() {
            // SAFETY: AVX-512F, AVX2 and FMA are present; the slices hold whole blocks (checked inside).
            unsafe { x86::spectrum_products_avx512(k, a, out, channels, stride, backward) };
            return;
        } else if crate::model::simd::avx2_fma() {
            // SAFETY: AVX2 and FMA are present; the slices hold whole blocks (checked inside).
            unsafe { x86::spectrum_products_avx2(k, a, out, channels, stride, backward) };
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

    fn real_matrix_forward(matrix: &[f32], column: usize, row: &[f32], inputs: Range<usize>, bins: &mut [Complex<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx512() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA; the kernel checks the sizes.
            unsafe { crate::model::fft_lines::x86::real_forward_avx512(matrix, column, row, inputs, bins) };
            return;
        }
        let _ = (matrix, column, row, inputs, bins);
        unreachable!("matrix_lanes said no AVX-512 matrix DFT runs here")
    }

    fn real_matrix_inverse(matrix: &[f32], column: usize, bins: &[Complex<f32>], outputs: Range<usize>, row: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx512() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA; the kernel checks the sizes.
            unsafe { crate::model::fft_lines::x86::real_inverse_avx512(matrix, column, bins, outputs, row) };
            return;
        }
        let _ = (matrix, column, bins, outputs, row);
        unreachable!("matrix_lanes said no AVX-512 matrix DFT runs here")
    }
}

fn products_portable<F: FftNum>(k: &[F], a: &[Complex<F>], out: &mut [Complex<F>], [c, m]: [usize; 2], stride: usize, backward: bool) {
    let zero = Complex::new(F::zero(), F::zero());
    let (n_a, n_out) = if backward { (c, m) } else { (m, c) };
    for block in 0..stride / LANES {
        let kb = &k[block * c * m * 2 * LANES..(block + 1) * c * m * 2 * LANES];
        let at = |ch: usize| block * LANES + ch * stride;
        for q in 0..n_out {
            let mut acc = [zero; LANES];
            for p in 0..n_a {
                // Forward: out o = q, a channel i = p; backward: out i = q, a channel o = p.
                let pair = if backward { p * m + q } else { q * m + p };
                let kp = &kb[pair * 2 * LANES..(pair + 1) * 2 * LANES];
                for (l, acc) in acc.iter_mut().enumerate() {
                    let kv = Complex::new(kp[l], kp[LANES + l]);
                    *acc = *acc + a[at(p) + l] * if backward { kv.conj() } else { kv };
                }
            }
            out[at(q)..at(q) + LANES].copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use rustfft::num_complex::Complex;

    use super::LANES;

    /// `products_portable` with AVX-512: per block of 16 bins, the spectra's real and imaginary
    /// parts apart (two permutes per channel), then per output channel four FMAs per input channel
    /// and no shuffles, two output channels at a time (eight independent sums).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn spectrum_products_avx512(k: &[f32], a: &[Complex<f32>], out: &mut [Complex<f32>], [c, m]: [usize; 2], stride: usize, backward: bool) {
        const _: () = assert!(LANES == 16);
        let blocks = stride / LANES;
        let (n_a, n_out) = if backward { (c, m) } else { (m, c) };
        assert!(stride.is_multiple_of(LANES) && k.len() >= blocks * c * m * 2 * LANES && a.len() >= n_a * stride && out.len() >= n_out * stride);
        let (kp, ap, op) = (k.as_ptr(), a.as_ptr() as *const f32, out.as_mut_ptr() as *mut f32);
        let mut re = vec![_mm512_setzero_ps(); n_a];
        let mut im = vec![_mm512_setzero_ps(); n_a];
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for block in 0..blocks {
            for ch in 0..n_a {
                let src = ap.add(2 * (ch * stride + block * LANES));
                let (v0, v1) = (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)));
                re[ch] = _mm512_permutex2var_ps(v0, even, v1);
                im[ch] = _mm512_permutex2var_ps(v0, odd, v1);
            }
            let kb = kp.add(block * c * m * 2 * LANES);
            let mut q = 0;
            while q + 1 < n_out {
                outputs_avx512::<2>(&re, &im, kb, [c, m], q, backward, op.add(2 * (q * stride + block * LANES)), stride);
                q += 2;
            }
            if q < n_out {
                outputs_avx512::<1>(&re, &im, kb, [c, m], q, backward, op.add(2 * (q * stride + block * LANES)), stride);
            }
        }
    }

    /// Output channels `q..q + U` of one block: per output the sums of a.re k.re, a.im k.im,
    /// a.re k.im and a.im k.re (independent FMA chains), combined into `a k` or `a conj(k)` and
    /// interleaved into `dst` (outputs `stride` complex values apart).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn outputs_avx512<const U: usize>(re: &[__m512], im: &[__m512], kb: *const f32, [_, m]: [usize; 2], q: usize, backward: bool, dst: *mut f32, stride: usize) {
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let mut s = [[_mm512_setzero_ps(); 4]; U];
        for (p, (&ar, &ai)) in re.iter().zip(im).enumerate() {
            for (u, s) in s.iter_mut().enumerate() {
                // Forward: out o = q, a channel i = p; backward: out i = q, a channel o = p.
                let pair = if backward { p * m + q + u } else { (q + u) * m + p };
                let kq = kb.add(pair * 2 * LANES);
                let (kr, ki) = (_mm512_loadu_ps(kq), _mm512_loadu_ps(kq.add(LANES)));
                s[0] = _mm512_fmadd_ps(ar, kr, s[0]);
                s[1] = _mm512_fmadd_ps(ai, ki, s[1]);
                s[2] = _mm512_fmadd_ps(ar, ki, s[2]);
                s[3] = _mm512_fmadd_ps(ai, kr, s[3]);
            }
        }
        for (u, s) in s.iter().enumerate() {
            let (r, i) = if backward { (_mm512_add_ps(s[0], s[1]), _mm512_sub_ps(s[3], s[2])) } else { (_mm512_sub_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])) };
            let d = dst.add(2 * u * stride);
            _mm512_storeu_ps(d, _mm512_permutex2var_ps(r, low, i));
            _mm512_storeu_ps(d.add(16), _mm512_permutex2var_ps(r, high, i));
        }
    }

    /// The same with AVX2: each block of 16 bins as two halves of 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spectrum_products_avx2(k: &[f32], a: &[Complex<f32>], out: &mut [Complex<f32>], [c, m]: [usize; 2], stride: usize, backward: bool) {
        let blocks = stride / LANES;
        let (n_a, n_out) = if backward { (c, m) } else { (m, c) };
        assert!(stride.is_multiple_of(LANES) && k.len() >= blocks * c * m * 2 * LANES && a.len() >= n_a * stride && out.len() >= n_out * stride);
        let (kp, ap, op) = (k.as_ptr(), a.as_ptr() as *const f32, out.as_mut_ptr() as *mut f32);
        let mut re = vec![_mm256_setzero_ps(); n_a];
        let mut im = vec![_mm256_setzero_ps(); n_a];
        let order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
        for block in 0..blocks {
            for half in 0..2 {
                let bin = block * LANES + 8 * half;
                for ch in 0..n_a {
                    let src = ap.add(2 * (ch * stride + bin));
                    let (v0, v1) = (_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(8)));
                    re[ch] = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(v0, v1, 0b10_00_10_00), order);
                    im[ch] = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(v0, v1, 0b11_01_11_01), order);
                }
                let kb = kp.add(block * c * m * 2 * LANES + 8 * half);
                let mut q = 0;
                while q + 1 < n_out {
                    outputs_avx2::<2>(&re, &im, kb, [c, m], q, backward, op.add(2 * (q * stride + bin)), stride);
                    q += 2;
                }
                if q < n_out {
                    outputs_avx2::<1>(&re, &im, kb, [c, m], q, backward, op.add(2 * (q * stride + bin)), stride);
                }
            }
        }
    }

    /// `outputs_avx512` for 8 bins.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn outputs_avx2<const U: usize>(re: &[__m256], im: &[__m256], kb: *const f32, [_, m]: [usize; 2], q: usize, backward: bool, dst: *mut f32, stride: usize) {
        let mut s = [[_mm256_setzero_ps(); 4]; U];
        for (p, (&ar, &ai)) in re.iter().zip(im).enumerate() {
            for (u, s) in s.iter_mut().enumerate() {
                let pair = if backward { p * m + q + u } else { (q + u) * m + p };
                let kq = kb.add(pair * 2 * LANES);
                let (kr, ki) = (_mm256_loadu_ps(kq), _mm256_loadu_ps(kq.add(LANES)));
                s[0] = _mm256_fmadd_ps(ar, kr, s[0]);
                s[1] = _mm256_fmadd_ps(ai, ki, s[1]);
                s[2] = _mm256_fmadd_ps(ar, ki, s[2]);
                s[3] = _mm256_fmadd_ps(ai, kr, s[3]);
            }
        }
        for (u, s) in s.iter().enumerate() {
            let (r, i) = if backward { (_mm256_add_ps(s[0], s[1]), _mm256_sub_ps(s[3], s[2])) } else { (_mm256_sub_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])) };
            let (lo, hi) = (_mm256_unpacklo_ps(r, i), _mm256_unpackhi_ps(r, i));
            let d = dst.add(2 * u * stride);
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x20));
            _mm256_storeu_ps(d.add(8), _mm256_permute2f128_ps(lo, hi, 0x31));
        }
    }
}
