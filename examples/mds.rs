//! openretina's `most_discriminative_stimulus` notebook in Rust: the stimulus that drives one neuron
//! more than another (a contrastive objective at temperature 1.6), optimised as the notebook does it
//! (SGD at lr 100 for 10 steps, norm 30 with its clipper ranges, then a temporal Gaussian low-pass),
//! and its figure with both neurons' responses.
//!
//! `cargo run --release --example mds [FOLDER]` (default: a fresh temporary folder): writes `FOLDER/mds.safetensors`
//! (`mds`, `loss`, `response.neurons`, `response.against`, as `retina mds` writes) and `FOLDER/mds.png`.

use std::collections::BTreeMap;

use retina::formats::safetensors::serialize;
use retina::formats::{read_model, RawTensor, TensorData};
use retina::mei::{self, MeiSettings, MeiTarget};
use retina::model::Model;
use retina::output::write_atomic;
use retina::plot::{self, FigureStyle, ImageFormat, MeiAnnotations, MeiFigureInput};
use retina::Tensor;

const SESSION: &str = "session_1_ventral1_20200226";
/// The neuron the stimulus should drive, and the one it should drive less.
const NEURON: usize = 0;
const AGAINST: usize = 4;

fn main() -> retina::Result<()> {
    let folder = retina::output::output_folder(std::env::args().nth(1).as_deref(), "mds-example")?;
    let model: Model<f32> = Model::from_raw(&read_model("demo", -1, &Default::default())?)?;

    // The notebook's procedure: temperature 1.6, clipper then low-pass (sigma 0.5, 5 frames), no penalty.
    let settings = MeiSettings::mds_notebook(model.config.input_channels);
    let target = MeiTarget::Contrastive { session: SESSION.into(), on: vec![NEURON], off: vec![vec![AGAINST]] };
    let init = mei::initial_stimulus(&model, &target, &settings);
    let result = mei::optimize(&model, &target, init, &settings)?;
    // Each group's mean response over time (here: each neuron's response).
    let traces = mei::objective(&model, &target, &settings)?.group_traces(&result.stimulus.data);

    let mut tensors = BTreeMap::from([
        ("mds".to_string(), RawTensor::f32(result.stimulus.shape.clone(), result.stimulus.data.clone())),
        ("loss".to_string(), RawTensor { shape: vec![result.losses.len()], data: TensorData::F64(result.losses.clone()) }),
    ]);
    for (name, trace) in ["response.neurons", "response.against"].iter().zip(&traces) {
        tensors.insert(name.to_string(), RawTensor::f32(vec![trace.len()], trace.clone()));
    }
    let data_path = folder.join("mds.safetensors");
    write_atomic(&data_path, &serialize(&tensors, None)?)?;

    // The MEI figure of the stimulus, both neurons' responses in its fourth panel.
    let shape = result.stimulus.shape[1..].to_vec();
    let input = MeiFigureInput {
        stimulus: Tensor::new(shape, result.stimulus.data.clone())?,
        response: None,
        window: (result.highlighted_frames.0, result.highlighted_frames.1 + 1),
        frame_rate: 30.0,
    };
    let annotations = MeiAnnotations {
        traces: vec![(format!("neuron {NEURON}"), traces[0].clone()), (format!("neuron {AGAINST}"), traces[1].clone())],
        note: Some(format!("MDS, temperature {}", settings.temperature)),
    };
    let figure_path = folder.join("mds.png");
    let compositions = plot::mei_composition(&input.stimulus, input.frame_rate)?;
    plot::draw_mei_annotated(&input, &compositions, &annotations, &FigureStyle { format: ImageFormat::Png, dpi: 100 }, &figure_path)?;

    let window = |t: &[f32]| t[10..20].iter().sum::<f32>() / 10.0;
    println!(
        "neuron {NEURON} vs {AGAINST} of {SESSION}: mean responses {:.3} vs {:.3} over the window (loss {:.4} -> {:.4}); wrote {} and {}",
        window(&traces[0]),
        window(&traces[1]),
        result.losses[0],
        result.losses[result.losses.len() - 1],
        data_path.display(),
        figure_path.display()
    );
    Ok(())
}
