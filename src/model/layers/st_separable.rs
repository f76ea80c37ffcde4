//! `STSeparableBatchConv3d`: a 3D convolution whose kernel is the outer product of a temporal kernel
//! (built from sine/cosine weights) and a spatial kernel, per (out, in) channel pair.
//!
//! openretina assembles the dense `(out, in, t, h, w)` kernel and runs `conv3d`. We use the separable
//! structure instead: per input channel, one matrix product applies all spatial kernels to every frame,
//! then a short temporal correlation per (out, in) pair finishes the job. Same sums in another order
//! (float32 results agree with openretina's float64 ones to ~1e-6), 5-10x less arithmetic. The
//! gradient with respect to the input (for MEIs) runs the same two steps transposed.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::config::{LayerConfig, Padding};
use crate::model::layer::{count, total, WorkValues, BackwardValues, KernelView, Layer, LayerState, Reach, Shape};
use crate::model::linalg::{gemm, Layout};
use crate::model::load::StateDict;
use crate::model::simd::SpatialShape;
use crate::model::simd_separable::{TemporalFirst, GROUP};
use crate::model::Float;

/// openretina's `subsampling_factor`: the temporal kernel of length `t` has `t / 3` sines and cosines.
pub const SUBSAMPLING_FACTOR: usize = 3;

#[derive(Debug, Clone)]
pub struct SeparableConv3d<F> {
    pub in_channels: usize,
    pub out_channels: usize,
    pub temporal_kernel: usize,
    pub spatial_kernel: usize,
    pub padding: Padding,
    /// `(out, in, temporal_kernel / 3)`.
    pub sin_weights: Vec<F>,
    pub cos_weights: Vec<F>,
    /// `(out, in, k, k)`.
    pub spatial_weights: Vec<F>,
    /// The `_log_speed_default` buffer, used when no session is given.
    pub log_speed_default: F,
    /// Per-session log speeds (`log_speed_<session>`; legacy ensemble members only).
    pub log_speeds: BTreeMap<String, F>,
    /// Kernels at the default log speed and per session, computed once at load.
    default_kernels: ConvKernels<F>,
    session_kernels: BTreeMap<String, ConvKernels<F>>,
}

/// The weights of a convolution for one log speed, laid out for the kernels below.
#[derive(Debug, Clone)]
pub struct ConvKernels<F> {
    /// `[in][dy * k + dx][out]`.
    spatial: Vec<F>,
    /// `[in][dt][out]`.
    temporal: Vec<F>,
    /// For the temporal-first kernels (`simd_separable.rs`), output channels padded to groups of 16:
    /// `[in][dt][out]`, `[in][group][dy * k + dx][16]` and the same with the taps flipped.
    grouped_temporal: Vec<F>,
    grouped_spatial: Vec<F>,
    grouped_spatial_flipped: Vec<F>,
}

impl<F: Float> SeparableConv3d<F> {
    /// The convolution `{prefix}.*` of a layer (`STSeparableBatchConv3d`), with the per-session log
    /// speeds `{prefix}.log_speed_<session>` of legacy ensemble members when `sessions` are given.
    pub fn load(lc: &LayerConfig, sd: &mut StateDict, prefix: &str, sessions: &[String]) -> Result<Self> {
        let (o, c) = (lc.out_channels, lc.in_channels);
        let nk = lc.temporal_kernel / SUBSAMPLING_FACTOR;
        let k = lc.spatial_kernel;
        let mut log_speeds = BTreeMap::new();
        for session in sessions {
            log_speeds.insert(session.clone(), sd.take_scalar(&format!("{prefix}.log_speed_{session}"))?);
        }
        let conv = SeparableConv3d::new(
            c,
            o,
            lc.temporal_kernel,
            k,
            lc.padding,
            sd.take(&format!("{prefix}.sin_weights"), &[o, c, nk])?,
            sd.take(&format!("{prefix}.cos_weights"), &[o, c, nk])?,
            sd.take(&format!("{prefix}.weight_spatial"), &[o, c, 1, k, k])?,
            sd.take_scalar(&format!("{prefix}._log_speed_default"))?,
        );
        Ok(conv.with_session_speeds(log_speeds))
    }

    /// A convolution from its weights: `sin_weights`, `cos_weights` `(out, in, temporal_kernel / 3)`,
    /// `spatial_weights` `(out, in, k, k)`, as openretina stores them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        temporal_kernel: usize,
        spatial_kernel: usize,
        padding: Padding,
        sin_weights: Vec<F>,
        cos_weights: Vec<F>,
        spatial_weights: Vec<F>,
        log_speed_default: F,
    ) -> Self {
        let empty = ConvKernels {
            spatial: Vec::new(),
            temporal: Vec::new(),
            grouped_temporal: Vec::new(),
            grouped_spatial: Vec::new(),
            grouped_spatial_flipped: Vec::new(),
        };
        let mut conv = SeparableConv3d {
            in_channels,
            out_channels,
            temporal_kernel,
            spatial_kernel,
            padding,
            sin_weights,
            cos_weights,
            spatial_weights,
            log_speed_default,
            log_speeds: BTreeMap::new(),
            default_kernels: empty,
            session_kernels: BTreeMap::new(),
        };
        conv.default_kernels = conv.kernels(log_speed_default);
        conv
    }

    /// With per-session log speeds (legacy ensemble members).
    fn with_session_speeds(mut self, log_speeds: BTreeMap<String, F>) -> Self {
        self.session_kernels = log_speeds.iter().map(|(s, &v)| (s.clone(), self.kernels(v))).collect();
        self.log_speeds = log_speeds;
        self
    }

    fn kernels_for(&self, session: Option<&str>) -> &ConvKernels<F> {
        session.and_then(|s| self.session_kernels.get(s)).unwrap_or(&self.default_kernels)
    }

    /// The log speed for a session: its own (legacy ensemble members) or the default.
    pub fn log_speed(&self, session: Option<&str>) -> F {
        session.and_then(|s| self.log_speeds.get(s).copied()).unwrap_or(self.log_speed_default)
    }

    /// The temporal kernels `(out, in, t)` at a log speed, as openretina's `compute_temporal_kernel`.
    pub fn temporal_kernels(&self, log_speed: F) -> Vec<F> {
        let basis = TemporalBasis::new(self.temporal_kernel, log_speed);
        let nk = self.temporal_kernel / SUBSAMPLING_FACTOR;
        let t_len = self.temporal_kernel;
        let pairs = self.out_channels * self.in_channels;
        let mut kernels = vec![F::zero(); pairs * t_len];
        for pair in 0..pairs {
            let sin_w = &self.sin_weights[pair * nk..(pair + 1) * nk];
            let cos_w = &self.cos_weights[pair * nk..(pair + 1) * nk];
            for t in 0..t_len {
                // Two sums added, as openretina does.
                let s: F = (0..nk).map(|k| sin_w[k] * basis.sines[k * t_len + t]).sum();
                let c: F = (0..nk).map(|k| cos_w[k] * basis.cosines[k * t_len + t]).sum();
                kernels[pair * t_len + t] = s + c;
            }
        }
        kernels
    }

    /// Kernels laid out for `forward` / `backward` at a log speed.
    pub fn kernels(&self, log_speed: F) -> ConvKernels<F> {
        let (o_n, i_n, kt) = (self.out_channels, self.in_channels, self.temporal_kernel);
        let kk = self.spatial_kernel * self.spatial_kernel;
        let temporal_oit = self.temporal_kernels(log_speed);
        let groups = o_n.div_ceil(GROUP);
        let o16 = groups * GROUP;
        let mut spatial = vec![F::zero(); i_n * kk * o_n];
        let mut temporal = vec![F::zero(); i_n * kt * o_n];
        let mut grouped_temporal = vec![F::zero(); i_n * kt * o16];
        let mut grouped_spatial = vec![F::zero(); i_n * kk * o16];
        let mut grouped_spatial_flipped = vec![F::zero(); i_n * kk * o16];
        for o in 0..o_n {
            let (g, c) = (o / GROUP, o % GROUP);
            for i in 0..i_n {
                for j in 0..kk {
                    let v = self.spatial_weights[(o * i_n + i) * kk + j];
                    spatial[(i * kk + j) * o_n + o] = v;
                    grouped_spatial[((i * groups + g) * kk + j) * GROUP + c] = v;
                    grouped_spatial_flipped[((i * groups + g) * kk + kk - 1 - j) * GROUP + c] = v;
                }
                for t in 0..kt {
                    let v = temporal_oit[(o * i_n + i) * kt + t];
                    temporal[(i * kt + t) * o_n + o] = v;
                    grouped_temporal[(i * kt + t) * o16 + o] = v;
                }
            }
        }
        ConvKernels { spatial, temporal, grouped_temporal, grouped_spatial, grouped_spatial_flipped }
    }

    /// Output `(time, height, width)` for an input of `(time, height, width)`, if the kernel fits.
    pub fn output_size(&self, input: [usize; 3]) -> Option<[usize; 3]> {
        let k = [self.temporal_kernel, self.spatial_kernel, self.spatial_kernel];
        let mut out = [0; 3];
        for d in 0..3 {
            let padded = input[d] + self.padding[d].0 + self.padding[d].1;
            out[d] = padded.checked_sub(k[d])? + 1;
        }
        Some(out)
    }

    /// The temporal-first kernels' view of this convolution (`simd_separable.rs`).
    fn temporal_first<'a>(&self, kernels: &'a ConvKernels<F>) -> TemporalFirst<'a, F> {
        TemporalFirst {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kt: self.temporal_kernel,
            k: self.spatial_kernel,
            padding: self.padding,
            temporal: &kernels.grouped_temporal,
            spatial: &kernels.grouped_spatial,
            spatial_flipped: &kernels.grouped_spatial_flipped,
        }
    }

    /// Whether the temporal step first takes fewer products for an input `(t, h, w)`: the spatial
    /// step then runs on the output frames only, but the temporal one on every input pixel, and the
    /// output channels are padded to groups of 16.
    pub fn temporal_first_cheaper(&self, input: [usize; 3]) -> bool {
        let g = self.geometry(input);
        // In f64: no overflow on any shape.
        let f = |v: usize| v as f64;
        let pin = f(input[1]) * f(input[2]);
        let (tp, to, p, kk, kt) = (f(g.tp), f(g.to), f(g.p), f(g.kk), f(g.kt));
        let o16 = f(self.out_channels.div_ceil(GROUP) * GROUP);
        o16 * (to * p * kk + to * pin * kt) < f(self.out_channels) * (tp * p * kk + to * p * kt)
    }

    /// Convolve one stimulus `x` of shape `(in, t, h, w)`; returns `(out, t', h', w')`.
    pub fn convolve(&self, kernels: &ConvKernels<F>, x: &[F], input: [usize; 3]) -> Vec<F> {
        if self.temporal_first_cheaper(input) {
            if let Some(out) = F::temporal_first_forward(&self.temporal_first(kernels), x, input) {
                return out;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx2_fma() {
            // SAFETY: `avx2_fma` checked that the CPU has AVX2 (and honours `set_fast_kernels(false)`).
            return unsafe { self.forward_avx2(kernels, x, input) };
        }
        self.forward_kernel(kernels, x, input)
    }

    /// Gradient with respect to the input, given the gradient `grad_out` of the output `(out, t', h', w')`.
    pub fn convolve_backward(&self, kernels: &ConvKernels<F>, grad_out: &[F], input: [usize; 3]) -> Vec<F> {
        if self.temporal_first_cheaper(input) {
            if let Some(grad) = F::temporal_first_backward(&self.temporal_first(kernels), grad_out, input) {
                return grad;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if crate::model::simd::avx2_fma() {
            // SAFETY: `avx2_fma` checked that the CPU has AVX2 (and honours `set_fast_kernels(false)`).
            return unsafe { self.backward_avx2(kernels, grad_out, input) };
        }
        self.backward_kernel(kernels, grad_out, input)
    }

    // The kernels below are `inline(always)`, so these copies are compiled with AVX2 enabled. The
    // results are identical to the plain ones: vector width does not change the order of additions.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn forward_avx2(&self, kernels: &ConvKernels<F>, x: &[F], input: [usize; 3]) -> Vec<F> {
        self.forward_kernel(kernels, x, input)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn backward_avx2(&self, kernels: &ConvKernels<F>, grad_out: &[F], input: [usize; 3]) -> Vec<F> {
        self.backward_kernel(kernels, grad_out, input)
    }

    #[inline(always)]
    fn forward_kernel(&self, kernels: &ConvKernels<F>, x: &[F], input: [usize; 3]) -> Vec<F> {
        let g = self.geometry(input);
        let (i_n, o_n) = (self.in_channels, self.out_channels);
        debug_assert_eq!(x.len(), i_n * input.iter().product::<usize>());

        // Spatial step: s[i][t][p][o] = sum_{dy,dx} spatial[o,i,dy,dx] * xpad[i, t, y+dy, x+dx].
        let rows = g.tp * g.p;
        let mut col = Vec::new();
        let mut s = vec![F::zero(); i_n * rows * o_n];
        for i in 0..i_n {
            let xpad = g.pad(&x[i * g.in_len..(i + 1) * g.in_len], input);
            let weights = &kernels.spatial[i * g.kk * o_n..(i + 1) * g.kk * o_n];
            let s_i = &mut s[i * rows * o_n..(i + 1) * rows * o_n];
            if F::spatial_step_fast(g.spatial_shape(), &xpad, weights, o_n, s_i) {
                continue;
            }
            g.im2col(&xpad, &mut col);
            gemm(
                &col,
                Layout::row_major(rows, g.kk),
                weights,
                Layout::row_major(g.kk, o_n),
                F::zero(),
                s_i,
                Layout::row_major(rows, o_n),
            );
        }

        // Temporal step: out[t'][p][o] = sum_{i,dt} temporal[o,i,dt] * s[i][t'+dt][p][o].
        // In tiles of 64 pixels, so that the output tile stays in cache while every (i, dt) adds to it
        // (a whole frame of a real-size model is larger than the cache); same sums, same order.
        let frame = g.p * o_n;
        let tile = 64 * o_n;
        let mut out_tpo = vec![F::zero(); g.to * frame];
        for start in (0..frame).step_by(tile) {
            let len = tile.min(frame - start);
            for t_out in 0..g.to {
                let acc = &mut out_tpo[t_out * frame + start..][..len];
                for i in 0..i_n {
                    for dt in 0..g.kt {
                        let w = &kernels.temporal[(i * g.kt + dt) * o_n..(i * g.kt + dt + 1) * o_n];
                        let src = &s[(i * g.tp + t_out + dt) * frame + start..][..len];
                        scale_add_frame(acc, w, src);
                    }
                }
            }
        }

        // To channel-first (out, t', h', w').
        let mut out = vec![F::zero(); o_n * g.to * g.p];
        for t_out in 0..g.to {
            for p in 0..g.p {
                for o in 0..o_n {
                    out[(o * g.to + t_out) * g.p + p] = out_tpo[(t_out * g.p + p) * o_n + o];
                }
            }
        }
        out
    }

    #[inline(always)]
    fn backward_kernel(&self, kernels: &ConvKernels<F>, grad_out: &[F], input: [usize; 3]) -> Vec<F> {
        let g = self.geometry(input);
        let (i_n, o_n) = (self.in_channels, self.out_channels);
        let frame = g.p * o_n;

        let mut g_tpo = vec![F::zero(); g.to * frame];
        for o in 0..o_n {
            for t_out in 0..g.to {
                for p in 0..g.p {
                    g_tpo[(t_out * g.p + p) * o_n + o] = grad_out[(o * g.to + t_out) * g.p + p];
                }
            }
        }

        let rows = g.tp * g.p;
        let mut g_s = vec![F::zero(); rows * o_n];
        let mut g_col = Vec::new();
        let mut grad_x = vec![F::zero(); i_n * g.in_len];
        for i in 0..i_n {
            // Transposed temporal step: g_s[t][p][o] = sum_dt temporal[o,i,dt] * g[t-dt][p][o].
            g_s.iter_mut().for_each(|v| *v = F::zero());
            for t_out in 0..g.to {
                let src = &g_tpo[t_out * frame..(t_out + 1) * frame];
                for dt in 0..g.kt {
                    let w = &kernels.temporal[(i * g.kt + dt) * o_n..(i * g.kt + dt + 1) * o_n];
                    let dst = &mut g_s[(t_out + dt) * frame..(t_out + dt + 1) * frame];
                    scale_add_frame(dst, w, src);
                }
            }
            // Transposed spatial step: g_col = g_s × spatial_iᵀ, then scatter back to pixels.
            let weights = &kernels.spatial[i * g.kk * o_n..(i + 1) * g.kk * o_n];
            let grad_xi = &mut grad_x[i * g.in_len..(i + 1) * g.in_len];
            if F::spatial_step_backward_fast(g.spatial_shape(), input, [g.pad_t, g.pad_h, g.pad_w], &g_s, weights, o_n, grad_xi) {
                continue;
            }
            g_col.resize(rows * g.kk, F::zero());
            gemm(
                &g_s,
                Layout::row_major(rows, o_n),
                weights,
                Layout::row_major(g.kk, o_n).t(),
                F::zero(),
                &mut g_col,
                Layout::row_major(rows, g.kk),
            );
            g.col2im(&g_col, input, grad_xi);
        }
        grad_x
    }

    fn geometry(&self, input: [usize; 3]) -> Geometry {
        Geometry::new(input, self.temporal_kernel, self.spatial_kernel, self.padding)
    }
}

impl<F: Float> Layer<F> for SeparableConv3d<F> {
    fn describe(&self) -> String {
        let pad = self.padding.map(|(a, b)| if a == b { a.to_string() } else { format!("{a}+{b}") });
        format!(
            "STSeparableBatchConv3d (custom_separable) {} -> {} channels, kernel {}x{}x{} (time x space), padding ({})",
            self.in_channels,
            self.out_channels,
            self.temporal_kernel,
            self.spatial_kernel,
            self.spatial_kernel,
            pad.join(", ")
        )
    }

    fn output_shape(&self, [c, t, h, w]: Shape) -> Result<Shape> {
        conv_output_shape(c, self.in_channels, self.out_channels, [t, h, w], [self.temporal_kernel, self.spatial_kernel, self.spatial_kernel], self.padding)
    }

    fn forward(&self, x: &[F], [_, t, h, w]: Shape, session: Option<&str>) -> (Vec<F>, LayerState) {
        (self.convolve(self.kernels_for(session), x, [t, h, w]), None)
    }

    fn backward(&self, v: BackwardValues<'_, F>, grad: Vec<F>, session: Option<&str>) -> Vec<F> {
        let [_, t, h, w] = v.input_shape;
        self.convolve_backward(self.kernels_for(session), &grad, [t, h, w])
    }

    fn reach(&self) -> Reach {
        Reach::Window { kernel: [self.temporal_kernel, self.spatial_kernel, self.spatial_kernel], padding: self.padding }
    }

    /// Forward: one padded channel, its columns (when the fast spatial step does not apply), the
    /// spatial step of every input channel, the output in (t, p, out) order. Backward: the output
    /// gradient reordered, one channel's transposed temporal step and its columns (likewise), a padded
    /// channel. Temporal first: see `TemporalFirst::work_values`.
    fn work_values(&self, [_, t, h, w]: Shape) -> Option<WorkValues> {
        self.output_size([t, h, w])?;
        let g = self.geometry([t, h, w]);
        let (hp, wp) = g.padded_hw();
        let padded = count(&[g.tp, hp, wp])?;
        let columns = if F::spatial_step_available(self.out_channels) { 0 } else { count(&[g.tp, g.p, g.kk])? };
        let step = count(&[g.tp, g.p, self.out_channels])?;
        let reordered = count(&[g.to, g.p, self.out_channels])?;
        // The temporal-first kernels (`simd_separable.rs`) have their own, smaller buffers.
        if self.temporal_first_cheaper([t, h, w]) && F::temporal_first_available() {
            let (forward, backward) = self.temporal_first(&self.default_kernels).work_values([t, h, w])?;
            return Some(WorkValues { state: 0, forward, backward });
        }
        Some(WorkValues {
            state: 0,
            forward: total(&[padded, columns, step.checked_mul(self.in_channels as u64)?, reordered])?,
            backward: total(&[reordered, step, columns, padded])?,
        })
    }

    /// Separable: the spatial step on every padded input frame, then the temporal correlation.
    fn flops(&self, [_, t, h, w]: Shape) -> f64 {
        let Some(out) = self.output_size([t, h, w]) else { return 0.0 };
        let p = (out[1] * out[2]) as f64;
        let pairs = (self.in_channels * self.out_channels) as f64;
        let tp = (t + self.padding[0].0 + self.padding[0].1) as f64;
        let kk = (self.spatial_kernel * self.spatial_kernel) as f64;
        2.0 * pairs * (tp * p * kk + out[0] as f64 * p * self.temporal_kernel as f64)
    }

    fn kernel_channels(&self) -> Option<(usize, usize)> {
        Some((self.in_channels, self.out_channels))
    }

    fn kernel(&self, input: usize, output: usize) -> Option<KernelView> {
        let (i_n, k, kt) = (self.in_channels, self.spatial_kernel, self.temporal_kernel);
        let nk = kt / SUBSAMPLING_FACTOR;
        let pair = output * i_n + input;
        let f = |v: &[F]| v.iter().map(|x| x.to_f64() as f32).collect::<Vec<f32>>();
        let temporal = self.temporal_kernels(self.log_speed_default);
        Some(KernelView {
            spatial: f(&self.spatial_weights[pair * k * k..(pair + 1) * k * k]),
            spatial_shape: [k, k],
            temporal: f(&temporal[pair * kt..(pair + 1) * kt]),
            sin: f(&self.sin_weights[pair * nk..(pair + 1) * nk]),
            cos: f(&self.cos_weights[pair * nk..(pair + 1) * nk]),
            spatial_note: None,
            temporal_note: None,
        })
    }
}

/// Output shape of a stride-1 convolution, or an error naming the axis whose kernel does not fit.
/// Shared by every convolution kind.
pub fn conv_output_shape(
    channels: usize,
    in_channels: usize,
    out_channels: usize,
    input: [usize; 3],
    kernel: [usize; 3],
    padding: Padding,
) -> Result<Shape> {
    if channels != in_channels {
        return Err(Error::new(format!("input has {channels} channels, the convolution takes {in_channels}")));
    }
    let mut out = [out_channels, 0, 0, 0];
    for d in 0..3 {
        let padded = input[d] + padding[d].0 + padding[d].1;
        if padded < kernel[d] {
            let what = ["time steps", "height", "width"][d];
            return Err(Error::new(format!(
                "input {what} {} (padded {padded}) is smaller than its kernel {}; use a longer stimulus",
                input[d], kernel[d]
            )));
        }
        out[d + 1] = padded - kernel[d] + 1;
    }
    Ok(out)
}

/// `acc[p][o] += w[o] * src[p][o]` for every pixel `p` of a channel-last frame.
#[inline(always)]
fn scale_add_frame<F: Float>(acc: &mut [F], w: &[F], src: &[F]) {
    if F::scale_add_frame_fast(acc, w, src) {
        return;
    }
    let o_n = w.len();
    for (acc_p, src_p) in acc.chunks_exact_mut(o_n).zip(src.chunks_exact(o_n)) {
        for o in 0..o_n {
            acc_p[o] += w[o] * src_p[o];
        }
    }
}

/// Sizes of one convolution call (stride 1, square spatial kernel); shared with the dense `Conv3d`.
pub(crate) struct Geometry {
    pub kt: usize,
    pub k: usize,
    pub kk: usize,
    /// Padded input time steps.
    pub tp: usize,
    pub pad_t: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub to: usize,
    pub ho: usize,
    pub wo: usize,
    /// Output pixels per frame.
    pub p: usize,
    /// Values per input channel.
    pub in_len: usize,
}

impl Geometry {
    /// For an input `(t, h, w)`, a `(kt, k, k)` kernel and `padding`; the kernel must fit.
    pub fn new(input: [usize; 3], kt: usize, k: usize, padding: Padding) -> Geometry {
        let [(pt0, pt1), (ph0, ph1), (pw0, pw1)] = padding;
        let tp = input[0] + pt0 + pt1;
        let (ho, wo) = (input[1] + ph0 + ph1 + 1 - k, input[2] + pw0 + pw1 + 1 - k);
        Geometry {
            kt,
            k,
            kk: k * k,
            tp,
            pad_t: pt0,
            pad_h: ph0,
            pad_w: pw0,
            to: tp + 1 - kt,
            ho,
            wo,
            p: ho * wo,
            in_len: input.iter().product(),
        }
    }

    pub fn spatial_shape(&self) -> SpatialShape {
        let (hp, wp) = self.padded_hw();
        SpatialShape { tp: self.tp, hp, wp, ho: self.ho, wo: self.wo, k: self.k }
    }

    /// Padded input height and width.
    pub fn padded_hw(&self) -> (usize, usize) {
        (self.ho + self.k - 1, self.wo + self.k - 1)
    }

    /// One input channel `(t, h, w)`, zero-padded to `(tp, hp, wp)`.
    #[inline(always)]
    pub fn pad<F: Float>(&self, xi: &[F], input: [usize; 3]) -> Vec<F> {
        let [t_in, h_in, w_in] = input;
        let (hp, wp) = self.padded_hw();
        let mut xpad = vec![F::zero(); self.tp * hp * wp];
        for t in 0..t_in {
            for y in 0..h_in {
                let dst = ((t + self.pad_t) * hp + y + self.pad_h) * wp + self.pad_w;
                xpad[dst..dst + w_in].copy_from_slice(&xi[(t * h_in + y) * w_in..][..w_in]);
            }
        }
        xpad
    }

    /// The column matrix `col[(t, y, x)][(dy, dx)] = xpad[t, y + dy, x + dx]` of a padded channel:
    /// each row is `k` contiguous slices.
    #[inline(always)]
    pub fn im2col<F: Float>(&self, xpad: &[F], col: &mut Vec<F>) {
        let (hp, wp) = self.padded_hw();
        col.resize(self.tp * self.p * self.kk, F::zero());
        let k = self.k;
        let mut rows = col.chunks_exact_mut(self.kk);
        for t in 0..self.tp {
            for y in 0..self.ho {
                for x in 0..self.wo {
                    let row = rows.next().expect("col has tp * ho * wo rows");
                    for dy in 0..k {
                        let src = (t * hp + y + dy) * wp + x;
                        row[dy * k..(dy + 1) * k].copy_from_slice(&xpad[src..src + k]);
                    }
                }
            }
        }
    }

    /// The adjoint of `im2col`: add every column entry back onto its (padded) input pixel, then drop
    /// the padding.
    #[inline(always)]
    pub fn col2im<F: Float>(&self, col: &[F], input: [usize; 3], gi: &mut [F]) {
        let [t_in, h_in, w_in] = input;
        let (hp, wp) = self.padded_hw();
        let mut gpad = vec![F::zero(); self.tp * hp * wp];
        let k = self.k;
        let mut rows = col.chunks_exact(self.kk);
        for t in 0..self.tp {
            for y in 0..self.ho {
                for x in 0..self.wo {
                    let row = rows.next().expect("col has tp * ho * wo rows");
                    for dy in 0..k {
                        let dst = (t * hp + y + dy) * wp + x;
                        for (g, &v) in gpad[dst..dst + k].iter_mut().zip(&row[dy * k..(dy + 1) * k]) {
                            *g += v;
                        }
                    }
                }
            }
        }
        for t in 0..t_in {
            for y in 0..h_in {
                let src = ((t + self.pad_t) * hp + y + self.pad_h) * wp + self.pad_w;
                gi[(t * h_in + y) * w_in..][..w_in].copy_from_slice(&gpad[src..src + w_in]);
            }
        }
    }
}

/// openretina's `temporal_basis`: masked sines and cosines `(t / 3, t)`, stretched by `exp(log_speed)`.
struct TemporalBasis<F> {
    sines: Vec<F>,
    cosines: Vec<F>,
}

impl<F: Float> TemporalBasis<F> {
    fn new(length: usize, log_speed: F) -> Self {
        let stretch = log_speed.exp();
        let nk = length / SUBSAMPLING_FACTOR;
        let len = F::from_f64(length as f64);
        // Python's int(T * 0.95).
        let mask_offset = F::from_f64((length as f64 * 0.95).floor());
        let two = F::from_f64(2.0);
        let pi = F::from_f64(std::f64::consts::PI);
        let mut sines = vec![F::zero(); nk * length];
        let mut cosines = vec![F::zero(); nk * length];
        for t in 0..length {
            // Time runs from -length to -1; evaluation order follows openretina.
            let time = F::from_f64(t as f64) - len;
            let freq = stretch * time * two * pi / len;
            let mask = F::one() / (F::one() + (-time - mask_offset / stretch).exp());
            for k in 0..nk {
                let phase = freq * F::from_f64(k as f64);
                sines[k * length + t] = mask * phase.sin();
                cosines[k * length + t] = mask * phase.cos();
            }
        }
        TemporalBasis { sines, cosines }
    }
}
