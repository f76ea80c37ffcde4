//! The second listing of the openretina paper in Rust: optimise the most exciting input (MEI) of one
//! output neuron and save it.
//!
//! `cargo run --release --example mei [OUT.safetensors]` (default: `mei.safetensors` in a fresh
//! temporary folder, named on stdout). The file holds
//! `mei` (1, channels, time, height, width) and `loss` (one value per SGD step), as `retina mei` writes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use retina::formats::safetensors::serialize;
use retina::formats::{read_model, RawTensor, TensorData};
use retina::mei::{self, MeiSettings, MeiTarget};
use retina::model::Model;
use retina::output::write_atomic;

/// A session of the demo model with 11 neurons, so that neuron 10 exists.
const SESSION: &str = "session_3_ventral1_20201021";
const NEURON: usize = 10;

fn main() -> retina::Result<()> {
    let output = match std::env::args().nth(1) {
        Some(path) => PathBuf::from(path),
        None => retina::output::output_folder(None, "mei-example")?.join("mei.safetensors"),
    };
    let model: Model<f32> = Model::from_raw(&read_model("demo", -1, &Default::default())?)?;

    // openretina's procedure (norm and per-colour range constraints of the Hoefling 2024 models),
    // with the listing's 40 frames, 10 SGD steps at learning rate 100.
    let settings = MeiSettings {
        time_steps: 40,
        iterations: 10,
        learning_rate: 100.0,
        ..MeiSettings::openretina(model.config.input_channels)
    };
    let target = MeiTarget::OutputNeuron { session: SESSION.to_string(), neuron: NEURON };
    // Seeded noise x 0.1, clipped and renormalised, as openretina starts.
    let init = mei::initial_stimulus(&model, &target, &settings);
    let result = mei::optimize(&model, &target, init, &settings)?;

    let tensors = BTreeMap::from([
        ("mei".to_string(), RawTensor::f32(result.stimulus.shape.clone(), result.stimulus.data)),
        ("loss".to_string(), RawTensor { shape: vec![result.losses.len()], data: TensorData::F64(result.losses) }),
    ]);
    write_atomic(&output, &serialize(&tensors, None)?)?;
    println!(
        "neuron {NEURON} of {SESSION}: objective {:.4} (mean response over frames {}..={}); wrote {}",
        result.objective,
        result.highlighted_frames.0,
        result.highlighted_frames.1,
        output.display()
    );
    Ok(())
}
