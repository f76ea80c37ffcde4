//! Reading files written by `torch.save` (the zip format torch uses since 1.6; Lightning `.ckpt`
//! files are the same format).
//!
//! Layout: one top folder `<prefix>/` holding `data.pkl` (the pickled object, tensors referring to
//! storages by key), `data/<key>` (raw storage bytes) and `byteorder` (`little` or `big`; absent means
//! little). Tensors are strided views on storages; several tensors may share one storage. Views are
//! copied out into contiguous [`RawTensor`]s.
//!
//! Safety: entry names with `..`, absolute paths or backslashes are refused before anything is read;
//! compressed entries are refused (torch never compresses); storage sizes are checked against what the
//! pickle declares and against the archive's length before allocation. The end-of-archive record is
//! looked for only where the zip format allows it (the last 64 KiB + 22 bytes), so appended data
//! cannot make opening slow. A state dict is sized before any of its data is read: every name is
//! checked, the storages it uses must fit in the file together, and the tensors it expands to must
//! stay within twice those storages (see [`TorchFile::state_dict`]).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};

use super::pickle::{self, Node, Pickle, StorageDtype, StorageRef, TensorRef, Value};
use super::safetensors::f16_to_f32;
use super::{RawTensor, TensorData, MAX_MODEL_BYTES};
use crate::error::{Error, Result};

/// Largest tensor a view may expand to beyond its storage (stride-0 broadcasts), in elements.
const MAX_BROADCAST_ELEMENTS: u64 = 1 << 24;
/// Slack of the state-dict memory budget beyond twice its storages: small integer tensors widen to
/// i64 (8x), half floats to f32 (2x).
const STATE_DICT_SLACK_BYTES: u64 = 16 << 20;
/// Most entries in a state dict (openretina models have tens to hundreds).
const MAX_STATE_DICT_ENTRIES: usize = 100_000;
/// The zip end-of-central-directory record: 22 bytes plus a comment of at most 65535 bytes.
const EOCD_LEN: u64 = 22;
const MAX_EOCD_SEARCH: u64 = EOCD_LEN + 65535;

/// An opened `torch.save` archive: the parsed pickle plus access to its storages.
pub struct TorchFile<R: Read + Seek> {
    archive: zip::ZipArchive<R>,
    /// Archive length in bytes: no entry can honestly be longer.
    archive_len: u64,
    /// `<prefix>/` of every record.
    prefix: String,
    big_endian: bool,
    pub pickle: Pickle,
    /// `what` for error messages (usually the file path).
    what: String,
    storages: HashMap<String, Vec<u8>>,
}

/// The zip magic: `torch.save` archives and Lightning checkpoints start with it.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Refuse entry names that could point outside the archive's folder.
fn check_entry_name(name: &str) -> std::result::Result<(), String> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.as_bytes().get(1) == Some(&b':')
        || name.split('/').any(|part| part == "..");
    if bad {
        return Err(format!("refusing zip entry name {name:?} (absolute or leaves the archive)"));
    }
    Ok(())
}

impl<R: Read + Seek> TorchFile<R> {
    /// Open the archive, check its entry names, find `<prefix>/data.pkl` and parse it.
    pub fn open(mut reader: R, what: &str) -> Result<Self> {
        let err = |problem: String| Error::new(format!("{what}: {problem}"));
        let archive_len = reader
            .seek(std::io::SeekFrom::End(0))
            .and_then(|len| reader.rewind().map(|_| len))
            .map_err(|e| err(format!("cannot read ({e})")))?;
        check_end_of_archive(&mut reader, archive_len).map_err(&err)?;
        let mut archive = zip::ZipArchive::new(reader)
            .map_err(|e| err(format!("not a readable torch.save zip archive, truncated or corrupt? ({e})")))?;
        let mut pickle_entries = Vec::new();
        for name in archive.file_names() {
            check_entry_name(name).map_err(&err)?;
            if let Some(prefix) = name.strip_suffix("data.pkl") {
                if prefix.ends_with('/') && prefix.matches('/').count() == 1 {
                    pickle_entries.push(prefix.to_string());
                }
            }
        }
        let prefix = match pickle_entries.as_slice() {
            [one] => one.clone(),
            [] => return Err(err("no <name>/data.pkl in the zip archive; this is not a torch.save file".into())),
            _ => return Err(err("several <name>/data.pkl in one zip archive; cannot tell which to read".into())),
        };
        let big_endian = match read_entry(&mut archive, &format!("{prefix}byteorder"), 16, archive_len) {
            Ok(Some(bytes)) => match bytes.as_slice() {
                b"little" => false,
                b"big" => true,
                _ => return Err(err("unknown byteorder record".into())),
            },
            Ok(None) => false,
            Err(problem) => return Err(err(problem)),
        };
        let pickle_bytes = read_entry(&mut archive, &format!("{prefix}data.pkl"), archive_len, archive_len)
            .map_err(&err)?
            .ok_or_else(|| err("data.pkl is missing".into()))?;
        let pickle = pickle::parse_checkpoint(&pickle_bytes, what)?;
        Ok(TorchFile {
            archive,
            archive_len,
            prefix,
            big_endian,
            pickle,
            what: what.to_string(),
            storages: HashMap::new(),
        })
    }

    /// The tensor a pickled value stands for, copied out contiguously.
    pub fn tensor(&mut self, value: &Value) -> Result<RawTensor> {
        let tensor = match self.pickle.node(value) {
            Some(Node::Tensor(t)) => t.clone(),
            _ => return Err(Error::new(format!("{}: expected a tensor", self.what))),
        };
        self.materialise(&tensor).map_err(|problem| Error::new(format!("{}: {problem}", self.what)))
    }

    /// All entries of a pickled dict of name -> tensor (a state dict).
    ///
    /// Sized before any data is read: a small file can name huge views (stride-0 broadcasts, many
    /// views of one storage, many zip entries on one record). So every name must look like a
    /// PyTorch parameter name, the storages the dict uses must fit in the file together (honest
    /// records do not overlap), and the tensors must need at most twice those storages' bytes (plus
    /// slack for widened integers), at most [`MAX_MODEL_BYTES`].
    pub fn state_dict(&mut self, dict: &Value) -> Result<BTreeMap<String, RawTensor>> {
        let entries = self.state_dict_entries(dict)?;
        let mut tensors = BTreeMap::new();
        for (name, (_, value)) in &entries {
            tensors.insert(name.clone(), self.state_dict_tensor(name, value)?);
        }
        Ok(tensors)
    }

    /// The tensor of the state-dict entry `name` (its pickled `value`), copied out.
    pub fn state_dict_tensor(&mut self, name: &str, value: &Value) -> Result<RawTensor> {
        self.tensor(value).map_err(|e| Error::new(format!("{e} (state dict entry {name})")))
    }

    /// The entries of a state dict, name -> (shape, the pickled tensor), checked and sized as
    /// [`TorchFile::state_dict`] says, without reading any data.
    pub fn state_dict_entries(&mut self, dict: &Value) -> Result<BTreeMap<String, (Vec<usize>, Value)>> {
        let what = self.what.clone();
        let err = |problem: String| Error::new(format!("{what}: {problem}"));
        let entries = self.pickle.dict_entries(dict).ok_or_else(|| err("the state dict is not a dict".into()))?.to_vec();
        if entries.len() > MAX_STATE_DICT_ENTRIES {
            return Err(err(format!(
                "the state dict has {} entries, more than any model ({MAX_STATE_DICT_ENTRIES})",
                entries.len()
            )));
        }
        let mut named = BTreeMap::new();
        let mut storages: HashMap<&str, u64> = HashMap::new();
        let mut tensor_bytes: u64 = 0;
        for (key, value) in &entries {
            let Value::Str(name) = key else { return Err(err("a state dict key is not a string".into())) };
            check_parameter_name(name).map_err(&err)?;
            let Some(Node::Tensor(t)) = self.pickle.node(value) else {
                return Err(err(format!("state dict entry {name} is not a tensor")));
            };
            let storage_bytes = t.storage.numel.saturating_mul(t.storage.dtype.size_in_bytes() as u64);
            let declared = storages.entry(&t.storage.key).or_insert(0);
            *declared = (*declared).max(storage_bytes);
            let numel = t.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).unwrap_or(u64::MAX);
            tensor_bytes = tensor_bytes.saturating_add(numel.saturating_mul(decoded_size(t.storage.dtype)));
            let shape = t.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
            named.insert(name.to_string(), (shape, value.clone()));
        }
        let storage_total = storages.values().fold(0u64, |sum, &b| sum.saturating_add(b));
        if storage_total > self.archive_len {
            return Err(err(format!(
                "the state dict's storages claim {storage_total} bytes, more than the whole file ({} bytes); \
                 the file is damaged or made to exhaust memory",
                self.archive_len
            )));
        }
        let budget = storage_total.saturating_mul(2).saturating_add(STATE_DICT_SLACK_BYTES).min(MAX_MODEL_BYTES);
        if tensor_bytes > budget {
            return Err(err(format!(
                "the state dict's tensors would need {tensor_bytes} bytes from {storage_total} bytes of storage \
                 (views repeating the same data); refusing to expand them"
            )));
        }
        Ok(named)
    }

    /// The bytes of a storage, read once and shared by every tensor viewing it. Each use checks that
    /// the record holds the `numel` elements that use declares.
    fn storage_bytes(&mut self, storage: &StorageRef) -> std::result::Result<&[u8], String> {
        let expected =
            storage.numel.checked_mul(storage.dtype.size_in_bytes() as u64).ok_or("storage size overflows")?;
        if expected > self.archive_len {
            return Err(format!("storage {} claims {expected} bytes, more than the whole file", storage.key));
        }
        let name = format!("{}data/{}", self.prefix, storage.key);
        if !self.storages.contains_key(&storage.key) {
            check_entry_name(&storage.key)?;
            let bytes = read_entry(&mut self.archive, &name, self.archive_len, self.archive_len)?
                .ok_or_else(|| format!("storage record {name} is missing"))?;
            self.storages.insert(storage.key.clone(), bytes);
        }
        let bytes = self.storages.get(&storage.key).map(Vec::as_slice).unwrap_or_default();
        if (bytes.len() as u64) < expected {
            return Err(format!("storage record {name} holds {} bytes, {expected} expected", bytes.len()));
        }
        Ok(bytes)
    }

    fn materialise(&mut self, t: &TensorRef) -> std::result::Result<RawTensor, String> {
        let dtype = t.storage.dtype;
        // Load the storage first: it proves the declared storage size is really in the file.
        self.storage_bytes(&t.storage)?;
        let numel = t.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).ok_or("tensor size overflows")?;
        if numel > 0 {
            let last = t
                .shape
                .iter()
                .zip(&t.stride)
                .try_fold(t.offset, |acc, (&d, &s)| acc.checked_add((d - 1).checked_mul(s)?))
                .ok_or("tensor view overflows")?;
            if last >= t.storage.numel {
                return Err(format!("tensor view reaches element {last} of a storage of {}", t.storage.numel));
            }
            if numel > t.storage.numel.max(MAX_BROADCAST_ELEMENTS) {
                return Err(format!("tensor of {numel} elements on a storage of {}", t.storage.numel));
            }
        }
        let big_endian = self.big_endian;
        let bytes = self.storage_bytes(&t.storage)?;
        let offsets = ViewOffsets::new(t, numel);
        let data = match dtype {
            StorageDtype::F32 => {
                TensorData::F32(offsets.map(|i| f32::from_le_bytes(element(bytes, i, big_endian))).collect())
            }
            StorageDtype::F64 => {
                TensorData::F64(offsets.map(|i| f64::from_le_bytes(element(bytes, i, big_endian))).collect())
            }
            StorageDtype::F16 => TensorData::F32(
                offsets.map(|i| f16_to_f32(u16::from_le_bytes(element(bytes, i, big_endian)))).collect(),
            ),
            StorageDtype::BF16 => TensorData::F32(
                offsets
                    .map(|i| f32::from_bits((u16::from_le_bytes(element(bytes, i, big_endian)) as u32) << 16))
                    .collect(),
            ),
            StorageDtype::I64 => {
                TensorData::I64(offsets.map(|i| i64::from_le_bytes(element(bytes, i, big_endian))).collect())
            }
            StorageDtype::I32 => {
                TensorData::I64(offsets.map(|i| i32::from_le_bytes(element(bytes, i, big_endian)) as i64).collect())
            }
            StorageDtype::I16 => {
                TensorData::I64(offsets.map(|i| i16::from_le_bytes(element(bytes, i, big_endian)) as i64).collect())
            }
            StorageDtype::I8 => TensorData::I64(offsets.map(|i| bytes[i] as i8 as i64).collect()),
            StorageDtype::U8 => TensorData::I64(offsets.map(|i| bytes[i] as i64).collect()),
            StorageDtype::Bool => TensorData::I64(offsets.map(|i| (bytes[i] != 0) as i64).collect()),
        };
        let shape = t.shape.iter().map(|&d| d as usize).collect();
        Ok(RawTensor { shape, data })
    }
}

/// Storage element indices of a view's elements in C order (an odometer over the shape).
/// The caller has checked that every index lies inside the storage.
struct ViewOffsets<'t> {
    shape: &'t [u64],
    stride: &'t [u64],
    index: Vec<u64>,
    offset: u64,
    remaining: u64,
}

impl<'t> ViewOffsets<'t> {
    fn new(t: &'t TensorRef, numel: u64) -> Self {
        ViewOffsets {
            shape: &t.shape,
            stride: &t.stride,
            index: vec![0; t.shape.len()],
            offset: t.offset,
            remaining: numel,
        }
    }
}

impl Iterator for ViewOffsets<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.offset as usize;
        // Bump the last axis, carrying into earlier ones. Wrapping arithmetic: the intermediate
        // position past an axis' end may not fit, the result always does.
        for axis in (0..self.shape.len()).rev() {
            self.index[axis] += 1;
            self.offset = self.offset.wrapping_add(self.stride[axis]);
            if self.index[axis] < self.shape[axis] {
                break;
            }
            self.offset = self.offset.wrapping_sub(self.stride[axis].wrapping_mul(self.shape[axis]));
            self.index[axis] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining as usize;
        (n, Some(n))
    }
}

/// Element `index` of a storage of `N`-byte values, as little-endian bytes. The caller has checked
/// that the storage holds it.
fn element<const N: usize>(bytes: &[u8], index: usize, big_endian: bool) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[index * N..(index + 1) * N]);
    if big_endian {
        out.reverse();
    }
    out
}

/// Bytes per element once decoded (half floats become f32, integers i64).
fn decoded_size(dtype: StorageDtype) -> u64 {
    match dtype {
        StorageDtype::F64 | StorageDtype::F32 => dtype.size_in_bytes() as u64,
        StorageDtype::F16 | StorageDtype::BF16 => 4,
        _ => 8,
    }
}

/// PyTorch parameter names: dotted identifiers (`core.features.layer0.conv.weight_spatial`).
fn check_parameter_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 1000
        && name.chars().all(|c| c.is_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        let shown: String = name.chars().take(80).collect();
        Err(format!("state dict entry {shown:?} is not a parameter name"))
    }
}

/// The zip end-of-central-directory record must end the file, at most 65535 + 22 bytes from its end
/// (the comment length is 16 bits). Searching further, as the zip crate does, lets appended
/// gigabytes make opening slow; such a file is refused instead.
pub fn check_end_of_archive<R: Read + Seek>(reader: &mut R, archive_len: u64) -> std::result::Result<(), String> {
    let tail_len = archive_len.min(MAX_EOCD_SEARCH);
    let mut tail = vec![0u8; tail_len as usize];
    reader
        .seek(std::io::SeekFrom::Start(archive_len - tail_len))
        .and_then(|_| reader.read_exact(&mut tail))
        .and_then(|_| reader.rewind())
        .map_err(|e| format!("cannot read ({e})"))?;
    let found = (0..tail.len().saturating_sub(EOCD_LEN as usize - 1)).rev().any(|at| {
        let comment_len = u16::from_le_bytes([tail[at + 20], tail[at + 21]]) as usize;
        tail[at..].starts_with(b"PK\x05\x06") && at + EOCD_LEN as usize + comment_len == tail.len()
    });
    if found {
        Ok(())
    } else {
        Err("no zip end-of-archive record at the end of the file: truncated, damaged, or with data appended \
             after the archive"
            .into())
    }
}

/// Read one entry, or `None` if absent. Refuses compressed entries and entries longer than `max_len`.
fn read_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    max_len: u64,
    archive_len: u64,
) -> std::result::Result<Option<Vec<u8>>, String> {
    let mut entry = match archive.by_name(name) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("cannot read zip entry {name} ({e})")),
    };
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(format!("zip entry {name} is compressed; torch.save never compresses"));
    }
    let size = entry.size();
    if size > archive_len {
        return Err(format!("zip entry {name} claims {size} bytes, more than the whole file"));
    }
    if size > max_len {
        return Err(format!("zip entry {name} holds {size} bytes, at most {max_len} expected"));
    }
    // Read to the entry's end (bounded by its declared size) so the zip reader checks its CRC.
    let mut bytes = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut bytes).map_err(|e| format!("cannot read zip entry {name} ({e})"))?;
    if (bytes.len() as u64) != size {
        return Err(format!("zip entry {name} is truncated"));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::check_entry_name;

    #[test]
    fn entry_names() {
        assert!(check_entry_name("archive/data.pkl").is_ok());
        assert!(check_entry_name("../evil").is_err());
        assert!(check_entry_name("a/../../evil").is_err());
        assert!(check_entry_name("/etc/passwd").is_err());
        assert!(check_entry_name("C:/x").is_err());
        assert!(check_entry_name("a\\..\\b").is_err());
    }
}
