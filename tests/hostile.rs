//! Hostile model files, each built here by a small generator: `retina info` must refuse every one
//! with exit code 2 and one line on stderr, within seconds, while running under a 1 GiB address-space
//! limit (`ulimit -v`). Every file is sized so that reading it naively would need more than that
//! limit or take minutes, so the limits are what the test checks, not decoration.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{zip_with, PickleWriter};
use retina::formats::TensorData;

struct Refusal {
    line: String,
    elapsed: Duration,
}

/// Run `retina info --model-path <model>` under the memory and time ceilings of
/// `common::run_limited`; assert exit code 2, no panic, one stderr line holding every one of `words`.
fn assert_refused(model: &Path, words: &[&str]) -> Refusal {
    let dir = model.parent().expect("a model in a folder");
    let run = common::run_limited(dir, &["info", "--model-path", model.to_str().expect("a UTF-8 path")], &[]);
    let what = model.display();
    let stderr = &run.stderr;
    assert_eq!(run.code, Some(2), "{what}: exit code {:?}; stderr: {stderr}", run.code);
    assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "{what}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: stderr should be one line, got {lines:#?}");
    for word in words {
        assert!(lines[0].contains(word), "{what}: `{}` does not mention `{word}`", lines[0]);
    }
    Refusal { line: lines[0].to_string(), elapsed: run.elapsed }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Grow a file to `len` bytes with a hole: gigabytes of zeros that take no disk space.
fn extend_sparse(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

/// `ExampleCoreReadout` hyper parameters, enough for the checkpoint reader to reach the state dict.
fn example_hyper_parameters(p: &mut PickleWriter) {
    p.str("hyper_parameters").op(b"}(").str("in_shape").int_tuple(&[1]);
    p.str("hidden_channels").int_tuple(&[1]).str("temporal_kernel_sizes").int_tuple(&[1]);
    p.str("spatial_kernel_sizes").int_tuple(&[1]).str("n_neurons_dict").op(b"}u");
}

/// A checkpoint whose state dict holds `entries` tensors made by `tensor(p, i)`.
fn checkpoint(entries: usize, tensor: impl Fn(&mut PickleWriter, usize)) -> Vec<u8> {
    let mut p = PickleWriter::new();
    p.op(b"}(").str("state_dict").op(b"}(");
    for i in 0..entries {
        p.str(&format!("w{i}"));
        tensor(&mut p, i);
    }
    p.op(b"u");
    example_hyper_parameters(&mut p);
    p.op(b"u.");
    p.0
}

const FLOATS_8MB: i32 = 2 << 20;

#[test]
fn stride_0_broadcast_views_of_one_element() {
    // 20 views of 2^24 float64 each (128 MiB apiece, 2.5 GiB in all) on one 8-byte storage.
    let pickle = checkpoint(20, |p, _| {
        p.tensor("DoubleStorage", "0", 1, 0, &[1 << 24], &[0]);
    });
    let bytes = zip_with(&[("archive/data.pkl", &pickle), ("archive/data/0", &1.5f64.to_le_bytes())]);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "broadcast.ckpt", &bytes);
    assert!(bytes.len() < 100_000);
    assert_refused(&path, &["broadcast.ckpt", "would need", "refusing to expand"]);
}

#[test]
fn many_views_of_one_storage() {
    // 160 entries all viewing one 8 MiB storage: 1.25 GiB if each were copied out.
    let pickle = checkpoint(160, |p, _| {
        p.tensor("FloatStorage", "0", FLOATS_8MB, 0, &[FLOATS_8MB], &[1]);
    });
    let storage = vec![0u8; 4 * FLOATS_8MB as usize];
    let bytes = zip_with(&[("archive/data.pkl", &pickle), ("archive/data/0", &storage)]);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "views.ckpt", &bytes);
    assert_refused(&path, &["views.ckpt", "would need", "refusing to expand"]);
}

/// Point the central-directory entries named `archive/data/<i>` (i >= 1) at the record of
/// `archive/data/0`: one stored record read under many names.
fn alias_zip_records(zip: &mut [u8]) {
    let u16_at = |z: &[u8], at: usize| u16::from_le_bytes([z[at], z[at + 1]]) as usize;
    let mut headers = Vec::new();
    let mut at = 0;
    while let Some(found) = zip[at..].windows(4).position(|w| w == b"PK\x01\x02") {
        let start = at + found;
        let name_len = u16_at(zip, start + 28);
        let name = String::from_utf8_lossy(&zip[start + 46..start + 46 + name_len]).into_owned();
        headers.push((start, name));
        at = start + 46 + name_len;
    }
    let (first, _) = headers.iter().find(|(_, name)| name == "archive/data/0").expect("record 0");
    // crc (16..20), sizes (20..28), local header offset (42..46).
    let fields: Vec<u8> = zip[first + 16..first + 28].iter().chain(&zip[first + 42..first + 46]).copied().collect();
    for (start, name) in &headers {
        if name.starts_with("archive/data/") && name != "archive/data/0" {
            zip[start + 16..start + 28].copy_from_slice(&fields[..12]);
            zip[start + 42..start + 46].copy_from_slice(&fields[12..]);
        }
    }
}

#[test]
fn zip_directory_pointing_many_entries_at_one_record() {
    // 130 storages, each a full 8 MiB record in the central directory, all one record in the file.
    let pickle = checkpoint(130, |p, i| {
        p.tensor("FloatStorage", &i.to_string(), FLOATS_8MB, 0, &[FLOATS_8MB], &[1]);
    });
    let storage = vec![0u8; 4 * FLOATS_8MB as usize];
    let names: Vec<String> = (1..130).map(|i| format!("archive/data/{i}")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("archive/data.pkl", &pickle), ("archive/data/0", &storage)];
    entries.extend(names.iter().map(|name| (name.as_str(), &b"x"[..])));
    let mut bytes = zip_with(&entries);
    alias_zip_records(&mut bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "aliased.ckpt", &bytes);
    assert_refused(&path, &["aliased.ckpt", "more than the whole file"]);
}

/// A list of 1000 references to a list of 1000 references to one 16 KiB string: 100 kB of pickle
/// that names 16 GB of text.
fn shared_string_bomb(p: &mut PickleWriter) {
    p.str(&"x".repeat(16 << 10)).op(b"q\x000");
    p.op(b"]q\x01(");
    for _ in 0..1000 {
        p.op(b"h\x00");
    }
    p.op(b"e0](");
    for _ in 0..1000 {
        p.op(b"h\x01");
    }
    p.op(b"e");
}

#[test]
fn hyper_parameters_naming_gigabytes_through_shared_references() {
    let mut p = PickleWriter::new();
    p.op(b"}(").str("state_dict").op(b"}");
    example_hyper_parameters(&mut p);
    // Replace the closing SETITEMS of the hyper parameters with one more entry.
    p.0.pop();
    p.str("bomb");
    shared_string_bomb(&mut p);
    p.op(b"uu.");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bomb.ckpt", &zip_with(&[("archive/data.pkl", &p.0)]));
    assert_refused(&path, &["bomb.ckpt", "shared references"]);
}

fn ensemble_folder(dir: &Path) -> PathBuf {
    let folder = dir.join("ensemble");
    std::fs::create_dir(&folder).unwrap();
    write(&folder, "config_00000.yaml", b"model_config: {}\nmodel_fn: nnfabrik_euler.models.models.X\n");
    folder
}

#[test]
fn ensemble_data_info_naming_gigabytes_through_shared_references() {
    let mut p = PickleWriter::new();
    p.op(b"}(").str("session").op(b"}(").str("input_dimensions");
    shared_string_bomb(&mut p);
    p.str("output_dimension").int(3).op(b"uu.");
    let dir = tempfile::tempdir().unwrap();
    let folder = ensemble_folder(dir.path());
    write(&folder, "data_info_00000.pkl", &p.0);
    assert_refused(&folder, &["data_info_00000.pkl", "shared references"]);
}

#[test]
fn a_checkpoint_that_would_run_code() {
    let mut p = PickleWriter::new();
    p.op(b"}(").str("state_dict").op(b"}");
    example_hyper_parameters(&mut p);
    p.0.pop();
    p.str("callback").global("posix", "system").str("echo hello").op(b"\x85R");
    p.op(b"uu.");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "model.ckpt", &zip_with(&[("archive/data.pkl", &p.0)]));
    let refusal = assert_refused(&path, &[]);
    assert_eq!(
        refusal.line,
        format!("error: {}: refusing to load: the checkpoint calls posix.system, which model files never need", path.display())
    );
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

#[test]
fn fifos_are_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.ckpt");
    mkfifo(&fifo);
    assert_refused(&fifo, &["model.ckpt", "not a regular file"]);

    let folder = dir.path().join("ensemble");
    std::fs::create_dir(&folder).unwrap();
    mkfifo(&folder.join("config_00000.yaml"));
    assert_refused(&folder, &["config_00000.yaml", "not a regular file"]);
}

#[test]
fn a_checkpoint_followed_by_gigabytes_of_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("appended.ckpt");
    std::fs::copy(common::fixture("example_low_res/model.ckpt"), &path).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    extend_sparse(&path, len + (4 << 30));
    let refusal = assert_refused(&path, &["appended.ckpt", "end-of-archive"]);
    assert!(refusal.elapsed < Duration::from_secs(10), "{:?}", refusal.elapsed);
}

#[test]
fn a_safetensors_header_followed_by_gigabytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    std::fs::copy(common::fixture("example_low_res/model.safetensors"), &path).unwrap();
    extend_sparse(&path, 3 << 30);
    let refusal = assert_refused(&path, &["big.safetensors", "truncated or damaged"]);
    assert!(refusal.elapsed < Duration::from_secs(10), "{:?}", refusal.elapsed);
}

/// The fixture model's safetensors header edited by `edit`, its data kept, the file grown (with a
/// hole) to the length the edited header describes.
fn safetensors_with_header(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value, u64)) -> PathBuf {
    let bytes = std::fs::read(common::fixture("example_low_res/model.safetensors")).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let data_len = (bytes.len() - 8 - len) as u64;
    edit(&mut header, data_len);
    let end = header.as_object().unwrap().values().filter_map(|t| t["data_offsets"][1].as_u64()).max().unwrap();
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + len..]);
    let path = write(dir, name, &out);
    extend_sparse(&path, 8 + header.len() as u64 + end);
    path
}

/// 3 GiB of float32 values: three times the address-space ceiling.
const FLOATS_3GB: u64 = 3 << 28;

#[test]
fn a_safetensors_model_with_an_extra_tensor_of_gigabytes() {
    // A well-formed file: every tensor the model takes, plus one it does not, 3 GiB of zeros stored
    // after the others. The header is consistent, so only comparing names with the architecture
    // before reading values keeps the run within the ceiling.
    let dir = tempfile::tempdir().unwrap();
    let path = safetensors_with_header(dir.path(), "extra.safetensors", |header, data_len| {
        header["core.features.layer0.conv.extra_weight"] =
            serde_json::json!({"dtype": "F32", "shape": [FLOATS_3GB], "data_offsets": [data_len, data_len + 4 * FLOATS_3GB]});
    });
    let refusal = assert_refused(&path, &["extra.safetensors", "1 unexpected tensor", "core.features.layer0.conv.extra_weight", "belong together"]);
    assert!(refusal.elapsed < Duration::from_secs(10), "{:?}", refusal.elapsed);
}

#[test]
fn a_safetensors_model_whose_tensor_has_a_huge_wrong_shape() {
    // The tensor stored last gets a shape of 3 GiB of values (its data grown to match): named as
    // the model expects, so it is refused by its shape, which is compared before its values are read.
    let dir = tempfile::tempdir().unwrap();
    let mut name = String::new();
    let path = safetensors_with_header(dir.path(), "huge_shape.safetensors", |header, _| {
        let (last, entry) = header
            .as_object_mut()
            .unwrap()
            .iter_mut()
            .filter(|(name, _)| *name != "__metadata__")
            .max_by_key(|(_, t)| t["data_offsets"][1].as_u64().unwrap())
            .unwrap();
        assert_eq!(entry["dtype"], "F32");
        let begin = entry["data_offsets"][0].as_u64().unwrap();
        entry["shape"] = serde_json::json!([FLOATS_3GB]);
        entry["data_offsets"][1] = (begin + 4 * FLOATS_3GB).into();
        name = last.clone();
    });
    let refusal = assert_refused(&path, &["huge_shape.safetensors", &format!("`{name}` has shape [{FLOATS_3GB}]"), "configuration needs"]);
    assert!(refusal.elapsed < Duration::from_secs(10), "{:?}", refusal.elapsed);
}

/// A JSON value as pickle opcodes (protocol 2): what a checkpoint's `hyper_parameters` hold.
fn pickle_json(p: &mut PickleWriter, value: &serde_json::Value) {
    use serde_json::Value as Json;
    match value {
        Json::Null => p.op(b"N"),
        Json::Bool(b) => p.op(if *b { b"\x88" } else { b"\x89" }),
        Json::Number(n) => match n.as_i64() {
            Some(i) => p.int(i32::try_from(i).expect("small integers")),
            None => p.op(b"G").op(&n.as_f64().expect("a float").to_be_bytes()),
        },
        Json::String(s) => p.str(s),
        Json::Array(items) => {
            p.op(b"](");
            items.iter().for_each(|item| pickle_json(p, item));
            p.op(b"e")
        }
        Json::Object(map) => {
            p.op(b"}(");
            map.iter().for_each(|(k, item)| pickle_json(p.str(k), item));
            p.op(b"u")
        }
    };
}

/// CRC-32 (zip's) of `bytes`, continuing from `crc`.
fn crc32(crc: u32, bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        std::array::from_fn(|i| (0..8).fold(i as u32, |c, _| if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 }))
    });
    !bytes.iter().fold(!crc, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// A stored zip (as torch.save writes them) of `entries`, then one entry `hole_name` of `hole_len`
/// zero bytes, left as a hole in the file: a large record that takes no disk space.
fn write_zip_with_hole(path: &Path, entries: &[(String, Vec<u8>)], hole_name: &str, hole_len: u32) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::File::create(path).unwrap();
    let mut central = Vec::new();
    let zeros = vec![0u8; 1 << 20];
    let hole_crc = (0..hole_len / zeros.len() as u32).fold(0, |crc, _| crc32(crc, &zeros));
    assert_eq!(hole_len % zeros.len() as u32, 0);
    let records = entries.iter().map(|(name, data)| (name.as_str(), Some(data.as_slice()), data.len() as u32, crc32(0, data)));
    let records: Vec<_> = records.chain([(hole_name, None, hole_len, hole_crc)]).collect();
    for &(name, data, len, crc) in &records {
        let offset = file.stream_position().unwrap() as u32;
        // Version 20, no flags, stored, time 0, date 1980-01-01, crc, sizes, name length, no extra.
        let fields = |out: &mut Vec<u8>| {
            for v in [20u16, 0, 0, 0, 0x21] {
                out.extend(v.to_le_bytes());
            }
            out.extend(crc.to_le_bytes());
            out.extend(len.to_le_bytes());
            out.extend(len.to_le_bytes());
            out.extend((name.len() as u16).to_le_bytes());
            out.extend(0u16.to_le_bytes());
        };
        let mut local = 0x0403_4b50u32.to_le_bytes().to_vec();
        fields(&mut local);
        local.extend(name.as_bytes());
        file.write_all(&local).unwrap();
        match data {
            Some(data) => file.write_all(data).unwrap(),
            None => drop(file.seek(SeekFrom::Current(len as i64)).unwrap()),
        }
        // Made by version 20, then the local fields, no comment, disk 0, no attributes, the offset.
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        fields(&mut central);
        central.extend([0u8; 10]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let central_offset = file.stream_position().unwrap() as u32;
    let mut end = 0x0605_4b50u32.to_le_bytes().to_vec();
    end.extend([0u8; 4]);
    end.extend((records.len() as u16).to_le_bytes());
    end.extend((records.len() as u16).to_le_bytes());
    end.extend((central.len() as u32).to_le_bytes());
    end.extend(central_offset.to_le_bytes());
    end.extend([0u8; 2]);
    file.write_all(&central).unwrap();
    file.write_all(&end).unwrap();
}

/// The example fixture model as a Lightning checkpoint (every tensor on its own storage, its hyper
/// parameters as a plain dict), with one more state-dict entry `extra` viewing a storage of
/// `extra_bytes` zero bytes.
fn checkpoint_with_extra_tensor(path: &Path, extra: &str, extra_bytes: u32) {
    let bytes = std::fs::read(common::fixture("example_low_res/model.safetensors")).unwrap();
    let raw = retina::formats::safetensors::parse_model(&bytes, "fixture").unwrap();
    let mut p = PickleWriter::new();
    p.op(b"}(").str("state_dict").op(b"}(");
    let mut records = Vec::new();
    for (i, (name, t)) in raw.tensors.iter().enumerate() {
        let (kind, data): (&str, Vec<u8>) = match &t.data {
            TensorData::F32(v) => ("FloatStorage", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::F64(v) => ("DoubleStorage", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::I64(v) => ("LongStorage", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        let shape: Vec<i32> = t.shape.iter().map(|&d| d as i32).collect();
        let stride: Vec<i32> = (0..shape.len()).map(|d| shape[d + 1..].iter().product()).collect();
        p.str(name).tensor(kind, &i.to_string(), t.numel() as i32, 0, &shape, &stride);
        records.push((format!("archive/data/{i}"), data));
    }
    let floats = (extra_bytes / 4) as i32;
    p.str(extra).tensor("FloatStorage", "extra", floats, 0, &[floats], &[1]);
    p.op(b"u").str("hyper_parameters");
    pickle_json(&mut p, &raw.hyper_parameters);
    p.op(b"u.");
    records.insert(0, ("archive/data.pkl".to_string(), p.0));
    write_zip_with_hole(path, &records, "archive/data/extra", extra_bytes);
}

#[test]
fn a_checkpoint_with_an_extra_tensor_of_half_a_gigabyte() {
    // A well-formed checkpoint of the example model with one entry more, on a 512 MiB storage record
    // (in the file, so every size check passes): reading the record and copying the tensor out
    // would need twice that, past the ceiling. Only comparing names with the architecture before
    // reading values refuses it within the ceiling.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.ckpt");
    checkpoint_with_extra_tensor(&path, "readout.session_1_ventral1_20200226.extra", 512 << 20);
    let refusal = assert_refused(&path, &["extra.ckpt", "1 unexpected tensor", "readout.session_1_ventral1_20200226.extra"]);
    assert!(!refusal.line.contains("missing"), "every tensor of the model is in the file: {}", refusal.line);
    assert!(refusal.elapsed < Duration::from_secs(10), "{:?}", refusal.elapsed);
}

#[test]
fn hyper_parameters_naming_a_huge_architecture_over_a_file_without_its_tensors() {
    // 100,000 channels per layer and no core tensor in the file: loading goes on past a missing
    // tensor with zeros in its place (to name every missing one), which must not grow to the
    // hundreds of gigabytes the hyper parameters name.
    let bytes = std::fs::read(common::fixture("example_low_res/model.safetensors")).unwrap();
    let (mut tensors, mut metadata) = retina::formats::safetensors::parse(&bytes, "fixture").unwrap();
    tensors.retain(|name, _| !name.starts_with("core."));
    let mut hp: serde_json::Value = serde_json::from_str(&metadata["hyper_parameters"]).unwrap();
    hp["hidden_channels"] = serde_json::json!([100_000, 100_000]);
    metadata.insert("hyper_parameters".into(), hp.to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "huge_architecture.safetensors", &retina::formats::safetensors::serialize(&tensors, Some(metadata)).unwrap());
    assert_refused(&path, &["huge_architecture.safetensors", "missing", "core.features.layer", "hyper parameters"]);
}
