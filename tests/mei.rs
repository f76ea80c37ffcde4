//! MEIs against openretina 1.1.1: every MEI of every fixture, from its recorded initial stimulus.

mod common;

use common::*;
use retina::mei::{self, MeiSettings, MeiTarget};
use retina::model::Model;

/// openretina's own float32-vs-float64 difference for an MEI (from the manifest).
fn own_difference(manifest: &serde_json::Value, id: &str) -> f64 {
    manifest["relative_max_diff_f32_vs_f64"][format!("mei.{id}")]
        .as_f64()
        .unwrap_or_else(|| panic!("manifest lacks the difference for mei.{id}"))
}

/// MEIs whose optimisation is chaotic in openretina itself. When a stimulus is renormalised to norm 30
/// and nothing gets clipped, the norm penalty relu(|x| - 30) sits exactly at its kink: whether its
/// gradient is applied depends on the last bit of a rounded norm, and the branch moves the MEI by
/// ~1e-3. openretina's own float32 and float64 runs then take different branches (their difference
/// is 1e-5 … 4e-3 instead of the usual ~2e-6), and no float32 run can know which branches the float64
/// reference took. `float64_replay_reproduces_the_reference_exactly` shows that with the reference's
/// branches our arithmetic gives the float64 MEI to 1e-12.
const CHAOTIC: f64 = 1e-5;

/// The fixtures README's honest bar per MEI: relative max difference to openretina's float64 MEI at
/// most max(2e-4, 3 x openretina's own float32-vs-float64 difference). For chaotic MEIs a different
/// branch at the kink alone moves the result by up to ~1.3e-3 (measured with float64 replays of other
/// branch choices), so their bar is max(2e-3, 3 x own difference).
fn tolerance(own: f64) -> f64 {
    if own < CHAOTIC {
        (3.0 * own).max(2e-4)
    } else {
        (3.0 * own).max(2e-3)
    }
}

fn check_all_meis(fixture_name: &str, model_file: &str, center: bool) {
    let reference = Reference::load(fixture_name);
    let manifest = manifest(fixture_name);
    let mut model: Model<f32> = Model::from_raw(&raw_model(model_file)).unwrap();
    if center {
        model.center_readouts();
    }
    let settings = MeiSettings::openretina(model.config.input_channels);
    let ids: Vec<String> = reference
        .names()
        .filter_map(|n| n.strip_prefix("mei.").and_then(|n| n.strip_suffix(".init")).map(String::from))
        .collect();
    assert_eq!(ids.len() as u64, manifest["meis"].as_u64().unwrap(), "{fixture_name}: MEI count");
    let mut failures = Vec::new();
    let mut worst = 0.0f64;
    for id in &ids {
        let init = reference.get32(&format!("mei.{id}.init"));
        let result = mei::optimize(&model, &MeiTarget::from_id(id).unwrap(), init, &settings).unwrap();
        assert_eq!(result.target.id(), *id);
        let expected = reference.get(&format!("mei.{id}.f64"));
        let own = own_difference(&manifest, id);
        let tol = tolerance(own);
        let d = rel_max_diff(&to_f64(&result.stimulus.data), &expected.data);
        worst = worst.max(d / tol);
        if d > tol {
            failures.push(format!("{id}: MEI differs by {d:.3e} > {tol:.1e}"));
        }
        // Losses against openretina's float32 run. On chaotic MEIs its trajectory took its own branches
        // in between: only the first loss (the shared initial stimulus) and the last (both runs reach
        // the same optimum) are comparable there.
        let loss32 = reference.get(&format!("mei.{id}.loss32"));
        let dl = if own < CHAOTIC {
            rel_max_diff(&result.losses, &loss32.data)
        } else {
            let ends = |v: &[f64]| vec![v[0], v[v.len() - 1]];
            rel_max_diff(&ends(&result.losses), &ends(&loss32.data))
        };
        if dl > (3.0 * own).max(2e-4) {
            failures.push(format!("{id}: losses differ by {dl:.3e} > {tol:.1e} ({:?} vs {:?})", result.losses, loss32.data));
        }
    }
    eprintln!("{fixture_name}: {} MEIs, worst difference {worst:.3} of its tolerance", ids.len());
    assert!(failures.is_empty(), "{fixture_name}:\n{}", failures.join("\n"));
}

#[test]
fn example_low_res_meis() {
    check_all_meis("example_low_res", "example_low_res/model.safetensors", false);
}

#[test]
fn unified_low_res_meis() {
    check_all_meis("unified_low_res", "unified_low_res/model.safetensors", false);
}

#[test]
fn ensemble_replica_meis() {
    // The ensemble replica's MEIs were computed on member 0 with centred readouts.
    check_all_meis("ensemble_replica", "ensemble_replica/ensemble/member_00000.safetensors", true);
}

#[test]
fn float64_replay_reproduces_the_reference_exactly() {
    // unified_low_res output.session_3_ventral1_20201021.1 is chaotic (see CHAOTIC). A search over all
    // 2^10 branch patterns found that openretina's float64 run applied the norm penalty's gradient at
    // steps 3, 5, 6 and 7, where the norm sat on 30 up to rounding, and at no other step; with any
    // other pattern the result is >= 1e-4 away. Replaying that pattern in float64 must give the
    // reference MEI up to float64 rounding.
    let reference = Reference::load("unified_low_res");
    let model: Model<f64> = Model::from_raw(&raw_model("unified_low_res/model.safetensors")).unwrap();
    let id = "output.session_3_ventral1_20201021.1";
    let objective = mei::Objective::new(&model, MeiTarget::from_id(id).unwrap(), 50).unwrap();
    let constraints = mei::Constraints::openretina_default(2);
    let mut x = reference.get(&format!("mei.{id}.init")).data;
    let mut on_kink = Vec::new();
    for step in 0..10 {
        let (_, gradient) = objective.gradient(&x);
        let mut grad: Vec<f64> = gradient.into_iter().map(|g| -g).collect();
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        let kink = (norm - 30.0).abs() < 1e-9;
        if kink {
            on_kink.push(step);
        }
        let active = if kink { [3, 5, 6, 7].contains(&step) } else { norm > 30.0 };
        if active {
            grad.iter_mut().zip(&x).for_each(|(g, v)| *g += 0.1 * v / norm);
        }
        x.iter_mut().zip(&grad).for_each(|(v, g)| *v -= 100.0 * g);
        constraints.postprocess(&mut x);
    }
    assert!(on_kink.len() >= 4, "the stimulus should sit on the norm kink at several steps, got {on_kink:?}");
    let d = rel_max_diff(&x, &reference.get(&format!("mei.{id}.f64")).data);
    // Float64 rounding over 10 steps: the search found 3.2e-15.
    assert!(d <= 1e-12, "float64 replay differs by {d:e}");
}

/// Reference tensors and MEI folders are keyed by target ids: `from_id` inverts `id` and refuses others.
#[test]
fn target_ids_round_trip() {
    let targets = [
        MeiTarget::OutputNeuron { session: "mouse_1.ventral".into(), neuron: 3 },
        MeiTarget::InnerChannel { layer: 2, channel: 15 },
    ];
    for t in targets {
        assert_eq!(MeiTarget::from_id(&t.id()), Some(t));
    }
    for bad in ["output.s", "output.s.x", "core_features_layer.1", "core_features_layer1", "mds.s.1_vs_2", "layer0.1"] {
        assert_eq!(MeiTarget::from_id(bad), None, "{bad}");
    }
}
