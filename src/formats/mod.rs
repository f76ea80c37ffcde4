//! File formats: what a model file holds before it becomes a typed model.
//!
//! Every reader (safetensors, Lightning checkpoints, the nnfabrik ensemble files) produces the same
//! [`RawModel`]: PyTorch state-dict tensors by name, the model class name and the hyper parameters as
//! JSON (the layout of `../shared/fixtures/*/model.safetensors`). `model::load` turns that into a model.

pub mod checkpoint;
pub mod download;
pub mod integrity;
pub mod pickle;
pub mod registry;
pub mod safetensors;
pub mod torch;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Values of one stored tensor, in the dtype it was stored with.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl RawTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        RawTensor { shape, data: TensorData::F32(data) }
    }

    pub fn numel(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// The values as floats of type `F` (f32 or f64); integer tensors are refused by name.
    pub fn to_float<F: crate::model::Float>(&self, name: &str) -> Result<Tensor<F>> {
        let data: Vec<F> = match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| F::from_f64(x as f64)).collect(),
            TensorData::F64(v) => v.iter().map(|&x| F::from_f64(x)).collect(),
            TensorData::I64(_) => {
                return Err(Error::new(format!("tensor {name} holds integers where floats are needed")))
            }
        };
        Tensor::new(self.shape.clone(), data)
    }
}

/// A model as stored: state dict + class name + hyper parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RawModel {
    /// openretina's class name, e.g. `ExampleCoreReadout`, `UnifiedCoreReadout`,
    /// `SFB3d_core_SxF3d_readout`.
    pub model_class: String,
    /// The hyper parameters as JSON, modules left out (the fixtures' `hparams.json` layout).
    pub hyper_parameters: serde_json::Value,
    /// PyTorch state-dict tensors by name.
    pub tensors: BTreeMap<String, RawTensor>,
}

/// Reads the values of a model file's tensors one at a time, when the model loader asks for them: a
/// tensor the model does not take (an extra one, or one of the wrong shape) is never read.
pub trait TensorStore {
    /// The values of `name`, one of the names the file lists.
    fn read(&mut self, name: &str) -> Result<RawTensor>;
}

/// A model file with everything but its tensors' values read: the class, the hyper parameters and
/// each tensor's shape. `model::load` compares names and shapes with what the architecture takes
/// and reads only those values ([`ModelFile::read_tensor`]), so the memory a file can make retina
/// spend is bounded by the architecture its hyper parameters describe, not by the file.
pub struct ModelFile {
    pub model_class: String,
    pub hyper_parameters: serde_json::Value,
    /// The shape of every stored tensor, by state-dict name.
    pub shapes: BTreeMap<String, Vec<usize>>,
    store: Box<dyn TensorStore>,
}

impl ModelFile {
    pub fn new(model_class: String, hyper_parameters: serde_json::Value, shapes: BTreeMap<String, Vec<usize>>, store: Box<dyn TensorStore>) -> Self {
        ModelFile { model_class, hyper_parameters, shapes, store }
    }

    /// The values of one stored tensor.
    pub fn read_tensor(&mut self, name: &str) -> Result<RawTensor> {
        if !self.shapes.contains_key(name) {
            return Err(Error::new(format!("tensor `{name}` is not in the model file")));
        }
        self.store.read(name)
    }

    /// Every tensor read (`convert`, tests).
    pub fn into_raw(mut self) -> Result<RawModel> {
        let names: Vec<String> = self.shapes.keys().cloned().collect();
        let tensors = names.into_iter().map(|name| Ok((name.clone(), self.store.read(&name)?))).collect::<Result<_>>()?;
        Ok(RawModel { model_class: self.model_class, hyper_parameters: self.hyper_parameters, tensors })
    }
}

/// No openretina model comes near this many bytes of tensors: a file asking for more is refused
/// before its data is read.
pub const MAX_MODEL_BYTES: u64 = 4 << 30;

/// Open `path` for reading if it is a regular file (symlinks followed). Anything else is refused
/// before it is opened: opening a FIFO blocks until someone writes to it, and reading a device or
/// socket may never end.
pub fn open_regular_file(path: &Path) -> Result<File> {
    let metadata = std::fs::metadata(path).map_err(|e| Error::file(path, format!("cannot read ({e})")))?;
    check_regular(path, &metadata)?;
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot read ({e})")))?;
    // The path may have been swapped between the two looks; the open file is what counts.
    let metadata = file.metadata().map_err(|e| Error::file(path, format!("cannot read ({e})")))?;
    check_regular(path, &metadata)?;
    Ok(file)
}

fn check_regular(path: &Path, metadata: &std::fs::Metadata) -> Result<()> {
    if metadata.is_file() {
        return Ok(());
    }
    let kind = if metadata.is_dir() { "a folder" } else { "not a regular file (a FIFO, socket or device?)" };
    Err(Error::file(path, format!("{kind}; retina reads model and tensor files only from regular files")))
}

/// The built-in `demo` model: openretina's `ExampleCoreReadout` fixture with the architecture of
/// `hoefling_2024_base_low_res` (2 colours, 18x16 pixels, two layers of 16 channels, 3 sessions).
pub const DEMO_MODEL: &[u8] = include_bytes!("../../assets/demo.safetensors");

/// Where a model comes from, for messages.
pub fn describe_source(spec: &str) -> String {
    if spec == "demo" {
        "built-in model `demo`".to_string()
    } else {
        spec.to_string()
    }
}

/// Read a model given as `demo`, a local file or folder (.safetensors, Lightning .ckpt, Hoefling
/// ensemble folder; told apart by content), a URL or a registered name (downloaded into the cache).
/// `model_id` picks the member of an ensemble folder (negative counts from the end).
pub fn read_model(spec: &str, model_id: i64, download_options: &download::DownloadOptions) -> Result<RawModel> {
    open_model(spec, model_id, download_options)?.into_raw()
}

/// [`read_model`] with only the names and shapes of the tensors read, for `model::load`.
pub fn open_model(spec: &str, model_id: i64, download_options: &download::DownloadOptions) -> Result<ModelFile> {
    match download::resolve_model(spec, download_options)? {
        download::ModelLocation::BuiltIn(_) => safetensors::open_model(std::io::Cursor::new(DEMO_MODEL), "built-in model `demo`"),
        download::ModelLocation::Local { path, .. } => checkpoint::open_model(&path, model_id),
    }
}
