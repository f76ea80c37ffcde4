//! Helpers of the `visualize` tests: running the binary, the layout a run must write (derived from
//! the model), and checks of every kind of file. Included by `#[path]` from the visualize tests only.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::fixture;
use retina::formats::download::DownloadOptions;
use retina::model::config::Architecture;
use retina::model::Model;

pub const BIN: &str = env!("CARGO_BIN_EXE_retina");
pub const DPI: u32 = 20;
/// Frames of the optimised stimulus (`--time-steps-stimulus`, openretina's default).
pub const TIME_STEPS: u32 = 50;
/// Figure sizes in inches, as openretina's matplotlib figures.
pub const MEI_INCHES: (u32, u32) = (21, 12);
pub const CONV_INCHES: (u32, u32) = (18, 6);
/// A conv weight figure without sine/cosine weights (`full`, `separable`, `time_independent`): two panels.
pub const CONV_TWO_PANEL_INCHES: (u32, u32) = (12, 6);
pub const READOUT_INCHES: (u32, u32) = (12, 6);
/// The folder's state (the plan of the run that owns it) and its locks.
pub const STATE_FILE: &str = ".retina-visualize/state.json";
pub const STATE_FILES: [&str; 3] = [STATE_FILE, ".retina-visualize/lock", ".retina-visualize/running"];
pub const SESSION_1: &str = "session_1_ventral1_20200226";

// ---------------------------------------------------------------------------------------------------
// Running the binary

pub fn retina_cmd(args: &[String]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    // Never touch the user's cache, whatever a test does.
    cmd.env("OPENRETINA_CACHE_DIRECTORY", std::env::temp_dir().join("retina-visualize-test-cache-unused"));
    cmd.stdin(Stdio::null());
    cmd
}

pub fn retina(args: &[String]) -> Output {
    retina_cmd(args).output().expect("run the retina binary")
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The model options of a fixture spec: a file, or `folder#id` for an ensemble member.
pub fn model_args(spec: &ModelSpec) -> Vec<String> {
    let mut args = vec!["--model-path".to_string(), spec.path.display().to_string()];
    if let Some(id) = spec.model_id {
        args.extend(["--model-id".to_string(), id.to_string()]);
    }
    args
}

/// `retina visualize` that must succeed; returns the counts of its last stdout line.
pub fn visualize(spec: &ModelSpec, folder: &Path, extra: &[&str]) -> RunReport {
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
pub struct RunReport {
    pub meis: usize,
    pub optimised: usize,
    pub reused: usize,
    pub written: usize,
    pub kept: usize,
}

impl RunReport {
    pub fn parse(line: &str) -> RunReport {
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

pub struct ModelSpec {
    pub path: PathBuf,
    pub model_id: Option<i64>,
}

pub fn example() -> ModelSpec {
    ModelSpec { path: fixture("example_low_res/model.ckpt"), model_id: None }
}

pub fn unified() -> ModelSpec {
    ModelSpec { path: fixture("unified_low_res/model.ckpt"), model_id: None }
}

pub fn ensemble_member0() -> ModelSpec {
    ModelSpec { path: fixture("ensemble_replica/ensemble"), model_id: Some(0) }
}

pub fn load(spec: &ModelSpec) -> Model<f32> {
    let offline = DownloadOptions { cache_dir: None, offline: true, quiet: true, ..Default::default() };
    let raw = retina::formats::read_model(&spec.path.display().to_string(), spec.model_id.unwrap_or(-1), &offline)
        .unwrap_or_else(|e| panic!("{}: {e}", spec.path.display()));
    Model::from_raw(&raw).unwrap()
}

/// What a run was asked for.
pub struct Selection {
    pub ext: &'static str,
    pub layers: Option<Vec<usize>>,
    pub sessions: Option<Vec<String>>,
    pub neurons: Option<Vec<usize>>,
    pub videos: bool,
    pub weights: bool,
}

impl Selection {
    pub fn all(ext: &'static str) -> Selection {
        Selection { ext, layers: None, sessions: None, neurons: None, videos: true, weights: true }
    }
}

/// The model's shape in the terms of the layout: (in, out) channels per core layer, neurons per session.
pub struct Shape {
    pub layers: Vec<(usize, usize)>,
    /// Per core layer: its weight figures have the sine/cosine panel (`custom_separable`).
    pub sin_cos: Vec<bool>,
    pub sessions: BTreeMap<String, usize>,
    pub ensemble: bool,
}

pub fn shape(model: &Model<f32>) -> Shape {
    Shape {
        layers: (0..model.core.n_layers()).map(|l| model.core.layer_kernel(l).unwrap().kernel_channels().unwrap()).collect(),
        sin_cos: (0..model.core.n_layers()).map(|l| !model.core.layer_kernel(l).unwrap().kernel(0, 0).unwrap().sin.is_empty()).collect(),
        sessions: model.readouts.iter().map(|(s, r)| (s.clone(), r.neurons())).collect(),
        ensemble: matches!(model.config.architecture, Architecture::HoeflingEnsembleMember { .. }),
    }
}

/// Kinds of file in the layout, to check each by what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MeiFigure,
    Video,
    ConvWeights,
    ReadoutWeights,
    Other,
}

/// Every file (relative path with `/`) openretina's layout holds for this model and selection.
pub fn expected_files(shape: &Shape, sel: &Selection) -> BTreeMap<String, Kind> {
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
    for f in ["summary.csv", "index.html"].into_iter().chain(STATE_FILES) {
        files.insert(f.into(), Kind::Other);
    }
    files
}

/// Every file under `dir`, hidden ones included, as relative paths with `/`.
pub fn files_under(dir: &Path) -> BTreeSet<String> {
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

pub fn assert_exact_layout(folder: &Path, expected: &BTreeMap<String, Kind>) {
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

pub fn inches_px(inches: (u32, u32), dpi: u32) -> (u32, u32) {
    (inches.0 * dpi, inches.1 * dpi)
}

pub fn figure_size(kind: Kind, dpi: u32) -> (u32, u32) {
    match kind {
        Kind::MeiFigure => inches_px(MEI_INCHES, dpi),
        Kind::ConvWeights => inches_px(CONV_INCHES, dpi),
        Kind::ReadoutWeights => inches_px(READOUT_INCHES, dpi),
        _ => unreachable!("not a figure"),
    }
}

/// A raster figure: decodes, has the size of its figure at `dpi`, and is not blank (a drawing, not one
/// flat colour: at least 2% of the pixels differ from the most common colour, at least 8 colours).
pub fn check_raster(path: &Path, size: (u32, u32)) {
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
pub fn check_svg(path: &Path, size: (u32, u32)) {
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

pub fn check_figure(path: &Path, size: (u32, u32), ext: &str) {
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
pub fn check_video(path: &Path, stimulus_hw: (usize, usize)) {
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
pub fn check_summary(folder: &Path, expected: &BTreeMap<String, Kind>, sel: &Selection) {
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
pub fn check_meis_file(folder: &Path, expected: &BTreeMap<String, Kind>, model: &Model<f32>) {
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
pub fn check_index(folder: &Path, expected: &BTreeMap<String, Kind>) {
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
pub fn check_run(folder: &Path, model: &Model<f32>, sel: &Selection) -> BTreeMap<String, Kind> {
    let expected = expected_files(&shape(model), sel);
    assert_exact_layout(folder, &expected);
    let stimulus_hw = (model.config.height, model.config.width);
    let sin_cos = shape(model).sin_cos;
    // A weight figure's size follows its layer's kernel kind (`weights_layer_<l>/`).
    let size = |path: &str, kind: Kind| -> (u32, u32) {
        let layer = path.split("weights_layer_").nth(1).and_then(|r| r.split('/').next()).and_then(|l| l.parse::<usize>().ok());
        match (kind, layer) {
            (Kind::ConvWeights, Some(l)) if !sin_cos[l] => inches_px(CONV_TWO_PANEL_INCHES, DPI),
            _ => figure_size(kind, DPI),
        }
    };
    // Decoding ~400 figures is the slow part of the check: spread it over a few threads.
    let items: Vec<(&String, &Kind)> = expected.iter().collect();
    let workers = 4;
    std::thread::scope(|s| {
        for part in 0..workers {
            let items = &items;
            let size = &size;
            s.spawn(move || {
                for (path, kind) in items.iter().skip(part).step_by(workers) {
                    let p = folder.join(path);
                    match kind {
                        Kind::Video => check_video(&p, stimulus_hw),
                        Kind::Other => {}
                        _ => check_figure(&p, size(path, **kind), sel.ext),
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

/// Figures and videos: all but meis.safetensors, summary.csv, index.html and the state.
pub fn drawn(expected: &BTreeMap<String, Kind>) -> usize {
    expected.values().filter(|k| **k != Kind::Other).count()
}

pub fn count(expected: &BTreeMap<String, Kind>, kind: Kind) -> usize {
    expected.values().filter(|k| **k == kind).count()
}


pub fn mtimes(folder: &Path) -> BTreeMap<String, SystemTime> {
    files_under(folder)
        .into_iter()
        .map(|f| {
            let t = std::fs::metadata(folder.join(&f)).unwrap().modified().unwrap();
            (f, t)
        })
        .collect()
}

/// Files whose modification time changed, among those that existed before.
pub fn touched(before: &BTreeMap<String, SystemTime>, after: &BTreeMap<String, SystemTime>) -> BTreeSet<String> {
    before.iter().filter(|(f, t)| after.get(*f) != Some(t)).map(|(f, _)| f.clone()).collect()
}

/// Start `retina visualize` and kill it as soon as `ready` says so; false if it ended by itself first.
pub fn run_and_kill(args: &[String], ready: impl Fn() -> bool) -> bool {
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


/// A run that must fail: exit code 2, one line on stderr, nothing on stdout; returns the line.
pub fn assert_one_line_error(args: &[String], must_contain: &[&str]) -> String {
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

