//! Torch storages (persistent ids) and the tensor views `_rebuild_tensor_v2` makes on them.

use super::machine::{Machine, Step};
use super::value::{non_negative, Node, StorageDtype, StorageRef, TensorRef, Value};

impl StorageDtype {
    pub(super) fn from_storage_class(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "DoubleStorage" => StorageDtype::F64,
            "FloatStorage" => StorageDtype::F32,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }
}

impl Machine<'_> {
    /// BINPERSID: torch's `('storage', torch.XStorage, key, location, numel)`; others stay inert.
    pub(super) fn persistent(&mut self, pid: Value) -> Step<Value> {
        if let Some(items) = self.tuple_items(&pid) {
            if let [Value::Str(kind), class, Value::Str(key), _location, numel] = items.as_slice() {
                if &**kind == "storage" {
                    let (module, name) = self.class_name(class).ok_or("torch storage without a storage type")?;
                    let dtype = StorageDtype::from_storage_class(&name)
                        .filter(|_| &*module == "torch")
                        .ok_or_else(|| format!("unsupported torch storage type {module}.{name}"))?;
                    let numel = non_negative(numel).ok_or("torch storage size is not a non-negative integer")?;
                    return self.new_node(Node::Storage(StorageRef { key: key.to_string(), dtype, numel }), 1);
                }
            }
        }
        let depth = 1 + self.depth_of(&pid);
        self.new_node(Node::Persistent(pid), depth)
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, ...)`.
    pub(super) fn rebuild_tensor(&mut self, args: &[Value]) -> Step<Value> {
        let [storage, offset, size, stride, ..] = args else {
            return Err("_rebuild_tensor_v2 with too few arguments".into());
        };
        let storage = match storage {
            Value::Node(id) => match self.nodes.get(*id) {
                Some(Node::Storage(s)) => s.clone(),
                _ => return Err("_rebuild_tensor_v2 without a torch storage".into()),
            },
            _ => return Err("_rebuild_tensor_v2 without a torch storage".into()),
        };
        let offset = non_negative(offset).ok_or("tensor storage offset is not a non-negative integer")?;
        let ints = |v: &Value| -> Option<Vec<u64>> { self.tuple_items(v)?.iter().map(non_negative).collect() };
        let shape = ints(size).ok_or("tensor size is not a tuple of non-negative integers")?;
        let stride = ints(stride).ok_or("tensor stride is not a tuple of non-negative integers")?;
        if shape.len() != stride.len() {
            return Err("tensor size and stride differ in length".into());
        }
        if shape.len() > 64 {
            return Err("tensor has more than 64 dimensions".into());
        }
        self.new_node(Node::Tensor(TensorRef { storage, offset, shape, stride }), 1)
    }
}
