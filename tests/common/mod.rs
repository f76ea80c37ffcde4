//! Shared test helpers: the fixtures of `../shared/fixtures`, made by running openretina 1.1.1.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use retina::formats::{self, RawModel, RawTensor};
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
