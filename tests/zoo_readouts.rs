//! The readout kinds beyond the Gaussian mask readout, against openretina 1.1.1 (forward and MEIs on
//! the zoo fixtures) and against finite differences in float64 (their gradient with respect to the
//! core output, through the whole model); and the neuron subsets output-neuron MEIs run on.

mod common;

use common::*;
use retina::formats::{RawModel, RawTensor};
use retina::mei::{self, MeiSettings, MeiTarget, Objective};
use retina::model::Model;
use retina::rng::Rng;
use serde_json::json;

/// Forward responses: the fixtures README's bar, 1e-5 relative to openretina's float64 result.
const FORWARD_TOL: f64 = 1e-5;

fn check_forward(fixture_name: &str) {
    let reference = Reference::load(fixture_name);
    let model: Model<f32> = Model::from_raw(&raw_model(&format!("{fixture_name}/model.safetensors"))).unwrap();
    let input = reference.get32("forward.input");
    for session in model.sessions() {
        let out = model.forward(&input, session).unwrap();
        let expected = reference.get(&format!("forward.{session}.f64"));
        assert_eq!(out.responses.shape, expected.shape, "{fixture_name} {session}");
        let d = rel_max_diff(&to_f64(&out.responses.data), &expected.data);
        assert!(d <= FORWARD_TOL, "{fixture_name} {session}: responses differ by {d:e} (relative)");
    }
}

/// Every MEI of a fixture from its recorded initial stimulus, within the fixtures README's bar per MEI:
/// max(2e-4, 3 x openretina's own float32-vs-float64 difference). (None of these fixtures' MEIs is
/// chaotic in openretina: every own difference is below 1e-5, see tests/mei.rs.)
fn check_meis(fixture_name: &str) {
    let reference = Reference::load(fixture_name);
    let manifest = manifest(fixture_name);
    let model: Model<f32> = Model::from_raw(&raw_model(&format!("{fixture_name}/model.safetensors"))).unwrap();
    let settings = MeiSettings::openretina(model.config.input_channels);
    let ids: Vec<String> =
        reference.names().filter_map(|n| n.strip_prefix("mei.").and_then(|n| n.strip_suffix(".init")).map(String::from)).collect();
    assert_eq!(ids.len() as u64, manifest["meis"].as_u64().unwrap(), "{fixture_name}: MEI count");
    let mut failures = Vec::new();
    for id in &ids {
        let target = MeiTarget::from_id(id).unwrap();
        let own = manifest["relative_max_diff_f32_vs_f64"][format!("mei.{id}")].as_f64().unwrap();
        assert!(own < 1e-5, "{id}: openretina's own difference {own:e} marks a chaotic MEI; use tests/mei.rs's bar");
        let tol = (3.0 * own).max(2e-4);
        let result = mei::optimize(&model, &target, reference.get32(&format!("mei.{id}.init")), &settings).unwrap();
        let d = rel_max_diff(&to_f64(&result.stimulus.data), &reference.get(&format!("mei.{id}.f64")).data);
        // Losses against openretina's float32 run. Inner-channel MEIs of this core can take another
        // path there than in its float64 run (core_features_layer0.0: step 1's loss differs by 0.9
        // while both runs end at the same MEI, 4e-7 apart): for those only the first loss (the
        // shared initial stimulus) and the last (the shared optimum) are comparable.
        let loss32 = reference.get(&format!("mei.{id}.loss32")).data;
        let ends = |v: &[f64]| vec![v[0], v[v.len() - 1]];
        let dl = match &target {
            MeiTarget::OutputNeuron { .. } => rel_max_diff(&result.losses, &loss32),
            _ => rel_max_diff(&ends(&result.losses), &ends(&loss32)),
        };
        if d > tol || dl > tol {
            failures.push(format!("{id}: MEI differs by {d:.3e}, losses by {dl:.3e} (bar {tol:.1e}): {:?} vs {loss32:?}", result.losses));
        }
    }
    assert!(failures.is_empty(), "{fixture_name}:\n{}", failures.join("\n"));
}

/// The directional derivative of every readout objective (each output neuron, and a contrastive one
/// over several neurons) along a random direction equals the central finite difference: float64,
/// step 1e-5, so the truncation error is ~1e-10 relative and 1e-6 is a bar only a wrong gradient misses.
fn check_readout_gradients(raw: &RawModel, time_steps: usize) {
    let model: Model<f64> = Model::from_raw(raw).unwrap();
    let shape = model.config.stimulus_shape(time_steps, 1);
    let x = random_stimulus([shape[1], shape[2], shape[3], shape[4]], 7);
    let v = random_stimulus([shape[1], shape[2], shape[3], shape[4]], 8);
    let mut targets: Vec<MeiTarget> = mei::all_targets(&model).into_iter().filter(|t| matches!(t, MeiTarget::OutputNeuron { .. })).collect();
    let (session, n) = model.readouts.iter().map(|(s, r)| (s.clone(), r.neurons())).max_by_key(|(_, n)| *n).unwrap();
    assert!(n >= 3, "a contrastive objective needs three neurons");
    targets.push(MeiTarget::Contrastive { session, on: vec![n - 1], off: vec![vec![0], vec![1, n - 2]] });
    for target in targets {
        let objective = Objective::new(&model, target.clone(), time_steps).unwrap();
        let (_, gradient) = objective.gradient(&x);
        let eps = 1e-5;
        let shifted = |s: f64| -> Vec<f64> { x.iter().zip(&v).map(|(a, b)| a + s * b).collect() };
        let numeric = (objective.evaluate(&shifted(eps)).0 - objective.evaluate(&shifted(-eps)).0) / (2.0 * eps);
        let analytic: f64 = gradient.iter().zip(&v).map(|(g, d)| g * d).sum();
        let scale = analytic.abs().max(numeric.abs()).max(1e-6);
        assert!((analytic - numeric).abs() <= 1e-6 * scale, "{}: gradient {analytic} vs finite difference {numeric}", target.id());
    }
}

/// A readout of a subset of neurons computes exactly what the whole readout computes for them:
/// responses, and the gradient with respect to the core output when only those responses matter.
fn check_subsets(model: &Model<f64>, time_steps: usize) {
    let shape = model.config.stimulus_shape(time_steps, 1);
    let x = random_stimulus([shape[1], shape[2], shape[3], shape[4]], 3);
    let tape = model.core.forward(&x, [shape[1], shape[2], shape[3], shape[4]], None);
    let (core_out, out_shape) = model.core.output(&tape);
    let t = out_shape[1];
    for (session, readout) in &model.readouts {
        let n = readout.neurons();
        let picks = [n - 1, 0, n / 2];
        let sub = readout.select(&picks);
        assert_eq!(sub.neurons(), picks.len());
        let (all, all_state) = readout.forward(&core_out, out_shape);
        let (some, some_state) = sub.forward(&core_out, out_shape);
        let mut g_all = vec![0.0; t * n];
        let mut g_some = vec![0.0; t * picks.len()];
        let mut rng = Rng::new(5);
        for ti in 0..t {
            for (k, &p) in picks.iter().enumerate() {
                // Each neuron's own arithmetic: equal to float64 rounding of a differently sized product.
                let (a, b) = (all[ti * n + p], some[ti * picks.len() + k]);
                assert!((a - b).abs() <= 1e-13 * a.abs().max(1.0), "{session} neuron {p} frame {ti}: {a} vs {b}");
                let g = rng.normal();
                g_all[ti * n + p] += g;
                g_some[ti * picks.len() + k] = g;
            }
        }
        // Neuron n/2 may coincide with another pick: its gradient is then counted twice on both sides.
        let back_all = readout.backward(&all_state, &g_all, out_shape);
        let back_some = sub.backward(&some_state, &g_some, out_shape);
        let d = rel_max_diff(&back_some, &back_all);
        assert!(d <= 1e-12, "{session}: subset gradient differs by {d:e}");
        assert_eq!(sub.neuron_weights(0), readout.neuron_weights(n - 1), "{session}: the subset's first neuron is neuron {}", n - 1);
    }
}

/// zoo_factorized with readout options replaced.
fn factorized_with(options: serde_json::Value) -> RawModel {
    let mut raw = raw_model("zoo/zoo_factorized/model.safetensors");
    for (k, v) in options.as_object().unwrap() {
        raw.hyper_parameters["readout"][k] = v.clone();
    }
    raw
}

#[test]
fn factorized_readout_forward_matches_openretina() {
    check_forward("zoo/zoo_factorized");
    // The masks are the stored mask_weights, transposed: exact.
    let reference = Reference::load("zoo/zoo_factorized");
    let model: Model<f32> = Model::from_raw(&raw_model("zoo/zoo_factorized/model.safetensors")).unwrap();
    for (session, readout) in &model.readouts {
        assert_eq!(readout.class_name(), "FactorizedReadout");
        let masks: Vec<f32> = (0..readout.neurons()).flat_map(|n| readout.neuron_weights(n).spatial.data).collect();
        assert_eq!(to_f64(&masks), reference.get(&format!("readout.{session}.mask")).data, "{session}");
    }
}

#[test]
fn factorized_readout_meis_match_openretina() {
    check_meis("zoo/zoo_factorized");
}

#[test]
fn factorized_readout_gradients_and_options() {
    // The fixture's readout (bias, no constraints), then every constraint openretina has.
    check_readout_gradients(&raw_model("zoo/zoo_factorized/model.safetensors"), 40);
    let constrained = factorized_with(json!({"weights_constraint": "absnorm", "mask_constraint": "abs", "readout_bias": false}));
    check_readout_gradients(&constrained, 40);
    let model: Model<f64> = Model::from_raw(&constrained).unwrap();
    check_subsets(&model, 40);
    // What the constraints mean: |mask|, and feature columns |w| / sqrt(sum w^2 + 1e-5).
    let stored = raw_model("zoo/zoo_factorized/model.safetensors");
    let session = "session_2_ventral2_20201016";
    let w = stored.tensors[&format!("readout.{session}.feature_weights")].to_float::<f64>("w").unwrap();
    let m = stored.tensors[&format!("readout.{session}.mask_weights")].to_float::<f64>("m").unwrap();
    let (channels, n) = (w.shape[0], w.shape[1]);
    let weights = model.readouts[session].neuron_weights(3);
    let norm = ((0..channels).map(|c| w.data[c * n + 3].powi(2)).sum::<f64>() + 1e-5).sqrt();
    for c in 0..channels {
        assert!((weights.features[c] as f64 - w.data[c * n + 3].abs() / norm).abs() < 1e-6);
    }
    for (q, &v) in weights.spatial.data.iter().enumerate() {
        assert_eq!(v as f64, (m.data[q * n + 3] as f32).abs() as f64);
    }
}

#[test]
fn factorized_readout_refuses_unknown_constraints() {
    for (key, value) in [("weights_constraint", "square"), ("mask_constraint", "norm")] {
        let err = Model::<f32>::from_raw(&factorized_with(json!({ key: value }))).unwrap_err().to_string();
        assert!(err.contains(&format!("readout.{key}")) && err.contains(value) && !err.contains('\n'), "{err}");
    }
}

#[test]
fn gaussian_mask_readout_positive_false_keeps_negative_features() {
    // openretina's GaussianMaskReadout clamps features at 0 in its forward only when `positive`.
    let raw = synthetic_model(2, 18, 16, json!({"readout_positive": false}), 21);
    let model: Model<f64> = Model::from_raw(&raw).unwrap();
    let stored = raw.tensors["readout.b_session.features"].to_float::<f64>("f").unwrap();
    let n = 3;
    let features: Vec<f64> = (0..stored.shape[1]).map(|c| stored.data[c * n + 1]).collect();
    assert!(features.iter().any(|&f| f < 0.0), "the synthetic model should have negative features");
    assert_eq!(to_f64(&model.readouts["b_session"].neuron_weights(1).features), features.iter().map(|&f| f as f32 as f64).collect::<Vec<_>>());
    let positive: Model<f64> = Model::from_raw(&synthetic_model(2, 18, 16, json!({"readout_positive": true}), 21)).unwrap();
    assert!(positive.readouts["b_session"].neuron_weights(1).features.iter().all(|&f| f >= 0.0));
    check_readout_gradients(&raw, 30);
    check_subsets(&model, 30);
    check_subsets(&positive, 30);
}

#[test]
fn output_neuron_meis_are_the_same_on_the_selected_rows() {
    // An output MEI runs on its neuron's readout row; a model whose session holds only that neuron
    // (every other neuron's tensors removed) gives the same MEI to float32 rounding.
    let raw = raw_model("zoo/zoo_factorized/model.safetensors");
    let model: Model<f32> = Model::from_raw(&raw).unwrap();
    let session = "session_3_ventral1_20201021";
    let mut single = raw.clone();
    single.hyper_parameters["n_neurons_dict"][session] = json!(1);
    if single.hyper_parameters.get("data_info").is_some() {
        single.hyper_parameters["data_info"]["n_neurons_dict"][session] = json!(1);
    }
    let neuron = 5;
    for (name, k) in [("mask_weights", 1), ("feature_weights", 1), ("bias", 0)] {
        let full = raw.tensors[&format!("readout.{session}.{name}")].to_float::<f32>(name).unwrap();
        let n = full.shape[k];
        let data: Vec<f32> = full.data.iter().enumerate().filter(|(i, _)| i % n == neuron).map(|(_, &v)| v).collect();
        let mut shape = full.shape.clone();
        shape[k] = 1;
        single.tensors.insert(format!("readout.{session}.{name}"), RawTensor::f32(shape, data));
    }
    let single: Model<f32> = Model::from_raw(&single).unwrap();
    let settings = MeiSettings::openretina(2);
    let target = MeiTarget::OutputNeuron { session: session.into(), neuron };
    let init = mei::initial_stimulus(&model, &target, &settings);
    let a = mei::optimize(&model, &target, init.clone(), &settings).unwrap();
    let b = mei::optimize(&single, &MeiTarget::OutputNeuron { session: session.into(), neuron: 0 }, init, &settings).unwrap();
    assert_eq!(a.stimulus.data, b.stimulus.data);
    assert_eq!(a.losses, b.losses);
}

/// zoo_factorized's core with a `MultiSampledGaussianReadout` of random weights: positions over the
/// whole field and beyond it (clamped to its edge, where corners fall outside), as a trained readout
/// can have them.
fn sampled_gaussian_model(options: serde_json::Value, seed: u64) -> RawModel {
    let mut raw = raw_model("zoo/zoo_factorized/model.safetensors");
    let mut readout = json!({
        "_convert_": "object",
        "_target_": "openretina.modules.readout.multi_readout.MultiSampledGaussianReadout",
        "in_shape": [16, 120, 8, 6], "bias": true, "gamma": 0.4, "init_mu_range": 0.1, "init_sigma_range": 0.15,
        "reg_avg": false, "batch_sample": true, "align_corners": true, "gauss_type": "full",
        "grid_mean_predictor": null, "shared_features": null, "init_grid": null, "shared_grid": null,
    });
    for (k, v) in options.as_object().unwrap() {
        readout[k] = v.clone();
    }
    let sigma_values = match readout["gauss_type"].as_str().unwrap() {
        "full" => vec![2, 2],
        "uncorrelated" => vec![1, 2],
        _ => vec![1, 1],
    };
    let bias = readout["bias"].as_bool().unwrap();
    raw.hyper_parameters["readout"] = readout;
    raw.tensors.retain(|name, _| !name.starts_with("readout."));
    let mut rng = Rng::new(seed);
    let sessions: Vec<(String, usize)> =
        raw.hyper_parameters["n_neurons_dict"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap() as usize)).collect();
    for (session, n) in sessions {
        let mut put = |name: &str, shape: Vec<usize>, f: &mut dyn FnMut() -> f32| {
            let values = (0..shape.iter().product()).map(|_| f()).collect();
            raw.tensors.insert(format!("readout.{session}.{name}"), RawTensor::f32(shape, values));
        };
        // Neuron 0 sits exactly on the last pixel's centre (x = y = 1), neuron 1 beyond the edge.
        let mut k = 0;
        put("_mu", vec![1, n, 1, 2], &mut || {
            k += 1;
            match k {
                1 | 2 => 1.0,
                3 | 4 => 1.3,
                _ => (rng.uniform() * 2.4 - 1.2) as f32,
            }
        });
        put("sigma", [vec![1, n], sigma_values.clone()].concat(), &mut || (rng.uniform() * 0.3 - 0.15) as f32);
        put("_features", vec![1, 16, 1, n], &mut || rng.normal() as f32 * 0.3);
        if bias {
            put("bias", vec![n], &mut || rng.normal() as f32 * 0.1);
        }
    }
    raw
}

/// torch's `grid_sample` (bilinear, zero padding) of one channel frame at `(x, y)`, written from its
/// documentation: pixel coordinates `((g + 1) / 2) (size - 1)` with `align_corners`, else
/// `((g + 1) size - 1) / 2`, and the four neighbours weighted by the opposite areas.
fn grid_sample_reference(frame: &[f64], h: usize, w: usize, x: f64, y: f64, align_corners: bool) -> f64 {
    let pixel = |g: f64, size: usize| if align_corners { (g + 1.0) / 2.0 * (size as f64 - 1.0) } else { ((g + 1.0) * size as f64 - 1.0) / 2.0 };
    let (ix, iy) = (pixel(x, w), pixel(y, h));
    let (x0, y0) = (ix.floor(), iy.floor());
    let mut value = 0.0;
    for (dy, dx) in [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)] {
        let (px, py) = (x0 + dx, y0 + dy);
        let weight = (1.0 - (ix - px).abs()) * (1.0 - (iy - py).abs());
        if px >= 0.0 && py >= 0.0 && (px as usize) < w && (py as usize) < h {
            value += weight * frame[py as usize * w + px as usize];
        }
    }
    value
}

#[test]
fn sampled_gaussian_readout_samples_as_grid_sample() {
    for align_corners in [true, false] {
        let raw = sampled_gaussian_model(json!({ "align_corners": align_corners }), 31);
        let model: Model<f64> = Model::from_raw(&raw).unwrap();
        let shape = model.config.stimulus_shape(40, 1);
        let x = random_stimulus([shape[1], shape[2], shape[3], shape[4]], 9);
        let stimulus = retina::Tensor::new(shape.to_vec(), x).unwrap();
        for (session, readout) in &model.readouts {
            assert_eq!(readout.class_name(), "PointGaussianReadout");
            let out = model.forward(&stimulus, session).unwrap();
            let core = out.layers.last().unwrap();
            let [_, c_n, t, h, w] = core.shape[..] else { panic!() };
            let p = format!("readout.{session}");
            let get = |name: &str| raw.tensors[&format!("{p}.{name}")].to_float::<f64>(name).unwrap().data;
            let (mu, features, bias) = (get("_mu"), get("_features"), get("bias"));
            let n = bias.len();
            for k in 0..n {
                let (mx, my) = (mu[2 * k].clamp(-1.0, 1.0), mu[2 * k + 1].clamp(-1.0, 1.0));
                for ti in 0..t {
                    let pre: f64 = (0..c_n)
                        .map(|c| features[c * n + k] * grid_sample_reference(&core.data[(c * t + ti) * h * w..][..h * w], h, w, mx, my, align_corners))
                        .sum::<f64>()
                        + bias[k];
                    let expected = if pre > 20.0 { pre } else { pre.exp().ln_1p() };
                    let got = out.responses.data[ti * n + k];
                    assert!((got - expected).abs() <= 1e-12 * expected.abs().max(1.0), "{session} neuron {k} frame {ti}: {got} vs {expected}");
                }
            }
        }
        check_readout_gradients(&raw, 40);
        check_subsets(&model, 40);
    }
    // The other Gaussian types only change the figure's density; no bias is allowed.
    for gauss_type in ["uncorrelated", "isotropic"] {
        let raw = sampled_gaussian_model(json!({ "gauss_type": gauss_type, "bias": false }), 32);
        let model: Model<f32> = Model::from_raw(&raw).unwrap();
        let density = model.readouts.values().next().unwrap().neuron_weights(2).spatial;
        assert!((density.data.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{gauss_type}: a density sums to 1");
    }
}

#[test]
fn sampled_gaussian_readout_refuses_what_it_does_not_implement() {
    let cases = [
        (json!({"grid_mean_predictor": {"hidden_layers": 0}}), "readout.grid_mean_predictor"),
        (json!({"shared_features": {"match_ids": [0, 1]}}), "readout.shared_features"),
        (json!({"gauss_type": "iso"}), "readout.gauss_type"),
    ];
    for (options, named) in cases {
        let err = Model::<f32>::from_raw(&sampled_gaussian_model(options, 33)).unwrap_err().to_string();
        assert!(err.contains(named) && !err.contains('\n'), "{err}");
    }
}

/// The sampled Gaussian readout made by the real openretina (`tests/fixtures/zoo/zoo_sampled_gaussian`,
/// see tools/): forward within 1e-5 of its float64 result, the sampling positions and figure densities
/// it computed, and its reference MEI within max(2e-4, 3 x its own float32-vs-float64 difference).
fn sampled_gaussian_fixture() -> (LocalReference, serde_json::Value, RawModel) {
    let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/zoo/zoo_sampled_gaussian"));
    assert!(dir.is_dir(), "fixture {} is missing", dir.display());
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let reference = LocalReference(retina::formats::safetensors::parse(&bytes, "reference").unwrap().0);
    let manifest = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    // The repository's zoo folders keep only the Lightning checkpoint (see tests/fixtures/zoo/README.md).
    (reference, manifest, retina::formats::checkpoint::read_model_file(&dir.join("model.ckpt")).unwrap())
}

/// The tensors of a reference file inside this repository (`Reference` reads ../shared/fixtures).
struct LocalReference(std::collections::BTreeMap<String, RawTensor>);

impl LocalReference {
    fn get(&self, name: &str) -> retina::Tensor<f64> {
        self.0.get(name).unwrap_or_else(|| panic!("reference tensor {name} missing")).to_float(name).unwrap()
    }
    fn get32(&self, name: &str) -> retina::Tensor<f32> {
        self.0.get(name).unwrap_or_else(|| panic!("reference tensor {name} missing")).to_float(name).unwrap()
    }
    fn names(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }
}

#[test]
fn sampled_gaussian_readout_matches_openretina() {
    let (reference, manifest, raw) = sampled_gaussian_fixture();
    let model: Model<f32> = Model::from_raw(&raw).unwrap();
    let input = reference.get32("forward.input");
    for (session, readout) in &model.readouts {
        let out = model.forward(&input, session).unwrap();
        let d = rel_max_diff(&to_f64(&out.responses.data), &reference.get(&format!("forward.{session}.f64")).data);
        assert!(d <= FORWARD_TOL, "{session}: responses differ by {d:e} (relative)");
        // openretina's figure density is float32 through a float32 pseudo-inverse of the covariance
        // C = S S^T + 1e-6 I, whose error grows with C's condition number: measured with torch, its own
        // float32-vs-float64 difference is 5.7e-5 at condition 5108 and 2.3e-7 at 1.8. Ours is float64,
        // so the bar per neuron is max(1e-6, 2 x float32 epsilon x condition).
        let sigma = raw.tensors[&format!("readout.{session}.sigma")].to_float::<f64>("sigma").unwrap().data;
        let expected = reference.get(&format!("readout.{session}.sampling_density")).data;
        let hw = expected.len() / readout.neurons();
        for n in 0..readout.neurons() {
            let [a, b, c, d] = [sigma[4 * n], sigma[4 * n + 1], sigma[4 * n + 2], sigma[4 * n + 3]];
            let (c00, c01, c11) = (a * a + b * b + 1e-6, a * c + b * d, c * c + d * d + 1e-6);
            let (mean, root) = ((c00 + c11) / 2.0, (((c00 - c11) / 2.0).powi(2) + c01 * c01).sqrt());
            let condition = (mean + root) / (mean - root);
            let bar = (2.0 * f32::EPSILON as f64 * condition).max(1e-6);
            let density = to_f64(&readout.neuron_weights(n).spatial.data);
            let diff = rel_max_diff(&density, &expected[n * hw..(n + 1) * hw]);
            assert!(diff <= bar, "{session} neuron {n}: sampling density differs by {diff:e} > {bar:e} (condition {condition:.0})");
        }
        // The dot marks the clamped position mu in pixels.
        let mu = reference.get(&format!("readout.{session}.mu")).data;
        let [_, _, h, w] = model.core_output_shape(50).unwrap();
        for n in 0..readout.neurons() {
            let [px, py] = readout.neuron_weights(n).figure.position.unwrap();
            assert!((px as f64 - (mu[2 * n] + 1.0) * (w as f64 - 1.0) / 2.0).abs() < 1e-4, "{session} neuron {n}: x");
            assert!((py as f64 - (mu[2 * n + 1] + 1.0) * (h as f64 - 1.0) / 2.0).abs() < 1e-4, "{session} neuron {n}: y");
        }
    }
    let settings = MeiSettings::openretina(model.config.input_channels);
    for id in reference.names().filter_map(|n| n.strip_prefix("mei.output.").and_then(|n| n.strip_suffix(".init"))).map(String::from).collect::<Vec<_>>() {
        let (session, neuron) = id.rsplit_once('.').unwrap();
        let target = MeiTarget::OutputNeuron { session: session.into(), neuron: neuron.parse().unwrap() };
        let own = manifest["relative_max_diff_f32_vs_f64"][format!("mei.output.{id}")].as_f64().unwrap();
        let tol = (3.0 * own).max(2e-4);
        let result = mei::optimize(&model, &target, reference.get32(&format!("mei.output.{id}.init")), &settings).unwrap();
        let d = rel_max_diff(&to_f64(&result.stimulus.data), &reference.get(&format!("mei.output.{id}.f64")).data);
        assert!(d <= tol, "output.{id}: MEI differs by {d:e} > {tol:e}");
        let dl = rel_max_diff(&result.losses, &reference.get(&format!("mei.output.{id}.loss32")).data);
        assert!(dl <= tol, "output.{id}: losses differ by {dl:e} > {tol:e}");
    }
}
