//! The model files openretina users already have, read without Python:
//! - Lightning checkpoints (`.ckpt`) of `UnifiedCoreReadout` / `ExampleCoreReadout`;
//! - nnfabrik ensemble directories (`config_XXXXX.yaml`, `data_info_XXXXX.pkl`,
//!   `state_dict_XXXXX.pth.tar` per member), as `load_ensemble_retina_model_from_directory` reads them;
//! - and, for one entry point, the native safetensors format.
//!
//! All produce the same [`RawModel`] as the fixtures' `model.safetensors` / `member_XXXXX.safetensors`.
//!
//! Which class a Lightning checkpoint holds: Lightning does not store the class name, and openretina's
//! `load_core_readout_model` simply tries `UnifiedCoreReadout` and falls back to `ExampleCoreReadout`.
//! The two are told apart by their constructor arguments as saved in `hyper_parameters`:
//! `UnifiedCoreReadout` takes `core` and `readout` as configs (omegaconf `DictConfig` or dicts with
//! `_target_`); `ExampleCoreReadout` takes flat arguments (`temporal_kernel_sizes`, ...) and its saved
//! `core` / `readout` are torch modules. Anything else is refused with a message saying so.

use std::io::{BufReader, Read, Seek};
use std::path::Path;

use serde_json::{Map, Value as Json};

use super::pickle::{self, Node, Pickle, Value};
use super::torch::{is_zip, TorchFile};
use super::{open_regular_file, ModelFile, RawModel, RawTensor, TensorStore};
use crate::error::{Error, Result};

/// Deepest hyper-parameter / config nesting converted to JSON (also stops cycles).
const MAX_JSON_DEPTH: u32 = 100;
/// Largest YAML config or data_info pickle read (they are a few kB in practice).
const MAX_SIDE_FILE_BYTES: u64 = 64 << 20;

/// Read any model: a directory is an ensemble (member `model_id`, negative counts from the end), a file
/// is sniffed by content: zip = Lightning checkpoint, safetensors = native format. For a single-model
/// file `model_id` must be 0 or -1.
pub fn read_model(path: &Path, model_id: i64) -> Result<RawModel> {
    open_model(path, model_id)?.into_raw()
}

/// [`read_model`] with only the names and shapes of the tensors read (their values are read when
/// the model loader takes them).
pub fn open_model(path: &Path, model_id: i64) -> Result<ModelFile> {
    let metadata = std::fs::metadata(path).map_err(|e| Error::file(path, format!("cannot read ({e})")))?;
    if metadata.is_dir() {
        return open_ensemble_member(path, model_id);
    }
    let file = open_regular_file(path)?;
    if model_id != 0 && model_id != -1 {
        return Err(Error::file(path, format!("model id {model_id} asked for, but this file holds a single model")));
    }
    let mut head = Vec::with_capacity(16);
    file.take(16).read_to_end(&mut head).map_err(|e| Error::file(path, format!("cannot read ({e})")))?;
    if head.is_empty() {
        return Err(Error::file(path, "the file is empty"));
    }
    if is_zip(&head) {
        return open_lightning_checkpoint(path);
    }
    if looks_like_safetensors(&head, metadata.len()) {
        return super::safetensors::open_model(open_regular_file(path)?, &path.display().to_string());
    }
    if head[0] == 0x80 {
        return Err(Error::file(
            path,
            "a bare pickle (legacy torch.save format?) is not supported; expected a Lightning .ckpt or .safetensors",
        ));
    }
    if head.get(8) == Some(&b'{') {
        // A safetensors JSON header whose length field does not fit the file: say that, not "not a model".
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        return Err(Error::file(
            path,
            format!(
                "safetensors header length {len} does not fit a file of {} bytes; the file is truncated or damaged",
                metadata.len()
            ),
        ));
    }
    Err(Error::file(
        path,
        "not a model file: expected an ensemble directory, a Lightning checkpoint (.ckpt zip) or a .safetensors file",
    ))
}

/// [`read_model`] with member 0 for ensemble directories.
pub fn read_model_file(path: &Path) -> Result<RawModel> {
    read_model(path, 0)
}

/// safetensors: 8-byte little-endian header length, then a JSON header starting with `{`.
fn looks_like_safetensors(head: &[u8], file_len: u64) -> bool {
    let Some(len) = head.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else {
        return false;
    };
    head.get(8) == Some(&b'{') && len >= 2 && len <= file_len.saturating_sub(8)
}

// ---------------------------------------------------------------------------------------------
// Lightning checkpoints

/// Read a Lightning checkpoint of an openretina Core + Readout model.
pub fn read_lightning_checkpoint(path: &Path) -> Result<RawModel> {
    open_lightning_checkpoint(path)?.into_raw()
}

/// [`read_lightning_checkpoint`] with only the names and shapes of the tensors read.
pub fn open_lightning_checkpoint(path: &Path) -> Result<ModelFile> {
    let file = open_regular_file(path)?;
    let mut torch = TorchFile::open(BufReader::new(file), &path.display().to_string())?;
    let (model_class, hyper_parameters, entries) = lightning_parts(&mut torch, &path.display().to_string())?;
    Ok(torch_model_file(model_class, hyper_parameters, entries, torch))
}

/// The model held by an opened Lightning checkpoint. `what` names the source in errors.
pub fn lightning_model<R: Read + Seek>(torch: &mut TorchFile<R>, what: &str) -> Result<RawModel> {
    let (model_class, hyper_parameters, entries) = lightning_parts(torch, what)?;
    let mut tensors = std::collections::BTreeMap::new();
    for (name, (_, value)) in entries {
        let tensor = torch.state_dict_tensor(&name, &value)?;
        tensors.insert(name, tensor);
    }
    Ok(RawModel { model_class, hyper_parameters, tensors })
}

/// State-dict name -> (shape, the pickled tensor), as [`TorchFile::state_dict_entries`] gives them.
type Entries = std::collections::BTreeMap<String, (Vec<usize>, Value)>;

/// A model file whose tensors are read from `torch` when the loader takes them.
fn torch_model_file<R: Read + Seek + 'static>(model_class: String, hyper_parameters: Json, entries: Entries, torch: TorchFile<R>) -> ModelFile {
    let shapes = entries.iter().map(|(name, (shape, _))| (name.clone(), shape.clone())).collect();
    let values = entries.into_iter().map(|(name, (_, value))| (name, value)).collect();
    ModelFile::new(model_class, hyper_parameters, shapes, Box::new(TorchStore { torch, values }))
}

/// The tensors of a `torch.save` state dict, copied out one at a time.
struct TorchStore<R: Read + Seek> {
    torch: TorchFile<R>,
    values: std::collections::BTreeMap<String, Value>,
}

impl<R: Read + Seek> TensorStore for TorchStore<R> {
    fn read(&mut self, name: &str) -> Result<RawTensor> {
        let value = self.values.get(name).ok_or_else(|| Error::new(format!("tensor `{name}` is not in the state dict")))?;
        self.torch.state_dict_tensor(name, value)
    }
}

/// Class, hyper parameters and state-dict entries of an opened Lightning checkpoint, no tensor read.
fn lightning_parts<R: Read + Seek>(torch: &mut TorchFile<R>, what: &str) -> Result<(String, Json, Entries)> {
    let err = |problem: String| Error::new(format!("{what}: {problem}"));
    let p = &torch.pickle;
    if p.dict_entries(&p.root).is_none() {
        return Err(err(format!("not a Lightning checkpoint (the pickled object is {})", describe(p, &p.root))));
    }
    let state_dict = p
        .dict_get(&p.root, "state_dict")
        .cloned()
        .ok_or_else(|| err("not a Lightning checkpoint (no `state_dict`)".into()))?;
    let hparams = p.dict_get(&p.root, "hyper_parameters").ok_or_else(|| {
        err("the checkpoint has no `hyper_parameters` (saved without save_hyperparameters?); cannot rebuild the model".into())
    })?;
    let model_class = lightning_model_class(p, hparams).map_err(&err)?;
    let hyper_parameters = match to_json(p, hparams, 0).map_err(&err)? {
        Some(json @ Json::Object(_)) => json,
        _ => return Err(err("`hyper_parameters` is not a dict".into())),
    };
    let mut entries = torch.state_dict_entries(&state_dict)?;
    if model_class == "ExampleCoreReadout" {
        // ExampleCoreReadout.on_load_checkpoint: legacy readouts named their bias `bias_param`.
        let legacy: Vec<String> =
            entries.keys().filter(|k| k.starts_with("readout.") && k.ends_with(".bias_param")).cloned().collect();
        for key in legacy {
            if let Some(entry) = entries.remove(&key) {
                let renamed = format!("{}.bias", key.trim_end_matches(".bias_param"));
                entries.insert(renamed, entry);
            }
        }
    }
    Ok((model_class.to_string(), hyper_parameters, entries))
}

/// Tell the model class from its saved constructor arguments (see the module documentation).
fn lightning_model_class(p: &Pickle, hparams: &Value) -> std::result::Result<&'static str, String> {
    let has = |key: &str| p.dict_get(hparams, key).is_some();
    let is_config = |key: &str| p.dict_get(hparams, key).is_some_and(|v| is_config(p, v));
    if is_config("core") && is_config("readout") && has("in_shape") && has("n_neurons_dict") {
        return Ok("UnifiedCoreReadout");
    }
    let example_args =
        ["in_shape", "hidden_channels", "temporal_kernel_sizes", "spatial_kernel_sizes", "n_neurons_dict"];
    if example_args.iter().all(|k| has(k)) {
        return Ok("ExampleCoreReadout");
    }
    Err("cannot tell the model class: hyper_parameters hold neither UnifiedCoreReadout's core/readout configs \
         nor ExampleCoreReadout's arguments"
        .into())
}

/// An omegaconf `DictConfig` or a plain dict: what hydra can instantiate.
fn is_config(p: &Pickle, v: &Value) -> bool {
    match p.object_class(v) {
        Some((module, name)) => module.starts_with("omegaconf") && name == "DictConfig",
        None => matches!(p.node(v), Some(Node::Dict(_))),
    }
}

/// A short description of a pickled value for error messages.
fn describe(p: &Pickle, v: &Value) -> String {
    match (p.node(v), p.object_class(v)) {
        (_, Some((module, name))) => format!("an inert {module}.{name}(...) call"),
        (Some(Node::List(_)), _) => "a list".into(),
        (Some(Node::Tuple(_)), _) => "a tuple".into(),
        (Some(Node::Tensor(_)), _) => "a tensor".into(),
        (Some(Node::Class { module, name }), _) => format!("the class {module}.{name}"),
        (Some(_), _) => "an object".into(),
        (None, _) => "a plain value".into(),
    }
}

/// Convert plain pickled values to JSON. `Ok(None)` means "left out": torch modules, tensors, arrays
/// and other objects are not hyper parameters; omegaconf containers and nodes become their content.
pub fn to_json(p: &Pickle, v: &Value, depth: u32) -> std::result::Result<Option<Json>, String> {
    let mut budget = MAX_JSON_BYTES;
    json_value(p, v, depth, &mut budget)
}

/// Most bytes (about: each value counts 32 plus its text) one conversion may produce. Shared
/// references make a pickle a graph: a few hundred bytes can name a dict of dicts that expands to
/// 2^100 values, or a list of 1000 references to a list of 1000 references to one long string. Real
/// hyper parameters take a few kB. One budget may be shared by several conversions of one file.
pub const MAX_JSON_BYTES: usize = 32 << 20;

fn json_value(p: &Pickle, v: &Value, depth: u32, budget: &mut usize) -> std::result::Result<Option<Json>, String> {
    let text_len = match v {
        Value::Str(s) => s.len(),
        _ => 0,
    };
    *budget = budget.checked_sub(32 + text_len).ok_or_else(|| {
        format!("the values expand to more than {} MB (shared references); refusing to expand them", MAX_JSON_BYTES >> 20)
    })?;
    if depth > MAX_JSON_DEPTH {
        return Err(format!("values nested more than {MAX_JSON_DEPTH} levels deep (or cyclic)"));
    }
    Ok(Some(match v {
        Value::None => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        // JSON has no NaN or infinity.
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.to_string()),
        Value::BigInt(_) | Value::Bytes(_) => return Ok(None),
        Value::Node(_) => match p.node(v) {
            Some(Node::List(items) | Node::Tuple(items) | Node::Set(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(json_value(p, item, depth + 1, budget)?.unwrap_or(Json::Null));
                }
                Json::Array(out)
            }
            Some(Node::Dict(entries)) => dict_to_json(p, entries, depth, budget)?,
            Some(Node::Object(object)) => {
                if let Some((module, _)) = p.object_class(v) {
                    if module.starts_with("omegaconf") {
                        return omegaconf_to_json(p, object.state.as_ref(), depth, budget);
                    }
                }
                if object.dict_items.is_empty() {
                    return Ok(None);
                }
                // A dict subclass (AttributeDict, defaultdict...): its items.
                dict_to_json(p, &object.dict_items, depth, budget)?
            }
            _ => return Ok(None),
        },
    }))
}

fn dict_to_json(p: &Pickle, entries: &[(Value, Value)], depth: u32, budget: &mut usize) -> std::result::Result<Json, String> {
    let mut out = Map::new();
    for (key, value) in entries {
        // JSON keys are strings; like json.dumps, write ints, bools and None as their JSON text.
        let key = match key {
            Value::Str(s) => {
                *budget = budget.checked_sub(s.len()).ok_or("the values' keys expand beyond the budget (shared references)")?;
                s.to_string()
            }
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::None => "null".to_string(),
            _ => continue,
        };
        if let Some(value) = json_value(p, value, depth + 1, budget)? {
            out.insert(key, value);
        }
    }
    Ok(Json::Object(out))
}

/// omegaconf pickles its containers as `__dict__` states: `DictConfig`/`ListConfig` keep their items
/// in `_content` (a dict / list of nodes, or None, or an interpolation string), value nodes
/// (`AnyNode`, `IntegerNode`...) keep theirs in `_val`. `_parent` points back up and is not followed.
fn omegaconf_to_json(p: &Pickle, state: Option<&Value>, depth: u32, budget: &mut usize) -> std::result::Result<Option<Json>, String> {
    let Some(state) = state else { return Ok(None) };
    if let Some(content) = p.dict_get(state, "_content") {
        return json_value(p, content, depth + 1, budget);
    }
    if let Some(val) = p.dict_get(state, "_val") {
        return json_value(p, val, depth + 1, budget);
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// nnfabrik ensembles

/// Member ids (training seeds) of an ensemble directory, sorted: the `XXXXX` of its `config_XXXXX.yaml`.
pub fn ensemble_member_ids(dir: &Path) -> Result<Vec<i64>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list ({e})")))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(dir, format!("cannot list ({e})")))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_prefix("config_").and_then(|n| n.strip_suffix(".yaml")) {
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(id) = id.parse::<i64>() {
                    ids.push(id);
                }
            }
        }
    }
    if ids.is_empty() {
        return Err(Error::file(dir, "no config_XXXXX.yaml files: not an openretina ensemble directory"));
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Read one member of an nnfabrik ensemble directory. `model_id` indexes the sorted member ids;
/// negative values count from the end as in Python.
pub fn read_ensemble_member(dir: &Path, model_id: i64) -> Result<RawModel> {
    open_ensemble_member(dir, model_id)?.into_raw()
}

/// [`read_ensemble_member`] with only the names and shapes of the tensors read.
pub fn open_ensemble_member(dir: &Path, model_id: i64) -> Result<ModelFile> {
    let ids = ensemble_member_ids(dir)?;
    let n = ids.len() as i64;
    let index = if model_id < 0 { n + model_id } else { model_id };
    if index < 0 || index >= n {
        return Err(Error::file(
            dir,
            format!("model id {model_id} is out of range: the ensemble has {n} members (0..={} or -{n}..=-1)", n - 1),
        ));
    }
    let seed = ids[index as usize];
    let config_path = dir.join(format!("config_{seed:05}.yaml"));
    let data_info_path = dir.join(format!("data_info_{seed:05}.pkl"));
    let state_dict_path = dir.join(format!("state_dict_{seed:05}.pth.tar"));

    // config: model_fn names the builder (its last part is the class), model_config its arguments.
    let config_text =
        String::from_utf8(read_side_file(&config_path)?).map_err(|_| Error::file(&config_path, "not UTF-8 text"))?;
    let config = yaml_to_json(&config_text).map_err(|problem| Error::file(&config_path, problem))?;
    let model_fn = config
        .get("model_fn")
        .and_then(Json::as_str)
        .ok_or_else(|| Error::file(&config_path, "no `model_fn` string"))?;
    let model_class = ensemble_model_class(model_fn).map_err(|problem| Error::file(&config_path, problem))?;
    let model_config = match config.get("model_config") {
        Some(c @ Json::Object(_)) => c.clone(),
        _ => return Err(Error::file(&config_path, "no `model_config` mapping")),
    };

    // data_info: per session, the input dimensions and the number of neurons.
    let data_info_bytes = read_side_file(&data_info_path)?;
    let data_info = pickle::parse(&data_info_bytes, &data_info_path.display().to_string())?;
    let (input_dimensions, n_neurons_dict) =
        ensemble_data_info(&data_info).map_err(|problem| Error::file(&data_info_path, problem))?;

    let file = open_regular_file(&state_dict_path)?;
    let mut torch = TorchFile::open(BufReader::new(file), &state_dict_path.display().to_string())?;
    let root = torch.pickle.root.clone();
    let entries = torch.state_dict_entries(&root)?;

    let mut hyper_parameters = Map::new();
    hyper_parameters.insert("input_dimensions".into(), Json::Object(input_dimensions));
    hyper_parameters.insert("model_config".into(), model_config);
    hyper_parameters.insert("n_neurons_dict".into(), Json::Object(n_neurons_dict));
    Ok(torch_model_file(model_class, Json::Object(hyper_parameters), entries, torch))
}

fn read_side_file(path: &Path) -> Result<Vec<u8>> {
    let file = open_regular_file(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_SIDE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::file(path, format!("cannot read ({e})")))?;
    if bytes.len() as u64 > MAX_SIDE_FILE_BYTES {
        return Err(Error::file(path, format!("larger than {MAX_SIDE_FILE_BYTES} bytes; not an ensemble side file")));
    }
    Ok(bytes)
}

/// openretina maps `nnfabrik_euler.models.models.X` to its legacy `X` and accepts `openretina....X`.
fn ensemble_model_class(model_fn: &str) -> std::result::Result<String, String> {
    let parts: Vec<&str> = model_fn.split('.').collect();
    match parts.as_slice() {
        [repo, _, _, class] if (*repo == "nnfabrik_euler" || *repo == "openretina") && !class.is_empty() => {
            Ok(class.to_string())
        }
        _ => Err(format!("unsupported model_fn {model_fn:?} (expected nnfabrik_euler.models.models.<class>)")),
    }
}

/// Per-session input dimensions and neuron counts.
type SessionMaps = (Map<String, Json>, Map<String, Json>);

/// `{session: {"input_dimensions": (...), "output_dimension": n, ...}}` -> the two per-session maps.
fn ensemble_data_info(p: &Pickle) -> std::result::Result<SessionMaps, String> {
    let sessions = p.dict_entries(&p.root).ok_or("data_info is not a dict of sessions")?;
    let mut input_dimensions = Map::new();
    let mut n_neurons = Map::new();
    // One budget for all sessions: they may all point at the same huge shared value.
    let mut budget = MAX_JSON_BYTES;
    for (session, info) in sessions {
        let Value::Str(session) = session else { return Err("a data_info session key is not a string".into()) };
        let dims =
            p.dict_get(info, "input_dimensions").ok_or_else(|| format!("session {session} has no input_dimensions"))?;
        let dims = match json_value(p, dims, 0, &mut budget)? {
            Some(Json::Array(dims)) if dims.iter().all(Json::is_i64) => Json::Array(dims),
            _ => return Err(format!("session {session}: input_dimensions is not a tuple of integers")),
        };
        let neurons = match p.dict_get(info, "output_dimension") {
            Some(Value::Int(n)) if *n >= 0 => *n,
            _ => return Err(format!("session {session}: output_dimension is not a non-negative integer")),
        };
        input_dimensions.insert(session.to_string(), dims);
        n_neurons.insert(session.to_string(), Json::from(neurons));
    }
    Ok((input_dimensions, n_neurons))
}

// ---------------------------------------------------------------------------------------------
// YAML (the nnfabrik configs): PyYAML's safe loader plus `!!python/tuple`, nothing else.

/// Parse a YAML document into JSON the way openretina's `SafeLoaderWithTuple` would: YAML 1.1 plain
/// scalars, `!!python/tuple` sequences as lists. Aliases (which can blow up in size) and any other
/// tag are refused.
pub fn yaml_to_json(text: &str) -> std::result::Result<Json, String> {
    let mut builder = YamlBuilder::default();
    let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| format!("not valid YAML ({e})"))?;
    if let Some(problem) = builder.error {
        return Err(problem);
    }
    builder.document.ok_or_else(|| "the YAML document is empty".to_string())
}

enum YamlFrame {
    Sequence(Vec<Json>),
    Mapping(Map<String, Json>, Option<String>),
}

#[derive(Default)]
struct YamlBuilder {
    stack: Vec<YamlFrame>,
    document: Option<Json>,
    error: Option<String>,
}

const MAX_YAML_DEPTH: usize = 100;

impl YamlBuilder {
    fn handle(&mut self, event: yaml_rust2::parser::Event) -> std::result::Result<(), String> {
        use yaml_rust2::parser::Event;
        match event {
            Event::Alias(_) => return Err("YAML aliases are not supported".into()),
            Event::SequenceStart(_, tag) => {
                if let Some(tag) = tag {
                    let suffix = core_tag_suffix(&tag).unwrap_or_default();
                    if suffix != "python/tuple" && suffix != "seq" {
                        return Err(format!("unsupported YAML tag {}{} on a sequence", tag.handle, tag.suffix));
                    }
                }
                self.open(YamlFrame::Sequence(Vec::new()))?
            }
            Event::MappingStart(_, tag) => {
                if let Some(tag) = tag {
                    if core_tag_suffix(&tag) != Some("map") {
                        return Err(format!("unsupported YAML tag {}{} on a mapping", tag.handle, tag.suffix));
                    }
                }
                self.open(YamlFrame::Mapping(Map::new(), None))?
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let value = match self.stack.pop() {
                    Some(YamlFrame::Sequence(items)) => Json::Array(items),
                    Some(YamlFrame::Mapping(map, _)) => Json::Object(map),
                    None => return Err("unbalanced YAML".into()),
                };
                self.insert(value, false)?
            }
            Event::Scalar(text, style, _, tag) => {
                let value = yaml_scalar(&text, style, tag.as_ref())?;
                self.insert(value, true)?
            }
            _ => {}
        }
        Ok(())
    }

    fn open(&mut self, frame: YamlFrame) -> std::result::Result<(), String> {
        if self.stack.len() >= MAX_YAML_DEPTH {
            return Err(format!("YAML nested more than {MAX_YAML_DEPTH} levels deep"));
        }
        if matches!(self.stack.last(), Some(YamlFrame::Mapping(_, None))) {
            return Err("YAML mapping keys must be plain values".into());
        }
        self.stack.push(frame);
        Ok(())
    }

    fn insert(&mut self, value: Json, is_scalar: bool) -> std::result::Result<(), String> {
        match self.stack.last_mut() {
            None => self.document = Some(value),
            Some(YamlFrame::Sequence(items)) => items.push(value),
            Some(YamlFrame::Mapping(map, key)) => match key.take() {
                Some(k) => {
                    map.insert(k, value);
                }
                None if is_scalar => {
                    *key = Some(match value {
                        Json::String(s) => s,
                        other => other.to_string(),
                    })
                }
                None => return Err("YAML mapping keys must be plain values".into()),
            },
        }
        Ok(())
    }
}

impl yaml_rust2::parser::MarkedEventReceiver for YamlBuilder {
    fn on_event(&mut self, event: yaml_rust2::parser::Event, _mark: yaml_rust2::scanner::Marker) {
        if self.error.is_none() {
            if let Err(problem) = self.handle(event) {
                self.error = Some(problem);
            }
        }
    }
}

/// The suffix of a `!!x` / `tag:yaml.org,2002:x` tag.
fn core_tag_suffix(tag: &yaml_rust2::parser::Tag) -> Option<&str> {
    (tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:").then_some(tag.suffix.as_str())
}

/// A scalar as PyYAML's safe loader resolves it (YAML 1.1: `yes`/`no`/`on`/`off` are booleans, floats
/// need a dot).
fn yaml_scalar(
    text: &str,
    style: yaml_rust2::scanner::TScalarStyle,
    tag: Option<&yaml_rust2::parser::Tag>,
) -> std::result::Result<Json, String> {
    let as_string = Json::String(text.to_string());
    if let Some(tag) = tag {
        let resolved = match core_tag_suffix(tag) {
            Some("str") => Some(as_string),
            Some("int") => yaml_int(text).map(Json::from),
            Some("float") => yaml_float(text).or_else(|| yaml_int(text).map(|i| i as f64)).map(json_float),
            Some("bool") => yaml_bool(text).map(Json::Bool),
            Some("null") => yaml_null(text).then_some(Json::Null),
            _ => return Err(format!("unsupported YAML tag {}{}", tag.handle, tag.suffix)),
        };
        return resolved.ok_or_else(|| format!("YAML value {text:?} does not match its tag"));
    }
    if style != yaml_rust2::scanner::TScalarStyle::Plain {
        return Ok(as_string);
    }
    Ok(if yaml_null(text) {
        Json::Null
    } else if let Some(b) = yaml_bool(text) {
        Json::Bool(b)
    } else if let Some(i) = yaml_int(text) {
        Json::from(i)
    } else if let Some(f) = yaml_float(text) {
        json_float(f)
    } else {
        as_string
    })
}

fn json_float(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn yaml_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn yaml_bool(text: &str) -> Option<bool> {
    match text {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn yaml_int(text: &str) -> Option<i64> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let digits: String = body.chars().filter(|&c| c != '_').collect();
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex.to_string())
    } else if let Some(bin) = digits.strip_prefix("0b") {
        (2, bin.to_string())
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, digits[1..].to_string())
    } else {
        (10, digits)
    };
    if digits.is_empty() || !body.as_bytes()[0].is_ascii_digit() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i64::from_str_radix(&digits, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

fn yaml_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    let plain = text.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '_' | 'e' | 'E' | '+' | '-'));
    if !plain || !text.contains('.') {
        return None;
    }
    text.replace('_', "").parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_subset() {
        let json = yaml_to_json("a: !!python/tuple\n- 1\n- 2\nb: 0.5\nc: ELU\nd: true\ne: null\nf: '3'\ng: 1.0e-05\n")
            .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"a": [1, 2], "b": 0.5, "c": "ELU", "d": true, "e": null, "f": "3", "g": 1.0e-05})
        );
        assert!(yaml_to_json("a: &x [1]\nb: *x\n").is_err());
        assert!(yaml_to_json("a: !!python/object/apply:os.system [ls]\n").is_err());
        assert!(yaml_to_json("a: !!python/name:os.system ''\n").is_err());
    }

    #[test]
    fn cyclic_values_are_refused_not_overflowed() {
        // l = []; l.append(l)
        let p = pickle::parse(b"\x80\x02]q\x00h\x00a.", "cycle").unwrap();
        assert!(to_json(&p, &p.root, 0).is_err());
    }

    #[test]
    fn ensemble_class_names() {
        assert_eq!(
            ensemble_model_class("nnfabrik_euler.models.models.SFB3d_core_SxF3d_readout").unwrap(),
            "SFB3d_core_SxF3d_readout"
        );
        assert!(ensemble_model_class("os.system").is_err());
    }
}
