//! What users see when things go wrong: every broken model file, bad flag or bad value gives exit
//! code 2 and exactly one line on stderr that names the file (or option) and the problem, never a
//! panic, and never leaves an output file behind. Plus the happy paths of the CLI the README shows.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use retina::formats::{safetensors, RawTensor, TensorData};

// ---- running the binary ----

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn retina<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_retina"))
        .args(args)
        // Never download anything, whatever the spec looks like.
        .env("OPENRETINA_CACHE_DIRECTORY", std::env::temp_dir().join("retina-errors-test-empty-cache"))
        .output()
        .expect("cannot start the retina binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Exit code 2, no panic, one line on stderr, and that line holds every one of `words`.
fn assert_one_line_error(run: &Run, words: &[&str], what: &str) {
    let line = one_line_error(run, what);
    assert_mentions(line, line, words, what);
}

/// The single stderr line of a run that failed with exit code 2 and did not panic.
fn one_line_error<'a>(run: &'a Run, what: &str) -> &'a str {
    assert_eq!(run.code, Some(2), "{what}: exit code; stderr: {}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{what}: panicked: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: stderr should be one line, got {lines:#?}");
    lines[0]
}

/// `text` (part of `line`) holds every one of `words`, ignoring case.
fn assert_mentions(text: &str, line: &str, words: &[&str], what: &str) {
    for word in words {
        assert!(text.to_lowercase().contains(&word.to_lowercase()), "{what}: error `{line}` does not mention `{word}`");
    }
}

/// Names of the files in `dir`, sorted (to show nothing was left behind).
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("cannot create a temp dir")
}

// ---- building broken model files ----

fn fixture_model_bytes() -> Vec<u8> {
    std::fs::read(common::fixture("example_low_res/model.safetensors")).unwrap()
}

/// The fixture model re-encoded after `edit` changed its tensors and metadata (offsets stay valid).
fn edited_model(edit: impl FnOnce(&mut BTreeMap<String, RawTensor>, &mut HashMap<String, String>)) -> Vec<u8> {
    let (mut tensors, mut metadata) = safetensors::parse(&fixture_model_bytes(), "fixture").unwrap();
    edit(&mut tensors, &mut metadata);
    safetensors::serialize(&tensors, Some(metadata)).unwrap()
}

/// The fixture model with its JSON header changed by `edit` and the data bytes kept as they are.
fn edited_header(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let bytes = fixture_model_bytes();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    edit(&mut header);
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + len..]);
    out
}

/// A weight every ExampleCoreReadout has.
const SPATIAL_WEIGHT: &str = "core.features.layer0.conv.weight_spatial";
const READOUT_MEAN: &str = "readout.session_2_ventral2_20201016.mask_mean";

/// Write `bytes` (or nothing, for a missing file) as `file_name` in a fresh folder, then check that
/// both `retina info` and `retina predict` refuse it with one line naming the file and `words`, and
/// that predict wrote nothing.
fn assert_model_refused(file_name: &str, bytes: Option<&[u8]>, words: &[&str]) {
    let dir = tempdir();
    let model = dir.path().join(file_name);
    if let Some(bytes) = bytes {
        std::fs::write(&model, bytes).unwrap();
    }
    let before = files_in(dir.path());
    let output = dir.path().join("responses.safetensors");
    let runs = [
        ("info", retina(&[OsStr::new("info"), "--model-path".as_ref(), model.as_os_str()])),
        (
            "predict",
            retina(&[OsStr::new("predict"), "--model-path".as_ref(), model.as_os_str(), "--output".as_ref(), output.as_os_str()]),
        ),
    ];
    for (command, run) in &runs {
        let what = format!("{command} {file_name}");
        let line = one_line_error(run, &what);
        assert!(line.contains(file_name), "{what}: error `{line}` does not name the file");
        // The problem must be told by the message itself, not by the file's name.
        assert_mentions(&line.replace(file_name, ""), line, words, &what);
    }
    assert_eq!(files_in(dir.path()), before, "predict {file_name} left a file behind");
}

#[test]
fn empty_file() {
    assert_model_refused("empty.safetensors", Some(b""), &["empty"]);
}

#[test]
fn truncated_file() {
    let bytes = fixture_model_bytes();
    assert_model_refused("truncated.safetensors", Some(&bytes[..bytes.len() / 2]), &["truncated"]);
}

/// The tensor whose data comes last in the file.
fn last_tensor(header: &mut serde_json::Value) -> &mut serde_json::Value {
    header
        .as_object_mut()
        .unwrap()
        .iter_mut()
        .filter(|(name, _)| *name != "__metadata__")
        .max_by_key(|(_, t)| t["data_offsets"][1].as_u64().unwrap())
        .unwrap()
        .1
}

#[test]
fn offsets_past_the_end() {
    // The last tensor ends 4 kB after the file, its shape unchanged.
    let bytes = edited_header(|header| {
        let last = last_tensor(header);
        let end = last["data_offsets"][1].as_u64().unwrap();
        last["data_offsets"][1] = (end + 4096).into();
    });
    assert_model_refused("past_end.safetensors", Some(&bytes), &["safetensors", "offsets"]);

    // The same with a shape to match, so that only the file size tells.
    let bytes = edited_header(|header| {
        let last = last_tensor(header);
        let (start, end) = (last["data_offsets"][0].as_u64().unwrap(), last["data_offsets"][1].as_u64().unwrap());
        assert_eq!(last["dtype"], "F32");
        last["data_offsets"][1] = (end + 4096).into();
        last["shape"] = serde_json::json!([(end + 4096 - start) / 4]);
    });
    assert_model_refused("past_end_consistent.safetensors", Some(&bytes), &["safetensors", "truncated"]);
}

#[test]
fn offsets_and_shapes_that_overflow() {
    // Offsets near u64::MAX and a shape whose element count overflows must not crash the reader.
    let huge_offsets = edited_header(|header| {
        header[SPATIAL_WEIGHT]["data_offsets"] = serde_json::json!([u64::MAX - 8, u64::MAX]);
    });
    assert_model_refused("huge_offsets.safetensors", Some(&huge_offsets), &["safetensors", "offsets"]);
    let huge_shape = edited_header(|header| {
        header[SPATIAL_WEIGHT]["shape"] = serde_json::json!([u64::MAX / 2, 4, 4]);
    });
    assert_model_refused("huge_shape.safetensors", Some(&huge_shape), &["safetensors"]);
}

#[test]
fn header_length_of_2_pow_62() {
    let mut bytes = fixture_model_bytes();
    bytes[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert_model_refused("huge_header.safetensors", Some(&bytes), &["header length", "truncated"]);
}

#[test]
fn tensor_of_the_wrong_shape() {
    // Same number of values, so only the model loader can tell.
    let bytes = edited_model(|tensors, _| {
        let t = tensors.get_mut(SPATIAL_WEIGHT).unwrap();
        let n = t.numel();
        t.shape = vec![n];
    });
    assert_model_refused("wrong_shape.safetensors", Some(&bytes), &[SPATIAL_WEIGHT, "shape"]);
}

#[test]
fn missing_tensor() {
    let bytes = edited_model(|tensors, _| {
        tensors.remove(READOUT_MEAN).unwrap();
    });
    assert_model_refused("missing_tensor.safetensors", Some(&bytes), &[READOUT_MEAN, "missing"]);
}

#[test]
fn nan_weight() {
    let bytes = edited_model(|tensors, _| match &mut tensors.get_mut(SPATIAL_WEIGHT).unwrap().data {
        TensorData::F32(v) => v[3] = f32::NAN,
        TensorData::F64(v) => v[3] = f64::NAN,
        TensorData::I64(_) => panic!("{SPATIAL_WEIGHT} should hold floats"),
    });
    assert_model_refused("nan.safetensors", Some(&bytes), &[SPATIAL_WEIGHT, "non-finite"]);
}

#[test]
fn unknown_model_class() {
    let bytes = edited_model(|_, metadata| {
        metadata.insert("model_class".into(), "SpikingTransformer".into());
    });
    assert_model_refused("unknown_class.safetensors", Some(&bytes), &["model_class", "SpikingTransformer"]);
}

#[test]
fn hyper_parameters_not_json() {
    let bytes = edited_model(|_, metadata| {
        metadata.insert("hyper_parameters".into(), "{'hidden_channels': [16, 16]".into());
    });
    assert_model_refused("bad_hparams.safetensors", Some(&bytes), &["hyper_parameters", "JSON"]);
}

/// The fixture model with its `hyper_parameters` JSON changed by `edit`.
fn edited_hyper_parameters(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    edited_model(|_, metadata| {
        let mut hp: serde_json::Value = serde_json::from_str(&metadata["hyper_parameters"]).unwrap();
        edit(&mut hp);
        metadata.insert("hyper_parameters".into(), hp.to_string());
    })
}

#[test]
fn absurd_hyper_parameters() {
    // Sizes that would overflow the shape arithmetic must be refused by name, not wrap around.
    let huge = serde_json::json!(1u64 << 63);
    let bytes = edited_hyper_parameters(|hp| hp["core_hidden_padding"] = serde_json::json!([huge, 2, 2]));
    assert_model_refused("padding.safetensors", Some(&bytes), &["core_hidden_padding", "kernel"]);
    let bytes = edited_hyper_parameters(|hp| hp["temporal_kernel_sizes"] = serde_json::json!([huge, 11]));
    assert_model_refused("kernel.safetensors", Some(&bytes), &["kernel", "9223372036854775808"]);
    let bytes = edited_hyper_parameters(|hp| hp["hidden_channels"] = serde_json::json!([huge, 16]));
    assert_model_refused("channels.safetensors", Some(&bytes), &["core.features.layer0", "shape"]);
}

#[test]
fn json_file_that_is_not_a_model() {
    let json = std::fs::read(common::fixture("example_low_res/hparams.json")).unwrap();
    assert_model_refused("hparams.json", Some(&json), &["not a model file"]);
}

#[test]
fn random_bytes() {
    let mut rng = retina::rng::Rng::new(7);
    let bytes: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
    assert_model_refused("random.bin", Some(&bytes), &["not a model file"]);
}

#[test]
fn missing_file() {
    assert_model_refused("does_not_exist.safetensors", None, &["no such file"]);
}

#[test]
fn convert_refuses_a_broken_model_and_writes_nothing() {
    let dir = tempdir();
    let model = dir.path().join("nan.safetensors");
    std::fs::write(
        &model,
        edited_model(|tensors, _| match &mut tensors.get_mut(READOUT_MEAN).unwrap().data {
            TensorData::F32(v) => v[0] = f32::INFINITY,
            TensorData::F64(v) => v[0] = f64::INFINITY,
            TensorData::I64(_) => panic!("{READOUT_MEAN} should hold floats"),
        }),
    )
    .unwrap();
    let run = retina(&[OsStr::new("convert"), model.as_os_str(), dir.path().join("out.safetensors").as_os_str()]);
    assert_one_line_error(&run, &["nan.safetensors", READOUT_MEAN, "non-finite"], "convert");
    assert_eq!(files_in(dir.path()), ["nan.safetensors"]);
}

// ---- flags and other inputs ----

#[test]
fn bad_flags_exit_2() {
    let dir = tempdir();
    let out = dir.path().join("out.safetensors");
    let out = out.to_str().unwrap();

    let unknown = retina(&["predict", "--model-path", "demo", "--output", out, "--frobnicate"]);
    assert_eq!(unknown.code, Some(2), "unknown flag: {}", unknown.stderr);
    assert!(unknown.stderr.contains("--frobnicate"), "unknown flag not named: {}", unknown.stderr);

    let no_output = retina(&["predict", "--model-path", "demo"]);
    assert_eq!(no_output.code, Some(2), "missing --output: {}", no_output.stderr);
    assert!(no_output.stderr.contains("--output"), "missing --output not named: {}", no_output.stderr);

    let no_command = retina::<&str>(&[]);
    assert_eq!(no_command.code, Some(2), "no subcommand: {}", no_command.stderr);

    for run in [&unknown, &no_output, &no_command] {
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    assert!(files_in(dir.path()).is_empty());
}

/// Write a safetensors file of named f32 tensors.
fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let map: BTreeMap<String, RawTensor> = tensors
        .iter()
        .map(|(name, shape)| (name.to_string(), RawTensor::f32(shape.clone(), vec![0.5; shape.iter().product()])))
        .collect();
    std::fs::write(path, safetensors::serialize(&map, None).unwrap()).unwrap();
}

fn predict_with_input(input: &Path, output: &Path) -> Run {
    retina(&[
        OsStr::new("predict"),
        "--model-path".as_ref(),
        "demo".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
    ])
}

#[test]
fn input_stimulus_of_the_wrong_shape() {
    let dir = tempdir();
    let input = dir.path().join("small_frames.safetensors");
    // The demo model needs 2 x 18 x 16 frames.
    write_tensors(&input, &[("stimulus", vec![1, 2, 50, 10, 10])]);
    let output = dir.path().join("out.safetensors");
    let run = predict_with_input(&input, &output);
    assert_one_line_error(&run, &["small_frames.safetensors", "shape", "[1, 2, 50, 10, 10]"], "wrong stimulus shape");
    assert!(!output.exists());

    // Right frame size, too few frames for the kernels.
    let short = dir.path().join("short.safetensors");
    write_tensors(&short, &[("stimulus", vec![1, 2, 5, 18, 16])]);
    let run = predict_with_input(&short, &output);
    assert_one_line_error(&run, &["short.safetensors", "time steps"], "too short stimulus");
    assert!(!output.exists());
}

#[test]
fn input_without_a_stimulus_tensor() {
    let dir = tempdir();
    let input = dir.path().join("movie.safetensors");
    write_tensors(&input, &[("movie", vec![1, 2, 50, 18, 16])]);
    let output = dir.path().join("out.safetensors");
    let run = predict_with_input(&input, &output);
    assert_one_line_error(&run, &["movie.safetensors", "stimulus"], "no stimulus tensor");
    assert!(!output.exists());
}

#[test]
fn input_that_is_not_safetensors() {
    let dir = tempdir();
    let input = dir.path().join("stimulus.npy");
    std::fs::write(&input, b"\x93NUMPY not really").unwrap();
    let output = dir.path().join("out.safetensors");
    let run = predict_with_input(&input, &output);
    assert_one_line_error(&run, &["stimulus.npy", "safetensors"], "input not safetensors");
    assert!(!output.exists());
}

#[test]
fn output_in_a_folder_that_does_not_exist() {
    let dir = tempdir();
    let missing_folder = dir.path().join("no_such_folder");
    let output = missing_folder.join("out.safetensors");
    let run = retina(&[OsStr::new("predict"), "--model-path".as_ref(), "demo".as_ref(), "--output".as_ref(), output.as_os_str()]);
    assert_one_line_error(&run, &["no_such_folder", "out.safetensors", "folder"], "output folder missing");
    assert!(!missing_folder.exists(), "the missing folder was created");
    assert!(files_in(dir.path()).is_empty());
}

// ---- retina mei ----

const SESSION: &str = "session_3_ventral1_20201021";

/// `retina mei --model-path demo <args> --output <dir>/mei.safetensors`, run in a fresh folder that
/// must still be empty afterwards when the run fails.
fn mei(args: &[&str]) -> Run {
    let dir = tempdir();
    let output = dir.path().join("mei.safetensors");
    let mut all = vec!["mei", "--model-path", "demo", "--output", output.to_str().unwrap()];
    all.extend_from_slice(args);
    let run = retina(&all);
    if run.code != Some(0) {
        assert!(files_in(dir.path()).is_empty(), "failed mei {args:?} left {:?}", files_in(dir.path()));
    }
    run
}

#[test]
fn mei_neuron_out_of_range() {
    let run = mei(&["--session", SESSION, "--neuron", "11"]);
    assert_one_line_error(&run, &["neuron 11", SESSION, "11 neurons"], "neuron out of range");
}

#[test]
fn mei_unknown_session() {
    let run = mei(&["--session", "session_9_nowhere", "--neuron", "0"]);
    assert_one_line_error(&run, &["unknown session", "session_9_nowhere", SESSION], "unknown session");
}

#[test]
fn mei_unknown_layer_and_channel() {
    let run = mei(&["--layer", "core_features_layer5", "--channel", "0"]);
    assert_one_line_error(&run, &["unknown layer", "core_features_layer5"], "unknown layer");
    let run = mei(&["--layer", "conv1", "--channel", "0"]);
    assert_one_line_error(&run, &["unknown layer", "conv1"], "layer name");
    let run = mei(&["--layer", "1", "--channel", "16"]);
    assert_one_line_error(&run, &["channel 16", "16 channels"], "channel out of range");
}

#[test]
fn mei_bad_channel_range() {
    let target = ["--layer", "0", "--channel", "0"];
    for (ranges, words) in [
        (&["1,0", "none"][..], &["--channel-range", "1,0"][..]),
        (&["0;1", "none"], &["--channel-range", "0;1"]),
        (&["nan,1", "none"], &["--channel-range", "nan,1"]),
        (&["0,1"], &["--channel-range", "2 colour channels"]),
        (&["0,1", "0,1", "0,1"], &["--channel-range", "3 times"]),
    ] {
        let mut args = target.to_vec();
        for r in ranges {
            args.extend(["--channel-range", r]);
        }
        assert_one_line_error(&mei(&args), words, &format!("--channel-range {ranges:?}"));
    }
}

#[test]
fn mei_negative_channel_range_is_accepted() {
    // openretina's own default ranges start below zero: `--channel-range -0.654,6.269` must parse.
    let run = mei(&[
        "--layer", "0", "--channel", "0", "--iterations", "1", "--channel-range", "-0.654,6.269", "--channel-range", "-0.913,6.269",
    ]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
}

#[test]
fn mei_bad_norm() {
    let target = ["--layer", "0", "--channel", "0"];
    for norm in ["-3", "0", "abc", "inf"] {
        let mut args = target.to_vec();
        args.extend(["--norm", norm]);
        assert_one_line_error(&mei(&args), &["--norm", norm], &format!("--norm {norm}"));
    }
}

#[test]
fn mei_bad_lr() {
    let target = ["--layer", "0", "--channel", "0"];
    for lr in ["-1", "0", "nan", "fast"] {
        let mut args = target.to_vec();
        args.extend(["--lr", lr]);
        assert_one_line_error(&mei(&args), &["--lr"], &format!("--lr {lr}"));
    }
}

#[test]
fn mei_init_of_the_wrong_shape() {
    let dir = tempdir();
    let init = dir.path().join("start.safetensors");
    // 50 frames where the MEI is optimised over 40.
    write_tensors(&init, &[("stimulus", vec![1, 2, 50, 18, 16])]);
    let run = mei(&["--layer", "0", "--channel", "0", "--time-steps-stimulus", "40", "--init", init.to_str().unwrap()]);
    assert_one_line_error(&run, &["start.safetensors", "shape", "[1, 2, 50, 18, 16]"], "mei --init shape");
}

#[test]
fn mei_without_a_target() {
    let run = mei(&[]);
    assert_one_line_error(&run, &["--session", "--layer"], "no target");
}

// ---- what works ----

fn read_tensors(path: &Path) -> BTreeMap<String, RawTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    safetensors::parse(&bytes, &path.display().to_string()).unwrap().0
}

fn demo_sessions() -> Vec<(String, usize)> {
    let raw = retina::formats::read_model("demo", -1, &Default::default()).unwrap();
    let model = retina::model::Model::<f32>::from_raw(&raw).unwrap();
    model.config.sessions.clone()
}

#[test]
fn predict_demo_writes_responses_of_every_session() {
    let dir = tempdir();
    let output = dir.path().join("responses.safetensors");
    let run = retina(&[OsStr::new("predict"), "--model-path".as_ref(), "demo".as_ref(), "--output".as_ref(), output.as_os_str()]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stderr.is_empty(), "stderr: {}", run.stderr);

    let tensors = read_tensors(&output);
    let sessions = demo_sessions();
    assert_eq!(sessions.len(), 3);
    for (session, neurons) in &sessions {
        let responses = &tensors[&format!("responses.{session}")];
        // 50 frames minus (21 - 1) and (11 - 1) for the two temporal kernels.
        assert_eq!(responses.shape, [1, 20, *neurons], "responses.{session}");
    }
    assert_eq!(tensors["stimulus"].shape, [1, 2, 50, 18, 16]);
    // Only the output file: no temporary left next to it.
    assert_eq!(files_in(dir.path()), ["responses.safetensors"]);
}

#[test]
fn info_demo_lists_the_sessions() {
    let run = retina(&["info", "--model-path", "demo"]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout.contains("sessions:       3"), "{}", run.stdout);
    for (session, neurons) in demo_sessions() {
        assert!(run.stdout.contains(&format!("{session}: {neurons} neurons")), "{session} missing from:\n{}", run.stdout);
    }
}

fn predict_to(model: &Path, output: &Path) {
    let run = retina(&[OsStr::new("predict"), "--model-path".as_ref(), model.as_os_str(), "--output".as_ref(), output.as_os_str()]);
    assert_eq!(run.code, Some(0), "predict {}: {}", model.display(), run.stderr);
}

#[test]
fn converted_checkpoint_predicts_as_the_safetensors_model() {
    let dir = tempdir();
    let converted = dir.path().join("converted.safetensors");
    let checkpoint = common::fixture("example_low_res/model.ckpt");
    let run = retina(&[OsStr::new("convert"), checkpoint.as_os_str(), converted.as_os_str()]);
    assert_eq!(run.code, Some(0), "convert: {}", run.stderr);

    let from_converted: PathBuf = dir.path().join("from_converted.safetensors");
    let from_fixture = dir.path().join("from_fixture.safetensors");
    predict_to(&converted, &from_converted);
    predict_to(&common::fixture("example_low_res/model.safetensors"), &from_fixture);

    let (got, want) = (read_tensors(&from_converted), read_tensors(&from_fixture));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    assert!(want.keys().any(|k| k.starts_with("responses.")));
    for (name, w) in &want {
        // Same weights and same stimulus, so the same bits.
        assert_eq!(&got[name], w, "{name} differs");
    }
}

#[test]
fn missing_and_unexpected_tensors_are_counted_in_one_line() {
    // As PyTorch's strict load_state_dict: every name the architecture takes that the file lacks, and
    // every name it does not take, counted, the first few named.
    let removed = ["core.features.layer0.conv.sin_weights", "core.features.layer1.conv.cos_weights", READOUT_MEAN, SPATIAL_WEIGHT];
    let bytes = edited_model(|tensors, _| {
        for name in removed {
            tensors.remove(name).unwrap_or_else(|| panic!("the fixture has no {name}"));
        }
        tensors.insert("core.features.layer9.conv.weight".into(), RawTensor::f32(vec![1], vec![0.5]));
        tensors.insert("readout.no_such_session.mask_mean".into(), RawTensor::f32(vec![1], vec![0.5]));
    });
    assert_model_refused(
        "mismatched_names.safetensors",
        Some(&bytes),
        &["4 missing tensors", "2 unexpected tensors", "`core.features.layer9.conv.weight`", "`readout.no_such_session.mask_mean`", "…"],
    );
}

#[test]
fn a_large_tensor_under_a_training_buffer_name() {
    // Buffers for training only (BatchNorm counters, regulariser filters) are accepted unread; one of
    // 100,000 values is no such buffer, and `convert` would otherwise copy it.
    let bytes = edited_model(|tensors, _| {
        tensors.insert("core.features.layer0.norm.num_batches_tracked".into(), RawTensor::f32(vec![100_000], vec![0.0; 100_000]));
    });
    assert_model_refused("big_buffer.safetensors", Some(&bytes), &["1 unexpected tensor", "num_batches_tracked"]);
}
