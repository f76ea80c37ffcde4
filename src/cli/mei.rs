//! `retina mei` and `retina mds`: one optimised stimulus each.

use super::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  retina mei --model-path demo --session session_1_ventral1_20200226 --neuron 5 --output mei.safetensors
  retina mei --model-path demo --layer core_features_layer1 --channel 3 --output mei.safetensors
  retina mei --model-path demo --session session_1_ventral1_20200226 --neuron 5 --objective decrease --optimizer adam --iterations 100 --early-stop 3,0.003 --temporal-smoothing 0.5,5 --output mdi.safetensors")]
pub struct MeiArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Session of the output neuron.
    #[arg(long, value_name = "KEY", requires = "neuron", conflicts_with_all = ["layer", "channel"])]
    pub session: Option<String>,
    /// Output neuron index within the session.
    #[arg(long, value_name = "N", requires = "session")]
    pub neuron: Option<usize>,
    /// Inner layer, as `core_features_layer<i>` or `<i>`.
    #[arg(long, value_name = "NAME", requires = "channel")]
    pub layer: Option<String>,
    /// Channel of the inner layer (its centre unit is optimised).
    #[arg(long, value_name = "C", requires = "layer")]
    pub channel: Option<usize>,
    /// Start from the tensor `stimulus` of this safetensors file, as is, instead of seeded noise.
    #[arg(long, value_name = "IN.safetensors")]
    pub init: Option<PathBuf>,
    /// Maximise the response (most exciting input) or minimise it (most depressing input).
    #[arg(long, value_enum, default_value = "increase")]
    pub objective: ObjectiveArg,
    /// For an ensemble folder: optimise the mean response of all its members, each with its readouts
    /// centred as openretina centres member MEIs (Hoefling et al. 2024's ensemble MEIs).
    #[arg(long)]
    pub ensemble_mean: bool,
    #[command(flatten)]
    pub optimization: OptimizationArgs,
    /// Where to write `mei` (1, channels, time, height, width), `loss` (one value per step taken) and
    /// `response` (the objective's time series for the MEI).
    #[arg(long, value_name = "OUT.safetensors")]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  retina mds --model-path demo --session session_1_ventral1_20200226 --neurons 0 --against 4 --output mds.safetensors --figure mds.png
  retina mds --model-path demo --session session_1_ventral1_20200226 --neurons 1,2,3 --against rest --temperature 1.6 --optimizer adam --iterations 100 --early-stop 3,0.003 --output mds.safetensors

Defaults follow openretina's most_discriminative_stimulus notebook: SGD at lr 100 for 10 steps,
temperature 1.6, norm 30 with ranges -0.6,6.2 (green) and -0.9,6.2 (UV), temporal smoothing 0.5,5,
no range penalty.")]
pub struct MdsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The session whose neurons are compared.
    #[arg(long, value_name = "KEY")]
    pub session: String,
    /// The neurons the stimulus should drive, comma-separated (e.g. `1,9,10`).
    #[arg(long, value_delimiter = ',', value_name = "A,B,C", required = true)]
    pub neurons: Vec<usize>,
    /// The neurons it should drive less, comma-separated, or `rest` (every other neuron of the session).
    #[arg(long, value_name = "D,E|rest")]
    pub against: String,
    /// For an ensemble folder: the mean responses of all its members, each with centred readouts.
    #[arg(long)]
    pub ensemble_mean: bool,
    /// Temperature of the contrastive objective (openretina's default 1.6).
    #[arg(long, default_value_t = crate::mei::DEFAULT_TEMPERATURE, value_name = "T", value_parser = positive_number)]
    pub temperature: f64,
    /// Start from the tensor `stimulus` of this safetensors file, as is, instead of seeded noise.
    #[arg(long, value_name = "IN.safetensors")]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub optimization: OptimizationArgs,
    /// Where to write `mds` (1, channels, time, height, width), `loss` (one value per step taken),
    /// `response.neurons` and `response.against` (each group's mean response over time).
    #[arg(long, value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// Also draw the MEI figure of the stimulus, both groups' responses in its fourth panel
    /// (format from the extension: jpg, png or svg).
    #[arg(long, value_name = "FIGURE")]
    pub figure: Option<PathBuf>,
    /// Figure resolution in dots per inch.
    #[arg(long, default_value_t = 150, value_name = "DPI", value_parser = dpi())]
    pub dpi: u32,
}

/// The starting stimulus: the `--init` file's `stimulus` as is, or seeded noise post-processed.
fn initial_stimulus(init: Option<&std::path::Path>, model: &Model<f32>, target: &MeiTarget, settings: &MeiSettings) -> Result<Tensor<f32>> {
    // Before the initial stimulus is made: refuses too few frames and work beyond the memory budget.
    let expected = model.config.stimulus_shape(settings.time_steps, 1);
    model.check_stimulus(&expected)?;
    crate::mei::check_memory(model, 1, settings)?;
    match init {
        Some(path) => {
            let init = read_stimulus(path)?;
            if init.shape != expected {
                return Err(Error::file(path, format!("`stimulus` has shape {:?}; this stimulus needs {expected:?}", init.shape)));
            }
            Ok(init)
        }
        None => Ok(crate::mei::initial_stimulus(model, target, settings)),
    }
}

pub(super) fn mei_command(args: &MeiArgs) -> Result<()> {
    let model = args.model.load()?;
    let mut settings = args.optimization.settings(model.config.input_channels)?;
    settings.direction = args.objective.direction();
    let target = match (&args.session, args.neuron, &args.layer, args.channel) {
        (Some(session), Some(neuron), None, None) => MeiTarget::OutputNeuron { session: session.clone(), neuron },
        (None, None, Some(layer), Some(channel)) => MeiTarget::InnerChannel { layer: model.layer_index(layer)?, channel },
        _ => bail!("say which MEI: --session KEY --neuron N, or --layer NAME --channel C"),
    };
    let init = initial_stimulus(args.init.as_deref(), &model, &target, &settings)?;
    let result = if args.ensemble_mean {
        if matches!(target, MeiTarget::InnerChannel { .. }) {
            bail!("--ensemble-mean averages output neurons; the members' inner channels are different features (drop --ensemble-mean for --layer/--channel)");
        }
        crate::mei::optimize_mean(&ensemble_members(&args.model.model_path, &args.model.source)?, &target, init, &settings)?
    } else {
        crate::mei::optimize(&model, &target, init, &settings)?
    };
    let mut tensors = BTreeMap::new();
    tensors.insert("mei".to_string(), RawTensor::f32(result.stimulus.shape.clone(), result.stimulus.data.clone()));
    tensors.insert("loss".to_string(), RawTensor { shape: vec![result.losses.len()], data: formats::TensorData::F64(result.losses.clone()) });
    tensors.insert("response".to_string(), RawTensor::f32(vec![result.response.len()], result.response.clone()));
    write_atomic(&args.output, &formats::safetensors::serialize(&tensors, None)?)?;
    println!(
        "{}: objective {:.6} after {} steps (loss {:.6} -> {:.6}); wrote {}",
        target.id(),
        result.objective,
        result.losses.len(),
        result.losses.first().copied().unwrap_or(f64::NAN),
        result.losses.last().copied().unwrap_or(f64::NAN),
        args.output.display()
    );
    Ok(())
}

pub(super) fn mds_command(args: &MdsArgs) -> Result<()> {
    let style = match &args.figure {
        Some(path) => {
            let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let format = extension.parse().map_err(|e| Error::new(format!("--figure {}: {e}", path.display())))?;
            Some(crate::plot::FigureStyle { format, dpi: args.dpi })
        }
        None => None,
    };
    let model = args.model.load()?;
    let channels = model.config.input_channels;
    let mut settings = args.optimization.apply(MeiSettings::mds_notebook(channels), channels)?;
    settings.temperature = args.temperature;
    let neurons = model.readout(&args.session)?.neurons();
    let against: Vec<usize> = if args.against.trim() == "rest" {
        (0..neurons).filter(|n| !args.neurons.contains(n)).collect()
    } else {
        args.against
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::new(format!("--against must be neuron indices separated by commas, or `rest`; got `{}`", args.against)))?
    };
    let target = MeiTarget::Contrastive { session: args.session.clone(), on: args.neurons.clone(), off: vec![against.clone()] };
    let init = initial_stimulus(args.init.as_deref(), &model, &target, &settings)?;
    let members = if args.ensemble_mean { ensemble_members(&args.model.model_path, &args.model.source)? } else { vec![model] };
    let result = crate::mei::optimize_mean(&members, &target, init, &settings)?;
    let traces = crate::mei::mean_objective(&members, &target, &settings)?.group_traces(&result.stimulus.data);
    let mut tensors = BTreeMap::new();
    tensors.insert("mds".to_string(), RawTensor::f32(result.stimulus.shape.clone(), result.stimulus.data.clone()));
    tensors.insert("loss".to_string(), RawTensor { shape: vec![result.losses.len()], data: formats::TensorData::F64(result.losses.clone()) });
    for (name, trace) in ["response.neurons", "response.against"].iter().zip(&traces) {
        tensors.insert(name.to_string(), RawTensor::f32(vec![trace.len()], trace.clone()));
    }
    write_atomic(&args.output, &formats::safetensors::serialize(&tensors, None)?)?;
    if let (Some(path), Some(style)) = (&args.figure, style) {
        let [_, c, t, h, w] = <[usize; 5]>::try_from(result.stimulus.shape.as_slice()).map_err(|_| Error::new("unexpected stimulus shape"))?;
        let (first, last) = result.highlighted_frames;
        let input = crate::plot::MeiFigureInput {
            stimulus: Tensor::new(vec![c, t, h, w], result.stimulus.data.clone())?,
            response: None,
            window: (first, last + 1),
            frame_rate: 30.0,
        };
        let group = |g: &[usize]| {
            let list = g.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
            if g.len() == 1 { format!("neuron {list}") } else { format!("neurons {list}") }
        };
        let annotations = crate::plot::MeiAnnotations {
            traces: vec![
                (group(&args.neurons), traces[0].clone()),
                (if args.against.trim() == "rest" { "all other neurons".into() } else { group(&against) }, traces[1].clone()),
            ],
            note: Some(if args.ensemble_mean {
                format!("MDS, temperature {}, mean of {} centred ensemble members", args.temperature, members.len())
            } else {
                format!("MDS, temperature {}", args.temperature)
            }),
        };
        let compositions = crate::plot::mei_composition(&input.stimulus, input.frame_rate)?;
        crate::plot::draw_mei_annotated(&input, &compositions, &annotations, &style, path)?;
    }
    println!(
        "{}: contrastive objective {:.6} after {} steps (loss {:.6} -> {:.6}); wrote {}{}",
        target.id(),
        result.objective,
        result.losses.len(),
        result.losses.first().copied().unwrap_or(f64::NAN),
        result.losses.last().copied().unwrap_or(f64::NAN),
        args.output.display(),
        args.figure.as_ref().map(|f| format!(" and {}", f.display())).unwrap_or_default()
    );
    Ok(())
}
