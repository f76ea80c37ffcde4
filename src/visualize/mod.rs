//! `retina visualize`: every MEI (inner channels and output neurons), its figure and video, and the
//! weight figures of the core and the readouts, in openretina's folder layout, plus `meis.safetensors`,
//! `summary.csv` and `index.html`.
//!
//! Each MEI is saved, drawn and dropped as soon as it is done, so memory does not grow with the number
//! of MEIs; the files over all MEIs are assembled at the end by streaming (`merge`). The work can be
//! split over processes (`--shard K/N`) writing into one folder; the last one to finish merges. The
//! folder's rules (what is kept, what is removed, who may write) are in `folder`.

pub mod figures;
mod folder;
mod merge;
pub mod models;
pub mod plan;
mod records;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

pub use self::figures::{conv_weights, layer_conv_limits, readout_neuron, session_readout_limits};
pub use self::folder::STATE_DIR;
pub use self::plan::Shard;
use self::folder::Folder;
use self::merge::MeiSources;
use self::plan::Plan;
use self::records::{write_record, MeiRecord};
use crate::error::{Error, Result};
use crate::mei::{self, MeiSettings, MeiTarget, Objective};
use crate::model::Model;
use crate::plot::{self, FigureStyle};
use crate::tensor::Tensor;

/// Frame rate of openretina's stimuli (for time axes and frequencies).
pub const FRAME_RATE: f64 = 30.0;

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
    /// A note in the response panel of output-neuron MEI figures (e.g. that they optimise an ensemble
    /// mean).
    pub output_note: Option<String>,
    /// This process's share of the work.
    pub shard: Shard,
}

/// What a run did, for the command's last line.
#[derive(Debug, Default)]
pub struct Report {
    pub meis_optimised: usize,
    pub meis_reused: usize,
    pub files_written: usize,
    pub files_kept: usize,
    /// Whether this run wrote meis.safetensors, summary.csv and index.html (else they were up to date,
    /// or other shards' work is still missing).
    pub merged: bool,
    /// Pieces of work of other shards still missing when this run ended.
    pub missing: usize,
    /// MEIs this run answers for that failed (now or in an earlier run with the same settings): those of
    /// its shard, and all of the folder's when it merged. By place in the plan, with their errors.
    pub failed: BTreeMap<usize, String>,
    /// MEIs this run answers for (as `failed`).
    pub meis: usize,
}

/// Run the job (this process's shard of it). `output_models` are the models output-neuron MEIs are
/// optimised on (the centred ensemble member, or `model` itself; several: their mean response, as
/// `--ensemble-mean`); inner MEIs and weight figures use `model`.
pub fn visualize(model: &Model<f32>, output_models: &[Model<f32>], opts: &VisualizeOptions) -> Result<Report> {
    let output_model = output_models.first().ok_or_else(|| Error::new("no model to optimise output-neuron MEIs on"))?;
    // Check the selection before touching the folder: a refused run leaves nothing behind.
    let targets = select_targets(model, opts)?;
    // One chunk of MEIs is in memory at a time.
    mei::check_memory(output_model, targets.len().min(opts.batch_size), &opts.mei)?;
    let plan = Plan::new(model, output_models, &targets, opts);
    drop(targets);
    let folder = Folder::new(&opts.save_folder);
    let running = folder.begin(&plan, opts.overwrite)?;
    let mut report = Report::default();
    let shard = opts.shard;
    let mine: Vec<usize> = (0..plan.items.len()).filter(|&i| plan.owner(i, shard.count) == shard.index).collect();
    let dirs: HashSet<PathBuf> =
        mine.iter().flat_map(|&i| plan.item_files(&plan.items[i])).filter_map(|f| folder.path(&f).parent().map(PathBuf::from)).collect();
    for dir in dirs {
        std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, format!("cannot create folder ({e})")))?;
    }

    // MEIs: optimised, drawn and saved one chunk at a time; finished ones only get missing files redrawn.
    let sources = MeiSources::open(&folder)?;
    let (done, todo): (Vec<usize>, Vec<usize>) = mine
        .iter()
        .copied()
        .filter(|&i| plan.items[i].target().is_some())
        .partition(|&i| sources.is_done(&folder, i, &plan.items[i].target().expect("an MEI").id()));
    report.meis_reused = done.len();
    let bar = progress(todo.len() + done.len(), "MEIs", opts.quiet);
    for chunk in todo.chunks(opts.batch_size.max(1)) {
        let (inner, output): (Vec<usize>, Vec<usize>) = chunk.iter().partition(|&&i| matches!(plan.items[i], plan::Item::Inner { .. }));
        for (models, part) in [(std::slice::from_ref(model), inner), (output_models, output)] {
            if part.is_empty() {
                continue;
            }
            let targets: Vec<MeiTarget> = part.iter().map(|&i| plan.items[i].target().expect("an MEI")).collect();
            let meis = mei::optimize_each_mean(models, &targets, &opts.mei, &|| {})?;
            let written: Vec<usize> = part
                .par_iter()
                .zip(meis)
                .map(|(&i, m)| {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            // This MEI stops here; the others go on, and the merge marks it.
                            folder.mark_failed(i, &e)?;
                            bar.suspend(|| eprintln!("error: {e}"));
                            bar.inc(1);
                            return Ok(0);
                        }
                    };
                    let record = MeiRecord::of(&m);
                    let written = draw_mei_files(&folder, &plan, i, &record, m.highlighted_frames, opts, true)?;
                    // Saved last: a saved MEI has its figure and video.
                    write_record(&folder.record(i), &m.target.id(), &record)?;
                    bar.inc(1);
                    Ok(written)
                })
                .collect::<Result<_>>()?;
            report.files_written += written.iter().sum::<usize>();
        }
        report.meis_optimised += chunk.len();
    }
    let counts: Vec<(usize, usize)> = done
        .par_iter()
        .map(|&i| {
            let item = &plan.items[i];
            if folder.failure(i).is_file() {
                // Failed in an earlier run: nothing to draw.
                bar.inc(1);
                return Ok((0, 0));
            }
            let files = plan.item_files(item).count();
            let written = if plan.item_files(item).all(|f| folder.path(&f).is_file()) {
                0
            } else {
                let target = item.target().expect("an MEI");
                let id = target.id();
                let file = sources.find(&folder, i, &id).ok_or_else(|| Error::file(&folder.root, format!("MEI {id} vanished")))?;
                let record = file.read_mei(&id)?;
                let objective_model = if matches!(item, plan::Item::Inner { .. }) { model } else { output_model };
                let frames = Objective::new(objective_model, target, opts.mei.time_steps)?.highlighted_frames();
                draw_mei_files(&folder, &plan, i, &record, frames, opts, false)?
            };
            bar.inc(1);
            Ok((written, files - written))
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    drop(sources);
    report.files_written += counts.iter().map(|c| c.0).sum::<usize>();
    report.files_kept += counts.iter().map(|c| c.1).sum::<usize>();

    // Weight figures.
    let weights: Vec<usize> = mine.iter().copied().filter(|&i| plan.items[i].target().is_none()).collect();
    let todo: Vec<usize> = weights.iter().copied().filter(|&i| !folder.path(&plan.figure(&plan.items[i])).is_file()).collect();
    report.files_kept += weights.len() - todo.len();
    if !todo.is_empty() {
        let limits = figures::WeightLimits::for_items(model, todo.iter().map(|&i| &plan.items[i]));
        let bar = progress(todo.len(), "weights", opts.quiet);
        todo.par_iter().try_for_each(|&i| {
            let item = &plan.items[i];
            figures::draw_weights(model, item, &limits, &opts.style, &folder.path(&plan.figure(item)))?;
            bar.inc(1);
            Ok::<_, Error>(())
        })?;
        bar.finish_and_clear();
        report.files_written += todo.len();
    }

    // The last run (or shard) to finish writes the files over all MEIs.
    let setup = folder.lock_setup()?;
    report.missing = merge::missing_work(&folder, &plan)?;
    if report.missing == 0 && merge::needs_merge(&folder, &plan) {
        merge::write_merged(&folder, &plan)?;
        report.merged = true;
    }
    let mine_meis: Vec<usize> = mine.iter().copied().filter(|&i| plan.items[i].target().is_some()).collect();
    report.meis = if report.merged { plan.mei_count() } else { mine_meis.len() };
    report.failed = merge::failures(&folder, &plan)
        .into_iter()
        .filter(|(i, _)| report.merged || mine_meis.contains(i))
        .collect();
    drop(running);
    drop(setup);
    Ok(report)
}

/// A merged folder: its number of MEIs and the failed ones (by place in the plan, with their errors).
pub struct Merged {
    pub folder: PathBuf,
    pub meis: usize,
    pub failed: BTreeMap<usize, String>,
}

/// `retina visualize --merge`: write meis.safetensors, summary.csv and index.html of a folder whose
/// shards are all done, or of each model folder in it (a call with several models).
pub fn merge_folders(save_folder: &std::path::Path) -> Result<Vec<Merged>> {
    if Folder::new(save_folder).has_state() {
        return Ok(vec![merge_folder(save_folder)?]);
    }
    let mut models: Vec<PathBuf> = std::fs::read_dir(save_folder)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| Folder::new(p).has_state()).collect())
        .unwrap_or_default();
    models.sort();
    if models.is_empty() {
        return Err(Error::file(
            save_folder,
            format!("no retina visualize run to merge here (no {STATE_DIR}/state.json, nor in its folders); run visualize into it first"),
        ));
    }
    models.into_iter().map(|m| merge_folder(&m)).collect()
}

/// `merge_folders` for one model's folder.
fn merge_folder(save_folder: &std::path::Path) -> Result<Merged> {
    let folder = Folder::new(save_folder);
    let _setup = folder.lock_setup()?;
    let plan = folder
        .state()
        .ok_or_else(|| Error::file(save_folder, format!("{STATE_DIR}/state.json is unreadable; run visualize into it again")))?;
    let missing = merge::missing_work(&folder, &plan)?;
    if missing > 0 {
        return Err(Error::file(
            save_folder,
            format!(
                "{missing} of {} pieces of work are not done yet; run the shards again (each redoes only its own missing work), then merge",
                plan.items.len()
            ),
        ));
    }
    merge::write_merged(&folder, &plan)?;
    Ok(Merged { folder: save_folder.to_path_buf(), meis: plan.mei_count(), failed: merge::failures(&folder, &plan).into_iter().collect() })
}

/// Draw an MEI's figure and video (all of them, or only the missing ones); returns how many it drew.
fn draw_mei_files(
    folder: &Folder,
    plan: &Plan,
    i: usize,
    record: &MeiRecord,
    highlighted_frames: (usize, usize),
    opts: &VisualizeOptions,
    all: bool,
) -> Result<usize> {
    let item = &plan.items[i];
    let mut written = 0;
    let figure = folder.path(&plan.figure(item));
    if all || !figure.is_file() {
        let compositions = plot::mei_composition(&strip_batch(&record.stimulus), FRAME_RATE)?;
        let note = opts.output_note.as_deref().filter(|_| !matches!(item, plan::Item::Inner { .. }));
        figures::draw_mei(&record.stimulus, &record.response, highlighted_frames, &compositions, note, &opts.style, &figure)?;
        written += 1;
    }
    if let Some(video) = plan.video(item).map(|v| folder.path(&v)) {
        if all || !video.is_file() {
            figures::draw_video(&record.stimulus, &video)?;
            written += 1;
        }
    }
    Ok(written)
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
        if let Some(&bad) = layers.iter().find(|&&l| l >= model.core.n_layers()) {
            bail!("--layers: layer {bad} does not exist; the model has {} core layers", model.core.n_layers());
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
        let max = model.readouts.values().map(|r| r.neurons()).max().unwrap_or(0);
        if let Some(&bad) = neurons.iter().find(|&&n| n >= max) {
            bail!("--neurons: neuron {bad} does not exist in any session (the largest session has {max} neurons)");
        }
    }
    Ok(targets)
}

/// `(1, C, T, H, W)` -> `(C, T, H, W)`.
fn strip_batch(t: &Tensor<f32>) -> Tensor<f32> {
    Tensor { shape: t.shape[1..].to_vec(), data: t.data.clone() }
}

