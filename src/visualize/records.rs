//! MEIs on disk, one at a time: each finished MEI is saved as its own small safetensors file (a
//! record) as soon as it is done, and `meis.safetensors` is the records concatenated. Both are read
//! tensor by tensor from their header, never whole, so memory does not grow with the number of MEIs.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::mei::Mei;
use crate::output::AtomicFile;
use crate::tensor::Tensor;

/// The tensors of one MEI in `meis.safetensors`, in the order they are stored.
pub fn tensor_names(id: &str) -> [String; 4] {
    [format!("mei.{id}"), format!("loss.{id}"), format!("response.{id}"), format!("objective.{id}")]
}

/// What an MEI's tensors hold; enough to draw its figure and video and to write its summary row.
pub struct MeiRecord {
    /// `(1, C, T, H, W)`.
    pub stimulus: Tensor<f32>,
    pub losses: Vec<f64>,
    pub response: Vec<f32>,
    pub objective: f64,
}

/// A tensor's place in a safetensors file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// A safetensors file of which only the header has been read.
pub struct TensorFile {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

/// safetensors headers of MEI files are ~100 bytes per tensor; more than this is not ours.
const MAX_HEADER: u64 = 256 << 20;

impl TensorFile {
    pub fn open(path: &Path) -> Result<TensorFile> {
        let bad = |what: String| Error::file(path, format!("{what}; delete it and run again to redo it"));
        let mut file = std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read ({e})")))?;
        let len = file.metadata().map_err(|e| Error::file(path, format!("cannot read ({e})")))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|_| bad("shorter than a safetensors header".into()))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || 8 + n > len {
            return Err(bad("its header length does not fit the file".into()));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(|e| bad(format!("cannot read its header ({e})")))?;
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("its header is not safetensors JSON ({e})")))?;
        let mut entries = BTreeMap::new();
        for (name, v) in json {
            if name == "__metadata__" {
                continue;
            }
            let parsed = (|| {
                let dtype = v.get("dtype")?.as_str()?.to_string();
                let shape = v.get("shape")?.as_array()?.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<Vec<_>>>()?;
                let offsets = v.get("data_offsets")?.as_array()?;
                let (s, e) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
                Some(Entry { dtype, shape, start: 8 + n + s, end: 8 + n + e })
            })();
            let entry = parsed.ok_or_else(|| bad(format!("tensor {name} has a malformed header entry")))?;
            if entry.start > entry.end || entry.end > len {
                return Err(bad(format!("tensor {name} lies past the end of the file")));
            }
            entries.insert(name, entry);
        }
        Ok(TensorFile { path: path.to_path_buf(), entries })
    }

    /// `None` when the file does not exist.
    pub fn open_if_exists(path: &Path) -> Result<Option<TensorFile>> {
        if path.is_file() {
            TensorFile::open(path).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| Error::file(&self.path, format!("has no tensor {name}; delete it and run again")))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        let read = || -> std::io::Result<Vec<u8>> {
            let mut file = std::fs::File::open(&self.path)?;
            file.seek(SeekFrom::Start(e.start))?;
            let mut bytes = vec![0u8; (e.end - e.start) as usize];
            file.read_exact(&mut bytes)?;
            Ok(bytes)
        };
        read().map_err(|err| Error::file(&self.path, format!("cannot read tensor {name} ({err})")))
    }

    fn checked(&self, name: &str, dtype: &str, size: usize) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        let elements: usize = e.shape.iter().product();
        if e.dtype != dtype || (e.end - e.start) as usize != elements * size {
            return Err(Error::file(&self.path, format!("tensor {name} is not {dtype} of its shape; delete the file and run again")));
        }
        self.bytes(name)
    }

    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.checked(name, "F32", 4)?.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
    }

    pub fn f64(&self, name: &str) -> Result<Vec<f64>> {
        Ok(self.checked(name, "F64", 8)?.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect())
    }

    /// An MEI's four tensors.
    pub fn read_mei(&self, id: &str) -> Result<MeiRecord> {
        let [mei, loss, response, objective] = tensor_names(id);
        let shape = self.entry(&mei)?.shape.clone();
        Ok(MeiRecord {
            stimulus: Tensor { shape, data: self.f32(&mei)? },
            losses: self.f64(&loss)?,
            response: self.f32(&response)?,
            objective: self.f64(&objective)?.first().copied().unwrap_or(f64::NAN),
        })
    }

    pub fn has_mei(&self, id: &str) -> bool {
        tensor_names(id).iter().all(|n| self.contains(n))
    }
}

/// A tensor to be written: its header entry and its little-endian bytes (filled in later).
pub struct TensorSpec {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: u64,
}

/// The header of a safetensors file holding `specs` stored one after the other in the given order:
/// JSON names in sorted order, padded with spaces to a multiple of 8 bytes, after its length.
pub fn header(specs: &[TensorSpec]) -> Vec<u8> {
    let mut offsets = Vec::with_capacity(specs.len());
    let mut at = 0u64;
    for s in specs {
        offsets.push((at, at + s.bytes));
        at += s.bytes;
    }
    let mut sorted: Vec<(&TensorSpec, (u64, u64))> = specs.iter().zip(offsets).collect();
    sorted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut json = String::from("{");
    for (i, (s, (a, b))) in sorted.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let name = serde_json::to_string(&s.name).expect("a string");
        let shape: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
        json += &format!("{name}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{a},{b}]}}", s.dtype, shape.join(","));
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

/// The header entries of one MEI's tensors, in storage order.
pub fn mei_specs(id: &str, stimulus_shape: &[usize], losses: usize, response: usize) -> Vec<TensorSpec> {
    let [mei, loss, resp, objective] = tensor_names(id);
    let elements: usize = stimulus_shape.iter().product();
    vec![
        TensorSpec { name: mei, dtype: "F32", shape: stimulus_shape.to_vec(), bytes: 4 * elements as u64 },
        TensorSpec { name: loss, dtype: "F64", shape: vec![losses], bytes: 8 * losses as u64 },
        TensorSpec { name: resp, dtype: "F32", shape: vec![response], bytes: 4 * response as u64 },
        TensorSpec { name: objective, dtype: "F64", shape: vec![1], bytes: 8 },
    ]
}

/// The data of one MEI's tensors, in the order of `mei_specs`.
pub fn mei_bytes(m: &MeiRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * (m.stimulus.data.len() + m.response.len()) + 8 * (m.losses.len() + 1));
    out.extend(m.stimulus.data.iter().flat_map(|x| x.to_le_bytes()));
    out.extend(m.losses.iter().flat_map(|x| x.to_le_bytes()));
    out.extend(m.response.iter().flat_map(|x| x.to_le_bytes()));
    out.extend(m.objective.to_le_bytes());
    out
}

impl MeiRecord {
    pub fn of(m: &Mei) -> MeiRecord {
        MeiRecord { stimulus: m.stimulus.clone(), losses: m.losses.clone(), response: m.response.clone(), objective: m.objective }
    }

    pub fn specs(&self, id: &str) -> Vec<TensorSpec> {
        mei_specs(id, &self.stimulus.shape, self.losses.len(), self.response.len())
    }
}

/// Save one MEI as its own record file, atomically.
pub fn write_record(path: &Path, id: &str, m: &MeiRecord) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(&header(&m.specs(id)))?;
    file.write_all(&mei_bytes(m))?;
    file.commit()
}
