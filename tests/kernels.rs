//! The hand-vectorised float32 kernels against the portable float32 code. Tests in their own binary:
//! they switch the kernels off for the whole process while they run (one at a time, under `SWITCH`).

mod common;

use std::sync::Mutex;

use retina::mei::{self, Objective};
use retina::model::layer::{BackwardValues, Layer};
use retina::model::layers::conv3d::{Conv3d, ConvRoute};
use retina::model::layers::conv_gru::{ConvGruCell, GruSize};
use retina::model::layers::pointwise::Pointwise;
use retina::model::layers::st_separable::SeparableConv3d;
use retina::model::simd_conv::{Correlation, DirectConv};
use retina::model::simd_math::VectorMath;
use retina::model::simd_spatial::{SpatialGeometry, SpatialGradient};
use retina::model::simd_temporal::TemporalCorrelation;
use retina::model::{simd, Model};
use retina::rng::Rng;
use serde_json::json;

/// Held by each test while it switches kernels: the switches are process-wide.
static SWITCH: Mutex<()> = Mutex::new(());

#[test]
fn vectorised_kernels_match_portable_code() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    // 8, 16 and 24 output channels: the single-block, pair and pair-plus-single paths. Same float32
    // sums in another order (and with FMA): 1e-5 relative to the largest value is ~100 float32 ulps,
    // far below any indexing mistake.
    let raw = common::synthetic_model(2, 18, 16, json!({"hidden_channels": [8, 24], "spatial_kernel_sizes": [5, 3]}), 21);
    let model: Model<f32> = Model::from_raw(&raw).unwrap();
    let demo: Model<f32> = Model::from_raw(&common::raw_model("example_low_res/model.safetensors")).unwrap();
    // The dense convolutions' direct correlation (`simd_conv.rs`): 8, 16 and 24 output channels on the
    // channels-last kernel, 6 and the stimulus' 1 or 2 (input gradients) on the pixels-along-x one,
    // rows narrower and wider than 8 pixels, with and without padding.
    let dense = |channels, convolution: &str, hidden: [usize; 2], extra: serde_json::Value, seed| {
        let mut hp = json!({"convolution_type": convolution, "hidden_channels": hidden});
        for (k, v) in extra.as_object().unwrap() {
            hp[k] = v.clone();
        }
        Model::<f32>::from_raw(&common::synthetic_model(channels, 18, 16, hp, seed)).unwrap()
    };
    let full = dense(2, "full", [8, 6], json!({}), 23);
    let full_padded = dense(1, "full", [16, 24], json!({"core_hidden_padding": [1, 1, 1], "spatial_kernel_sizes": [11, 3]}), 24);
    let separable = dense(2, "separable", [8, 16], json!({"core_hidden_padding": [0, 1, 1]}), 25);
    // One stimulus channel (the time-vectorised stimulus gradient of `simd_spatial.rs` for a single
    // input channel) and a spatial padding of 2 (the temporal stage's ring of zeros).
    let separable_mono = dense(1, "separable", [8, 8], json!({"core_hidden_padding": [0, 2, 2]}), 27);
    let time_independent =
        dense(1, "time_independent", [8, 4], json!({"temporal_kernel_sizes": [1, 1], "cut_first_n_frames_in_core": 0}), 26);
    for (model, time_steps) in [(&model, 30), (&demo, 50), (&full, 30), (&full_padded, 30), (&separable, 30), (&separable_mono, 30), (&time_independent, 30)] {
        let shape = model.config.stimulus_shape(time_steps, 1);
        let x: Vec<f32> = common::random_stimulus([shape[1], shape[2], shape[3], shape[4]], 22).iter().map(|&v| v as f32).collect();
        for target in mei::all_targets(model) {
            let objective = Objective::new(model, target.clone(), time_steps).unwrap();
            simd::set_fast_kernels(false);
            let (value, gradient) = objective.gradient(&x);
            simd::set_fast_kernels(true);
            // The kernels with an AVX-512 variant run it first, then their AVX2 one.
            for (variant, avx512) in [("AVX-512", true), ("AVX2", false)] {
                simd::set_avx512_kernels(avx512);
                let (fast_value, fast_gradient) = objective.gradient(&x);
                simd::set_avx512_kernels(true);
                assert!((fast_value - value).abs() <= 1e-5 * value.abs().max(1.0), "{} {variant}: {fast_value} vs {value}", target.id());
                let d = common::rel_max_diff(&common::to_f64(&fast_gradient), &common::to_f64(&gradient));
                assert!(d <= 1e-5, "{} {variant}: gradients differ by {d:e}", target.id());
            }
        }
    }
    // The GRU's frame correlations (`simd_frame.rs`): input gates over all frames (8-frame groups and a
    // shorter last one), state convolutions on frames of 8 and of 15 pixels (two pixel groups), 8 and
    // 16 state channels; forward values and the input gradient through time.
    for (seed, rec, shape) in [(31, 8, [5, 12, 4, 2]), (32, 16, [3, 9, 5, 3])] {
        let size = GruSize { in_channels: shape[0], rec_channels: rec, input_kern: 5, rec_kern: 5, pad_input: true };
        let mut rng = Rng::new(seed);
        let mut conv = |inputs: usize| -> (Vec<f32>, Vec<f32>) {
            ((0..rec * inputs * 25).map(|_| (rng.normal() * 0.3) as f32).collect(), (0..rec).map(|_| (rng.normal() * 0.2) as f32).collect())
        };
        let input = (0..3).map(|_| conv(shape[0])).collect();
        let hidden = (0..3).map(|_| conv(rec)).collect();
        let gru = ConvGruCell::<f32>::new(size, input, hidden);
        let out_shape = gru.output_shape(shape).unwrap();
        let x: Vec<f32> = common::random_stimulus(shape, seed).iter().map(|&v| v as f32).collect();
        let g: Vec<f32> = common::random_stimulus(out_shape, seed + 1).iter().map(|&v| v as f32).collect();
        let run = || {
            let (out, state) = gru.forward(&x, shape, None);
            let values = BackwardValues { input: Some(&x), input_shape: shape, output: Some(&out), output_shape: out_shape, state: state.as_deref() };
            let grad = gru.backward(values, g.clone(), None);
            (out, grad)
        };
        let (fast_out, fast_grad) = run();
        simd::set_fast_kernels(false);
        let (out, grad) = run();
        simd::set_fast_kernels(true);
        let d = common::rel_max_diff(&common::to_f64(&fast_out), &common::to_f64(&out));
        assert!(d <= 1e-5, "GRU {rec} channels: outputs differ by {d:e}");
        let d = common::rel_max_diff(&common::to_f64(&fast_grad), &common::to_f64(&grad));
        assert!(d <= 1e-5, "GRU {rec} channels: input gradients differ by {d:e}");
    }
}

/// The separable convolution's temporal-first kernels (`simd_separable.rs`), AVX-512 and AVX2 variants,
/// against the portable spatial-first code, forward and input gradient: output channels 16, 24 and 40
/// (groups of 16 padded with zero weights), 1 and 3 input channels, output rows 1 to 30 pixels wide
/// (every block width of the correlation, 12 / 6 and their rests), with and without spatial and
/// temporal padding. Each case first checks that the layer would pick this path. Same bar as above:
/// 1e-5 of the largest value, ~100 float32 ulps, far below any indexing mistake.
#[test]
fn temporal_first_separable_kernels_match_portable_code() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    // (in, out, kt, k, padding (t, h, w), input (t, h, w))
    type Case = (usize, usize, usize, usize, [(usize, usize); 3], [usize; 3]);
    let cases: [Case; 7] = [
        (1, 16, 15, 3, [(0, 0), (1, 1), (1, 1)], [20, 9, 30]),
        (3, 24, 15, 5, [(0, 0), (2, 2), (2, 2)], [21, 7, 17]),
        (2, 40, 12, 3, [(2, 1), (0, 0), (1, 0)], [14, 6, 8]),
        (1, 16, 15, 3, [(0, 0), (1, 1), (1, 1)], [19, 4, 3]),
        (2, 16, 12, 3, [(0, 0), (1, 1), (1, 1)], [15, 3, 1]),
        (1, 32, 15, 5, [(0, 0), (2, 2), (2, 2)], [18, 5, 25]),
        (3, 24, 15, 3, [(1, 1), (1, 1), (1, 1)], [17, 8, 16]),
    ];
    let mut rng = Rng::new(31);
    for (case, &(i_n, o_n, kt, k, padding, input)) in cases.iter().enumerate() {
        let mut normal = |n: usize, scale: f64| -> Vec<f32> { (0..n).map(|_| (rng.normal() * scale) as f32).collect() };
        let nk = kt / 3;
        let conv = SeparableConv3d::new(
            i_n,
            o_n,
            kt,
            k,
            padding,
            normal(o_n * i_n * nk, 0.5),
            normal(o_n * i_n * nk, 0.5),
            normal(o_n * i_n * k * k, 0.3),
            0.1,
        );
        assert!(conv.temporal_first_cheaper(input), "case {case}: the layer would not run the temporal-first kernels");
        let kernels = conv.kernels(0.1);
        let out_size = conv.output_size(input).unwrap();
        let x = normal(i_n * input.iter().product::<usize>(), 1.0);
        let grad = normal(o_n * out_size.iter().product::<usize>(), 1.0);
        let run = |fast: bool, avx512: bool| {
            simd::set_fast_kernels(fast);
            simd::set_avx512_kernels(avx512);
            let r = (conv.convolve(&kernels, &x, input), conv.convolve_backward(&kernels, &grad, input));
            simd::set_fast_kernels(true);
            simd::set_avx512_kernels(true);
            r
        };
        let (out, grad_x) = run(false, false);
        assert_eq!(out.len(), o_n * out_size.iter().product::<usize>());
        for (variant, avx512) in [("AVX-512", true), ("AVX2", false)] {
            let (fast_out, fast_grad_x) = run(true, avx512);
            let d = common::rel_max_diff(&common::to_f64(&fast_out), &common::to_f64(&out));
            assert!(d <= 1e-5, "case {case} {variant}: outputs differ by {d:e}");
            let d = common::rel_max_diff(&common::to_f64(&fast_grad_x), &common::to_f64(&grad_x));
            assert!(d <= 1e-5, "case {case} {variant}: input gradients differ by {d:e}");
        }
    }
}

/// `ConvGRUCore`'s `1 x 1 x 1` projection (`pointwise.rs`) runs as the one-tap temporal kernel of
/// `simd_temporal.rs`: against the portable `Conv3d` it wraps, forward and input gradient, with
/// channel counts below, at and above a vector's 8 lanes and value counts with a short last group.
/// Same bar as above: 1e-5 of the largest value.
#[test]
fn pointwise_projection_matches_portable_code() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for (seed, in_channels, out_channels, shape) in [(41, 32, 1, [32, 7, 4, 2]), (42, 5, 24, [5, 3, 5, 3]), (43, 16, 8, [16, 10, 4, 2])] {
        let mut rng = Rng::new(seed);
        let weight: Vec<f32> = (0..in_channels * out_channels).map(|_| (rng.normal() * 0.3) as f32).collect();
        let conv = Conv3d::new(in_channels, out_channels, [1, 1, 1], [(0, 0); 3], weight, None, "Conv3d");
        let layer = Pointwise::new(conv);
        let out_shape = layer.output_shape(shape).unwrap();
        let x: Vec<f32> = common::random_stimulus(shape, seed).iter().map(|&v| v as f32).collect();
        let g: Vec<f32> = common::random_stimulus(out_shape, seed + 1).iter().map(|&v| v as f32).collect();
        let run = || {
            let (out, state) = layer.forward(&x, shape, None);
            let values = BackwardValues { input: Some(&x), input_shape: shape, output: Some(&out), output_shape: out_shape, state: state.as_deref() };
            let grad = layer.backward(values, g.clone(), None);
            (out, grad)
        };
        simd::set_fast_kernels(true);
        let (fast_out, fast_grad) = run();
        simd::set_fast_kernels(false);
        let (out, grad) = run();
        simd::set_fast_kernels(true);
        let d = common::rel_max_diff(&common::to_f64(&fast_out), &common::to_f64(&out));
        assert!(d <= 1e-5, "{in_channels} -> {out_channels}: outputs differ by {d:e}");
        let d = common::rel_max_diff(&common::to_f64(&fast_grad), &common::to_f64(&grad));
        assert!(d <= 1e-5, "{in_channels} -> {out_channels}: input gradients differ by {d:e}");
    }
}

/// Runs `fast` with the AVX-512 kernels allowed, then forbidden (their AVX2 variants), and checks each
/// against `portable` (the same values with the fast kernels off) within `bar` of the largest value.
fn both_variants(what: &str, bar: f64, portable: &[f32], fast: impl Fn() -> Vec<f32>) {
    for (variant, avx512) in [("AVX-512", true), ("AVX2", false)] {
        simd::set_avx512_kernels(avx512);
        let values = fast();
        simd::set_avx512_kernels(true);
        let d = common::rel_max_diff(&common::to_f64(&values), &common::to_f64(portable));
        assert!(d <= bar, "{what} {variant}: differs from the portable code by {d:e}");
    }
}

fn normal(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

/// The three kernels of `TorchSTSeparableConv3D` (also the direct route of `full` layers), each
/// called directly in both variants against the portable `Conv3d` computing the same thing, on
/// shapes that reach every block of the AVX-512 and AVX2 code: register blocks of 8 / 4 / 1 output
/// channels and masked last values (temporal), 16-lane channel groups and frames cut into 1-4 rows
/// x 1-8 columns, rows wider than 8, padding (correlation), 1-3 input channels, 1-50 frames (one to
/// three vectors per pass and several passes), rows not a multiple of the pixel block (spatial
/// gradient). Same bar as above: 1e-5 of the largest value (~100 float32 ulps; the sums run in
/// another order), far below any indexing mistake.
#[test]
fn separable_stage_kernels_match_portable_code() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(51);
    // Temporal stage: `(inputs, outputs, kt, frames out, pixels, zero frames before and after)`.
    for (inputs, outputs, kt, frames_out, pixels, zeros) in
        [(16, 16, 21, 20, 48, (0, 0)), (16, 16, 11, 10, 25, (10, 10)), (3, 13, 5, 7, 9, (0, 2)), (24, 20, 3, 3, 37, (2, 0)), (5, 1, 1, 4, 61, (0, 0))]
    {
        let frames = frames_out + kt - 1;
        let weight = normal(&mut rng, outputs * inputs * kt, 0.3);
        let mut x = normal(&mut rng, inputs * frames * pixels, 1.0);
        for (n, v) in x.iter_mut().enumerate() {
            let frame = n / pixels % frames;
            if frame < zeros.0 || frame >= frames - zeros.1 {
                *v = 0.0;
            }
        }
        let conv = Conv3d::new(inputs, outputs, [kt, 1, 1], [(0, 0); 3], weight.clone(), None, "Conv3d").with_route(ConvRoute::Direct);
        simd::set_fast_kernels(false);
        let portable = conv.forward_values(&x, [inputs, frames, 1, pixels]);
        simd::set_fast_kernels(true);
        both_variants(&format!("temporal {inputs} -> {outputs}, kt {kt}, {pixels} pixels"), 1e-5, &portable, || {
            let mut out = vec![0.0; outputs * frames_out * pixels];
            let valid = (zeros.0, frames - zeros.1);
            assert!(f32::temporal_correlate_fast(&weight, [inputs, outputs], kt, &x, pixels, frames_out, valid, &mut out), "no fast temporal kernel");
            out
        });
    }
    // Correlation: `(in, out, kernel, input (t, h, w), padding per side (t, h, w))`.
    type Case = (usize, usize, [usize; 3], [usize; 3], [usize; 3]);
    let cases: [Case; 6] = [
        (2, 16, [1, 11, 11], [12, 18, 16], [0, 0, 0]),
        (16, 16, [1, 5, 5], [6, 8, 6], [0, 2, 2]),
        (16, 32, [1, 5, 5], [4, 5, 5], [0, 2, 2]),
        (3, 16, [3, 3, 3], [5, 9, 20], [1, 1, 0]),
        (4, 48, [2, 3, 3], [3, 11, 1], [0, 1, 1]),
        (5, 24, [1, 3, 3], [3, 7, 9], [0, 1, 1]),
    ];
    for (m, c, kernel, input, pad) in cases {
        let weight = normal(&mut rng, c * m * kernel.iter().product::<usize>(), 0.3);
        let x = normal(&mut rng, m * input.iter().product::<usize>(), 1.0);
        let padding = pad.map(|p| (p, p));
        let conv = Conv3d::new(m, c, kernel, padding, weight.clone(), None, "Conv3d").with_route(ConvRoute::Direct);
        let shape = [m, input[0], input[1], input[2]];
        simd::set_fast_kernels(false);
        let portable = conv.forward_values(&x, shape);
        simd::set_fast_kernels(true);
        let taps: usize = kernel.iter().product();
        let mut channels_last = vec![0.0; weight.len()];
        for o in 0..c {
            for i in 0..m {
                for tap in 0..taps {
                    channels_last[(i * taps + tap) * c + o] = weight[(o * m + i) * taps + tap];
                }
            }
        }
        let correlation = Correlation { in_channels: m, out_channels: c, kernel, weights: &weight, weights_channels_last: &channels_last };
        both_variants(&format!("correlation {m} -> {c}, kernel {kernel:?}, input {input:?}"), 1e-5, &portable, || {
            f32::correlate_fast(&correlation, &x, input, padding).expect("no fast correlation")
        });
    }
    // Spatial stage's input gradient: `(in, out, k, input (h, w), padding per side, frames)`.
    for (m, o, k, [h, w], pad, frames) in
        [(2, 16, 11, [18, 16], 0, 40), (1, 16, 11, [15, 15], 0, 50), (3, 8, 5, [7, 9], 2, 17), (2, 5, 3, [4, 13], 1, 1), (2, 16, 11, [11, 11], 0, 33)]
    {
        let geometry = SpatialGeometry { channels: [m, o], kernel: [k, k], padding: [(pad, pad); 2], input: [h, w] };
        let [ho, wo] = geometry.output().unwrap();
        let weight = normal(&mut rng, o * m * k * k, 0.3);
        let grad = normal(&mut rng, o * frames * ho * wo, 1.0);
        let conv = Conv3d::new(m, o, [1, k, k], [(0, 0), (pad, pad), (pad, pad)], weight.clone(), None, "Conv3d").with_route(ConvRoute::Direct);
        simd::set_fast_kernels(false);
        let portable = conv.backward_values(&grad, [m, frames, h, w]);
        simd::set_fast_kernels(true);
        let mut taps_first = vec![0.0; weight.len()];
        for c in 0..o {
            for i in 0..m {
                for tap in 0..k * k {
                    taps_first[(i * k * k + tap) * o + c] = weight[(c * m + i) * k * k + tap];
                }
            }
        }
        both_variants(&format!("spatial gradient {m} <- {o}, {k}x{k}, {h}x{w}, {frames} frames"), 1e-5, &portable, || {
            f32::spatial_input_gradient_fast(&geometry, &taps_first, &grad, frames).expect("no fast spatial gradient")
        });
    }
}

/// ELU's vectorised float32 kernel (`simd_math.rs`, `exp(x) - 1` in f64 lanes, polynomial good to
/// 1e-14): within one float32 rounding of `exp_m1` in f64 over negative values down to -50, zeros
/// of both signs (kept), positive values and a length with a short last group. (An AVX-512 variant,
/// 8 lanes of the same operations, made all MEIs of `zoo_conv_separable` slower: ELU alone took 3x
/// as long, between what were then 256-bit convolution kernels.)
#[test]
fn elu_kernel_matches_exp_m1() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let mut x: Vec<f32> = (0..100_003).map(|i| -50.0 + i as f32 * 5.5e-4).collect();
    x.extend([0.0, -0.0, 1e-30, -1e-30, 3.0, f32::MIN_POSITIVE, -f32::MIN_POSITIVE]);
    let mut y = x.clone();
    if !<f32 as VectorMath>::elu_fast(&mut y) {
        eprintln!("no AVX2/FMA on this CPU: nothing to compare");
        return;
    }
    for (&v, &y) in x.iter().zip(&y) {
        let exact = if v < 0.0 { (v as f64).exp_m1() } else { v as f64 };
        assert!((y as f64 - exact).abs() <= f32::EPSILON as f64 * exact.abs().max(f32::MIN_POSITIVE as f64), "ELU({v}) = {y}, expected {exact}");
        if v == 0.0 {
            assert_eq!(y.to_bits(), v.to_bits(), "zeros keep their sign");
        }
    }
}
