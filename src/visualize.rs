//! `retina visualize`: every MEI (inner channels and output neurons), its figure and video, and the
//! weight figures of the core and the readouts, in openretina's folder layout, plus `meis.safetensors`,
//! `summary.csv` and `index.html`.
//!
//! Outputs are written atomically. A state file records a fingerprint of the model and the settings:
//! running the same command again keeps finished files (and the MEIs) instead of redoing them, unless
//! anything changed or `overwrite` is set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::formats::{self, RawTensor, TensorData};
use crate::mei::{self, Mei, MeiSettings, MeiTarget, Objective};
use crate::model::{Float, Model};
use crate::output::write_atomic;
use crate::plot::video::{write_mei_video, VideoOptions};
use crate::plot::{self, ConvWeightLimits, ConvWeights, FigureStyle, MeiFigureInput, ReadoutLimits, ReadoutNeuron};
use crate::tensor::Tensor;

/// Frame rate of openretina's stimuli (for time axes and frequencies).
pub const FRAME_RATE: f64 = 30.0;
const STATE_FILE: &str = ".retina-visualize-state";

#[derive(Debug, Clone)]
pub struct VisualizeOptions {
    pub save_folder: PathBuf,
    pub style: FigureStyle,
    pub mei: MeiSettings,
    /// Only these core layers' channels (default: all).
    pub layers: Option<Vec<usize>>,
    /// Only these sessions' neurons (default: all).
    pub sessions: Option<Vec<String>>,
    /// Only these neuron indices in each session (default: all).
    pub neurons: Option<Vec<usize>>,
    pub meis: bool,
    pub videos: bool,
    pub weights: bool,
    /// MEIs optimised together (in parallel) per chunk; bounds memory.
    pub batch_size: usize,
    /// Redo every output even when a previous run with the same settings left it.
    pub overwrite: bool,
    pub quiet: bool,
    /// openretina's layout for the Hoefling ensemble (`weights_layer_<i>` at the top level).
    pub ensemble_layout: bool,
}

/// What a run did, for the command's last line.
#[derive(Debug, Default)]
pub struct Report {
    pub meis_optimised: usize,
    pub meis_reused: usize,
    pub files_written: usize,
    pub files_kept: usize,
}

/// Run the whole job. `output_model` is the model output-neuron MEIs are optimised on (the centred
/// ensemble member, or `model` itself); inner MEIs and weight figures use `model`.
pub fn visualize(model: &Model<f32>, output_model: &Model<f32>, opts: &VisualizeOptions) -> Result<Report> {
    let folder = &opts.save_folder;
    // Check the selection before touching the folder: a refused run leaves nothing behind.
    let targets = select_targets(model, opts)?;
    std::fs::create_dir_all(folder)
        .map_err(|e| Error::file(folder, format!("cannot create the save folder ({e}); choose a writable place")))?;
    let fingerprint = fingerprint(model, output_model, opts);
    let state_path = folder.join(STATE_FILE);
    let resume = !opts.overwrite && std::fs::read_to_string(&state_path).is_ok_and(|s| s.trim() == fingerprint);
    if !resume {
        // The state names these settings only once no output of other settings is left (below), so a
        // run killed before then is redone from scratch, never resumed from stale MEIs or figures.
        remove_if_present(&state_path)?;
    }
    let mut report = Report::default();

    // MEIs: reused from meis.safetensors when resuming, else optimised.
    let meis_path = folder.join("meis.safetensors");
    let meis: Vec<Mei> = if targets.is_empty() {
        Vec::new()
    } else if let Some(meis) = resume.then(|| read_meis(&meis_path, &targets, model, &opts.mei)).and_then(|r| r.ok()) {
        report.meis_reused = meis.len();
        meis
    } else {
        let meis = optimise(model, output_model, &targets, opts)?;
        write_atomic(&meis_path, &formats::safetensors::serialize(&meis_tensors(&meis), None)?)?;
        report.meis_optimised = meis.len();
        meis
    };

    // Figures and videos, in parallel; each job skips its file when resuming and it exists.
    let jobs = figure_jobs(model, &meis, opts);
    for dir in jobs.iter().filter_map(|j| j.path.parent()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create folder ({e})")))?;
    }
    remove_partial_files(folder, &jobs)?;
    if !resume {
        for job in &jobs {
            remove_if_present(&job.path)?;
        }
        write_atomic(&state_path, fingerprint.as_bytes())?;
    }
    let bar = progress(jobs.len(), "figures", opts.quiet);
    let conv_limits = conv_limits(model);
    let readout_limits = readout_limits(model);
    let compositions: Vec<Vec<plot::ChannelComposition>> = meis
        .par_iter()
        .map(|m| plot::mei_composition(&strip_batch(&m.stimulus), FRAME_RATE))
        .collect::<Result<_>>()?;
    let written: Vec<bool> = jobs
        .par_iter()
        .map(|job| {
            let done = if resume && job.path.exists() {
                false
            } else {
                job.draw(model, &meis, &compositions, &conv_limits, &readout_limits, opts)?;
                true
            };
            bar.inc(1);
            Ok(done)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    report.files_written = written.iter().filter(|w| **w).count();
    report.files_kept = written.len() - report.files_written;

    write_atomic(&folder.join("summary.csv"), summary_csv(&meis, &compositions, opts).as_bytes())?;
    write_atomic(&folder.join("index.html"), index_html(model, &meis, &jobs, opts).as_bytes())?;
    Ok(report)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::file(path, format!("cannot remove the output of an earlier run ({e})")))
        }
        _ => Ok(()),
    }
}

/// Temporary files (`.<name>.partial-<pid>`, see `write_atomic`) that a killed run left in our folders.
fn remove_partial_files(folder: &Path, jobs: &[FigureJob]) -> Result<()> {
    let mut dirs: Vec<&Path> = jobs.iter().filter_map(|j| j.path.parent()).collect();
    dirs.push(folder);
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".partial-") && entry.file_type().is_ok_and(|t| t.is_file()) {
                remove_if_present(&entry.path())?;
            }
        }
    }
    Ok(())
}

fn progress(len: usize, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} ({eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// The MEIs to compute, in openretina's order: inner channels layer by layer, then output neurons.
fn select_targets(model: &Model<f32>, opts: &VisualizeOptions) -> Result<Vec<MeiTarget>> {
    if !opts.meis {
        return Ok(Vec::new());
    }
    if let Some(sessions) = &opts.sessions {
        for s in sessions {
            model.readout(s)?;
        }
    }
    if let Some(layers) = &opts.layers {
        if let Some(&bad) = layers.iter().find(|&&l| l >= model.core.layers.len()) {
            bail!("--layers: layer {bad} does not exist; the model has {} core layers", model.core.layers.len());
        }
    }
    let targets: Vec<MeiTarget> = mei::all_targets(model)
        .into_iter()
        .filter(|t| match t {
            MeiTarget::InnerChannel { layer, .. } => opts.layers.as_ref().is_none_or(|ls| ls.contains(layer)),
            MeiTarget::OutputNeuron { session, neuron } => {
                opts.sessions.as_ref().is_none_or(|ss| ss.contains(session))
                    && opts.neurons.as_ref().is_none_or(|ns| ns.contains(neuron))
            }
            MeiTarget::Contrastive { .. } => true,
        })
        .collect();
    if let Some(neurons) = &opts.neurons {
        let max = model.readouts.values().map(|r| r.neurons).max().unwrap_or(0);
        if let Some(&bad) = neurons.iter().find(|&&n| n >= max) {
            bail!("--neurons: neuron {bad} does not exist in any session (the largest session has {max} neurons)");
        }
    }
    Ok(targets)
}

fn optimise(model: &Model<f32>, output_model: &Model<f32>, targets: &[MeiTarget], opts: &VisualizeOptions) -> Result<Vec<Mei>> {
    let (inner, output): (Vec<MeiTarget>, Vec<MeiTarget>) =
        targets.iter().cloned().partition(|t| matches!(t, MeiTarget::InnerChannel { .. }));
    let mut meis = Vec::with_capacity(targets.len());
    for (model, targets, what) in [(model, inner, "inner MEIs"), (output_model, output, "output MEIs")] {
        if targets.is_empty() {
            continue;
        }
        let bar = progress(targets.len(), what, opts.quiet);
        for chunk in targets.chunks(opts.batch_size.max(1)) {
            meis.extend(mei::optimize_all(model, chunk, &opts.mei, &|| bar.inc(1))?);
        }
        bar.finish_and_clear();
    }
    Ok(meis)
}

/// `(1, C, T, H, W)` -> `(C, T, H, W)`.
fn strip_batch(t: &Tensor<f32>) -> Tensor<f32> {
    Tensor { shape: t.shape[1..].to_vec(), data: t.data.clone() }
}

fn meis_tensors(meis: &[Mei]) -> BTreeMap<String, RawTensor> {
    let mut tensors = BTreeMap::new();
    for m in meis {
        let id = m.target.id();
        tensors.insert(format!("mei.{id}"), RawTensor::f32(m.stimulus.shape.clone(), m.stimulus.data.clone()));
        tensors.insert(format!("loss.{id}"), RawTensor { shape: vec![m.losses.len()], data: TensorData::F64(m.losses.clone()) });
        tensors.insert(format!("response.{id}"), RawTensor::f32(vec![m.response.len()], m.response.clone()));
        tensors.insert(format!("objective.{id}"), RawTensor { shape: vec![1], data: TensorData::F64(vec![m.objective]) });
    }
    tensors
}

/// MEIs saved by an earlier run with the same fingerprint.
fn read_meis(path: &Path, targets: &[MeiTarget], model: &Model<f32>, settings: &MeiSettings) -> Result<Vec<Mei>> {
    let bytes = formats::safetensors::read_file(path)?;
    let (tensors, _) = formats::safetensors::parse(&bytes, &path.display().to_string())?;
    let get = |name: String| tensors.get(&name).ok_or_else(|| Error::file(path, format!("has no tensor {name}")));
    targets
        .iter()
        .map(|target| {
            let id = target.id();
            let objective = Objective::new(model, target.clone(), settings.time_steps)?;
            Ok(Mei {
                target: target.clone(),
                stimulus: get(format!("mei.{id}"))?.to_float(&id)?,
                losses: get(format!("loss.{id}"))?.to_float::<f64>(&id)?.data,
                objective: get(format!("objective.{id}"))?.to_float::<f64>(&id)?.data[0],
                response: get(format!("response.{id}"))?.to_float::<f32>(&id)?.data,
                highlighted_frames: objective.highlighted_frames(),
            })
        })
        .collect()
}

/// A hash of everything the outputs depend on.
fn fingerprint(model: &Model<f32>, output_model: &Model<f32>, opts: &VisualizeOptions) -> String {
    let text = format!(
        "retina {} | {model:?} | {output_model:?} | {:?} | {:?} | {:?} {:?} {:?} | {} {} {} {}",
        env!("CARGO_PKG_VERSION"),
        opts.mei,
        opts.style,
        opts.layers,
        opts.sessions,
        opts.neurons,
        opts.meis,
        opts.videos,
        opts.weights,
        opts.ensemble_layout
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One file to draw.
struct FigureJob {
    path: PathBuf,
    kind: JobKind,
}

enum JobKind {
    MeiFigure(usize),
    MeiVideo(usize),
    ConvWeights { layer: usize, input: usize, output: usize },
    Readout { session: String, neuron: usize },
}

/// Folder of an MEI's figure and video, as openretina names them.
fn mei_folder(target: &MeiTarget) -> (String, usize) {
    match target {
        MeiTarget::InnerChannel { layer, channel } => (format!("core_features_layer{layer}"), *channel),
        MeiTarget::OutputNeuron { session, neuron } => (format!("output_neurons/{session}"), *neuron),
        MeiTarget::Contrastive { session, .. } => (format!("most_discriminative/{session}"), 0),
    }
}

fn figure_jobs(model: &Model<f32>, meis: &[Mei], opts: &VisualizeOptions) -> Vec<FigureJob> {
    let folder = &opts.save_folder;
    let ext = opts.style.format.extension();
    let mut jobs = Vec::new();
    for (i, m) in meis.iter().enumerate() {
        let (dir, index) = mei_folder(&m.target);
        jobs.push(FigureJob { path: folder.join(&dir).join(format!("{index}.{ext}")), kind: JobKind::MeiFigure(i) });
        if opts.videos {
            jobs.push(FigureJob { path: folder.join(&dir).join(format!("{index}.mp4")), kind: JobKind::MeiVideo(i) });
        }
    }
    if opts.weights {
        let weights_root = if opts.ensemble_layout { folder.clone() } else { folder.join("weights_core") };
        for (layer, l) in model.core.layers.iter().enumerate() {
            for input in 0..l.conv.in_channels {
                for output in 0..l.conv.out_channels {
                    jobs.push(FigureJob {
                        path: weights_root.join(format!("weights_layer_{layer}")).join(format!("{input}_{output}_.{ext}")),
                        kind: JobKind::ConvWeights { layer, input, output },
                    });
                }
            }
        }
        for (session, readout) in &model.readouts {
            for neuron in 0..readout.neurons {
                jobs.push(FigureJob {
                    path: folder.join("weights_readout").join(session).join(format!("neuron_{neuron}.{ext}")),
                    kind: JobKind::Readout { session: session.clone(), neuron },
                });
            }
        }
    }
    jobs
}

impl FigureJob {
    fn draw(
        &self,
        model: &Model<f32>,
        meis: &[Mei],
        compositions: &[Vec<plot::ChannelComposition>],
        conv_limits: &[ConvWeightLimits],
        readout_limits: &BTreeMap<String, ReadoutLimits>,
        opts: &VisualizeOptions,
    ) -> Result<()> {
        match &self.kind {
            JobKind::MeiFigure(i) => {
                let m = &meis[*i];
                let input = MeiFigureInput {
                    stimulus: strip_batch(&m.stimulus),
                    response: Some(m.response.clone()),
                    window: (m.highlighted_frames.0, m.highlighted_frames.1 + 1),
                    frame_rate: FRAME_RATE,
                };
                plot::draw_mei_with(&input, &compositions[*i], &opts.style, &self.path)
            }
            JobKind::MeiVideo(i) => write_mei_video(&strip_batch(&meis[*i].stimulus), &self.path, &VideoOptions::default()),
            JobKind::ConvWeights { layer, input, output } => {
                let w = conv_weights(model, *layer, *input, *output).centre_positive()?;
                plot::draw_conv_weights(&w, &conv_limits[*layer], &opts.style, &self.path)
            }
            JobKind::Readout { session, neuron } => {
                plot::draw_readout_neuron(&readout_neuron(model, session, *neuron), &readout_limits[session], &opts.style, &self.path)
            }
        }
    }
}

/// The weights of one (in, out) channel pair of a core layer, temporal kernel at the default log speed.
pub fn conv_weights<F: Float>(model: &Model<F>, layer: usize, input: usize, output: usize) -> ConvWeights {
    let conv = &model.core.layers[layer].conv;
    let (i_n, k, kt) = (conv.in_channels, conv.spatial_kernel, conv.temporal_kernel);
    let nk = conv.sin_weights.len() / (conv.out_channels * i_n);
    let pair = output * i_n + input;
    let f = |v: &[F]| v.iter().map(|x| x.to_f64() as f32).collect::<Vec<f32>>();
    let temporal = conv.temporal_kernels(conv.log_speed_default);
    ConvWeights {
        spatial: Tensor { shape: vec![k, k], data: f(&conv.spatial_weights[pair * k * k..(pair + 1) * k * k]) },
        temporal: f(&temporal[pair * kt..(pair + 1) * kt]),
        sin: f(&conv.sin_weights[pair * nk..(pair + 1) * nk]),
        cos: f(&conv.cos_weights[pair * nk..(pair + 1) * nk]),
        in_channel: input,
        out_channel: output,
    }
}

/// Axis limits shared by every weight figure of a core layer.
pub fn layer_conv_limits<F: Float>(model: &Model<F>, layer: usize) -> ConvWeightLimits {
    let conv = &model.core.layers[layer].conv;
    let all: Vec<ConvWeights> = (0..conv.in_channels)
        .flat_map(|i| (0..conv.out_channels).map(move |o| (i, o)))
        .map(|(i, o)| conv_weights(model, layer, i, o))
        .collect();
    ConvWeightLimits::of_layer(&all)
}

fn conv_limits(model: &Model<f32>) -> Vec<ConvWeightLimits> {
    (0..model.core.layers.len()).map(|layer| layer_conv_limits(model, layer)).collect()
}

/// One neuron's mask `(h, w)` and feature weights.
pub fn readout_neuron<F: Float>(model: &Model<F>, session: &str, neuron: usize) -> ReadoutNeuron {
    let r = &model.readouts[session];
    let hw = r.height * r.width;
    ReadoutNeuron {
        mask: Tensor {
            shape: vec![r.height, r.width],
            data: r.masks()[neuron * hw..(neuron + 1) * hw].iter().map(|v| v.to_f64() as f32).collect(),
        },
        feature_weights: (0..r.channels).map(|c| r.features[c * r.neurons + neuron].to_f64() as f32).collect(),
        neuron,
    }
}

/// Axis limits shared by every readout figure of a session.
pub fn session_readout_limits<F: Float>(model: &Model<F>, session: &str) -> ReadoutLimits {
    let all: Vec<ReadoutNeuron> = (0..model.readouts[session].neurons).map(|n| readout_neuron(model, session, n)).collect();
    ReadoutLimits::of_session(&all)
}

fn readout_limits(model: &Model<f32>) -> BTreeMap<String, ReadoutLimits> {
    model.readouts.keys().map(|session| (session.clone(), session_readout_limits(model, session))).collect()
}

fn summary_csv(meis: &[Mei], compositions: &[Vec<plot::ChannelComposition>], opts: &VisualizeOptions) -> String {
    let channels = compositions.first().map_or(0, Vec::len);
    let mut csv = String::from("kind,layer_or_session,index,objective,first_loss,final_loss");
    for c in 0..channels {
        let _ = write!(csv, ",main_frequency_hz_c{c}");
    }
    csv += ",figure,video\n";
    let ext = opts.style.format.extension();
    for (m, comp) in meis.iter().zip(compositions) {
        let (kind, group, index) = match &m.target {
            MeiTarget::InnerChannel { layer, channel } => ("inner", format!("core_features_layer{layer}"), *channel),
            MeiTarget::OutputNeuron { session, neuron } => ("output", session.clone(), *neuron),
            MeiTarget::Contrastive { session, .. } => ("mds", session.clone(), 0),
        };
        let (dir, _) = mei_folder(&m.target);
        let _ = write!(
            csv,
            "{kind},{group},{index},{},{},{}",
            m.objective,
            m.losses.first().copied().unwrap_or(f64::NAN),
            m.losses.last().copied().unwrap_or(f64::NAN)
        );
        for c in comp {
            let _ = write!(csv, ",{}", c.main_frequency);
        }
        let video = if opts.videos { format!("{dir}/{index}.mp4") } else { String::new() };
        let _ = writeln!(csv, ",{dir}/{index}.{ext},{video}");
    }
    csv
}

/// One page with every figure, grouped by layer and session: each MEI as a card with its figure and
/// its (looping) video, then the weight figures.
fn index_html(model: &Model<f32>, meis: &[Mei], jobs: &[FigureJob], opts: &VisualizeOptions) -> String {
    let rel = |p: &Path| html_escape(&p.strip_prefix(&opts.save_folder).unwrap_or(p).to_string_lossy().replace('\\', "/"));
    let videos: BTreeMap<usize, String> = jobs
        .iter()
        .filter_map(|j| match j.kind {
            JobKind::MeiVideo(i) => Some((i, rel(&j.path))),
            _ => None,
        })
        .collect();
    let mut sections: BTreeMap<(u8, String), Vec<String>> = BTreeMap::new();
    for job in jobs {
        let src = rel(&job.path);
        let (key, item) = match &job.kind {
            JobKind::MeiFigure(i) => {
                let (dir, index) = mei_folder(&meis[*i].target);
                let (order, what) = if dir.starts_with("core") { (0, "channel") } else { (1, "neuron") };
                let video = videos
                    .get(i)
                    .map(|v| format!("<video src=\"{v}\" autoplay muted loop playsinline></video>"))
                    .unwrap_or_default();
                let objective = meis[*i].objective;
                (
                    (order, dir),
                    format!("<figure class=\"mei\"><div><img src=\"{src}\" alt=\"MEI of {what} {index}\" loading=\"lazy\">{video}</div><figcaption>{what} {index} · objective {objective:.3}</figcaption></figure>"),
                )
            }
            JobKind::MeiVideo(_) => continue,
            JobKind::ConvWeights { layer, input, output } => (
                (2, format!("weights of core_features_layer{layer}")),
                format!("<figure><img src=\"{src}\" alt=\"weights {input} {output}\" loading=\"lazy\"><figcaption>in {input}, out {output}</figcaption></figure>"),
            ),
            JobKind::Readout { session, neuron } => (
                (3, format!("readout weights of {session}")),
                format!("<figure><img src=\"{src}\" alt=\"readout {neuron}\" loading=\"lazy\"><figcaption>neuron {neuron}</figcaption></figure>"),
            ),
        };
        sections.entry(key).or_default().push(item);
    }
    let mut html = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>retina visualize</title>\n<style>body{font-family:sans-serif;margin:1em 2em}section{margin-bottom:2em}.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:320px}figure.mei{width:500px}figure.mei div{display:flex;gap:6px;align-items:center}figure.mei img{width:350px}figure.mei video{width:144px}img{width:100%}figcaption{font-size:12px;color:#444}</style></head><body>\n",
    );
    let _ = writeln!(
        html,
        "<h1>{}</h1><p>{} core layers, {} sessions. <a href=\"summary.csv\">summary.csv</a> · <a href=\"meis.safetensors\">meis.safetensors</a></p>",
        html_escape(&model.config.model_class),
        model.core.layers.len(),
        model.readouts.len()
    );
    for ((_, title), items) in sections {
        let _ = writeln!(html, "<section><h2>{}</h2><div class=\"grid\">{}</div></section>", html_escape(&title), items.join(""));
    }
    html += "</body></html>\n";
    html
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
