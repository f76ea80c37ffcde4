//! The first listing of the openretina paper in Rust: load a trained model, show it a random
//! stimulus and look at the responses.
//!
//! `cargo run --release --example load_and_forward [MODEL]` (MODEL: `demo`, the default, a model file,
//! a folder, a URL or a pretrained model name).

use retina::bench::random_stimulus;
use retina::formats::read_model;
use retina::model::Model;

fn main() -> retina::Result<()> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "demo".to_string());
    // The last member of an ensemble folder (-1), downloads allowed, as the CLI does by default.
    let model: Model<f32> = Model::from_raw(&read_model(&spec, -1, &Default::default())?)?;

    // openretina: torch.rand(model.stimulus_shape(time_steps=50)); uniform in [0, 1), seed 0.
    let stimulus = random_stimulus(model.config.stimulus_shape(50, 1), 0);
    println!("stimulus shape:  {:?} (batch, channels, time, height, width)", stimulus.shape);

    // Each recording session has its own readout; openretina's forward takes its data_key.
    let session = model.sessions().next().expect("a model has at least one session");
    let output = model.forward(&stimulus, session)?;
    println!("responses shape: {:?} (batch, time, neurons) for {session}", output.responses.shape);
    Ok(())
}
