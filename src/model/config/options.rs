//! Reading stored hyper parameters (JSON values) with errors that name the option.

use serde_json::{Map, Value};

use super::Padding;
use crate::error::{Error, Result};
use crate::model::registry;

pub(crate) struct Options<'a> {
    pub(super) map: &'a Map<String, Value>,
    /// Prefix for error messages, e.g. "core." for UnifiedCoreReadout's core dict.
    pub(super) prefix: &'a str,
}

impl<'a> Options<'a> {
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn err(&self, key: &str, expected: &str) -> Error {
        let got = self.map.get(key).map(|v| v.to_string()).unwrap_or_else(|| "nothing".into());
        Error::new(format!("hyper parameter `{}{key}`: expected {expected}, got {got}", self.prefix))
    }

    pub(crate) fn required(&self, key: &str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| {
            Error::new(format!("hyper parameter `{}{key}` is missing; is this an openretina model?", self.prefix))
        })
    }

    pub(crate) fn usize(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match self.get(key) {
            None => default.ok_or_else(|| self.required(key).unwrap_err()),
            Some(v) => as_usize(v).ok_or_else(|| self.err(key, "a non-negative integer")),
        }
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| as_usize(v).ok_or_else(|| self.err(key, "a non-negative integer"))).transpose()
    }

    pub(crate) fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, "a number")),
        }
    }

    pub(crate) fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, "true or false")),
        }
    }

    /// A list of integers; a single integer is repeated `n` times when `n` is given.
    pub(crate) fn usize_list(&self, key: &str, repeat: Option<usize>) -> Result<Vec<usize>> {
        let v = self.required(key)?;
        if let (Some(n), Some(x)) = (repeat, as_usize(v)) {
            return Ok(vec![x; n]);
        }
        v.as_array()
            .and_then(|a| a.iter().map(as_usize).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.err(key, "a list of non-negative integers"))
    }

    pub(crate) fn opt_f64_list(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.get(key)
            .map(|v| {
                v.as_array()
                    .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| self.err(key, "a list of numbers"))
            })
            .transpose()
    }

    pub(crate) fn opt_triple(&self, key: &str) -> Result<Option<[usize; 3]>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let list = v.as_array().and_then(|a| a.iter().map(as_usize).collect::<Option<Vec<_>>>());
                match list.as_deref() {
                    Some([a, b, c]) if *a > 0 && *b > 0 && *c > 0 => Ok(Some([*a, *b, *c])),
                    _ => Err(self.err(key, "three positive integers")),
                }
            }
        }
    }

    pub(crate) fn str(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.err(key, "a string")),
        }
    }

    /// A padding option as openretina's `SimpleCoreWrapper` takes it: `True` = "same", `False` = 0,
    /// an int, a 3-tuple, or the strings "same" / "valid".
    pub(super) fn padding(&self, key: &str, default: &Value, kernel: [usize; 3]) -> Result<Padding> {
        let v = self.get(key).unwrap_or(default);
        let same = || kernel.map(|k| ((k - 1) / 2, (k - 1) - (k - 1) / 2));
        let sym = |p: [usize; 3]| p.map(|x| (x, x));
        let padding = match v {
            Value::Bool(true) => Ok(same()),
            Value::Bool(false) => Ok([(0, 0); 3]),
            Value::String(s) if s == "same" => Ok(same()),
            Value::String(s) if s == "valid" => Ok([(0, 0); 3]),
            Value::Number(_) => as_usize(v).map(|p| sym([p; 3])).ok_or_else(|| self.err(key, "a padding")),
            Value::Array(a) => match a.iter().map(as_usize).collect::<Option<Vec<_>>>().as_deref() {
                Some([t, h, w]) => Ok(sym([*t, *h, *w])),
                _ => Err(self.err(key, "a padding of three non-negative integers")),
            },
            _ => Err(self.err(key, "a padding (true, false, \"same\", \"valid\", an integer or three integers)")),
        }?;
        // More padding than kernel only adds outputs that see no input; a huge value would overflow
        // the shape arithmetic. Either way the file is not a model openretina trained.
        if (0..3).any(|d| padding[d].0.max(padding[d].1) > kernel[d]) {
            return Err(self.err(key, &format!("a padding no larger than the kernel {kernel:?}")));
        }
        Ok(padding)
    }
}

/// A core's stored options (`core.*`), read with errors that name the option.
pub(crate) fn core_options(map: &Map<String, Value>) -> Options<'_> {
    options(map, "core.")
}

/// Stored options under `prefix` (e.g. `core.gru_kwargs.`), read with errors that name the option.
pub(crate) fn options<'a>(map: &'a Map<String, Value>, prefix: &'a str) -> Options<'a> {
    Options { map, prefix }
}

pub(crate) fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().map(|x| x as usize).or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as usize))
}

pub(super) fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| Error::new(format!("hyper parameter `{what}`: expected an object")))
}

/// The convolution type option, checked against the kinds `registry.rs` knows.
pub(crate) fn conv_type(opts: &Options, key: &str) -> Result<String> {
    let name = opts.str(key, "custom_separable")?;
    registry::conv_kind::<f32>(name).map_err(|e| Error::new(format!("hyper parameter `{}{key}`: {e}", opts.prefix)))?;
    Ok(name.to_string())
}
