//! The value tree a pickle becomes: scalars inline, everything else a node in one arena.

use std::sync::Arc;

/// Index of a node in [`Pickle::nodes`].
pub type NodeId = usize;

/// One value on the stack or in a container. Scalars are held inline; everything else is a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64: little-endian two's complement bytes, as pickled.
    BigInt(Arc<[u8]>),
    Float(f64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
    Node(NodeId),
}

/// Storage element types torch writes (`torch.FloatStorage` etc.).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    pub fn size_in_bytes(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }
}

/// A torch storage: `<prefix>/data/<key>` in the zip, `numel` elements of `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: StorageDtype,
    pub numel: u64,
}

/// A tensor as torch pickles it: a strided view on a storage (offsets and strides in elements).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// A numpy dtype, e.g. `f4` with byte order `<`.
#[derive(Debug, Clone, PartialEq)]
pub struct NumpyDtype {
    /// The type string numpy pickles (`f4`, `i8`, `b1`, `U5`, `O8`...).
    pub descr: String,
    /// `<` little, `>` big, `|` not applicable, `=` native.
    pub byte_order: char,
}

/// A numpy array with its raw bytes (C order unless `fortran_order`).
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    pub dtype: NumpyDtype,
    pub shape: Vec<u64>,
    pub fortran_order: bool,
    pub data: Arc<[u8]>,
}

/// How an inert object was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `REDUCE`: `callable(*args)`.
    Reduce,
    /// `NEWOBJ` / `NEWOBJ_EX` / `OBJ` / `INST`: `cls.__new__(cls, *args)`.
    NewObj,
}

/// An object the reader did not build: what Python would have called, with what.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The callable: usually a [`Node::Class`].
    pub callable: Value,
    pub kind: ObjectKind,
    /// The positional arguments (a tuple node).
    pub args: Value,
    /// Keyword arguments of `NEWOBJ_EX`, if any.
    pub kwargs: Option<Value>,
    /// What `BUILD` passed to `__setstate__` (for modules and omegaconf nodes: their `__dict__`).
    pub state: Option<Value>,
    /// Items `APPEND`ed (list subclasses).
    pub list_items: Vec<Value>,
    /// Items `SETITEM`ed (dict subclasses such as `defaultdict`).
    pub dict_items: Vec<(Value, Value)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Entries in pickle order. Python never pickles a key twice; if a file does, the last one wins.
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// A reference to `module.name`, never imported.
    Class {
        module: Arc<str>,
        name: Arc<str>,
    },
    Object(Object),
    /// A persistent id the reader does not know (kept as the pid value).
    Persistent(Value),
    Storage(StorageRef),
    Tensor(TensorRef),
    NumpyDtype(NumpyDtype),
    /// `numpy.core.multiarray._reconstruct(...)` before its `BUILD` state arrives.
    NdArrayPending,
    NdArray(NdArray),
}

/// The result of reading a pickle: the arena and the value `STOP` returned.
#[derive(Debug, Clone)]
pub struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Value,
}

impl Pickle {
    pub fn node(&self, value: &Value) -> Option<&Node> {
        match value {
            Value::Node(id) => self.nodes.get(*id),
            _ => None,
        }
    }

    /// Entries of a dict (or of a dict-like object such as `OrderedDict`/`defaultdict`).
    pub fn dict_entries(&self, value: &Value) -> Option<&[(Value, Value)]> {
        match self.node(value)? {
            Node::Dict(entries) => Some(entries),
            Node::Object(o) if !o.dict_items.is_empty() => Some(&o.dict_items),
            _ => None,
        }
    }

    /// The value under string key `key` of a dict (last occurrence wins).
    pub fn dict_get(&self, value: &Value, key: &str) -> Option<&Value> {
        self.dict_entries(value)?.iter().rev().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v)
    }

    /// Items of a list, tuple or set.
    pub fn sequence(&self, value: &Value) -> Option<&[Value]> {
        match self.node(value)? {
            Node::List(items) | Node::Tuple(items) | Node::Set(items) => Some(items),
            _ => None,
        }
    }

    /// `(module, name)` of a class reference.
    pub fn class_of(&self, value: &Value) -> Option<(&str, &str)> {
        match self.node(value)? {
            Node::Class { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// `(module, name)` of the class an inert object was made from.
    pub fn object_class(&self, value: &Value) -> Option<(&str, &str)> {
        match self.node(value)? {
            Node::Object(o) => self.class_of(&o.callable),
            _ => None,
        }
    }
}

/// A non-negative integer argument (sizes, offsets, counts); `True`/`False` count as 1/0 as in Python.
pub(super) fn non_negative(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Bool(b) => Some(*b as u64),
        _ => None,
    }
}
