//! Draw one figure of each kind from a fixture folder (as openretina's `visualize` would):
//! `cargo run --release --example plot_fixtures -- FIXTURE_DIR OUT_DIR [FORMAT] [DPI]`, e.g.
//! `../shared/fixtures/example_low_res /tmp/plot-samples png 100`. Reads `model.safetensors` (weights)
//! and `reference.safetensors` (temporal kernels, readout masks, MEIs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use retina::formats::safetensors::{parse, read_file};
use retina::formats::RawTensor;
use retina::plot::bench::sample_mei_input;
use retina::plot::{
    draw_conv_weights, draw_mei, draw_readout_neuron, ConvWeightLimits, ConvWeights, FigureStyle, ImageFormat,
    MeiFigureInput, ReadoutLimits, ReadoutNeuron,
};
use retina::{Error, Result, Tensor};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

fn load(path: &Path) -> Result<BTreeMap<String, Tensor<f32>>> {
    let (raw, _) = parse(&read_file(path)?, &path.display().to_string())?;
    raw.iter()
        .filter(|(_, t): &(&String, &RawTensor)| t.numel() > 0)
        .filter_map(|(name, t)| t.to_float::<f32>(name).ok().map(|v| Ok((name.clone(), v))))
        .collect()
}

fn get<'a>(tensors: &'a BTreeMap<String, Tensor<f32>>, name: &str) -> Result<&'a Tensor<f32>> {
    tensors.get(name).ok_or_else(|| Error::new(format!("no tensor {name}")))
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(fixture), Some(out)) = (args.first(), args.get(1)) else {
        return Err(Error::new("usage: plot_fixtures FIXTURE_DIR OUT_DIR [FORMAT] [DPI]"));
    };
    let format: ImageFormat = args.get(2).map(|f| f.parse()).transpose()?.unwrap_or(ImageFormat::Png);
    let dpi = args.get(3).and_then(|d| d.parse().ok()).unwrap_or(100);
    let style = FigureStyle { format, dpi };
    let (fixture, out) = (PathBuf::from(fixture), PathBuf::from(out));
    std::fs::create_dir_all(&out).map_err(|e| Error::file(&out, e))?;
    let model = load(&fixture.join("model.safetensors"))?;
    let reference = load(&fixture.join("reference.safetensors"))?;
    let ext = format.extension();

    // Convolution weights of layer 0, every channel pair for the limits, (in 1, out 0) drawn.
    let spatial = get(&model, "core.features.layer0.conv.weight_spatial")?;
    let (sin, cos) =
        (get(&model, "core.features.layer0.conv.sin_weights")?, get(&model, "core.features.layer0.conv.cos_weights")?);
    let temporal = get(&reference, "weights.layer0.temporal")?;
    let (outs, ins, h, w) = (spatial.shape[0], spatial.shape[1], spatial.shape[3], spatial.shape[4]);
    let (t, n) = (temporal.shape[2], sin.shape[2]);
    let mut layer = Vec::new();
    for o in 0..outs {
        for i in 0..ins {
            let pair = o * ins + i;
            layer.push(ConvWeights {
                spatial: Tensor::new(vec![h, w], spatial.data[pair * h * w..(pair + 1) * h * w].to_vec())?,
                temporal: temporal.data[pair * t..(pair + 1) * t].to_vec(),
                sin: sin.data[pair * n..(pair + 1) * n].to_vec(),
                cos: cos.data[pair * n..(pair + 1) * n].to_vec(),
                in_channel: i,
                out_channel: o,
                spatial_note: None,
                temporal_note: None,
            });
        }
    }
    let limits = ConvWeightLimits::of_layer(&layer);
    draw_conv_weights(&layer[1], &limits, &style, &out.join(format!("weights_layer0_1_0.{ext}")))?;

    // Readout of the first session, neuron 0.
    let session = "session_1_ventral1_20200226";
    let masks = get(&reference, &format!("readout.{session}.mask"))?;
    let features = get(&model, &format!("readout.{session}.features"))?;
    let (neurons, mh, mw) = (masks.shape[0], masks.shape[1], masks.shape[2]);
    let channels = features.shape[1];
    let readout: Vec<ReadoutNeuron> = (0..neurons)
        .map(|k| ReadoutNeuron {
            mask: Tensor { shape: vec![mh, mw], data: masks.data[k * mh * mw..(k + 1) * mh * mw].to_vec() },
            feature_weights: (0..channels).map(|c| features.data[c * neurons + k]).collect(),
            neuron: k,
            figure: retina::model::readout::WeightFigure::mask(false),
        })
        .collect();
    let limits = ReadoutLimits::of_session(&readout);
    draw_readout_neuron(&readout[0], &limits, &style, &out.join(format!("readout_{session}_neuron_0.{ext}")))?;

    // MEIs openretina optimised (float32), objective window [40, 50) as `visualize` shades it.
    for name in ["core_features_layer0.0", &format!("output.{session}.0")] {
        let mei = get(&reference, &format!("mei.{name}.f32"))?;
        let input = MeiFigureInput {
            stimulus: Tensor::new(mei.shape[1..].to_vec(), mei.data.clone())?,
            response: None,
            window: (40, 50),
            frame_rate: 30.0,
        };
        draw_mei(&input, &style, &out.join(format!("mei_{}.{ext}", name.replace('.', "_"))))?;
    }
    // A synthetic MEI with a response trace in the fourth panel.
    draw_mei(&sample_mei_input(), &style, &out.join(format!("mei_sample_with_response.{ext}")))?;
    println!("figures in {}", out.display());
    Ok(())
}
