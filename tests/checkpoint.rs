//! Checkpoint readers against the openretina fixtures, and hostile files that must be refused.

use std::io::Write;
use std::path::{Path, PathBuf};

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
            (TensorData::F32(a), TensorData::F32(b)) => {
                a.iter().map(|x| x.to_bits()).eq(b.iter().map(|x| x.to_bits()))
            }
            (TensorData::F64(a), TensorData::F64(b)) => {
                a.iter().map(|x| x.to_bits()).eq(b.iter().map(|x| x.to_bits()))
            }
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

/// A zip archive with the given entries, stored uncompressed (as torch.save writes them).
fn zip_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
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

    // The pickle reader alone records the call inertly.
    let parsed = pickle::parse(&evil, "evil").unwrap();
    assert_eq!(parsed.object_class(&parsed.root), Some(("os", "system")));

    // As the data.pkl of a checkpoint.
    let ckpt = write(dir.path(), "evil.ckpt", &zip_with(&[("archive/data.pkl", &evil)]));
    let message = assert_one_line_error(read_lightning_checkpoint(&ckpt), "not a Lightning checkpoint");
    assert!(message.contains("evil.ckpt"), "{message}");
    assert_one_line_error(read_model_file(&ckpt), "os.system");

    // As a bare file.
    let bare = write(dir.path(), "evil.pkl", &evil);
    assert_one_line_error(read_model_file(&bare), "evil.pkl");

    // As an ensemble member's data_info (with a valid config next to it).
    let ensemble = dir.path().join("ensemble");
    std::fs::create_dir(&ensemble).unwrap();
    write(&ensemble, "config_00000.yaml", b"model_config: {}\nmodel_fn: nnfabrik_euler.models.models.X\n");
    write(&ensemble, "data_info_00000.pkl", &evil);
    assert_one_line_error(read_ensemble_member(&ensemble, 0), "data_info_00000.pkl");

    assert!(!marker.exists(), "the pickle was executed");
}

#[test]
fn deeply_nested_pickles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 200000 empty lists, each appended into the one below: a list nested 200000 deep.
    let mut appended = b"\x80\x02".to_vec();
    appended.extend(std::iter::repeat(b']').take(200_000));
    appended.extend(std::iter::repeat(b'a').take(199_999));
    appended.push(b'.');
    // 200000 MARKs, each closed into a list: the same through MARK/LIST.
    let mut marked = b"\x80\x02".to_vec();
    marked.extend(std::iter::repeat(b'(').take(200_000));
    marked.extend(std::iter::repeat(b'l').take(200_000));
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
