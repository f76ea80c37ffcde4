//! The globals a model file may name (PyTorch's `weights_only` rule), and the refusal of any other.

use std::sync::Arc;

use super::machine::{Machine, Step};
use super::value::{Node, StorageDtype, Value};
use crate::error::Error;

/// The globals a model file may name, after PyTorch's `weights_only` unpickler, widened to what
/// openretina 1.1.1's checkpoints really hold (measured on every file of `../shared/fixtures`):
/// `ExampleCoreReadout` saves its core and readout as torch modules inside `hyper_parameters`,
/// `UnifiedCoreReadout` its configs as omegaconf containers (with numpy arrays and `typing.Any`),
/// nnfabrik's `data_info` numpy arrays. Nothing is ever called either way; a global outside this list
/// means the file was made to run code when Python loads it, so it is refused rather than read.
pub fn is_allowed_global(module: &str, name: &str) -> bool {
    match module {
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
        ),
        "torch" => {
            StorageDtype::from_storage_class(name).is_some()
                || matches!(
                    name,
                    "Size"
                        | "device"
                        | "float64"
                        | "float32"
                        | "float16"
                        | "bfloat16"
                        | "int64"
                        | "int32"
                        | "int16"
                        | "int8"
                        | "uint8"
                        | "bool"
                        // Functions torch modules hold as their nonlinearity.
                        | "sigmoid"
                        | "tanh"
                        | "exp"
                        | "relu"
                )
        }
        // Activation functions a module keeps as an attribute (openretina readouts: softplus).
        "torch._C._nn" | "torch.nn.functional" => !name.starts_with('_'),
        "collections" => matches!(name, "OrderedDict" | "defaultdict"),
        // The data types only: never getattr, eval, exec, open, __import__ ...
        "builtins" | "__builtin__" => matches!(
            name,
            "set" | "frozenset" | "dict" | "list" | "tuple" | "int" | "long" | "float" | "str" | "unicode"
                | "bool" | "bytes" | "bytearray" | "complex" | "slice" | "range" | "object"
        ),
        // How protocol-2 pickles carry numpy's raw bytes.
        "_codecs" => name == "encode",
        "numpy" => matches!(name, "ndarray" | "dtype"),
        "numpy.core.multiarray" | "numpy._core.multiarray" => matches!(name, "_reconstruct" | "scalar"),
        "numpy.core.numeric" | "numpy._core.numeric" => name == "_frombuffer",
        "numpy.dtypes" => name.ends_with("DType"),
        "omegaconf.base" | "omegaconf.dictconfig" | "omegaconf.listconfig" | "omegaconf.nodes" => {
            !name.starts_with('_')
        }
        "typing" => matches!(
            name,
            "Any" | "Dict" | "List" | "Tuple" | "Optional" | "Union" | "Sequence" | "Mapping" | "Set" | "Callable"
        ),
        "pathlib" => matches!(
            name,
            "Path" | "PosixPath" | "WindowsPath" | "PurePath" | "PurePosixPath" | "PureWindowsPath"
        ),
        "datetime" => matches!(name, "timedelta" | "datetime" | "date" | "timezone"),
        "lightning.fabric.utilities.data" | "pytorch_lightning.utilities.parsing" | "lightning.pytorch.utilities.parsing" => {
            name == "AttributeDict"
        }
        // Module classes saved inside hyper parameters: torch's layers and openretina's own.
        _ => {
            let module_class = module.starts_with("torch.nn.modules.")
                || module.starts_with("openretina.modules.")
                || module.starts_with("openretina.models.");
            module_class && name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        }
    }
}

/// The one-line error for a file that names `global` outside the allow-list. `record` is set for the
/// `data.pkl` of a `torch.save` archive: then the file is called a checkpoint.
pub(super) fn refusal(what: &str, record: Option<&str>, global: &str) -> Error {
    let noun = if record.is_some() { "checkpoint" } else { "pickle" };
    Error::new(format!("{what}: refusing to load: the {noun} calls {global}, which model files never need"))
}

impl Machine<'_> {
    /// A reference to `module.name`; globals a model file never needs stop the reading (see
    /// [`is_allowed_global`]).
    pub(super) fn new_global(&mut self, module: Arc<str>, name: Arc<str>) -> Step<Value> {
        if !is_allowed_global(&module, &name) {
            let global: String = format!("{module}.{name}").chars().take(200).collect();
            let global = global.escape_debug().to_string();
            self.refused = Some(global.clone());
            return Err(format!("refusing the global {global}"));
        }
        self.new_node(Node::Class { module, name }, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, parse_checkpoint};
    use super::*;

    #[test]
    fn globals_outside_the_allow_list_are_refused() {
        let bytes = b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00echo\x85R.";
        let error = parse(bytes, "model.pkl").unwrap_err();
        assert_eq!(
            error.message(),
            "model.pkl: refusing to load: the pickle calls posix.system, which model files never need"
        );
        let error = parse_checkpoint(bytes, "model.ckpt").unwrap_err();
        assert!(error.message().starts_with("model.ckpt: refusing to load: the checkpoint calls posix.system"));
        // STACK_GLOBAL and INST go through the same check.
        let stack_global = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        assert!(parse(stack_global, "x").unwrap_err().message().contains("calls builtins.eval"));
        let inst = b"(ios\nsystem\n.";
        assert!(parse(inst, "x").unwrap_err().message().contains("calls os.system"));
        // An allowed class reference stays an inert record.
        let module = b"\x80\x02ctorch.nn.modules.activation\nELU\n)\x81.";
        let p = parse(module, "test").unwrap();
        assert_eq!(p.object_class(&p.root), Some(("torch.nn.modules.activation", "ELU")));
    }

    #[test]
    fn allow_list() {
        for (module, name) in [
            ("torch._utils", "_rebuild_tensor_v2"),
            ("torch", "FloatStorage"),
            ("collections", "OrderedDict"),
            ("omegaconf.dictconfig", "DictConfig"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("openretina.modules.layers.scaling", "Bias3DLayer"),
            ("torch._C._nn", "softplus"),
        ] {
            assert!(is_allowed_global(module, name), "{module}.{name}");
        }
        for (module, name) in [
            ("os", "system"),
            ("posix", "system"),
            ("builtins", "eval"),
            ("builtins", "getattr"),
            ("__builtin__", "__import__"),
            ("subprocess", "Popen"),
            ("torch", "load"),
            ("torch.nn.modules.module", "_load_from_state_dict"),
            ("omegaconf.omegaconf", "OmegaConf"),
            ("openretina.utils.file_utils", "get_cache_directory"),
        ] {
            assert!(!is_allowed_global(module, name), "{module}.{name}");
        }
    }
}
