//! `retina visualize` end to end, through the real binary: openretina's folder layout (which users'
//! scripts rely on), every figure and video readable, resume, determinism, the page in a real browser,
//! and one-line errors.
//!
//! The expected file lists are derived from the model (layers' channels, sessions, neuron counts), not
//! hard-coded; `example_low_res`'s known counts are asserted once. Figures are drawn at a low dpi to
//! keep the suite fast: the layout and decoding do not depend on it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::fixture;
use retina::formats::download::DownloadOptions;
use retina::model::config::Architecture;
use retina::model::Model;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_retina");
const DPI: u32 = 20;
/// Frames of the optimised stimulus (`--time-steps-stimulus`, openretina's default).
const TIME_STEPS: u32 = 50;
/// Figure sizes in inches, as openretina's matplotlib figures.
const MEI_INCHES: (u32, u32) = (21, 12);
const CONV_INCHES: (u32, u32) = (18, 6);
const READOUT_INCHES: (u32, u32) = (12, 6);
const STATE_FILE: &str = ".retina-visualize-state";
const SESSION_1: &str = "session_1_ventral1_20200226";

// ---------------------------------------------------------------------------------------------------
// Running the binary

fn retina_cmd(args: &[String]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    // Never touch the user's cache, whatever a test does.
    cmd.env("OPENRETINA_CACHE_DIRECTORY", std::env::temp_dir().join("retina-visualize-test-cache-unused"));
    cmd.stdin(Stdio::null());
    cmd
}

fn retina(args: &[String]) -> Output {
    retina_cmd(args).output().expect("run the retina binary")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The model options of a fixture spec: a file, or `folder#id` for an ensemble member.
fn model_args(spec: &ModelSpec) -> Vec<String> {
    let mut args = vec!["--model-path".to_string(), spec.path.display().to_string()];
    if let Some(id) = spec.model_id {
        args.extend(["--model-id".to_string(), id.to_string()]);
    }
    args
}

/// `retina visualize` that must succeed; returns the counts of its last stdout line.
fn visualize(spec: &ModelSpec, folder: &Path, extra: &[&str]) -> RunReport {
    let mut args = strings(&["visualize"]);
    args.extend(model_args(spec));
    args.extend(["--save-folder".to_string(), folder.display().to_string(), "--dpi".to_string(), DPI.to_string()]);
    args.extend(strings(extra));
    let out = retina(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "retina {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no report line on stdout for {args:?}"));
    RunReport::parse(last)
}

/// The numbers of the report line
/// `<folder>: 60 MEIs (60 optimised, 0 from the previous run), 436 files written, 0 kept, in 1.2 s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunReport {
    meis: usize,
    optimised: usize,
    reused: usize,
    written: usize,
    kept: usize,
}

impl RunReport {
    fn parse(line: &str) -> RunReport {
        let tail = line.rsplit(": ").next().unwrap();
        let numbers: Vec<usize> = tail
            .split_whitespace()
            .filter_map(|w| w.trim_matches(|c| c == '(' || c == ',' || c == ')').parse().ok())
            .collect();
        assert!(
            numbers.len() >= 5 && tail.contains("MEIs") && tail.contains("files written") && tail.contains("kept"),
            "unexpected report line: {line}"
        );
        RunReport { meis: numbers[0], optimised: numbers[1], reused: numbers[2], written: numbers[3], kept: numbers[4] }
    }
}

// ---------------------------------------------------------------------------------------------------
// What a run must write, derived from the model

struct ModelSpec {
    path: PathBuf,
    model_id: Option<i64>,
}

fn example() -> ModelSpec {
    ModelSpec { path: fixture("example_low_res/model.ckpt"), model_id: None }
}

fn unified() -> ModelSpec {
    ModelSpec { path: fixture("unified_low_res/model.ckpt"), model_id: None }
}

fn ensemble_member0() -> ModelSpec {
    ModelSpec { path: fixture("ensemble_replica/ensemble"), model_id: Some(0) }
}

fn load(spec: &ModelSpec) -> Model<f32> {
    let offline = DownloadOptions { cache_dir: None, offline: true, quiet: true };
    let raw = retina::formats::read_model(&spec.path.display().to_string(), spec.model_id.unwrap_or(-1), &offline)
        .unwrap_or_else(|e| panic!("{}: {e}", spec.path.display()));
    Model::from_raw(&raw).unwrap()
}

/// What a run was asked for.
struct Selection {
    ext: &'static str,
    layers: Option<Vec<usize>>,
    sessions: Option<Vec<String>>,
    neurons: Option<Vec<usize>>,
    videos: bool,
    weights: bool,
}

impl Selection {
    fn all(ext: &'static str) -> Selection {
        Selection { ext, layers: None, sessions: None, neurons: None, videos: true, weights: true }
    }
}

/// The model's shape in the terms of the layout: (in, out) channels per core layer, neurons per session.
struct Shape {
    layers: Vec<(usize, usize)>,
    sessions: BTreeMap<String, usize>,
    ensemble: bool,
}

fn shape(model: &Model<f32>) -> Shape {
    Shape {
        layers: model.core.layers.iter().map(|l| (l.conv.in_channels, l.conv.out_channels)).collect(),
        sessions: model.readouts.iter().map(|(s, r)| (s.clone(), r.neurons)).collect(),
        ensemble: matches!(model.config.architecture, Architecture::HoeflingEnsembleMember { .. }),
    }
}

/// Kinds of file in the layout, to check each by what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MeiFigure,
    Video,
    ConvWeights,
    ReadoutWeights,
    Other,
}

/// Every file (relative path with `/`) openretina's layout holds for this model and selection.
fn expected_files(shape: &Shape, sel: &Selection) -> BTreeMap<String, Kind> {
    let ext = sel.ext;
    let mut files = BTreeMap::new();
    let mut meis = 0;
    for (layer, &(_, out)) in shape.layers.iter().enumerate() {
        if sel.layers.as_ref().is_some_and(|ls| !ls.contains(&layer)) {
            continue;
        }
        for c in 0..out {
            files.insert(format!("core_features_layer{layer}/{c}.{ext}"), Kind::MeiFigure);
            if sel.videos {
                files.insert(format!("core_features_layer{layer}/{c}.mp4"), Kind::Video);
            }
            meis += 1;
        }
    }
    for (session, &neurons) in &shape.sessions {
        if sel.sessions.as_ref().is_some_and(|ss| !ss.contains(session)) {
            continue;
        }
        for n in (0..neurons).filter(|n| sel.neurons.as_ref().is_none_or(|ns| ns.contains(n))) {
            files.insert(format!("output_neurons/{session}/{n}.{ext}"), Kind::MeiFigure);
            if sel.videos {
                files.insert(format!("output_neurons/{session}/{n}.mp4"), Kind::Video);
            }
            meis += 1;
        }
    }
    if sel.weights {
        let conv_root = if shape.ensemble { "" } else { "weights_core/" };
        for (layer, &(inputs, outputs)) in shape.layers.iter().enumerate() {
            for i in 0..inputs {
                for o in 0..outputs {
                    files.insert(format!("{conv_root}weights_layer_{layer}/{i}_{o}_.{ext}"), Kind::ConvWeights);
                }
            }
        }
        for (session, &neurons) in &shape.sessions {
            for n in 0..neurons {
                files.insert(format!("weights_readout/{session}/neuron_{n}.{ext}"), Kind::ReadoutWeights);
            }
        }
    }
    if meis > 0 {
        files.insert("meis.safetensors".into(), Kind::Other);
    }
    for f in ["summary.csv", "index.html", STATE_FILE] {
        files.insert(f.into(), Kind::Other);
    }
    files
}

/// Every file under `dir`, hidden ones included, as relative paths with `/`.
fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_exact_layout(folder: &Path, expected: &BTreeMap<String, Kind>) {
    let found = files_under(folder);
    let wanted: BTreeSet<String> = expected.keys().cloned().collect();
    let missing: Vec<_> = wanted.difference(&found).collect();
    let extra: Vec<_> = found.difference(&wanted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{}: layout differs from openretina's: {} missing (e.g. {:?}), {} unexpected (e.g. {:?})",
        folder.display(),
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------------------
// Checking files

fn inches_px(inches: (u32, u32), dpi: u32) -> (u32, u32) {
    (inches.0 * dpi, inches.1 * dpi)
}

fn figure_size(kind: Kind, dpi: u32) -> (u32, u32) {
    match kind {
        Kind::MeiFigure => inches_px(MEI_INCHES, dpi),
        Kind::ConvWeights => inches_px(CONV_INCHES, dpi),
        Kind::ReadoutWeights => inches_px(READOUT_INCHES, dpi),
        _ => unreachable!("not a figure"),
    }
}

/// A raster figure: decodes, has the size of its figure at `dpi`, and is not blank (a drawing, not one
/// flat colour: at least 2% of the pixels differ from the most common colour, at least 8 colours).
fn check_raster(path: &Path, size: (u32, u32)) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: does not decode: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), size, "{}: size", path.display());
    let mut counts: BTreeMap<[u8; 3], usize> = BTreeMap::new();
    for p in img.pixels() {
        *counts.entry(p.0).or_default() += 1;
    }
    let background = counts.values().max().copied().unwrap_or(0);
    let total = (size.0 * size.1) as usize;
    assert!(
        counts.len() >= 8 && (total - background) * 50 >= total,
        "{}: looks blank ({} colours, {} of {} pixels are the background)",
        path.display(),
        counts.len(),
        background,
        total
    );
}

/// An SVG figure: a complete drawing of the figure's size with content beyond the background.
fn check_svg(path: &Path, size: (u32, u32)) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.trim_end().ends_with("</svg>"), "{}: incomplete SVG", path.display());
    let open = text.find("<svg").unwrap_or_else(|| panic!("{}: no <svg> element", path.display()));
    let tag = &text[open..open + text[open..].find('>').unwrap()];
    let attr = |name: &str| -> u32 {
        let start = tag.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("{}: <svg> has no {name}", path.display()))
            + name.len()
            + 3;
        tag[start..start + tag[start..].find('"').unwrap()].parse().unwrap()
    };
    assert_eq!((attr("width"), attr("height")), size, "{}: size", path.display());
    let shapes = ["<path", "<rect", "<text", "<image", "<line", "<polyline"].iter().map(|t| text.matches(t).count()).sum::<usize>();
    assert!(shapes >= 10, "{}: almost empty SVG ({shapes} elements)", path.display());
}

fn check_figure(path: &Path, kind: Kind, ext: &str, dpi: u32) {
    let size = figure_size(kind, dpi);
    match ext {
        "svg" => check_svg(path, size),
        "jpg" | "png" => {
            let magic: &[u8] = if ext == "jpg" { &[0xff, 0xd8, 0xff] } else { b"\x89PNG" };
            let head = std::fs::read(path).unwrap();
            assert!(head.starts_with(magic), "{}: not a {ext} file", path.display());
            check_raster(path, size);
        }
        other => panic!("unexpected extension {other}"),
    }
}

/// An MEI video: one H.264 (`avc1`) track with one frame per stimulus time step, even dimensions
/// larger than the stimulus.
fn check_video(path: &Path, stimulus_hw: (usize, usize)) {
    let size = std::fs::metadata(path).unwrap().len();
    let reader = mp4::Mp4Reader::read_header(BufReader::new(File::open(path).unwrap()), size)
        .unwrap_or_else(|e| panic!("{}: not an MP4 file: {e}", path.display()));
    assert_eq!(reader.tracks().len(), 1, "{}: one track", path.display());
    let track = reader.tracks().values().next().unwrap();
    assert_eq!(track.box_type().unwrap().to_string(), "avc1", "{}: codec", path.display());
    assert_eq!(track.sample_count(), TIME_STEPS, "{}: frames", path.display());
    let (w, h) = (track.width() as usize, track.height() as usize);
    assert!(w % 2 == 0 && h % 2 == 0, "{}: odd size {w}x{h}", path.display());
    assert!(w > stimulus_hw.1 && h > stimulus_hw.0, "{}: {w}x{h} is not larger than the stimulus", path.display());
}

/// summary.csv: a header and one row per MEI, each naming its figure (and video) in the layout.
fn check_summary(folder: &Path, expected: &BTreeMap<String, Kind>, sel: &Selection) {
    let text = std::fs::read_to_string(folder.join("summary.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    assert_eq!(&header[..4], ["kind", "layer_or_session", "index", "objective"], "summary.csv header");
    let figure_col = header.iter().position(|h| *h == "figure").expect("a figure column");
    let video_col = header.iter().position(|h| *h == "video").expect("a video column");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let mei_figures: BTreeSet<&String> = expected.iter().filter(|(_, k)| **k == Kind::MeiFigure).map(|(p, _)| p).collect();
    assert_eq!(rows.len(), mei_figures.len(), "summary.csv: one row per MEI");
    let mut named = BTreeSet::new();
    for row in &rows {
        assert_eq!(row.len(), header.len(), "summary.csv row {row:?}");
        assert!(row[3].parse::<f64>().is_ok_and(f64::is_finite), "summary.csv objective {row:?}");
        let figure = row[figure_col].to_string();
        assert!(figure.ends_with(&format!(".{}", sel.ext)), "{figure}");
        assert!(folder.join(&figure).is_file(), "summary.csv names {figure}, which is missing");
        if sel.videos {
            assert!(folder.join(row[video_col]).is_file(), "summary.csv names video {}, which is missing", row[video_col]);
        } else {
            assert_eq!(row[video_col], "", "no video column without videos");
        }
        named.insert(figure);
    }
    assert_eq!(named.iter().collect::<BTreeSet<_>>(), mei_figures, "summary.csv names each MEI figure once");
}

/// meis.safetensors: an MEI stimulus (1, C, T, H, W) for each MEI.
fn check_meis_file(folder: &Path, expected: &BTreeMap<String, Kind>, model: &Model<f32>) {
    let bytes = std::fs::read(folder.join("meis.safetensors")).unwrap();
    let (tensors, _) = retina::formats::safetensors::parse(&bytes, "meis.safetensors").unwrap();
    let meis: Vec<_> = tensors.iter().filter(|(name, _)| name.starts_with("mei.")).collect();
    let figures = expected.values().filter(|k| **k == Kind::MeiFigure).count();
    assert_eq!(meis.len(), figures, "meis.safetensors: one stimulus per MEI");
    let c = &model.config;
    for (name, t) in meis {
        assert_eq!(t.shape, vec![1, c.input_channels, TIME_STEPS as usize, c.height, c.width], "{name}");
    }
}

/// index.html links every figure with an <img> and every video with a <video>, and nothing else.
fn check_index(folder: &Path, expected: &BTreeMap<String, Kind>) {
    let html = std::fs::read_to_string(folder.join("index.html")).unwrap();
    let srcs = |tag: &str| -> BTreeSet<String> {
        html.split(&format!("<{tag} "))
            .skip(1)
            .map(|rest| {
                let start = rest.find("src=\"").expect("a src") + 5;
                rest[start..start + rest[start..].find('"').unwrap()].to_string()
            })
            .collect()
    };
    let figures: BTreeSet<String> =
        expected.iter().filter(|(_, k)| !matches!(k, Kind::Video | Kind::Other)).map(|(p, _)| p.clone()).collect();
    let videos: BTreeSet<String> = expected.iter().filter(|(_, k)| **k == Kind::Video).map(|(p, _)| p.clone()).collect();
    assert_eq!(html.matches("<img ").count(), figures.len(), "index.html: one <img> per figure");
    assert_eq!(html.matches("<video ").count(), videos.len(), "index.html: one <video> per mp4");
    assert_eq!(srcs("img"), figures, "index.html <img> sources");
    assert_eq!(srcs("video"), videos, "index.html <video> sources");
}

/// The whole check of a finished run: exact layout, every file readable.
fn check_run(folder: &Path, model: &Model<f32>, sel: &Selection) -> BTreeMap<String, Kind> {
    let expected = expected_files(&shape(model), sel);
    assert_exact_layout(folder, &expected);
    let stimulus_hw = (model.config.height, model.config.width);
    // Decoding ~400 figures is the slow part of the check: spread it over a few threads.
    let items: Vec<(&String, &Kind)> = expected.iter().collect();
    let workers = 4;
    std::thread::scope(|s| {
        for part in 0..workers {
            let items = &items;
            s.spawn(move || {
                for (path, kind) in items.iter().skip(part).step_by(workers) {
                    let p = folder.join(path);
                    match kind {
                        Kind::Video => check_video(&p, stimulus_hw),
                        Kind::Other => {}
                        _ => check_figure(&p, **kind, sel.ext, DPI),
                    }
                }
            });
        }
    });
    check_summary(folder, &expected, sel);
    if expected.contains_key("meis.safetensors") {
        check_meis_file(folder, &expected, model);
    }
    check_index(folder, &expected);
    expected
}

fn count(expected: &BTreeMap<String, Kind>, kind: Kind) -> usize {
    expected.values().filter(|k| **k == kind).count()
}

// ---------------------------------------------------------------------------------------------------
// 1. Full layout

#[test]
fn full_layout_example_low_res() {
    let spec = example();
    let model = load(&spec);
    // The known counts of the fixture, once: 2 layers of 16 channels on 2 colour channels, 3 sessions.
    let s = shape(&model);
    assert_eq!(s.layers, vec![(2, 16), (16, 16)]);
    assert_eq!(s.sessions.values().copied().collect::<Vec<_>>(), vec![8, 9, 11]);
    assert!(!s.ensemble);

    let dir = TempDir::new().unwrap();
    let out = dir.path().join("visualizations");
    let report = visualize(&spec, &out, &[]);
    let expected = check_run(&out, &model, &Selection::all("jpg"));
    assert_eq!(count(&expected, Kind::ConvWeights), 32 + 256);
    assert_eq!(count(&expected, Kind::ReadoutWeights), 8 + 9 + 11);
    assert_eq!(count(&expected, Kind::MeiFigure), 32 + 28);
    assert_eq!(count(&expected, Kind::Video), 32 + 28);
    let files = expected.len() - 4; // all but meis.safetensors, summary.csv, index.html and the state file
    assert_eq!(report, RunReport { meis: 60, optimised: 60, reused: 0, written: files, kept: 0 });
}

#[test]
fn full_layout_unified_low_res() {
    let spec = unified();
    let model = load(&spec);
    assert!(!shape(&model).ensemble);
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("vis");
    let report = visualize(&spec, &out, &[]);
    let expected = check_run(&out, &model, &Selection::all("jpg"));
    assert_eq!(report.written, expected.len() - 4);
    assert_eq!(report.meis, count(&expected, Kind::MeiFigure));
}

#[test]
fn full_layout_ensemble_member() {
    let spec = ensemble_member0();
    let model = load(&spec);
    assert!(shape(&model).ensemble, "the replica's members are Hoefling ensemble members");
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("vis_ensemble_0");
    let report = visualize(&spec, &out, &[]);
    let expected = check_run(&out, &model, &Selection::all("jpg"));
    // openretina's ensemble layout: conv weight folders at the top level, no weights_core.
    assert!(out.join("weights_layer_0").is_dir() && !out.join("weights_core").exists());
    assert_eq!(report.written, expected.len() - 4);
}

// ---------------------------------------------------------------------------------------------------
// 2. Image formats

#[test]
fn png_and_svg_are_used_for_every_figure() {
    let spec = example();
    let model = load(&spec);
    for ext in ["png", "svg"] {
        let dir = TempDir::new().unwrap();
        let out = dir.path().join(ext);
        visualize(&spec, &out, &["--image-file-format", ext, "--no-video"]);
        let sel = Selection { videos: false, ..Selection::all(ext) };
        let expected = check_run(&out, &model, &sel);
        assert_eq!(count(&expected, Kind::ConvWeights), 288, "{ext}: weight figures");
        assert!(!files_under(&out).iter().any(|f| f.ends_with(".jpg")), "{ext}: a jpg was written");
    }
}

// ---------------------------------------------------------------------------------------------------
// 3. Subsets

#[test]
fn subsets_write_exactly_what_was_asked() {
    let spec = example();
    let model = load(&spec);
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("subset");
    let report = visualize(
        &spec,
        &out,
        &["--layers", "1", "--sessions", SESSION_1, "--neurons", "0,2", "--no-video", "--no-weights"],
    );
    let sel = Selection {
        ext: "jpg",
        layers: Some(vec![1]),
        sessions: Some(vec![SESSION_1.into()]),
        neurons: Some(vec![0, 2]),
        videos: false,
        weights: false,
    };
    let expected = check_run(&out, &model, &sel);
    assert_eq!(count(&expected, Kind::MeiFigure), 16 + 2);
    assert!(expected.contains_key(&format!("output_neurons/{SESSION_1}/2.jpg")));
    assert_eq!(report, RunReport { meis: 18, optimised: 18, reused: 0, written: 18, kept: 0 });

    // Layers by name work too, and weight figures alone need no MEI.
    let out = dir.path().join("weights_only");
    let report = visualize(&spec, &out, &["--no-meis", "--no-video"]);
    let sel = Selection { layers: Some(vec![]), sessions: Some(vec![]), videos: false, ..Selection::all("jpg") };
    let expected = check_run(&out, &model, &sel);
    assert!(!expected.contains_key("meis.safetensors"));
    assert_eq!(report.written, 288 + 28);
    let out = dir.path().join("by_name");
    visualize(&spec, &out, &["--layers", "core_features_layer0", "--sessions", SESSION_1, "--neurons", "1", "--no-video", "--no-weights"]);
    let sel = Selection {
        layers: Some(vec![0]),
        sessions: Some(vec![SESSION_1.into()]),
        neurons: Some(vec![1]),
        videos: false,
        weights: false,
        ext: "jpg",
    };
    check_run(&out, &model, &sel);
}

// ---------------------------------------------------------------------------------------------------
// 4. Resume

fn mtimes(folder: &Path) -> BTreeMap<String, SystemTime> {
    files_under(folder)
        .into_iter()
        .map(|f| {
            let t = std::fs::metadata(folder.join(&f)).unwrap().modified().unwrap();
            (f, t)
        })
        .collect()
}

/// Files whose modification time changed, among those that existed before.
fn touched(before: &BTreeMap<String, SystemTime>, after: &BTreeMap<String, SystemTime>) -> BTreeSet<String> {
    before.iter().filter(|(f, t)| after.get(*f) != Some(t)).map(|(f, _)| f.clone()).collect()
}

/// Files every run rewrites (cheap, and they describe the run).
fn always_rewritten() -> BTreeSet<String> {
    ["summary.csv", "index.html", STATE_FILE].iter().map(|s| s.to_string()).collect()
}

#[test]
fn resume_keeps_finished_work_and_redoes_what_changed() {
    let spec = example();
    let model = load(&spec);
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("vis");
    let subset = ["--layers", "1", "--sessions", SESSION_1, "--neurons", "0,2"];
    let sel = Selection {
        layers: Some(vec![1]),
        sessions: Some(vec![SESSION_1.into()]),
        neurons: Some(vec![0, 2]),
        ..Selection::all("jpg")
    };
    let first = visualize(&spec, &out, &subset);
    let expected = check_run(&out, &model, &sel);
    let outputs = expected.len() - 4;
    assert_eq!(first, RunReport { meis: 18, optimised: 18, reused: 0, written: outputs, kept: 0 });

    // The same command again: nothing optimised or drawn, every file kept as it was.
    let before = mtimes(&out);
    let meis_before = std::fs::read(out.join("meis.safetensors")).unwrap();
    let again = visualize(&spec, &out, &subset);
    assert_eq!(again, RunReport { meis: 18, optimised: 0, reused: 18, written: 0, kept: outputs });
    let after = mtimes(&out);
    assert_eq!(touched(&before, &after).difference(&always_rewritten()).count(), 0, "a resumed run rewrote files");
    check_run(&out, &model, &sel);

    // One figure and one video deleted: just those come back.
    let figure = format!("output_neurons/{SESSION_1}/2.jpg");
    let video = "core_features_layer1/3.mp4";
    std::fs::remove_file(out.join(&figure)).unwrap();
    std::fs::remove_file(out.join(video)).unwrap();
    let before = mtimes(&out);
    let restored = visualize(&spec, &out, &subset);
    assert_eq!(restored, RunReport { meis: 18, optimised: 0, reused: 18, written: 2, kept: outputs - 2 });
    assert_eq!(touched(&before, &mtimes(&out)).difference(&always_rewritten()).count(), 0);
    check_run(&out, &model, &sel);
    assert!(std::fs::read(out.join("meis.safetensors")).unwrap() == meis_before, "meis.safetensors changed");

    // Another seed: new MEIs, every file redone.
    let mut seeded = subset.to_vec();
    seeded.extend(["--seed", "1"]);
    let before = mtimes(&out);
    let reseeded = visualize(&spec, &out, &seeded);
    assert_eq!(reseeded, RunReport { meis: 18, optimised: 18, reused: 0, written: outputs, kept: 0 });
    let after = mtimes(&out);
    assert_eq!(touched(&before, &after).len(), before.len(), "another seed must redo every file");
    let meis_seed1 = std::fs::read(out.join("meis.safetensors")).unwrap();
    assert!(meis_seed1 != meis_before, "another seed gave the same MEIs");
    check_run(&out, &model, &sel);

    // ... which is then what a rerun resumes,
    assert_eq!(visualize(&spec, &out, &seeded), RunReport { meis: 18, optimised: 0, reused: 18, written: 0, kept: outputs });
    // ... unless --overwrite, which redoes everything, to the same MEIs.
    seeded.push("--overwrite");
    let before = mtimes(&out);
    let overwritten = visualize(&spec, &out, &seeded);
    assert_eq!(overwritten, RunReport { meis: 18, optimised: 18, reused: 0, written: outputs, kept: 0 });
    assert_eq!(touched(&before, &mtimes(&out)).len(), before.len(), "--overwrite must redo every file");
    assert!(std::fs::read(out.join("meis.safetensors")).unwrap() == meis_seed1, "--overwrite gave other MEIs");
    check_run(&out, &model, &sel);
}

/// Start `retina visualize` and kill it as soon as `ready` says so; false if it ended by itself first.
fn run_and_kill(args: &[String], ready: impl Fn() -> bool) -> bool {
    let mut child: Child = retina_cmd(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false; // finished before the moment came: nothing to interrupt
        }
        if ready() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A run with new settings that is killed half-way must not be taken for finished by the next run:
/// no MEI or figure of the old settings may survive as if it were new.
#[test]
fn an_interrupted_run_with_new_settings_is_not_resumed_from_stale_files() {
    let spec = example();
    let model = load(&spec);
    let dir = TempDir::new().unwrap();
    let subset = ["--layers", "0", "--sessions", SESSION_1, "--neurons", "0", "--no-video"];
    let sel = Selection {
        layers: Some(vec![0]),
        sessions: Some(vec![SESSION_1.into()]),
        neurons: Some(vec![0]),
        videos: false,
        ..Selection::all("jpg")
    };
    let args = |folder: &Path, dpi: u32, extra: &[&str]| -> Vec<String> {
        let mut a = strings(&["visualize"]);
        a.extend(model_args(&spec));
        a.extend(strings(&["--save-folder", &folder.display().to_string(), "--dpi", &dpi.to_string()]));
        a.extend(strings(&subset));
        a.extend(strings(extra));
        a
    };

    // What seed 1 gives from scratch.
    let fresh = dir.path().join("fresh");
    visualize(&spec, &fresh, &[&subset[..], &["--seed", "1"]].concat());

    // Seed 0 finished, then seed 1 killed while it optimises (right after it starts).
    let out = dir.path().join("vis");
    visualize(&spec, &out, &subset);
    let state = out.join(STATE_FILE);
    let state0 = std::fs::read(&state).unwrap();
    let killed = run_and_kill(&args(&out, DPI, &["--seed", "1"]), || std::fs::read(&state).ok().as_ref() != Some(&state0));
    assert!(killed, "the run ended before it could be interrupted");
    visualize(&spec, &out, &[&subset[..], &["--seed", "1"]].concat());
    check_run(&out, &model, &sel);
    assert!(
        std::fs::read(out.join("meis.safetensors")).unwrap() == std::fs::read(fresh.join("meis.safetensors")).unwrap(),
        "the rerun kept the MEIs of the old seed"
    );
    for f in files_under(&fresh) {
        assert!(std::fs::read(out.join(&f)).unwrap() == std::fs::read(fresh.join(&f)).unwrap(), "{f} differs from a fresh run");
    }

    // Then a run at another dpi, killed while it draws (right after it saved its MEIs).
    let meis = out.join("meis.safetensors");
    let saved = std::fs::metadata(&meis).unwrap().modified().unwrap();
    let new_args = args(&out, DPI + 1, &["--seed", "1"]);
    // (If it finishes drawing before it is killed, there is nothing to check but a normal rerun.)
    run_and_kill(&new_args, || std::fs::metadata(&meis).and_then(|m| m.modified()).is_ok_and(|t| t != saved));
    let rerun = retina(&new_args);
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    assert_exact_layout(&out, &expected_files(&shape(&model), &sel));
    for (f, kind) in expected_files(&shape(&model), &sel) {
        if !matches!(kind, Kind::Other | Kind::Video) {
            let img = image::open(out.join(&f)).unwrap();
            let want = figure_size(kind, DPI + 1);
            assert_eq!((img.width(), img.height()), want, "{f}: a figure of the interrupted run's old dpi survived");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// 5. Determinism

#[test]
fn same_command_gives_byte_identical_meis() {
    let spec = example();
    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let common = ["--no-video", "--no-weights", "--overwrite"];
    visualize(&spec, &a, &common);
    // One worker thread for the second: the result may not depend on how the work is spread.
    visualize(&spec, &b, &[&common[..], &["--threads", "1"]].concat());
    let (ma, mb) = (std::fs::read(a.join("meis.safetensors")).unwrap(), std::fs::read(b.join("meis.safetensors")).unwrap());
    assert!(ma == mb, "meis.safetensors differs between two identical runs");
    assert!(std::fs::read(a.join("summary.csv")).unwrap() == std::fs::read(b.join("summary.csv")).unwrap(), "summary.csv differs");
}

// ---------------------------------------------------------------------------------------------------
// 6. The page in a real browser

/// Chromium: found, or installed with apt-get. `Err` says why it cannot be had.
fn chromium() -> Result<PathBuf, String> {
    let find = || {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/snap/bin/chromium"].iter().map(PathBuf::from).find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run apt-get ({e})"))
    };
    let install = apt(&["install", "-y", "chromium"])?;
    if !install.status.success() {
        let update = apt(&["update"])?;
        let again = apt(&["install", "-y", "chromium"])?;
        if !again.status.success() {
            return Err(format!(
                "`apt-get install -y chromium` failed (apt-get update: {}): {}",
                update.status,
                String::from_utf8_lossy(&again.stderr).lines().last().unwrap_or("")
            ));
        }
    }
    find().ok_or_else(|| "apt-get installed chromium but /usr/bin/chromium is missing".to_string())
}

/// Run headless Chromium on a page with the given mode flags; killed after 60 s.
fn run_chromium(chromium: &Path, work: &Path, page: &Path, mode: &[String], stdout: &Path) -> std::process::ExitStatus {
    let profile = TempDir::new_in(work).unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(mode)
        .arg(format!("file://{}", page.display()))
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(File::create(stdout).unwrap())
        .stderr(File::create(work.join("chromium.stderr")).unwrap())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s on {}", page.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// index.html in headless Chromium: every <img> decodes and every <video> loads its MP4 (checked by
/// a small script in a copy of the page that waits for them), and a screenshot is not blank.
#[test]
fn index_html_renders_in_chromium() {
    let chromium = match chromium() {
        Ok(p) => p,
        Err(why) => {
            // Straight to stderr, past the test harness's capture, so that the skip shows in every run.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED index_html_renders_in_chromium: Chromium cannot be installed here: {why}");
            return;
        }
    };
    let spec = example();
    let model = load(&spec);
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("vis");
    // One session's neurons and one layer's channels, with videos and all weight figures.
    visualize(&spec, &out, &["--layers", "1", "--sessions", SESSION_1]);
    let sel = Selection { layers: Some(vec![1]), sessions: Some(vec![SESSION_1.into()]), ..Selection::all("jpg") };
    let expected = check_run(&out, &model, &sel);
    let figures = expected.values().filter(|k| !matches!(k, Kind::Video | Kind::Other)).count();
    let videos = count(&expected, Kind::Video);
    let work = TempDir::new().unwrap();

    // The probe: the same page (resolved against the output folder), loading everything eagerly, and a
    // script that reports how many images decoded and how many videos have their metadata.
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let probe = html
        .replace("loading=\"lazy\"", "loading=\"eager\"")
        .replacen("<head>", &format!("<head><base href=\"file://{}/\">", out.display()), 1)
        .replace(
            "</body>",
            r#"<script>
window.addEventListener('load', async () => {
  const imgs = [...document.images];
  const vids = [...document.querySelectorAll('video')];
  await Promise.all(vids.map(v => new Promise(done => {
    if (v.readyState >= 1) return done();
    v.addEventListener('loadedmetadata', done); v.addEventListener('error', done); v.load();
  })));
  const loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const playable = vids.filter(v => v.readyState >= 1 && v.videoWidth > 0).length;
  const p = document.createElement('pre'); p.id = 'retina-probe';
  p.textContent = 'images=' + imgs.length + ' loaded=' + loaded + ' videos=' + vids.length + ' playable=' + playable;
  document.body.appendChild(p);
});
</script></body>"#,
        );
    assert!(probe != html, "index.html has no </body>");
    let probe_page = work.path().join("probe.html");
    std::fs::write(&probe_page, probe).unwrap();
    let dom_file = work.path().join("dom.html");
    let status = run_chromium(
        &chromium,
        work.path(),
        &probe_page,
        &strings(&["--virtual-time-budget=30000", "--dump-dom"]),
        &dom_file,
    );
    let dom = std::fs::read_to_string(&dom_file).unwrap();
    let stderr = std::fs::read_to_string(work.path().join("chromium.stderr")).unwrap_or_default();
    assert!(status.success() && !dom.is_empty(), "chromium --dump-dom failed ({status}): {stderr}");
    assert_eq!(dom.matches("<img ").count(), figures, "DOM: one <img> per figure");
    assert_eq!(dom.matches("<video ").count(), videos, "DOM: one <video> per mp4");
    let marker = "<pre id=\"retina-probe\">";
    let result = dom
        .split(marker)
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or_else(|| panic!("the probe script did not report; chromium said: {stderr}"));
    assert_eq!(
        result,
        format!("images={figures} loaded={figures} videos={videos} playable={videos}"),
        "images or videos that Chromium could not load"
    );

    // The page itself, as a user opens it: a screenshot with figures on it.
    let shot = work.path().join("shot.png");
    let status = run_chromium(
        &chromium,
        work.path(),
        &out.join("index.html"),
        &strings(&["--virtual-time-budget=10000", "--window-size=1280,1600", &format!("--screenshot={}", shot.display())]),
        &work.path().join("screenshot.stdout"),
    );
    assert!(status.success() && shot.is_file(), "chromium --screenshot failed ({status})");
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1280, 1600));
    let non_white = img.pixels().filter(|p| p.0.iter().any(|&v| v < 230)).count();
    let colours: BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    // A blank page has no non-white pixels and a handful of colours; how much of the window figures
    // cover depends on how many lazy images loaded in time (9% on a loaded machine, more when idle).
    assert!(
        non_white * 50 > img.pixels().len() && colours.len() > 100,
        "the screenshot of index.html looks blank ({non_white} non-white pixels, {} colours)",
        colours.len()
    );
    // Nothing was written into the output folder by the browser checks.
    assert_exact_layout(&out, &expected);
}

// ---------------------------------------------------------------------------------------------------
// 7. Errors: one line on stderr, exit code 2, no panic, nothing written

fn assert_one_line_error(args: &[String], must_contain: &[&str]) -> String {
    let out = retina(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "exit code for {args:?}; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line for {args:?}:\n{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(out.stdout.is_empty(), "stdout for {args:?}: {}", String::from_utf8_lossy(&out.stdout));
    for m in must_contain {
        assert!(stderr.contains(m), "error for {args:?} does not mention `{m}`: {stderr}");
    }
    stderr
}

#[test]
fn errors_are_one_line_with_exit_code_2() {
    let dir = TempDir::new().unwrap();
    let save = dir.path().join("never");
    let save_s = save.display().to_string();
    let example = example().path.display().to_string();
    let vis = |extra: &[&str]| -> Vec<String> {
        let mut a = strings(&["visualize", "--save-folder", &save_s, "--dpi", "20", "--no-video"]);
        a.extend(strings(extra));
        a
    };

    assert_one_line_error(&vis(&["--model-path", "no_such_model_2024"]), &["no_such_model_2024", "hoefling_2024_base_low_res"]);
    let missing = dir.path().join("missing.ckpt").display().to_string();
    assert_one_line_error(&vis(&["--model-path", &missing]), &[&missing]);
    assert_one_line_error(&vis(&["--model-path", &example, "--device", "cuda"]), &["--device", "cuda", "cpu"]);
    assert_one_line_error(&vis(&["--model-path", &example, "--image-file-format", "gif"]), &["gif", "jpg"]);
    assert_one_line_error(
        &vis(&["--model-path", &example, "--is-hoefling-ensemble-model"]),
        &["--model-path", "--is-hoefling-ensemble-model"],
    );
    assert_one_line_error(&vis(&[]), &["--model-path"]);
    assert_one_line_error(&vis(&["--model-path", &example, "--layers", "7"]), &["7", "core_features_layer1"]);
    assert_one_line_error(&vis(&["--model-path", &example, "--sessions", "nope"]), &["nope", SESSION_1]);
    assert_one_line_error(&vis(&["--model-path", &example, "--neurons", "99"]), &["99"]);
    let empty_cache = TempDir::new().unwrap();
    let cache_s = empty_cache.path().display().to_string();
    assert_one_line_error(
        &vis(&["--is-hoefling-ensemble-model", "--offline", "--cache-dir", &cache_s]),
        &["https://", &cache_s, "--offline"],
    );
    assert!(!save.exists(), "a failed run left {}", save.display());

    // A save folder inside a regular file cannot be created.
    let file = dir.path().join("a_file");
    std::fs::write(&file, b"not a folder").unwrap();
    let under_file = file.join("vis").display().to_string();
    let mut args = strings(&["visualize", "--model-path", &example, "--save-folder", &under_file, "--no-video"]);
    args.extend(strings(&["--layers", "0", "--sessions", SESSION_1, "--neurons", "0"]));
    assert_one_line_error(&args, &[&under_file]);
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
}
