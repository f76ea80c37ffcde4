//! The files made from all MEIs together: `meis.safetensors`, `summary.csv` and `index.html`. They
//! are written by streaming, a few MEIs at a time, from the per-MEI records (and, for MEIs merged
//! earlier, from the previous `meis.safetensors`), so memory does not grow with the number of MEIs.
//! Every shard's records are the same bytes a single run makes, so the merged files are too.

use std::fmt::Write as _;

use rayon::prelude::*;

use super::folder::{remove_if_present, Folder};
use super::plan::{Item, Plan, INDEX_FILE, MEIS_FILE, SUMMARY_FILE};
use super::records::{header, mei_bytes, MeiRecord, TensorFile, TensorSpec};
use super::{strip_batch, FRAME_RATE};
use crate::error::{Error, Result};
use crate::output::AtomicFile;
use crate::plot;

/// MEIs read and summarised together while merging.
const CHUNK: usize = 64;

/// Where each finished MEI is: its own record, or an earlier `meis.safetensors` of the same plan.
pub struct MeiSources {
    merged: Option<TensorFile>,
}

impl MeiSources {
    pub fn open(folder: &Folder) -> Result<MeiSources> {
        // A damaged earlier merge is not an error: its MEIs are redone.
        Ok(MeiSources { merged: TensorFile::open_if_exists(&folder.path(MEIS_FILE)).ok().flatten() })
    }

    /// The file holding MEI `i` (with name `id`), if it is done.
    pub fn find(&self, folder: &Folder, i: usize, id: &str) -> Option<TensorFile> {
        let record = folder.record(i);
        if record.is_file() {
            if let Ok(file) = TensorFile::open(&record) {
                if file.has_mei(id) {
                    return Some(file);
                }
            }
        }
        let merged = self.merged.as_ref()?;
        merged.has_mei(id).then(|| TensorFile::open(&folder.path(MEIS_FILE)).ok()).flatten()
    }

    /// Whether MEI `i` is finished: saved, or failed.
    pub fn is_done(&self, folder: &Folder, i: usize, id: &str) -> bool {
        folder.record(i).is_file() || self.merged.as_ref().is_some_and(|m| m.has_mei(id)) || folder.failure(i).is_file()
    }
}

/// How many pieces of work of the plan are not finished yet (by any shard).
pub fn missing_work(folder: &Folder, plan: &Plan) -> Result<usize> {
    let sources = MeiSources::open(folder)?;
    Ok(plan
        .items
        .iter()
        .enumerate()
        .filter(|(i, item)| {
            let Some(target) = item.target() else { return plan.item_files(item).any(|f| !folder.path(&f).is_file()) };
            if folder.failure(*i).is_file() {
                // A failed MEI has no figure or video.
                return false;
            }
            !sources.is_done(folder, *i, &target.id()) || plan.item_files(item).any(|f| !folder.path(&f).is_file())
        })
        .count())
}

/// Whether the merged files must be (re)written: MEIs are waiting in records, or a merged file is missing.
pub fn needs_merge(folder: &Folder, plan: &Plan) -> bool {
    (0..plan.mei_count()).any(|i| folder.record(i).is_file()) || plan.merged_files().iter().any(|f| !folder.path(f).is_file())
}

/// The MEIs of a plan that failed, by their place in it, with their errors.
pub fn failures(folder: &Folder, plan: &Plan) -> Vec<(usize, String)> {
    (0..plan.mei_count()).filter_map(|i| folder.failed(i).map(|e| (i, e))).collect()
}

/// Write the merged files for the whole plan (every piece of work must be done), then drop the records.
/// Failed MEIs have no tensors in `meis.safetensors`; their row in `summary.csv` and their card in
/// `index.html` carry the error instead.
pub fn write_merged(folder: &Folder, plan: &Plan) -> Result<()> {
    let sources = MeiSources::open(folder)?;
    let meis: Vec<(usize, &Item, String, Option<String>)> = plan
        .items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| item.target().map(|t| (i, item, t.id(), folder.failed(i))))
        .collect();
    let missing = |id: &str| Error::file(&folder.root, format!("MEI {id} is not done; run the shards that are missing, then merge"));

    // The header first: every tensor's shape is in the records' headers.
    let mut specs: Vec<TensorSpec> = Vec::with_capacity(4 * meis.len());
    let mut channels = 0;
    for (i, _, id, _) in meis.iter().filter(|m| m.3.is_none()) {
        let file = sources.find(folder, *i, id).ok_or_else(|| missing(id))?;
        let names = super::records::tensor_names(id);
        for (n, name) in names.iter().enumerate() {
            let e = file.entry(name)?;
            if n == 0 {
                channels = e.shape.get(1).copied().unwrap_or(0);
            }
            let (dtype, size) = if e.dtype == "F64" { ("F64", 8) } else { ("F32", 4) };
            specs.push(TensorSpec { name: name.clone(), dtype, shape: e.shape.clone(), bytes: size * e.shape.iter().product::<usize>() as u64 });
        }
    }
    let mut meis_file = if meis.is_empty() { None } else { Some(AtomicFile::create(&folder.path(MEIS_FILE))?) };
    if let Some(f) = meis_file.as_mut() {
        f.write_all(&header(&specs))?;
    }
    drop(specs);
    let mut summary = AtomicFile::create(&folder.path(SUMMARY_FILE))?;
    summary.write_all(summary_header(channels).as_bytes())?;
    let mut index = IndexPage::new(folder, plan)?;

    for chunk in meis.chunks(CHUNK) {
        let records: Vec<Option<MeiRecord>> = chunk
            .iter()
            .map(|(i, _, id, failed)| match failed {
                Some(_) => Ok(None),
                None => sources.find(folder, *i, id).ok_or_else(|| missing(id))?.read_mei(id).map(Some),
            })
            .collect::<Result<_>>()?;
        let frequencies: Vec<Vec<f64>> = records
            .par_iter()
            .map(|r| match r {
                Some(r) => Ok(plot::mei_composition(&strip_batch(&r.stimulus), FRAME_RATE)?.iter().map(|c| c.main_frequency).collect()),
                None => Ok(Vec::new()),
            })
            .collect::<Result<_>>()?;
        for (((_, item, _, failed), record), freq) in chunk.iter().zip(&records).zip(&frequencies) {
            match (record, failed) {
                (Some(record), _) => {
                    if let Some(f) = meis_file.as_mut() {
                        f.write_all(&mei_bytes(record))?;
                    }
                    summary.write_all(summary_row(plan, item, record, freq).as_bytes())?;
                    index.mei(plan, item, record.objective)?;
                }
                (None, Some(error)) => {
                    summary.write_all(failed_row(item, channels, error).as_bytes())?;
                    index.failed_mei(item, error)?;
                }
                (None, None) => unreachable!("a record is read for every MEI that did not fail"),
            }
        }
    }
    for item in plan.items.iter().filter(|i| i.target().is_none()) {
        index.weights(plan, item)?;
    }
    if let Some(f) = meis_file {
        f.commit()?;
    }
    summary.commit()?;
    index.finish()?;
    for (i, _, _, _) in &meis {
        remove_if_present(&folder.record(*i))?;
    }
    Ok(())
}

/// The columns of `summary.csv`; `error` is empty for MEIs that succeeded and holds the (quoted) error
/// of those that failed, whose other value columns are empty.
fn summary_header(channels: usize) -> String {
    let mut csv = String::from("kind,layer_or_session,index,objective,first_loss,final_loss");
    for c in 0..channels {
        let _ = write!(csv, ",main_frequency_hz_c{c}");
    }
    csv + ",figure,video,error\n"
}

/// The first three columns of an MEI's row.
fn row_start(item: &Item) -> String {
    match item {
        Item::Inner { layer, channel } => format!("inner,core_features_layer{layer},{channel}"),
        Item::Output { session, neuron } => format!("output,{session},{neuron}"),
        _ => unreachable!("only MEIs have rows"),
    }
}

/// One MEI's row of `summary.csv`.
fn summary_row(plan: &Plan, item: &Item, m: &MeiRecord, main_frequencies: &[f64]) -> String {
    let mut row = format!(
        "{},{},{},{}",
        row_start(item),
        m.objective,
        m.losses.first().copied().unwrap_or(f64::NAN),
        m.losses.last().copied().unwrap_or(f64::NAN)
    );
    for f in main_frequencies {
        let _ = write!(row, ",{f}");
    }
    let _ = writeln!(row, ",{},{},", plan.figure(item), plan.video(item).unwrap_or_default());
    row
}

/// The row of an MEI that failed: no values, no figure or video, and its error (quoted as CSV quotes).
fn failed_row(item: &Item, channels: usize, error: &str) -> String {
    format!("{},,,{},,,\"{}\"\n", row_start(item), ",".repeat(channels), error.replace('"', "\"\""))
}

/// `index.html`, written section by section: each MEI as a card with its figure and video, then the
/// weight figures. Images load lazily and videos only fetch their metadata until they scroll into
/// view (a small script plays what is visible), so a page over thousands of MEIs stays usable.
struct IndexPage {
    file: AtomicFile,
    section: Option<String>,
}

const INDEX_HEAD: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>retina visualize</title>\n<style>body{font-family:sans-serif;margin:1em 2em}section{margin-bottom:2em}.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:320px}figure.mei{width:500px}figure.mei div{display:flex;gap:6px;align-items:center}figure.mei img{width:350px}figure.mei video{width:144px}img{width:100%}figcaption{font-size:12px;color:#444}.failed p{color:#b00;font-size:13px}</style></head><body>\n";

/// Plays the videos in view and pauses the others.
const INDEX_SCRIPT: &str = "<script>\nconst retinaVideos = new IntersectionObserver(es => es.forEach(e => e.isIntersecting ? e.target.play().catch(() => {}) : e.target.pause()));\ndocument.querySelectorAll('video').forEach(v => retinaVideos.observe(v));\n</script>\n";

impl IndexPage {
    fn new(folder: &Folder, plan: &Plan) -> Result<IndexPage> {
        let mut file = AtomicFile::create(&folder.path(INDEX_FILE))?;
        file.write_all(INDEX_HEAD.as_bytes())?;
        let mut top = format!("<h1>{}</h1><p>{} core layers, {} sessions. <a href=\"summary.csv\">summary.csv</a>", html_escape(&plan.model_class), plan.core_layers, plan.sessions);
        if plan.mei_count() > 0 {
            top += " · <a href=\"meis.safetensors\">meis.safetensors</a>";
        }
        top += "</p>\n";
        file.write_all(top.as_bytes())?;
        Ok(IndexPage { file, section: None })
    }

    fn card(&mut self, section: String, card: String) -> Result<()> {
        if self.section.as_ref() != Some(&section) {
            if self.section.is_some() {
                self.file.write_all(b"</div></section>\n")?;
            }
            self.file.write_all(format!("<section><h2>{}</h2><div class=\"grid\">", html_escape(&section)).as_bytes())?;
            self.section = Some(section);
        }
        self.file.write_all(card.as_bytes())
    }

    fn mei(&mut self, plan: &Plan, item: &Item, objective: f64) -> Result<()> {
        let (dir, index) = item.mei_folder().expect("an MEI");
        let what = if matches!(item, Item::Inner { .. }) { "channel" } else { "neuron" };
        let src = html_escape(&plan.figure(item));
        let video = plan
            .video(item)
            .map(|v| format!("<video src=\"{}\" muted loop playsinline preload=\"metadata\"></video>", html_escape(&v)))
            .unwrap_or_default();
        self.card(
            dir,
            format!("<figure class=\"mei\"><div><img src=\"{src}\" alt=\"MEI of {what} {index}\" loading=\"lazy\">{video}</div><figcaption>{what} {index} · objective {objective:.3}</figcaption></figure>"),
        )
    }

    /// The card of an MEI that failed: its error where the figure would be.
    fn failed_mei(&mut self, item: &Item, error: &str) -> Result<()> {
        let (dir, index) = item.mei_folder().expect("an MEI");
        let what = if matches!(item, Item::Inner { .. }) { "channel" } else { "neuron" };
        self.card(
            dir,
            format!("<figure class=\"mei failed\"><div><p>{}</p></div><figcaption>{what} {index} · failed</figcaption></figure>", html_escape(error)),
        )
    }

    fn weights(&mut self, plan: &Plan, item: &Item) -> Result<()> {
        let src = html_escape(&plan.figure(item));
        let (section, card) = match item {
            Item::ConvWeights { layer, input, output } => (
                format!("weights of core_features_layer{layer}"),
                format!("<figure><img src=\"{src}\" alt=\"weights {input} {output}\" loading=\"lazy\"><figcaption>in {input}, out {output}</figcaption></figure>"),
            ),
            Item::ReadoutWeights { session, neuron } => (
                format!("readout weights of {session}"),
                format!("<figure><img src=\"{src}\" alt=\"readout {neuron}\" loading=\"lazy\"><figcaption>neuron {neuron}</figcaption></figure>"),
            ),
            _ => unreachable!("only weight figures"),
        };
        self.card(section, card)
    }

    fn finish(mut self) -> Result<()> {
        if self.section.is_some() {
            self.file.write_all(b"</div></section>\n")?;
        }
        self.file.write_all(INDEX_SCRIPT.as_bytes())?;
        self.file.write_all(b"</body></html>\n")?;
        self.file.commit()
    }
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
