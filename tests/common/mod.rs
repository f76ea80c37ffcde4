//! Shared test helpers: the fixtures of `../shared/fixtures`, made by running openretina 1.1.1.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use retina::formats::{self, RawModel, RawTensor};
use retina::rng::Rng;
use serde_json::json;
use retina::Tensor;

/// The fixtures folder. Tests never skip silently: a missing folder is a failure that says where we looked.
pub fn fixtures() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures"));
    assert!(
        dir.is_dir(),
        "fixtures not found at {}: clone the project next to `shared/` (see README.md)",
        dir.display()
    );
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures().join(name);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

pub fn raw_model(path: &str) -> RawModel {
    let p = fixture(path);
    let bytes = std::fs::read(&p).unwrap();
    formats::safetensors::parse_model(&bytes, &p.display().to_string()).unwrap()
}

/// All tensors of a fixture's `reference.safetensors`.
pub struct Reference(BTreeMap<String, RawTensor>);

impl Reference {
    pub fn load(fixture_name: &str) -> Self {
        let p = fixture(&format!("{fixture_name}/reference.safetensors"));
        let bytes = std::fs::read(&p).unwrap();
        Reference(formats::safetensors::parse(&bytes, "reference").unwrap().0)
    }

    pub fn get(&self, name: &str) -> Tensor<f64> {
        self.0.get(name).unwrap_or_else(|| panic!("reference tensor {name} missing")).to_float(name).unwrap()
    }

    pub fn get32(&self, name: &str) -> Tensor<f32> {
        self.0.get(name).unwrap_or_else(|| panic!("reference tensor {name} missing")).to_float(name).unwrap()
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }
}

pub fn manifest(fixture_name: &str) -> serde_json::Value {
    let p = fixture(&format!("{fixture_name}/manifest.json"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// max |a - b| / max |b|: the fixtures README's relative max difference.
pub fn rel_max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let max_b = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let max_d = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    max_d / max_b.max(f64::MIN_POSITIVE)
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// An `ExampleCoreReadout` with random weights and the given hyper parameters merged in.
pub fn synthetic_model(channels: usize, height: usize, width: usize, extra: serde_json::Value, seed: u64) -> RawModel {
    let mut hp = json!({
        "in_shape": [channels, 30, height, width],
        "hidden_channels": [4, 3],
        "temporal_kernel_sizes": [7, 5],
        "spatial_kernel_sizes": [5, 3],
        "n_neurons_dict": {"b_session": 3, "a_session": 2},
        "core_input_padding": false,
        "core_hidden_padding": true,
        "cut_first_n_frames_in_core": 2,
        "readout_positive": true,
        "readout_scale": true,
        "readout_bias": true,
        "readout_gaussian_mean_scale": 6.0,
        "readout_gaussian_var_scale": 4.0,
        "convolution_type": "custom_separable",
    });
    for (k, v) in extra.as_object().unwrap() {
        hp[k] = v.clone();
    }
    let config = retina::model::ModelConfig::from_hyper_parameters("ExampleCoreReadout", &hp).unwrap();
    let mut rng = Rng::new(seed);
    let mut tensors = BTreeMap::new();
    for (i, l) in config.layers.iter().enumerate() {
        layer_tensors(&mut tensors, &format!("core.features.layer{i}"), l, &mut rng);
    }
    if let Some(w) = &config.color_squashing_weights {
        let w: Vec<f32> = w.iter().map(|&x| x as f32).collect();
        tensors.insert("core.color_squashing_layer.channel_weights".into(), RawTensor::f32(vec![w.len()], w));
    }
    gaussian_readout_tensors(&mut tensors, &config.sessions, config.core_output_shape(30).unwrap(), &mut rng);
    RawModel { model_class: "ExampleCoreReadout".into(), hyper_parameters: hp, tensors }
}

/// A random tensor of `shape` with values from `f`, as float32.
pub fn put(tensors: &mut BTreeMap<String, RawTensor>, name: String, shape: Vec<usize>, f: &mut dyn FnMut() -> f32) {
    let n = shape.iter().product();
    tensors.insert(name, RawTensor::f32(shape, (0..n).map(|_| f()).collect()));
}

/// Random tensors of one core layer `{p}.conv.*`, `{p}.norm.*` (and `{p}.bias.bias`) as
/// openretina's modules for its `convolution_type` name them.
pub fn layer_tensors(tensors: &mut BTreeMap<String, RawTensor>, p: &str, l: &retina::model::config::LayerConfig, rng: &mut Rng) {
    let (o, c, nk, k) = (l.out_channels, l.in_channels, l.temporal_kernel / 3, l.spatial_kernel);
    let kt = l.temporal_kernel;
    match l.convolution.as_str() {
        "custom_separable" => {
            put(tensors, format!("{p}.conv.sin_weights"), vec![o, c, nk], &mut || rng.normal() as f32 * 0.5);
            put(tensors, format!("{p}.conv.cos_weights"), vec![o, c, nk], &mut || rng.normal() as f32 * 0.5);
            put(tensors, format!("{p}.conv.weight_spatial"), vec![o, c, 1, k, k], &mut || rng.normal() as f32 * 0.3);
            put(tensors, format!("{p}.conv._log_speed_default"), vec![1], &mut || 0.0);
        }
        "full" => {
            put(tensors, format!("{p}.conv.conv.weight"), vec![o, c, kt, k, k], &mut || rng.normal() as f32 * 0.1);
            put(tensors, format!("{p}.conv._log_speed_default"), vec![1], &mut || 0.0);
        }
        "separable" => {
            put(tensors, format!("{p}.conv.space_conv.weight"), vec![o, c, 1, k, k], &mut || rng.normal() as f32 * 0.3);
            put(tensors, format!("{p}.conv.time_conv.weight"), vec![o, o, kt, 1, 1], &mut || rng.normal() as f32 * 0.3);
            put(tensors, format!("{p}.conv._log_speed_default"), vec![1], &mut || 0.1);
        }
        "time_independent" => {
            put(tensors, format!("{p}.conv.conv.weight"), vec![o, c, 1, k, k], &mut || rng.normal() as f32 * 0.3);
        }
        other => panic!("no synthetic tensors for convolution_type {other}"),
    }
    if l.batch_norm_affine {
        put(tensors, format!("{p}.norm.weight"), vec![o], &mut || 1.0 + rng.uniform() as f32 * 0.2);
        put(tensors, format!("{p}.norm.bias"), vec![o], &mut || rng.normal() as f32 * 0.1);
    }
    put(tensors, format!("{p}.norm.running_mean"), vec![o], &mut || rng.normal() as f32 * 0.1);
    put(tensors, format!("{p}.norm.running_var"), vec![o], &mut || 0.5 + rng.uniform() as f32);
    if l.bias_layer {
        put(tensors, format!("{p}.bias.bias"), vec![1, o, 1, 1, 1], &mut || rng.normal() as f32 * 0.1);
    }
}

/// Random `MultiGaussianMaskReadout` tensors `readout.<session>.*` for a core output `[c, t, h, w]`.
pub fn gaussian_readout_tensors(tensors: &mut BTreeMap<String, RawTensor>, sessions: &[(String, usize)], [c, _, h, w]: [usize; 4], rng: &mut Rng) {
    for (session, n) in sessions {
        let p = format!("readout.{session}");
        let n = *n;
        put(tensors, format!("{p}.features"), vec![1, c, 1, n], &mut || rng.normal() as f32 * 0.5);
        put(tensors, format!("{p}.mask_mean"), vec![n, 2], &mut || (rng.uniform() as f32 - 0.5) * 0.2);
        put(tensors, format!("{p}.mask_log_var"), vec![n], &mut || rng.normal() as f32 * 0.2);
        put(tensors, format!("{p}.scale_param"), vec![n], &mut || 1.0);
        put(tensors, format!("{p}.bias"), vec![n], &mut || rng.normal() as f32 * 0.1);
        // openretina's make_mask_grid: (n, h, w, 2), linspace over each axis scaled by max(h, w).
        let m = h.max(w) as f32;
        let lin = |len: usize, i: usize| if len == 1 { -(len as f32) / m } else { -(len as f32) / m + 2.0 * (len as f32) / m * i as f32 / (len - 1) as f32 };
        let mut grid = Vec::with_capacity(n * h * w * 2);
        for _ in 0..n {
            for y in 0..h {
                for x in 0..w {
                    grid.push(lin(h, y));
                    grid.push(lin(w, x));
                }
            }
        }
        tensors.insert(format!("{p}.grid"), RawTensor::f32(vec![n, h, w, 2], grid));
    }
}

pub fn random_stimulus(shape: [usize; 4], seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..shape.iter().product::<usize>()).map(|_| rng.uniform() * 2.0 - 0.5).collect()
}

// ---- hand-built torch archives and pickles (hostile-file tests) ----

/// A zip archive with the given entries, stored uncompressed (as torch.save writes them).
pub fn zip_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        writer.start_file(*name, options).unwrap();
        std::io::Write::write_all(&mut writer, data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// Emits pickle opcodes (protocol 2), enough to write a small Lightning checkpoint by hand.
pub struct PickleWriter(pub Vec<u8>);

impl Default for PickleWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PickleWriter {
    pub fn new() -> Self {
        PickleWriter(b"\x80\x02".to_vec())
    }
    pub fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend(bytes);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
    }
    pub fn int(&mut self, i: i32) -> &mut Self {
        self.op(b"J").op(&i.to_le_bytes())
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b"c").op(module.as_bytes()).op(b"\n").op(name.as_bytes()).op(b"\n")
    }
    pub fn int_tuple(&mut self, values: &[i32]) -> &mut Self {
        self.op(b"(");
        for &v in values {
            self.int(v);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(storage(kind, key, numel), offset, shape, stride, False, OrderedDict())`.
    pub fn tensor(&mut self, kind: &str, key: &str, numel: i32, offset: i32, shape: &[i32], stride: &[i32]) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        self.op(b"(").str("storage").global("torch", kind).str(key).str("cpu").int(numel).op(b"tQ");
        self.int(offset).int_tuple(shape).int_tuple(stride).op(b"\x89");
        self.global("collections", "OrderedDict").op(b")R").op(b"tR")
    }
}

// ---------------------------------------------------------------------------------------------------
// Running the binary under memory and time ceilings (tests/hostile.rs, tests/limits.rs)

/// Address-space ceiling for the binary, in KiB (`ulimit -v` units): 1 GiB. The hostile inputs are
/// sized so that handling them naively needs more than this, so the ceiling is what is tested.
pub const MEMORY_LIMIT_KIB: u64 = 1 << 20;
/// Wall-clock ceiling per run. A refusal takes milliseconds; the margin is for a loaded CI machine.
pub const TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How a run under the ceilings ended.
pub struct LimitedRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

/// Run `retina <args>` in `dir` with extra environment `env`, under `ulimit -v MEMORY_LIMIT_KIB` and
/// killed (failing the test) after `TIME_LIMIT`. Nothing is ever downloaded (an empty cache), and the
/// memory budget is the default one.
pub fn run_limited(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> LimitedRun {
    use std::process::{Command, Stdio};
    let started = std::time::Instant::now();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_retina"))
        .args(args)
        .current_dir(dir)
        .env("OPENRETINA_CACHE_DIRECTORY", std::env::temp_dir().join("retina-limited-test-empty-cache"))
        .env_remove(retina::model::memory::BUDGET_VARIABLE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("cannot start sh");
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("retina {args:?}: still running after {TIME_LIMIT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let out = child.wait_with_output().unwrap();
    LimitedRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}
