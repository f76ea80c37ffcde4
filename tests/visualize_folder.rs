//! The save folder's rules, through the real binary: it holds exactly the outputs of the run that last
//! finished (outputs of other settings go, files retina did not write stay or the run is refused), a
//! run with other settings is kept out while one works, and shards of one run share the folder and
//! merge to the bytes of a single run.

mod common;
#[path = "common/visualize.rs"]
mod vis;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;

use tempfile::TempDir;
use vis::*;

/// A small subset with videos: 16 inner channels and 2 neurons of one session.
const SUBSET: [&str; 6] = ["--layers", "0", "--sessions", SESSION_1, "--neurons", "0,1"];

fn subset_selection(ext: &'static str, neurons: &[usize], videos: bool) -> Selection {
    Selection {
        layers: Some(vec![0]),
        sessions: Some(vec![SESSION_1.into()]),
        neurons: Some(neurons.to_vec()),
        videos,
        weights: false,
        ..Selection::all(ext)
    }
}

/// Files the user put into the folder: beside the outputs, and inside an output folder.
const FOREIGN: [(&str, &[u8]); 3] = [
    ("notes.txt", b"my notes"),
    ("core_features_layer0/my_figure.jpg", b"not retina's"),
    ("output_neurons/keep.csv", b"a,b\n"),
];

fn put_foreign(folder: &Path) {
    for (f, bytes) in FOREIGN {
        let p = folder.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// The layout of a run plus the user's files, which must be untouched.
fn check_with_foreign(folder: &Path, model: &retina::model::Model<f32>, sel: &Selection) {
    let mut expected = expected_files(&shape(model), sel);
    for (f, bytes) in FOREIGN {
        assert_eq!(std::fs::read(folder.join(f)).unwrap(), bytes, "{f} was changed");
        expected.insert(f.to_string(), Kind::Other);
    }
    assert_exact_layout(folder, &expected);
}

#[test]
fn a_run_with_other_settings_leaves_only_its_own_outputs_and_the_users_files() {
    let spec = example();
    let model = load(&spec);
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("vis");
    put_foreign(&out);

    visualize(&spec, &out, &[&SUBSET[..], &["--no-weights"]].concat());
    check_run_ignoring(&out, &model, &subset_selection("jpg", &[0, 1], true));
    check_with_foreign(&out, &model, &subset_selection("jpg", &[0, 1], true));

    // png after jpg leaves no jpg; --seed 1 --no-video leaves no seed-0 video.
    let report = visualize(&spec, &out, &[&SUBSET[..], &["--no-weights", "--image-file-format", "png", "--seed", "1", "--no-video"]].concat());
    assert_eq!(report.reused, 0, "MEIs of seed 0 were taken for seed 1");
    check_with_foreign(&out, &model, &subset_selection("png", &[0, 1], false));
    let fresh = dir.path().join("fresh");
    visualize(&spec, &fresh, &[&SUBSET[..], &["--no-weights", "--image-file-format", "png", "--seed", "1", "--no-video"]].concat());
    assert!(
        std::fs::read(out.join("meis.safetensors")).unwrap() == std::fs::read(fresh.join("meis.safetensors")).unwrap(),
        "the MEIs differ from a fresh run's"
    );

    // A smaller subset leaves no figure of the MEIs it does not make, and meis.safetensors shrinks.
    visualize(&spec, &out, &["--layers", "0", "--sessions", SESSION_1, "--neurons", "0", "--no-weights", "--image-file-format", "png", "--seed", "1", "--no-video"]);
    check_with_foreign(&out, &model, &subset_selection("png", &[0], false));
    check_run_ignoring(&out, &model, &subset_selection("png", &[0], false));
    assert!(!out.join(format!("output_neurons/{SESSION_1}/1.png")).exists());
}

/// `check_run` on a folder that also holds the user's files: checked on a copy without them.
fn check_run_ignoring(folder: &Path, model: &retina::model::Model<f32>, sel: &Selection) {
    let copy = TempDir::new().unwrap();
    let foreign: BTreeSet<&str> = FOREIGN.iter().map(|(f, _)| *f).collect();
    for f in files_under(folder) {
        if !foreign.contains(f.as_str()) {
            let to = copy.path().join(&f);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(folder.join(&f), to).unwrap();
        }
    }
    check_run(copy.path(), model, sel);
}

#[test]
fn a_file_retina_did_not_write_is_never_overwritten_without_overwrite() {
    let spec = example();
    let model = load(&spec);
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("vis");
    std::fs::create_dir_all(out.join("core_features_layer0")).unwrap();
    std::fs::write(out.join("index.html"), b"my page").unwrap();
    std::fs::write(out.join("core_features_layer0/3.jpg"), b"my figure").unwrap();
    let mut args = strings(&["visualize"]);
    args.extend(model_args(&spec));
    args.extend(strings(&["--save-folder", &out.display().to_string(), "--dpi", "20", "--no-weights", "--no-video"]));
    args.extend(strings(&SUBSET));
    let stderr = assert_one_line_error(&args, &["--overwrite", "2 files"]);
    assert!(stderr.contains("index.html") || stderr.contains("3.jpg"), "{stderr}");
    assert_eq!(std::fs::read(out.join("index.html")).unwrap(), b"my page");
    assert_eq!(files_under(&out).len(), 2, "a refused run wrote into the folder: {:?}", files_under(&out));

    args.push("--overwrite".into());
    let run = retina(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    check_run(&out, &model, &subset_selection("jpg", &[0, 1], false));
}

#[test]
fn a_run_with_other_settings_is_refused_while_one_works_in_the_folder() {
    let spec = example();
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("vis");
    let base = [&SUBSET[..], &["--no-weights", "--no-video"]].concat();
    visualize(&spec, &out, &base);
    let meis = std::fs::read(out.join("meis.safetensors")).unwrap();

    // A run at work holds the folder's `running` lock shared (as this test now does).
    let lock = std::fs::OpenOptions::new().write(true).open(out.join(".retina-visualize/running")).unwrap();
    lock.lock_shared().unwrap();
    let mut other = strings(&["visualize"]);
    other.extend(model_args(&spec));
    other.extend(strings(&["--save-folder", &out.display().to_string(), "--dpi", "20", "--seed", "1"]));
    other.extend(strings(&base));
    assert_one_line_error(&other, &[".retina-visualize/running", "other settings", "--save-folder"]);
    assert!(std::fs::read(out.join("meis.safetensors")).unwrap() == meis, "the refused run changed the folder");
    // --overwrite would remove the working run's files: refused too.
    let mut overwrite = other.clone();
    overwrite.retain(|a| a != "--seed" && a != "1");
    overwrite.push("--overwrite".into());
    assert_one_line_error(&overwrite, &[".retina-visualize/running"]);
    // The same settings (another shard of the same run) join it.
    let same = visualize(&spec, &out, &base);
    assert_eq!((same.optimised, same.written), (0, 0));
    // Once the run is over, the other settings may have the folder.
    lock.unlock().unwrap();
    let reseeded = visualize(&spec, &out, &[&base[..], &["--seed", "1"]].concat());
    assert_eq!(reseeded.optimised, 18);
}

/// Every file of a finished run but the folder's state, with its bytes.
fn outputs(folder: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(folder)
        .into_iter()
        .filter(|f| !f.starts_with(".retina-visualize/"))
        .map(|f| {
            let bytes = std::fs::read(folder.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

fn assert_same_outputs(a: &Path, b: &Path) {
    let (oa, ob) = (outputs(a), outputs(b));
    assert_eq!(oa.keys().collect::<Vec<_>>(), ob.keys().collect::<Vec<_>>(), "the file lists differ");
    let differing: Vec<&String> = oa.iter().filter(|(f, bytes)| ob[*f] != **bytes).map(|(f, _)| f).collect();
    assert!(differing.is_empty(), "{} files differ from a single run's, e.g. {:?}", differing.len(), &differing[..differing.len().min(5)]);
}

#[test]
fn three_concurrent_shards_merge_to_the_bytes_of_a_single_run() {
    let spec = example();
    let model = load(&spec);
    let dir = TempDir::new().unwrap();
    // Two layers' channels, one session's neurons and every weight figure; no videos, to keep it short.
    let settings = ["--sessions", SESSION_1, "--no-video"];
    let single = dir.path().join("single");
    visualize(&spec, &single, &settings);
    let sel = Selection { sessions: Some(vec![SESSION_1.into()]), videos: false, ..Selection::all("jpg") };

    let sharded = dir.path().join("sharded");
    let args = |k: usize| -> Vec<String> {
        let mut a = strings(&["visualize"]);
        a.extend(model_args(&spec));
        a.extend(strings(&["--save-folder", &sharded.display().to_string(), "--dpi", &DPI.to_string(), "--shard", &format!("{k}/3")]));
        a.extend(strings(&settings));
        a
    };
    let children: Vec<_> =
        (0..3).map(|k| retina_cmd(&args(k)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()).collect();
    let mut reports = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "a shard failed: {}", String::from_utf8_lossy(&out.stderr));
        reports.push(RunReport::parse(stdout.lines().last().unwrap()));
    }
    // Each shard did its own third of the MEIs, and together all of them, once.
    let meis = 32 + model.readouts[SESSION_1].neurons();
    assert_eq!(reports.iter().map(|r| r.optimised).sum::<usize>(), meis);
    assert!(reports.iter().all(|r| r.optimised.abs_diff(meis / 3) <= 1), "unbalanced shards: {reports:?}");
    check_run(&sharded, &model, &sel);
    assert_same_outputs(&sharded, &single);

    // `--merge` writes the same again from the merged MEIs.
    let merge = retina(&strings(&["visualize", "--merge", "--save-folder", &sharded.display().to_string()]));
    assert!(merge.status.success(), "{}", String::from_utf8_lossy(&merge.stderr));
    assert_same_outputs(&sharded, &single);
}

#[test]
fn a_killed_shard_redoes_only_its_own_missing_work() {
    let spec = example();
    let model = load(&spec);
    let dir = TempDir::new().unwrap();
    let settings = ["--sessions", SESSION_1, "--no-video", "--no-weights", "--batch-size", "4"];
    let single = dir.path().join("single");
    visualize(&spec, &single, &settings);

    let sharded = dir.path().join("sharded");
    let shard = |k: usize| -> Vec<&str> { [&settings[..], &["--shard", ["0/3", "1/3", "2/3"][k]]].concat() };
    visualize(&spec, &sharded, &shard(0));
    assert!(!sharded.join("meis.safetensors").exists(), "a shard merged before all were done");
    // Not all done: merging is refused with one line.
    assert_one_line_error(&strings(&["visualize", "--merge", "--save-folder", &sharded.display().to_string()]), &["not done", "shards"]);

    // Shard 1 killed once it saved some MEIs, then run again: it redoes only what it had not saved.
    let records = sharded.join(".retina-visualize/meis");
    // Saved MEIs, not the temporary files they are written through.
    let saved = || std::fs::read_dir(&records).map_or(0, |d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count());
    let before = saved();
    let mut args = strings(&["visualize"]);
    args.extend(model_args(&spec));
    args.extend(strings(&["--save-folder", &sharded.display().to_string(), "--dpi", &DPI.to_string()]));
    args.extend(strings(&shard(1)));
    let killed = run_and_kill(&args, || saved() > before);
    let second = visualize(&spec, &sharded, &shard(1));
    if killed {
        assert!(second.reused > 0 && second.optimised < second.meis, "the killed shard redid everything: {second:?}");
    }
    assert_eq!(second.reused + second.optimised, second.meis);
    let third = visualize(&spec, &sharded, &shard(2));
    assert_eq!(third.reused, 0, "shard 2 took another shard's MEIs");
    let sel = Selection { sessions: Some(vec![SESSION_1.into()]), videos: false, weights: false, ..Selection::all("jpg") };
    check_run(&sharded, &model, &sel);
    assert_same_outputs(&sharded, &single);
}

/// The `<a href>` targets of a page.
fn links(page: &Path) -> Vec<String> {
    let html = std::fs::read_to_string(page).unwrap();
    html.split("<a href=\"").skip(1).map(|rest| rest[..rest.find('"').unwrap()].to_string()).collect()
}

#[test]
fn several_models_each_get_a_folder_and_the_top_page_links_them() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (example(), unified());
    let out = dir.path().join("models");
    let list = format!("{},{}", a.path.display(), b.path.display());
    let subset = ["--layers", "0", "--sessions", SESSION_1, "--neurons", "0", "--no-weights", "--no-video"];
    let mut args = strings(&["visualize", "--model-path", &list, "--save-folder", &out.display().to_string(), "--dpi", "20"]);
    args.extend(strings(&subset));
    let run = retina(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let sel = Selection {
        layers: Some(vec![0]),
        sessions: Some(vec![SESSION_1.into()]),
        neurons: Some(vec![0]),
        videos: false,
        weights: false,
        ..Selection::all("jpg")
    };
    // Each model as if it had been run alone into its folder, named after the fixture.
    for (spec, name) in [(&a, "example_low_res"), (&b, "unified_low_res")] {
        check_run(&out.join(name), &load(spec), &sel);
        let alone = dir.path().join(format!("alone_{name}"));
        visualize(spec, &alone, &subset);
        assert!(std::fs::read(alone.join("meis.safetensors")).unwrap() == std::fs::read(out.join(name).join("meis.safetensors")).unwrap());
    }
    assert_eq!(links(&out.join("index.html")), ["example_low_res/index.html", "unified_low_res/index.html"]);
    // --merge on the top folder merges each model's folder, to the same bytes.
    let before = std::fs::read(out.join("unified_low_res/meis.safetensors")).unwrap();
    let merge = retina(&strings(&["visualize", "--merge", "--save-folder", &out.display().to_string()]));
    assert!(merge.status.success(), "{}", String::from_utf8_lossy(&merge.stderr));
    assert_eq!(String::from_utf8_lossy(&merge.stdout).lines().count(), 2, "one line per model merged");
    assert!(std::fs::read(out.join("unified_low_res/meis.safetensors")).unwrap() == before);

    // --model-id all: every member of an ensemble folder.
    let members = dir.path().join("members");
    let ensemble = ensemble_member0().path.display().to_string();
    let mut args = strings(&["visualize", "--model-path", &ensemble, "--model-id", "all", "--save-folder", &members.display().to_string()]);
    args.extend(strings(&["--dpi", "20", "--no-weights", "--no-video", "--layers", "0", "--neurons", "0"]));
    let run = retina(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let n = retina::formats::checkpoint::ensemble_member_ids(Path::new(&ensemble)).unwrap().len();
    let expected: Vec<String> = (0..n).map(|i| format!("ensemble_member{i}/index.html")).collect();
    assert_eq!(links(&members.join("index.html")), expected);
    for page in &expected {
        assert!(members.join(page).is_file() && members.join(page).with_file_name("meis.safetensors").is_file(), "{page}");
    }
    // Elsewhere one model is read: `all` is refused with one line.
    assert_one_line_error(&strings(&["info", "--model-path", &ensemble, "--model-id", "all"]), &["--model-id all", "visualize"]);
}

/// The example model with the readout features of one neuron of `SESSION_1` set to `f32::MAX`: finite
/// weights (the loader takes them) whose weighted sum overflows, so that neuron's MEI fails at its
/// first step while every other MEI of the model is unaffected.
fn model_overflowing_for(dir: &Path, neuron: usize) -> ModelSpec {
    use retina::formats::{safetensors, TensorData};
    let bytes = std::fs::read(crate::common::fixture("example_low_res/model.safetensors")).unwrap();
    let (mut tensors, metadata) = safetensors::parse(&bytes, "fixture").unwrap();
    let name = format!("readout.{SESSION_1}.features");
    let tensor = tensors.get_mut(&name).unwrap_or_else(|| panic!("no tensor {name}"));
    // Laid out (..., neurons): the neuron is the last axis.
    let neurons = *tensor.shape.last().unwrap();
    match &mut tensor.data {
        TensorData::F32(v) => v.iter_mut().enumerate().filter(|(i, _)| i % neurons == neuron).for_each(|(_, x)| *x = f32::MAX),
        other => panic!("{name} is not f32: {other:?}"),
    }
    let path = dir.join("overflowing.safetensors");
    std::fs::write(&path, safetensors::serialize(&tensors, Some(metadata)).unwrap()).unwrap();
    ModelSpec { path, model_id: None }
}

/// Run `retina visualize` that must end with exit code 2 because of failed MEIs; returns stdout and
/// the stderr lines.
fn visualize_with_failures(spec: &ModelSpec, folder: &Path, extra: &[&str]) -> (String, Vec<String>) {
    let mut args = strings(&["visualize"]);
    args.extend(model_args(spec));
    args.extend(strings(&["--save-folder", &folder.display().to_string(), "--dpi", &DPI.to_string()]));
    args.extend(strings(extra));
    let out = retina(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "retina {args:?}: stderr {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (String::from_utf8_lossy(&out.stdout).to_string(), stderr.lines().map(String::from).collect())
}

#[test]
fn an_mei_that_overflows_fails_alone_and_the_folder_marks_it() {
    let dir = TempDir::new().unwrap();
    let spec = model_overflowing_for(dir.path(), 2);
    let bad = format!("output.{SESSION_1}.2");
    let settings = ["--layers", "0", "--sessions", SESSION_1, "--neurons", "0,1,2", "--no-weights", "--no-video", "--quiet"];
    let inner = shape(&load(&spec)).layers[0].1;
    let meis = inner + 3;

    // One run: the failed MEI is named as it fails, and the last line counts it; the others are done.
    let whole = dir.path().join("whole");
    let (_, lines) = visualize_with_failures(&spec, &whole, &settings);
    assert_eq!(lines.len(), 2, "one line for the MEI, one summary: {lines:#?}");
    assert!(lines[0].contains(&format!("MEI {bad} stopped")), "{}", lines[0]);
    for word in [format!("1 of {meis} MEIs failed"), bad.clone(), "summary.csv".to_string()] {
        assert!(lines[1].contains(&word), "`{}` does not mention `{word}`", lines[1]);
    }
    let figures = whole.join(format!("output_neurons/{SESSION_1}"));
    assert!(figures.join("0.jpg").is_file() && figures.join("1.jpg").is_file(), "the other neurons' figures are missing");
    assert!(!figures.join("2.jpg").exists(), "a failed MEI has no figure");
    assert!(whole.join(format!("core_features_layer0/{}.jpg", inner - 1)).is_file());
    // summary.csv: one row per MEI; the failed one holds its error and nothing else.
    let summary = std::fs::read_to_string(whole.join("summary.csv")).unwrap();
    let header: Vec<&str> = summary.lines().next().unwrap().split(',').collect();
    assert_eq!(header.last(), Some(&"error"));
    let rows: Vec<&str> = summary.lines().skip(1).collect();
    assert_eq!(rows.len(), meis);
    let failed: Vec<&&str> = rows.iter().filter(|r| !r.ends_with(',')).collect();
    assert_eq!(failed.len(), 1, "exactly one row carries an error: {failed:?}");
    assert!(failed[0].starts_with(&format!("output,{SESSION_1},2,,,,")) && failed[0].contains("stopped"), "{}", failed[0]);
    // index.html: a card with the error instead of the figure; meis.safetensors: the other MEIs only.
    let html = std::fs::read_to_string(whole.join("index.html")).unwrap();
    assert_eq!(html.matches("class=\"mei failed\"").count(), 1);
    assert_eq!(html.matches("<img ").count(), meis - 1);
    let (tensors, _) = retina::formats::safetensors::parse(&std::fs::read(whole.join("meis.safetensors")).unwrap(), "meis").unwrap();
    assert_eq!(tensors.keys().filter(|k| k.starts_with("mei.")).count(), meis - 1);
    assert!(!tensors.contains_key(&format!("mei.{bad}")));

    // Resumed: nothing is redone (the same settings fail the same way), the outputs stay, and the run
    // still ends with exit code 2: the folder it answers for holds a failed MEI.
    let before = outputs(&whole);
    let (stdout, lines) = visualize_with_failures(&spec, &whole, &settings[..settings.len() - 1]);
    let report = RunReport::parse(stdout.lines().last().unwrap());
    assert_eq!((report.optimised, report.reused), (0, meis), "{stdout}");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(&format!("1 of {meis} MEIs failed")), "{}", lines[0]);
    assert!(outputs(&whole) == before, "a resumed run changed the outputs");

    // Sharded: the shard that owns the failed MEI and the one that merges both end with exit code 2
    // (the second only answers for it through the merge), and the folder is the single run's.
    let sharded = dir.path().join("sharded");
    let owner = (inner + 2) % 2;
    for k in [owner, 1 - owner] {
        // Shard k owns the MEIs at even (k = 0) or odd places: (meis + 1 - k) / 2 of them.
        let shard = format!("{k}/2");
        let (_, lines) = visualize_with_failures(&spec, &sharded, &[&settings[..], &["--shard", &shard]].concat());
        assert!(lines.last().unwrap().contains(&format!("1 of {} MEIs failed", if k == owner { (meis + 1 - k) / 2 } else { meis })), "shard {shard}: {lines:#?}");
    }
    assert_same_outputs(&sharded, &whole);
    let merge = retina(&strings(&["visualize", "--merge", "--save-folder", &sharded.display().to_string()]));
    assert_eq!(merge.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&merge.stderr).contains(&format!("1 of {meis} MEIs failed")));
    assert_same_outputs(&sharded, &whole);

    // With other settings the failure goes with the rest of the old outputs.
    visualize(&spec, &whole, &["--layers", "0", "--sessions", SESSION_1, "--neurons", "0,1", "--no-weights", "--no-video"]);
    assert!(!std::fs::read_to_string(whole.join("summary.csv")).unwrap().contains("stopped"));
}
