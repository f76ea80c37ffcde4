//! Checkpoint readers against the openretina fixtures, and hostile files that must be refused.

mod common;

use std::path::{Path, PathBuf};

use common::{zip_with, PickleWriter};

use retina::formats::checkpoint::{read_ensemble_member, read_lightning_checkpoint, read_model, read_model_file};
use retina::formats::{pickle, safetensors, RawModel, TensorData};

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures"));
    assert!(dir.is_dir(), "fixtures are missing: looked in {}", dir.display());
    dir
}

fn fixture(relative: &str) -> PathBuf {
    let path = fixtures().join(relative);
    assert!(path.exists(), "fixture is missing: looked for {}", path.display());
    path
}

fn native(path: &Path) -> RawModel {
    let bytes = safetensors::read_file(path).unwrap();
    safetensors::parse_model(&bytes, &path.display().to_string()).unwrap()
}

/// Same names, shapes, dtypes and bit patterns, same class, equal hyper parameter JSON.
fn assert_same_model(got: &RawModel, want: &RawModel, what: &str) {
    assert_eq!(got.model_class, want.model_class, "{what}: model class");
    assert_eq!(got.hyper_parameters, want.hyper_parameters, "{what}: hyper parameters");
    let got_names: Vec<_> = got.tensors.keys().collect();
    let want_names: Vec<_> = want.tensors.keys().collect();
    assert_eq!(got_names, want_names, "{what}: tensor names");
    for (name, w) in &want.tensors {
        let g = &got.tensors[name];
        assert_eq!(g.shape, w.shape, "{what}: {name} shape");
        let same_bits = match (&g.data, &w.data) {
            (TensorData::F32(a), TensorData::F32(b)) => a.iter().map(|x| x.to_bits()).eq(b.iter().map(|x| x.to_bits())),
            (TensorData::F64(a), TensorData::F64(b)) => a.iter().map(|x| x.to_bits()).eq(b.iter().map(|x| x.to_bits())),
            (TensorData::I64(a), TensorData::I64(b)) => a == b,
            _ => false,
        };
        assert!(same_bits, "{what}: {name} differs in dtype or values");
    }
}

fn assert_one_line_error<T: std::fmt::Debug>(result: retina::Result<T>, mentions: &str) -> String {
    let error = result.expect_err("a hostile file was accepted");
    let message = error.message().to_string();
    eprintln!("refused as expected: {message}");
    assert!(!message.contains('\n'), "error is not one line: {message}");
    assert!(message.contains(mentions), "error {message:?} does not mention {mentions:?}");
    message
}

#[test]
fn lightning_checkpoints_match_their_safetensors() {
    for name in ["example_low_res", "unified_low_res"] {
        let got = read_lightning_checkpoint(&fixture(&format!("{name}/model.ckpt"))).unwrap();
        let want = native(&fixture(&format!("{name}/model.safetensors")));
        assert_same_model(&got, &want, name);
        // The dispatcher sniffs the same file and the native one.
        assert_same_model(&read_model_file(&fixture(&format!("{name}/model.ckpt"))).unwrap(), &want, name);
        assert_same_model(&read_model_file(&fixture(&format!("{name}/model.safetensors"))).unwrap(), &want, name);
    }
}

#[test]
fn lightning_hyper_parameters_match_hparams_json() {
    for name in ["example_low_res", "unified_low_res"] {
        let got = read_lightning_checkpoint(&fixture(&format!("{name}/model.ckpt"))).unwrap();
        let text = std::fs::read_to_string(fixture(&format!("{name}/hparams.json"))).unwrap();
        let hparams: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got.hyper_parameters, hparams["hyper_parameters"], "{name}");
        assert_eq!(got.model_class, hparams["model_class"], "{name}");
    }
}

#[test]
fn ensemble_members_match_their_safetensors() {
    let dir = fixture("ensemble_replica/ensemble");
    for (index, id) in ["00000", "01000", "02000", "03000", "04000"].iter().enumerate() {
        let want = native(&dir.join(format!("member_{id}.safetensors")));
        let got = read_ensemble_member(&dir, index as i64).unwrap();
        assert_same_model(&got, &want, id);
    }
    let last = native(&dir.join("member_04000.safetensors"));
    assert_same_model(&read_ensemble_member(&dir, -1).unwrap(), &last, "model id -1");
    assert_same_model(&read_model(&dir, -1).unwrap(), &last, "read_model -1");
    let first = native(&dir.join("member_00000.safetensors"));
    assert_same_model(&read_ensemble_member(&dir, -5).unwrap(), &first, "model id -5");
    assert_one_line_error(read_ensemble_member(&dir, 5), "out of range");
    assert_one_line_error(read_ensemble_member(&dir, -6), "out of range");
}

/// Every pickle-bearing file under `../shared/fixtures` (openretina 1.1.1's own checkpoints, the zoo
/// of other cores and readouts, the ensemble replica) still loads through the allow-list of globals.
#[test]
fn every_fixture_checkpoint_loads() {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&fixtures(), &mut files);
    files.sort();
    let mut loaded = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        if name.ends_with(".ckpt") {
            let model = read_model_file(path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!model.tensors.is_empty(), "{}", path.display());
        } else if name.ends_with(".pth.tar") {
            let file = std::fs::File::open(path).unwrap();
            let mut torch = retina::formats::torch::TorchFile::open(file, &path.display().to_string()).unwrap();
            let root = torch.pickle.root.clone();
            assert!(!torch.state_dict(&root).unwrap_or_else(|e| panic!("{e}")).is_empty());
        } else if name.ends_with(".pkl") {
            pickle::parse(&std::fs::read(path).unwrap(), &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        } else if name.starts_with("config_") && name.ends_with(".yaml") {
            let id = name.trim_start_matches("config_").trim_end_matches(".yaml").parse::<i64>().unwrap();
            let folder = path.parent().unwrap();
            let ids = retina::formats::checkpoint::ensemble_member_ids(folder).unwrap();
            let index = ids.iter().position(|&i| i == id).unwrap();
            read_ensemble_member(folder, index as i64).unwrap_or_else(|e| panic!("{e}"));
        } else {
            continue;
        }
        loaded += 1;
    }
    // 9 Lightning checkpoints (2 + 7 in the zoo), 5 x (state dict, data info, config) of the ensemble.
    assert!(loaded >= 24, "only {loaded} fixture checkpoints found under {}", fixtures().display());
}

// ---------------------------------------------------------------------------------------------
// Hostile and broken files

/// A pickle that would run `os.system("touch <marker>")` if anything executed it.
fn os_system_pickle(marker: &Path) -> Vec<u8> {
    let command = format!("touch {}", marker.display());
    let mut bytes = b"\x80\x02cos\nsystem\nX".to_vec();
    bytes.extend((command.len() as u32).to_le_bytes());
    bytes.extend(command.as_bytes());
    bytes.extend(b"\x85R.");
    bytes
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn os_system_pickle_is_never_executed() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("executed");
    let evil = os_system_pickle(&marker);

    // The pickle reader refuses the global before anything is built from it.
    assert_one_line_error(pickle::parse(&evil, "evil"), "refusing to load: the pickle calls os.system");

    // As the data.pkl of a checkpoint.
    let ckpt = write(dir.path(), "evil.ckpt", &zip_with(&[("archive/data.pkl", &evil)]));
    let message = assert_one_line_error(read_lightning_checkpoint(&ckpt), "refusing to load");
    assert!(message.starts_with(&format!("{}: refusing to load: the checkpoint calls os.system", ckpt.display())));
    assert_one_line_error(read_model_file(&ckpt), "os.system");

    // As a bare file.
    let bare = write(dir.path(), "evil.pkl", &evil);
    assert_one_line_error(read_model_file(&bare), "evil.pkl");

    // As an ensemble member's data_info (with a valid config next to it).
    let ensemble = dir.path().join("ensemble");
    std::fs::create_dir(&ensemble).unwrap();
    write(&ensemble, "config_00000.yaml", b"model_config: {}\nmodel_fn: nnfabrik_euler.models.models.X\n");
    write(&ensemble, "data_info_00000.pkl", &evil);
    let message = assert_one_line_error(read_ensemble_member(&ensemble, 0), "data_info_00000.pkl");
    assert!(message.contains("calls os.system"), "{message}");

    assert!(!marker.exists(), "the pickle was executed");
}

#[test]
fn deeply_nested_pickles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 200000 empty lists, each appended into the one below: a list nested 200000 deep.
    let mut appended = b"\x80\x02".to_vec();
    appended.extend(std::iter::repeat_n(b']', 200_000));
    appended.extend(std::iter::repeat_n(b'a', 199_999));
    appended.push(b'.');
    // 200000 MARKs, each closed into a list: the same through MARK/LIST.
    let mut marked = b"\x80\x02".to_vec();
    marked.extend(std::iter::repeat_n(b'(', 200_000));
    marked.extend(std::iter::repeat_n(b'l', 200_000));
    marked.push(b'.');
    for (name, bytes) in [("appended", &appended), ("marked", &marked)] {
        assert_one_line_error(pickle::parse(bytes, name), "deep");
        let ckpt = write(dir.path(), &format!("{name}.ckpt"), &zip_with(&[("archive/data.pkl", bytes)]));
        assert_one_line_error(read_model_file(&ckpt), "deep");
    }
}

#[test]
fn zip_entries_leaving_the_archive_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let valid = std::fs::read(fixture("example_low_res/model.ckpt")).unwrap();
    let pickle_bytes = {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&valid)).unwrap();
        let mut entry = archive.by_name("archive/data.pkl").unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        bytes
    };
    for evil_name in ["../evil", "archive/../../evil", "/etc/evil"] {
        let bytes = zip_with(&[("archive/data.pkl", &pickle_bytes), (evil_name, b"x")]);
        let path = write(dir.path(), "evil.ckpt", &bytes);
        assert_one_line_error(read_lightning_checkpoint(&path), "refusing zip entry name");
    }
    let bytes = zip_with(&[("../archive/data.pkl", &pickle_bytes)]);
    let path = write(dir.path(), "evil.ckpt", &bytes);
    assert_one_line_error(read_model_file(&path), "refusing zip entry name");
    assert!(!dir.path().parent().unwrap().join("evil").exists());
}

#[test]
fn broken_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let valid = std::fs::read(fixture("example_low_res/model.ckpt")).unwrap();
    for cut in [valid.len() / 2, valid.len() - 100, 30] {
        let path = write(dir.path(), "truncated.ckpt", &valid[..cut]);
        assert_one_line_error(read_lightning_checkpoint(&path), "truncated.ckpt");
        assert_one_line_error(read_model_file(&path), "truncated.ckpt");
    }

    // A flipped byte inside a storage: the zip CRC catches it.
    let storage_start = {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&valid)).unwrap();
        let entry = archive.by_name("archive/data/3").unwrap();
        entry.data_start() as usize
    };
    let mut corrupt = valid.clone();
    corrupt[storage_start + 10] ^= 0xff;
    let path = write(dir.path(), "corrupt.ckpt", &corrupt);
    assert_one_line_error(read_lightning_checkpoint(&path), "corrupt.ckpt");

    // Deterministic pseudo-random bytes (xorshift), once plain and once behind a zip magic.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let path = write(dir.path(), "random.ckpt", &random);
    assert_one_line_error(read_model_file(&path), "random.ckpt");
    assert_one_line_error(read_lightning_checkpoint(&path), "random.ckpt");
    let mut zip_magic = b"PK\x03\x04".to_vec();
    zip_magic.extend(&random);
    let path = write(dir.path(), "random_zip.ckpt", &zip_magic);
    assert_one_line_error(read_model_file(&path), "random_zip.ckpt");
    assert!(pickle::parse(&random, "random").is_err());

    let path = write(dir.path(), "empty.ckpt", b"");
    assert_one_line_error(read_model_file(&path), "empty");
    assert_one_line_error(read_lightning_checkpoint(&path), "empty.ckpt");
    assert!(pickle::parse(b"", "empty").is_err());

    let missing = dir.path().join("missing.ckpt");
    assert_one_line_error(read_model_file(&missing), "missing.ckpt");
    assert_one_line_error(read_model(dir.path(), 0), "not an openretina ensemble directory");
}

#[test]
fn every_prefix_of_a_pickle_is_refused_cleanly() {
    // Cut the real checkpoint pickle at many points: every cut must give an error, never a panic.
    let valid = std::fs::read(fixture("unified_low_res/model.ckpt")).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&valid)).unwrap();
    let mut entry = archive.by_name("archive/data.pkl").unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
    for cut in (0..bytes.len() - 1).step_by(97) {
        assert!(pickle::parse(&bytes[..cut], "cut").is_err(), "a pickle cut at {cut} was accepted");
    }
    assert!(pickle::parse(&bytes, "whole").is_ok());
}

// ---------------------------------------------------------------------------------------------
// Hand-built torch archives: views, shared storages, dtypes, the legacy `bias_param` name.

#[test]
fn strided_views_shared_storages_and_dtypes() {
    let mut p = PickleWriter::new();
    p.op(b"}(").str("state_dict").global("collections", "OrderedDict").op(b")R(");
    p.str("a").tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
    p.str("a_transposed").tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
    p.str("a_offset").tensor("FloatStorage", "0", 6, 2, &[2], &[2]);
    p.str("half").tensor("HalfStorage", "1", 2, 0, &[2], &[1]);
    p.str("half_broadcast").tensor("HalfStorage", "1", 2, 1, &[3], &[0]);
    p.str("bfloat").tensor("BFloat16Storage", "2", 1, 0, &[], &[]);
    p.str("int32").tensor("IntStorage", "3", 2, 0, &[2], &[1]);
    p.str("bool").tensor("BoolStorage", "4", 2, 0, &[2], &[1]);
    p.str("num_batches_tracked").tensor("LongStorage", "5", 1, 0, &[], &[]);
    p.str("readout.s1.bias_param").tensor("DoubleStorage", "6", 2, 0, &[2], &[1]);
    p.str("empty").tensor("FloatStorage", "0", 6, 0, &[0, 3], &[3, 1]);
    p.op(b"u");
    // ExampleCoreReadout-style hyper parameters, with a module that must be left out.
    p.str("hyper_parameters").op(b"}(");
    p.str("in_shape").int_tuple(&[2, 50, 18, 16]);
    p.str("hidden_channels").int_tuple(&[16]);
    p.str("temporal_kernel_sizes").int_tuple(&[21]);
    p.str("spatial_kernel_sizes").int_tuple(&[11]);
    p.str("n_neurons_dict").op(b"}(").str("s1").int(2).op(b"u");
    p.str("core").global("openretina.modules.core.base_core", "SimpleCoreWrapper").op(b")\x81}(").str("training").op(b"\x89ub");
    p.str("learning_rate").op(b"G").op(&0.01f64.to_be_bytes());
    p.op(b"uu.");

    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let halfs: Vec<u8> = [0x3c00u16, 0xc000].iter().flat_map(|h| h.to_le_bytes()).collect();
    let bf16 = 0x3f80u16.to_le_bytes();
    let i32s: Vec<u8> = [-5i32, 7].iter().flat_map(|i| i.to_le_bytes()).collect();
    let longs = 42i64.to_le_bytes();
    let f64s: Vec<u8> = [0.5f64, 1.5].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bytes = zip_with(&[
        ("archive/data.pkl", &p.0),
        ("archive/byteorder", b"little"),
        ("archive/data/0", &f32s),
        ("archive/data/1", &halfs),
        ("archive/data/2", &bf16),
        ("archive/data/3", &i32s),
        ("archive/data/4", &[1u8, 0]),
        ("archive/data/5", &longs),
        ("archive/data/6", &f64s),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "handmade.ckpt", &bytes);
    let model = read_model_file(&path).unwrap();
    assert_eq!(model.model_class, "ExampleCoreReadout");
    assert_eq!(
        model.hyper_parameters,
        serde_json::json!({
            "in_shape": [2, 50, 18, 16], "hidden_channels": [16], "temporal_kernel_sizes": [21],
            "spatial_kernel_sizes": [11], "n_neurons_dict": {"s1": 2}, "learning_rate": 0.01
        })
    );
    let t = |name: &str| model.tensors.get(name).unwrap_or_else(|| panic!("no tensor {name}")).clone();
    assert_eq!(t("a").data, TensorData::F32(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    assert_eq!(t("a").shape, vec![2, 3]);
    assert_eq!(t("a_transposed").data, TensorData::F32(vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]));
    assert_eq!(t("a_transposed").shape, vec![3, 2]);
    assert_eq!(t("a_offset").data, TensorData::F32(vec![2.0, 4.0]));
    assert_eq!(t("half").data, TensorData::F32(vec![1.0, -2.0]));
    assert_eq!(t("half_broadcast").data, TensorData::F32(vec![-2.0, -2.0, -2.0]));
    assert_eq!(t("bfloat").data, TensorData::F32(vec![1.0]));
    assert_eq!(t("bfloat").shape, Vec::<usize>::new());
    assert_eq!(t("int32").data, TensorData::I64(vec![-5, 7]));
    assert_eq!(t("bool").data, TensorData::I64(vec![1, 0]));
    assert_eq!(t("num_batches_tracked").data, TensorData::I64(vec![42]));
    assert_eq!(t("readout.s1.bias").data, TensorData::F64(vec![0.5, 1.5]));
    assert!(!model.tensors.contains_key("readout.s1.bias_param"));
    assert_eq!(t("empty").data, TensorData::F32(vec![]));
    assert_eq!(t("empty").shape, vec![0, 3]);
}

#[test]
fn views_beyond_their_storage_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    // (what, storage offset, shape, stride, storage record bytes)
    type ViewCase<'a> = (&'a str, i32, &'a [i32], &'a [i32], &'a [u8]);
    let cases: [ViewCase; 5] = [
        ("shared storage declared larger by a second view", 0, &[6], &[1], &f32s[..12]),
        ("too long", 0, &[7], &[1], &f32s),
        ("offset past the end", 6, &[1], &[1], &f32s),
        ("stride past the end", 0, &[2, 3], &[4, 1], &f32s),
        ("storage shorter than declared", 0, &[6], &[1], &f32s[..8]),
    ];
    for (what, offset, shape, stride, storage) in cases {
        let mut p = PickleWriter::new();
        p.op(b"}(").str("state_dict").op(b"}(");
        if what.starts_with("shared") {
            // A first view that fits the 3-element record, then a 6-element one on the same record.
            p.str("v").tensor("FloatStorage", "0", 3, 0, &[3], &[1]);
        }
        p.str("w").tensor("FloatStorage", "0", 6, offset, shape, stride);
        p.op(b"u").str("hyper_parameters").op(b"}(").str("in_shape").int_tuple(&[1]);
        p.str("hidden_channels").int_tuple(&[1]).str("temporal_kernel_sizes").int_tuple(&[1]);
        p.str("spatial_kernel_sizes").int_tuple(&[1]).str("n_neurons_dict").op(b"}uu.");
        let bytes = zip_with(&[("archive/data.pkl", &p.0), ("archive/data/0", storage)]);
        let path = write(dir.path(), "view.ckpt", &bytes);
        let message = assert_one_line_error(read_model_file(&path), "view.ckpt");
        assert!(message.contains("state dict entry w"), "{what}: {message}");
    }
}

/// Dicts that each hold the previous one twice: 40 levels of a few bytes each name 2^40 values.
fn exponential_dict_pickle(levels: usize) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    for _ in 0..levels {
        // memo[0] = previous; pop; {} ; MARK 'a' memo[0] 'b' memo[0] SETITEMS
        p.extend_from_slice(&[b'q', 0, b'0', b'}', b'(']);
        for key in [b'a', b'b'] {
            p.extend_from_slice(&[b'X', 1, 0, 0, 0, key, b'h', 0]);
        }
        p.push(b'u');
    }
    p.push(b'.');
    p
}

#[test]
fn shared_references_cannot_blow_up_the_hyper_parameters() {
    // Found by the pickle fuzzer (an out-of-memory in 297 bytes): DUP and shared dicts made the JSON
    // conversion expand a small graph into an enormous tree. Both must end quickly with an error or a
    // small value.
    let found_by_fuzzer: &[u8] = &[137,125,125,125,125,40,125,137,129,137,129,78,125,115,125,137,115,125,137,129,125,125,115,125,137,129,125,115,125,137,116,50,50,50,40,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,137,78,50,50,50,78,143,143,78,116,50,48,50,40,50,50,50,50,50,50,50,137,78,50,50,50,78,143,143,78,116,50,48,50,40,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,137,116,50,50,50,40,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,137,78,50,50,50,78,143,143,78,116,50,48,50,40,50,50,50,50,50,50,50,137,78,50,50,50,78,143,143,78,116,50,48,50,40,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,50,137,78,143,143,50,50,50,50,50,50,50,137,78,143,143,78,116,50,50,46,148,148,148,50,148,148,148,85,0,50,40,50,50,50,50,78,255,255,255,255,255,255,255,255,255,255,137,78,143,143,50,50,50,50,50,50,50,137,78,143,143,78,116,50,50,46,148,148,148,50,148,148,148,85,0,50,40,50,50,50,50,78,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255];
    for bytes in [found_by_fuzzer.to_vec(), exponential_dict_pickle(40)] {
        let start = std::time::Instant::now();
        if let Ok(tree) = pickle::parse(&bytes, "test") {
            if let Ok(Some(json)) = retina::formats::checkpoint::to_json(&tree, &tree.root, 0) {
                assert!(json.to_string().len() < 100 << 20, "the JSON should stay small");
            }
        }
        assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    }
    let tree = pickle::parse(&exponential_dict_pickle(40), "test").unwrap();
    let err = retina::formats::checkpoint::to_json(&tree, &tree.root, 0).unwrap_err();
    assert!(err.contains("shared references"), "{err}");
}
