//! PyTorch's `nn.Conv3d` (stride 1, square spatial kernel, zero padding, optional bias): openretina's
//! `TorchFullConv3D` (`convolution_type: full`), `TimeIndependentConv3D` (`time_independent`, kernel
//! `(1, k, k)`), the 1x1x1 projections of `ConvGRUCore`, and both stages of `TorchSTSeparableConv3D`.
//!
//! Per input channel one matrix product applies every `(dt, out)` spatial kernel to every padded
//! frame (`[rows = t * pixels] x [k * k] x [kt * out]`), then the `kt` shifted frames are summed; the
//! input gradient runs the same two steps transposed. In float32 on CPUs with AVX2 and FMA, a direct
//! correlation (`simd_conv.rs`) replaces both: forward, and the input gradient as the correlation of
//! the output gradient with the flipped kernels. Where the kernels are large enough that it pays
//! (`fft_conv::fft_pays`, decided per call from the input's size), both run by FFT instead, in
//! float32 and float64.

use crate::error::Result;
use crate::model::config::Padding;
use crate::model::layer::{BackwardValues, KernelView, Layer, LayerState, Reach, Shape};
use crate::model::linalg::{gemm, Layout};
use crate::model::fft_conv::{self, fft_pays, FftCorrelation};
use crate::model::load::StateDict;
use crate::model::simd_conv::Correlation;
use crate::model::Float;

use super::st_separable::{conv_output_shape, Geometry};

#[derive(Debug, Clone)]
pub struct Conv3d<F> {
    pub in_channels: usize,
    pub out_channels: usize,
    /// `(time, height, width)`; height = width.
    pub kernel: [usize; 3],
    pub padding: Padding,
    /// `(out, in, kt, k, k)`, as stored.
    pub weight: Vec<F>,
    pub bias: Option<Vec<F>>,
    /// `[in][(dy, dx)][dt][out]`, for the matrix product.
    packed: Vec<F>,
    /// `(in, kt, k, k, out)`: the weights channels last, for the direct correlation.
    weight_channels_last: Vec<F>,
    /// The input gradient's correlation: `(in, out, kt, k, k)` flipped in time and space, and the
    /// same channels last `(out, kt, k, k, in)`.
    flipped: Vec<F>,
    flipped_channels_last: Vec<F>,
    /// The same kernels by FFT, with their spectra cached per grid size.
    fft: FftCorrelation<F>,
    /// How the correlation runs (tests force one route to compare them).
    pub route: ConvRoute,
    /// What it stands for in openretina, for `retina info`.
    pub class: String,
}

/// Which way `Conv3d` computes its correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvRoute {
    /// FFT where `fft_pays` expects it to be faster, else direct.
    Auto,
    Direct,
    Fft,
}

impl<F: Float> Conv3d<F> {
    /// `{prefix}.weight` `(out, in, kt, k, k)` and, with `bias`, `{prefix}.bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        sd: &mut StateDict,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 3],
        padding: Padding,
        bias: bool,
        class: &str,
    ) -> Result<Self> {
        let [kt, kh, kw] = kernel;
        let weight = sd.take(&format!("{prefix}.weight"), &[out_channels, in_channels, kt, kh, kw])?;
        let bias = if bias { Some(sd.take(&format!("{prefix}.bias"), &[out_channels])?) } else { None };
        Ok(Conv3d::new(in_channels, out_channels, kernel, padding, weight, bias, class))
    }

    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 3],
        padding: Padding,
        weight: Vec<F>,
        bias: Option<Vec<F>>,
        class: &str,
    ) -> Self {
        let [kt, k, k2] = kernel;
        assert_eq!(k, k2, "square spatial kernels only");
        let (o_n, i_n, kk) = (out_channels, in_channels, k * k);
        let mut packed = vec![F::zero(); i_n * kk * kt * o_n];
        for o in 0..o_n {
            for i in 0..i_n {
                for dt in 0..kt {
                    for j in 0..kk {
                        packed[((i * kk + j) * kt + dt) * o_n + o] = weight[((o * i_n + i) * kt + dt) * kk + j];
                    }
                }
            }
        }
        let size = kt * kk;
        let mut weight_channels_last = vec![F::zero(); weight.len()];
        let mut flipped = vec![F::zero(); weight.len()];
        let mut flipped_channels_last = vec![F::zero(); weight.len()];
        for o in 0..o_n {
            for i in 0..i_n {
                for j in 0..size {
                    let w = weight[(o * i_n + i) * size + j];
                    weight_channels_last[(i * size + j) * o_n + o] = w;
                    flipped[(i * o_n + o) * size + size - 1 - j] = w;
                    flipped_channels_last[(o * size + size - 1 - j) * i_n + i] = w;
                }
            }
        }
        let fft = FftCorrelation::new(in_channels, out_channels, kernel, weight.clone());
        Conv3d {
            in_channels,
            out_channels,
            kernel,
            padding,
            weight,
            bias,
            packed,
            weight_channels_last,
            flipped,
            flipped_channels_last,
            fft,
            route: ConvRoute::Auto,
            class: class.into(),
        }
    }

    /// This convolution with its correlation forced onto one route.
    pub fn with_route(mut self, route: ConvRoute) -> Self {
        self.route = route;
        self
    }

    /// Whether an input of `shape` runs by FFT, forward or (`backward`) its input gradient.
    fn by_fft(&self, [_, t, h, w]: Shape, backward: bool) -> bool {
        match self.route {
            ConvRoute::Auto => fft_pays(self.in_channels, self.out_channels, self.kernel, [t, h, w], self.padding, backward),
            ConvRoute::Direct => false,
            ConvRoute::Fft => true,
        }
    }

    fn geometry(&self, [_, t, h, w]: Shape) -> Geometry {
        Geometry::new([t, h, w], self.kernel[0], self.kernel[1], self.padding)
    }

    /// Multiply every weight by `factor` (openretina's `exp(log_speed)` of the separable conv).
    pub fn scaled(self, factor: F) -> Self {
        let weight = self.weight.iter().map(|&w| w * factor).collect();
        let bias = self.bias.map(|b| b.iter().map(|&v| v * factor).collect());
        Conv3d::new(self.in_channels, self.out_channels, self.kernel, self.padding, weight, bias, &self.class).with_route(self.route)
    }

    pub fn forward_values(&self, x: &[F], shape: Shape) -> Vec<F> {
        if self.by_fft(shape, false) {
            let mut out = F::fft_forward(&self.fft, x, [shape[1], shape[2], shape[3]], self.padding);
            self.add_bias(&mut out);
            return out;
        }
        let correlation = Correlation {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel: self.kernel,
            weights: &self.weight,
            weights_channels_last: &self.weight_channels_last,
        };
        if let Some(mut out) = F::correlate_fast(&correlation, x, [shape[1], shape[2], shape[3]], self.padding) {
            self.add_bias(&mut out);
            return out;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx2_fma() {
            // SAFETY: `avx2_fma` checked that the CPU has AVX2 (and honours `set_fast_kernels(false)`).
            return unsafe { self.forward_avx2(x, shape) };
        }
        self.forward_kernel(x, shape)
    }

    /// Add the bias to an output `(out, ...)`.
    fn add_bias(&self, out: &mut [F]) {
        if let Some(bias) = &self.bias {
            let len = out.len() / self.out_channels;
            for (chunk, &b) in out.chunks_exact_mut(len).zip(bias) {
                chunk.iter_mut().for_each(|v| *v += b);
            }
        }
    }

    pub fn backward_values(&self, grad: &[F], shape: Shape) -> Vec<F> {
        if self.by_fft(shape, true) {
            return F::fft_backward(&self.fft, grad, [shape[1], shape[2], shape[3]], self.padding);
        }
        // The input gradient is the correlation of the output gradient, padded by `kernel - 1 -
        // padding` on each side, with the flipped kernels (input and output channels swapped). Where
        // the padding is wider than the kernel (the separable time stage's spatial padding), that is
        // the gradient of the padded input: its padding is cropped off.
        let [_, t, h, w] = self.output_shape(shape).expect("shapes checked before the forward pass");
        let padding = [0, 1, 2].map(|d| {
            let (k, (lo, hi)) = (self.kernel[d], self.padding[d]);
            ((k - 1).saturating_sub(lo), (k - 1).saturating_sub(hi))
        });
        let crop = [0, 1, 2].map(|d| (self.padding[d].0.saturating_sub(self.kernel[d] - 1), self.padding[d].1.saturating_sub(self.kernel[d] - 1)));
        let correlation = Correlation {
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            kernel: self.kernel,
            weights: &self.flipped,
            weights_channels_last: &self.flipped_channels_last,
        };
        if let Some(grad_x) = F::correlate_fast(&correlation, grad, [t, h, w], padding) {
            if crop == [(0, 0); 3] {
                return grad_x;
            }
            let [_, t_in, h_in, w_in] = shape;
            let [tc, hc, wc] = [0, 1, 2].map(|d| shape[d + 1] + crop[d].0 + crop[d].1);
            let mut cropped = Vec::with_capacity(self.in_channels * t_in * h_in * w_in);
            for i in 0..self.in_channels {
                for ti in 0..t_in {
                    for y in 0..h_in {
                        let src = ((i * tc + ti + crop[0].0) * hc + y + crop[1].0) * wc + crop[2].0;
                        cropped.extend_from_slice(&grad_x[src..src + w_in]);
                    }
                }
            }
            return cropped;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx2_fma() {
            // SAFETY: `avx2_fma` checked that the CPU has AVX2 (and honours `set_fast_kernels(false)`).
            return unsafe { self.backward_avx2(grad, shape) };
        }
        self.backward_kernel(grad, shape)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn forward_avx2(&self, x: &[F], shape: Shape) -> Vec<F> {
        self.forward_kernel(x, shape)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn backward_avx2(&self, grad: &[F], shape: Shape) -> Vec<F> {
        self.backward_kernel(grad, shape)
    }

    #[inline(always)]
    fn forward_kernel(&self, x: &[F], shape: Shape) -> Vec<F> {
        let g = self.geometry(shape);
        let (i_n, o_n, kt) = (self.in_channels, self.out_channels, g.kt);
        let n = kt * o_n;
        let rows = g.tp * g.p;
        let mut s = vec![F::zero(); rows * n];
        let mut col = Vec::new();
        let mut out_tpo = vec![F::zero(); g.to * g.p * o_n];
        for i in 0..i_n {
            let xpad = g.pad(&x[i * g.in_len..(i + 1) * g.in_len], [shape[1], shape[2], shape[3]]);
            let weights = &self.packed[i * g.kk * n..(i + 1) * g.kk * n];
            if !F::spatial_step_fast(g.spatial_shape(), &xpad, weights, n, &mut s) {
                // Frame by frame, so that the column matrix stays small for large kernels.
                let (hp, wp) = g.padded_hw();
                for t in 0..g.tp {
                    frame_im2col(&g, &xpad[t * hp * wp..(t + 1) * hp * wp], &mut col);
                    let s_t = &mut s[t * g.p * n..(t + 1) * g.p * n];
                    gemm(&col, Layout::row_major(g.p, g.kk), weights, Layout::row_major(g.kk, n), F::zero(), s_t, Layout::row_major(g.p, n));
                }
            }
            // out[t'][p][o] += s[t' + dt][p][dt][o]
            for t_out in 0..g.to {
                for dt in 0..kt {
                    let src = &s[(t_out + dt) * g.p * n..(t_out + dt + 1) * g.p * n];
                    let dst = &mut out_tpo[t_out * g.p * o_n..(t_out + 1) * g.p * o_n];
                    for (d, sp) in dst.chunks_exact_mut(o_n).zip(src.chunks_exact(n)) {
                        for (a, &b) in d.iter_mut().zip(&sp[dt * o_n..(dt + 1) * o_n]) {
                            *a += b;
                        }
                    }
                }
            }
        }
        let mut out = vec![F::zero(); o_n * g.to * g.p];
        for t_out in 0..g.to {
            for p in 0..g.p {
                for o in 0..o_n {
                    out[(o * g.to + t_out) * g.p + p] = out_tpo[(t_out * g.p + p) * o_n + o];
                }
            }
        }
        self.add_bias(&mut out);
        out
    }

    #[inline(always)]
    fn backward_kernel(&self, grad: &[F], shape: Shape) -> Vec<F> {
        let g = self.geometry(shape);
        let input = [shape[1], shape[2], shape[3]];
        let (i_n, o_n, kt) = (self.in_channels, self.out_channels, g.kt);
        let n = kt * o_n;
        let rows = g.tp * g.p;
        // g_s[t][p][dt][o] = grad[o][t - dt][p]: the same for every input channel.
        let mut g_s = vec![F::zero(); rows * n];
        for o in 0..o_n {
            for t_out in 0..g.to {
                for p in 0..g.p {
                    let v = grad[(o * g.to + t_out) * g.p + p];
                    for dt in 0..kt {
                        g_s[((t_out + dt) * g.p + p) * n + dt * o_n + o] = v;
                    }
                }
            }
        }
        let mut grad_x = vec![F::zero(); i_n * g.in_len];
        let mut g_col = Vec::new();
        for i in 0..i_n {
            let weights = &self.packed[i * g.kk * n..(i + 1) * g.kk * n];
            let grad_xi = &mut grad_x[i * g.in_len..(i + 1) * g.in_len];
            if F::spatial_step_backward_fast(g.spatial_shape(), input, [g.pad_t, g.pad_h, g.pad_w], &g_s, weights, n, grad_xi) {
                continue;
            }
            // Frame by frame, so that the column matrix stays small for large kernels.
            let (hp, wp) = g.padded_hw();
            let mut gpad = vec![F::zero(); g.tp * hp * wp];
            g_col.resize(g.p * g.kk, F::zero());
            for t in 0..g.tp {
                let g_s_t = &g_s[t * g.p * n..(t + 1) * g.p * n];
                gemm(g_s_t, Layout::row_major(g.p, n), weights, Layout::row_major(g.kk, n).t(), F::zero(), &mut g_col, Layout::row_major(g.p, g.kk));
                frame_col2im(&g, &g_col, &mut gpad[t * hp * wp..(t + 1) * hp * wp]);
            }
            let [t_in, h_in, w_in] = input;
            for t in 0..t_in {
                for y in 0..h_in {
                    let src = ((t + g.pad_t) * hp + y + g.pad_h) * wp + g.pad_w;
                    grad_xi[(t * h_in + y) * w_in..][..w_in].copy_from_slice(&gpad[src..src + w_in]);
                }
            }
        }
        grad_x
    }

    /// Forward operations for an input of `shape`.
    pub fn flop_count(&self, shape: Shape) -> f64 {
        let g = self.geometry(shape);
        2.0 * (self.in_channels * g.tp * g.p * g.kk * g.kt * self.out_channels) as f64
    }

    /// The weights of one channel pair: the spatial kernel at the frame of largest |weight|, and the
    /// temporal kernel at the pixel of largest |weight|.
    pub fn view(&self, input: usize, output: usize) -> KernelView {
        let [kt, k, _] = self.kernel;
        let kk = k * k;
        let pair = &self.weight[(output * self.in_channels + input) * kt * kk..][..kt * kk];
        let peak = (0..pair.len()).fold(0, |best, j| if pair[j].to_f64().abs() > pair[best].to_f64().abs() { j } else { best });
        let (peak_t, peak_p) = (peak / kk, peak % kk);
        // A kernel with a temporal extent is shown as two slices through its largest |weight|: say which.
        let slice = |note: String| if kt > 1 { Some(note) } else { None };
        KernelView {
            spatial: pair[peak_t * kk..(peak_t + 1) * kk].iter().map(|v| v.to_f64() as f32).collect(),
            spatial_shape: [k, k],
            temporal: (0..kt).map(|dt| pair[dt * kk + peak_p].to_f64() as f32).collect(),
            sin: Vec::new(),
            cos: Vec::new(),
            spatial_note: slice(format!("frame {peak_t} of {kt}")),
            temporal_note: slice(format!("at row {}, column {}", peak_p / k, peak_p % k)),
        }
    }
}

/// `col[(y, x)][(dy, dx)] = frame[y + dy, x + dx]` of one padded frame.
#[inline(always)]
fn frame_im2col<F: Float>(g: &Geometry, frame: &[F], col: &mut Vec<F>) {
    let (_, wp) = g.padded_hw();
    let k = g.k;
    col.resize(g.p * g.kk, F::zero());
    let mut rows = col.chunks_exact_mut(g.kk);
    for y in 0..g.ho {
        for x in 0..g.wo {
            let row = rows.next().expect("p rows");
            for dy in 0..k {
                let src = (y + dy) * wp + x;
                row[dy * k..(dy + 1) * k].copy_from_slice(&frame[src..src + k]);
            }
        }
    }
}

/// The adjoint of `frame_im2col`: add every column entry onto its padded pixel.
#[inline(always)]
fn frame_col2im<F: Float>(g: &Geometry, col: &[F], frame: &mut [F]) {
    let (_, wp) = g.padded_hw();
    let k = g.k;
    let mut rows = col.chunks_exact(g.kk);
    for y in 0..g.ho {
        for x in 0..g.wo {
            let row = rows.next().expect("p rows");
            for dy in 0..k {
                let dst = (y + dy) * wp + x;
                for (d, &v) in frame[dst..dst + k].iter_mut().zip(&row[dy * k..(dy + 1) * k]) {
                    *d += v;
                }
            }
        }
    }
}

impl<F: Float> Layer<F> for Conv3d<F> {
    fn describe(&self) -> String {
        let [kt, k, _] = self.kernel;
        let pad = self.padding.map(|(a, b)| if a == b { a.to_string() } else { format!("{a}+{b}") });
        format!(
            "{} {} -> {} channels, kernel {kt}x{k}x{k} (time x space), padding ({}){}",
            self.class,
            self.in_channels,
            self.out_channels,
            pad.join(", "),
            if self.bias.is_some() { ", bias" } else { "" }
        )
    }

    fn output_shape(&self, [c, t, h, w]: Shape) -> Result<Shape> {
        conv_output_shape(c, self.in_channels, self.out_channels, [t, h, w], self.kernel, self.padding)
    }

    fn forward(&self, x: &[F], shape: Shape, _: Option<&str>) -> (Vec<F>, LayerState) {
        (self.forward_values(x, shape), None)
    }

    fn backward(&self, v: BackwardValues<'_, F>, grad: Vec<F>, _: Option<&str>) -> Vec<F> {
        self.backward_values(&grad, v.input_shape)
    }

    fn reach(&self) -> Reach {
        Reach::Window { kernel: self.kernel, padding: self.padding }
    }

    fn flops(&self, shape: Shape) -> f64 {
        self.flop_count(shape)
    }

    /// In float32 with AVX2 and FMA, the direct correlation: forward, every input channel padded and
    /// the output in channels-last order; backward, the output gradient padded by `kernel - 1`, the
    /// input gradient of the padded input in both orders. Otherwise the kernels above: forward, the
    /// spatial step of every padded frame and (dt, out) pair, one padded channel, one frame's columns
    /// and the output in (t, p, out) order; backward, the same spatial-step shape, one padded channel
    /// and one frame's columns. A direction that runs by FFT counts its spectra where larger.
    fn work_values(&self, shape: Shape) -> Option<crate::model::layer::WorkValues> {
        use crate::model::layer::{count, total, WorkValues};
        let out = self.output_shape(shape).ok()?;
        let g = self.geometry(shape);
        let (hp, wp) = g.padded_hw();
        // Either direction may take the FFT route (its spectra) or the direct one.
        let fft = fft_conv::work_values(self.in_channels, self.out_channels, [g.tp, hp, wp])?;
        let (fft_forward, fft_backward) = (if self.by_fft(shape, false) { fft } else { 0 }, if self.by_fft(shape, true) { fft } else { 0 });
        if std::mem::size_of::<F>() == 4 && crate::model::simd::avx2_fma() {
            let padded_input = count(&[self.in_channels, g.tp, hp, wp])?;
            let [kt, k, _] = self.kernel;
            let padded_grad = count(&[self.out_channels, out[1] + 2 * (kt - 1), out[2] + 2 * (k - 1), out[3] + 2 * (k - 1)])?;
            let (forward, backward) = (total(&[padded_input, count(&out)?])?, total(&[padded_grad, padded_input, padded_input])?);
            return Some(WorkValues { state: 0, forward: forward.max(fft_forward), backward: backward.max(fft_backward) });
        }
        let (steps, padded, columns) = (count(&[g.tp, g.p, g.kt, self.out_channels])?, count(&[g.tp, hp, wp])?, count(&[g.p, g.kk])?);
        let reordered = count(&[g.to, g.p, self.out_channels])?;
        let (forward, backward) = (total(&[steps, padded, columns, reordered])?, total(&[steps, padded, columns])?);
        Some(WorkValues { state: 0, forward: forward.max(fft_forward), backward: backward.max(fft_backward) })
    }

    fn kernel_channels(&self) -> Option<(usize, usize)> {
        Some((self.in_channels, self.out_channels))
    }

    fn kernel(&self, input: usize, output: usize) -> Option<KernelView> {
        Some(self.view(input, output))
    }
}
