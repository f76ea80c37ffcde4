//! Command-line parsing and dispatch. The work itself lives in the library modules; this file only
//! turns flags into calls and errors into one line on stderr with exit code 2.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench;
use crate::formats::download::DownloadOptions;
use crate::error::{Error, Result};
use crate::mei::{self, MeiSettings, MeiTarget};
use crate::formats::{self, RawTensor};
use crate::model::memory::Work;
use crate::model::Model;
use crate::output::write_atomic;
use crate::tensor::Tensor;
use crate::visualize::Shard;

// Ranges of the numeric flags, checked when the flags are parsed: nothing is loaded or created for a
// value outside them. Indices (`--neuron`, `--channel`, `--neurons`) depend on the model and are
// checked against it before anything is written; `--seed` takes any u64. How much memory a run may
// use is checked separately, against the memory budget (`model::memory`).

/// Frames of a stimulus: at least 1 (the model's kernels may need more), at most 1,000,000 (9 hours
/// at 30 Hz).
const MAX_FRAMES: u64 = 1_000_000;
/// SGD steps per MEI (openretina: 10).
const MAX_ITERATIONS: u64 = 1_000_000;
/// MEIs per chunk in `visualize`.
const MAX_BATCH: u64 = 1_000_000;
const MAX_THREADS: u64 = 1024;
/// Neurons of `bench --neurons`' tiled readouts.
const MAX_TILED_NEURONS: u64 = 100_000;
/// Ensemble members (the Hoefling 2024 ensemble has 10).
const MAX_MEMBERS: i64 = 1_000_000;

fn frames() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..=MAX_FRAMES)
}

/// Figure resolution (openretina draws at 300 dpi).
fn dpi() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(10..=1200)
}

/// A finite number above zero (`--lr`).
fn positive_number(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("must be a positive number, got `{text}`")),
    }
}

/// A finite number, zero or above (`--range-penalty`: 0 turns the penalty off).
fn non_negative_number(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("must be a number >= 0 (0 turns it off), got `{text}`")),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "retina",
    version,
    about = "Open trained openretina retina models and show what each of their neurons computes",
    after_help = "Start with:  retina info --model-path demo"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compute every MEI of a model and draw its figures, videos and weight figures (openretina's
    /// `visualize`, same folder layout).
    Visualize(VisualizeArgs),
    /// Print a model's architecture, stimulus shape, sessions and neuron counts.
    Info(InfoArgs),
    /// Run a model on stimuli and write the responses and every core layer's output.
    Predict(PredictArgs),
    /// Optimise one most exciting input (MEI) for an output neuron or an inner channel.
    Mei(MeiArgs),
    /// Optimise a most discriminative stimulus (MDS): what drives one group of a session's neurons
    /// more than another (openretina's contrastive objective).
    Mds(MdsArgs),
    /// Measure speed: forward/backward per stimulus and all MEIs of a model, against openretina.
    Bench(BenchArgs),
    /// Write a model (Lightning .ckpt, ensemble member, ...) as a native .safetensors file.
    Convert(ConvertArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  retina convert model.ckpt model.safetensors\n  retina convert ensemble_folder/ member0.safetensors --model-id 0")]
pub struct ConvertArgs {
    /// The model to convert (anything --model-path accepts).
    #[arg(value_name = "IN")]
    pub input: String,
    /// The safetensors file to write (state dict + `model_class` and `hyper_parameters` metadata).
    #[arg(value_name = "OUT.safetensors")]
    pub output: PathBuf,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Where models come from and where downloads go.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Folder for downloaded models (default: $OPENRETINA_CACHE_DIRECTORY, else the user cache folder).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Never download: use only files already in the cache.
    #[arg(long)]
    pub offline: bool,
    /// Download the model (given by URL or pretrained name) again over its cached copy, e.g. when
    /// retina reports the cached copy damaged.
    #[arg(long, conflicts_with = "offline")]
    pub refetch: bool,
    /// Member of an ensemble folder (negative counts from the end); `all` (visualize only): every member.
    #[arg(long, default_value = "-1", allow_negative_numbers = true, value_name = "ID", value_parser = parse_model_id)]
    pub model_id: i64,
}

/// `--model-id all`: every member of the ensemble (visualize only).
pub const ALL_MEMBERS: i64 = i64::MIN;

fn parse_model_id(text: &str) -> std::result::Result<i64, String> {
    if text == "all" {
        return Ok(ALL_MEMBERS);
    }
    match text.parse::<i64>() {
        Ok(id) if (-MAX_MEMBERS..=MAX_MEMBERS).contains(&id) => Ok(id),
        Ok(_) => Err(format!("{text} is not in -{MAX_MEMBERS}..={MAX_MEMBERS}")),
        Err(_) => Err(format!("`{text}` is not a member number (e.g. 0, -1) or `all`")),
    }
}

/// Refuses `--model-id all` where one model is read.
fn one_member(model_id: i64) -> Result<i64> {
    if model_id == ALL_MEMBERS {
        bail!("--model-id all works only with `retina visualize`; pick one member here (e.g. --model-id 0)");
    }
    Ok(model_id)
}

impl SourceArgs {
    pub fn download_options(&self, quiet: bool) -> DownloadOptions {
        DownloadOptions { cache_dir: self.cache_dir.clone(), offline: self.offline, quiet, refetch: self.refetch, ..Default::default() }
    }
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// The model: `demo` (built in), a .safetensors / Lightning .ckpt file, a Hoefling ensemble folder,
    /// an http(s) URL or a pretrained model name (e.g. hoefling_2024_base_low_res).
    #[arg(long, value_name = "NAME_OR_PATH")]
    pub model_path: String,
    /// Move every readout's Gaussian mean to (0, 0), as openretina does for ensemble output MEIs.
    #[arg(long)]
    pub center_readouts: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

impl ModelArgs {
    fn load(&self) -> Result<Model<f32>> {
        let mut model = load_model(&self.model_path, &self.source)?;
        if self.center_readouts {
            model.center_readouts();
        }
        Ok(model)
    }
}

/// Every member of an ensemble folder, each with its readouts centred at (0, 0) as openretina
/// centres ensemble members for output-neuron MEIs: what `--ensemble-mean` averages over.
fn load_centred_members(folder: &std::path::Path) -> Result<Vec<Model<f32>>> {
    formats::checkpoint::ensemble_member_ids(folder)?
        .iter()
        .enumerate()
        .map(|(index, _)| {
            let raw = formats::checkpoint::read_ensemble_member(folder, index as i64)?;
            let mut member = Model::from_raw(&raw).map_err(|e| Error::file(folder, format!("member {index}: {e}")))?;
            member.center_readouts();
            Ok(member)
        })
        .collect()
}

/// `--ensemble-mean`: the centred members of the ensemble folder `spec` names.
fn ensemble_members(spec: &str, source: &SourceArgs) -> Result<Vec<Model<f32>>> {
    match formats::download::resolve_model(spec, &source.download_options(false))? {
        formats::download::ModelLocation::Local { path, .. } if path.is_dir() => load_centred_members(&path),
        _ => bail!("--ensemble-mean needs an ensemble folder (config_XXXXX.yaml / state_dict_XXXXX files); {} is a single model", formats::describe_source(spec)),
    }
}

/// Read and build a model, naming its source in any error.
fn load_model(spec: &str, source: &SourceArgs) -> Result<Model<f32>> {
    let raw = formats::read_model(spec, one_member(source.model_id)?, &source.download_options(false))?;
    Model::from_raw(&raw).map_err(|e| Error::new(format!("{}: {e}", formats::describe_source(spec))))
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

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

/// How MEIs are optimised: openretina's procedure by default.
#[derive(Args, Debug, Clone)]
pub struct OptimizationArgs {
    /// Seed of the initial noise; each MEI's own seed derives from it and the MEI's name.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimiser steps per MEI; with --early-stop, the most steps.
    #[arg(long, default_value_t = 10, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_ITERATIONS))]
    pub iterations: usize,
    /// Learning rate. Default: 100 for SGD (openretina visualize), 0.1 for Adam.
    #[arg(long, allow_negative_numbers = true, value_parser = positive_number)]
    pub lr: Option<f64>,
    /// The optimiser: plain SGD (openretina visualize) or Adam (PyTorch's, betas 0.9/0.999, eps 1e-8).
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimizerArg,
    /// Stop when the loss has been more than MIN_DELTA above its best value PATIENCE times since it
    /// last improved (openretina's EarlyStopper), e.g. `3,0.003`; at most --iterations steps.
    #[arg(long, value_name = "PATIENCE,MIN_DELTA", allow_hyphen_values = true)]
    pub early_stop: Option<String>,
    /// Low-pass each pixel over time with a Gaussian after every step (openretina's
    /// TemporalGaussianLowPassFilterProcessor), e.g. `0.5,5`, or `none`.
    #[arg(long, value_name = "SIGMA,KERNEL_SIZE|none", allow_hyphen_values = true)]
    pub temporal_smoothing: Option<String>,
    /// Weight of the range/norm penalty in the loss; 0 turns it off. Default: 0.1 (openretina
    /// visualize); `retina mds`: 0 (the MDS notebook).
    #[arg(long, value_name = "FACTOR", allow_negative_numbers = true, value_parser = non_negative_number)]
    pub range_penalty: Option<f64>,
    /// Frames of the stimulus to optimise.
    #[arg(long = "time-steps-stimulus", default_value_t = 50, value_name = "N", value_parser = frames())]
    pub time_steps: usize,
    /// L2 norm the stimulus is held at, or `none`. Default: 30 for 2-channel models (openretina's
    /// Hoefling 2024 constraint), none otherwise.
    #[arg(long, value_name = "X|none", allow_negative_numbers = true)]
    pub norm: Option<String>,
    /// Value range of one colour channel as MIN,MAX (or `none`), once per channel in order. Default:
    /// -0.654,6.269 and -0.913,6.269 for 2-channel models (green, UV), none otherwise.
    // Ranges start below zero (-0.654,6.269), which clap would otherwise take for a flag.
    #[arg(long = "channel-range", value_name = "MIN,MAX|none", allow_hyphen_values = true)]
    pub channel_ranges: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerArg {
    Sgd,
    Adam,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectiveArg {
    /// The most exciting input: maximise the response.
    Increase,
    /// The most depressing input: minimise the response.
    Decrease,
}

impl ObjectiveArg {
    fn direction(self) -> mei::Direction {
        match self {
            ObjectiveArg::Increase => mei::Direction::Increase,
            ObjectiveArg::Decrease => mei::Direction::Decrease,
        }
    }
}

impl OptimizationArgs {
    /// openretina visualize's procedure changed by these flags.
    pub fn settings(&self, channels: usize) -> Result<MeiSettings> {
        self.apply(MeiSettings::openretina(channels), channels)
    }

    /// `defaults` changed by these flags.
    pub fn apply(&self, defaults: MeiSettings, channels: usize) -> Result<MeiSettings> {
        let mut settings = defaults;
        settings.seed = self.seed;
        settings.iterations = self.iterations;
        settings.time_steps = self.time_steps;
        settings.optimizer = match self.optimizer {
            OptimizerArg::Sgd => mei::OptimizerKind::Sgd,
            OptimizerArg::Adam => mei::OptimizerKind::ADAM,
        };
        settings.learning_rate = self.lr.unwrap_or(if self.optimizer == OptimizerArg::Adam { 0.1 } else { settings.learning_rate });
        if let Some(text) = &self.early_stop {
            settings.early_stop = Some(parse_early_stop(text)?);
        }
        if let Some(text) = &self.temporal_smoothing {
            settings.lowpass = parse_smoothing(text, settings.time_steps)?;
        }
        if let Some(factor) = self.range_penalty {
            settings.constraints.penalty_factor = factor;
        }
        if let Some(norm) = &self.norm {
            settings.constraints.norm = match norm.as_str() {
                "none" => None,
                v => Some(v.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0).ok_or_else(|| {
                    Error::new(format!("--norm must be a positive number or `none`, got `{v}`"))
                })?),
            };
        }
        if !self.channel_ranges.is_empty() {
            if self.channel_ranges.len() != channels {
                bail!("--channel-range given {} times; this model has {channels} colour channels", self.channel_ranges.len());
            }
            settings.constraints.ranges = self.channel_ranges.iter().map(|r| parse_range(r)).collect::<Result<_>>()?;
        }
        Ok(settings)
    }
}

fn parse_early_stop(text: &str) -> Result<mei::EarlyStop> {
    let parsed = text.split_once(',').and_then(|(a, b)| Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<f64>().ok()?)));
    match parsed {
        Some((patience, min_delta)) if patience >= 1 && min_delta.is_finite() && min_delta >= 0.0 => {
            Ok(mei::EarlyStop { patience, min_delta })
        }
        _ => bail!("--early-stop must be PATIENCE,MIN_DELTA with PATIENCE >= 1 and MIN_DELTA >= 0 (e.g. 3,0.003); got `{text}`"),
    }
}

fn parse_smoothing(text: &str, time_steps: usize) -> Result<Option<mei::TemporalLowPass>> {
    if text == "none" {
        return Ok(None);
    }
    let parsed = text.split_once(',').and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<usize>().ok()?)));
    match parsed {
        Some((sigma, kernel_size)) if sigma.is_finite() && sigma > 0.0 && (1..=time_steps.max(1)).contains(&kernel_size) => {
            Ok(Some(mei::TemporalLowPass { sigma, kernel_size }))
        }
        _ => bail!(
            "--temporal-smoothing must be SIGMA,KERNEL_SIZE with SIGMA > 0 and KERNEL_SIZE 1 … {time_steps} frames (e.g. 0.5,5), or `none`; got `{text}`"
        ),
    }
}

fn parse_range(text: &str) -> Result<Option<(f64, f64)>> {
    if text == "none" {
        return Ok(None);
    }
    let parsed = text.split_once(',').and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)));
    match parsed {
        Some((lo, hi)) if lo.is_finite() && hi.is_finite() && lo < hi => Ok(Some((lo, hi))),
        _ => bail!("--channel-range must be MIN,MAX with MIN < MAX, or `none`; got `{text}`"),
    }
}

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
    #[arg(long, default_value_t = mei::DEFAULT_TEMPERATURE, value_name = "T", value_parser = positive_number)]
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

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The model to measure.
    #[arg(long, value_name = "NAME_OR_PATH", default_value = "demo")]
    pub model_path: String,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Frames per stimulus.
    #[arg(long = "time-steps-stimulus", default_value_t = 50, value_name = "N", value_parser = frames())]
    pub time_steps: usize,
    /// Instead: time per output-neuron MEI on the model's core with its first session's readout tiled
    /// to each of these neuron counts (e.g. `28,1000,3000`).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_TILED_NEURONS))]
    pub neurons: Option<Vec<usize>>,
    /// With --neurons: also run `retina visualize --no-video --dpi 30` of the largest tiled model into
    /// DIR and print its report line (wall time and peak memory).
    #[arg(long, value_name = "DIR", requires = "neurons")]
    pub visualize: Option<PathBuf>,
    /// openretina's seconds for one MEI of this model on this machine, to print ratios against
    /// (default: the `timing` of a fixture's manifest.json next to the model file, or openretina's
    /// measured numbers for `demo`; otherwise no ratios are printed).
    #[arg(long, value_name = "SECONDS", value_parser = positive_number)]
    pub openretina_mei_seconds: Option<f64>,
    /// For large models: time batch 1 only and, instead of all MEIs, output neuron 0's MEI of the first
    /// session (the one openretina's fixture timings use), one copy per thread, median of 3.
    #[arg(long, conflicts_with = "neurons")]
    pub one_mei: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  retina visualize --model-path demo --save-folder visualizations
  retina visualize --model-path hoefling_2024_base_low_res --save-folder visualizations
  retina visualize --is-hoefling-ensemble-model --model-id 0 --save-folder vis_ensemble_0
  retina visualize --model-path model.ckpt --save-folder out --layers 0 --no-video --image-file-format png
  retina visualize --model-path demo --save-folder mdis --objective decrease --optimizer adam --iterations 100 --early-stop 3,0.003")]
pub struct VisualizeArgs {
    /// The model: `demo` (built in), a .safetensors / Lightning .ckpt file, an ensemble folder, an
    /// http(s) URL or a pretrained model name (e.g. hoefling_2024_base_low_res).
    #[arg(long, value_name = "NAME_OR_PATH", required_unless_present_any = ["is_hoefling_ensemble_model", "merge"], conflicts_with = "is_hoefling_ensemble_model")]
    pub model_path: Option<String>,
    /// Use a member (`--model-id`) of the Hoefling 2024 ensemble, downloaded into the cache.
    #[arg(long)]
    pub is_hoefling_ensemble_model: bool,
    /// Folder for the outputs (created if missing), e.g. `visualizations`.
    #[arg(long, value_name = "DIR")]
    pub save_folder: PathBuf,
    /// Compute device. Only `cpu` exists in this build.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda")]
    pub device: String,
    /// Figure file format: jpg (openretina's default), png or svg.
    #[arg(long, default_value = "jpg", value_name = "jpg|png|svg")]
    pub image_file_format: String,
    /// Figure resolution in dots per inch (openretina draws at 300: a 6300 x 3600 MEI figure).
    #[arg(long, default_value_t = 150, value_name = "DPI", value_parser = dpi())]
    pub dpi: u32,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Maximise the responses (most exciting inputs) or minimise them (most depressing inputs).
    #[arg(long, value_enum, default_value = "increase")]
    pub objective: ObjectiveArg,
    /// For an ensemble folder or --is-hoefling-ensemble-model: output-neuron MEIs of the mean response
    /// of all members, each with centred readouts (Hoefling et al. 2024); inner channels and weights
    /// stay those of --model-id.
    #[arg(long)]
    pub ensemble_mean: bool,
    #[command(flatten)]
    pub optimization: OptimizationArgs,
    /// Only these core layers' channel MEIs, as indices or names, comma-separated (e.g. `0,1`).
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    pub layers: Option<Vec<String>>,
    /// Only these sessions' neuron MEIs, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "SESSIONS")]
    pub sessions: Option<Vec<String>>,
    /// Only these neuron indices in each session, comma-separated (e.g. `0,5,10`).
    #[arg(long, value_delimiter = ',', value_name = "NEURONS")]
    pub neurons: Option<Vec<usize>>,
    /// Do not write MEI videos.
    #[arg(long)]
    pub no_video: bool,
    /// Do not draw the conv and readout weight figures.
    #[arg(long)]
    pub no_weights: bool,
    /// Do not compute MEIs (weight figures only).
    #[arg(long)]
    pub no_meis: bool,
    /// MEIs optimised together per chunk (all cores work on a chunk); bounds memory.
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BATCH))]
    pub batch_size: usize,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_THREADS))]
    pub threads: Option<usize>,
    /// Redo every output, even those a previous identical run finished.
    #[arg(long, conflicts_with = "shard")]
    pub overwrite: bool,
    /// Do only shard K of N (0 <= K < N) of the work; N processes (e.g. a SLURM job array:
    /// `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`) share one save folder, and the last to
    /// finish writes meis.safetensors, summary.csv and index.html.
    #[arg(long, value_name = "K/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Only write meis.safetensors, summary.csv and index.html of a folder whose shards are all done.
    #[arg(long, conflicts_with_all = ["model_path", "is_hoefling_ensemble_model", "shard"])]
    pub merge: bool,
    /// Print only errors.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Run the command line; returns the process exit code (0 ok, 2 for any user-facing error).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
        Err(e) => {
            eprintln!("{}", one_line_usage_error(&e));
            return 2;
        }
    };
    match run(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// A usage error on one line, as every other error: clap's message and tips without the usage block,
/// e.g. `error: the argument '--a' cannot be used with '--b' (for more information, try '--help')`.
fn one_line_usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<String> = text
        .split("\n\n")
        .filter(|p| !p.starts_with("Usage:") && !p.starts_with("For more information"))
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect();
    format!("{} (for more information, try '--help')", parts.join("; "))
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Visualize(args) => visualize_command(&args),
        Command::Info(args) => info(&args),
        Command::Predict(args) => predict(&args),
        Command::Mei(args) => mei_command(&args),
        Command::Mds(args) => mds_command(&args),
        Command::Convert(args) => {
            let raw = formats::read_model(&args.input, one_member(args.source.model_id)?, &args.source.download_options(false))?;
            // Refuse to write what retina could not run.
            Model::<f32>::from_raw(&raw).map_err(|e| Error::new(format!("{}: {e}", formats::describe_source(&args.input))))?;
            write_atomic(&args.output, &formats::safetensors::serialize_model(&raw)?)?;
            println!("wrote {} ({}, {} tensors)", args.output.display(), raw.model_class, raw.tensors.len());
            Ok(())
        }
        Command::Bench(args) => bench_command(&args),
    }
}

fn bench_command(args: &BenchArgs) -> Result<()> {
    let Some(sizes) = &args.neurons else {
        let model = load_model(&args.model_path, &args.source)?;
        // Batches of 32 stimuli are timed (of 1 with --one-mei).
        model.check_work(args.time_steps, if args.one_mei { 1 } else { 32 }, Work::Forward)?;
        let openretina = bench::openretina_reference(&args.model_path, args.openretina_mei_seconds)?;
        for line in bench::run(&model, args.time_steps, openretina.as_ref(), args.one_mei)?.lines {
            println!("{line}");
        }
        return Ok(());
    };
    let raw = formats::read_model(&args.model_path, one_member(args.source.model_id)?, &args.source.download_options(false))?;
    for line in bench::per_mei_by_neurons(&raw, sizes, args.time_steps)?.lines {
        println!("{line}");
    }
    if let Some(folder) = &args.visualize {
        let n = sizes.iter().copied().max().unwrap_or(1);
        let model_file = std::env::temp_dir().join(format!("retina-bench-{}-{n}.safetensors", std::process::id()));
        write_atomic(&model_file, &formats::safetensors::serialize_model(&bench::tiled_model(&raw, n)?)?)?;
        let exe = std::env::current_exe().map_err(|e| Error::new(format!("cannot find the retina binary ({e})")))?;
        let out = std::process::Command::new(exe)
            .arg("visualize")
            .arg("--model-path")
            .arg(&model_file)
            .arg("--save-folder")
            .arg(folder)
            .args(["--no-video", "--dpi", "30"])
            .stderr(std::process::Stdio::inherit())
            .output();
        let _ = std::fs::remove_file(&model_file);
        let out = out.map_err(|e| Error::new(format!("cannot run retina visualize ({e})")))?;
        if !out.status.success() {
            bail!("retina visualize of the model tiled to {n} neurons failed");
        }
        let report = String::from_utf8_lossy(&out.stdout);
        println!("visualize, N = {n} (--no-video --dpi 30): {}", report.lines().last().unwrap_or("").trim());
    }
    Ok(())
}

fn info(args: &InfoArgs) -> Result<()> {
    let model = args.model.load()?;
    print!("{}", describe(&model));
    if let Some(line) = formats::download::digest_line(&args.model.model_path, &args.model.source.download_options(true))? {
        println!("{line}");
    }
    Ok(())
}

/// A human-readable summary of a model.
pub fn describe(model: &Model<f32>) -> String {
    let c = &model.config;
    let mut s = String::new();
    s += &format!("model class:    {}\n", c.model_class);
    s += &format!(
        "stimulus:       {} channel(s) x time x {} x {} (height x width); shape for 50 frames: {:?}\n",
        c.input_channels,
        c.height,
        c.width,
        c.stimulus_shape(50, 1)
    );
    if let Some(t) = c.train_time_steps {
        s += &format!("trained on:     {t} frames\n");
    }
    s += &format!("core:           {}\n", c.core_class);
    s += &crate::model::describe_core(model);
    if c.cut_first_n_frames > 0 {
        s += &format!("  first {} output frames cut\n", c.cut_first_n_frames);
    }
    let total: usize = c.sessions.iter().map(|(_, n)| n).sum();
    s += &format!("readout:        {}\n", c.readout.class);
    s += &format!("sessions:       {} ({} neurons in all)\n", c.sessions.len(), total);
    for (name, n) in &c.sessions {
        s += &format!("  {name}: {n} neurons\n");
    }
    s
}

fn predict(args: &PredictArgs) -> Result<()> {
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
            bench::random_stimulus(shape, 0)
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

/// The starting stimulus: the `--init` file's `stimulus` as is, or seeded noise post-processed.
fn initial_stimulus(init: Option<&std::path::Path>, model: &Model<f32>, target: &MeiTarget, settings: &MeiSettings) -> Result<Tensor<f32>> {
    // Before the initial stimulus is made: refuses too few frames and work beyond the memory budget.
    let expected = model.config.stimulus_shape(settings.time_steps, 1);
    model.check_stimulus(&expected)?;
    mei::check_memory(model, 1, settings)?;
    match init {
        Some(path) => {
            let init = read_stimulus(path)?;
            if init.shape != expected {
                return Err(Error::file(path, format!("`stimulus` has shape {:?}; this stimulus needs {expected:?}", init.shape)));
            }
            Ok(init)
        }
        None => Ok(mei::initial_stimulus(model, target, settings)),
    }
}

fn mei_command(args: &MeiArgs) -> Result<()> {
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
        mei::optimize_mean(&ensemble_members(&args.model.model_path, &args.model.source)?, &target, init, &settings)?
    } else {
        mei::optimize(&model, &target, init, &settings)?
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

fn parse_shard(text: &str) -> std::result::Result<Shard, String> {
    Shard::parse(text).map_err(|e| e.to_string())
}

fn mds_command(args: &MdsArgs) -> Result<()> {
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
    let result = mei::optimize_mean(&members, &target, init, &settings)?;
    let traces = mei::mean_objective(&members, &target, &settings)?.group_traces(&result.stimulus.data);
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

fn visualize_command(args: &VisualizeArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let mut failures = FailedMeis::default();
    if args.merge {
        for merged in crate::visualize::merge_folders(&args.save_folder)? {
            if !args.quiet {
                println!("{}: merged {} MEIs into meis.safetensors, summary.csv and index.html", merged.folder.display(), merged.meis);
            }
            failures.add(&merged.folder, merged.meis, &merged.failed);
        }
        return failures.result();
    }
    if args.device != "cpu" {
        bail!("--device {}: not available in this build; retina runs on the CPU (use --device cpu)", args.device);
    }
    let style = crate::plot::FigureStyle { format: args.image_file_format.parse()?, dpi: args.dpi };
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::new(format!("--threads: cannot start the worker threads ({e})")))?;
    }
    let download = args.source.download_options(args.quiet);
    // The models: one, or a comma-separated list; each ensemble folder's members with --model-id all.
    let specs: Vec<Option<String>> = match &args.model_path {
        Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Some(s.to_string())).collect(),
        None => vec![None],
    };
    if specs.is_empty() {
        bail!("--model-path is empty; name a model, or several separated by commas");
    }
    let mut jobs: Vec<(Option<String>, i64, Option<i64>)> = Vec::new();
    for spec in specs {
        if args.source.model_id != ALL_MEMBERS {
            jobs.push((spec, args.source.model_id, None));
            continue;
        }
        let folder = match &spec {
            None => formats::download::fetch_hoefling_ensemble(&download)?,
            Some(s) => match formats::download::resolve_model(s, &download)? {
                formats::download::ModelLocation::Local { path, .. } if path.is_dir() => path,
                _ => bail!("--model-id all: {s} is not an ensemble folder; it holds one model, so leave --model-id out"),
            },
        };
        let members = formats::checkpoint::ensemble_member_ids(&folder)?.len() as i64;
        jobs.extend((0..members).map(|id| (spec.clone(), id, Some(id))));
    }
    if jobs.len() == 1 {
        let (spec, id, _) = &jobs[0];
        visualize_model(args, spec.as_deref(), *id, &args.save_folder, style, start, &mut failures)?;
        return failures.result();
    }
    let names = crate::visualize::models::folder_names(
        &jobs.iter().map(|(spec, _, member)| (spec.clone().unwrap_or_else(|| "hoefling_2024_ensemble".into()), *member)).collect::<Vec<_>>(),
    );
    crate::visualize::models::check_models_index(&args.save_folder, args.overwrite)?;
    let mut listed = Vec::new();
    for ((spec, id, _), name) in jobs.iter().zip(names) {
        let what = visualize_model(args, spec.as_deref(), *id, &args.save_folder.join(&name), style, start, &mut failures)?;
        listed.push((name, what));
    }
    crate::visualize::models::write_models_index(&args.save_folder, &listed)?;
    failures.result()
}

/// The MEIs that failed over a visualize command's folders. Every other output is written; the
/// command then ends with one line counting them, and exit code 2.
#[derive(Default)]
struct FailedMeis {
    failed: usize,
    meis: usize,
    first: Option<String>,
    folders: Vec<std::path::PathBuf>,
}

impl FailedMeis {
    fn add(&mut self, folder: &std::path::Path, meis: usize, failed: &std::collections::BTreeMap<usize, String>) {
        self.meis += meis;
        self.failed += failed.len();
        if let Some(error) = failed.values().next() {
            self.first.get_or_insert_with(|| error.clone());
            self.folders.push(folder.to_path_buf());
        }
    }

    fn result(self) -> Result<()> {
        let Some(first) = self.first else { return Ok(()) };
        let folders: Vec<String> = self.folders.iter().map(|f| f.display().to_string()).collect();
        Err(Error::new(format!(
            "{} of {} MEIs failed (the first: {first}); every other output is written, and summary.csv and index.html in {} mark the failed ones",
            self.failed,
            self.meis,
            folders.join(", ")
        )))
    }
}

/// Visualize one model into `save_folder`; returns a one-line description of it for the models page.
fn visualize_model(
    args: &VisualizeArgs,
    spec: Option<&str>,
    model_id: i64,
    save_folder: &std::path::Path,
    style: crate::plot::FigureStyle,
    start: std::time::Instant,
    failures: &mut FailedMeis,
) -> Result<String> {
    let download = args.source.download_options(args.quiet);
    let loading = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
    loading.set_message("loading the model");
    loading.enable_steady_tick(std::time::Duration::from_millis(120));
    let source = spec.map(formats::describe_source).unwrap_or_else(|| "Hoefling 2024 ensemble".into());
    let loaded = (|| -> Result<(Model<f32>, Vec<Model<f32>>)> {
        let (raw, folder) = match spec {
            Some(spec) => {
                let raw = formats::read_model(spec, model_id, &download)?;
                let folder = match args.ensemble_mean.then(|| formats::download::resolve_model(spec, &download)).transpose()? {
                    Some(formats::download::ModelLocation::Local { path, .. }) if path.is_dir() => Some(path),
                    _ => None,
                };
                (raw, folder)
            }
            None => {
                let folder = formats::download::fetch_hoefling_ensemble(&download)?;
                (formats::checkpoint::read_model(&folder, model_id)?, Some(folder))
            }
        };
        let model = Model::from_raw(&raw).map_err(|e| Error::new(format!("{source}: {e}")))?;
        let members = match (args.ensemble_mean, folder) {
            (false, _) => Vec::new(),
            (true, Some(folder)) => load_centred_members(&folder)?,
            (true, None) => bail!("--ensemble-mean needs an ensemble folder or --is-hoefling-ensemble-model; {source} is a single model"),
        };
        Ok((model, members))
    })();
    // Cleared before any error is printed, so the error stays one line.
    loading.finish_and_clear();
    let (model, members) = loaded?;
    // Hoefling ensemble members: output-neuron MEIs on readouts centred at (0, 0), everything else
    // on the member as stored, and openretina's ensemble folder layout.
    let ensemble = matches!(model.config.architecture, crate::model::config::Architecture::HoeflingEnsembleMember { .. });
    let centred = ensemble.then(|| {
        let mut m = model.clone();
        m.center_readouts();
        m
    });
    let layers = args
        .layers
        .as_ref()
        .map(|ls| ls.iter().map(|l| model.layer_index(l)).collect::<Result<Vec<_>>>())
        .transpose()?;
    // Before the save folder is made: refuses too few frames and MEIs beyond the memory budget.
    model.check_stimulus(&model.config.stimulus_shape(args.optimization.time_steps, 1))?;
    let options = crate::visualize::VisualizeOptions {
        save_folder: save_folder.to_path_buf(),
        style,
        mei: MeiSettings { direction: args.objective.direction(), ..args.optimization.settings(model.config.input_channels)? },
        layers,
        sessions: args.sessions.clone(),
        neurons: args.neurons.clone(),
        meis: !args.no_meis,
        videos: !args.no_video,
        weights: !args.no_weights,
        batch_size: args.batch_size,
        overwrite: args.overwrite,
        quiet: args.quiet,
        ensemble_layout: ensemble,
        output_note: (!members.is_empty()).then(|| format!("mean of {} centred ensemble members", members.len())),
        shard: args.shard.unwrap_or(Shard::ALL),
    };
    let output_models = match &centred {
        _ if !members.is_empty() => &members[..],
        Some(centred) => std::slice::from_ref(centred),
        None => std::slice::from_ref(&model),
    };
    let report = crate::visualize::visualize(&model, output_models, &options)?;
    if !args.quiet {
        if report.missing > 0 {
            println!(
                "{}: this shard is done; {} pieces of work of other shards are missing, and the last shard to finish (or `retina visualize --merge --save-folder {}`) writes meis.safetensors, summary.csv and index.html",
                save_folder.display(),
                report.missing,
                save_folder.display()
            );
        }
        println!(
            "{}: {} MEIs ({} optimised, {} from the previous run), {} files written, {} kept, in {:.1} s{}",
            save_folder.display(),
            report.meis_optimised + report.meis_reused,
            report.meis_optimised,
            report.meis_reused,
            report.files_written,
            report.files_kept,
            start.elapsed().as_secs_f64(),
            bench::peak_rss_bytes().map(|b| format!(", peak memory {} MB", b >> 20)).unwrap_or_default()
        );
    }
    failures.add(save_folder, report.meis, &report.failed);
    let neurons: usize = model.readouts.values().map(|r| r.neurons()).sum();
    let member = if ensemble { format!(" member {model_id}") } else { String::new() };
    let c = &model.config;
    Ok(format!("{source}{member}: {}, {} core layers, {} sessions, {neurons} neurons", c.model_class, model.core.n_layers(), model.readouts.len()))
}
