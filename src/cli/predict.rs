//! `retina predict`: responses to a stimulus.

use super::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  retina predict --model-path demo --output responses.safetensors\n  retina predict --model-path model.safetensors --input stimulus.safetensors --output responses.safetensors --session SESSION")]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A safetensors file with a tensor `stimulus` of shape (batch, channels, time, height, width).
    /// Without it, one uniform random stimulus in [0, 1) of `--time-steps` frames (seed 0).
    #[arg(long, value_name = "IN.safetensors")]
    pub input: Option<PathBuf>,
    /// Frames of the random stimulus used when no `--input` is given.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = frames())]
    pub time_steps: usize,
    /// Where to write `stimulus`, `responses.<session>` (batch, time, neurons) and
    /// `layer.core_features_layer<i>` (batch, channels, time, height, width).
    #[arg(long, value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// Only this session (default: every session). Layer outputs use its temporal log speed; without
    /// it, the first session's, as openretina's hooks do.
    #[arg(long, value_name = "KEY")]
    pub session: Option<String>,
}

pub(super) fn predict(args: &PredictArgs) -> Result<()> {
    let model = args.model.load()?;
    let stimulus = match &args.input {
        Some(path) => {
            let s = read_stimulus(path)?;
            model.check_stimulus(&s.shape).map_err(|e| Error::file(path, e))?;
            model.check_work(s.shape[2], s.shape[0], Work::Forward).map_err(|e| Error::file(path, e))?;
            s
        }
        None => {
            let shape = model.config.stimulus_shape(args.time_steps, 1);
            model.check_stimulus(&shape)?;
            model.check_work(args.time_steps, 1, Work::Forward)?;
            crate::bench::random_stimulus(shape, 0)
        }
    };
    let sessions: Vec<String> = match &args.session {
        Some(s) => {
            model.readout(s)?;
            vec![s.clone()]
        }
        None => model.sessions().map(String::from).collect(),
    };
    let mut tensors = BTreeMap::new();
    for (i, session) in sessions.iter().enumerate() {
        let out = model.forward(&stimulus, session)?;
        if i == 0 {
            for (name, layer) in model.layer_names().iter().zip(out.layers) {
                tensors.insert(format!("layer.{name}"), RawTensor::f32(layer.shape, layer.data));
            }
        }
        tensors.insert(format!("responses.{session}"), RawTensor::f32(out.responses.shape, out.responses.data));
    }
    tensors.insert("stimulus".into(), RawTensor::f32(stimulus.shape.clone(), stimulus.data.clone()));
    write_atomic(&args.output, &formats::safetensors::serialize(&tensors, None)?)?;
    let shapes: Vec<String> = sessions
        .iter()
        .map(|s| format!("responses.{s} {:?}", tensors[&format!("responses.{s}")].shape))
        .collect();
    println!("wrote {}: {}", args.output.display(), shapes.join(", "));
    Ok(())
}

/// Read the tensor `stimulus` from a safetensors file; NaN or infinite values are refused.
pub fn read_stimulus(path: &std::path::Path) -> Result<Tensor<f32>> {
    let bytes = formats::safetensors::read_file(path)?;
    let (tensors, _) = formats::safetensors::parse(&bytes, &path.display().to_string())?;
    let raw = tensors
        .get("stimulus")
        .ok_or_else(|| Error::file(path, "has no tensor named `stimulus`"))?;
    let stimulus: Tensor<f32> = raw.to_float("stimulus").map_err(|e| Error::file(path, e))?;
    if let Some(i) = stimulus.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::file(
            path,
            format!("`stimulus` holds a non-finite value ({} at flat index {i}); give finite values only", stimulus.data[i]),
        ));
    }
    Ok(stimulus)
}
