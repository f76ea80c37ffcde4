//! Models made here, to cover what the fixtures do not: 1 and 3 colour channels, max-pooling, input
//! downsampling, colour squashing, temporal padding; gradients checked against finite differences;
//! MEI batching and seeding.

mod common;

use common::{random_stimulus, synthetic_model};

use retina::formats::RawModel;
use retina::mei::{self, MeiSettings, MeiTarget, Objective};
use retina::model::Model;
use retina::Tensor;
use serde_json::json;

/// The directional derivative of every objective along a random direction equals the central finite
/// difference: float64, step 1e-5, so the truncation error is ~1e-10 relative.
fn check_gradients(raw: &RawModel, time_steps: usize) {
    let model: Model<f64> = Model::from_raw(raw).unwrap();
    let shape = model.config.stimulus_shape(time_steps, 1);
    let x = random_stimulus([shape[1], shape[2], shape[3], shape[4]], 7);
    let v = random_stimulus([shape[1], shape[2], shape[3], shape[4]], 8);
    for target in mei::all_targets(&model) {
        let objective = Objective::new(&model, target.clone(), time_steps).unwrap();
        let (value, gradient) = objective.gradient(&x);
        let (full_value, _) = objective.evaluate(&x);
        assert!((value - full_value).abs() <= 1e-12 * full_value.abs().max(1.0), "{}: cropped and full objective differ", target.id());
        // An inner channel's series is computed on its spatial box: the same values as the centre
        // unit of the whole layer output.
        if let MeiTarget::InnerChannel { layer, channel } = target.clone() {
            let stimulus = Tensor { shape: shape.to_vec(), data: x.clone() };
            let session = model.sessions().next().unwrap().to_string();
            let out = &model.forward(&stimulus, &session).unwrap().layers[layer];
            let [_, _, t, h, w] = [out.shape[0], out.shape[1], out.shape[2], out.shape[3], out.shape[4]];
            let full: Vec<f64> = (0..t).map(|ti| out.data[((channel * t + ti) * h + h / 2) * w + w / 2]).collect();
            let (_, series) = objective.evaluate(&x);
            // Float64; the two routes may pick different kernels (direct or FFT): 1e-12 relative.
            let scale = full.iter().fold(1e-3f64, |m, a| m.max(a.abs()));
            let d = full.iter().zip(&series).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
            assert!(series.len() == t && d <= 1e-12, "{}: series on the box differs from the full layer by {d:e}", target.id());
        }
        let eps = 1e-5;
        let shifted = |s: f64| -> Vec<f64> { x.iter().zip(&v).map(|(a, b)| a + s * b).collect() };
        let numeric = (objective.evaluate(&shifted(eps)).0 - objective.evaluate(&shifted(-eps)).0) / (2.0 * eps);
        let analytic: f64 = gradient.iter().zip(&v).map(|(g, d)| g * d).sum();
        let scale = analytic.abs().max(numeric.abs()).max(1e-6);
        assert!(
            (analytic - numeric).abs() <= 1e-6 * scale,
            "{}: gradient {analytic} vs finite difference {numeric}",
            target.id()
        );
    }
}

#[test]
fn gradients_match_finite_differences_for_every_layer_option() {
    check_gradients(&synthetic_model(2, 18, 16, json!({}), 1), 30);
    check_gradients(&synthetic_model(1, 16, 16, json!({"maxpool_every_n_layers": 1}), 2), 30);
    check_gradients(&synthetic_model(3, 20, 18, json!({"downsample_input_kernel_size": [1, 2, 2], "spatial_kernel_sizes": [3, 3]}), 3), 30);
    check_gradients(&synthetic_model(1, 12, 12, json!({"color_squashing_weights": [0.3, 0.7], "in_shape": [1, 30, 12, 12]}), 4), 30);
    check_gradients(&synthetic_model(2, 12, 10, json!({"core_input_padding": [2, 1, 1], "core_hidden_padding": "same"}), 5), 30);
    check_gradients(&synthetic_model(2, 12, 10, json!({"core_input_padding": true, "cut_first_n_frames_in_core": 0}), 6), 20);
}

#[test]
fn gradients_match_finite_differences_for_every_convolution_type() {
    // TorchFullConv3D, with temporal padding (no cropping) and without (cropped gradients).
    check_gradients(&synthetic_model(2, 12, 10, json!({"convolution_type": "full"}), 21), 30);
    check_gradients(&synthetic_model(1, 12, 10, json!({"convolution_type": "full", "core_hidden_padding": [1, 1, 1]}), 22), 30);
    // Kernels large enough for the FFT route (tests/fft_conv.rs checks that it is the one taken).
    let large = json!({"convolution_type": "full", "hidden_channels": [8, 4], "temporal_kernel_sizes": [15, 5], "spatial_kernel_sizes": [9, 3]});
    check_gradients(&synthetic_model(2, 16, 14, large, 27), 30);
    // TorchSTSeparableConv3D: numeric padding applied by both stages, "same", and max-pooling.
    check_gradients(&synthetic_model(2, 12, 10, json!({"convolution_type": "separable", "core_hidden_padding": [0, 1, 1]}), 23), 30);
    check_gradients(&synthetic_model(2, 12, 10, json!({"convolution_type": "separable", "core_input_padding": true}), 24), 30);
    check_gradients(&synthetic_model(1, 16, 16, json!({"convolution_type": "separable", "maxpool_every_n_layers": 1}), 25), 30);
    // TimeIndependentConv3D: temporal kernel 1, spatial padding.
    check_gradients(
        &synthetic_model(1, 12, 12, json!({"convolution_type": "time_independent", "temporal_kernel_sizes": [1, 1], "cut_first_n_frames_in_core": 0}), 26),
        20,
    );
}

#[test]
fn one_and_three_channel_models_run_forward_and_meis() {
    for channels in [1, 3] {
        let raw = synthetic_model(channels, 18, 16, json!({}), 10 + channels as u64);
        let model: Model<f32> = Model::from_raw(&raw).unwrap();
        let stimulus = Tensor::new(vec![2, channels, 30, 18, 16], vec![0.5; 2 * channels * 30 * 18 * 16]).unwrap();
        let out = model.forward(&stimulus, "a_session").unwrap();
        assert_eq!(out.responses.shape[0], 2);
        assert_eq!(out.responses.shape[2], 2);
        let mut settings = MeiSettings::openretina(channels);
        settings.time_steps = 30;
        // openretina gives these models no norm and no ranges (and crashes on 3 channels).
        assert_eq!(settings.constraints.norm, None);
        let meis = mei::optimize_all(&model, &mei::all_targets(&model), &settings, &|| {}).unwrap();
        assert_eq!(meis.len(), 4 + 3 + 3 + 2);
        for m in &meis {
            assert_eq!(m.stimulus.shape, vec![1, channels, 30, 18, 16]);
            assert!(m.stimulus.data.iter().all(|v| v.is_finite()), "{}", m.target.id());
            assert!(m.losses.last().unwrap() <= m.losses.first().unwrap(), "{}: the loss should go down", m.target.id());
        }
    }
}

#[test]
fn batched_meis_equal_single_ones_and_seeds_reproduce() {
    let model: Model<f32> = Model::from_raw(&common::raw_model("example_low_res/model.safetensors")).unwrap();
    let settings = MeiSettings::openretina(2);
    let targets = mei::all_targets(&model);
    let all = mei::optimize_all(&model, &targets, &settings, &|| {}).unwrap();
    // One at a time, and a subset in another order: the same bytes.
    let picks = [targets.len() - 1, 3, 17, 40];
    for &i in &picks {
        let single = mei::optimize(&model, &targets[i], mei::initial_stimulus(&model, &targets[i], &settings), &settings).unwrap();
        assert_eq!(single.stimulus.data, all[i].stimulus.data, "{}", targets[i].id());
        assert_eq!(single.losses, all[i].losses);
    }
    let subset: Vec<MeiTarget> = picks.iter().map(|&i| targets[i].clone()).collect();
    let again = mei::optimize_all(&model, &subset, &settings, &|| {}).unwrap();
    for (m, &i) in again.iter().zip(&picks) {
        assert_eq!(m.stimulus.data, all[i].stimulus.data);
    }
    // Another seed gives other MEIs.
    let other = MeiSettings { seed: 1, ..settings.clone() };
    let m = mei::optimize(&model, &targets[3], mei::initial_stimulus(&model, &targets[3], &other), &other).unwrap();
    assert_ne!(m.stimulus.data, all[3].stimulus.data);
}

