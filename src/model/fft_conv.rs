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
use std::sync::{Arc, Mutex};

use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftNum, FftPlanner};

use crate::model::config::Padding;

/// Kernel spectra for this many grid sizes are kept per layer (MEIs of one model use a few sizes:
/// the whole stimulus, the frames an output neuron depends on, an inner channel's receptive field).
const CACHED_GRIDS: usize = 6;

/// Whether the FFT route is expected to be faster than the direct correlation for `m` input and `c`
/// output channels, `kernel` taps, and a padded input `padded`. The constants are measured on this
/// machine kind (`retina bench` on `zoo_conv_full`): a direct multiply-add costs about 0.06 ns in
/// AVX2 float32, a real FFT about 0.5 ns per point and log2 point, a complex product of spectra 1 ns.
pub fn fft_pays(m: usize, c: usize, kernel: [usize; 3], padded: [usize; 3]) -> bool {
    let out: f64 = (0..3).map(|d| (padded[d] + 1 - kernel[d].min(padded[d])) as f64).product();
    let taps: f64 = kernel.iter().map(|&k| k as f64).product();
    let direct = 0.06 * (m * c) as f64 * taps * out;
    let n = grid_size(padded);
    let points: f64 = n.iter().map(|&v| v as f64).product();
    let bins = points / n[2] as f64 * (n[2] / 2 + 1) as f64;
    let fft = 0.5 * (m + c) as f64 * points * points.log2() + 1.0 * (m * c) as f64 * bins;
    fft < direct
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
    fy: Arc<dyn Fft<F>>,
    iy: Arc<dyn Fft<F>>,
    ft: Arc<dyn Fft<F>>,
    it: Arc<dyn Fft<F>>,
}

/// Temporaries of one transform call.
struct Work<F> {
    row: Vec<F>,
    bins: Vec<Complex<F>>,
    /// One channel in `(t, kx, ky)` order.
    planes: Vec<Complex<F>>,
    scratch: Vec<Complex<F>>,
}

impl<F: FftNum> Grid<F> {
    fn new(n: [usize; 3]) -> Self {
        let mut real = RealFftPlanner::<F>::new();
        let mut complex = FftPlanner::<F>::new();
        Grid {
            n,
            wc: n[2] / 2 + 1,
            r2c: real.plan_fft_forward(n[2]),
            c2r: real.plan_fft_inverse(n[2]),
            fy: complex.plan_fft_forward(n[1]),
            iy: complex.plan_fft_inverse(n[1]),
            ft: complex.plan_fft_forward(n[0]),
            it: complex.plan_fft_inverse(n[0]),
        }
    }

    /// Complex values of one channel's spectrum, in `(kx, ky, kt)` order.
    fn bins(&self) -> usize {
        self.wc * self.n[1] * self.n[0]
    }

    fn work(&self) -> Work<F> {
        let scratch = [
            self.r2c.get_scratch_len(),
            self.c2r.get_scratch_len(),
            self.fy.get_inplace_scratch_len(),
            self.iy.get_inplace_scratch_len(),
            self.ft.get_inplace_scratch_len(),
            self.it.get_inplace_scratch_len(),
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
        let zero = Complex::new(F::zero(), F::zero());
        let len = shape.iter().product::<usize>();
        let bins = self.bins();
        for (x, spectrum) in input.chunks_exact(len).zip(spectra.chunks_exact_mut(bins)) {
            // Along x, the rows holding values; the planes (t, kx, ky) are zero elsewhere.
            let planes = &mut work.planes[..shape[0] * wc * nh];
            planes.fill(zero);
            for t in 0..shape[0] {
                for y in 0..shape[1] {
                    work.row.fill(F::zero());
                    let src = (t * shape[1] + y) * shape[2];
                    work.row[offset[2]..offset[2] + shape[2]].copy_from_slice(&x[src..src + shape[2]]);
                    self.r2c.process_with_scratch(&mut work.row, &mut work.bins, &mut work.scratch).expect("buffer sizes match the plan");
                    let plane = &mut planes[t * wc * nh..];
                    for (kx, &v) in work.bins.iter().enumerate() {
                        plane[kx * nh + y + offset[1]] = v;
                    }
                }
            }
            // Along y, every (t, kx) row of the planes.
            self.fy.process_with_scratch(planes, &mut work.scratch);
            // Along t: (kx, ky, t) order, frames without values stay zero.
            spectrum.fill(zero);
            for t in 0..shape[0] {
                for (q, &v) in planes[t * wc * nh..(t + 1) * wc * nh].iter().enumerate() {
                    spectrum[q * nt + t + offset[0]] = v;
                }
            }
        }
        self.ft.process_with_scratch(spectra, &mut work.scratch);
    }

    /// The inverse transforms (unscaled) of `channels` spectra (destroyed), the values of the box
    /// `[lo, lo + shape)` of the grid written to `out` (`channels x shape`).
    fn inverse(&self, spectra: &mut [Complex<F>], lo: [usize; 3], shape: [usize; 3], out: &mut [F], work: &mut Work<F>) {
        let [nt, nh, _] = self.n;
        let wc = self.wc;
        let len = shape.iter().product::<usize>();
        self.it.process_with_scratch(spectra, &mut work.scratch);
        for (spectrum, o) in spectra.chunks_exact(self.bins()).zip(out.chunks_exact_mut(len)) {
            let planes = &mut work.planes[..shape[0] * wc * nh];
            for t in 0..shape[0] {
                for (q, v) in planes[t * wc * nh..(t + 1) * wc * nh].iter_mut().enumerate() {
                    *v = spectrum[q * nt + t + lo[0]];
                }
            }
            self.iy.process_with_scratch(planes, &mut work.scratch);
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
/// factor): `(c, m, bins)`.
struct KernelSpectra<F: FftNum> {
    grid: Grid<F>,
    spectra: Vec<Complex<F>>,
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

impl<F: FftNum> FftCorrelation<F> {
    fn spectra(&self, n: [usize; 3]) -> Arc<KernelSpectra<F>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let typed = |entry: &Arc<dyn Any + Send + Sync>| entry.clone().downcast::<KernelSpectra<F>>().ok();
        if let Some(pos) = cache.iter().position(|s| typed(s).is_some_and(|s| s.grid.n == n)) {
            let found = cache.remove(pos);
            cache.push(found.clone());
            return typed(&found).expect("checked above");
        }
        let grid = Grid::new(n);
        let bins = grid.bins();
        let (m, c) = (self.in_channels, self.out_channels);
        let mut spectra = vec![Complex::new(F::zero(), F::zero()); c * m * bins];
        let mut work = grid.work();
        grid.forward(&self.weights, self.kernel, [0; 3], &mut spectra, &mut work);
        let scale = F::one() / F::from_usize(n.iter().product()).expect("grid size fits the float type");
        spectra.iter_mut().for_each(|v| *v = v.conj() * scale);
        let entry = Arc::new(KernelSpectra { grid, spectra });
        if cache.len() == CACHED_GRIDS {
            cache.remove(0);
        }
        cache.push(entry.clone());
        entry
    }

    /// The correlation `(c, t', h', w')` of `input` `(m, t, h, w)` zero-padded by `padding`.
    pub fn forward(&self, input: &[F], shape: [usize; 3], padding: Padding) -> Vec<F> {
        let padded = [0, 1, 2].map(|d| shape[d] + padding[d].0 + padding[d].1);
        let out = [0, 1, 2].map(|d| padded[d] + 1 - self.kernel[d]);
        let ks = self.spectra(grid_size(padded));
        let (grid, (m, c)) = (&ks.grid, (self.in_channels, self.out_channels));
        let bins = grid.bins();
        let mut work = grid.work();
        let zero = Complex::new(F::zero(), F::zero());
        let mut xs = vec![zero; m * bins];
        grid.forward(input, shape, padding.map(|p| p.0), &mut xs, &mut work);
        let mut ys = vec![zero; c * bins];
        for (y, k_o) in ys.chunks_exact_mut(bins).zip(ks.spectra.chunks_exact(m * bins)) {
            for (x, k) in xs.chunks_exact(bins).zip(k_o.chunks_exact(bins)) {
                multiply_add(y, x, k, false);
            }
        }
        let mut result = vec![F::zero(); c * out.iter().product::<usize>()];
        grid.inverse(&mut ys, [0; 3], out, &mut result, &mut work);
        result
    }

    /// The gradient with respect to the (unpadded) input of `shape`, given the output gradient.
    pub fn backward(&self, grad: &[F], shape: [usize; 3], padding: Padding) -> Vec<F> {
        let padded = [0, 1, 2].map(|d| shape[d] + padding[d].0 + padding[d].1);
        let out = [0, 1, 2].map(|d| padded[d] + 1 - self.kernel[d]);
        let ks = self.spectra(grid_size(padded));
        let (grid, (m, c)) = (&ks.grid, (self.in_channels, self.out_channels));
        let bins = grid.bins();
        let mut work = grid.work();
        let zero = Complex::new(F::zero(), F::zero());
        let mut gs = vec![zero; c * bins];
        grid.forward(grad, out, [0; 3], &mut gs, &mut work);
        let mut gx = vec![zero; m * bins];
        for (g, k_o) in gs.chunks_exact(bins).zip(ks.spectra.chunks_exact(m * bins)) {
            for (x, k) in gx.chunks_exact_mut(bins).zip(k_o.chunks_exact(bins)) {
                multiply_add(x, g, k, true);
            }
        }
        let mut result = vec![F::zero(); m * shape.iter().product::<usize>()];
        grid.inverse(&mut gx, padding.map(|p| p.0), shape, &mut result, &mut work);
        result
    }
}

/// The FFT correlation for the float types (`rustfft`'s `FftNum` is not a bound of `Float` itself:
/// its numeric traits would clash with `Float`'s own method names).
pub trait FftKernels: Sized {
    fn fft_forward(c: &FftCorrelation<Self>, input: &[Self], shape: [usize; 3], padding: Padding) -> Vec<Self>;
    fn fft_backward(c: &FftCorrelation<Self>, grad: &[Self], shape: [usize; 3], padding: Padding) -> Vec<Self>;
}

macro_rules! impl_fft_kernels {
    ($t:ty) => {
        impl FftKernels for $t {
            fn fft_forward(c: &FftCorrelation<$t>, input: &[$t], shape: [usize; 3], padding: Padding) -> Vec<$t> {
                c.forward(input, shape, padding)
            }
            fn fft_backward(c: &FftCorrelation<$t>, grad: &[$t], shape: [usize; 3], padding: Padding) -> Vec<$t> {
                c.backward(grad, shape, padding)
            }
        }
    };
}
impl_fft_kernels!(f32);
impl_fft_kernels!(f64);

/// `acc += a * b` (or `a * conj(b)`) elementwise.
#[inline]
fn multiply_add<F: FftNum>(acc: &mut [Complex<F>], a: &[Complex<F>], b: &[Complex<F>], conj: bool) {
    if conj {
        for ((y, &x), &k) in acc.iter_mut().zip(a).zip(b) {
            *y = *y + x * k.conj();
        }
    } else {
        for ((y, &x), &k) in acc.iter_mut().zip(a).zip(b) {
            *y = *y + x * k;
        }
    }
}
