//! Models made here, to cover what the fixtures do not: 1 and 3 colour channels, max-pooling, input
//! downsampling, colour squashing, temporal padding; gradients checked against finite differences;
//! MEI batching and seeding.

mod common;

use std::collections::BTreeMap;

use retina::formats::{RawModel, RawTensor};
use retina::mei::{self, MeiSettings, MeiTarget, Objective};
use retina::model::Model;
use retina::rng::Rng;
use retina::Tensor;
use serde_json::json;

/// An `ExampleCoreReadout` with random weights and the given hyper parameters merged in.
fn synthetic_model(channels: usize, height: usize, width: usize, extra: serde_json::Value, seed: u64) -> RawModel {
    let mut hp = json!({
        "in_shape": [channels, 30, height, width],
        "hidden_channels": [4, 3],
        "temporal_kernel_sizes": [7, 5],
        "spatial_kernel_sizes": [5, 3],
        "n_neurons_dict": {"b_session": 3, "a_session": 2},
        "core_input_padding": false,
        "core_hidden_padding": true,
        "cut_first_n_frames_in_core": 2,
        "readout_positive": true,
        "readout_scale": true,
        "readout_bias": true,
        "readout_gaussian_mean_scale": 6.0,
        "readout_gaussian_var_scale": 4.0,
        "convolution_type": "custom_separable",
    });
    for (k, v) in extra.as_object().unwrap() {
        hp[k] = v.clone();
    }
    let config = retina::model::ModelConfig::from_hyper_parameters("ExampleCoreReadout", &hp).unwrap();
    let mut rng = Rng::new(seed);
    let mut tensors = BTreeMap::new();
    fn put(tensors: &mut BTreeMap<String, RawTensor>, name: String, shape: Vec<usize>, f: &mut dyn FnMut() -> f32) {
        let n = shape.iter().product();
        tensors.insert(name, RawTensor::f32(shape, (0..n).map(|_| f()).collect()));
    }
    for (i, l) in config.layers.iter().enumerate() {
        let p = format!("core.features.layer{i}");
        let (o, c, nk, k) = (l.out_channels, l.in_channels, l.temporal_kernel / 3, l.spatial_kernel);
        put(&mut tensors, format!("{p}.conv.sin_weights"), vec![o, c, nk], &mut || rng.normal() as f32 * 0.5);
        put(&mut tensors, format!("{p}.conv.cos_weights"), vec![o, c, nk], &mut || rng.normal() as f32 * 0.5);
        put(&mut tensors, format!("{p}.conv.weight_spatial"), vec![o, c, 1, k, k], &mut || rng.normal() as f32 * 0.3);
        put(&mut tensors, format!("{p}.conv._log_speed_default"), vec![1], &mut || 0.0);
        put(&mut tensors, format!("{p}.norm.weight"), vec![o], &mut || 1.0 + rng.uniform() as f32 * 0.2);
        put(&mut tensors, format!("{p}.norm.bias"), vec![o], &mut || rng.normal() as f32 * 0.1);
        put(&mut tensors, format!("{p}.norm.running_mean"), vec![o], &mut || rng.normal() as f32 * 0.1);
        put(&mut tensors, format!("{p}.norm.running_var"), vec![o], &mut || 0.5 + rng.uniform() as f32);
        put(&mut tensors, format!("{p}.bias.bias"), vec![1, o, 1, 1, 1], &mut || rng.normal() as f32 * 0.1);
    }
    if let Some(w) = &config.color_squashing_weights {
        let w: Vec<f32> = w.iter().map(|&x| x as f32).collect();
        tensors.insert("core.color_squashing_layer.channel_weights".into(), RawTensor::f32(vec![w.len()], w));
    }
    let [c, _, h, w] = config.core_output_shape(30).unwrap();
    for (session, n) in &config.sessions {
        let p = format!("readout.{session}");
        let n = *n;
        put(&mut tensors, format!("{p}.features"), vec![1, c, 1, n], &mut || rng.normal() as f32 * 0.5);
        put(&mut tensors, format!("{p}.mask_mean"), vec![n, 2], &mut || (rng.uniform() as f32 - 0.5) * 0.2);
        put(&mut tensors, format!("{p}.mask_log_var"), vec![n], &mut || rng.normal() as f32 * 0.2);
        put(&mut tensors, format!("{p}.scale_param"), vec![n], &mut || 1.0);
        put(&mut tensors, format!("{p}.bias"), vec![n], &mut || rng.normal() as f32 * 0.1);
        // openretina's make_mask_grid: (n, h, w, 2), linspace over each axis scaled by max(h, w).
        let m = h.max(w) as f32;
        let lin = |len: usize, i: usize| if len == 1 { -(len as f32) / m } else { -(len as f32) / m + 2.0 * (len as f32) / m * i as f32 / (len - 1) as f32 };
        let mut grid = Vec::with_capacity(n * h * w * 2);
        for _ in 0..n {
            for y in 0..h {
                for x in 0..w {
                    grid.push(lin(h, y));
                    grid.push(lin(w, x));
                }
            }
        }
        tensors.insert(format!("{p}.grid"), RawTensor::f32(vec![n, h, w, 2], grid));
    }
    RawModel { model_class: "ExampleCoreReadout".into(), hyper_parameters: hp, tensors }
}

fn random_stimulus(shape: [usize; 4], seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..shape.iter().product::<usize>()).map(|_| rng.uniform() * 2.0 - 0.5).collect()
}

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
