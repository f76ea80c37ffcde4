//! `retina visualize` end to end, through the real binary: openretina's folder layout (which users'
//! scripts rely on), every figure and video readable, resume, determinism, the page in a real browser,
//! and one-line errors.
//!
//! The expected file lists are derived from the model (layers' channels, sessions, neuron counts), not
//! hard-coded; `example_low_res`'s known counts are asserted once. Figures are drawn at a low dpi to
//! keep the suite fast: the layout and decoding do not depend on it.

mod common;

#[path = "common/visualize.rs"]
mod vis;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vis::*;

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
    let files = drawn(&expected);
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
    assert_eq!(report.written, drawn(&expected));
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
    assert_eq!(report.written, drawn(&expected));
}

/// `ConvGRUCore` with its GRU: `info` names the class and every hooked block; `visualize` optimises
/// the channels of the `layer<i>` blocks only (`projection` and `gru` are hooked but not optimised:
/// the layers openretina's manifest lists) and output neurons through the GRU, and draws every
/// layer's conv weight figures. Everything `visualize` writes is checked on the small
/// `zoo_gru_separable` (3 layers, 16 MEIs, 34 weight figures, videos); on `zoo_gru_enabled` (the
/// config's sizes: 2112 weight figures, ~11 s of drawing alone) a subset whose cost is MEIs only, one
/// step each: layer 1's channels (the block after the projection) and two neurons of one session.
#[test]
fn zoo_gru_core_info_and_visualize() {
    let small = ModelSpec { path: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/zoo/zoo_gru_separable/model.ckpt")), model_id: None };
    let large = ModelSpec { path: common::fixture("zoo/zoo_gru_enabled/model.ckpt"), model_id: None };
    for spec in [&small, &large] {
        let info = retina(&strings(&["info", "--model-path", &spec.path.display().to_string()]));
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
        for needle in ["ConvGRUCore", "core_features_projection: TorchFullConv3D", "core_features_gru: ConvGRUCell"] {
            assert!(text.contains(needle), "{}: info lacks {needle}:\n{text}", spec.path.display());
        }
        // The blocks visualize optimises are those openretina's visualize optimised.
        let manifest = common::manifest(&spec.path.parent().unwrap().display().to_string());
        let openretina: Vec<&String> = manifest["visualize"]["layer_output_shapes"].as_object().unwrap().keys().collect();
        assert_eq!(load(spec).layer_names().iter().collect::<Vec<_>>(), openretina, "{}", spec.path.display());
    }
    let dir = TempDir::new().unwrap();
    let model = load(&small);
    assert_eq!(shape(&model).layers, vec![(2, 3), (3, 4), (4, 4)]);
    let out = dir.path().join("gru_small");
    let report = visualize(&small, &out, &[]);
    let expected = check_run(&out, &model, &Selection::all("jpg"));
    assert_eq!(count(&expected, Kind::ConvWeights), 2 * 3 + 3 * 4 + 4 * 4);
    assert_eq!(count(&expected, Kind::MeiFigure), 3 + 4 + 4 + 3 + 2);
    assert_eq!(report, RunReport { meis: 16, optimised: 16, reused: 0, written: drawn(&expected), kept: 0 });

    let model = load(&large);
    assert_eq!(shape(&model).layers, vec![(2, 32), (32, 64)]);
    let out = dir.path().join("gru_large");
    let flags = ["--layers", "1", "--sessions", SESSION_1, "--neurons", "0,3", "--no-video", "--no-weights", "--iterations", "1"];
    let report = visualize(&large, &out, &flags);
    let sel = Selection { layers: Some(vec![1]), sessions: Some(vec![SESSION_1.into()]), neurons: Some(vec![0, 3]), videos: false, weights: false, ..Selection::all("jpg") };
    let expected = check_run(&out, &model, &sel);
    assert_eq!(count(&expected, Kind::MeiFigure), 64 + 2);
    assert_eq!(report.meis, 64 + 2);
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

/// The folder's lock files: created once, never written.
const LOCK_FILES: [&str; 2] = [".retina-visualize/lock", ".retina-visualize/running"];

/// Files a run may rewrite (cheap, and they describe the run).
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
    let outputs = drawn(&expected);
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
    assert_eq!(touched(&before, &after).len(), before.len() - LOCK_FILES.len(), "another seed must redo every file");
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
    assert_eq!(touched(&before, &mtimes(&out)).len(), before.len() - LOCK_FILES.len(), "--overwrite must redo every file");
    assert!(std::fs::read(out.join("meis.safetensors")).unwrap() == meis_seed1, "--overwrite gave other MEIs");
    check_run(&out, &model, &sel);
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

    // Then a run at another dpi, killed while it works (as soon as it saved its first MEI, whose figure
    // it has drawn at the new dpi; the old-dpi figures of the others must not survive).
    let records = out.join(".retina-visualize/meis");
    let new_args = args(&out, DPI + 1, &["--seed", "1"]);
    // (If it finishes before it is killed, there is nothing to check but a normal rerun.)
    run_and_kill(&new_args, || std::fs::read_dir(&records).is_ok_and(|mut d| d.next().is_some()));
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
