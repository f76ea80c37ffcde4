//! Reading and writing safetensors files: models (with `model_class` / `hyper_parameters` metadata)
//! and plain named tensors (stimuli, responses, MEIs).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata, SafeTensorError, SafeTensors, TensorView};

use super::{ModelFile, RawModel, RawTensor, TensorData, TensorStore};
use crate::error::{Error, Result};

/// Parse safetensors bytes into named tensors and the metadata map. `what` names the source in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<(BTreeMap<String, RawTensor>, HashMap<String, String>)> {
    let invalid = |e: SafeTensorError| Error::new(format!("{what}: not a valid safetensors file ({})", explain(e)));
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    let st = SafeTensors::deserialize(bytes).map_err(invalid)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let tensor = decode(&view).map_err(|e| Error::new(format!("{what}: tensor {name}: {e}")))?;
        tensors.insert(name, tensor);
    }
    Ok((tensors, metadata.metadata().clone().unwrap_or_default()))
}

/// The safetensors crate's errors are bare variant names; say what they mean for the user's file.
fn explain(e: SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => "shorter than a safetensors header".into(),
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength => {
            "its header length does not fit the file; the file is truncated or damaged".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "its data size does not match its header; the file is truncated or damaged".into()
        }
        SafeTensorError::InvalidOffset(name) => format!("tensor {name} has data offsets out of order or past the end"),
        SafeTensorError::TensorInvalidInfo => "a tensor's data offsets do not match its shape and dtype".into(),
        SafeTensorError::ValidationOverflow => "a tensor's shape or offsets are too large".into(),
        SafeTensorError::InvalidHeader | SafeTensorError::InvalidHeaderDeserialization => {
            "its header is not valid safetensors JSON".into()
        }
        other => format!("{other:?}"),
    }
}

fn decode(view: &TensorView) -> std::result::Result<RawTensor, String> {
    decode_bytes(view.dtype(), view.shape().to_vec(), view.data())
}

/// Values of dtype `dtype` stored little-endian in `bytes`.
fn decode_bytes(dtype: Dtype, shape: Vec<usize>, bytes: &[u8]) -> std::result::Result<RawTensor, String> {
    check_dtype(dtype)?;
    let data = match dtype {
        Dtype::F32 => TensorData::F32(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()),
        Dtype::F64 => TensorData::F64(bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()),
        Dtype::I64 => TensorData::I64(bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()),
        Dtype::F16 => TensorData::F32(bytes.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()),
        Dtype::BF16 => TensorData::F32(
            bytes.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect(),
        ),
        _ => unreachable!("check_dtype refused it"),
    };
    Ok(RawTensor { shape, data })
}

/// The dtypes retina reads.
fn check_dtype(dtype: Dtype) -> std::result::Result<(), String> {
    match dtype {
        Dtype::F32 | Dtype::F64 | Dtype::I64 | Dtype::F16 | Dtype::BF16 => Ok(()),
        other => Err(format!("unsupported dtype {other:?} (use F32, F64, F16, BF16 or I64)")),
    }
}

/// IEEE half to single precision (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = frac * 2^-24.
            let v = frac as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Read a file, naming it in any error. Only regular files (a FIFO would block forever).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut file = super::open_regular_file(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| Error::file(path, format!("cannot read ({e})")))?;
    Ok(bytes)
}

/// Largest safetensors header accepted (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Read a model stored as safetensors, every tensor's values included.
pub fn read_model_file(path: &Path) -> Result<RawModel> {
    open_model(super::open_regular_file(path)?, &path.display().to_string())?.into_raw()
}

/// Open a model stored as safetensors in `source` (a file, or the built-in model's bytes): its
/// header is read and checked against the source's length, so a damaged or hostile file of gigabytes
/// is refused after reading its header only; the values stay in the source until the model loader
/// asks for them by name.
pub fn open_model<R: Read + Seek + 'static>(mut source: R, what: &str) -> Result<ModelFile> {
    let err = |problem: String| Error::new(format!("{what}: {problem}"));
    let source_len = source
        .seek(SeekFrom::End(0))
        .and_then(|len| source.rewind().map(|_| len))
        .map_err(|e| err(format!("cannot read ({e})")))?;
    let header = read_header(&mut source, source_len).map_err(&err)?;
    let data_len = check_header(&header, source_len).map_err(&err)?;
    if data_len > super::MAX_MODEL_BYTES {
        return Err(err(format!("its tensors take {data_len} bytes, more than any model ({} bytes)", super::MAX_MODEL_BYTES)));
    }
    // check_header parsed the same text.
    let metadata: Metadata = serde_json::from_slice(&header).map_err(|e| err(format!("not a valid safetensors file ({e})")))?;
    let data_start = 8 + header.len() as u64;
    let mut shapes = BTreeMap::new();
    let mut spans = HashMap::new();
    for (name, info) in metadata.tensors() {
        check_dtype(info.dtype).map_err(|problem| err(format!("tensor {name}: {problem}")))?;
        shapes.insert(name.clone(), info.shape.clone());
        let (begin, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        spans.insert(name, (info.dtype, data_start + begin, end - begin));
    }
    let text = metadata.metadata().clone().unwrap_or_default();
    let (model_class, hyper_parameters) = model_metadata(&text, what)?;
    let store = SafetensorsStore { source, spans, shapes: shapes.clone(), what: what.to_string() };
    Ok(ModelFile::new(model_class, hyper_parameters, shapes, Box::new(store)))
}

/// The values of a safetensors source's tensors, read one at a time at the offsets its header gives.
struct SafetensorsStore<R> {
    source: R,
    /// dtype, first byte in the source, length in bytes.
    spans: HashMap<String, (Dtype, u64, u64)>,
    shapes: BTreeMap<String, Vec<usize>>,
    what: String,
}

impl<R: Read + Seek> TensorStore for SafetensorsStore<R> {
    fn read(&mut self, name: &str) -> Result<RawTensor> {
        let err = |problem: String| Error::new(format!("{}: tensor {name}: {problem}", self.what));
        let (Some(&(dtype, start, len)), Some(shape)) = (self.spans.get(name), self.shapes.get(name)) else {
            return Err(err("not in the file".into()));
        };
        // The header check bounded `len` by the file's length (and MAX_MODEL_BYTES).
        let mut bytes = vec![0u8; len as usize];
        self.source
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.source.read_exact(&mut bytes))
            .map_err(|e| err(format!("cannot read ({e}); the file is truncated or changed while being read")))?;
        decode_bytes(dtype, shape.clone(), &bytes).map_err(err)
    }
}

/// The JSON header of a safetensors file of `file_len` bytes, its length checked first.
pub fn read_header(file: &mut (impl Read + Seek), file_len: u64) -> std::result::Result<Vec<u8>, String> {
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| "shorter than a safetensors header".to_string())?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES || header_len > file_len.saturating_sub(8) {
        return Err(format!(
            "safetensors header length {header_len} does not fit a file of {file_len} bytes; the file is truncated or damaged"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| format!("cannot read ({e})"))?;
    Ok(header)
}

/// Check a safetensors header before any tensor data is read: valid JSON, every tensor's bytes
/// match its shape and dtype, the data follows in order without gaps, and the file is exactly as
/// long as the header says. Returns the length of the data part.
pub fn check_header(header: &[u8], file_len: u64) -> std::result::Result<u64, String> {
    let invalid = |e: SafeTensorError| format!("not a valid safetensors file ({})", explain(e));
    let text = std::str::from_utf8(header).map_err(|_| invalid(SafeTensorError::InvalidHeader))?;
    let metadata: Metadata =
        serde_json::from_str(text).map_err(|_| invalid(SafeTensorError::InvalidHeaderDeserialization))?;
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for (name, info) in metadata.tensors() {
        let (begin, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        let numel = info.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let bytes = numel.and_then(|n| n.checked_mul(info.dtype.size() as u64));
        if bytes.is_none() || end < begin || Some(end - begin) != bytes {
            return Err(invalid(SafeTensorError::TensorInvalidInfo));
        }
        spans.push((begin, end, name));
    }
    spans.sort();
    let mut data_len = 0;
    for (begin, end, name) in spans {
        if begin != data_len {
            return Err(invalid(SafeTensorError::InvalidOffset(name)));
        }
        data_len = end;
    }
    let expected = 8 + header.len() as u64 + data_len;
    if expected != file_len {
        return Err(format!(
            "not a valid safetensors file (its header describes {expected} bytes but the file holds {file_len}; \
             the file is truncated or damaged)"
        ));
    }
    Ok(data_len)
}

/// Parse a model stored as safetensors bytes with `model_class` and `hyper_parameters` metadata.
pub fn parse_model(bytes: &[u8], what: &str) -> Result<RawModel> {
    let (tensors, metadata) = parse(bytes, what)?;
    let (model_class, hyper_parameters) = model_metadata(&metadata, what)?;
    Ok(RawModel { model_class, hyper_parameters, tensors })
}

/// The model class and hyper parameters a retina model file keeps in its metadata.
fn model_metadata(metadata: &HashMap<String, String>, what: &str) -> Result<(String, serde_json::Value)> {
    let model_class = metadata.get("model_class").cloned().ok_or_else(|| {
        Error::new(format!("{what}: no `model_class` metadata; this safetensors file holds tensors but not a retina model"))
    })?;
    let hp = metadata.get("hyper_parameters").ok_or_else(|| {
        Error::new(format!("{what}: no `hyper_parameters` metadata; this safetensors file holds tensors but not a retina model"))
    })?;
    let hyper_parameters: serde_json::Value = serde_json::from_str(hp)
        .map_err(|e| Error::new(format!("{what}: `hyper_parameters` metadata is not JSON ({e})")))?;
    Ok((model_class, hyper_parameters))
}

/// Serialise named tensors (+ optional metadata) to safetensors bytes.
pub fn serialize(tensors: &BTreeMap<String, RawTensor>, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = match &t.data {
                TensorData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                TensorData::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                TensorData::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            (name.clone(), dtype, t.shape.clone(), bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::new(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, &metadata).map_err(|e| Error::new(format!("cannot encode safetensors ({e})")))
}

/// Serialise a model in the native format (`model_class` + `hyper_parameters` metadata).
pub fn serialize_model(model: &RawModel) -> Result<Vec<u8>> {
    let metadata = HashMap::from([
        ("model_class".to_string(), model.model_class.clone()),
        ("hyper_parameters".to_string(), model.hyper_parameters.to_string()),
    ]);
    serialize(&model.tensors, Some(metadata))
}
