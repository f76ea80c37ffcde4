//! The third listing of the openretina paper: plot the weights of a model.
//! The conv weight figure of layer 0, in channel 1, out channel 0, and the readout figure of neuron 5
//! of the first session, written as PNG files.
//!
//! `cargo run --release --example plot_weights [MODEL] [OUT_FOLDER]` (defaults: `demo`, a fresh
//! temporary folder, named on stdout)

use retina::plot::{self, FigureStyle, ImageFormat};
use retina::visualize::{conv_weights, layer_conv_limits, readout_neuron, session_readout_limits};

fn main() -> retina::Result<()> {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "demo".into());
    let folder = retina::output::output_folder(args.next().as_deref(), "plot-weights")?;
    let model: retina::model::Model<f32> =
        retina::model::Model::from_raw(&retina::formats::read_model(&spec, -1, &Default::default())?)?;
    let style = FigureStyle { format: ImageFormat::Png, dpi: 100 };

    // Shown as openretina shows it: sign flipped so that the spatial centre is positive.
    let weights = conv_weights(&model, 0, 1, 0).centre_positive()?;
    let path = folder.join("weights_layer0_in1_out0.png");
    plot::draw_conv_weights(&weights, &layer_conv_limits(&model, 0), &style, &path)?;
    println!("wrote {}", path.display());

    let session = model.sessions().next().expect("a model has sessions").to_string();
    let path = folder.join(format!("readout_{session}_neuron_5.png"));
    plot::draw_readout_neuron(&readout_neuron(&model, &session, 5), &session_readout_limits(&model, &session), &style, &path)?;
    println!("wrote {}", path.display());
    Ok(())
}
