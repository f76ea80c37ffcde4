//! A Python pickle reader (protocols 2 to 5, plus the few protocol 0/1 opcodes Python 3 still emits)
//! that executes nothing.
//!
//! The pickle program is run on a small stack machine that only builds an inert value tree:
//! `GLOBAL` / `STACK_GLOBAL` become class references, `REDUCE` / `NEWOBJ` / `BUILD` become inert
//! object records (class, arguments, state). A short allow-list of callables whose meaning is fixed
//! and harmless is interpreted instead, because model files need them:
//! - `torch._utils._rebuild_tensor_v2` and `_rebuild_parameter`: tensor views on storages;
//! - torch storages, referenced through persistent ids `('storage', torch.XStorage, key, location, numel)`;
//! - `collections.OrderedDict`: a plain dict;
//! - numpy arrays, dtypes and scalars (`numpy.core.multiarray._reconstruct` / `scalar`, `numpy.dtype`
//!   followed by `BUILD`), as in nnfabrik's `data_info` pickles.
//!
//! Like PyTorch's `weights_only` loading, only the globals a model file needs may be named at all
//! ([`is_allowed_global`]); a file naming any other (`posix.system`, `builtins.eval`...) was made to
//! run code and is refused with one line naming the global.
//!
//! Everything the machine creates lives in one arena ([`Pickle::nodes`]) and values refer to it by
//! index, so shared and even cyclic references (omegaconf nodes point back at their parent) cost
//! nothing and dropping the tree never recurses. Hostile input is bounded: container nesting depth,
//! stack and memo sizes, and the number of nodes are capped, and every length read from the file is
//! checked against the bytes that are really there before anything is allocated.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Caps on what one pickle may make the reader build.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest container nesting accepted (a list in a list in ... counts one per level).
    pub max_depth: u32,
    /// Most values on the stack at once (MARK-delimited batches included).
    pub max_stack: usize,
    /// Most memo entries.
    pub max_memo: usize,
    /// Most arena nodes (containers, classes, objects, tensors).
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 1000, max_stack: 1 << 20, max_memo: 1 << 20, max_nodes: 1 << 20 }
    }
}

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
    fn from_storage_class(name: &str) -> Option<StorageDtype> {
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

/// Read a pickle with the default [`Limits`]. `what` names the source in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<Pickle> {
    parse_with_limits(bytes, what, Limits::default())
}

pub fn parse_with_limits(bytes: &[u8], what: &str, limits: Limits) -> Result<Pickle> {
    parse_part(bytes, what, None, limits)
}

/// The `data.pkl` of a `torch.save` archive `what`: errors name the record, refusals the file.
pub fn parse_checkpoint(bytes: &[u8], what: &str) -> Result<Pickle> {
    parse_part(bytes, what, Some("data.pkl"), Limits::default())
}

fn parse_part(bytes: &[u8], what: &str, record: Option<&str>, limits: Limits) -> Result<Pickle> {
    let mut machine = Machine::new(bytes, limits);
    machine.run().map_err(|problem| {
        if let Some(global) = &machine.refused {
            let noun = if record.is_some() { "checkpoint" } else { "pickle" };
            return Error::new(format!(
                "{what}: refusing to load: the {noun} calls {global}, which model files never need"
            ));
        }
        let what = match record {
            Some(record) => format!("{what}: {record}"),
            None => what.to_string(),
        };
        Error::new(format!("{what}: not a readable pickle: {problem} (at byte {})", machine.op_start))
    })
}

/// The stack machine. Errors are plain strings; [`parse_with_limits`] adds the source and position.
struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    op_start: usize,
    limits: Limits,
    stack: Vec<Value>,
    /// Stack heights saved by MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    nodes: Vec<Node>,
    /// Nesting depth of each node (1 + deepest child when it was last filled).
    depths: Vec<u32>,
    /// Values copied so far (into containers, or out of argument tuples). An honest pickle spends at
    /// least one byte per value it stores, so this stays below a few times the input length; a
    /// hostile one that reuses a big memoised tuple over and over is stopped instead.
    work: std::cell::Cell<u64>,
    /// `module.name` of a global outside [`is_allowed_global`], when that stopped the machine.
    refused: Option<String>,
}

type Step<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    fn new(input: &'a [u8], limits: Limits) -> Self {
        Machine {
            input,
            pos: 0,
            op_start: 0,
            limits,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            nodes: Vec::new(),
            depths: Vec::new(),
            work: std::cell::Cell::new(0),
            refused: None,
        }
    }

    fn charge(&self, values: usize) {
        self.work.set(self.work.get().saturating_add(values as u64));
    }

    fn work_budget(&self) -> u64 {
        4 * self.input.len() as u64 + 4096
    }

    fn run(&mut self) -> Step<Pickle> {
        if self.input.is_empty() {
            return Err("the data is empty".into());
        }
        loop {
            self.op_start = self.pos;
            let op = self.take_u8().map_err(|_| "the data ends before the STOP opcode".to_string())?;
            match op {
                // --- framing and protocol
                0x80 => {
                    let proto = self.take_u8()?;
                    if proto > 5 {
                        return Err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME length: frames are only a read-ahead hint
                }
                b'.' => {
                    let root = self.pop()?;
                    let nodes = std::mem::take(&mut self.nodes);
                    return Ok(Pickle { nodes, root });
                }
                // --- scalars
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.take_u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v as i64))?
                }
                0x8a => {
                    let n = self.take_u8()? as usize;
                    let bytes = self.take(n)?;
                    let v = long_from_bytes(bytes);
                    self.push(v)?
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.take_array()?);
                    let n = usize::try_from(n).map_err(|_| "negative LONG4 length".to_string())?;
                    let bytes = self.take(n)?;
                    let v = long_from_bytes(bytes);
                    self.push(v)?
                }
                b'I' => {
                    // Protocol 0 INT; "01"/"00" are Python 2's True/False.
                    let line = self.take_line()?;
                    let v = match line {
                        b"01" => Value::Bool(true),
                        b"00" => Value::Bool(false),
                        _ => Value::Int(parse_decimal(line)?),
                    };
                    self.push(v)?
                }
                b'L' => {
                    let line = self.take_line()?;
                    let line = line.strip_suffix(b"L").unwrap_or(line);
                    let v = parse_decimal(line)?;
                    self.push(Value::Int(v))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Value::Float(v))?
                }
                b'F' => {
                    let line = self.take_line()?;
                    let v = std::str::from_utf8(line)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .ok_or("malformed FLOAT")?;
                    self.push(Value::Float(v))?
                }
                // --- strings and bytes
                b'X' => {
                    let n = u32::from_le_bytes(self.take_array()?) as usize;
                    self.push_str(n)?
                }
                0x8c => {
                    let n = self.take_u8()? as usize;
                    self.push_str(n)?
                }
                0x8d => {
                    let n = self.take_len64()?;
                    self.push_str(n)?
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.take_array()?);
                    let n = usize::try_from(n).map_err(|_| "negative BINSTRING length".to_string())?;
                    self.push_py2_str(n)?
                }
                b'U' => {
                    let n = self.take_u8()? as usize;
                    self.push_py2_str(n)?
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.take_array()?) as usize;
                    self.push_bytes(n)?
                }
                b'C' => {
                    let n = self.take_u8()? as usize;
                    self.push_bytes(n)?
                }
                0x8e | 0x96 => {
                    let n = self.take_len64()?;
                    self.push_bytes(n)?
                }
                0x97 | 0x98 => return Err("out-of-band pickle buffers are not supported".into()),
                // --- containers
                b']' => {
                    let v = self.new_node(Node::List(Vec::new()), 1)?;
                    self.push(v)?
                }
                b')' => {
                    let v = self.new_node(Node::Tuple(Vec::new()), 1)?;
                    self.push(v)?
                }
                b'}' => {
                    let v = self.new_node(Node::Dict(Vec::new()), 1)?;
                    self.push(v)?
                }
                0x8f => {
                    let v = self.new_node(Node::Set(Vec::new()), 1)?;
                    self.push(v)?
                }
                b'(' => {
                    if self.marks.len() >= self.limits.max_depth as usize {
                        return Err(format!("MARKs nested more than {} levels deep", self.limits.max_depth));
                    }
                    self.marks.push(self.stack.len());
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_container(Node::Tuple(Vec::new()), items)?;
                    self.push(v)?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.new_container(Node::List(Vec::new()), items)?;
                    self.push(v)?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.new_node(Node::Dict(Vec::new()), 1)?;
                    let target = self.top_node_id(&v)?;
                    self.set_items(target, items)?;
                    self.push(v)?
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.new_container(Node::Set(Vec::new()), items)?;
                    self.push(v)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n + self.current_mark() {
                        return Err("stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let v = self.new_container(Node::Tuple(Vec::new()), items)?;
                    self.push(v)?
                }
                b'a' => {
                    let item = self.pop()?;
                    let target = self.top_id()?;
                    self.append(target, vec![item])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top_id()?;
                    self.append(target, items)?
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top_id()?;
                    self.charge(items.len());
                    match self.nodes.get_mut(target) {
                        Some(Node::Set(set)) => set.extend(items.iter().cloned()),
                        _ => return Err("ADDITEMS on something that is not a set".into()),
                    }
                    self.deepen(target, &items)?
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let target = self.top_id()?;
                    self.set_items(target, vec![key, value])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top_id()?;
                    self.set_items(target, items)?
                }
                // --- stack manipulation
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.stack.last().cloned().ok_or("stack underflow")?;
                    self.push(top)?
                }
                // --- memo
                b'q' => {
                    let i = self.take_u8()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.take_array()?);
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large")?;
                    self.memo_put(i)?
                }
                b'p' => {
                    let i = parse_decimal(self.take_line()?)?;
                    let i = u32::try_from(i).map_err(|_| "PUT index out of range")?;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.take_u8()? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.take_array()?);
                    self.memo_get(i)?
                }
                b'g' => {
                    let i = parse_decimal(self.take_line()?)?;
                    let i = u32::try_from(i).map_err(|_| "GET index out of range")?;
                    self.memo_get(i)?
                }
                // --- classes and objects
                b'c' => {
                    let module = line_str(self.take_line()?)?;
                    let name = line_str(self.take_line()?)?;
                    let v = self.new_global(module.into(), name.into())?;
                    self.push(v)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL needs two strings".into());
                    };
                    let v = self.new_global(module, name)?;
                    self.push(v)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let v = self.new_object(class, args, None)?;
                    self.push(v)?
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let v = self.new_object(class, args, Some(kwargs))?;
                    self.push(v)?
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err("OBJ without a class".into());
                    }
                    let class = items.remove(0);
                    let args = self.new_container(Node::Tuple(Vec::new()), items)?;
                    let v = self.new_object(class, args, None)?;
                    self.push(v)?
                }
                b'i' => {
                    let module = line_str(self.take_line()?)?;
                    let name = line_str(self.take_line()?)?;
                    let items = self.pop_mark()?;
                    let class = self.new_global(module.into(), name.into())?;
                    let args = self.new_container(Node::Tuple(Vec::new()), items)?;
                    let v = self.new_object(class, args, None)?;
                    self.push(v)?
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top_id()?;
                    self.build(target, state)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v)?
                }
                b'P' => {
                    let pid = line_str(self.take_line()?)?;
                    let v = self.persistent(Value::Str(pid.into()))?;
                    self.push(v)?
                }
                0x82..=0x84 => return Err("copyreg extension codes are not supported".into()),
                other => return Err(format!("unknown pickle opcode 0x{other:02x}")),
            }
            if self.work.get() > self.work_budget() {
                return Err("the pickle copies far more values than its size allows".into());
            }
        }
    }

    // --- reading the input

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.input.len()).ok_or("the data ends early")?;
        let bytes = &self.input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn take_u8(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }

    fn take_len64(&mut self) -> Step<usize> {
        let n = u64::from_le_bytes(self.take_array()?);
        usize::try_from(n).map_err(|_| "length too large".to_string())
    }

    /// A newline-terminated line (protocol 0 arguments), without the newline.
    fn take_line(&mut self) -> Step<&'a [u8]> {
        let rest = &self.input[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("unterminated line")?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    // --- the stack

    fn push(&mut self, v: Value) -> Step<()> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(format!("more than {} values on the stack", self.limits.max_stack));
        }
        self.stack.push(v);
        Ok(())
    }

    fn current_mark(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Step<Value> {
        if self.stack.len() <= self.current_mark() {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let mark = self.marks.pop().ok_or("no MARK on the stack")?;
        Ok(self.stack.split_off(mark))
    }

    fn top_id(&self) -> Step<NodeId> {
        if self.stack.len() <= self.current_mark() {
            return Err("stack underflow".into());
        }
        match self.stack.last() {
            Some(v) => self.top_node_id(v),
            None => Err("stack underflow".into()),
        }
    }

    fn top_node_id(&self, v: &Value) -> Step<NodeId> {
        match v {
            Value::Node(id) => Ok(*id),
            _ => Err("a container operation on a plain value".into()),
        }
    }

    fn push_str(&mut self, n: usize) -> Step<()> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| "a string is not valid UTF-8".to_string())?;
        self.push(Value::Str(s.into()))
    }

    /// Python 2 `str`: text if it is UTF-8 (keys, names), bytes otherwise (raw array data).
    fn push_py2_str(&mut self, n: usize) -> Step<()> {
        let bytes = self.take(n)?;
        let v = match std::str::from_utf8(bytes) {
            Ok(s) => Value::Str(s.into()),
            Err(_) => Value::Bytes(bytes.into()),
        };
        self.push(v)
    }

    fn push_bytes(&mut self, n: usize) -> Step<()> {
        let bytes = self.take(n)?;
        self.push(Value::Bytes(bytes.into()))
    }

    // --- memo

    fn memo_put(&mut self, i: u32) -> Step<()> {
        let top = self.stack.last().cloned().ok_or("memo store from an empty stack")?;
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&i) {
            return Err(format!("more than {} memo entries", self.limits.max_memo));
        }
        self.memo.insert(i, top);
        Ok(())
    }

    fn memo_get(&mut self, i: u32) -> Step<()> {
        let v = self.memo.get(&i).cloned().ok_or_else(|| format!("memo entry {i} is missing"))?;
        self.push(v)
    }

    // --- nodes

    fn depth_of(&self, v: &Value) -> u32 {
        match v {
            Value::Node(id) => self.depths.get(*id).copied().unwrap_or(0),
            _ => 0,
        }
    }

    fn new_node(&mut self, node: Node, depth: u32) -> Step<Value> {
        if self.nodes.len() >= self.limits.max_nodes {
            return Err(format!("more than {} objects", self.limits.max_nodes));
        }
        if depth > self.limits.max_depth {
            return Err(format!("nested more than {} levels deep", self.limits.max_depth));
        }
        self.nodes.push(node);
        self.depths.push(depth);
        Ok(Value::Node(self.nodes.len() - 1))
    }

    /// A reference to `module.name`; globals a model file never needs stop the reading (see
    /// [`is_allowed_global`]).
    fn new_global(&mut self, module: Arc<str>, name: Arc<str>) -> Step<Value> {
        if !is_allowed_global(&module, &name) {
            let global: String = format!("{module}.{name}").chars().take(200).collect();
            let global = global.escape_debug().to_string();
            self.refused = Some(global.clone());
            return Err(format!("refusing the global {global}"));
        }
        self.new_node(Node::Class { module, name }, 0)
    }

    /// A list, tuple or set node holding `items`.
    fn new_container(&mut self, empty: Node, items: Vec<Value>) -> Step<Value> {
        self.charge(items.len());
        let depth = 1 + items.iter().map(|v| self.depth_of(v)).max().unwrap_or(0);
        let node = match empty {
            Node::List(_) => Node::List(items),
            Node::Tuple(_) => Node::Tuple(items),
            Node::Set(_) => Node::Set(items),
            other => other,
        };
        self.new_node(node, depth)
    }

    /// Record that `items` now hang below `target`, refusing too deep a nesting.
    fn deepen(&mut self, target: NodeId, items: &[Value]) -> Step<()> {
        let deepest = items.iter().map(|v| self.depth_of(v)).max().unwrap_or(0);
        let depth = self.depths.get_mut(target).ok_or("bad node")?;
        *depth = (*depth).max(deepest.saturating_add(1));
        if *depth > self.limits.max_depth {
            return Err(format!("nested more than {} levels deep", self.limits.max_depth));
        }
        Ok(())
    }

    fn append(&mut self, target: NodeId, items: Vec<Value>) -> Step<()> {
        self.charge(items.len());
        self.deepen(target, &items)?;
        match self.nodes.get_mut(target) {
            Some(Node::List(list)) => list.extend(items),
            Some(Node::Object(o)) => o.list_items.extend(items),
            _ => return Err("APPEND to something that is not a list".into()),
        }
        Ok(())
    }

    /// SETITEM(S): `items` alternates keys and values.
    fn set_items(&mut self, target: NodeId, items: Vec<Value>) -> Step<()> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        self.charge(items.len());
        self.deepen(target, &items)?;
        let mut it = items.into_iter();
        let pairs = std::iter::from_fn(|| Some((it.next()?, it.next()?)));
        match self.nodes.get_mut(target) {
            Some(Node::Dict(entries)) => entries.extend(pairs),
            Some(Node::Object(o)) => o.dict_items.extend(pairs),
            _ => return Err("SETITEM on something that is not a dict".into()),
        }
        Ok(())
    }

    fn class_name(&self, v: &Value) -> Option<(Arc<str>, Arc<str>)> {
        match v {
            Value::Node(id) => match self.nodes.get(*id)? {
                Node::Class { module, name } => Some((module.clone(), name.clone())),
                _ => None,
            },
            _ => None,
        }
    }

    fn tuple_items(&self, v: &Value) -> Option<Vec<Value>> {
        match v {
            Value::Node(id) => match self.nodes.get(*id)? {
                Node::Tuple(items) | Node::List(items) => {
                    self.charge(items.len());
                    Some(items.clone())
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn new_object(&mut self, callable: Value, args: Value, kwargs: Option<Value>) -> Step<Value> {
        if let Some((module, name)) = self.class_name(&callable) {
            if &*module == "collections" && &*name == "OrderedDict" {
                return self.new_ordered_dict(&args);
            }
        }
        let depth = 1 + self.depth_of(&args).max(kwargs.as_ref().map_or(0, |k| self.depth_of(k)));
        let object = Object {
            callable,
            kind: ObjectKind::NewObj,
            args,
            kwargs,
            state: None,
            list_items: Vec::new(),
            dict_items: Vec::new(),
        };
        self.new_node(Node::Object(object), depth)
    }

    /// `OrderedDict()` or `OrderedDict([(k, v), ...])` as a plain dict.
    fn new_ordered_dict(&mut self, args: &Value) -> Step<Value> {
        let args = self.tuple_items(args).ok_or("OrderedDict arguments are not a tuple")?;
        let dict = self.new_node(Node::Dict(Vec::new()), 1)?;
        let id = self.top_node_id(&dict)?;
        if let Some(pairs) = args.first() {
            let pairs = self.tuple_items(pairs).ok_or("OrderedDict argument is not a list of pairs")?;
            let mut flat = Vec::with_capacity(pairs.len() * 2);
            for pair in &pairs {
                match self.tuple_items(pair).as_deref() {
                    Some([k, v]) => flat.extend([k.clone(), v.clone()]),
                    _ => return Err("OrderedDict argument is not a list of pairs".into()),
                }
            }
            self.set_items(id, flat)?;
        }
        Ok(dict)
    }

    /// REDUCE: interpret the allow-listed callables, record everything else inertly.
    fn reduce(&mut self, callable: Value, args: Value) -> Step<Value> {
        let allowed = self.class_name(&callable).filter(|(module, name)| is_interpreted(module, name));
        if let Some((module, name)) = allowed {
            let arg_items = self.tuple_items(&args).ok_or("REDUCE arguments are not a tuple")?;
            match (&*module, &*name) {
                // `_rebuild_tensor` (old) takes the same first four arguments.
                (_, "_rebuild_tensor_v2" | "_rebuild_tensor") => return self.rebuild_tensor(&arg_items),
                // `_rebuild_parameter(data, requires_grad, backward_hooks[, state])`: the parameter is its data.
                (_, "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                    return arg_items.into_iter().next().ok_or_else(|| "_rebuild_parameter without data".into())
                }
                ("collections", "OrderedDict") => return self.new_ordered_dict(&args),
                (_, "_reconstruct") => return self.new_node(Node::NdArrayPending, 1),
                ("numpy", "dtype") => {
                    if let Some(Value::Str(descr)) = arg_items.first() {
                        let dtype = NumpyDtype { descr: descr.to_string(), byte_order: '|' };
                        return self.new_node(Node::NumpyDtype(dtype), 1);
                    }
                }
                (_, "scalar") => {
                    if let Some(v) = self.numpy_scalar(&arg_items) {
                        return Ok(v);
                    }
                }
                _ => {}
            }
        }
        let depth = 1 + self.depth_of(&args);
        let object = Object {
            callable,
            kind: ObjectKind::Reduce,
            args,
            kwargs: None,
            state: None,
            list_items: Vec::new(),
            dict_items: Vec::new(),
        };
        self.new_node(Node::Object(object), depth)
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, ...)`.
    fn rebuild_tensor(&mut self, args: &[Value]) -> Step<Value> {
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

    /// `numpy.core.multiarray.scalar(dtype, bytes)` for plain little-endian numbers and bools.
    fn numpy_scalar(&self, args: &[Value]) -> Option<Value> {
        let [Value::Node(dtype), Value::Bytes(bytes)] = args else { return None };
        let Node::NumpyDtype(dtype) = self.nodes.get(*dtype)? else { return None };
        if dtype.byte_order == '>' {
            return None;
        }
        let b: &[u8] = bytes;
        Some(match (dtype.descr.as_str(), b.len()) {
            ("f8", 8) => Value::Float(f64::from_le_bytes(b.try_into().ok()?)),
            ("f4", 4) => Value::Float(f32::from_le_bytes(b.try_into().ok()?) as f64),
            ("i8", 8) => Value::Int(i64::from_le_bytes(b.try_into().ok()?)),
            ("i4", 4) => Value::Int(i32::from_le_bytes(b.try_into().ok()?) as i64),
            ("i2", 2) => Value::Int(i16::from_le_bytes(b.try_into().ok()?) as i64),
            ("i1", 1) => Value::Int(b[0] as i8 as i64),
            ("u4", 4) => Value::Int(u32::from_le_bytes(b.try_into().ok()?) as i64),
            ("u2", 2) => Value::Int(u16::from_le_bytes(b.try_into().ok()?) as i64),
            ("u1", 1) => Value::Int(b[0] as i64),
            ("b1", 1) => Value::Bool(b[0] != 0),
            _ => return None,
        })
    }

    /// BUILD: give an inert object its state; finish numpy arrays and dtypes.
    fn build(&mut self, target: NodeId, state: Value) -> Step<()> {
        match self.nodes.get(target) {
            Some(Node::NdArrayPending) => {
                if let Some(array) = self.ndarray_from_state(&state) {
                    self.nodes[target] = Node::NdArray(array);
                    return Ok(());
                }
                // Not a layout we understand (object arrays...): keep it as an inert record.
                let depth = 1 + self.depth_of(&state);
                self.deepen(target, &[])?;
                let class = self
                    .new_node(Node::Class { module: "numpy.core.multiarray".into(), name: "_reconstruct".into() }, 0)?;
                let args = self.new_node(Node::Tuple(Vec::new()), 1)?;
                self.nodes[target] = Node::Object(Object {
                    callable: class,
                    kind: ObjectKind::Reduce,
                    args,
                    kwargs: None,
                    state: Some(state),
                    list_items: Vec::new(),
                    dict_items: Vec::new(),
                });
                self.depths[target] = self.depths[target].max(depth);
                Ok(())
            }
            Some(Node::NumpyDtype(_)) => {
                // State: (version, byte order, subarray, names, fields, elsize, alignment, flags).
                let order = self.tuple_items(&state).and_then(|items| match items.get(1) {
                    Some(Value::Str(s)) => s.chars().next(),
                    _ => None,
                });
                if let (Some(order), Some(Node::NumpyDtype(dtype))) = (order, self.nodes.get_mut(target)) {
                    dtype.byte_order = order;
                }
                Ok(())
            }
            Some(Node::Object(_)) => {
                self.deepen(target, std::slice::from_ref(&state))?;
                if let Some(Node::Object(o)) = self.nodes.get_mut(target) {
                    o.state = Some(state);
                }
                Ok(())
            }
            // Python would set attributes on a dict subclass (OrderedDict's `_metadata`); nothing to keep.
            Some(_) => Ok(()),
            None => Err("BUILD on a missing object".into()),
        }
    }

    /// ndarray `__setstate__` argument: `(version, shape, dtype, is_fortran, raw bytes)`.
    fn ndarray_from_state(&self, state: &Value) -> Option<NdArray> {
        let items = self.tuple_items(state)?;
        let [_, shape, Value::Node(dtype), Value::Bool(fortran_order), Value::Bytes(data)] = items.as_slice() else {
            return None;
        };
        let shape: Vec<u64> = self.tuple_items(shape)?.iter().map(non_negative).collect::<Option<_>>()?;
        let Node::NumpyDtype(dtype) = self.nodes.get(*dtype)? else { return None };
        Some(NdArray { dtype: dtype.clone(), shape, fortran_order: *fortran_order, data: data.clone() })
    }

    /// BINPERSID: torch's `('storage', torch.XStorage, key, location, numel)`; others stay inert.
    fn persistent(&mut self, pid: Value) -> Step<Value> {
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
}

/// The callables REDUCE interprets instead of recording.
fn is_interpreted(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        (
            "torch._utils",
            "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
        ) | ("collections", "OrderedDict")
            | ("numpy", "dtype")
            | ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct" | "scalar")
    )
}

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

fn non_negative(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Bool(b) => Some(*b as u64),
        _ => None,
    }
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn long_from_bytes(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
        buf[..bytes.len()].copy_from_slice(bytes);
        return Value::Int(i64::from_le_bytes(buf));
    }
    Value::BigInt(bytes.into())
}

fn parse_decimal(line: &[u8]) -> Step<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .ok_or_else(|| "malformed decimal integer".to_string())
}

fn line_str(line: &[u8]) -> Step<&str> {
    std::str::from_utf8(line).map_err(|_| "a name is not valid UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_dict_of_scalars() {
        // pickle.dumps({'a': 1, 'b': [1.5, None, True]}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G?\xf8\x00\x00\x00\x00\x00\x00N\x88eu.";
        let p = parse(bytes, "test").unwrap();
        assert_eq!(p.dict_get(&p.root, "a"), Some(&Value::Int(1)));
        let b = p.dict_get(&p.root, "b").unwrap();
        assert_eq!(p.sequence(b).unwrap(), &[Value::Float(1.5), Value::None, Value::Bool(true)]);
    }

    #[test]
    fn long_integers() {
        assert_eq!(long_from_bytes(&[0xff]), Value::Int(-1));
        assert_eq!(long_from_bytes(&[0x00, 0x80, 0x00]), Value::Int(32768));
        assert_eq!(long_from_bytes(&[0x00, 0x80]), Value::Int(-32768));
        assert!(matches!(long_from_bytes(&[0; 9]), Value::BigInt(_)));
    }

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

    #[test]
    fn reusing_a_big_memoised_list_cannot_amplify() {
        // pairs = [(1, 2)] * 5000 (memo 0); OrderedDict (memo 1); then OrderedDict(pairs) 2000 times:
        // each 7-byte REDUCE would copy 10000 values.
        let mut bytes = b"\x80\x02]q\x00(".to_vec();
        for _ in 0..5000 {
            bytes.extend(b"K\x01K\x02\x86");
        }
        bytes.extend(b"e0ccollections\nOrderedDict\nq\x010");
        for _ in 0..2000 {
            bytes.extend(b"h\x01h\x00\x85R0");
        }
        bytes.extend(b"N.");
        let error = parse(&bytes, "amplify").unwrap_err();
        assert!(error.message().contains("copies far more values"), "{error}");
    }

    #[test]
    fn self_referencing_list_is_bounded() {
        // l = []; l.append(l) -- a cycle. Parsing must finish; walkers guard their own depth.
        let bytes = b"\x80\x02]q\x00h\x00a.";
        let p = parse(bytes, "test").unwrap();
        assert!(p.sequence(&p.root).is_some());
    }
}
