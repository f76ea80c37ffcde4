//! Command-line parsing and dispatch. The work itself lives in the library modules; these files only
//! turn flags into calls and errors into one line on stderr with exit code 2.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::formats::download::DownloadOptions;
use crate::error::{Error, Result};
use crate::mei::{MeiSettings, MeiTarget};
use crate::formats::{self, RawTensor};
use crate::model::memory::Work;
use crate::model::Model;
use crate::output::write_atomic;
use crate::tensor::Tensor;
use crate::visualize::Shard;

mod bench_command;
mod info;
mod mei;
mod predict;
mod visualize;

pub use self::bench_command::BenchArgs;
pub use self::info::{describe, InfoArgs};
pub use self::mei::{MdsArgs, MeiArgs};
pub use self::predict::{read_stimulus, PredictArgs};
pub use self::visualize::VisualizeArgs;
use self::bench_command::bench_command;
use self::info::info;
use self::mei::{mds_command, mei_command};
use self::predict::predict;
use self::visualize::visualize_command;

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
            let mut file = formats::checkpoint::open_ensemble_member(folder, index as i64)?;
            let mut member = Model::from_file(&mut file).map_err(|e| Error::file(folder, format!("member {index}: {e}")))?;
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
    let mut file = formats::open_model(spec, one_member(source.model_id)?, &source.download_options(false))?;
    Model::from_file(&mut file).map_err(|e| Error::new(format!("{}: {e}", formats::describe_source(spec))))
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
    fn direction(self) -> crate::mei::Direction {
        match self {
            ObjectiveArg::Increase => crate::mei::Direction::Increase,
            ObjectiveArg::Decrease => crate::mei::Direction::Decrease,
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
            OptimizerArg::Sgd => crate::mei::OptimizerKind::Sgd,
            OptimizerArg::Adam => crate::mei::OptimizerKind::ADAM,
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

fn parse_early_stop(text: &str) -> Result<crate::mei::EarlyStop> {
    let parsed = text.split_once(',').and_then(|(a, b)| Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<f64>().ok()?)));
    match parsed {
        Some((patience, min_delta)) if patience >= 1 && min_delta.is_finite() && min_delta >= 0.0 => {
            Ok(crate::mei::EarlyStop { patience, min_delta })
        }
        _ => bail!("--early-stop must be PATIENCE,MIN_DELTA with PATIENCE >= 1 and MIN_DELTA >= 0 (e.g. 3,0.003); got `{text}`"),
    }
}

fn parse_smoothing(text: &str, time_steps: usize) -> Result<Option<crate::mei::TemporalLowPass>> {
    if text == "none" {
        return Ok(None);
    }
    let parsed = text.split_once(',').and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<usize>().ok()?)));
    match parsed {
        Some((sigma, kernel_size)) if sigma.is_finite() && sigma > 0.0 && (1..=time_steps.max(1)).contains(&kernel_size) => {
            Ok(Some(crate::mei::TemporalLowPass { sigma, kernel_size }))
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
            let mut file = formats::open_model(&args.input, one_member(args.source.model_id)?, &args.source.download_options(false))?;
            // Refuse to write what retina could not run (before reading tensors it would not take).
            Model::<f32>::from_file(&mut file).map_err(|e| Error::new(format!("{}: {e}", formats::describe_source(&args.input))))?;
            let raw = file.into_raw()?;
            write_atomic(&args.output, &formats::safetensors::serialize_model(&raw)?)?;
            println!("wrote {} ({}, {} tensors)", args.output.display(), raw.model_class, raw.tensors.len());
            Ok(())
        }
        Command::Bench(args) => bench_command(&args),
    }
}

