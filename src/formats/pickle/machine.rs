//! The stack machine: reads opcodes and keeps the stack and the memo; what the values become is
//! decided in the sibling modules.

use std::collections::HashMap;

use super::budget::{CopyBudget, Limits};
use super::value::{Node, NodeId, Pickle, Value};

/// The stack machine. Errors are plain strings; [`super::parse_with_limits`] adds the source and position.
pub(super) struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    pub(super) op_start: usize,
    pub(super) limits: Limits,
    stack: Vec<Value>,
    /// Stack heights saved by MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pub(super) nodes: Vec<Node>,
    /// Nesting depth of each node (1 + deepest child when it was last filled).
    pub(super) depths: Vec<u32>,
    pub(super) work: CopyBudget,
    /// `module.name` of a global outside [`super::is_allowed_global`], when that stopped the machine.
    pub(super) refused: Option<String>,
}

pub(super) type Step<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    pub(super) fn new(input: &'a [u8], limits: Limits) -> Self {
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
            work: CopyBudget::for_input(input.len()),
            refused: None,
        }
    }

    pub(super) fn run(&mut self) -> Step<Pickle> {
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
                    self.work.charge(items.len());
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
            self.work.check()?;
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

    pub(super) fn top_node_id(&self, v: &Value) -> Step<NodeId> {
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
    fn long_integers() {
        assert_eq!(long_from_bytes(&[0xff]), Value::Int(-1));
        assert_eq!(long_from_bytes(&[0x00, 0x80, 0x00]), Value::Int(32768));
        assert_eq!(long_from_bytes(&[0x00, 0x80]), Value::Int(-32768));
        assert!(matches!(long_from_bytes(&[0; 9]), Value::BigInt(_)));
    }
}
